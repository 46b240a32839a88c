/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	clocktesting "k8s.io/utils/clock/testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// T is the fake clock's starting time.
var T = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

func startWithClock(t *testing.T) (*receivertest.Receiver, *clocktesting.FakePassiveClock) {
	t.Helper()
	clk := clocktesting.NewFakePassiveClock(T)
	r, err := receivertest.StartWith(context.Background(), receivertest.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, clk
}

var owner = consentv1.Owner{Namespace: "ns", Name: "policy", UID: "u1"}

// TestTimelineIsAppendOnly records a sequence of requests at known receiver times and checks
// what the ledger made of each: the past is never rewritten.
func TestTimelineIsAppendOnly(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	h := func(n float64) time.Time { return T.Add(time.Duration(n * float64(time.Hour))) }
	steps := []struct {
		name     string
		now      time.Time
		tier     consentv1.Tier
		at       time.Time
		wantAt   time.Time // zero: nothing appended
		wantErr  error
		timeline int
	}{
		{"the first grant may be dated in the past", h(0), consentv1.TierEventLevel, h(-10), h(-10), nil, 1},
		{"a withdrawal dated in the past", h(0), consentv1.TierCriticalOnly, h(-5), h(-5), nil, 2},
		{"a withdrawal dated before the last transition is clamped to it", h(0), consentv1.TierOff, h(-6), h(-5), nil, 3},
		{"a grant dated before the last transition cannot re-open the recorded period", h(1), consentv1.TierEventLevel, h(-8), h(1), nil, 4},
		{"nor can a grant dated after it: it takes effect when recorded", h(2), consentv1.TierOff, h(1.5), h(1.5), nil, 5},
		{"a grant dated in the gap after a withdrawal takes effect when recorded", h(3), consentv1.TierEventLevel, h(2), h(3), nil, 6},
		{"the tier in force: nothing appended", h(3.5), consentv1.TierEventLevel, h(3.5), time.Time{}, nil, 6},
		{"a withdrawal dated in the future is clamped to now", h(4), consentv1.TierCriticalOnly, h(9), h(4), nil, 7},
		{"a grant dated beyond the clock skew is refused", h(5), consentv1.TierEventLevel, h(5).Add(consentv1.MaxClockSkew + time.Second), time.Time{}, consentv1.ErrFuture, 7},
		{"a grant within the clock skew keeps its date", h(5), consentv1.TierEventLevel, h(5).Add(2 * time.Minute), h(5).Add(2 * time.Minute), nil, 8},
		{"a withdrawal's fraction of a second is rounded down", h(6), consentv1.TierOff, h(5.5).Add(700 * time.Millisecond), h(5.5), nil, 9},
		{"a grant's fraction of a second is rounded up", h(7).Add(300 * time.Millisecond), consentv1.TierEventLevel, h(7), h(7).Add(time.Second), nil, 10},
	}
	for _, s := range steps {
		clk.SetTime(s.now)
		st, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "tl", Owner: owner,
			Transition: consentv1.Transition{At: s.at, Tier: s.tier, Reason: "Declared"}})
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) || !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("%s: %v, want %v", s.name, err, s.wantErr)
			}
			st, err = r.Store.ConsentState(ctx, "tl")
		}
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if len(st.Timeline) != s.timeline {
			t.Fatalf("%s: %d transitions, want %d", s.name, len(st.Timeline), s.timeline)
		}
		if s.wantAt.IsZero() {
			continue
		}
		last := st.Timeline[len(st.Timeline)-1]
		if !last.At.Equal(s.wantAt) || last.Tier != s.tier || last.RecordedAt == nil || !last.RecordedAt.Equal(s.now.Truncate(time.Microsecond)) {
			t.Fatalf("%s: last transition %+v, want %s at %s recorded at %s", s.name, last, s.tier, s.wantAt, s.now)
		}
	}
	// The periods the ledger recorded as lower stayed lower.
	st, _ := r.Store.ConsentState(ctx, "tl")
	for _, c := range []struct {
		at   time.Time
		want consentv1.Tier
	}{
		{h(-11), consentv1.TierOff}, {h(-7), consentv1.TierEventLevel}, {h(-5), consentv1.TierOff}, {h(0), consentv1.TierOff},
		{h(1), consentv1.TierEventLevel}, {h(1.6), consentv1.TierOff}, {h(2.5), consentv1.TierOff}, {h(3), consentv1.TierEventLevel},
	} {
		if got := st.Timeline.TierAt(c.at); got != c.want {
			t.Errorf("tier at %s = %s, want %s", c.at, got, c.want)
		}
	}
}

