/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// timedEvents is an events batch whose events (ids from firstID on) carry the given timestamps.
// It always declares tier EventLevel: the receiver must not care.
func timedEvents(instance, batchID string, firstID int, ts ...time.Time) *batchv1.Batch {
	b := &batchv1.Batch{Version: 1, InstanceID: instance, BatchID: collectorID(instance, batchID), Kind: batchv1.KindEvents, Tier: "EventLevel",
		AllowListVersion: catalogv1.CurrentVersion, Cursor: int64(firstID + len(ts) - 1)}
	for i, t := range ts {
		b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprint(firstID + i), Name: "SearchSubmitted", Timestamp: t,
			UserID: fmt.Sprintf("f%031x", i%3), Properties: map[string]any{"patternType": "literal"}})
	}
	return b
}

func cells(instance, batchID string, days ...time.Time) *batchv1.Batch {
	b := &batchv1.Batch{Version: 1, InstanceID: instance, BatchID: collectorID(instance, batchID), Kind: batchv1.KindAggregates, Tier: "CriticalOnly", AllowListVersion: catalogv1.CurrentVersion}
	for _, d := range days {
		b.Aggregates = append(b.Aggregates, batchv1.Aggregate{Day: d.UTC().Format(time.DateOnly), Metric: batchv1.MetricEventCount,
			Dimension: "ViewBlob", Value: 10, Users: 6, Final: true})
	}
	return b
}

// legacyCells stores an event_count cell for each day as the receiver stored cells before it
// refused days under EventLevel.
func legacyCells(t *testing.T, instance string, days ...time.Time) {
	t.Helper()
	for i, d := range days {
		if _, err := rcv.DB.Exec(context.Background(), `
WITH claimed AS (INSERT INTO aggregate_days (instance_id, day, delivery, published_at) VALUES ($1, $2, $3, now()) RETURNING day)
INSERT INTO aggregates (instance_id, day, metric, dimension, value, users, final, delivery) SELECT $1, day, 'event_count', 'ViewBlob', 10, 6, true, $3 FROM claimed`,
			instance, d.UTC().Format(time.DateOnly), -1-i); err != nil {
			t.Fatal(err)
		}
	}
}

// send posts b with the collector certificate of its instance and decodes a 200 answer.
func send(t *testing.T, b *batchv1.Batch) (batchv1.Response, reply) {
	t.Helper()
	r, err := post(t, client(t, b.InstanceID), mustEncode(t, b), nil)
	if err != nil {
		t.Fatal(err)
	}
	var resp batchv1.Response
	if r.status == http.StatusOK {
		if err := json.Unmarshal(r.body, &resp); err != nil {
			t.Fatal(err)
		}
	}
	return resp, r
}

// storedBetween counts instance's stored events with timestamps in [from, to).
func storedBetween(t *testing.T, instance string, from, to time.Time) int {
	t.Helper()
	var n int
	if err := rcv.DB.QueryRow(context.Background(),
		`SELECT count(*) FROM events WHERE instance_id = $1 AND ts >= $2 AND ts < $3`, instance, from, to).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

var (
	beginning = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	end       = time.Date(9000, 1, 1, 0, 0, 0, 0, time.UTC)
)

func counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := rcv.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func matches(m *dto.Metric, labels map[string]string) bool {
	for _, l := range m.GetLabel() {
		if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
			return false
		}
	}
	return true
}

