/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/deliver"
)

// consentTimeline lays out, from base: EventLevel for 2h, CriticalOnly for 2h, Off for 2h, then
// EventLevel again, after an Off period from 1h before base (so that events recorded before
// consent was granted exist too).
func consentTimeline(base time.Time) consentv1.Timeline {
	return consentv1.Timeline{
		{At: consentSince, Tier: consentv1.TierEventLevel}, // an old window, long before any row
		{At: base.Add(-time.Hour), Tier: consentv1.TierOff},
		{At: base, Tier: consentv1.TierEventLevel},
		{At: base.Add(2 * time.Hour), Tier: consentv1.TierCriticalOnly},
		{At: base.Add(4 * time.Hour), Tier: consentv1.TierOff},
		{At: base.Add(6 * time.Hour), Tier: consentv1.TierEventLevel},
	}
}

// plantAcrossPeriods writes allow-listed events with timestamps spread over every period, in
// shuffled order so that ids do not follow time. It returns how many lie in EventLevel periods.
func plantAcrossPeriods(in *instance, base time.Time, tl consentv1.Timeline) int {
	in.t.Helper()
	r := rand.New(rand.NewPCG(7, 8)) //nolint:gosec // test data
	var stamps []time.Time
	for ts := base.Add(-50 * time.Minute); ts.Before(base.Add(7*time.Hour + 50*time.Minute)); ts = ts.Add(67 * time.Second) {
		stamps = append(stamps, ts)
	}
	r.Shuffle(len(stamps), func(i, j int) { stamps[i], stamps[j] = stamps[j], stamps[i] })
	want := 0
	for i, ts := range stamps {
		in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp, public_argument) VALUES ('hover', $1, 'WEB', '5.3.0', $2, '{"languageId":"go"}')`, i%9+1, ts)
		if tl.TierAt(ts) == consentv1.TierEventLevel {
			want++
		}
	}
	return want
}

// storedOutside counts the instance's stored events whose timestamp lies outside every
// EventLevel window of tl, and all its stored events.
func storedOutside(t *testing.T, id string, tl consentv1.Timeline) (outside, total int) {
	t.Helper()
	rows, err := rcv.DB.Query(context.Background(), "SELECT ts FROM events WHERE instance_id = $1", id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var ts time.Time
		if err := rows.Scan(&ts); err != nil {
			t.Fatal(err)
		}
		total++
		if tl.TierAt(ts) != consentv1.TierEventLevel {
			outside++
		}
	}
	return outside, total
}

// TestEventsLeaveOnlyFromEventLevelWindows judges by event timestamps in the receiver's
// database, across every tier transition, with each enforcement point on its own: an honest
// collector and receiver; a stale or tampered collector whose configuration still says
// EventLevel throughout (the receiver alone must hold); and a receiver that would take
// everything (the collector alone must hold).
func TestEventsLeaveOnlyFromEventLevelWindows(t *testing.T) {
	base := time.Now().UTC().Add(-10 * time.Hour).Truncate(time.Second)
	truth := consentTimeline(base)
	everything := consentv1.Timeline{{At: consentSince, Tier: consentv1.TierEventLevel}}
	// Trials that end at their expiry with nobody recording it, one renewed after it lapsed.
	until := func(d time.Duration) *time.Time { u := base.Add(d); return &u }
	trials := consentv1.Timeline{
		{At: consentSince, Tier: consentv1.TierEventLevel},
		{At: base.Add(-time.Hour), Tier: consentv1.TierOff},
		{At: base, Tier: consentv1.TierEventLevel, Until: until(90 * time.Minute)},
		{At: base.Add(4 * time.Hour), Tier: consentv1.TierOff},
		{At: base.Add(5 * time.Hour), Tier: consentv1.TierEventLevel, Until: until(6 * time.Hour)},
		{At: base.Add(7 * time.Hour), Tier: consentv1.TierEventLevel},
	}
	// What they mean, written out by hand (the judge of what was stored: no Until in it).
	trialsTruth := consentv1.Timeline{
		{At: consentSince, Tier: consentv1.TierEventLevel},
		{At: base.Add(-time.Hour), Tier: consentv1.TierOff},
		{At: base, Tier: consentv1.TierEventLevel},
		{At: base.Add(90 * time.Minute), Tier: consentv1.TierCriticalOnly},
		{At: base.Add(4 * time.Hour), Tier: consentv1.TierOff},
		{At: base.Add(5 * time.Hour), Tier: consentv1.TierEventLevel},
		{At: base.Add(6 * time.Hour), Tier: consentv1.TierCriticalOnly},
		{At: base.Add(7 * time.Hour), Tier: consentv1.TierEventLevel},
	}
	forgotten := make(consentv1.Timeline, len(trials)) // a stale configuration without the expiries
	for i, tr := range trials {
		tr.Until = nil
		forgotten[i] = tr
	}
	cases := []struct {
		name                  string
		truth, ledger, config consentv1.Timeline
	}{
		{"collector and receiver agree", truth, truth, truth},
		{"a collector that ignores consent: the receiver refuses", truth, truth, everything},
		{"a receiver that would take anything: the collector filters", truth, everything, truth},
		{"trials: collector and receiver agree", trialsTruth, trials, trials},
		{"trials: a collector configured before the expiries were known: the receiver refuses", trialsTruth, trials, forgotten},
		{"trials: a receiver that would take anything: the collector filters", trialsTruth, everything, trials},
		{"trials: the operator's configuration, without Until", trialsTruth, everything, trials.Effective()},
	}
	for _, tc := range cases {
		truth := tc.truth
		t.Run(tc.name, func(t *testing.T) {
			in := newInstanceConsent(t, v1.TierEventLevel, 100, tc.ledger)
			cfg, err := collector.LoadConfig(in.config)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Consent = tc.config
			in.writeConfig(*cfg)
			want := plantAcrossPeriods(in, base, truth)
			// Saved progress must not matter: start once without, drain, then again from the
			// saved cursor after more rows were written into a closed period.
			p := in.pipeline()
			drain(t, p)
			in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', 1, 'WEB', '5.3.0', $1)`, base.Add(5*time.Hour))
			if truth.TierAt(base.Add(5*time.Hour)) == consentv1.TierEventLevel {
				want++
			}
			drain(t, in.pipeline())
			outside, total := storedOutside(t, in.id, truth)
			if outside != 0 {
				t.Fatalf("%d stored events were recorded outside EventLevel consent", outside)
			}
			if total != want {
				t.Fatalf("stored %d events, want the %d recorded inside EventLevel windows", total, want)
			}
			if pr := p.Progress(); pr.Cursor == 0 {
				t.Fatalf("the cursor did not move past rows that may never leave: %+v", pr)
			}
		})
	}
}

