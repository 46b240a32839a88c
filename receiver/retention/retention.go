/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package retention runs the receiver's maintenance on a schedule: the days ahead get their
// events partitions before events arrive, the days behind the retention are dropped whole with
// their events and rollups, and the report's rollups of the days that changed are recomputed.
package retention

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// DefaultEvery is how often maintenance runs: often enough that a missed run (the database down
// for a while) delays a drop by an hour, not a day.
const DefaultEvery = time.Hour

// Maintainer is what the store offers for maintenance.
type Maintainer interface {
	MaintainPartitions(ctx context.Context) (store.Maintenance, error)
}

// Runner runs maintenance and reports it in metrics and logs.
type Runner struct {
	st    Maintainer
	log   *slog.Logger
	clock clock.WithTicker
	every time.Duration

	partitions prometheus.Gauge
	dropped    prometheus.Counter
	failures   prometheus.Counter
	lastRun    prometheus.Gauge

	// rollups, when set, refreshes the report's rollups after the partitions are maintained.
	rollups   func(context.Context) (int64, error)
	refreshed prometheus.Counter
}

// RefreshRollups makes every run also refresh the report's rollups with refresh (the report's
// RefreshRollups on the store's pool), so the report finds little left to do.
func (r *Runner) RefreshRollups(refresh func(context.Context) (int64, error)) *Runner {
	r.rollups = refresh
	return r
}

// New returns a Runner for st that runs every interval (0: DefaultEvery) by clk (nil: the real
// clock), registering its metrics with reg (nil: not registered).
func New(st Maintainer, log *slog.Logger, reg prometheus.Registerer, clk clock.WithTicker, every time.Duration) *Runner {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if every <= 0 {
		every = DefaultEvery
	}
	r := &Runner{st: st, log: log, clock: clk, every: every,
		partitions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "receiver_event_partitions", Help: "Days that have an events partition, after the last maintenance.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "receiver_event_partitions_dropped_total", Help: "Events partitions dropped because their day fell out of the retention.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "receiver_maintenance_failures_total", Help: "Maintenance runs that failed (retried at the next run).",
		}),
		lastRun: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "receiver_maintenance_last_success_timestamp_seconds", Help: "When maintenance (partitions, then report rollups) last succeeded (Unix time).",
		}),
		refreshed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "receiver_rollup_days_refreshed_total", Help: "Instance-days whose report rollups were recomputed by maintenance.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.partitions, r.dropped, r.failures, r.lastRun, r.refreshed)
	}
	return r
}

// Once runs maintenance one time.
func (r *Runner) Once(ctx context.Context) error {
	m, err := r.st.MaintainPartitions(ctx)
	for _, d := range m.Created {
		r.log.Info("created events partition", "day", d.Format(time.DateOnly))
	}
	for _, d := range m.Dropped {
		r.log.Info("dropped events partition past the retention", "day", d.Format(time.DateOnly))
	}
	r.dropped.Add(float64(len(m.Dropped)))
	if err != nil {
		r.failures.Inc()
		r.log.Error("partition maintenance failed; retrying at the next run", "err", err)
		return err
	}
	r.partitions.Set(float64(m.Partitions))
	if r.rollups != nil {
		n, err := r.rollups(ctx)
		if err != nil {
			r.failures.Inc()
			r.log.Error("refreshing the report's rollups failed; retrying at the next run", "err", err)
			return err
		}
		r.refreshed.Add(float64(n))
	}
	r.lastRun.Set(float64(r.clock.Now().Unix()))
	return nil
}

// Run runs maintenance now and then every interval until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	t := r.clock.NewTicker(r.every)
	defer t.Stop()
	for {
		_ = r.Once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}