func TestEraseIsVerifiedAndRetried(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: owner,
		Transition: consentv1.Transition{At: T.Add(-48 * time.Hour), Tier: consentv1.TierEventLevel}}); err != nil {
		t.Fatal(err)
	}
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "b1", Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: 10}
	for i := range 10 {
		b.Events = append(b.Events, batchv1.Event{ID: string(rune('1' + i)), Name: "SearchSubmitted",
			Timestamp: T.Add(-time.Duration(10-i) * time.Hour), UserID: "0123456789abcdef0123456789abcdef"})
	}
	b.Events[9].ID = "10"
	if res, err := r.Store.InsertEvents(ctx, "acme", b); err != nil || res.Accepted != 10 {
		t.Fatalf("%+v %v", res, err)
	}
	pool := r.DB
	// A trigger that keeps one row from being deleted stands for whatever could leave data
	// behind: the erasure must not report success.
	if _, err := pool.Exec(ctx, `
CREATE FUNCTION keep_one() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF OLD.event_id = 5 THEN RETURN NULL; END IF; RETURN OLD; END $$;
CREATE TRIGGER keep_one BEFORE DELETE ON events FOR EACH ROW EXECUTE FUNCTION keep_one();`); err != nil {
		t.Fatal(err)
	}
	until := T.Add(-3 * time.Hour) // the 3 most recent events stay
	req := consentv1.ErasureRequest{InstanceID: "acme", Owner: owner, RequestID: "req-1", Scope: consentv1.ScopeEvents, To: &until, RequestedBy: consentv1.RequesterLegal}
	clk.SetTime(until)
	_, err := r.Store.Erase(ctx, "c1", req)
	if !errors.Is(err, store.ErrUnverified) {
		t.Fatalf("an erasure that left a row behind: %v, want ErrUnverified", err)
	}
	var verified *time.Time
	var deleted int64
	if err := pool.QueryRow(ctx, `SELECT verified_at, events_deleted FROM erasures WHERE request_id = $1`, consentv1.RequestKey("acme", "req-1")).Scan(&verified, &deleted); err != nil || verified != nil || deleted != 6 {
		t.Fatalf("audit row before verification: %v %d %v", verified, deleted, err)
	}
	// The range is a tombstone at once: the remaining row could not be re-sent either.
	if res, err := r.Store.InsertEvents(ctx, "acme", b); err != nil || res.Refused != 7 || res.Accepted != 0 {
		t.Fatalf("re-send after the erasure: %+v %v", res, err)
	}

	if _, err := pool.Exec(ctx, `DROP TRIGGER keep_one ON events`); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(T) // the retry keeps the range of the first attempt
	res, err := r.Store.Erase(ctx, "c1", req)
	if err != nil {
		t.Fatal(err)
	}
	if !res.To.Equal(T.Add(-3*time.Hour)) || res.From != nil || res.EventsDeleted != 7 || res.VerifiedAt == nil || !res.VerifiedAt.Equal(T) ||
		!res.RequestedAt.Equal(T.Add(-3*time.Hour)) || res.RequestedBy != consentv1.RequesterLegal {
		t.Fatalf("result after the retry: %+v", res)
	}
	var left int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE instance_id = 'acme'`).Scan(&left)
	if left != 3 {
		t.Fatalf("%d events left, want the 3 after the range", left)
	}
	// Once verified, the request is answered from the audit record, whatever the clock says.
	clk.SetTime(T.Add(time.Hour))
	again, err := r.Store.Erase(ctx, "c1", req)
	if err != nil || again.EventsDeleted != 7 || !again.To.Equal(res.To) {
		t.Fatalf("replay: %+v %v", again, err)
	}

	t.Run("requests the ledger refuses", func(t *testing.T) {
		future := T.Add(2 * time.Hour)
		for name, c := range map[string]struct {
			cluster string
			req     consentv1.ErasureRequest
			want    error
		}{
			"from after now without to":  {"c1", consentv1.ErasureRequest{InstanceID: "acme", Owner: owner, RequestID: "req-2", Scope: consentv1.ScopeAll, From: &future, RequestedBy: consentv1.RequesterSupport}, store.ErrInvalid},
			"the same id, another range": {"c1", consentv1.ErasureRequest{InstanceID: "acme", Owner: owner, RequestID: "req-1", Scope: consentv1.ScopeEvents, To: &future, RequestedBy: consentv1.RequesterSupport}, store.ErrRequestConflict},
			"another cluster":            {"c2", consentv1.ErasureRequest{InstanceID: "acme", Owner: owner, RequestID: "req-3", Scope: consentv1.ScopeAll, RequestedBy: consentv1.RequesterSupport}, store.ErrOwnedElsewhere},
			"no record":                  {"c1", consentv1.ErasureRequest{InstanceID: "nobody", Owner: owner, RequestID: "req-3", Scope: consentv1.ScopeAll, RequestedBy: consentv1.RequesterSupport}, store.ErrUnknownInstance},
		} {
			if _, err := r.Store.Erase(ctx, c.cluster, c.req); !errors.Is(err, c.want) {
				t.Errorf("%s: %v, want %v", name, err, c.want)
			}
		}
	})

	t.Run("an administrator releases a stuck owner", func(t *testing.T) {
		previous, err := r.Admin.ForceRelease(ctx, "acme", nil)
		if err != nil || previous.Cluster != "c1" || previous.Name != "policy" {
			t.Fatalf("%+v %v", previous, err)
		}
		// A released record has no owner to erase for it; the audit trail stays.
		if _, err := r.Store.Erase(ctx, "c1", consentv1.ErasureRequest{InstanceID: "acme", Owner: owner, RequestID: "req-4", Scope: consentv1.ScopeAll, RequestedBy: consentv1.RequesterSupport}); !errors.Is(err, store.ErrOwnedElsewhere) {
			t.Fatalf("erasure of a released record: %v", err)
		}
		list, err := r.Store.Erasures(ctx, "")
		if err != nil || len(list) != 1 || list[0].InstanceID != "acme" || list[0].RequestID != consentv1.RequestKey("acme", "req-1") || list[0].VerifiedAt == nil {
			t.Fatalf("audit trail %+v %v", list, err)
		}
		if previous, err := r.Admin.ForceRelease(ctx, "acme", nil); err != nil || previous != (consentv1.Owner{}) {
			t.Fatalf("second release: %+v %v", previous, err)
		}
		if _, err := r.Admin.ForceRelease(ctx, "nobody", nil); !errors.Is(err, store.ErrUnknownInstance) {
			t.Fatalf("release of an unknown instance: %v", err)
		}
	})
}

// TestEraseWithoutToTakesEventsDatedAhead: an instance whose clock runs fast has events stored
// dated after the receiver's clock. An erasure without to covers everything recorded before it
// is carried out: those too (verified, and kept by a retry); re-sent, or committed late with an
// id assigned before the erasure, they are refused. The instance's next events, dated in the same
// hours but with higher ids, are stored.
func TestEraseWithoutToTakesEventsDatedAhead(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: owner,
		Transition: consentv1.Transition{At: T.Add(-48 * time.Hour), Tier: consentv1.TierEventLevel}}); err != nil {
		t.Fatal(err)
	}
	type ev struct {
		id int
		at time.Duration
	}
	batch := func(name string, events ...ev) *batchv1.Batch {
		b := &batchv1.Batch{InstanceID: "acme", BatchID: name, Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(events[len(events)-1].id)}
		for _, e := range events {
			b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprint(e.id), Name: "SearchSubmitted", Timestamp: T.Add(e.at), UserID: "0123456789abcdef0123456789abcdef"})
		}
		return b
	}
	stored := batch("b1", ev{1, -time.Hour}, ev{5, 90 * time.Minute}, ev{10, 3 * time.Hour})
	stored.Cursor = 15 // the collector read past rows it did not send
	if res, err := r.Store.InsertEvents(ctx, "acme", stored); err != nil || res.Accepted != 3 {
		t.Fatalf("%+v %v", res, err)
	}
	// The first attempt leaves the event three hours ahead behind: it must not be verified.
	if _, err := r.DB.Exec(ctx, `
