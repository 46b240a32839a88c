/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command receiver is the central ingestion service and its report:
//
//	receiver serve   --tls-cert F --tls-key F --client-ca F   (mutual-TLS ingestion API)
//	receiver report  [--instance ID] [--format table|json]   (the product answers)
//	receiver migrate                                         (apply schema migrations)
//
// The database DSN comes from $RECEIVER_DATABASE_DSN or --database-dsn-file, never a flag
// value, so it does not show in process listings.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sourcegraph/telemetry-operator/receiver/report"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "report":
		err = runReport(ctx, os.Args[2:])
	case "migrate":
		err = migrate(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "receiver:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: receiver serve|report|migrate [flags]   (receiver <command> -h for flags)")
	os.Exit(2)
}

func dsnFlag(fs *flag.FlagSet) *string {
	return fs.String("database-dsn-file", "", "File holding the PostgreSQL DSN (default: $RECEIVER_DATABASE_DSN).")
}

func openStore(ctx context.Context, dsnFile string) (*store.Store, error) {
	dsn := os.Getenv("RECEIVER_DATABASE_DSN")
	if dsnFile != "" {
		raw, err := os.ReadFile(dsnFile) //nolint:gosec // operator-provided path
		if err != nil {
			return nil, fmt.Errorf("reading --database-dsn-file: %w", err)
		}
		dsn = strings.TrimSpace(string(raw))
	}
	if dsn == "" {
		return nil, errors.New("no database: set RECEIVER_DATABASE_DSN or --database-dsn-file")
	}
	return store.Open(ctx, dsn)
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8443", "Address of the mutual-TLS ingestion API.")
	opsListen := fs.String("ops-listen", ":9091", "Address of /healthz, /readyz and /metrics (plain HTTP).")
	certFile := fs.String("tls-cert", "", "Server certificate (PEM).")
	keyFile := fs.String("tls-key", "", "Server private key (PEM).")
	caFile := fs.String("client-ca", "", "Fleet issuer CA bundle (PEM) that signs collector client certificates.")
	maxBody := fs.Int64("max-body-bytes", server.DefaultLimits().MaxBodyBytes, "Largest request body as sent.")
	maxDecompressed := fs.Int64("max-decompressed-bytes", server.DefaultLimits().MaxDecompressedBytes, "Largest request body after decompression.")
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args)
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))

	pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("loading --tls-cert/--tls-key: %w", err)
	}
	caPEM, err := os.ReadFile(*caFile) //nolint:gosec // operator-provided path
	if err != nil {
		return fmt.Errorf("reading --client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("--client-ca holds no PEM certificate")
	}
	st, err := openStore(ctx, *dsnFile)
	if err != nil {
		return err
	}
	defer st.Close()
	for attempt := 0; ; attempt++ {
		if err = st.Migrate(ctx); err == nil || attempt >= 30 || ctx.Err() != nil {
			break
		}
		log.Warn("database not ready; retrying migrations", "err", err)
		time.Sleep(2 * time.Second)
	}
	if err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv := server.New(st, server.Limits{MaxBodyBytes: *maxBody, MaxDecompressedBytes: *maxDecompressed}, log, reg)
	api := &http.Server{Addr: *listen, Handler: srv.Handler(), TLSConfig: server.TLSConfig(pair, pool),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 2 * time.Minute, WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute}
	ops := &http.Server{Addr: *opsListen, Handler: srv.OpsHandler(reg), ReadHeaderTimeout: 5 * time.Second}
	errs := make(chan error, 2)
	go func() { errs <- api.ListenAndServeTLS("", "") }()
	go func() { errs <- ops.ListenAndServe() }()
	log.Info("receiver listening", "api", *listen, "ops", *opsListen)
	select {
	case <-ctx.Done():
	case err := <-errs:
		return err
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = ops.Shutdown(shutdown)
	return api.Shutdown(shutdown)
}

func runReport(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	instance := fs.String("instance", "", "Report one instance (default: fleet-wide).")
	format := fs.String("format", "table", "Output format: table or json.")
	nowFlag := fs.String("now", "", "End of the report windows, RFC 3339 (default: now).")
	powerDays := fs.Int("power-user-days", 10, "A power user is active on at least this many of the last 28 days.")
	limit := fs.Int("limit", 20, "Rows per table in table output.")
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args)
	o := report.Options{Instance: *instance, PowerUserDays: *powerDays}
	if *nowFlag != "" {
		t, err := time.Parse(time.RFC3339, *nowFlag)
		if err != nil {
			return fmt.Errorf("--now: %w", err)
		}
		o.Now = t
	}
	st, err := openStore(ctx, *dsnFile)
	if err != nil {
		return err
	}
	defer st.Close()
	r, err := report.Build(ctx, st.Pool(), o)
	if err != nil {
		return err
	}
	switch *format {
	case "json":
		return r.WriteJSON(os.Stdout)
	case "table":
		return r.WriteText(os.Stdout, *limit)
	default:
		return fmt.Errorf("--format must be table or json, not %q", *format)
	}
}

func migrate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ExitOnError)
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args)
	st, err := openStore(ctx, *dsnFile)
	if err != nil {
		return err
	}
	defer st.Close()
	return st.Migrate(ctx)
}
