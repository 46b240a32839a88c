/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/ledger"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// slowLedger answers State with a fixed record, and the clock moves on while it answers: a
// read that takes long, or a reconcile that goes on while the test (or the world) moves time.
type slowLedger struct {
	ConsentLedger
	clock *clocktesting.FakeClock
	took  time.Duration
	state consentv1.State
	err   error // when set, State fails (an unreachable receiver)
}

func (l *slowLedger) Cluster() string { return "" }

func (l *slowLedger) State(context.Context, string, string) (consentv1.State, error) {
	l.clock.Step(l.took)
	return l.state, l.err
}

// TestVerificationDatedAtTheRead: a record found consistent counts as verified from when it was
// read, not from when the reconcile got to note it. A transition the receiver lost after the
// read is looked for again a LedgerResync after the read (the race the controller suite's
// "notices a receiver record that no longer matches" hit when the note was dated later).
func TestVerificationDatedAtTheRead(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	granted := start.Add(-time.Hour)
	timeline := consentv1.Timeline{{At: granted, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &granted}}
	led := &ownLedger{slowLedger{clock: clock, took: 11 * time.Minute, state: consentv1.State{InstanceID: "i", Timeline: timeline,
		Owner: consentv1.Owner{Cluster: "c", Namespace: "a", Name: "p", UID: "u"}}}}
	r := &TelemetryPolicyReconciler{Clock: clock, Ledger: led, Options: Options{LedgerResync: 10 * time.Minute}}
	p := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", UID: "u", Generation: 1}}
	p.Spec.InstanceID = "i"
	p.Status.ConsentHistory = historyOf(timeline)
	if !r.verifyDue(p) {
		t.Fatal("a policy never verified by this process must be verified")
	}
	st := &reconcileState{policy: p, intent: v1.TierEventLevel}
	if err := r.planTransition(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if !st.ledgerKnown || st.recordLost {
		t.Fatalf("the record matches the copy: known=%v lost=%v", st.ledgerKnown, st.recordLost)
	}
	if !r.verifyDue(p) {
		t.Fatal("the record was read 11 minutes ago (resync 10): it is due again, though the check ended just now")
	}
	led.took = 0
	st = &reconcileState{policy: p, intent: v1.TierEventLevel}
	if err := r.planTransition(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	clock.Step(9 * time.Minute)
	if r.verifyDue(p) {
		t.Fatal("read 9 minutes ago (resync 10): not due yet")
	}
	clock.Step(time.Minute)
	if !r.verifyDue(p) {
		t.Fatal("read 10 minutes ago (resync 10): due")
	}
}

// TestVerificationRequeuedWhenDue: a reconcile asks to come back when the receiver's record is
// next due to be read back (a LedgerResync after the last read), not a resync after itself: one
// made between two verifications would otherwise push the next one out to almost twice the
// resync, and a requeue a moment early found it not yet due.
func TestVerificationRequeuedWhenDue(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	granted := start.Add(-time.Hour)
	timeline := consentv1.Timeline{{At: granted, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &granted}}
	led := &ownLedger{slowLedger{clock: clock, state: consentv1.State{InstanceID: "i", Timeline: timeline,
		Owner: consentv1.Owner{Cluster: "c", Namespace: "a", Name: "p", UID: "u"}}}}
	r := &TelemetryPolicyReconciler{Clock: clock, Ledger: led, Options: Options{LedgerResync: 10 * time.Minute}}
	p := trialPolicy(start, v1.TierEventLevel, timeline)
	reconcile := func() time.Time {
		t.Helper()
		st := &reconcileState{policy: p}
		if err := r.reconcileConsent(context.Background(), st); err != nil {
			t.Fatal(err)
		}
		if err := r.replan(context.Background(), st); err != nil { // the ledger step's read-back
			t.Fatal(err)
		}
		return slices.MinFunc(st.requeueAt, func(a, b time.Time) int { return a.Compare(b) })
	}
	if got, want := reconcile(), start.Add(10*time.Minute); !got.Equal(want) {
		t.Fatalf("verified now: back at %s, want %s", got, want)
	}
	clock.Step(9 * time.Minute)
	if got, want := reconcile(), start.Add(10*time.Minute); !got.Equal(want) {
		t.Fatalf("a reconcile between verifications: back at %s, want %s (the next verification), not a resync after itself", got, want)
	}
	clock.Step(time.Minute)
	if !r.verifyDue(p) {
		t.Fatal("at the requeue the verification is due")
	}
	// An unreachable receiver at the verification: the copy in status stands for now, and the
	// receiver is asked again at the ledger's retry, not a resync later.
	led.err = errors.New("receiver answered 500 Internal Server Error")
	if got, want := reconcile(), clock.Now().Add(defaultLedgerRetry); !got.Equal(want) {
		t.Fatalf("a failed read-back: back at %s, want %s (the ledger's retry)", got, want)
	}
	led.err = nil
	// A read that took longer than the resync is due at once; the requeue is not in the past.
	led.took = 11 * time.Minute
	if got, want := reconcile(), clock.Now().Add(10*time.Minute); !got.Equal(want) {
		t.Fatalf("after a slow read: back at %s, want %s", got, want)
	}
}

// TestFailedReadBackIsReported: when the receiver's record cannot be read back (a receiver
// answering 500, say), the copy in status stands in, and ConsentRecorded says it could not be
// compared, rather than nothing.
func TestFailedReadBackIsReported(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	granted := start.Add(-time.Hour)
	timeline := consentv1.Timeline{{At: granted, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &granted}}
	led := &slowLedger{clock: clock, err: errors.New("receiver answered 500 Internal Server Error")}
	r := &TelemetryPolicyReconciler{Clock: clock, Ledger: led, Options: Options{LedgerResync: 10 * time.Minute}}
	p := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", UID: "u", Generation: 1}}
	p.Spec.InstanceID = "i"
	p.Status.ConsentHistory = historyOf(timeline)
	st := &reconcileState{policy: p, mutate: true, intent: v1.TierEventLevel, timeline: timeline}
	if err := r.planTransition(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if err := r.syncLedger(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionConsentRecorded)
	if c == nil || !strings.Contains(c.Message, "500 Internal Server Error") {
		t.Fatalf("a failed read-back is not in ConsentRecorded: %+v", c)
	}
}

// TestLowerings: pending changes are withdrawals; merged copies may hold one that raises the
// tier before it, which is dropped (the lower tier stays in force), never one that lowers.
func TestLowerings(t *testing.T) {
	at := func(m int) time.Time { return time.Date(2026, 11, 30, 0, m, 0, 0, time.UTC) }
	el, co, off := consentv1.TierEventLevel, consentv1.TierCriticalOnly, consentv1.TierOff
	tl := func(tiers ...consentv1.Tier) consentv1.Timeline {
		var out consentv1.Timeline
		for i, tier := range tiers {
			out = append(out, consentv1.Transition{At: at(i + 1), Tier: tier})
		}
		return out
	}
	tiers := func(t consentv1.Timeline) []consentv1.Tier {
		var out []consentv1.Tier
		for _, tr := range t {
			out = append(out, tr.Tier)
		}
		return out
	}
	history := consentv1.Timeline{{At: at(0), Tier: el}}
	for _, c := range []struct {
		name     string
		history  consentv1.Timeline
		pending  consentv1.Timeline
		expected []consentv1.Tier
	}{
		{"each lowers", history, tl(co, off), []consentv1.Tier{co, off}},
		{"a raise after Off is dropped", history, tl(off, co), []consentv1.Tier{off}},
		{"Off twice keeps the first", history, tl(off, off), []consentv1.Tier{off}},
		{"EventLevel over EventLevel is no withdrawal", history, tl(el, co), []consentv1.Tier{co}},
		{"no history: only Off stands first (a first record above Off is a grant)", nil, tl(co, el, off), []consentv1.Tier{off}},
	} {
		if got := tiers(lowerings(c.history, c.pending)); !slices.Equal(got, c.expected) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.expected)
		}
	}
}

// TestStillUnwritten: a withdrawal a failed status write left in memory is forgotten only once
// status holds it, pending or recorded; a status written without it (by a reconcile that
// stalled before loading it) does not make it forgotten.
func TestStillUnwritten(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Minute)
	unwritten := consentv1.Timeline{{At: t1, Tier: consentv1.TierOff}}
	granted := consentv1.Timeline{{At: t0, Tier: consentv1.TierEventLevel}}
	withdrawn := append(granted, unwritten...)
	p := &v1.TelemetryPolicy{}
	p.Status.ConsentHistory = historyOf(granted)
	if got := stillUnwritten(unwritten, p); len(got) != 1 {
		t.Fatalf("status without it: %v, want it kept", got)
	}
	p.Status.PendingConsentChanges = pendingOf(granted, unwritten)
	if got := stillUnwritten(unwritten, p); len(got) != 0 {
		t.Fatalf("status holding it pending: %v, want it forgotten", got)
	}
	p.Status.PendingConsentChanges = nil
	p.Status.ConsentHistory = historyOf(withdrawn)
	if got := stillUnwritten(unwritten, p); len(got) != 0 {
		t.Fatalf("status recording it: %v, want it forgotten", got)
	}
}

