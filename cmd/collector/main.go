/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command collector exports one instance's event_logs under its consent tier. The operator
// runs it with the configuration it renders; see README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/app"
)

func main() {
	var o app.Options
	flag.StringVar(&o.ConfigPath, "config", "/etc/telemetry/config/config.json", "Path of the configuration file the operator renders.")
	flag.StringVar(&o.MetricsAddr, "metrics-addr", ":9090", "Address of /healthz, /readyz and /metrics.")
	flag.StringVar(&o.StateFile, "state-file", "", "Keep progress in this file instead of the state ConfigMap (local runs).")
	flag.StringVar(&o.Kubeconfig, "kubeconfig", "", "Kubeconfig for the state ConfigMap (default: in-cluster).")
	flag.StringVar(&o.MountRoot, "mount-root", "", "Prefix for the file paths in the configuration (local workload runner only).")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := app.Run(ctx, o, log); err != nil {
		if errors.Is(err, collector.ErrOff) {
			fmt.Fprintln(os.Stderr, "collector:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(1)
	}
}
