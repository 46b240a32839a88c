/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package app wires the collector process: configuration, the instance database, the pseudonym
// key, the hot-reloading mutual-TLS client, the progress store, and the health and metrics
// endpoints.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/deliver"
	"github.com/sourcegraph/telemetry-operator/collector/scrub"
	"github.com/sourcegraph/telemetry-operator/collector/source"
	"github.com/sourcegraph/telemetry-operator/collector/state"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/tlsreload"
)

// Options are the process's flags.
type Options struct {
	ConfigPath  string
	MetricsAddr string
	// StateFile, when set, keeps progress in a file instead of the state ConfigMap.
	StateFile string
	// Kubeconfig, when set, is used instead of the in-cluster configuration.
	Kubeconfig string
	// MountRoot, when set, is prefixed to the configuration's file paths: the local workload
	// runner materializes a pod's volumes under a private directory instead of at /etc/telemetry.
	MountRoot string
}

// Run runs the collector until ctx ends.
func Run(ctx context.Context, o Options, log *slog.Logger) error {
	cfg, err := collector.LoadConfig(o.ConfigPath)
	if err != nil {
		return err
	}
	if cfg.Tier == "Off" {
		return collector.ErrOff
	}
	log = log.With("instance", cfg.InstanceID)
	mount(o, cfg)

	reader, scrubber, err := openInstance(ctx, cfg)
	if err != nil {
		return err
	}
	defer reader.Close()

	client, err := receiverClient(cfg, log)
	if err != nil {
		return err
	}

	store, err := stateStore(o, cfg.State.Namespace, cfg.State.ConfigMap)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := collector.NewMetrics(reg)
	p := &collector.Pipeline{ConfigPath: o.ConfigPath, Reader: reader, Scrubber: scrubber, Client: client,
		State: store, Clock: clock.RealClock{}, Log: log, Metrics: metrics}

	srv := &http.Server{Addr: o.MetricsAddr, Handler: opsHandler(reg, p), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint failed", "err", err)
		}
	}()
	defer func() { _ = srv.Close() }()

	if err := p.Init(ctx); err != nil {
		return err
	}
	log.Info("collector started", "tier", cfg.Tier, "cursor", p.Cursor(), "interval", cfg.Interval, "batchSize", cfg.BatchSize)
	err = p.Run(ctx)
	log.Info("collector stopped", "cursor", p.Cursor())
	return err
}