// TestRememberedAcrossWrites: what a failed status write could not keep (a withdrawal pending,
// a ledger copy the receiver had moved on to) starts the next reconcile, survives a status write
// that lacks it, and goes once status holds it.
func TestRememberedAcrossWrites(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	granted := consentv1.Timeline{{At: t0, Tier: consentv1.TierEventLevel, Reason: "Declared"}}
	off := consentv1.Timeline{{At: t0.Add(time.Minute), Tier: consentv1.TierOff, Reason: "Declared"}}
	policy := func() *v1.TelemetryPolicy {
		p := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", UID: "u"}}
		p.Status.ConsentHistory = historyOf(granted)
		return p
	}
	r := &TelemetryPolicyReconciler{}
	start := func() *reconcileState {
		st := &reconcileState{policy: policy()}
		r.startLedger(st)
		return st
	}

	failed := policy()
	failed.Status.PendingConsentChanges = pendingOf(granted, off)
	r.noteStatusUnwritten(failed)
	if st := start(); len(st.pending) != 1 || st.pending[0].Tier != consentv1.TierOff {
		t.Fatalf("pending withdrawal not carried to the next reconcile: %v", st.pending)
	}
	r.noteStatusWritten(policy()) // a reconcile that stalled before loading it
	if st := start(); len(st.pending) != 1 {
		t.Fatalf("forgotten by a status write without it: %v", st.pending)
	}
	r.noteStatusWritten(failed)
	if st := start(); len(st.pending) != 0 {
		t.Fatalf("status holds it: %v, want it forgotten", st.pending)
	}

	recorded := policy()
	recorded.Status.ConsentHistory = historyOf(append(granted, off...))
	r.noteStatusUnwritten(recorded)
	if st := start(); st.timeline.Current() != consentv1.TierOff {
		t.Fatalf("the receiver's record as last read is not the next reconcile's copy: %v", st.timeline)
	}
	r.noteStatusWritten(recorded)
	if st := start(); st.timeline.Current() != consentv1.TierEventLevel {
		t.Fatalf("a copy status holds is not remembered any longer: %v", st.timeline)
	}
}

// TestLowest: the lower of two timelines at every moment, checked against TierAt of both at
// every instant that matters (each change, just before and after it, long after).
func TestLowest(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	tl := func(pairs ...any) consentv1.Timeline {
		var out consentv1.Timeline
		for i := 0; i < len(pairs); i += 2 {
			out = append(out, consentv1.Transition{At: at(pairs[i].(int)), Tier: pairs[i+1].(consentv1.Tier)})
		}
		return out
	}
	el, co, off := consentv1.TierEventLevel, consentv1.TierCriticalOnly, consentv1.TierOff
	cases := []struct {
		name string
		a, b consentv1.Timeline
	}{
		{"an Off window only the running configuration holds", tl(0, el, 30, co), tl(0, el, 10, off, 20, el)},
		{"the copy lowers, the running one lowered earlier", tl(0, el, 30, co), tl(0, el, 10, co)},
		{"granted later in one", tl(5, el), tl(0, el)},
		{"one empty", tl(0, el, 10, co), nil},
		{"both empty", nil, nil},
		{"same instant, different tiers", tl(0, el, 10, off), tl(0, co, 10, el)},
		{"equal", tl(0, el, 10, off, 20, co), tl(0, el, 10, off, 20, co)},
	}
	for _, c := range cases {
		got := lowest(c.a, c.b)
		if err := got.Validate(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Tier == got[i-1].Tier {
				t.Fatalf("%s: %v repeats a tier", c.name, got)
			}
		}
		var probes []time.Time
		for _, tr := range slices.Concat(c.a, c.b) {
			probes = append(probes, tr.At.Add(-time.Second), tr.At, tr.At.Add(time.Second))
		}
		probes = append(probes, at(-60), at(600))
		for _, ts := range probes {
			want := c.a.TierAt(ts)
			if tb := c.b.TierAt(ts); tb.Rank() < want.Rank() {
				want = tb
			}
			if g := got.TierAt(ts); g != want {
				t.Fatalf("%s: at %s got %s, want %s (a %v, b %v, lowest %v)", c.name, ts.Format(time.TimeOnly), g, want, c.a, c.b, got)
			}
		}
	}
	if got := lowest(tl(0, el, 30, co), tl(0, el, 10, off, 20, el)); got.TierAt(at(15)) != off || got.TierAt(at(25)) != el || got.Current() != co {
		t.Fatalf("the Off window is kept and the copy's lowering after it: %v", got)
	}
	// Lowered in the instant consent was granted: the same consent as the running
	// configuration's, written differently. The copy stands as it is (a configuration rewritten
	// each reconcile would roll the collector each time).
	tied := tl(0, el, 0, co)
	if got := lowest(tied, tl(0, co)); !slices.Equal(got, tied) {
		t.Fatalf("nothing lower in b: got %v, want a itself %v", got, tied)
	}
}