CREATE FUNCTION keep_ahead() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF OLD.event_id = 10 THEN RETURN NULL; END IF; RETURN OLD; END $$;
CREATE TRIGGER keep_ahead BEFORE DELETE ON events FOR EACH ROW EXECUTE FUNCTION keep_ahead();`); err != nil {
		t.Fatal(err)
	}
	req := consentv1.ErasureRequest{InstanceID: "acme", Owner: owner, RequestID: "all", Scope: consentv1.ScopeEvents, RequestedBy: consentv1.RequesterContractEnd}
	if _, err := r.Store.Erase(ctx, "c1", req); !errors.Is(err, store.ErrUnverified) {
		t.Fatalf("an erasure that left an event dated ahead behind: %v, want ErrUnverified", err)
	}
	if _, err := r.DB.Exec(ctx, `DROP TRIGGER keep_ahead ON events`); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(T.Add(30 * time.Minute)) // the retry covers what the first attempt did
	res, err := r.Store.Erase(ctx, "c1", req)
	if err != nil {
		t.Fatal(err)
	}
	if res.EventsDeleted != 3 || res.VerifiedAt == nil || !res.To.Equal(T) {
		t.Fatalf("erasure without to: %+v, want the 3 events (one and three hours ahead too) deleted, verified, to the moment it was carried out", res)
	}
	var left int
	if err := r.DB.QueryRow(ctx, `SELECT count(*) FROM events WHERE instance_id = 'acme'`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d events left (%v), want none", left, err)
	}
	if res, err := r.Store.InsertEvents(ctx, "acme", stored); err != nil || res.Refused != 3 || res.Accepted != 0 {
		t.Fatalf("re-send after the erasure: %+v %v", res, err)
	}
	// Recorded before the erasure (ids the receiver had seen up to), committed late, dated
	// ahead, later than any it erased: in it too.
	if res, err := r.Store.InsertEvents(ctx, "acme", batch("b2", ev{7, 5 * time.Hour}, ev{14, 6 * time.Hour})); err != nil || res.Refused != 2 {
		t.Fatalf("an event recorded before the erasure and delivered after it: %+v %v", res, err)
	}
	// Recorded after the erasure: dated among the erased ones, but with the instance's next ids.
	if res, err := r.Store.InsertEvents(ctx, "acme", batch("b3", ev{16, time.Hour}, ev{17, 3 * time.Hour}, ev{18, 4 * time.Hour})); err != nil || res.Accepted != 3 {
		t.Fatalf("events recorded after the erasure: %+v %v", res, err)
	}
	if res, err := r.Store.InsertEvents(ctx, "acme", stored); err != nil || res.Refused != 3 {
		t.Fatalf("re-send after newer events: %+v %v", res, err)
	}
}

// TestAReleasedRecordIsClaimedOnlyWhereItWasReleased: a policy deleted releases its instance's
// record. A policy of another namespace naming the instance must not take it over (and with it
// the instance's certificates, what it stored, and its erasures): only the same namespace may
// claim it again, until the receiver's operators hand it over.
func TestAReleasedRecordIsClaimedOnlyWhereItWasReleased(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	record := func(cluster string, o consentv1.Owner, tier consentv1.Tier) error {
		clk.SetTime(clk.Now().Add(time.Minute))
		_, err := r.Store.RecordTransition(ctx, cluster, consentv1.RecordRequest{InstanceID: "acme", Owner: o,
			Transition: consentv1.Transition{At: clk.Now(), Tier: tier}})
		return err
	}
	first := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u1"}
	if err := record("c1", first, consentv1.TierEventLevel); err != nil {
		t.Fatal(err)
	}
	if err := r.Store.Release(ctx, "c1", consentv1.ReleaseRequest{InstanceID: "acme", Owner: first}); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		cluster string
		owner   consentv1.Owner
	}{
		"another namespace":             {"c1", consentv1.Owner{Namespace: "mallory", Name: "policy", UID: "u2"}},
		"the same namespace, elsewhere": {"c2", consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u3"}},
	} {
		err := record(c.cluster, c.owner, consentv1.TierEventLevel)
		var e *store.OwnedElsewhereError
		if !errors.As(err, &e) || !e.Released || !strings.Contains(err.Error(), "receiver consent release --instance acme") {
			t.Errorf("%s claimed a released record: %v", name, err)
		}
	}
	if st, err := r.Store.ConsentState(ctx, "acme"); err != nil || st.Owner != (consentv1.Owner{}) {
		t.Fatalf("after the refused claims: %+v %v", st.Owner, err)
	}
	// The policy re-created in its namespace, under another name even, claims it again.
	again := consentv1.Owner{Namespace: "acme", Name: "renamed", UID: "u4"}
	if err := record("c1", again, consentv1.TierCriticalOnly); err != nil {
		t.Fatalf("the same namespace claiming its record again: %v", err)
	}
	if err := r.Store.Release(ctx, "c1", consentv1.ReleaseRequest{InstanceID: "acme", Owner: again}); err != nil {
		t.Fatal(err)
	}
	// Handed over by the receiver's operators to one namespace: only it may claim it.
	if _, err := r.Admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c2", Namespace: "initech"}); err != nil {
		t.Fatal(err)
	}
	if err := record("c1", consentv1.Owner{Namespace: "mallory", Name: "policy", UID: "u6"}, consentv1.TierCriticalOnly); !errors.Is(err, store.ErrOwnedElsewhere) {
		t.Fatalf("a namespace racing the handover: %v", err)
	}
	if _, err := r.Admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c2"}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("a handover naming no namespace: %v", err)
	}
	next := consentv1.Owner{Namespace: "initech", Name: "policy", UID: "u5"}
	if err := record("c2", next, consentv1.TierCriticalOnly); err != nil {
		t.Fatalf("a claim after the handover: %v", err)
	}
	if st, err := r.Store.ConsentState(ctx, "acme"); err != nil || !st.Owner.Same(consentv1.Owner{Cluster: "c2", Namespace: "initech", Name: "policy", UID: "u5"}) {
		t.Fatalf("owner after the handover: %+v %v", st.Owner, err)
	}
}

// TestAnInstanceMayRequireAReservation: with reservations required (a receiver-wide setting in
// the database), an instance nobody has recorded is claimed by no namespace until the
// receiver's operators reserve it for one; then only a policy there claims it, and no record is
// opened to the next policy anywhere. Without them (the default) the first policy to name it does.
func TestAnInstanceMayRequireAReservation(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	record := func(instance, cluster string, o consentv1.Owner) error {
		clk.SetTime(clk.Now().Add(time.Minute))
		_, err := r.Store.RecordTransition(ctx, cluster, consentv1.RecordRequest{InstanceID: instance, Owner: o,
			Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel}})
		return err
	}
	acme := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u1"}
	mallory := consentv1.Owner{Namespace: "mallory", Name: "policy", UID: "u2"}

	if on, err := r.Store.ReservationsRequired(ctx); err != nil || on {
		t.Fatalf("reservations required by default: %v %v", on, err)
	}
	if err := record("open", "c1", mallory); err != nil {
		t.Fatalf("without reservations required, the first policy claims an instance: %v", err)
	}
	for _, instance := range []string{"was-open", "legacy-open", "closing-open", "unguarded", "handed-twice"} { // released to anyone before
		if err := record(instance, "c1", acme); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Admin.ForceRelease(ctx, instance, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Another namespace claims one at the tier in force (no transition appended), and it is
	// opened to anyone again: its last owner is that namespace, not the one of its last transition.
	// (The release closed the record: Off is the tier in force.)
	beta := consentv1.Owner{Namespace: "beta", Name: "policy", UID: "u3"}
	clk.SetTime(clk.Now().Add(time.Minute))
	if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "handed-twice", Owner: beta,
		Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierOff}}); err != nil {
		t.Fatal(err)
	}
	if st, err := r.Store.ConsentState(ctx, "handed-twice"); err != nil || len(st.Timeline) != 2 || st.Timeline[1].Reason != consentv1.ReasonRecordReleased {
		t.Fatalf("the claim at the tier in force appended a transition: %+v %v", st.Timeline, err)
	}
	if _, err := r.Admin.ForceRelease(ctx, "handed-twice", nil); err != nil {
		t.Fatal(err)
	}
	if err := r.Admin.SetReservationsRequired(ctx, true); err != nil {
		t.Fatal(err)
	}
	open, err := r.Store.OpenRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lastOwners := map[string]string{}
	for _, o := range open {
		lastOwners[o.Instance] = "none"
		if o.LastOwner != nil {
			lastOwners[o.Instance] = o.LastOwner.Cluster + "/" + o.LastOwner.Namespace
		}
	}
	if want := map[string]string{"was-open": "c1/acme", "legacy-open": "c1/acme", "closing-open": "c1/acme", "unguarded": "c1/acme", "handed-twice": "c1/beta"}; !maps.Equal(lastOwners, want) {
		t.Fatalf("open records and their last owners: %v, want %v", lastOwners, want)
	}
	if on, err := r.Store.ReservationsRequired(ctx); err != nil || !on {
		t.Fatalf("reservations required once set: %v %v", on, err)
	}

	err = record("fresh", "c1", mallory)
	var e *store.OwnedElsewhereError
	if !errors.As(err, &e) || !e.Unreserved || !strings.Contains(err.Error(), "receiver consent reserve --instance ID") {
		t.Fatalf("a claim of an unreserved instance: %v", err)
	}
	if _, err := r.Store.ConsentState(ctx, "fresh"); !errors.Is(err, store.ErrUnknownInstance) {
		t.Fatalf("the refused claim left a record: %v", err)
	}
	for name, err := range map[string]error{
		"a release": r.Store.Release(ctx, "c1", consentv1.ReleaseRequest{InstanceID: "fresh", Owner: mallory}),
		"a handover": func() error {
			_, err := r.Admin.ForceRelease(ctx, "fresh", &consentv1.Owner{Cluster: "c1", Namespace: "mallory"})
			return err
		}(),
		"an erasure of an instance": func() error {
			_, err := r.Store.Erase(ctx, "c1", consentv1.ErasureRequest{InstanceID: "fresh", Owner: mallory, RequestID: "r1", Scope: consentv1.ScopeEvents})
			return err
		}(),
	} {
		if _, err2 := r.Store.ConsentState(ctx, "fresh"); !errors.Is(err2, store.ErrUnknownInstance) {
			t.Errorf("%s of an instance nobody recorded made a record (%v)", name, err)
		}
	}

	if err := record("was-open", "c1", mallory); !errors.As(err, &e) || !e.Unreserved {
		t.Fatalf("a claim of a record released to anyone before reservations were required: %v", err)
	}
	if err := record("was-open", "c2", acme); !errors.As(err, &e) || !e.Unreserved {
		t.Fatalf("the last owner's namespace name in another cluster claiming a record released to anyone: %v", err)
	}
	if err := record("handed-twice", "c1", acme); !errors.As(err, &e) || !e.Unreserved {
		t.Fatalf("the namespace of its last transition, not its last owner, claiming a record released to anyone: %v", err)
	}
	// The store decides so itself, not only the database's trigger (a receiver's check must not
	// rest on a trigger an operator of the database may have disabled or not yet migrated).
	if _, err := r.DB.Exec(ctx, `ALTER TABLE consent_instances DISABLE TRIGGER consent_instances_reservations`); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		cluster string
		owner   consentv1.Owner
	}{
		"another namespace":          {"c1", mallory},
		"the same name, elsewhere":   {"c2", acme},
		"its last transition's only": {"c1", consentv1.Owner{Namespace: "acme", Name: "other", UID: "u8"}},
	} {
		instance := "unguarded"
		if name == "its last transition's only" {
			instance = "handed-twice"
		}
		if err := record(instance, c.cluster, c.owner); !errors.As(err, &e) || !e.Unreserved {
			t.Errorf("without the trigger, %s claimed a record released to anyone: %v", name, err)
		}
	}
	if _, err := r.DB.Exec(ctx, `ALTER TABLE consent_instances ENABLE TRIGGER consent_instances_reservations`); err != nil {
		t.Fatal(err)
	}
	if err := record("handed-twice", "c1", consentv1.Owner{Namespace: "beta", Name: "recreated", UID: "u7"}); err != nil {
		t.Fatalf("its last owner's namespace claiming a record released to anyone: %v", err)
	}
	if st, err := r.Store.ConsentState(ctx, "handed-twice"); err != nil || st.Owner.Namespace != "beta" {
		t.Fatalf("after its last owner's claim: %+v %v", st.Owner, err)
	}
	// Its last recorder's namespace may still write it: a withdrawal, or the close at deletion,
	// is never refused for want of a reservation.
	closing := func(instance string) error {
		clk.SetTime(clk.Now().Add(time.Minute))
		_, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: instance, Owner: consentv1.Owner{Namespace: "acme", Name: "renamed", UID: "u9"},
			Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierOff}})
		return err
	}
	if err := closing("closing-open"); err != nil {
		t.Fatalf("the last recorder's namespace withdrawing on a record released to anyone: %v", err)
	}
	if st, err := r.Store.ConsentState(ctx, "closing-open"); err != nil || st.Timeline.Current() != consentv1.TierOff || st.Owner.Namespace != "acme" {
		t.Fatalf("after the withdrawal: %+v %v", st, err)
	}
	if err := r.Admin.Reserve(ctx, "was-open", consentv1.Owner{Cluster: "c1", Namespace: "acme"}); err != nil {
		t.Fatalf("reserving a record open to anyone: %v", err)
	}
	if err := record("was-open", "c1", acme); err != nil {
		t.Fatalf("its namespace claiming it once reserved: %v", err)
	}

	// A receiver of an earlier release (or one that read the setting before it was turned on)
	// writes what it decided: the database refuses it.
	for _, c := range []struct{ name, sql string }{
		{"claim an open record", `UPDATE consent_instances SET owner_cluster = 'c1', owner_namespace = 'mallory', owner_name = 'p' WHERE instance_id = 'legacy-open'`},
		{"insert an owned record", `INSERT INTO consent_instances (instance_id, created_at, owner_cluster, owner_namespace, owner_name) VALUES ('sneaky', now(), 'c1', 'mallory', 'p')`},
		{"open a record to anyone", `UPDATE consent_instances SET owner_cluster = NULL, owner_namespace = NULL, owner_name = NULL, owner_uid = NULL WHERE instance_id = 'was-open'`},
		{"open a reservation", `UPDATE consent_instances SET released_cluster = NULL, released_namespace = NULL WHERE instance_id = 'legacy-open'`},
		{"name itself last owner", `UPDATE consent_instances SET last_owner_cluster = 'c1', last_owner_namespace = 'mallory' WHERE instance_id = 'unguarded';