// TestAggregatesNeverCountOffPeriods: aggregates count only events recorded while the tier in
// force allowed them; users active only during an Off period are in no count.
func TestAggregatesNeverCountOffPeriods(t *testing.T) {
	today := time.Now().UTC().Truncate(24 * time.Hour)
	day := func(n int) time.Time { return today.AddDate(0, 0, n) }
	tl := consentv1.Timeline{
		{At: consentSince, Tier: consentv1.TierCriticalOnly},
		{At: day(-5), Tier: consentv1.TierOff},
		{At: day(-3), Tier: consentv1.TierCriticalOnly},
	}
	in := newInstanceConsent(t, v1.TierCriticalOnly, 100, tl)
	add := func(users []int, d time.Time) {
		for _, u := range users {
			in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', $1, 'WEB', '5.3.0', $2)`, u, d.Add(10*time.Hour))
		}
	}
	add([]int{1, 2, 3, 4, 5, 6}, day(-6))           // CriticalOnly: counted
	add([]int{11, 12, 13, 14, 15, 16, 17}, day(-5)) // Off: never counted
	add([]int{11, 12, 13, 14, 15, 16, 17}, day(-4)) // Off: never counted
	add([]int{21, 22, 23, 24, 25}, day(-2))         // CriticalOnly: counted
	p := in.pipeline()
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	cell := func(d time.Time, metric, dim string) (int64, bool) {
		var v int64
		err := rcv.DB.QueryRow(context.Background(),
			"SELECT value FROM aggregates WHERE instance_id = $1 AND day = $2 AND metric = $3 AND dimension = $4", in.id, d.Format(time.DateOnly), metric, dim).Scan(&v)
		return v, err == nil
	}
	if v, ok := cell(day(-6), "event_count", "hover"); !ok || v != 6 {
		t.Fatalf("hover events on a CriticalOnly day = %d (published %v), want 6", v, ok)
	}
	for _, d := range []time.Time{day(-5), day(-4)} {
		if v, ok := cell(d, "event_count", "hover"); ok {
			t.Fatalf("an Off day was published: hover = %d on %s", v, d.Format(time.DateOnly))
		}
	}
	// 6 users four days before and 5 on the day: 11 in the 7 days ending with it. Counting the
	// Off period would give 18.
	if v, ok := cell(day(-2), "active_users_7d", ""); !ok || v != 11 {
		t.Fatalf("active users in the 7 days ending %s = %d (published %v), want 11", day(-2).Format(time.DateOnly), v, ok)
	}
}