// TestReadBackDropsWithdrawalsInForce: a pending withdrawal to a tier the receiver's record
// already has in force since earlier (the copy in status lagged it) is no withdrawal: it is not
// shown as pending nor recorded again; one that lowers further is kept.
func TestReadBackDropsWithdrawalsInForce(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return start.Add(time.Duration(m) * time.Minute) }
	clock := clocktesting.NewFakeClock(at(60))
	copyOf := consentv1.Timeline{{At: at(0), Tier: consentv1.TierEventLevel}}
	record := consentv1.Timeline{{At: at(0), Tier: consentv1.TierEventLevel}, {At: at(10), Tier: consentv1.TierCriticalOnly}}
	for _, c := range []struct {
		pending consentv1.Timeline
		want    int
	}{
		{consentv1.Timeline{{At: at(20), Tier: consentv1.TierCriticalOnly}}, 0},
		{consentv1.Timeline{{At: at(20), Tier: consentv1.TierOff}}, 1},
		{consentv1.Timeline{{At: at(20), Tier: consentv1.TierCriticalOnly}, {At: at(30), Tier: consentv1.TierOff}}, 1},
	} {
		led := &slowLedger{clock: clock, state: consentv1.State{InstanceID: "i", Timeline: record}}
		r := &TelemetryPolicyReconciler{Clock: clock, Ledger: led, Options: Options{LedgerResync: 10 * time.Minute}}
		p := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", UID: "u", Generation: 1}}
		p.Spec.InstanceID = "i"
		p.Status.ConsentHistory = historyOf(copyOf)
		st := &reconcileState{policy: p, mutate: true, intent: v1.TierOff, timeline: copyOf, pending: c.pending}
		if !r.readBack(context.Background(), st) {
			t.Fatal("the record is usable")
		}
		if len(st.pending) != c.want || c.want > 0 && st.pending[len(st.pending)-1].Tier != consentv1.TierOff {
			t.Fatalf("pending %v against the record %v: got %v, want %d ending Off", c.pending, record, st.pending, c.want)
		}
	}
}

// ownLedger is a slowLedger speaking for cluster "c", whose record this policy owns.
type ownLedger struct{ slowLedger }

func (l *ownLedger) Cluster() string { return "c" }