UPDATE consent_instances SET owner_cluster = 'c1', owner_namespace = 'mallory', owner_name = 'p' WHERE instance_id = 'unguarded'`},
		{"claim as its last transition's namespace", `UPDATE consent_instances SET owner_cluster = 'c1', owner_namespace = 'acme', owner_name = 'p' WHERE instance_id = 'unguarded-2'`},
		{"claim as its last owner's namespace name in another cluster", `UPDATE consent_instances SET owner_cluster = 'c2', owner_namespace = 'acme', owner_name = 'p' WHERE instance_id = 'unguarded'`},
		{"insert a record naming its last owner", `INSERT INTO consent_instances (instance_id, created_at, last_owner_cluster, last_owner_namespace) VALUES ('planted', now(), 'c1', 'mallory');
UPDATE consent_instances SET owner_cluster = 'c1', owner_namespace = 'mallory', owner_name = 'p' WHERE instance_id = 'planted'`},
	} {
		if c.name == "claim as its last transition's namespace" { // the last owner beta released it before the setting
			if err := r.Admin.SetReservationsRequired(ctx, false); err != nil {
				t.Fatal(err)
			}
			if err := record("unguarded-2", "c1", acme); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Admin.ForceRelease(ctx, "unguarded-2", nil); err != nil {
				t.Fatal(err)
			}
			if err := record("unguarded-2", "c1", beta); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Admin.ForceRelease(ctx, "unguarded-2", nil); err != nil {
				t.Fatal(err)
			}
			if err := r.Admin.SetReservationsRequired(ctx, true); err != nil {
				t.Fatal(err)
			}
		}
		if c.name == "open a reservation" {
			if err := r.Admin.Reserve(ctx, "legacy-open", consentv1.Owner{Cluster: "c1", Namespace: "acme"}); err != nil {
				t.Fatal(err)
			}
		}
		var pgErr *pgconn.PgError
		if _, err := r.DB.Exec(ctx, c.sql); !errors.As(err, &pgErr) || pgErr.Code != "TL001" {
			t.Errorf("the database let a writer %s while reservations are required (%v)", c.name, err)
		}
	}

	// A record passes to another namespace only through a release, whoever writes it (here the
	// receiver's own role): taking an owned record over in one write, or in two through its
	// last owner's namespace, skips no check.
	for _, sql := range []string{
		`UPDATE consent_instances SET owner_namespace = 'mallory' WHERE instance_id = 'was-open'`,
		`UPDATE consent_instances SET owner_cluster = 'c2' WHERE instance_id = 'was-open'`,
	} {
		var pgErr *pgconn.PgError
		if _, err := r.Store.Pool().Exec(ctx, sql); !errors.As(err, &pgErr) || pgErr.Code != "TL002" {
			t.Errorf("the database let a writer take an owned record over (%s): %v", sql, err)
		}
	}
	if st, err := r.Store.ConsentState(ctx, "was-open"); err != nil || st.Owner.Cluster != "c1" || st.Owner.Namespace != "acme" {
		t.Fatalf("after the refused take-overs: %+v %v", st.Owner, err)
	}
	// Nor does a reservation move to another instance (it has no transition to hold it).
	if err := r.Admin.Reserve(ctx, "reserved-only", consentv1.Owner{Cluster: "c1", Namespace: "acme"}); err != nil {
		t.Fatal(err)
	}
	var renameErr *pgconn.PgError
	if _, err := r.Store.Pool().Exec(ctx, `UPDATE consent_instances SET instance_id = 'globex' WHERE instance_id = 'reserved-only'`); !errors.As(err, &renameErr) || renameErr.Code != "TL002" {
		t.Errorf("the database let a writer move a reservation to another instance: %v", err)
	}

	var config []string
	if err := r.DB.QueryRow(ctx, `SELECT proconfig FROM pg_proc WHERE proname = 'consent_instances_reservations'`).Scan(&config); err != nil ||
		len(config) != 1 || !strings.HasPrefix(config[0], "search_path=") || !strings.HasSuffix(config[0], "pg_temp") {
		t.Errorf("the trigger's function resolves names through %v (%v), want its schema, then pg_temp", config, err)
	}

	if err := r.Admin.Reserve(ctx, "fresh", consentv1.Owner{Cluster: "c1", Namespace: "acme"}); err != nil {
		t.Fatal(err)
	}
	// The database refuses a claim of a reserved (or released) record from another namespace,
	// whatever the setting, as the store does (a receiver of a release before 0009 did not).
	for _, required := range []bool{true, false} {
		if err := r.Admin.SetReservationsRequired(ctx, required); err != nil {
			t.Fatal(err)
		}
		var pgErr *pgconn.PgError
		if _, err := r.DB.Exec(ctx, `UPDATE consent_instances SET owner_cluster = 'c1', owner_namespace = 'mallory', owner_name = 'p' WHERE instance_id = 'fresh'`); !errors.As(err, &pgErr) || pgErr.Code != "TL002" {
			t.Errorf("the database let another namespace claim a reserved record (reservations required: %v): %v", required, err)
		}
	}
	if err := r.Admin.SetReservationsRequired(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := record("fresh", "c1", mallory); !errors.As(err, &e) || !e.Released {
		t.Fatalf("another namespace claiming a reserved instance: %v", err)
	}
	if err := record("fresh", "c2", acme); !errors.As(err, &e) || !e.Released {
		t.Fatalf("the namespace of another cluster claiming a reserved instance: %v", err)
	}
	if err := record("fresh", "c1", acme); err != nil {
		t.Fatalf("the namespace it was reserved for: %v", err)
	}
	if st, err := r.Store.ConsentState(ctx, "fresh"); err != nil || !st.Owner.Same(consentv1.Owner{Cluster: "c1", Namespace: "acme", Name: "policy", UID: "u1"}) || st.ReleasedBy != nil {
		t.Fatalf("after the claim: %+v %v", st, err)
	}
	if err := record("fresh", "c1", acme); err != nil {
		t.Fatalf("its owner recording again: %v", err)
	}
	if _, err := r.Admin.ForceRelease(ctx, "fresh", nil); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("a release to the next policy anywhere while reservations are required: %v", err)
	}
	if st, err := r.Store.ConsentState(ctx, "fresh"); err != nil || st.Owner.Namespace != "acme" {
		t.Fatalf("the refused release changed the record: %+v %v", st.Owner, err)
	}

	for name, c := range map[string]struct {
		instance string
		to       consentv1.Owner
	}{
		"an instance with a record": {"fresh", consentv1.Owner{Cluster: "c1", Namespace: "mallory"}},
		"no namespace":              {"other", consentv1.Owner{Cluster: "c1"}},
		"no cluster":                {"other", consentv1.Owner{Namespace: "acme"}},
		"a malformed instance":      {"Not_A_Label", consentv1.Owner{Cluster: "c1", Namespace: "acme"}},
		"a malformed namespace":     {"other", consentv1.Owner{Cluster: "c1", Namespace: "a/b"}},
	} {
		if err := r.Admin.Reserve(ctx, c.instance, c.to); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("reserving %s: %v, want ErrInvalid", name, err)
		}
	}
	if st, err := r.Store.ConsentState(ctx, "fresh"); err != nil || st.Owner.Namespace != "acme" {
		t.Fatalf("a refused reservation changed the record: %+v %v", st.Owner, err)
	}

	if err := r.Admin.SetReservationsRequired(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := record("later", "c1", mallory); err != nil {
		t.Fatalf("reservations no longer required: %v", err)
	}

	// A receiver of an earlier release claims and opens records knowing nothing of the last
	// owner: the database records it all the same.
	if _, err := r.DB.Exec(ctx, `INSERT INTO consent_instances (instance_id, created_at) VALUES ('by-sql', now());