// TestConsentIsJudgedByEventTimestamps: EventLevel, then Off, then EventLevel again. One batch
// carries events recorded before consent, in each period and on each boundary; what is stored
// is judged by the event timestamps in the events table.
func TestConsentIsJudgedByEventTimestamps(t *testing.T) {
	op := rcv.OperatorClient("east")
	now := time.Now().UTC().Truncate(time.Second)
	t0, t1 := now.Add(-10*time.Hour), now.Add(-8*time.Hour)
	mustRecord(t, op, "periods", "ns", "periods", consentv1.TierEventLevel, t0)
	mustRecord(t, op, "periods", "ns", "periods", consentv1.TierOff, t1)
	// A new grant takes effect when it is recorded, however it is dated: the Off period
	// [t1, t2) stays closed.
	st := mustRecord(t, op, "periods", "ns", "periods", consentv1.TierEventLevel, t1.Add(time.Hour))
	t2 := st.Timeline[len(st.Timeline)-1].At
	var ats []time.Time
	for _, tr := range st.Timeline {
		ats = append(ats, tr.At)
	}
	if want := []time.Time{t0, t1, t2}; !slices.EqualFunc(ats, want, time.Time.Equal) || t2.Before(now) || t2.After(time.Now().Add(2*time.Second)) {
		t.Fatalf("timeline at %v, want %v with the last one now", ats, want)
	}

	refusedBefore := counter(t, "receiver_events_total", map[string]string{"outcome": "refused"})
	b := timedEvents("periods", "p1", 1,
		t0.Add(-time.Hour),         // before the first transition: Off
		t0, t0.Add(90*time.Minute), // first EventLevel period
		t1, t1.Add(time.Hour), // Off
		t2.Add(-time.Microsecond),                  // the last instant of Off
		t2, t2.Add(time.Minute), t2.Add(time.Hour)) // EventLevel again
	resp, r := send(t, b)
	if r.status != http.StatusOK || resp.Accepted != 5 || resp.Refused != 4 || resp.Duplicates != 0 || resp.Cursor != 9 {
		t.Fatalf("got %d %s, want 5 accepted, 4 refused, cursor 9", r.status, r.body)
	}
	if !strings.Contains(string(r.body), `"refused":4`) {
		t.Fatalf("the response does not carry refused: %s", r.body)
	}
	if n := storedBetween(t, "periods", t1, t2); n != 0 {
		t.Errorf("%d events stored with timestamps in the Off period", n)
	}
	if n := storedBetween(t, "periods", beginning, t0); n != 0 {
		t.Errorf("%d events stored from before consent was given", n)
	}
	if n1, n2 := storedBetween(t, "periods", t0, t1), storedBetween(t, "periods", t2, end); n1 != 2 || n2 != 3 {
		t.Errorf("stored %d and %d events in the EventLevel periods, want 2 and 3", n1, n2)
	}
	// The cursor moved past the refused events: they may never leave, so they are not re-sent.
	if c, known, err := rcv.Store.Cursor(context.Background(), "periods"); err != nil || !known || c != 9 {
		t.Errorf("cursor %d %v %v, want 9", c, known, err)
	}
	if got := counter(t, "receiver_events_total", map[string]string{"outcome": "refused"}) - refusedBefore; got != 4 {
		t.Errorf("receiver_events_total{outcome=refused} grew by %v, want 4", got)
	}
	// A re-send is judged the same way.
	resp, r = send(t, b)
	if r.status != http.StatusOK || resp.Accepted != 0 || resp.Duplicates != 5 || resp.Refused != 4 {
		t.Fatalf("re-send: %d %s", r.status, r.body)
	}
	var refused int
	if err := rcv.DB.QueryRow(context.Background(), `SELECT refused FROM batches WHERE instance_id = 'periods' AND batch_id = $1`, b.BatchID).Scan(&refused); err != nil || refused != 8 {
		t.Errorf("batches.refused = %d (%v), want 8 over two deliveries", refused, err)
	}
}