// TestWithdrawalKeepsItsDateAcrossTheReadBack: a withdrawal with no write to date it (dated
// now) is given to the collector before the record is read back; planned again after a read
// that took 30 s, it keeps the date the collector was lowered at, not the read's end.
func TestWithdrawalKeepsItsDateAcrossTheReadBack(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	granted := start.Add(-time.Hour)
	timeline := consentv1.Timeline{{At: granted, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &granted}}
	led := &ownLedger{slowLedger{clock: clock, state: consentv1.State{InstanceID: "i", Timeline: timeline,
		Owner: consentv1.Owner{Cluster: "c", Namespace: "a", Name: "p", UID: "u"}}}}
	r := &TelemetryPolicyReconciler{Clock: clock, Ledger: led, Options: Options{LedgerResync: 10 * time.Minute}}
	p := trialPolicy(start, v1.TierCriticalOnly, timeline)
	st := &reconcileState{policy: p, mutate: true}
	if err := r.reconcileConsent(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if !st.readBackDue || len(st.pending) != 1 || !st.pending[0].At.Equal(start) {
		t.Fatalf("planned from the copy before the read-back: due=%v pending %v, want CriticalOnly at %s", st.readBackDue, st.pending, start)
	}
	led.took = 30 * time.Second
	if err := r.replan(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if len(st.pending) != 1 || st.pending[0].Tier != consentv1.TierCriticalOnly || !st.pending[0].At.Equal(start) {
		t.Fatalf("after a 30 s read-back: pending %v, want CriticalOnly at %s (when the collector was lowered)", st.pending, start)
	}
}

// TestConfigTimelineSameFromRecordAndCopy: the collector's configuration written from the
// receiver's record (after a read-back) and from the copy in status (which keeps the newest
// MaxConsentHistory transitions) is the same, so the collector is not rolled at every read-back
// of an instance with a long history.
func TestConfigTimelineSameFromRecordAndCopy(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	var record consentv1.Timeline
	for i := range MaxConsentHistory + 5 {
		tier := consentv1.TierEventLevel
		if i%2 == 1 {
			tier = consentv1.TierCriticalOnly
		}
		record = append(record, consentv1.Transition{At: start.Add(time.Duration(i) * time.Minute), Tier: tier, Reason: "Declared"})
	}
	pending := consentv1.Timeline{{At: start.Add(time.Hour), Tier: consentv1.TierOff}}
	type point struct {
		at   time.Time
		tier consentv1.Tier
	}
	points := func(tl consentv1.Timeline) []point {
		var out []point
		for _, tr := range tl {
			out = append(out, point{tr.At.UTC(), tr.Tier})
		}
		return out
	}
	fromRecord := (&reconcileState{timeline: record, pending: pending}).configTimeline()
	fromCopy := (&reconcileState{timeline: timelineOf(historyOf(record)), pending: pending}).configTimeline()
	if !slices.Equal(points(fromRecord), points(fromCopy)) {
		t.Fatalf("from the record %v\nfrom the copy %v", points(fromRecord), points(fromCopy))
	}
	if fromRecord.Current() != consentv1.TierOff || len(fromRecord) != MaxConsentHistory+1 {
		t.Fatalf("the newest %d transitions and the pending withdrawal: %v", MaxConsentHistory, points(fromRecord))
	}
}

// trialPolicy is policy a/p of instance i on a self-serve trial accepted a day before start,
// declaring tier, whose copy in status is timeline (EventLevel in force).
func trialPolicy(start time.Time, tier v1.ConsentTier, timeline consentv1.Timeline) *v1.TelemetryPolicy {
	accepted, expires := metav1.NewTime(start.Add(-24*time.Hour)), metav1.NewTime(start.Add(7*24*time.Hour))
	p := &v1.TelemetryPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", UID: "u", Generation: 1},
		Spec: v1.TelemetryPolicySpec{
			InstanceID: "i",
			Consent:    v1.ConsentSpec{Tier: tier},
			Contract: &v1.ContractSpec{
				Basis: v1.BasisSelfServeTrial, Reference: "0065e00000AbCdEf", CloudTermsVersion: "2024-06-01",
				AcceptedAt: &accepted, ExpiresAt: &expires, UserLevelEventDataApproved: true,
			},
		},
	}
	p.Status.ConsentHistory = historyOf(timeline)
	p.Status.EffectiveTier = v1.TierEventLevel
	return p
}

// TestRememberedCopyOfAFullHistory: status keeps the newest MaxConsentHistory transitions. A
// failed status write after the receiver recorded one more leaves a remembered copy that no
// longer holds status's oldest entry (it fell out of the window): it still holds status's copy,
// and the next reconcile starts from it, the withdrawal the receiver recorded included.
func TestRememberedCopyOfAFullHistory(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	var record consentv1.Timeline
	for i := range MaxConsentHistory + 1 {
		tier := consentv1.TierEventLevel
		if i%2 == 1 {
			tier = consentv1.TierCriticalOnly
		}
		record = append(record, consentv1.Transition{At: start.Add(time.Duration(i) * time.Minute), Tier: tier, Reason: "Declared"})
	}
	withdrawal := record[len(record)-1] // CriticalOnly, recorded; status never got it
	r := &TelemetryPolicyReconciler{}
	p := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", UID: "u"}}
	p.Status.ConsentHistory = historyOf(record[:len(record)-1])
	failed := p.DeepCopy()
	failed.Status.ConsentHistory = historyOf(record)
	r.noteStatusUnwritten(failed)

	st := &reconcileState{policy: p}
	r.startLedger(st)
	if got := st.localTimeline(); got.Current() != withdrawal.Tier || !got[len(got)-1].At.Equal(withdrawal.At) {
		t.Fatalf("the reconcile starts without the recorded withdrawal: %v", got)
	}
	if _, history := r.unwrittenOf(p); len(history) == 0 {
		t.Fatal("the remembered copy is dropped before status holds it")
	}
	r.noteStatusWritten(failed)
	if _, history := r.unwrittenOf(p); len(history) != 0 {
		t.Fatal("status holds the remembered copy: it is forgotten")
	}
}

// TestSeenLoweringsPlannedOnce: lowerings the watch saw between two reconciles (EventLevel ->
// CriticalOnly -> Off -> EventLevel, the reconcile reading only the last) are planned in order at
// their own times, then the grant; once recorded (or superseded), they are not planned again.
func TestSeenLoweringsPlannedOnce(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	granted := start.Add(-time.Hour)
	timeline := consentv1.Timeline{{At: granted, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &granted}}
	r := &TelemetryPolicyReconciler{Clock: clock, Options: Options{LedgerResync: 10 * time.Minute}}
	versions := []v1.ConsentTier{v1.TierEventLevel, v1.TierCriticalOnly, v1.TierOff, v1.TierEventLevel}
	var policies []*v1.TelemetryPolicy
	for i, tier := range versions {
		p := trialPolicy(start, tier, timeline)
		p.Generation = int64(i + 1)
		policies = append(policies, p)
	}
	for i := 1; i < len(policies); i++ {
		clock.Step(time.Minute)
		r.noteLowering(policies[i-1], policies[i])
	}
	if n := len(r.seenLowerings(policies[1])); n != 1 {
		t.Fatalf("a reconcile of generation 2 plans from %d lowerings, want 1 (later ones are of versions it has not read)", n)
	}
	st := &reconcileState{policy: policies[3], mutate: true, timeline: timeline, ledgerKnown: true, intent: v1.TierEventLevel}
	r.plan(st)
	want := []consentv1.Transition{{At: start.Add(time.Minute), Tier: consentv1.TierCriticalOnly}, {At: start.Add(2 * time.Minute), Tier: consentv1.TierOff}}
	if len(st.pending) != 2 || st.pending[0].Tier != want[0].Tier || !st.pending[0].At.Equal(want[0].At) ||
		st.pending[1].Tier != want[1].Tier || !st.pending[1].At.Equal(want[1].At) {
		t.Fatalf("pending %v, want %v", st.pending, want)
	}
	if st.want == nil || st.want.Tier != consentv1.TierEventLevel || !st.want.At.Equal(clock.Now()) {
		t.Fatalf("then granted again now, never reaching back: want %v", st.want)
	}

	// Recorded: the record holds them and the grant; nothing is planned from the notes again,
	// even before they are forgotten.
	recorded := append(slices.Clone(timeline), st.pending...)
	recorded = append(recorded, *st.want)
	again := &reconcileState{policy: policies[3], mutate: true, timeline: recorded, ledgerKnown: true, intent: v1.TierEventLevel}
	r.plan(again)
	if len(again.pending) != 0 || again.want != nil {
		t.Fatalf("planned again from recorded lowerings: pending %v, want %v", again.pending, again.want)
	}
	r.forgetSeenLowerings(client.ObjectKeyFromObject(policies[3]), again.seenConsidered)
	if n := len(r.seenLowerings(policies[3])); n != 0 {
		t.Fatalf("%d lowerings kept after the reconcile that planned from them", n)
	}

	// Another policy of the same name: nothing noted for the old one applies.
	r.noteLowering(policies[0], policies[2])
	other := trialPolicy(start, v1.TierEventLevel, timeline)
	other.UID, other.Generation = "v", 9
	if n := len(r.seenLowerings(other)); n != 0 {
		t.Fatalf("%d lowerings of another policy's versions apply", n)
	}
}

// TestSeenLoweringNotedDuringAReconcileIsKept: a reconcile that read generation 3 (from the API
// server, ahead of the watch) before the watch noted generation 2's withdrawal forgets only what
// it planned from; the next reconcile records the withdrawal.
func TestSeenLoweringNotedDuringAReconcileIsKept(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	granted := start.Add(-time.Hour)
	timeline := consentv1.Timeline{{At: granted, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &granted}}
	r := &TelemetryPolicyReconciler{Clock: clock, Options: Options{LedgerResync: 10 * time.Minute}}
	ps := policyVersions(start, timeline, v1.TierEventLevel, v1.TierOff, v1.TierEventLevel)
	st := &reconcileState{policy: ps[2], mutate: true, timeline: timeline, ledgerKnown: true, intent: v1.TierEventLevel}
	r.plan(st)
	clock.Step(time.Second)
	r.noteLowering(ps[0], ps[1])
	r.forgetSeenLowerings(client.ObjectKeyFromObject(ps[2]), st.seenConsidered)
	next := &reconcileState{policy: ps[2], mutate: true, timeline: timeline, ledgerKnown: true, intent: v1.TierEventLevel}
	r.plan(next)
	if len(next.pending) != 1 || next.pending[0].Tier != consentv1.TierOff || !next.pending[0].At.Equal(start.Add(time.Second)) || next.want == nil {
		t.Fatalf("pending %v, want %v: the withdrawal noted while a reconcile ran, then the grant", next.pending, next.want)
	}
}

// TestSeenLoweringBeforeAFirstRecord: a new policy withdrawn and granted again before anything
// was recorded for it does not date its first grant back to acceptedAt (startFrom Beginning):
// it starts now, after the withdrawal.
func TestSeenLoweringBeforeAFirstRecord(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	r := &TelemetryPolicyReconciler{Clock: clock, Options: Options{LedgerResync: 10 * time.Minute}}
	ps := policyVersions(start, nil, v1.TierEventLevel, v1.TierOff, v1.TierEventLevel)
	for _, p := range ps {
		p.Status.EffectiveTier = ""
		p.Spec.Export = &v1.ExportSpec{StartFrom: v1.StartFromBeginning}
	}
	clock.Step(time.Minute)
	r.noteLowering(ps[0], ps[1])
	clock.Step(time.Minute)
	st := &reconcileState{policy: ps[2], mutate: true, ledgerKnown: true, intent: v1.TierEventLevel}
	r.plan(st)
	if st.want == nil || !st.want.At.Equal(clock.Now()) {
		t.Fatalf("first grant %v, want it dated now (%s), after the withdrawal noted at %s", st.want, clock.Now(), start.Add(time.Minute))
	}
	without := &reconcileState{policy: ps[2].DeepCopy(), mutate: true, ledgerKnown: true, intent: v1.TierEventLevel}
	without.policy.UID = "other"
	without.policy.Generation = 1
	r.plan(without)
	if without.want == nil || !without.want.At.Before(start) {
		t.Fatalf("first grant of a policy never withdrawn %v, want it from acceptedAt", without.want)
	}
	// The same policy with its spec changed since it was created, and no memory of why (this
	// process restarted since, say): it may have declared a lower tier meanwhile.
	edited := &reconcileState{policy: ps[2].DeepCopy(), mutate: true, ledgerKnown: true, intent: v1.TierEventLevel}
	edited.policy.UID = "restarted"
	r.plan(edited)
	if edited.want == nil || !edited.want.At.Equal(clock.Now()) {
		t.Fatalf("first grant of a policy edited since it was created %v, want it dated now (%s)", edited.want, clock.Now())
	}
}

// TestSeenLoweringAfterAStaleGrant: a grant planned from generation 1 and recorded after
// generation 2 withdrew consent (the write landed while the reconcile read the record back; its
// reply may even have been lost) does not swallow the withdrawal, whether below the tier in force
// before the grant or back to it: it is recorded from the grant on. A grant planned from a
// version as new as the withdrawal (generation 3, granting again) superseded it: nothing is added.
func TestSeenLoweringAfterAStaleGrant(t *testing.T) {
	for _, withdrawn := range []v1.ConsentTier{v1.TierOff, v1.TierCriticalOnly} {
		for _, plannedFrom := range []int64{1, 3} {
			start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
			clock := clocktesting.NewFakeClock(start)
			t0 := start.Add(-time.Hour)
			r := &TelemetryPolicyReconciler{Clock: clock, Options: Options{LedgerResync: 10 * time.Minute}}
			co := consentv1.Timeline{{At: t0, Tier: consentv1.TierCriticalOnly, Reason: "Declared", RecordedAt: &t0}}
			ps := policyVersions(start, co, v1.TierEventLevel, withdrawn, v1.TierEventLevel)
			r.notePlanRecorded(ps[plannedFrom-1], start.Add(30*time.Second)) // asking from then on
			clock.Step(time.Minute)
			r.noteLowering(ps[0], ps[1]) // withdrawn at start+1m
			clock.Step(time.Minute)
			g := start.Add(90 * time.Second)             // the receiver's time for the grant
			until := ps[2].Spec.Contract.ExpiresAt.UTC() // recorded with the trial's expiry, as the operator asks
			recorded := append(co[:1:1], consentv1.Transition{At: g, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &g, Until: &until})
			st := &reconcileState{policy: ps[2], mutate: true, timeline: recorded, ledgerKnown: true, intent: v1.TierEventLevel}
			r.plan(st)
			switch {
			case plannedFrom == 1 && (len(st.pending) != 1 || st.pending[0].Tier != consentv1.Tier(withdrawn) || !st.pending[0].At.Equal(g) || st.want == nil):
				t.Fatalf("%s, grant planned from generation 1: pending %v, want %v; want %s from the grant (%s), then EventLevel now", withdrawn, st.pending, st.want, withdrawn, g)
			case plannedFrom == 3 && (len(st.pending) != 0 || st.want != nil):
				t.Fatalf("%s, grant planned from generation 3: pending %v, want %v; want nothing (the grant superseded the withdrawal)", withdrawn, st.pending, st.want)
			}
		}
	}
}

// TestSeenLoweringOutlivesAFailedFirstRecord: the first grant of a policy withdrawn and granted
// again before anything was recorded starts now; should recording it fail, the retry still
// starts it now (what was noted is kept until the instance has a record).
func TestSeenLoweringOutlivesAFailedFirstRecord(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	r := &TelemetryPolicyReconciler{Clock: clock, Options: Options{LedgerResync: 10 * time.Minute}}
	ps := policyVersions(start, nil, v1.TierEventLevel, v1.TierOff, v1.TierEventLevel)
	for _, p := range ps {
		p.Status.EffectiveTier = ""
		p.Spec.Export = &v1.ExportSpec{StartFrom: v1.StartFromBeginning}
	}
	clock.Step(time.Minute)
	r.noteLowering(ps[0], ps[1])
	for attempt := range 2 {
		clock.Step(time.Minute)
		st := &reconcileState{policy: ps[2], mutate: true, ledgerKnown: true, intent: v1.TierEventLevel}
		r.plan(st)
		if st.want == nil || !st.want.At.Equal(clock.Now()) {
			t.Fatalf("attempt %d: first grant %v, want it dated now (%s)", attempt+1, st.want, clock.Now())
		}
		r.forgetSeenLowerings(client.ObjectKeyFromObject(ps[2]), st.seenConsidered) // the record failed
	}
}

// policyVersions is trialPolicy at each tier in turn, generations 1, 2, ...
func policyVersions(start time.Time, timeline consentv1.Timeline, tiers ...v1.ConsentTier) []*v1.TelemetryPolicy {
	var out []*v1.TelemetryPolicy
	for i, tier := range tiers {
		p := trialPolicy(start, tier, timeline)
		p.Generation = int64(i + 1)
		out = append(out, p)
	}
	return out
}

// TestCollectorTimelineMarksWhatIsRecorded: the collector's configuration tells the transitions
// the receiver recorded from the lowerings it has yet to record (the collector holds back
// aggregates of days only those let publish), and is the same whether written from the
// receiver's record (recorded in microseconds) or the copy in status (in seconds): the collector
// is not rolled at every read-back.
func TestCollectorTimelineMarksWhatIsRecorded(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	recordedAt := start.Add(-time.Hour + 1234567*time.Nanosecond)
	record := consentv1.Timeline{{At: start.Add(-time.Hour), Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &recordedAt}}
	pending := consentv1.Transition{At: start, Tier: consentv1.TierCriticalOnly, Reason: "Declared"}
	p := trialPolicy(start, v1.TierCriticalOnly, record)
	p.Spec.Source = &v1.SourceSpec{DatabaseSecretRef: v1.SecretKeyRef{Name: "db", Key: "dsn"}}
	p.Spec.Export = &v1.ExportSpec{Endpoint: "https://receiver.example.com:8443"}
	render := func(tl consentv1.Timeline) []byte {
		out, err := collectorconfig.Render(resources.CollectorConfig(p, v1.TierCriticalOnly, append(tl[:len(tl):len(tl)], pending)))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	fromRecord, fromCopy := render(record), render(timelineOf(historyOf(record)))
	if !bytes.Equal(fromRecord, fromCopy) {
		t.Fatalf("from the record:\n%s\nfrom the copy:\n%s", fromRecord, fromCopy)
	}
	cfg, err := collectorconfig.Parse(bytes.NewReader(fromRecord))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Consent.Recorded(); len(got) != 1 || got.Current() != consentv1.TierEventLevel {
		t.Fatalf("recorded part %+v, want the grant only (the lowering is pending)", got)
	}
	// Once the receiver records the lowering the configuration marks it, and its pods stay.
	now := start.Add(time.Second)
	pending.RecordedAt = &now
	afterRecord := render(record)
	if bytes.Equal(afterRecord, fromRecord) || resources.ConfigHash(afterRecord) != resources.ConfigHash(fromRecord) {
		t.Fatalf("recording the lowering: configuration changed %v, pods' hash changed %v; want the first, not the second",
			!bytes.Equal(afterRecord, fromRecord), resources.ConfigHash(afterRecord) != resources.ConfigHash(fromRecord))
	}
}

// lostGrantReply is a policy whose copy in status says CriticalOnly since t0, a grant of
// EventLevel the receiver recorded at g from generation 1 (its reply lost: the copy lacks it),
// and consent withdrawn (Off) in generation 2, noted by the watch, before the grant; generation 3
// grants again (suspended or not). It returns the reconciler, the three versions, the ledger
// and g; the clock stands after all of it.
func lostGrantReply(suspend bool) (*TelemetryPolicyReconciler, []*v1.TelemetryPolicy, *ownLedger, *clocktesting.FakeClock, time.Time) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	t0 := start.Add(-time.Hour)
	co := consentv1.Timeline{{At: t0, Tier: consentv1.TierCriticalOnly, Reason: "Declared", RecordedAt: &t0}}
	ps := policyVersions(start, co, v1.TierEventLevel, v1.TierOff, v1.TierEventLevel)
	for _, p := range ps {
		p.Status.EffectiveTier = v1.TierCriticalOnly
	}
	ps[2].Spec.Suspend = suspend
	g := start.Add(90 * time.Second)
	led := &ownLedger{slowLedger{clock: clock, state: consentv1.State{InstanceID: "i",
		Timeline: append(co[:1:1], consentv1.Transition{At: g, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &g}),
		Owner:    consentv1.Owner{Cluster: "c", Namespace: "a", Name: "p", UID: "u"}}}}
	r := &TelemetryPolicyReconciler{Clock: clock, Ledger: led, Options: Options{LedgerResync: 10 * time.Minute}}
	r.notePlanRecorded(ps[0], start.Add(30*time.Second)) // generation 1's grant
	clock.Step(time.Minute)
	r.noteLowering(ps[0], ps[1])
	clock.Step(time.Minute)
	return r, ps, led, clock, g
}

// reconcileLedgerState runs the consent step and the read-back of one reconcile of p.
func reconcileLedgerState(t *testing.T, r *TelemetryPolicyReconciler, p *v1.TelemetryPolicy) *reconcileState {
	t.Helper()
	st := &reconcileState{policy: p, mutate: true}
	if err := r.reconcileConsent(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if err := r.replan(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSeenLoweringAfterALostGrantReply: the withdrawal, planned from the copy that lacks the
// grant, is judged again against the record once read back, suspended or not, and recorded
// from the grant on.
func TestSeenLoweringAfterALostGrantReply(t *testing.T) {
	for _, suspend := range []bool{false, true} {
		r, ps, _, _, g := lostGrantReply(suspend)
		st := reconcileLedgerState(t, r, ps[2])
		if len(st.pending) != 1 || st.pending[0].Tier != consentv1.TierOff || !st.pending[0].At.Equal(g) {
			t.Errorf("suspend=%v: pending %v, want Off from the grant the copy lacked (%s)", suspend, st.pending, g)
		}
	}
}

// TestSeenLoweringAfterAFailedReadBack: the same, but the read-back fails once: the withdrawal
// planned from the copy is kept pending in status, then dropped by the next read-back (dated
// before the record's head); what the watch saw is still there to be judged again, suspended
// or not.
func TestSeenLoweringAfterAFailedReadBack(t *testing.T) {
	for _, suspend := range []bool{false, true} {
		r, ps, led, clock, g := lostGrantReply(suspend)
		led.err = context.DeadlineExceeded
		st := reconcileLedgerState(t, r, ps[2])
		// The record fails too (stale head or unreachable): status keeps the pending
		// withdrawal, and the reconcile forgets what it found held.
		r.forgetSeenLowerings(client.ObjectKeyFromObject(ps[2]), st.seenConsidered)
		p := ps[2].DeepCopy()
		p.Status.PendingConsentChanges = pendingOf(st.timeline, st.pending)
		led.err = nil
		clock.Step(time.Minute)
		st2 := reconcileLedgerState(t, r, p)
		if len(st2.pending) != 1 || st2.pending[0].Tier != consentv1.TierOff || !st2.pending[0].At.Equal(g) {
			t.Errorf("suspend=%v, next reconcile: pending %v, want Off from the grant its copy lacked (%s)", suspend, st2.pending, g)
		}
	}
}

// TestSeenLoweringKeptWhenTheRecordIsUnusable: suspended, and the receiver answers the read-back
// with a record the operator cannot use: the withdrawal the watch saw stays pending (to be
// recorded, and narrow the collector's windows), as it does unsuspended.
func TestSeenLoweringKeptWhenTheRecordIsUnusable(t *testing.T) {
	r, ps, led, _, _ := lostGrantReply(true)
	led.state.Timeline[0].Tier = "Everything"
	st := reconcileLedgerState(t, r, ps[2])
	if len(st.pending) != 1 || st.pending[0].Tier != consentv1.TierOff {
		t.Fatalf("pending %v, want the withdrawal the watch saw", st.pending)
	}
}

// TestNarrowConfigKeepsTheNewestWindows: a suspended collector's configuration holding as many
// transitions as a file may, narrowed by a withdrawal, keeps the newest ones (older ones count as
// Off) instead of being left running under its wider windows because the result would not fit.
func TestNarrowConfigKeepsTheNewestWindows(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	var running consentv1.Timeline
	for i := range collectorconfig.MaxConsentTransitions {
		tier := consentv1.TierEventLevel
		if i%2 == 1 {
			tier = consentv1.TierCriticalOnly
		}
		running = append(running, consentv1.Transition{At: start.Add(time.Duration(i-100) * time.Hour), Tier: tier})
	}
	p := trialPolicy(start, v1.TierEventLevel, nil)
	p.Spec.Source = &v1.SourceSpec{DatabaseSecretRef: v1.SecretKeyRef{Name: "db", Key: "dsn"}}
	p.Spec.Export = &v1.ExportSpec{Endpoint: "https://receiver.example.com:8443"}
	cfg := resources.CollectorConfig(p, v1.TierEventLevel, running)
	if len(cfg.Consent) != collectorconfig.MaxConsentTransitions || cfg.Consent.Current() != consentv1.TierCriticalOnly {
		t.Fatalf("fixture: %d transitions, now %s", len(cfg.Consent), cfg.Consent.Current())
	}
	cfg.Consent = append(cfg.Consent, consentv1.Transition{At: start.Add(-10 * time.Hour), Tier: consentv1.TierEventLevel})[1:]
	if _, err := collectorconfig.Render(cfg); err != nil {
		t.Fatal(err)
	}
	// Withdrawn for an hour, granted again: two more transitions than the file holds.
	withdrawn := slices.Concat(cfg.Consent, consentv1.Timeline{
		{At: start.Add(-5 * time.Hour), Tier: consentv1.TierOff}, {At: start.Add(-4 * time.Hour), Tier: consentv1.TierEventLevel}})
	rendered, changed := narrowConfig(cfg, withdrawn)
	if !changed {
		t.Fatal("the withdrawal did not reach the running configuration")
	}
	got, err := collectorconfig.Parse(bytes.NewReader(rendered))
	if err != nil {
		t.Fatal(err)
	}
	if got.Tier != v1.TierEventLevel || got.Consent.TierAt(start.Add(-270*time.Minute)) != consentv1.TierOff ||
		got.Consent.Current() != consentv1.TierEventLevel {
		t.Fatalf("narrowed: tier %s, %v", got.Tier, got.Consent)
	}
	for h := -120; h < 0; h++ { // never wider than what ran
		at := start.Add(time.Duration(h)*time.Hour + time.Minute)
		if got.Consent.TierAt(at).Rank() > cfg.Consent.TierAt(at).Rank() {
			t.Fatalf("at %s the narrowed configuration allows %s where %s ran", at, got.Consent.TierAt(at), cfg.Consent.TierAt(at))
		}
	}
	if _, changed := narrowConfig(*got, withdrawn); changed {
		t.Fatal("narrowed again for nothing")
	}
}

// TestLowestKeepsEveryRecordedMark: a transition the receiver recorded stays marked whichever
// timeline knows it. Narrowing a running configuration whose own marks were left out must not
// produce a timeline without marks, which the collector takes as recorded whole (and would then
// publish aggregates of a day only the pending lowering lets publish, which the receiver refuses).
func TestLowestKeepsEveryRecordedMark(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	recorded := t0.Add(time.Second)
	running := consentv1.Timeline{{At: t0, Tier: consentv1.TierEventLevel}}
	ledger := consentv1.Timeline{{At: t0, Tier: consentv1.TierEventLevel, RecordedAt: &recorded}, {At: t0.Add(time.Hour), Tier: consentv1.TierCriticalOnly}}
	for name, got := range map[string]consentv1.Timeline{"running first": lowest(running, ledger), "ledger first": lowest(ledger, running)} {
		if len(got) != 2 || len(got.Recorded()) != 1 || got.Recorded().Current() != consentv1.TierEventLevel {
			t.Errorf("%s: %+v, recorded part %+v; want the grant recorded and the lowering pending", name, got, got.Recorded())
		}
	}
}

// claimLedger answers reads with state (or err) and fails every write with recErr.
type claimLedger struct {
	ownLedger
	recErr  error
	records int
}

func (l *claimLedger) Record(context.Context, consentv1.RecordRequest) (consentv1.State, error) {
	l.records++
	return consentv1.State{}, l.recErr
}

// TestAClaimNotRecordedRunsNothing: a record nobody owns is this policy's only once a write of
// this reconcile claimed it. A claim whose write fails (even as unavailable) runs no collector;
// a record the receiver lost whole is not marked verified before its claim is recorded (a later
// reconcile would otherwise plan from the copy without reading, after another policy claimed
// it); and a policy last found to be owned elsewhere does not go back to its copy when the
// receiver cannot be read.
func TestAClaimNotRecordedRunsNothing(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	granted := start.Add(-time.Hour)
	tl := consentv1.Timeline{{At: granted, Tier: consentv1.TierEventLevel, Reason: "Declared", RecordedAt: &granted}}
	unavailable := fmt.Errorf("%w: timeout", ledger.ErrUnavailable)
	run := func(r *TelemetryPolicyReconciler, p *v1.TelemetryPolicy) *reconcileState {
		st := &reconcileState{policy: p, mutate: true, intent: v1.TierEventLevel, timeline: timelineOf(p.Status.ConsentHistory)}
		st.ledgerKnown = len(st.timeline) > 0
		_ = r.planTransition(context.Background(), st)
		r.flushLedger(context.Background(), st)
		return st
	}
	setup := func(state consentv1.State, readErr error, history consentv1.Timeline) (*clocktesting.FakeClock, *claimLedger, *TelemetryPolicyReconciler, *v1.TelemetryPolicy) {
		clock := clocktesting.NewFakeClock(start)
		led := &claimLedger{ownLedger: ownLedger{slowLedger{clock: clock, state: state, err: readErr}}, recErr: unavailable}
		r := &TelemetryPolicyReconciler{Clock: clock, Ledger: led, Options: Options{LedgerResync: 10 * time.Minute}}
		p := trialPolicy(start, v1.TierEventLevel, history)
		return clock, led, r, p
	}
	other := consentv1.Owner{Cluster: "c", Namespace: "other", Name: "q", UID: "q"}

	t.Run("a released record whose claim is not recorded", func(t *testing.T) {
		_, led, r, p := setup(consentv1.State{InstanceID: "i", Timeline: tl}, nil, nil)
		if st := run(r, p); led.records == 0 || st.runnableTier(r.Clock.Now()) != v1.TierOff {
			t.Fatalf("claim tried %d times, runnable %s; want a claim and nothing running", led.records, st.runnableTier(r.Clock.Now()))
		}
	})
	t.Run("a record the receiver lost, its claim not recorded, then another's", func(t *testing.T) {
		clock, led, r, p := setup(consentv1.State{}, ledger.ErrUnknownInstance, tl)
		if st := run(r, p); st.runnableTier(r.Clock.Now()) != v1.TierEventLevel && led.records == 0 {
			t.Fatalf("the lost record was not claimed again: %d writes", led.records)
		}
		if !r.verifyDue(p) {
			t.Fatal("the lost record counts as verified before its claim was recorded")
		}
		clock.Step(15 * time.Second)
		led.err, led.state = nil, consentv1.State{InstanceID: "i", Timeline: tl, Owner: other}
		if st := run(r, p); !errors.Is(st.ledgerErr, ledger.ErrOwnedElsewhere) {
			t.Fatalf("after another policy claimed it: %v (planned from the copy without reading the record)", st.ledgerErr)
		}
	})
	t.Run("owned elsewhere, then the receiver unreachable", func(t *testing.T) {
		_, led, r, p := setup(consentv1.State{InstanceID: "i", Timeline: tl, Owner: other}, nil, tl)
		if st := run(r, p); !errors.Is(st.ledgerErr, ledger.ErrOwnedElsewhere) {
			t.Fatalf("another's record: %v", st.ledgerErr)
		}
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionFalse, ReasonOwnedElsewhere, "held") // as holdOwnedElsewhere leaves it
		led.err = unavailable
		if st := run(r, p); st.runnableTier(r.Clock.Now()) != v1.TierOff || !errors.Is(st.ledgerErr, ledger.ErrOwnedElsewhere) {
			t.Fatalf("owned elsewhere, the receiver unreachable: runnable %s from the copy (%v)", st.runnableTier(r.Clock.Now()), st.ledgerErr)
		}
	})
}

// TestALapsedExpiryNeverDelaysAWithdrawal: EventLevel recorded at g under a trial that expired
// at e while no reconcile ran; the trial was renewed since. The lapse is recorded at e and the
// renewal from now, and a withdrawal written before e (the operator down since d) stays dated
// by it: the lapse only ends EventLevel earlier, never later. A withdrawal the watch saw after
// e keeps the lapse before it.
func TestALapsedExpiryNeverDelaysAWithdrawal(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	g, e := start.Add(-48*time.Hour), start.Add(-2*time.Hour)
	recorded := consentv1.Timeline{{At: g, Tier: consentv1.TierEventLevel, Reason: "Declared", Basis: "SelfServeTrial", RecordedAt: &g}}
	policy := func(tier v1.ConsentTier) *v1.TelemetryPolicy {
		p := trialPolicy(start, tier, recorded)
		p.Generation = 2
		at := metav1.NewTime(e)
		p.Status.EventLevelExpiresAt = &at // the spec's expiry is a week ahead: renewed
		return p
	}
	clock := clocktesting.NewFakeClock(start)
	r := &TelemetryPolicyReconciler{Clock: clock, Options: Options{LedgerResync: 10 * time.Minute}}

	renewed := &reconcileState{policy: policy(v1.TierEventLevel), mutate: true, timeline: recorded, ledgerKnown: true, intent: v1.TierEventLevel}
	r.plan(renewed)
	if len(renewed.pending) != 1 || !renewed.pending[0].At.Equal(e) || renewed.pending[0].Tier != consentv1.TierCriticalOnly ||
		renewed.pending[0].Reason != v1.ReasonTrialExpired {
		t.Fatalf("renewed after the lapse: pending %+v, want CriticalOnly at the expiry %s", renewed.pending, e)
	}
	if renewed.want == nil || renewed.want.Tier != consentv1.TierEventLevel || !renewed.want.At.Equal(start) {
		t.Fatalf("renewed after the lapse: grant %+v, want EventLevel from now", renewed.want)
	}

	withdrawn := policy(v1.TierOff)
	w := start.Add(-5 * time.Hour) // before the expiry
	withdrawn.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply,
		Time: &metav1.Time{Time: w}, FieldsV1: metav1.NewFieldsV1(`{"f:spec":{"f:consent":{"f:tier":{}}}}`)}}
	st := &reconcileState{policy: withdrawn, mutate: true, timeline: recorded, ledgerKnown: true, intent: v1.TierOff}
	r.plan(st)
	if len(st.pending) != 1 || !st.pending[0].At.Equal(w) || st.pending[0].Tier != consentv1.TierOff {
		t.Fatalf("withdrawn before the lapse: pending %+v, want Off at the write %s, nothing at the expiry", st.pending, w)
	}

	late := policy(v1.TierOff)
	y := start.Add(-time.Hour) // after the expiry
	late.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply,
		Time: &metav1.Time{Time: y}, FieldsV1: metav1.NewFieldsV1(`{"f:spec":{"f:consent":{"f:tier":{}}}}`)}}
	st = &reconcileState{policy: late, mutate: true, timeline: recorded, ledgerKnown: true, intent: v1.TierOff,
		pending: consentv1.Timeline{{At: y, Tier: consentv1.TierOff, Reason: "Declared"}}} // seen by the watch
	r.plan(st)
	if len(st.pending) != 2 || !st.pending[0].At.Equal(e) || st.pending[0].Tier != consentv1.TierCriticalOnly ||
		!st.pending[1].At.Equal(y) || st.pending[1].Tier != consentv1.TierOff {
		t.Fatalf("withdrawn after the lapse: pending %+v, want CriticalOnly at the expiry, then Off at %s", st.pending, y)
	}
}