// TestADayPartlyOffIsNeverPublished: the day of a withdrawal to Off, and the day consent came
// back in the middle of, are published by no collector: an honest one leaves them out, and the
// receiver refuses them from one whose configuration still says CriticalOnly throughout (its
// cells count the Off hours: the receiver cannot tell), even after the later grant.
func TestADayPartlyOffIsNeverPublished(t *testing.T) {
	today := time.Now().UTC().Truncate(24 * time.Hour)
	day := func(n int) time.Time { return today.AddDate(0, 0, n) }
	tl := consentv1.Timeline{
		{At: consentSince, Tier: consentv1.TierCriticalOnly},
		{At: day(-5).Add(6 * time.Hour), Tier: consentv1.TierOff},
		{At: day(-3).Add(18 * time.Hour), Tier: consentv1.TierCriticalOnly},
	}
	stale := consentv1.Timeline{{At: consentSince, Tier: consentv1.TierCriticalOnly}}
	for _, tc := range []struct {
		name   string
		config consentv1.Timeline
	}{{"an honest collector", tl}, {"a collector still configured CriticalOnly throughout", stale}} {
		t.Run(tc.name, func(t *testing.T) {
			in := newInstanceConsent(t, v1.TierCriticalOnly, 100, tl)
			cfg, err := collector.LoadConfig(in.config)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Consent = tc.config
			in.writeConfig(*cfg)
			for _, d := range []time.Time{day(-6), day(-5), day(-4), day(-3), day(-2)} {
				// At 03:00 and 21:00, inside the CriticalOnly hours of the partial days (enough
				// users for cells by themselves, so the honest collector has cells to withhold),
				// and at noon, inside their Off hours.
				for _, h := range []time.Duration{3 * time.Hour, 12 * time.Hour, 21 * time.Hour} {
					for u := 1; u <= 6; u++ {
						in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', $1, 'WEB', '5.3.0', $2)`, u, d.Add(h))
					}
				}
			}
			if _, err := in.pipeline().RunOnce(context.Background()); err != nil {
				t.Fatal(err)
			}
			published := map[string]bool{}
			for k := range publishedCells(t, in) {
				published[k.day] = true
			}
			for n, want := range map[int]bool{-6: true, -5: false, -4: false, -3: false, -2: true} {
				if d := day(n).Format(time.DateOnly); published[d] != want {
					t.Errorf("cells of %s published: %v, want %v (%v)", d, published[d], want, published)
				}
			}
		})
	}
}

// TestAggregatesNeverCountEventLevelPeriods: after a downgrade from EventLevel, the receiver
// holds the EventLevel part of the day event by event; a cell that also counted it would give the
// CriticalOnly part away by difference. A day during part of which EventLevel was in force has no
// cells at all (the receiver cannot tell what they counted), and the days after it count only the
// CriticalOnly period, in their rolling windows too.
func TestAggregatesNeverCountEventLevelPeriods(t *testing.T) {
	today := time.Now().UTC().Truncate(24 * time.Hour)
	day := func(n int) time.Time { return today.AddDate(0, 0, n) }
	downgrade := day(-3).Add(12 * time.Hour)
	in := newInstanceConsent(t, v1.TierCriticalOnly, 100, consentv1.Timeline{
		{At: consentSince, Tier: consentv1.TierEventLevel},
		{At: downgrade, Tier: consentv1.TierCriticalOnly},
	})
	add := func(first, last int, at time.Time) {
		for u := first; u <= last; u++ {
			in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', $1, 'WEB', '5.3.0', $2)`, u, at)
		}
	}
	add(1, 9, day(-4).Add(10*time.Hour))    // EventLevel all day
	add(1, 8, downgrade.Add(-2*time.Hour))  // EventLevel part of the downgrade day
	add(11, 16, downgrade.Add(2*time.Hour)) // CriticalOnly part: 6 users
	add(11, 16, day(-2).Add(10*time.Hour))  // CriticalOnly all day: the same 6 users
	p := in.pipeline()
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	cells := publishedCells(t, in)
	for k, v := range cells {
		if k.day <= day(-3).Format(time.DateOnly) {
			t.Errorf("a day under EventLevel, wholly or in part, has a cell: %v = %v", k, v)
		}
	}
	d := day(-2).Format(time.DateOnly)
	for _, k := range []aggregateKey{{d, "event_count", "hover"}, {d, "active_users_1d", ""}, {d, "active_users_28d", ""}} {
		if got := cells[k]; got[1] != 6 {
			t.Errorf("%v = %v, want the 6 users of the CriticalOnly period only (15 counting the EventLevel days)", k, got)
		}
	}
	// Withheld: the cells suppressed, and those the receiver refused (none, when the collector
	// sends no day the receiver refuses).
	if refused := float64(p.Progress().EventsDropped) - testutil.ToFloat64(p.Metrics.EventsDropped.WithLabelValues("suppressed")); refused != 0 {
		t.Errorf("%.0f cells refused: the collector sent cells of a day the receiver refuses", refused)
	}
}

