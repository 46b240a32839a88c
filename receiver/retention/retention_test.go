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
	"github.com/sourcegraph/telemetry-operator/receiver/report"
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
	start := time.Date(2026, 6, 1, 0, 30, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(start)
	st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithClock(clk), store.WithRetention(3), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	stored := time.Date(2026, 5, 30, 18, 0, 0, 0, time.UTC) // two days back: kept until June 2 ends
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "b", Kind: batchv1.KindEvents, Cursor: 1, Events: []batchv1.Event{{
		ID: "1", Name: "SearchSubmitted", Timestamp: stored, UserID: "0123456789abcdef0123456789abcdef"}}}
	if res, err := st.InsertEvents(ctx, "acme", b); err != nil || res.Accepted != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	runner := retention.New(st, slog.New(slog.NewJSONHandler(&logs, nil)), reg, clk, time.Hour).
		RefreshRollups(func(ctx context.Context) (int64, error) { return report.RefreshRollups(ctx, st.Pool()) })
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
	// Kept: May 30 while the oldest day kept (today - 3) is May 30 or earlier, i.e. through June 2.
	if want := time.Date(2026, 6, 3, 0, 30, 0, 0, time.UTC); !goneAt.Equal(want) {
		t.Errorf("the day's events were dropped by the run at %s, want %s", goneAt, want)
	}
	// Dropped by then: May 30, and June 1 and 2 (made at the start); June 3 on is kept.
	if got := metric(t, reg, "receiver_event_partitions_dropped_total"); got != 3 {
		t.Errorf("dropped_total = %v, want 3", got)
	}
	days, err := st.PartitionDays(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(days) == 0 || !days[0].Equal(time.Date(2026, 6, 3, 0, 0, 0, 0, time.UTC)) || metric(t, reg, "receiver_event_partitions") != float64(len(days)) {
		t.Errorf("partitions left %v (gauge %v), want June 3 onwards", days, metric(t, reg, "receiver_event_partitions"))
	}
	// The report's summaries of the dropped day went with it (the day's user, its month's searches).
	var summaries int
	if err := r.DB.QueryRow(ctx, `SELECT (SELECT count(*) FROM rollup_user_days WHERE day < '2026-06-03')
		+ (SELECT count(*) FROM rollup_day_sessions WHERE day < '2026-06-03') + (SELECT count(*) FROM rollup_user_months)`).Scan(&summaries); err != nil {
		t.Fatal(err)
	}
	if summaries != 0 || metric(t, reg, "receiver_rollup_days_refreshed_total") < 1 {
		t.Errorf("%d rollup rows summarize dropped days; %v instance-days refreshed", summaries, metric(t, reg, "receiver_rollup_days_refreshed_total"))
	}
	if !strings.Contains(logs.String(), `"day":"2026-05-30"`) {
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