// TestPlanFollowsTheRecordedUntil: a grant is asked for with the spec's expiry as its until; a
// record whose until differs is renewed from now; a record past its until is CriticalOnly in
// force (EventLevel again is a new grant, the collector runs no more than CriticalOnly, and the
// expiry is recorded at the until).
func TestPlanFollowsTheRecordedUntil(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	g := start.Add(-48 * time.Hour)
	clock := clocktesting.NewFakeClock(start)
	r := &TelemetryPolicyReconciler{Clock: clock, Options: Options{LedgerResync: 10 * time.Minute}}
	grant := func(until time.Time) consentv1.Timeline {
		return consentv1.Timeline{{At: g, Tier: consentv1.TierEventLevel, Reason: "Declared", Basis: "SelfServeTrial", RecordedAt: &g, Until: &until}}
	}
	plan := func(intent v1.ConsentTier, recorded consentv1.Timeline, pending consentv1.Timeline) *reconcileState {
		p := trialPolicy(start, intent, recorded)
		p.Generation = 2
		st := &reconcileState{policy: p, mutate: true, timeline: recorded, ledgerKnown: true, intent: intent, pending: pending}
		r.plan(st)
		return st
	}
	expires := trialPolicy(start, v1.TierEventLevel, nil).Spec.Contract.ExpiresAt.UTC()

	if st := plan(v1.TierEventLevel, grant(expires), nil); st.want != nil || len(st.pending) != 0 {
		t.Fatalf("recorded with the spec's expiry: want %+v, pending %+v; want nothing", st.want, st.pending)
	}
	if st := plan(v1.TierEventLevel, grant(expires.Add(-24*time.Hour)), nil); st.want == nil || st.want.Tier != consentv1.TierEventLevel ||
		!st.want.At.Equal(start) || st.want.Until == nil || !st.want.Until.Equal(expires) {
		t.Fatalf("recorded with another expiry: want %+v; want EventLevel from now until the spec's expiry %s", st.want, expires)
	}
	lapsed := grant(start.Add(-time.Hour))
	if st := plan(v1.TierEventLevel, lapsed, nil); st.want == nil || !st.want.At.Equal(start) || st.want.Until == nil || len(st.pending) != 0 {
		t.Fatalf("past its until, renewed: want %+v, pending %+v; want a grant from now, and no lapse to record", st.want, st.pending)
	}
	if st := plan(v1.TierCriticalOnly, lapsed, nil); st.want != nil || len(st.pending) != 1 || !st.pending[0].At.Equal(*lapsed[0].Until) {
		t.Fatalf("past its until, expired: want %+v, pending %+v; want the expiry recorded at the until", st.want, st.pending)
	}
	if runnable := (&reconcileState{policy: trialPolicy(start, v1.TierEventLevel, lapsed), timeline: lapsed, ledgerKnown: true,
		intent: v1.TierEventLevel}).runnableTier(start); runnable != v1.TierCriticalOnly {
		t.Fatalf("past its until, nothing recorded: the collector may run %s, want CriticalOnly", runnable)
	}
	// A shortening the receiver never recorded (its until is later than the expiry the
	// operator acted on), the operator down across that expiry, the trial extended since: the
	// lapse is recorded from the operator's own memory.
	e := start.Add(-2 * time.Hour)
	later := grant(start.Add(5 * 24 * time.Hour))
	p := trialPolicy(start, v1.TierEventLevel, later)
	p.Generation = 2
	mem := metav1.NewTime(e)
	p.Status.EventLevelExpiresAt = &mem
	st := &reconcileState{policy: p, mutate: true, timeline: later, ledgerKnown: true, intent: v1.TierEventLevel}
	r.plan(st)
	if len(st.pending) != 1 || !st.pending[0].At.Equal(e) || st.pending[0].Tier != consentv1.TierCriticalOnly || st.want == nil {
		t.Fatalf("an unrecorded shortening that lapsed: pending %+v, want %+v; want CriticalOnly at %s, then the renewal", st.pending, st.want, e)
	}
	// The collector's configuration is narrowed at the until too.
	running := consentv1.Timeline{{At: g, Tier: consentv1.TierEventLevel}}
	if got := lowest(running, lapsed); got.TierAt(start) != consentv1.TierCriticalOnly || got.TierAt(g) != consentv1.TierEventLevel {
		t.Fatalf("lowest with a record past its until: %+v", got)
	}
}