UPDATE consent_instances SET owner_cluster = 'c3', owner_namespace = 'gamma', owner_name = 'p' WHERE instance_id = 'by-sql';
UPDATE consent_instances SET owner_cluster = NULL, owner_namespace = NULL, owner_name = NULL WHERE instance_id = 'by-sql'`); err != nil {
		t.Fatal(err)
	}
	if err := r.Admin.SetReservationsRequired(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := record("by-sql", "c1", acme); !errors.As(err, &e) || !e.Unreserved {
		t.Fatalf("another namespace claiming a record an earlier receiver claimed and opened: %v", err)
	}
	if err := record("by-sql", "c3", consentv1.Owner{Namespace: "gamma", Name: "p", UID: "u10"}); err != nil {
		t.Fatalf("its last owner's namespace, claimed through an earlier receiver: %v", err)
	}
}

// TestEveryOwnershipChangeIsRecorded: the database records each change of who owns a record, or
// of where it may be claimed from next, with who made it, whatever wrote the row: a policy's
// claim and release through the store, the receiver's operators' handover, reservation and
// opening to anyone, and an earlier receiver's claim that knows nothing of the record. A
// transition recorded by its owner, which changes neither, records nothing.
func TestEveryOwnershipChangeIsRecorded(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	record := func(cluster string, o consentv1.Owner, tier consentv1.Tier) {
		t.Helper()
		clk.SetTime(clk.Now().Add(time.Minute))
		if _, err := r.Store.RecordTransition(ctx, cluster, consentv1.RecordRequest{InstanceID: "acme", Owner: o,
			Transition: consentv1.Transition{At: clk.Now(), Tier: tier}}); err != nil {
			t.Fatal(err)
		}
	}
	first := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u1"}
	record("c1", first, consentv1.TierEventLevel)
	record("c1", first, consentv1.TierCriticalOnly) // the owner's own transition: no change
	if err := r.Store.Release(ctx, "c1", consentv1.ReleaseRequest{InstanceID: "acme", Owner: first}); err != nil {
		t.Fatal(err)
	}
	admin, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithApplicationName("alice via receiver consent release"),
		store.WithRoles(store.RoleConsentAdmin, store.RoleRawReader))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c2", Namespace: "initech"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ForceRelease(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.Reserve(ctx, "acme", consentv1.Owner{Cluster: "c2", Namespace: "initech"}); err != nil {
		t.Fatal(err)
	}
	record("c2", consentv1.Owner{Namespace: "initech", Name: "p", UID: "u2"}, consentv1.TierCriticalOnly) // claim at the tier in force
	if _, err := admin.ForceRelease(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	// Written by SQL: an earlier receiver's claim, then a UID added, an owner replaced in one
	// write (another policy of its namespace), the record deleted.
	for _, sql := range []string{
		`UPDATE consent_instances SET owner_cluster = 'c3', owner_namespace = 'old', owner_name = 'p' WHERE instance_id = 'acme'`,
		`UPDATE consent_instances SET owner_uid = 'u3' WHERE instance_id = 'acme'`,
		`UPDATE consent_instances SET owner_name = 'q', owner_uid = NULL WHERE instance_id = 'acme'`,
		`DELETE FROM consent_transitions WHERE instance_id = 'acme'; DELETE FROM consent_instances WHERE instance_id = 'acme'`,
	} {
		if _, err := r.DB.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}

	changes, err := r.Store.OwnershipChanges(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		line := c.Change
		if c.Owner != nil {
			line += " " + c.Owner.Cluster + "/" + c.Owner.Namespace + "/" + c.Owner.Name + "/" + c.Owner.UID
		}
		if c.To != nil {
			line += " to " + c.To.Cluster + "/" + c.To.Namespace
		} else if c.Change == "release" || c.Change == "reserve" {
			line += " to anywhere"
		}
		if c.Application == "alice via receiver consent release" {
			line += " by alice"
		}
		if c.At.IsZero() || c.DBUser == "" {
			t.Errorf("change %q without its time or database user: %+v", line, c)
		}
		got = append(got, line)
	}
	want := []string{
		"claim c1/acme/policy/u1",
		"release c1/acme/policy/u1 to c1/acme",
		"reserve to c2/initech by alice",
		"reserve to anywhere by alice",
		"reserve to c2/initech by alice",
		"claim c2/initech/p/u2",
		"release c2/initech/p/u2 to anywhere by alice",
		"claim c3/old/p/",
		"claim c3/old/p/u3",
		"release c3/old/p/u3 to c3/old",
		"claim c3/old/q/",
		"delete c3/old/q/",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ownership changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if changes, err := r.Store.OwnershipChanges(ctx, "nobody"); err != nil || changes == nil || len(changes) != 0 {
		t.Fatalf("changes of an unknown instance: %v %v", changes, err)
	}
}

// TestARestoredLedgerIsNotReadThroughAStaleCache: restoring the database to an earlier point (a
// failover to a replica that lagged, a point-in-time recovery) rewinds the record's version
// along with its timeline. A receiver that kept running holds the record's policy cached under
// the version it last read; the ledger's next write must not produce that same version for
// different content, or a withdrawal recorded after the restore is read through the old grant.
// Checked as a user would: by the timestamps of the events the database holds.
//
// Twice: with the database clock as it is, and with the record's version ahead of it (a
// primary whose clock ran fast), where a version taken from the clock alone would count up by
// one as before.
func TestARestoredLedgerIsNotReadThroughAStaleCache(t *testing.T) {
	for _, ahead := range []bool{false, true} {
		t.Run(fmt.Sprintf("version ahead of the clock: %v", ahead), func(t *testing.T) { restoredLedger(t, ahead) })
	}
}

func restoredLedger(t *testing.T, versionAhead bool) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	record := func(tier consentv1.Tier, at time.Time) {
		t.Helper()
		if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: owner,
			Transition: consentv1.Transition{At: at, Tier: tier, Reason: "Declared"}}); err != nil {
			t.Fatal(err)
		}
	}
	version := func() int64 {
		t.Helper()
		var v int64
		if err := r.DB.QueryRow(ctx, `SELECT version FROM consent_instances WHERE instance_id = 'acme'`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	batch := func(id string, first int, at time.Time) *batchv1.Batch {
		b := &batchv1.Batch{InstanceID: "acme", BatchID: id, Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(first + 9)}
		for i := first; i < first+10; i++ {
			b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprint(i), Name: "SearchSubmitted", Timestamp: at.Add(time.Duration(i) * time.Second),
				UserID: fmt.Sprintf("f%031x", 1<<40+i%3), Properties: map[string]any{"patternType": "literal"}})
		}
		return b
	}
	record(consentv1.TierEventLevel, T.Add(-48*time.Hour))
	if versionAhead {
		if _, err := r.DB.Exec(ctx, `UPDATE consent_instances