// TestBatchesAreRefusedUnlessTheLedgerAllowsThem: the tier the batch declares plays no part.
func TestBatchesAreRefusedUnlessTheLedgerAllowsThem(t *testing.T) {
	op := rcv.OperatorClient("east")
	now := time.Now().UTC().Truncate(time.Second)
	mustRecord(t, op, "crit", "ns", "crit", consentv1.TierCriticalOnly, now.Add(-48*time.Hour))
	mustRecord(t, op, "off", "ns", "off", consentv1.TierOff, now.Add(-time.Hour))
	cursorOnly := &batchv1.Batch{Version: 1, InstanceID: "off", BatchID: "off-c-100", Kind: batchv1.KindEvents, Tier: "EventLevel", AllowListVersion: catalogv1.CurrentVersion, Cursor: 100}
	cases := []struct {
		name  string
		batch *batchv1.Batch
		state string
	}{
		{"events declaring EventLevel from a CriticalOnly instance", timedEvents("crit", "e1", 1, now.Add(-30*time.Minute)), "CriticalOnly"},
		{"events from an instance without a record", timedEvents("nobody", "e1", 1, now.Add(-30*time.Minute)), "no consent record"},
		{"aggregates from an instance without a record", cells("nobody", "a1", now.AddDate(0, 0, -1)), "no consent record"},
		{"events from an Off instance", timedEvents("off", "e1", 1, now.Add(-30*time.Minute)), "Off"},
		{"aggregates from an Off instance", cells("off", "a1", now.Add(-48*time.Hour), now.Add(-24*time.Hour)), "Off"},
		{"a cursor-only batch from an Off instance", cursorOnly, "Off"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, r := send(t, tc.batch)
			wantStatus(t, r, http.StatusForbidden, consentv1.ReasonConsentRefused)
			if msg := r.errorResponse(t).Error; !strings.Contains(msg, tc.state) || !strings.Contains(msg, tc.batch.InstanceID) {
				t.Errorf("message %q does not name the instance's state (%s)", msg, tc.state)
			}
			for _, table := range []string{"events", "aggregates", "cursors", "batches"} {
				if n := count(t, table, tc.batch.InstanceID); n != 0 {
					t.Errorf("%d rows in %s", n, table)
				}
			}
		})
	}
	// CriticalOnly admits aggregates.
	if resp, r := send(t, cells("crit", "a1", now.AddDate(0, 0, -1))); r.status != http.StatusOK || resp.Accepted != 1 {
		t.Fatalf("aggregates from a CriticalOnly instance: %d %s", r.status, r.body)
	}
}

// TestWithdrawalRemovesWhatWasRecordedAfterIt: a lowering dated in the past deletes the events
// stored with timestamps from then on and keeps those before; Off deletes the aggregates of its
// day and the days after it (a cell of that day may count time after the withdrawal); neither can
// be dated before the last transition. Everything happens two days back, so the days around the
// withdrawal are closed and may be published.
func TestWithdrawalRemovesWhatWasRecordedAfterIt(t *testing.T) {
	op := rcv.OperatorClient("east")
	now := time.Now().UTC().Truncate(time.Second)
	mustRecord(t, op, "withdraw", "ns", "withdraw", consentv1.TierEventLevel, now.Add(-120*time.Hour))
	var ts []time.Time
	for h := 9; h >= 1; h-- {
		ts = append(ts, now.Add(-time.Duration(48+h)*time.Hour))
	}
	ts = append(ts, now.Add(time.Minute)) // clocks differ: a timestamp slightly ahead
	if resp, r := send(t, timedEvents("withdraw", "w1", 1, ts...)); resp.Accepted != 10 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	at := now.Add(-53 * time.Hour)
	st := mustRecord(t, op, "withdraw", "ns", "withdraw", consentv1.TierCriticalOnly, at)
	if st.EventsRemoved != 6 {
		t.Errorf("eventsRemoved %d, want 6", st.EventsRemoved)
	}
	if n := storedBetween(t, "withdraw", at, end); n != 0 {
		t.Errorf("%d events stored with timestamps after the withdrawal", n)
	}
	if n := storedBetween(t, "withdraw", beginning, at); n != 4 {
		t.Errorf("%d events from before the withdrawal, want 4", n)
	}

	day := at.Truncate(24 * time.Hour)
	// The day before (EventLevel) and the day of the downgrade (in part) are refused; a cell the
	// day before stored under the earlier rules stays through the withdrawal below.
	legacyCells(t, "withdraw", day.AddDate(0, 0, -1))
	if resp, r := send(t, cells("withdraw", "c1", day.AddDate(0, 0, -1), day, day.AddDate(0, 0, 1))); resp.Accepted != 1 || resp.Refused != 2 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Off dated before the last transition is clamped to it.
	st = mustRecord(t, op, "withdraw", "ns", "withdraw", consentv1.TierOff, now.Add(-56*time.Hour))
	if last := st.Timeline[len(st.Timeline)-1]; !last.At.Equal(at) || last.Tier != consentv1.TierOff {
		t.Fatalf("last transition %+v, want Off at %s", last, at)
	}
	var days []string
	rows, err := rcv.DB.Query(context.Background(), `SELECT day::text FROM aggregates WHERE instance_id = 'withdraw' ORDER BY day`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d string
		_ = rows.Scan(&d)
		days = append(days, d)
	}
	rows.Close()
	if want := []string{day.AddDate(0, 0, -1).Format(time.DateOnly)}; !reflect.DeepEqual(days, want) {
		t.Errorf("aggregate days %v after Off, want %v (the day of the withdrawal and the days after it removed)", days, want)
	}
	if got := counter(t, "receiver_consent_transitions_total", map[string]string{"tier": "Off"}); got < 1 {
		t.Errorf("receiver_consent_transitions_total{tier=Off} = %v", got)
	}
	if got := counter(t, "receiver_consent_events_removed_total", nil); got < 6 {
		t.Errorf("receiver_consent_events_removed_total = %v, want at least 6", got)
	}
}

