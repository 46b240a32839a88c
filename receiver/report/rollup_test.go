/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package report_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
			u := fmt.Sprintf("f%031x", rng.IntN(12))
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

	answered := map[string]int{}
	compare := func(stage string) {
		t.Helper()
		for _, now := range times {
			for _, scope := range []string{"", "diff-b", "diff-crit"} {
				o := report.Options{Now: now, Instance: scope, PowerUserDays: 2}
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
				if scope == "" {
					for i := range want {
						answered[want[i].Title] += len(want[i].Rows)
					}
				}
			}
		}
	}
	// An instance that sent only aggregates.
	if err := rcv.Grant(ctx, "diff-crit", consentv1.TierCriticalOnly, since); err != nil {
		t.Fatal(err)
	}
	for d := 1; d <= 30; d++ {
		day := end.AddDate(0, 0, -d).Format(time.DateOnly)
		b := &batchv1.Batch{InstanceID: "diff-crit", BatchID: "c" + day, Kind: batchv1.KindAggregates, Tier: "CriticalOnly", Aggregates: []batchv1.Aggregate{
			{Day: day, Metric: "event_count", Dimension: "ViewBlob", Value: int64(10 + d%9*7), Users: 5, Final: true},
			{Day: day, Metric: "searches_by_type", Dimension: "literal", Value: int64(5 + d%4), Users: 5, Final: true}}}
		if _, err := rcv.Store.PublishAggregates(ctx, "diff-crit", b); err != nil {
			t.Fatal(err)
		}
	}
	compare("first refresh")

	// The feature map changes (a new catalog) and changes back: everything is summarized again.
	if _, err := rcv.Store.Pool().Exec(ctx, `SELECT set_report_feature_map('SearchSubmitted', '{x}', '{y}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := report.Build(ctx, reporting, report.Options{Now: times[0]}); !errors.Is(err, report.ErrRollupsNotReady) {
		t.Errorf("report with another feature map recorded: %v, want ErrRollupsNotReady", err)
	}
	if _, err := report.RefreshRollups(ctx, rcv.Store.Pool()); err != nil {
		t.Fatal(err)
	}
	compare("after a full rebuild")

	// Late events into days already summarized, a withdrawal, an erasure.
	randomFleet(t, rng, instances[:1], end, &id)
	withdrawn := end.Add(-9*24*time.Hour - 5*time.Hour)
	from, to := end.Add(-30*24*time.Hour+7*time.Hour), end.Add(-25*24*time.Hour+3*time.Hour)
	// The days whose events go: no day, month or week summary of them may remain.
	var goneDays []string
	rows, err := rcv.DB.Query(ctx, `SELECT DISTINCT instance_id || ' ' || ((ts AT TIME ZONE 'UTC')::date)::text FROM events
		WHERE (instance_id = 'diff-c' AND ts >= $1 AND ts < $2) OR (instance_id = 'diff-b' AND ts >= $3)`, from, to, withdrawn)
	if err != nil {
		t.Fatal(err)
	}
	if goneDays, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(goneDays) < 3 {
		t.Fatalf("days losing events: %v %v", goneDays, err)
	}
	if err := rcv.Grant(ctx, "diff-b", consentv1.TierCriticalOnly, withdrawn); err != nil {
		t.Fatal(err)
	}
	if _, err := rcv.Store.Erase(ctx, receivertest.TestCluster, consentv1.ErasureRequest{InstanceID: "diff-c",
		Owner: consentv1.Owner{Namespace: "diff-c", Name: "diff-c"}, RequestID: "e1", Scope: consentv1.ScopeEvents,
		From: &from, To: &to, RequestedBy: consentv1.RequesterSupport}); err != nil {
		t.Fatal(err)
	}
	// Until the next refresh, nothing summarizes those days: not the days, runs, months or weeks.
	var summarized int
	if err := rcv.DB.QueryRow(ctx, `
WITH gone AS (SELECT split_part(g, ' ', 1) AS instance_id, split_part(g, ' ', 2)::date AS day FROM unnest($1::text[]) g)
SELECT (SELECT count(*) FROM rollup_user_days r JOIN gone USING (instance_id, day))
  + (SELECT count(*) FROM rollup_day_sessions r JOIN gone USING (instance_id, day))
  + (SELECT count(*) FROM rollup_user_months r JOIN gone g ON g.instance_id = r.instance_id AND r.month = date_trunc('month', g.day::timestamp)::date)
  + (SELECT count(*) FROM rollup_user_weeks r JOIN gone g ON g.instance_id = r.instance_id AND r.week = date_trunc('week', g.day::timestamp)::date)`,
		goneDays).Scan(&summarized); err != nil {
		t.Fatal(err)
	}
	if summarized != 0 {
		t.Errorf("%d rollup rows still summarize days whose events were erased or withdrawn", summarized)
	}
	compare("after late events, a withdrawal and an erasure")

	var left int
	if err := rcv.DB.QueryRow(ctx, `SELECT (SELECT count(*) FROM rollup_dirty) + (SELECT count(*) FROM rollup_dirty_periods)`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d days or periods still queued after the report refreshed (%v)", left, err)
	}
	for _, title := range []string{"Searches per user per month by pattern type", "Power users", "Sessions using more than one feature", "Where to intervene", "Stickiest features"} {
		if answered[title] == 0 {
			t.Errorf("%s answered nothing in any comparison: the comparison proves nothing for it", title)
		}
	}
}

// TestRefreshIgnoresTheCallersTemporaryTables: a reporting login's temporary tables named like
// the refresh's working tables, with triggers, never run inside the refresh (which has the schema
// owner's rights); the refresh uses its own.
func TestRefreshIgnoresTheCallersTemporaryTables(t *testing.T) {
	ctx := context.Background()
	if err := rcv.Grant(ctx, "hijack", consentv1.TierEventLevel, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	s := &seeder{t: t, id: 5_000_000}
	s.event("hijack", "H", catalogv1.SearchEvent, time.Date(2026, 10, 3, 12, 0, 0, 0, time.UTC), nil)
	conn, err := reporting.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, sql := range []string{
		`CREATE TEMP TABLE hijacked (who text)`,
		`CREATE FUNCTION pg_temp.hijack() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO pg_temp.hijacked VALUES (current_user); RETURN NEW; END $$`,
		`CREATE TEMP TABLE rollup_refresh_events (instance_id text, user_id text, ts timestamptz, name text, pattern_type text, feature text)`,
		`CREATE TEMP TABLE rollup_refresh_periods (instance_id text, month date, week date)`,
		`CREATE TRIGGER h BEFORE INSERT ON pg_temp.rollup_refresh_events FOR EACH ROW EXECUTE FUNCTION pg_temp.hijack()`,
		`CREATE TRIGGER h BEFORE INSERT ON pg_temp.rollup_refresh_periods FOR EACH ROW EXECUTE FUNCTION pg_temp.hijack()`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for {
		var n int64
		if err := conn.QueryRow(ctx, `SELECT refresh_report_rollups()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	var hijacked, summarized int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_temp.hijacked`).Scan(&hijacked); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM report_user_days WHERE instance_id = 'hijack'`).Scan(&summarized); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT set_report_feature_map('SearchSubmitted', '{x}', '{y}')`); err == nil {
		t.Error("a reporting login changed the feature map")
	}
	if hijacked != 0 || summarized != 1 {
		t.Errorf("the caller's triggers ran %d times inside the refresh; %d days summarized, want 0 and 1", hijacked, summarized)
	}
}

// TestErasureWaitsForARefreshInProgress: an erasure does not slip between a refresh reading a
// day's events and committing its summary: it waits for the refresh, then removes the summary.
func TestErasureWaitsForARefreshInProgress(t *testing.T) {
	ctx := context.Background()
	if err := rcv.Grant(ctx, "midway", consentv1.TierEventLevel, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	s := &seeder{t: t, id: 6_000_000}
	day := time.Date(2026, 10, 5, 0, 0, 0, 0, time.UTC)
	s.event("midway", "M", catalogv1.SearchEvent, day.Add(9*time.Hour), nil)
	if _, err := report.RefreshRollups(ctx, rcv.Store.Pool()); err != nil {
		t.Fatal(err)
	}
	refresh, err := rcv.DB.Begin(ctx) // a refresh in progress holds the rollups' lock
	if err != nil {
		t.Fatal(err)
	}
	if _, err := refresh.Exec(ctx, `SELECT pg_advisory_xact_lock(2121261691)`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		from, to := day, day.Add(24*time.Hour)
		_, err := rcv.Store.Erase(ctx, receivertest.TestCluster, consentv1.ErasureRequest{InstanceID: "midway",
			Owner: consentv1.Owner{Namespace: "midway", Name: "midway"}, RequestID: "m1", Scope: consentv1.ScopeEvents,
			From: &from, To: &to, RequestedBy: consentv1.RequesterSupport})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the erasure finished during the refresh (%v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := refresh.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var left int
	if err := rcv.DB.QueryRow(ctx, `SELECT count(*) FROM rollup_user_days WHERE instance_id = 'midway'`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d summaries of the erased day left (%v)", left, err)
	}
}

// TestSessionsJoinAcrossMidnights: the sessions answer equals the raw-event one for sessions
// that the rollups' midnight marks decide: a chain over five days, runs exactly 30 minutes apart
// across midnight, a whole day that is one run joining both neighbours, a later day summarized
// before late events into the day before join it, a late event bridging two summarized runs,
// then an erasure splitting the chain and a retention drop inside it. (Cases from the review of
// the midnight marks.)
func TestSessionsJoinAcrossMidnights(t *testing.T) {
	ctx := context.Background()
	inst := "zzrev"
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := rcv.Grant(ctx, inst, consentv1.TierEventLevel, since); err != nil {
		t.Fatal(err)
	}
	// Two event names of different features.
	var n1, n2 string
	for _, n := range catalogv1.Current().Names() {
		f := catalogv1.Current().FeatureOf(n)
		if f == "" {
			continue
		}
		if n1 == "" {
			n1 = n
		} else if catalogv1.Current().FeatureOf(n1) != f {
			n2 = n
			break
		}
	}
	if n1 == "" || n2 == "" {
		t.Fatal("the catalog has no two events of different features")
	}
	id := 5_000_000
	put := func(u string, ts time.Time, name string) {
		id++
		b := &batchv1.Batch{InstanceID: inst, BatchID: fmt.Sprintf("z%d", id), Kind: batchv1.KindEvents, Tier: "EventLevel",
			Events: []batchv1.Event{{ID: fmt.Sprint(id), Name: name, Timestamp: ts, UserID: fmt.Sprintf("f%031x", u)}}}
		if _, err := rcv.Store.InsertEvents(ctx, inst, b); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	day := func(d int) time.Time { return base.AddDate(0, 0, d) }
	// A chain over five days: events every 25 minutes from day 5 22:00 to day 9 01:00.
	for ts := day(5).Add(22 * time.Hour); ts.Before(day(9).Add(time.Hour)); ts = ts.Add(25 * time.Minute) {
		put("c", ts, n1)
	}
	put("c", day(9).Add(time.Hour), n2)
	// Exactly 30 minutes across midnight, with a day of two runs between.
	put("x", day(10).Add(-15*time.Minute), n1)
	put("x", day(10).Add(15*time.Minute), n1)
	put("x", day(10).Add(23*time.Hour+45*time.Minute), n1)
	put("x", day(11).Add(15*time.Minute), n2)
	// A whole day that is one run, first and last, joining both neighbouring days.
	for ts := day(12).Add(10 * time.Minute); ts.Before(day(13)); ts = ts.Add(20 * time.Minute) {
		put("s", ts, n1)
	}
	put("s", day(12).Add(-10*time.Minute), n2)
	put("s", day(13).Add(5*time.Minute), n2)
	refresh(t)
	// Out of order: the later day is summarized first, then late events into the day before join it.
	put("o", day(15).Add(10*time.Minute), n1)
	put("o", day(15).Add(5*time.Hour), n1)
	refresh(t)
	put("o", day(14).Add(23*time.Hour+50*time.Minute), n2)
	put("o", day(14).Add(3*time.Hour), n2)
	// Late events bridging two summarized runs across the midnight of day 16.
	put("b", day(16).Add(23*time.Hour), n1)
	put("b", day(17).Add(40*time.Minute), n2)
	refresh(t)
	put("b", day(17).Add(10*time.Minute), n1)
	put("b", day(16).Add(23*time.Hour+45*time.Minute), n1)

	compare := func(stage string) {
		t.Helper()
		for d := 4; d <= 19; d++ {
			for _, off := range []time.Duration{0, time.Microsecond, -time.Microsecond, 25 * time.Minute} {
				now := day(d).Add(off)
				for _, scope := range []string{inst} {
					o := report.Options{Now: now, Instance: scope, PowerUserDays: 2}
					got, err := report.Build(ctx, reporting, o)
					if err != nil {
						t.Fatal(err)
					}
					_, want, err := referenceReport(ctx, reporting, o)
					if err != nil {
						t.Fatal(err)
					}
					for i := range want {
						if want[i].Title != "Sessions using more than one feature" {
							continue
						}
						if !reflect.DeepEqual(got.Sections[i].Rows, want[i].Rows) {
							t.Errorf("%s now %s scope %q: got %v want %v", stage, now, scope, got.Sections[i].Rows, want[i].Rows)
						}
					}
				}
			}
		}
	}
	compare("seeded")
	// An erasure splitting the chain's day 7.
	f1, t1 := day(7).Add(3*time.Hour), day(7).Add(4*time.Hour)
	if _, err := rcv.Store.Erase(ctx, receivertest.TestCluster, consentv1.ErasureRequest{InstanceID: inst,
		Owner: consentv1.Owner{Namespace: inst, Name: inst}, RequestID: "z1", Scope: consentv1.ScopeEvents,
		From: &f1, To: &t1, RequestedBy: consentv1.RequesterSupport}); err != nil {
		t.Fatal(err)
	}
	compare("after erase")
	// Last in the package: the drop takes every instance's days before it.
	if _, err := rcv.DB.Exec(ctx, `SELECT drop_event_partitions('2026-10-08')`); err != nil {
		t.Fatal(err)
	}
	compare("after a retention drop")
}

func refresh(t *testing.T) {
	t.Helper()
	if _, err := report.RefreshRollups(context.Background(), rcv.Store.Pool()); err != nil {
		t.Fatal(err)
	}
}
