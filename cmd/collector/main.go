/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command collector exports one instance's event_logs under its consent tier. The operator
// runs it with the configuration it renders; see README.md.
//
//	collector [flags]          run
//	collector preview [flags]  print the batches the collector would send next, one request
//	                           body per line, and send nothing (no network, no certificates)
//	collector exported [flags] print what the receiver stored from this instance recently,
//	                           asked with the collector's own certificate
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
	"github.com/sourcegraph/telemetry-operator/internal/memorylimit"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "preview" {
		os.Exit(preview(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "exported" {
		os.Exit(exported(os.Args[2:]))
	}
	var o app.Options
	flag.StringVar(&o.ConfigPath, "config", "/etc/telemetry/config/config.json", "Path of the configuration file the operator renders.")
	flag.StringVar(&o.MetricsAddr, "metrics-addr", ":9090", "Address of /healthz, /readyz and /metrics.")
	stateFlags(flag.CommandLine, &o)
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	memorylimit.Apply(log)
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

// stateFlags are the flags that say where progress is kept and where the files are.
func stateFlags(fs *flag.FlagSet, o *app.Options) {
	fs.StringVar(&o.StateFile, "state-file", "", "Keep progress in this file instead of the state ConfigMap (local runs).")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "Kubeconfig for the state ConfigMap (default: in-cluster).")
	fs.StringVar(&o.MountRoot, "mount-root", "", "Prefix for the file paths in the configuration (local workload runner only).")
}

// preview runs "collector preview" and returns the exit code.
func preview(args []string) int {
	var o app.Options
	fs := flag.NewFlagSet("collector preview", flag.ContinueOnError)
	fs.StringVar(&o.ConfigPath, "config", "/etc/telemetry/config/config.json", "Path of the configuration file the operator renders.")
	stateFlags(fs, &o)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: collector preview [flags]\n\nPrints the batches the collector would send next, one request body (JSON) per line,\nand a summary on stderr. Reads the instance database and saved progress; sends and saves nothing.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "collector preview: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := app.Preview(ctx, o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "collector preview:", err)
		return 1
	}
	return 0
}

// exported runs "collector exported" and returns the exit code.
func exported(args []string) int {
	var o app.Options
	fs := flag.NewFlagSet("collector exported", flag.ContinueOnError)
	fs.StringVar(&o.ConfigPath, "config", "/etc/telemetry/config/config.json", "Path of the configuration file the operator renders.")
	fs.StringVar(&o.MountRoot, "mount-root", "", "Prefix for the file paths in the configuration (local workload runner only).")
	limit := fs.Int("limit", 1, "How many of the latest deliveries to show (1-100).")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: collector exported [flags]\n\nPrints what the receiver stored from this instance in its latest deliveries (JSON),\nasked with the collector's client certificate. Reads no events and saves nothing.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || *limit < 1 || *limit > 100 {
		fmt.Fprintln(os.Stderr, "collector exported: takes no arguments and --limit between 1 and 100")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := app.Exported(ctx, o, *limit, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "collector exported:", err)
		return 1
	}
	return 0
}