// TestAggregatesWaitForTheDowngradeToBeRecorded: the operator enforces a lowering from
// EventLevel on the collector before the receiver records it. Until it does, the receiver's record
// still says EventLevel and would refuse the days after the lowering; they wait, and are
// published once it is recorded.
func TestAggregatesWaitForTheDowngradeToBeRecorded(t *testing.T) {
	today := time.Now().UTC().Truncate(24 * time.Hour)
	day := func(n int) time.Time { return today.AddDate(0, 0, n) }
	since := consentSince
	in := newInstanceConsent(t, v1.TierEventLevel, 100, consentv1.Timeline{{At: since, Tier: consentv1.TierEventLevel, RecordedAt: &since}})
	cfg, err := collector.LoadConfig(in.config)
	if err != nil {
		t.Fatal(err)
	}
	downgrade := day(-3)
	cfg.Tier = v1.TierCriticalOnly
	cfg.Consent = append(cfg.Consent, consentv1.Transition{At: downgrade, Tier: consentv1.TierCriticalOnly}) // pending: not recorded yet
	in.writeConfig(*cfg)
	for u := 11; u <= 16; u++ {
		in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', $1, 'WEB', '5.3.0', $2)`, u, day(-2).Add(10*time.Hour))
	}
	p := in.pipeline()
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(publishedCells(t, in)); n != 0 {
		t.Fatalf("%d cells sent before the receiver recorded the downgrade", n)
	}
	if through := p.Progress().AggregatesThrough; through >= downgrade.Format(time.DateOnly) {
		t.Fatalf("aggregates marked published through %s, past the day of the unrecorded downgrade", through)
	}

	recorded := downgrade
	grant(t, in.id, consentv1.Timeline{{At: downgrade, Tier: consentv1.TierCriticalOnly}})
	cfg.Consent[len(cfg.Consent)-1].RecordedAt = &recorded
	in.writeConfig(*cfg)
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := publishedCells(t, in)[aggregateKey{day(-2).Format(time.DateOnly), "event_count", "hover"}]; got[1] != 6 {
		t.Fatalf("hover on %s = %v once the downgrade is recorded, want 6 users", day(-2).Format(time.DateOnly), got)
	}
}

// TestAWindowClosedWhileABatchWaitsIsObeyed: a batch read under a configuration whose window
// has since been closed (the tier is still EventLevel: consent was withdrawn and granted again)
// is not sent; the next round reads under the new windows. The receiver here would take it.
func TestAWindowClosedWhileABatchWaitsIsObeyed(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("hover", 30, 5, `{"languageId":"go"}`) // recorded over the last 20 hours
	p := in.pipeline()
	now := time.Now().UTC().Truncate(time.Second)
	var once sync.Once
	rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if r.URL.Path != batchv1.PathBatches {
			return false
		}
		first := false
		once.Do(func() {
			first = true
			cfg, err := collector.LoadConfig(in.config)
			if err != nil {
				t.Error(err)
				return
			}
			cfg.Consent = consentv1.Timeline{
				{At: consentSince, Tier: consentv1.TierEventLevel},
				{At: now.Add(-30 * time.Hour), Tier: consentv1.TierOff},
				{At: now.Add(time.Hour), Tier: consentv1.TierEventLevel},
			}
			in.writeConfig(*cfg)
		})
		if !first {
			return false // the retry reaches the receiver, which would store it
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	_, err := p.RunOnce(context.Background())
	rcv.SetIntercept(nil)
	if !errors.Is(err, deliver.ErrConsent) {
		t.Fatalf("error %v, want the consent guard to refuse", err)
	}
	drain(t, p)
	if n := in.stored(); n != 0 {
		t.Fatalf("%d events recorded in a closed window were delivered", n)
	}
}