// TestWithdrawalRacingIngestion: batches of events recorded after T are stored concurrently
// with a lowering dated T. Whatever the interleaving, no event recorded from T on may remain:
// a batch judged by the old state commits before the lowering deletes, or waits and is refused.
func TestWithdrawalRacingIngestion(t *testing.T) {
	ctx := context.Background()
	if err := rcv.Grant(ctx, "race", consentv1.TierEventLevel, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	T := time.Now().UTC()
	var (
		wg                sync.WaitGroup
		accepted, refusal atomic.Int64
	)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Since(T) < time.Minute; i++ {
				first := (g*10_000+i)*100 + 1
				var ts []time.Time
				for k := range 100 {
					ts = append(ts, T.Add(-time.Second+time.Duration(k)*time.Millisecond*50)) // from T-1s to T+4s
				}
				res, err := rcv.Store.InsertEvents(ctx, "race", timedEvents("race", fmt.Sprintf("race-%d-%d", g, i), first, ts...))
				switch {
				case errors.Is(err, store.ErrConsentRefused):
					refusal.Add(1)
					return
				case err != nil:
					t.Error(err)
					return
				}
				accepted.Add(int64(res.Accepted))
			}
		}()
	}
	time.Sleep(150 * time.Millisecond)
	// A steady stream of batches must not starve the withdrawal.
	start := time.Now()
	if err := rcv.Grant(ctx, "race", consentv1.TierCriticalOnly, T); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("the withdrawal waited %s for the batches being stored", waited)
	}
	wg.Wait()
	if n := storedBetween(t, "race", T, end); n != 0 {
		t.Fatalf("%d events recorded after the withdrawal remain stored", n)
	}
	if accepted.Load() == 0 || refusal.Load() != 6 || storedBetween(t, "race", beginning, T) == 0 {
		t.Fatalf("no race took place: %d accepted, %d writers refused", accepted.Load(), refusal.Load())
	}
	st, err := rcv.Store.ConsentState(ctx, "race")
	if err != nil || st.EventsRemoved == 0 {
		t.Fatalf("the withdrawal removed %d events (%v); the test needs some stored after T", st.EventsRemoved, err)
	}
}

