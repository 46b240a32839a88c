/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package report_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/report"
)

// randomFleet stores events of instances over the 70 days before end through the store, as
// collectors would: users with runs of events a few minutes apart, many of them crossing
// midnight, random event names from the catalog, and searches of every pattern type.
func randomFleet(t *testing.T, rng *rand.Rand, instances []string, end time.Time, nextID *int) {
	t.Helper()
	ctx := context.Background()
	names := catalogv1.Current().Names()
	patterns := []any{"regexp", "literal", "structural", "keyword", nil}
	for _, inst := range instances {
		var events []batchv1.Event
		for range 60 {
			u := fmt.Sprintf("%032x", rng.IntN(12))
			start := end.Add(-time.Duration(rng.Int64N(int64(70 * 24 * time.Hour))))
			if rng.IntN(3) == 0 { // close to midnight, so runs cross it
				start = start.Truncate(24 * time.Hour).Add(-time.Duration(rng.IntN(40)) * time.Minute)
			}
			ts := start
			for range 1 + rng.IntN(8) {
				*nextID++
				e := batchv1.Event{ID: fmt.Sprint(*nextID), Name: names[rng.IntN(len(names))], Timestamp: ts.Truncate(time.Microsecond), UserID: u}
				if rng.IntN(3) == 0 {
					e.Name = catalogv1.SearchEvent
					if p := patterns[rng.IntN(len(patterns))]; p != nil {
						e.Properties = map[string]any{"patternType": p}
					}
				}
				events = append(events, e)
				ts = ts.Add(time.Duration(rng.IntN(45)) * time.Minute)
			}
		}
		for len(events) > 0 {
			n := min(len(events), 1+rng.IntN(60))
			b := &batchv1.Batch{InstanceID: inst, BatchID: fmt.Sprintf("r%d", *nextID+len(events)), Kind: batchv1.KindEvents, Tier: "EventLevel", Events: events[:n]}
			if _, err := rcv.Store.InsertEvents(ctx, inst, b); err != nil {
				t.Fatal(err)
			}
			events = events[n:]
		}
	}
}

// TestRollupAnswersEqualRawAnswers: the rollup-based report gives the answers the raw-event
// report gives, row for row, for report times mid-day, on midnight and a microsecond either
// side of it, and after events arrive late into days already summarized, a consent withdrawal
// and an erasure change the stored events.
func TestRollupAnswersEqualRawAnswers(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(11, 12))
	instances := []string{"diff-a", "diff-b", "diff-c"}
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, inst := range instances {
		if err := rcv.Grant(ctx, inst, consentv1.TierEventLevel, since); err != nil {
			t.Fatal(err)
		}
	}
	end := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	id := 1_000_000
	randomFleet(t, rng, instances, end, &id)

	midnight := time.Date(2026, 11, 12, 0, 0, 0, 0, time.UTC)
	times := []time.Time{
		time.Date(2026, 11, 15, 13, 37, 0, 0, time.UTC),
		midnight, midnight.Add(-time.Microsecond), midnight.Add(time.Microsecond),
		end.Add(-time.Duration(rng.Int64N(int64(20 * 24 * time.Hour)))).Truncate(time.Microsecond),
	}
	// A report time 28 days after a stored event: the event sits exactly on the window's open end.
	var onEdge time.Time
	if err := rcv.DB.QueryRow(ctx, `SELECT max(ts) FROM events WHERE instance_id = 'diff-a' AND ts < $1`, end.Add(-20*24*time.Hour)).Scan(&onEdge); err != nil {
		t.Fatal(err)
	}
	times = append(times, onEdge.Add(28*24*time.Hour))

	compare := func(stage string) {
		t.Helper()
		for _, now := range times {
			for _, scope := range []string{"", "diff-b"} {
				o := report.Options{Now: now, Instance: scope}
				got, err := report.Build(ctx, reporting, o)
				if err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
				wantLevel, want, err := referenceReport(ctx, reporting, o)
				if err != nil {
					t.Fatalf("%s: reference: %v", stage, err)
				}
				if !reflect.DeepEqual(got.EventLevel, wantLevel) {
					t.Errorf("%s, now %s, scope %q: EventLevel instances %v, want %v", stage, now, scope, got.EventLevel, wantLevel)
				}
				for i := range want {
					if !reflect.DeepEqual(got.Sections[i].Rows, want[i].Rows) {
						t.Errorf("%s, now %s, scope %q: %s differs:\n got %v\nwant %v", stage, now, scope, want[i].Title, got.Sections[i].Rows, want[i].Rows)
					}
				}
				if len(want[0].Rows) == 0 || len(want[1].Rows)+len(want[2].Rows) == 0 {
					t.Fatalf("%s, now %s: the dataset answers nothing; the comparison would prove nothing", stage, now)
				}
			}
		}
	}
	compare("first refresh")

	// Late events into days already summarized, a withdrawal, an erasure.
	randomFleet(t, rng, instances[:1], end, &id)
	if err := rcv.Grant(ctx, "diff-b", consentv1.TierCriticalOnly, end.Add(-9*24*time.Hour-5*time.Hour)); err != nil {
		t.Fatal(err)
	}
	from, to := end.Add(-30*24*time.Hour+7*time.Hour), end.Add(-25*24*time.Hour+3*time.Hour)
	if _, err := rcv.Store.Erase(ctx, receivertest.TestCluster, consentv1.ErasureRequest{InstanceID: "diff-c",
		Owner: consentv1.Owner{Namespace: "diff-c", Name: "diff-c"}, RequestID: "e1", Scope: consentv1.ScopeEvents,
		From: &from, To: &to, RequestedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	// Until the next refresh, nothing summarizes the erased or withdrawn days.
	var summarized int
	if err := rcv.DB.QueryRow(ctx, `SELECT (SELECT count(*) FROM rollup_user_days WHERE instance_id = 'diff-c' AND day BETWEEN $1::date AND $2::date)
		+ (SELECT count(*) FROM rollup_day_sessions WHERE instance_id = 'diff-b' AND day >= $3::date)`,
		from.Format(time.DateOnly), to.Format(time.DateOnly), end.Add(-9*24*time.Hour-5*time.Hour).Format(time.DateOnly)).Scan(&summarized); err != nil {
		t.Fatal(err)
	}
	if summarized != 0 {
		t.Errorf("%d rollup rows still summarize erased or withdrawn days", summarized)
	}
	compare("after late events, a withdrawal and an erasure")

	var left int
	if err := rcv.DB.QueryRow(ctx, `SELECT count(*) FROM rollup_dirty`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d days still queued after the report refreshed (%v)", left, err)
	}
}