SET version = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + 3600000000 WHERE instance_id = 'acme'`); err != nil {
			t.Fatal(err)
		}
	}
	restorePoint := version()
	clk.SetTime(T.Add(time.Minute))
	record(consentv1.TierCriticalOnly, T.Add(-10*time.Hour))
	clk.SetTime(T.Add(2 * time.Minute))
	record(consentv1.TierEventLevel, T.Add(2*time.Minute))
	// Ingesting caches the record's policy: EventLevel until T-10h, CriticalOnly until now.
	if res, err := r.Store.InsertEvents(ctx, "acme", batch("before", 1, T.Add(-20*time.Hour))); err != nil || res.Accepted != 10 {
		t.Fatalf("events under EventLevel: %+v, %v", res, err)
	}
	// The database is restored to the first grant; the receiver keeps running.
	if _, err := r.DB.Exec(ctx, `DELETE FROM consent_transitions WHERE instance_id = 'acme'
  AND seq > (SELECT min(seq) FROM consent_transitions WHERE instance_id = 'acme')`); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DB.Exec(ctx, `UPDATE consent_instances SET version = $1 WHERE instance_id = 'acme'`, restorePoint); err != nil {
		t.Fatal(err)
	}
	// The operator, reconciling against the restored ledger, records what its policy says: a
	// withdrawal dated T-15h, then a new grant. As many writes as before the restore.
	clk.SetTime(T.Add(3 * time.Minute))
	record(consentv1.TierOff, T.Add(-15*time.Hour))
	clk.SetTime(T.Add(4 * time.Minute))
	record(consentv1.TierEventLevel, T.Add(4*time.Minute))
	if _, err := r.Store.InsertEvents(ctx, "acme", batch("after", 100, T.Add(-13*time.Hour))); err != nil {
		t.Fatal(err)
	}
	var leaked int
	if err := r.DB.QueryRow(ctx, `SELECT count(*) FROM events WHERE instance_id = 'acme' AND ts >= $1`, T.Add(-15*time.Hour)).Scan(&leaked); err != nil {
		t.Fatal(err)
	}
	if leaked != 0 {
		t.Fatalf("%d events dated after the withdrawal were stored: the restored ledger was read through a stale cache", leaked)
	}
}

// TestAVersionFarAheadOfTheClockStillChanges: a version that runs ahead of the database clock
// grows by a bounded step a write, so a record whose version is near the largest bigint (a
// clock that ran years fast, many writes) still takes transitions: a withdrawal is never
// refused for a number.
func TestAVersionFarAheadOfTheClockStillChanges(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	record := func(i int, tier consentv1.Tier) {
		t.Helper()
		clk.SetTime(T.Add(time.Duration(i) * time.Minute))
		if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "ahead", Owner: owner,
			Transition: consentv1.Transition{At: T.Add(time.Duration(i) * time.Minute), Tier: tier, Reason: "Declared"}}); err != nil {
			t.Fatalf("transition %d to %s: %v", i, tier, err)
		}
	}
	record(0, consentv1.TierEventLevel)
	if _, err := r.DB.Exec(ctx, `UPDATE consent_instances SET version = 9223372036854775807 - 8589934592 WHERE instance_id = 'ahead'`); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 40; i++ {
		record(i, []consentv1.Tier{consentv1.TierEventLevel, consentv1.TierCriticalOnly}[i%2])
	}
	record(41, consentv1.TierOff)
	st, err := r.Store.ConsentState(ctx, "ahead")
	if err != nil || st.Timeline.Current() != consentv1.TierOff || len(st.Timeline) != 42 {
		t.Fatalf("the record after 42 writes: %d transitions, in force %s, %v", len(st.Timeline), st.Timeline.Current(), err)
	}
}

// TestAHandoverEndsTheConsentInForce: the consent in force when a record is released or handed
// over was its owner's. Until the next owner records its own, none holds: events recorded in
// between are refused, by their timestamps, even when the next owner claims the same tier, and
// what the previous owner's collector stored dated after the release goes.
func TestAHandoverEndsTheConsentInForce(t *testing.T) {
	ctx := context.Background()
	for name, release := range map[string]func(r *receivertest.Receiver, o consentv1.Owner) error{
		"handed over by the receiver's operators": func(r *receivertest.Receiver, _ consentv1.Owner) error {
			_, err := r.Admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c2", Namespace: "initech"})
			return err
		},
		"released by its owner, then handed over": func(r *receivertest.Receiver, o consentv1.Owner) error {
			if err := r.Store.Release(ctx, "c1", consentv1.ReleaseRequest{InstanceID: "acme", Owner: o}); err != nil {
				return err
			}
			_, err := r.Admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c2", Namespace: "initech"})
			return err
		},
		"opened to anyone after its cluster is gone": func(r *receivertest.Receiver, _ consentv1.Owner) error {
			_, err := r.Admin.ForceRelease(ctx, "acme", nil)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			r, clk := startWithClock(t)
			first := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u1"}
			if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: first,
				Transition: consentv1.Transition{At: T.Add(-time.Hour), Tier: consentv1.TierEventLevel}}); err != nil {
				t.Fatal(err)
			}
			batch := func(id string, at ...time.Duration) *batchv1.Batch {
				b := &batchv1.Batch{InstanceID: "acme", BatchID: "acme-e-" + id, Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(len(at))}
				for i, d := range at {
					b.Events = append(b.Events, batchv1.Event{ID: id + fmt.Sprint(i), Name: "SearchSubmitted", Timestamp: T.Add(d), UserID: "0123456789abcdef0123456789abcdef"})
				}
				return b
			}
			// Stored while the first owner's consent held, one dated ahead of the release.
			if res, err := r.Store.InsertEvents(ctx, "acme", batch("1", -30*time.Minute, 3*time.Hour)); err != nil || res.Accepted != 2 {
				t.Fatalf("%+v %v", res, err)
			}
			clk.SetTime(T.Add(time.Hour))
			if err := release(r, first); err != nil {
				t.Fatal(err)
			}
			st, err := r.Store.ConsentState(ctx, "acme")
			if err != nil {
				t.Fatal(err)
			}
			if st.Timeline.Current() != consentv1.TierOff || !st.Timeline[len(st.Timeline)-1].At.Equal(T.Add(time.Hour)) ||
				st.Timeline[len(st.Timeline)-1].Reason != consentv1.ReasonRecordReleased {
				t.Fatalf("timeline after the release: %+v, want Off from the release", st.Timeline)
			}
			// The next owner claims EventLevel days later, as its own contract allows.
			clk.SetTime(T.Add(72 * time.Hour))
			next := consentv1.Owner{Namespace: "initech", Name: "policy", UID: "u2"}
			cluster := "c2"
			if _, err := r.Store.RecordTransition(ctx, cluster, consentv1.RecordRequest{InstanceID: "acme", Owner: next,
				Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel}}); err != nil {
				t.Fatal(err)
			}
			// Its collector resumes from the instance's cursor: what was recorded between the
			// release and its claim must not be stored.
			res, err := r.Store.InsertEvents(ctx, "acme", batch("2", 2*time.Hour, 30*time.Hour, 71*time.Hour, 73*time.Hour))
			if err != nil || res.Accepted != 1 || res.Refused != 3 {
				t.Fatalf("events recorded between the release and the next claim: %+v %v, want 3 refused and 1 stored", res, err)
			}
			ts := storedTimestamps(t, r, "acme")
			want := []time.Time{T.Add(-30 * time.Minute), T.Add(73 * time.Hour)}
			if !slices.EqualFunc(ts, want, time.Time.Equal) {
				t.Fatalf("stored timestamps %v, want %v: only what either owner's consent covered", ts, want)
			}
		})
	}
}

// TestARecordReleasedToItsOwnNamespaceKeepsItsWindow: the receiver's operators release a stuck
// owner's record back to its own namespace (its operator could not reach the receiver). The
// policy there claims it again and records the withdrawal it made meanwhile at its own time:
// what was stored dated after it goes.
func TestARecordReleasedToItsOwnNamespaceKeepsItsWindow(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	o := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u1"}
	if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: o,
		Transition: consentv1.Transition{At: T.Add(-time.Hour), Tier: consentv1.TierEventLevel}}); err != nil {
		t.Fatal(err)
	}
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "acme-e-1", Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: 2, Events: []batchv1.Event{
		{ID: "1", Name: "SearchSubmitted", Timestamp: T.Add(-30 * time.Minute), UserID: "0123456789abcdef0123456789abcdef"},
		{ID: "2", Name: "SearchSubmitted", Timestamp: T.Add(30 * time.Minute), UserID: "0123456789abcdef0123456789abcdef"},
	}}
	clk.SetTime(T.Add(time.Hour))
	if res, err := r.Store.InsertEvents(ctx, "acme", b); err != nil || res.Accepted != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	clk.SetTime(T.Add(2 * time.Hour))
	if _, err := r.Admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c1", Namespace: "acme"}); err != nil {
		t.Fatal(err)
	}
	st, err := r.Store.ConsentState(ctx, "acme")
	if err != nil || len(st.Timeline) != 1 {
		t.Fatalf("released to its own namespace: %+v %v, want the timeline as it was", st.Timeline, err)
	}
	// The withdrawal its operator made at T, recorded once the receiver is reachable again.
	clk.SetTime(T.Add(3 * time.Hour))
	st, err = r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: o,
		Transition: consentv1.Transition{At: T, Tier: consentv1.TierCriticalOnly, Reason: "Declared"}})
	if err != nil || st.Timeline.Current() != consentv1.TierCriticalOnly || !st.Timeline[len(st.Timeline)-1].At.Equal(T) {
		t.Fatalf("the withdrawal recorded after the release: %+v %v, want CriticalOnly from T", st.Timeline, err)
	}
	var left int
	if err := r.DB.QueryRow(ctx, `SELECT count(*) FROM events WHERE instance_id = 'acme' AND ts >= $1`, T).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d events dated after the withdrawal left (%v)", left, err)
	}
}

// TestAnotherPolicyClaimingARecordReleasedToItsNamespaceStartsFromTheRelease: released back to
// its namespace, a record is claimed there by another policy (its owner was deleted without
// closing it, say). The consent in force was the released owner's: nothing recorded between the
// release and the new policy's own grant is stored.
func TestAnotherPolicyClaimingARecordReleasedToItsNamespaceStartsFromTheRelease(t *testing.T) {
	ctx := context.Background()
	// The release is dated by the database's clock (the ownership trail): start near it.
	start := time.Now().UTC().Truncate(time.Second)
	clk := clocktesting.NewFakePassiveClock(start)
	r, err := receivertest.StartWith(ctx, receivertest.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	first := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u1"}
	if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: first,
		Transition: consentv1.Transition{At: start.Add(-time.Hour), Tier: consentv1.TierEventLevel}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c1", Namespace: "acme"}); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(start.Add(3 * time.Hour))
	next := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u2"} // re-created: another object
	st, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "acme", Owner: next,
		Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel}})
	if err != nil {
		t.Fatal(err)
	}
	if tl := st.Timeline; len(tl) != 3 || tl[1].Tier != consentv1.TierOff || tl[1].Reason != consentv1.ReasonRecordReleased ||
		tl[1].At.After(start.Add(time.Minute)) || !tl[2].At.Equal(start.Add(3*time.Hour)) {
		t.Fatalf("timeline after another policy's claim: %+v, want Off from the release, EventLevel from the claim", tl)
	}
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "acme-e-1", Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: 2, Events: []batchv1.Event{
		{ID: "1", Name: "SearchSubmitted", Timestamp: start.Add(time.Hour), UserID: "0123456789abcdef0123456789abcdef"},
		{ID: "2", Name: "SearchSubmitted", Timestamp: start.Add(3*time.Hour + time.Minute), UserID: "0123456789abcdef0123456789abcdef"},
	}}
	if res, err := r.Store.InsertEvents(ctx, "acme", b); err != nil || res.Accepted != 1 || res.Refused != 1 {
		t.Fatalf("%+v %v: want the event recorded between the release and the claim refused", res, err)
	}
}

// storedTimestamps are the timestamps of the instance's stored events, oldest first.
func storedTimestamps(t *testing.T, r *receivertest.Receiver, instance string) []time.Time {
	t.Helper()
	rows, err := r.DB.Query(context.Background(), `SELECT ts FROM events WHERE instance_id = $1 ORDER BY ts`, instance)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ts []time.Time
	for rows.Next() {
		var at time.Time
		if err := rows.Scan(&at); err != nil {
			t.Fatal(err)
		}
		ts = append(ts, at.UTC())
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestATrialEndsAtItsUntilWithNoOneRecordingIt: a grant recorded with its trial's expiry ends
// at the receiver by itself; nobody records the expiry (the operator is down). Judged by the
// timestamps of the events stored.
func TestATrialEndsAtItsUntilWithNoOneRecordingIt(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	hr := func(n float64) time.Time { return T.Add(time.Duration(n * float64(time.Hour))) }
	until := hr(2)
	record := func(tr consentv1.Transition, head *consentv1.Transition) (consentv1.State, error) {
		return r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "trial", Owner: owner, Transition: tr, ExpectedHead: head})
	}
	if _, err := record(consentv1.Transition{At: hr(-1), Tier: consentv1.TierEventLevel, Basis: "SelfServeTrial", Until: &until}, nil); err != nil {
		t.Fatal(err)
	}
	n := 0
	send := func(at ...float64) (store.Result, error) {
		n++
		b := &batchv1.Batch{InstanceID: "trial", BatchID: fmt.Sprintf("trial-e-%d", n), Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(n)}
		for i, a := range at {
			b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprintf("%d%03d", n, i), Name: "SearchSubmitted", Timestamp: hr(a), UserID: "0123456789abcdef0123456789abcdef"})
		}
		return r.Store.InsertEvents(ctx, "trial", b)
	}
	// Before the expiry: what is dated from it on is refused, even from a collector that
	// sends it early (a clock ahead, or a stale configuration without the expiry).
	clk.SetTime(hr(1.9))
	if res, err := send(-0.5, 1.5, 2, 4); err != nil || res.Accepted != 2 || res.Refused != 2 {
		t.Fatalf("before the expiry: %+v %v, want the 2 events dated before it stored", res, err)
	}
	// After it, with nothing recorded since the grant: no event batch is taken at all.
	clk.SetTime(hr(5))
	if _, err := send(1.8, 3); !errors.Is(err, store.ErrConsentRefused) {
		t.Fatalf("after the expiry: %v, want the batch refused", err)
	}
	st, err := r.Store.ConsentState(ctx, "trial")
	if err != nil || len(st.Timeline) != 1 || st.Timeline.CurrentAt(clk.Now()) != consentv1.TierCriticalOnly {
		t.Fatalf("record after the expiry: %+v %v, want the grant alone, CriticalOnly in force", st.Timeline, err)
	}
	// A head with another expiry is stale.
	other := hr(3)
	if _, err := record(consentv1.Transition{At: clk.Now(), Tier: consentv1.TierOff},
		&consentv1.Transition{At: hr(-1), Tier: consentv1.TierEventLevel, Until: &other}); !errors.Is(err, store.ErrStale) {
		t.Fatalf("a head with another until: %v, want stale", err)
	}
	// An until is for EventLevel only.
	if _, err := record(consentv1.Transition{At: clk.Now(), Tier: consentv1.TierOff, Until: &other}, nil); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("until on Off: %v, want invalid", err)
	}
	// An operator that notices the expiry late records it, at the expiry, once.
	for range 2 {
		st, err := record(consentv1.Transition{At: clk.Now(), Tier: consentv1.TierCriticalOnly, Reason: "Declared"}, nil)
		if last := st.Timeline[len(st.Timeline)-1]; err != nil || len(st.Timeline) != 2 || !last.At.Equal(until) || last.Reason != consentv1.ReasonTrialExpired {
			t.Fatalf("recording the expiry: %+v %v, want CriticalOnly at the expiry", st.Timeline, err)
		}
	}
	// Renewed later: a new grant from now, never reopening the lapsed period.
	renewed := hr(30)
	if _, err := record(consentv1.Transition{At: hr(-1), Tier: consentv1.TierEventLevel, Until: &renewed}, nil); err != nil {
		t.Fatal(err)
	}
	if res, err := send(4, 6, 12); err != nil || res.Accepted != 2 || res.Refused != 1 {
		t.Fatalf("after the renewal: %+v %v, want the 2 events dated after it stored", res, err)
	}
	// Shortened: what was stored dated from the new expiry on goes.
	clk.SetTime(hr(6))
	shortened := hr(10)
	st, err = record(consentv1.Transition{At: hr(6), Tier: consentv1.TierEventLevel, Until: &shortened}, nil)
	if err != nil || st.EventsRemoved != 1 {
		t.Fatalf("shortening: %+v %v, want the event dated after the new expiry removed", st, err)
	}
	want := []time.Time{hr(-0.5), hr(1.5), hr(6)}
	if got := storedTimestamps(t, r, "trial"); !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Fatalf("stored timestamps %v, want %v: only what a trial in force covered", got, want)
	}
}

// TestALapseAndAnUntilHoldAgainstOlderPeers: a requester that knows nothing of until (an
// operator rolled back) never removes a trial's expiry by asking for EventLevel again, and a
// grant after a lapse deletes what a receiver older than until stored in it.
func TestALapseAndAnUntilHoldAgainstOlderPeers(t *testing.T) {
	ctx := context.Background()
	r, clk := startWithClock(t)
	hr := func(n float64) time.Time { return T.Add(time.Duration(n * float64(time.Hour))) }
	record := func(instance string, tr consentv1.Transition, head *consentv1.Transition) consentv1.State {
		t.Helper()
		st, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: instance, Owner: owner, Transition: tr, ExpectedHead: head})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	until := hr(10)
	grant := record("older", consentv1.Transition{At: hr(-1), Tier: consentv1.TierEventLevel, Until: &until}, nil).Timeline[0]
	for _, head := range []*consentv1.Transition{nil, {At: grant.At, Tier: grant.Tier}} {
		if st := record("older", consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel}, head); len(st.Timeline) != 1 || st.Timeline.TierAt(until) != consentv1.TierCriticalOnly {
			t.Fatalf("EventLevel without until from a requester that does not name the record's (head %+v): %+v, want nothing changed", head, st.Timeline)
		}
	}
	st := record("older", consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel}, &consentv1.Transition{At: grant.At, Tier: grant.Tier, Until: &until})
	if len(st.Timeline) != 2 || st.Timeline[1].Until != nil || st.Timeline.TierAt(hr(100)) != consentv1.TierEventLevel {
		t.Fatalf("the trial made a contract by a requester that names its until: %+v, want a renewal without expiry", st.Timeline)
	}

	short := hr(2)
	record("lapsed", consentv1.Transition{At: hr(-1), Tier: consentv1.TierEventLevel, Until: &short}, nil)
	if _, err := r.Store.InsertEvents(ctx, "lapsed", &batchv1.Batch{InstanceID: "lapsed", BatchID: "lapsed-e-1", Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: 1,
		Events: []batchv1.Event{{ID: "1", Name: "SearchSubmitted", Timestamp: hr(0), UserID: "0123456789abcdef0123456789abcdef"}}}); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(hr(5))
	// Stored in the lapse by a receiver that reads no until.
	if _, err := r.DB.Exec(ctx, `INSERT INTO events (instance_id, event_id, name, ts, user_id) VALUES ('lapsed', 2, 'SearchSubmitted', $1, 'x')`, hr(3)); err != nil {
		t.Fatal(err)
	}
	// A requester that knows nothing of until asks for EventLevel after the lapse: refused (its
	// grant would carry the passed until), never taken as a grant without expiry.
	if _, err := r.Store.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "lapsed", Owner: owner,
		Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel}}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("EventLevel without until after the lapse, from a requester that does not name it: %v, want invalid", err)
	}
	renewed := hr(40)
	if st := record("lapsed", consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel, Until: &renewed}, nil); st.EventsRemoved != 1 {
		t.Fatalf("a grant after the lapse removed %d events, want the one stored in it", st.EventsRemoved)
	}
	if got, want := storedTimestamps(t, r, "lapsed"), []time.Time{hr(0)}; !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Fatalf("stored timestamps %v, want %v", got, want)
	}
}