// TestConsentSurvivesARestart: a new store and server on the same database enforce the same
// ledger (nothing of it lives only in memory).
func TestConsentSurvivesARestart(t *testing.T) {
	op := rcv.OperatorClient("east")
	now := time.Now().UTC().Truncate(time.Second)
	mustRecord(t, op, "rs-on", "ns", "rs-on", consentv1.TierEventLevel, now.Add(-2*time.Hour))
	mustRecord(t, op, "rs-off", "ns", "rs-off", consentv1.TierEventLevel, now.Add(-2*time.Hour))
	mustRecord(t, op, "rs-off", "ns", "rs-off", consentv1.TierOff, now.Add(-time.Hour))
	// Warm the policy cache of the running server.
	if _, r := send(t, timedEvents("rs-off", "warm", 1, now.Add(-90*time.Minute))); r.status != http.StatusForbidden {
		t.Fatalf("%d %s", r.status, r.body)
	}
	on, _ := state(t, "rs-on")
	off, _ := state(t, "rs-off")
	if err := rcv.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := state(t, "rs-on"); !reflect.DeepEqual(got, on) {
		t.Errorf("after a restart:\n%+v\nwant %+v", got, on)
	}
	if got, _ := state(t, "rs-off"); !reflect.DeepEqual(got, off) {
		t.Errorf("after a restart:\n%+v\nwant %+v", got, off)
	}
	if resp, r := send(t, timedEvents("rs-on", "after", 1, now.Add(-time.Minute))); r.status != http.StatusOK || resp.Accepted != 1 {
		t.Errorf("EventLevel instance after a restart: %d %s", r.status, r.body)
	}
	for _, b := range []*batchv1.Batch{timedEvents("rs-off", "after", 10, now.Add(-time.Minute)), timedEvents("rs-unknown", "after", 1, now.Add(-time.Minute))} {
		_, r := send(t, b)
		wantStatus(t, r, http.StatusForbidden, consentv1.ReasonConsentRefused)
	}
	if n := storedBetween(t, "rs-off", now.Add(-time.Hour), end); n != 0 {
		t.Errorf("%d events stored after Off", n)
	}
}

func erase(t *testing.T, c *http.Client, req consentv1.ErasureRequest) (consentv1.ErasureResult, reply) {
	t.Helper()
	r := adminPost(t, c, consentv1.PathErasures, req)
	var res consentv1.ErasureResult
	if r.status == http.StatusOK {
		if err := json.Unmarshal(r.body, &res); err != nil {
			t.Fatal(err)
		}
	}
	return res, r
}