// TestAPendingGrantIsNeverRecorded: status.pendingConsentChanges holds withdrawals; an
// EventLevel entry written there by a status writer, for an instance with no record yet, would
// be recorded as its first grant, dated in the past.
func TestAPendingGrantIsNeverRecorded(t *testing.T) {
	past := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	hostile := consentv1.Timeline{{At: past, Tier: consentv1.TierEventLevel, Reason: "Declared"}}
	if kept := lowerings(nil, hostile); len(kept) != 0 {
		t.Fatalf("a pending EventLevel on an empty record was kept: %+v", kept)
	}
	if kept := lowerings(nil, consentv1.Timeline{{At: past, Tier: consentv1.TierCriticalOnly, Reason: "Declared"}}); len(kept) != 0 {
		t.Fatalf("a pending CriticalOnly on an empty record was kept: %+v (recorded first, it would open the past to aggregates)", kept)
	}
	withdrawal := consentv1.Timeline{{At: past, Tier: consentv1.TierOff, Reason: "Declared"}}
	if kept := lowerings(nil, append(hostile, withdrawal...)); len(kept) != 1 || kept[0].Tier != consentv1.TierOff {
		t.Fatalf("the withdrawal after it: %+v, want it alone", kept)
	}
	recorded := consentv1.Timeline{{At: past, Tier: consentv1.TierEventLevel, RecordedAt: &past}}
	if kept := lowerings(recorded, consentv1.Timeline{{At: past.Add(time.Hour), Tier: consentv1.TierCriticalOnly}}); len(kept) != 1 {
		t.Fatalf("a withdrawal to CriticalOnly on a record: %+v, want it kept", kept)
	}
}
