/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command manager runs the telemetry-operator: it reconciles TelemetryPolicy objects into
// enforced, observable telemetry collectors. See README.md for its flags.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/sourcegraph/telemetry-operator/internal/memorylimit"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
)

func main() {
	var cfg operator.Config
	cfg.BindFlags(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")
	memorylimit.Apply(slog.New(logr.ToSlogHandler(log)))

	ctx := ctrl.SetupSignalHandler()
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "telemetry-operator: no Kubernetes configuration: %v\n", err)
		os.Exit(1)
	}
	mgr, err := operator.New(ctx, restCfg, cfg, operator.Deps{})
	if err != nil {
		// Refuse to start with a message that says what to fix (e.g. a missing or expired issuer).
		fmt.Fprintf(os.Stderr, "telemetry-operator: refusing to start: %v\n", err)
		os.Exit(1)
	}
	log.Info("starting manager", "collectorImage", cfg.CollectorImage, "minCloudTermsVersion", cfg.MinCloudTermsVersion)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}