func TestErasure(t *testing.T) {
	ctx := context.Background()
	east := rcv.OperatorClient("east")
	owner := consentv1.Owner{Namespace: "ns", Name: "era"}
	today := time.Now().UTC().Truncate(24 * time.Hour)
	mustRecord(t, east, "era", owner.Namespace, owner.Name, consentv1.TierEventLevel, today.AddDate(0, 0, -15))
	var ts, days []time.Time
	for d := 10; d >= 1; d-- {
		day := today.AddDate(0, 0, -d)
		ts = append(ts, day.Add(12*time.Hour), day.Add(13*time.Hour))
		days = append(days, day)
	}
	original := timedEvents("era", "orig", 1, ts...)
	if resp, r := send(t, original); resp.Accepted != 20 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Cells of days under EventLevel are refused since their events are stored one by one; an
	// instance may still hold cells published before that rule, and an erasure removes them too.
	legacyCells(t, "era", days...)

	from, to := today.AddDate(0, 0, -7), today.AddDate(0, 0, -3)
	req := consentv1.ErasureRequest{InstanceID: "era", Owner: owner, RequestID: "gdpr-1", Scope: consentv1.ScopeEvents,
		From: &from, To: &to, RequestedBy: consentv1.RequesterDataSubject}
	res, r := erase(t, east, req)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if res.EventsDeleted != 8 || res.AggregatesDeleted != 0 || res.VerifiedAt == nil || !res.From.Equal(from) || !res.To.Equal(to) ||
		res.RequestedBy != consentv1.RequesterDataSubject || res.Owner.Cluster != "east" || res.Scope != consentv1.ScopeEvents {
		t.Fatalf("result %s", r.body)
	}
	if n := storedBetween(t, "era", from, to); n != 0 {
		t.Fatalf("%d events left in the erased range", n)
	}
	if n, cellsLeft := count(t, "events", "era"), count(t, "aggregates", "era"); n != 12 || cellsLeft != 10 {
		t.Fatalf("%d events and %d cells left, want 12 and 10 (outside the range, and scope Events)", n, cellsLeft)
	}

	t.Run("the audit record holds no payload", func(t *testing.T) {
		var columns []string
		rows, err := rcv.DB.Query(ctx, `SELECT column_name FROM information_schema.columns WHERE table_name = 'erasures' ORDER BY ordinal_position`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var c string
			_ = rows.Scan(&c)
			columns = append(columns, c)
		}
		rows.Close()
		want := []string{"instance_id", "request_id", "scope", "range_from", "range_to", "range_to_defaulted", "requested_by",
			"owner_cluster", "owner_namespace", "owner_name", "requested_at", "events_deleted", "aggregates_deleted", "verified_at",
			// What an erasure without an end takes of the events dated ahead: a day past the
			// range's end, up to the highest event id the receiver had seen of the instance.
			"ahead_to", "ahead_max_id"}
		if !reflect.DeepEqual(columns, want) {
			t.Fatalf("erasures columns %v, want only %v", columns, want)
		}
		var by string
		var deleted int64
		var verified *time.Time
		if err := rcv.DB.QueryRow(ctx, `SELECT requested_by, events_deleted, verified_at FROM erasures WHERE instance_id = 'era' AND request_id = $1`, consentv1.RequestKey("era", "gdpr-1")).
			Scan(&by, &deleted, &verified); err != nil || by != consentv1.RequesterDataSubject || deleted != 8 || verified == nil {
			t.Fatalf("audit row: %q %d %v %v", by, deleted, verified, err)
		}
	})

	t.Run("the same request again returns the same result and deletes nothing", func(t *testing.T) {
		again, r := erase(t, east, req)
		if r.status != http.StatusOK || !reflect.DeepEqual(again, res) {
			t.Fatalf("%d %s, want %+v", r.status, r.body, res)
		}
		if n := count(t, "events", "era"); n != 12 {
			t.Fatalf("%d events, want 12", n)
		}
	})

	t.Run("the request id reused for another erasure", func(t *testing.T) {
		other := req
		other.Scope = consentv1.ScopeAll
		_, r := erase(t, east, other)
		wantStatus(t, r, http.StatusConflict, consentv1.ReasonInvalid)
		other = req
		later := to.Add(time.Hour)
		other.To = &later
		_, r = erase(t, east, other)
		wantStatus(t, r, http.StatusConflict, consentv1.ReasonInvalid)
		if n, cellsLeft := count(t, "events", "era"), count(t, "aggregates", "era"); n != 12 || cellsLeft != 10 {
			t.Fatalf("%d events and %d cells left", n, cellsLeft)
		}
	})

	t.Run("nothing re-sent brings erased data back", func(t *testing.T) {
		resp, r := send(t, original)
		if r.status != http.StatusOK || resp.Accepted != 0 || resp.Duplicates != 12 || resp.Refused != 8 {
			t.Fatalf("re-send: %d %s", r.status, r.body)
		}
		resp, r = send(t, timedEvents("era", "fresh", 100, from.Add(time.Hour), to.Add(-time.Microsecond), to, today.AddDate(0, 0, -2)))
		if r.status != http.StatusOK || resp.Accepted != 2 || resp.Refused != 2 {
			t.Fatalf("new events in and after the range: %d %s", r.status, r.body)
		}
		if n := storedBetween(t, "era", from, to); n != 0 {
			t.Fatalf("%d events in the erased range", n)
		}
	})

	t.Run("others may not erase", func(t *testing.T) {
		for name, c := range map[string]struct {
			client *http.Client
			owner  consentv1.Owner
		}{
			"another cluster":           {rcv.OperatorClient("west"), owner},
			"another policy":            {east, consentv1.Owner{Namespace: "ns", Name: "other"}},
			"a body naming the cluster": {rcv.OperatorClient("west"), consentv1.Owner{Cluster: "east", Namespace: "ns", Name: "era"}},
		} {
			other := consentv1.ErasureRequest{InstanceID: "era", Owner: c.owner, RequestID: "gdpr-x", Scope: consentv1.ScopeAll, RequestedBy: consentv1.RequesterLegal}
			_, r := erase(t, c.client, other)
			if r.status != http.StatusConflict || r.errorResponse(t).Reason != consentv1.ReasonOwnedElsewhere {
				t.Fatalf("%s: %d %s", name, r.status, r.body)
			}
		}
		if n, cellsLeft := count(t, "events", "era"), count(t, "aggregates", "era"); n != 14 || cellsLeft != 10 {
			t.Fatalf("%d events and %d cells left, want 14 and 10", n, cellsLeft)
		}
	})

	t.Run("scope All erases aggregates too, up to now", func(t *testing.T) {
		before := counter(t, "receiver_erased_rows_total", map[string]string{"table": "aggregates"})
		all, r := erase(t, east, consentv1.ErasureRequest{InstanceID: "era", Owner: owner, RequestID: "gdpr-2", Scope: consentv1.ScopeAll, RequestedBy: consentv1.RequesterCustomerAdmin})
		if r.status != http.StatusOK || all.EventsDeleted != 14 || all.AggregatesDeleted != 10 || all.VerifiedAt == nil || all.From != nil {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if n, cellsLeft := count(t, "events", "era"), count(t, "aggregates", "era"); n != 0 || cellsLeft != 0 {
			t.Fatalf("%d events and %d cells left", n, cellsLeft)
		}
		if got := counter(t, "receiver_erased_rows_total", map[string]string{"table": "aggregates"}) - before; got != 10 {
			t.Errorf("receiver_erased_rows_total{table=aggregates} grew by %v, want 10", got)
		}
		// Re-sent cells for the erased days are refused (as any day under EventLevel is:
		// TestKeepAggregate has erased CriticalOnly days).
		resp, r := send(t, cells("era", "cells-again", days...))
		if r.status != http.StatusOK || resp.Accepted != 0 || resp.Refused != 10 {
			t.Fatalf("re-sent cells: %d %s", r.status, r.body)
		}
		st, _ := state(t, "era")
		if len(st.Erasures) != 2 || st.Erasures[0].RequestID != consentv1.RequestKey("era", "gdpr-1") || st.Erasures[1].RequestID != consentv1.RequestKey("era", "gdpr-2") {
			t.Fatalf("erasures in the record: %+v", st.Erasures)
		}
	})
	t.Run("the audit record keeps no words of the request's id", func(t *testing.T) {
		// An id the format admits (letters, digits, ._:-) that carries a name and a
		// repository: the receiver answers and keeps its key, never the words.
		const wordy = "Jane.Doe_jane.doe-acme.example:acme-secret-repo"
		at := today.AddDate(0, 0, -20)
		res, r := erase(t, east, consentv1.ErasureRequest{InstanceID: "era", Owner: owner, RequestID: wordy, Scope: consentv1.ScopeEvents,
			To: &at, RequestedBy: consentv1.RequesterDataSubject})
		if r.status != http.StatusOK || res.RequestID != consentv1.RequestKey("era", wordy) {
			t.Fatalf("%d %s", r.status, r.body)
		}
		for _, word := range []string{"Jane", "jane", "acme-secret-repo", "example"} {
			if strings.Contains(string(r.body), word) {
				t.Errorf("the answer holds %q: %s", word, r.body)
			}
			var n int
			if err := rcv.DB.QueryRow(ctx, `SELECT count(*) FROM erasures e WHERE strpos(to_jsonb(e)::text, $1) > 0`, word).Scan(&n); err != nil || n != 0 {
				t.Errorf("%d audit records hold %q (%v)", n, word, err)
			}
		}
	})
}
