/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package retention_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/retention"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// TestRunDropsEachDayOnceItLeavesTheRetention: with the runner ticking hourly over five days,
// the stored day's events stay while the day is within the retention and are gone within an
// hour of it leaving, and the metrics say so.
func TestRunDropsEachDayOnceItLeavesTheRetention(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Grant(ctx, "acme", consentv1.TierEventLevel, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 29, 0, 30, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(start)
	st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithClock(clk), store.WithRetention(3), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	stored := time.Date(2026, 11, 27, 18, 0, 0, 0, time.UTC) // two days back: kept until Dec 1 ends
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "b", Kind: batchv1.KindEvents, Cursor: 1, Events: []batchv1.Event{{
		ID: "1", Name: "SearchSubmitted", Timestamp: stored, UserID: "0123456789abcdef0123456789abcdef"}}}
	if res, err := st.InsertEvents(ctx, "acme", b); err != nil || res.Accepted != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	runner := retention.New(st, slog.New(slog.NewJSONHandler(&logs, nil)), reg, clk, time.Hour)
	ran := make(chan struct{})
	go func() {
		runner.Run(ctx)
		close(ran)
	}()
	count := func() int {
		var n int
		if err := r.DB.QueryRow(ctx, `SELECT count(*) FROM events WHERE instance_id = 'acme'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	last := func() float64 { return metric(t, reg, "receiver_maintenance_last_success_timestamp_seconds") }
	waitRun := func(at time.Time) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); last() != float64(at.Unix()); {
			if time.Now().After(deadline) {
				t.Fatalf("no maintenance run at %s", at)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitRun(start)
	goneAt := time.Time{}
	for now := start; now.Before(start.Add(5 * 24 * time.Hour)); {
		if clk.HasWaiters() {
			now = now.Add(time.Hour)
			clk.SetTime(now)
			waitRun(now)
			if count() == 0 && goneAt.IsZero() {
				goneAt = now
			}
			continue
		}
		time.Sleep(time.Millisecond) // the runner is still between its run and its next wait
	}
	// Kept: Nov 27 while the oldest day kept (today - 3) is Nov 27 or earlier, i.e. through Nov 30.
	if want := time.Date(2026, 12, 1, 0, 30, 0, 0, time.UTC); !goneAt.Equal(want) {
		t.Errorf("the day's events were dropped by the run at %s, want %s", goneAt, want)
	}
	// Dropped by then: Nov 27, and Nov 29 and 30 (made ahead at the start); Dec 1 on is kept.
	if got := metric(t, reg, "receiver_event_partitions_dropped_total"); got != 3 {
		t.Errorf("dropped_total = %v, want 3", got)
	}
	days, err := st.PartitionDays(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(days) == 0 || !days[0].Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) || metric(t, reg, "receiver_event_partitions") != float64(len(days)) {
		t.Errorf("partitions left %v (gauge %v), want Dec 1 onwards", days, metric(t, reg, "receiver_event_partitions"))
	}
	if !strings.Contains(logs.String(), `"day":"2026-11-27"`) {
		t.Errorf("no log of the dropped day: %s", logs.String())
	}
	cancel()
	<-ran
}

// TestOnceCountsFailures: a run that fails is counted and logged, not fatal.
func TestOnceCountsFailures(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	runner := retention.New(failing{}, slog.New(slog.NewJSONHandler(&logs, nil)), reg, clocktesting.NewFakeClock(time.Now()), 0)
	if err := runner.Once(context.Background()); err == nil {
		t.Fatal("a failed run reported success")
	}
	if got := metric(t, reg, "receiver_maintenance_failures_total"); got != 1 {
		t.Errorf("failures_total = %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "partition maintenance failed") {
		t.Errorf("failure not logged: %s", logs.String())
	}
}

type failing struct{}

func (failing) MaintainPartitions(context.Context) (store.Maintenance, error) {
	return store.Maintenance{}, errors.New("database down")
}

// metric reads the value of a gauge or counter without labels from reg (0: not there yet).
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	return 0
}