// receiverClient returns a client of the receiver the configuration names, presenting the
// collector's client certificate (reloaded when it is rotated).
func receiverClient(cfg *collectorconfig.Config, log *slog.Logger) (*deliver.Client, error) {
	tlsClient, err := tlsreload.NewClient(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.CAFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tlsClient.OnReload = func(serial string) { log.Info("loaded client certificate", "serial", serial) }
	endpoint, err := url.Parse(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	transport := &http.Transport{
		TLSClientConfig:     tlsClient.TLSConfig(endpoint.Hostname()),
		MaxIdleConnsPerHost: 2,
		// Idle connections are closed soon, so a rotated certificate is presented promptly.
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}
	return deliver.New(cfg.Endpoint, freshTLS{next: transport, tls: tlsClient, log: log}, log), nil
}

// Exported writes what the receiver stored from this instance recently (its latest limit
// deliveries, JSON as the receiver answers GET /v1/exported), asked with the collector's own
// certificate. It reads no event_logs and saves nothing.
func Exported(ctx context.Context, o Options, limit int, out io.Writer) error {
	cfg, err := collector.LoadConfig(o.ConfigPath)
	if err != nil {
		return err
	}
	mount(o, cfg)
	client, err := receiverClient(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	body, err := client.Exported(ctx, limit)
	if err != nil {
		return err
	}
	_, err = out.Write(append(body, '\n'))
	return err
}

// mount prefixes the configuration's file paths with MountRoot.
func mount(o Options, cfg *collectorconfig.Config) {
	if o.MountRoot == "" {
		return
	}
	for _, p := range []*string{&cfg.TLS.CertFile, &cfg.TLS.KeyFile, &cfg.TLS.CAFile, &cfg.PseudonymKeyFile, &cfg.DatabaseDSNFile} {
		*p = filepath.Join(o.MountRoot, *p)
	}
}

// openInstance opens the instance database and the pseudonymizer the configuration names.
func openInstance(ctx context.Context, cfg *collectorconfig.Config) (*source.Reader, *scrub.Scrubber, error) {
	key, err := readSecretFile(cfg.PseudonymKeyFile, 1024)
	if err != nil {
		return nil, nil, fmt.Errorf("pseudonymKeyFile: %w", err)
	}
	scrubber, err := scrub.New(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pseudonymKeyFile: %w", err)
	}
	dsn, err := readSecretFile(cfg.DatabaseDSNFile, 8192)
	if err != nil {
		return nil, nil, fmt.Errorf("databaseDSNFile: %w", err)
	}
	reader, err := source.Open(ctx, strings.TrimSpace(string(dsn)))
	if err != nil {
		return nil, nil, err
	}
	return reader, scrubber, nil
}

// Preview writes the batches the collector would send next, one encoded request body (JSON, as
// it goes on the wire before compression) per line, and a summary to summary. It reads the
// instance database and the saved progress, and sends and saves nothing: it needs no network
// and no certificates.
func Preview(ctx context.Context, o Options, out, summary io.Writer) error {
	cfg, err := collector.LoadConfig(o.ConfigPath)
	if err != nil {
		return err
	}
	if cfg.Tier == v1.TierOff {
		_, err := fmt.Fprintf(summary, "instance %s: consent tier Off: nothing leaves\n", cfg.InstanceID)
		return err
	}
	mount(o, cfg)
	reader, scrubber, err := openInstance(ctx, cfg)
	if err != nil {
		return err
	}
	defer reader.Close()
	store, err := stateStore(o, cfg.State.Namespace, cfg.State.ConfigMap)
	if err != nil {
		return err
	}
	p := &collector.Pipeline{ConfigPath: o.ConfigPath, Reader: reader, Scrubber: scrubber, State: store,
		Clock: clock.RealClock{}, Log: slog.New(slog.DiscardHandler)}
	batches, err := p.Preview(ctx)
	if err != nil {
		return err
	}
	events, cells := 0, 0
	for _, b := range batches {
		body, err := batchv1.Encode(b)
		if err != nil {
			return err
		}
		if _, err := out.Write(append(body, '\n')); err != nil {
			return err
		}
		events += len(b.Events)
		cells += len(b.Aggregates)
	}
	switch {
	case len(batches) == 0:
		_, err = fmt.Fprintf(summary, "instance %s: consent tier %s: nothing is waiting to leave\n", cfg.InstanceID, cfg.Tier)
	case cfg.Tier == v1.TierEventLevel:
		_, err = fmt.Fprintf(summary, "instance %s: consent tier EventLevel: the next batch holds %d events\n", cfg.InstanceID, events)
	default:
		_, err = fmt.Fprintf(summary, "instance %s: consent tier CriticalOnly: %d batches hold %d aggregate cells of closed days\n", cfg.InstanceID, len(batches), cells)
	}
	return err
}

func opsHandler(reg *prometheus.Registry, p *collector.Pipeline) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !p.Ready() {
			http.Error(w, "not ready: the instance database has not been read yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

func stateStore(o Options, namespace, name string) (state.Store, error) {
	if o.StateFile != "" {
		return state.File{Path: o.StateFile}, nil
	}
	var restCfg *rest.Config
	var err error
	if o.Kubeconfig != "" {
		restCfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	} else {
		restCfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("no Kubernetes configuration for the progress object (run in a cluster, or pass --kubeconfig or --state-file): %w", err)
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, err
	}
	return state.ConfigMap{Client: cs, Namespace: namespace, Name: name}, nil
}

// readSecretFile reads a small mounted secret without ever logging its content.
func readSecretFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // paths come from the validated configuration
	if err != nil {
		return nil, fmt.Errorf("cannot open %s: %w", path, errors.Unwrap(err))
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return data, nil
}

// freshTLS closes the connection a request uses once the mounted key pair or CA bundle changed
// since the last handshake (a renewal, an issuer rotation), so the next batch makes a new
// handshake with them: a keep-alive connection, busy or idle, would otherwise go on with the
// old ones.
type freshTLS struct {
	next http.RoundTripper
	tls  *tlsreload.Client
	log  *slog.Logger
}

func (f freshTLS) RoundTrip(r *http.Request) (*http.Response, error) {
	if f.tls.NeedsHandshake() {
		f.log.Info("TLS files changed: this connection is closed after the request, the next one uses them")
		r = r.Clone(r.Context())
		r.Close = true
	}
	resp, err := f.next.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		// The receiver judged the credentials this connection was opened with (expired, or an
		// issuer it no longer trusts): a new handshake may fare better (a CA re-issued with the
		// same key), the same connection never will. It is closed once this answer is read.
		if idle, ok := f.next.(interface{ CloseIdleConnections() }); ok {
			resp.Body = closeIdleOnClose{ReadCloser: resp.Body, closeIdle: idle.CloseIdleConnections}
		}
	}
	return resp, err
}

// closeIdleOnClose closes the transport's idle connections, the one that carried this answer
// among them, once the answer's body is closed.
type closeIdleOnClose struct {
	io.ReadCloser
	closeIdle func()
}

func (c closeIdleOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.closeIdle()
	return err
}
