/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"errors"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func h(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }

func TestTierAtAndWindows(t *testing.T) {
	tl := Timeline{
		{At: h(0), Tier: TierEventLevel},
		{At: h(2), Tier: TierCriticalOnly},
		{At: h(4), Tier: TierOff},
		{At: h(6), Tier: TierEventLevel},
		{At: h(6), Tier: TierCriticalOnly}, // same instant: the later one wins
		{At: h(8), Tier: TierEventLevel},
	}
	cases := []struct {
		at   time.Time
		want Tier
	}{
		{h(-1), TierOff}, {h(0), TierEventLevel}, {h(2).Add(-time.Nanosecond), TierEventLevel}, {h(2), TierCriticalOnly},
		{h(4), TierOff}, {h(5), TierOff}, {h(6), TierCriticalOnly}, {h(7), TierCriticalOnly}, {h(8), TierEventLevel}, {h(1000), TierEventLevel},
	}
	for _, c := range cases {
		if got := tl.TierAt(c.at); got != c.want {
			t.Errorf("TierAt(%s) = %s, want %s", c.at.Format(time.RFC3339Nano), got, c.want)
		}
	}
	if got := (Timeline{}).TierAt(h(0)); got != TierOff {
		t.Errorf("empty timeline: %s, want Off", got)
	}
	ev := tl.Windows(TierEventLevel)
	if len(ev) != 2 || !ev[0].Start.Equal(h(0)) || !ev[0].End.Equal(h(2)) || !ev[1].Start.Equal(h(8)) || ev[1].End != nil {
		t.Fatalf("EventLevel windows = %+v", ev)
	}
	co := tl.Windows(TierCriticalOnly)
	if len(co) != 2 || !co[0].End.Equal(h(4)) || !co[1].Start.Equal(h(6)) || co[1].End != nil {
		t.Fatalf("CriticalOnly windows = %+v", co)
	}
	if !co[0].Overlaps(h(3), h(5)) || co[0].Overlaps(h(4), h(5)) || !co[1].Overlaps(h(100), h(101)) {
		t.Fatal("Overlaps is wrong at the edges")
	}
}

// TestAggregateDays: a day's cells may leave only when CriticalOnly was in force during all of
// it: not a day partly before the first record, partly Off or partly EventLevel.
func TestAggregateDays(t *testing.T) {
	day := func(n int) time.Time { return t0.AddDate(0, 0, n) }
	tl := Timeline{
		{At: h(12), Tier: TierCriticalOnly},       // 11-01 noon: CriticalOnly from the first record
		{At: h(24 + 6), Tier: TierOff},            // 11-02 06:00: Off
		{At: h(3 * 24), Tier: TierCriticalOnly},   // 11-04
		{At: h(5*24 + 12), Tier: TierEventLevel},  // 11-06 noon
		{At: h(7 * 24), Tier: TierCriticalOnly},   // 11-08 at midnight
		{At: h(9 * 24), Tier: TierEventLevel},     // 11-10 at midnight...
		{At: h(9 * 24), Tier: TierCriticalOnly},   // ...and CriticalOnly the same instant: the later wins
		{At: h(10*24 + 23), Tier: TierEventLevel}, // 11-11 23:00
	}
	days := tl.AggregateDays()
	for n, want := range map[int]bool{-1: false, 0: false, 1: false, 2: false, 3: true, 4: true, 5: false, 6: false, 7: true, 8: true, 9: true, 10: false, 11: false} {
		if got := days.Allow(day(n)); got != want {
			t.Errorf("Allow(%s) = %v, want %v", day(n).Format(time.DateOnly), got, want)
		}
	}
	if (Timeline{}).AggregateDays().Allow(day(0)) {
		t.Error("a day with no record is allowed")
	}
}

// TestRecorded: the part of a timeline the receiver recorded ends with its last transition
// that carries RecordedAt; a timeline without any is taken whole.
func TestRecorded(t *testing.T) {
	at := h(1)
	tl := Timeline{{At: h(0), Tier: TierEventLevel, RecordedAt: &at}, {At: h(2), Tier: TierCriticalOnly, RecordedAt: &at}, {At: h(3), Tier: TierOff}}
	if got := tl.Recorded(); len(got) != 2 || got.Current() != TierCriticalOnly {
		t.Fatalf("Recorded() = %+v, want the first two", got)
	}
	if got := tl[2:].Recorded(); len(got) != 1 {
		t.Fatalf("a timeline with no RecordedAt: %+v, want it whole", got)
	}
}

// TestWindowsAgreeWithTierAt holds the two views of a timeline equal on random timelines.
func TestWindowsAgreeWithTierAt(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2)) //nolint:gosec // test data
	tiers := []Tier{TierOff, TierCriticalOnly, TierEventLevel}
	for range 500 {
		tl, at := randomTimeline(r, false)
		for _, minTier := range tiers[1:] {
			ws := tl.Windows(minTier)
			for probe := -1; probe <= at+2; probe++ {
				ts := h(probe).Add(30 * time.Minute)
				in := false
				for _, w := range ws {
					in = in || w.Contains(ts)
				}
				if want := tl.TierAt(ts).Rank() >= minTier.Rank(); in != want {
					t.Fatalf("timeline %+v, min %s, at %s: in a window %v, TierAt says %v", tl, minTier, ts, in, want)
				}
			}
		}
	}
}

func TestNext(t *testing.T) {
	now := h(100)
	history := Timeline{{At: h(10), Tier: TierEventLevel}, {At: h(50), Tier: TierOff}}
	cases := []struct {
		name    string
		t       Timeline
		tr      Transition
		wantAt  time.Time
		wantAdd bool
		wantErr error
	}{
		{name: "first grant may start in the past (terms accepted before the instance was enforced)",
			tr: Transition{At: h(-500), Tier: TierEventLevel}, wantAt: h(-500), wantAdd: true},
		{name: "first record may be Off (claims the instance)", tr: Transition{At: now, Tier: TierOff}, wantAt: now, wantAdd: true},
		{name: "a grant after a withdrawal starts now, never reopening the gap",
			t: history, tr: Transition{At: h(50), Tier: TierEventLevel}, wantAt: now, wantAdd: true},
		{name: "a grant dated before the last transition starts now",
			t: history, tr: Transition{At: h(0), Tier: TierCriticalOnly}, wantAt: now, wantAdd: true},
		{name: "a grant dated slightly ahead (clock skew) keeps its time",
			t: history, tr: Transition{At: now.Add(time.Minute), Tier: TierEventLevel}, wantAt: now.Add(time.Minute), wantAdd: true},
		{name: "a grant dated far in the future is refused",
			t: history, tr: Transition{At: now.Add(time.Hour), Tier: TierEventLevel}, wantErr: ErrFuture},
		{name: "a withdrawal keeps the moment it happened",
			t: Timeline{{At: h(10), Tier: TierEventLevel}}, tr: Transition{At: h(60), Tier: TierCriticalOnly}, wantAt: h(60), wantAdd: true},
		{name: "a withdrawal dated before the last transition is dated at it",
			t: Timeline{{At: h(10), Tier: TierEventLevel}}, tr: Transition{At: h(5), Tier: TierOff}, wantAt: h(10), wantAdd: true},
		{name: "a withdrawal dated in the future takes effect now",
			t: Timeline{{At: h(10), Tier: TierEventLevel}}, tr: Transition{At: now.Add(48 * time.Hour), Tier: TierOff}, wantAt: now, wantAdd: true},
		{name: "a withdrawal right after a grant rounded up past now is dated at the grant",
			t: Timeline{{At: now.Add(time.Second), Tier: TierEventLevel}}, tr: Transition{At: now.Add(-time.Second), Tier: TierOff}, wantAt: now.Add(time.Second), wantAdd: true},
		{name: "a grant is rounded up to the next second",
			t: history, tr: Transition{At: now.Add(300 * time.Millisecond), Tier: TierEventLevel}, wantAt: now.Add(time.Second), wantAdd: true},
		{name: "a withdrawal is rounded down",
			t: Timeline{{At: h(10), Tier: TierEventLevel}}, tr: Transition{At: h(60).Add(900 * time.Millisecond), Tier: TierOff}, wantAt: h(60), wantAdd: true},
		{name: "the tier in force already: nothing to add", t: history, tr: Transition{At: now, Tier: TierOff}},
		{name: "unknown tier", tr: Transition{At: now, Tier: "All"}, wantErr: errors.New("tier")},
		{name: "no time", tr: Transition{Tier: TierOff}, wantErr: errors.New("at")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, add, err := Next(tc.t, tc.tr, now)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("want an error, got %+v", got)
				}
				return
			}
			if err != nil || add != tc.wantAdd || (add && !got.At.Equal(tc.wantAt)) {
				t.Fatalf("Next = %+v, %v, %v; want at %s, add %v", got, add, err, tc.wantAt, tc.wantAdd)
			}
			if add {
				if err := append(tc.t, got).Validate(); err != nil {
					t.Fatalf("appending the result breaks the timeline: %v", err)
				}
			}
		})
	}
}

// TestNextNeverWidensThePast: whatever sequence of requests arrives, a period once recorded
// below EventLevel is never EventLevel afterwards.
func TestNextNeverWidensThePast(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4)) //nolint:gosec // test data
	tiers := []Tier{TierOff, TierCriticalOnly, TierEventLevel}
	for range 300 {
		var tl Timeline
		now := h(0)
		for range 12 {
			now = now.Add(time.Duration(r.IntN(5)) * time.Hour)
			req := Transition{At: now.Add(time.Duration(r.IntN(200)-150) * time.Hour), Tier: tiers[r.IntN(3)]}
			if req.Tier == TierEventLevel && r.IntN(2) == 0 {
				// A trial's expiry, before or after now: renewals, lapses and shortenings.
				u := now.Add(time.Duration(r.IntN(60)-20) * time.Hour)
				req.Until = &u
			}
			before := append(Timeline(nil), tl...)
			tr, add, err := Next(tl, req, now)
			if err != nil || !add {
				continue
			}
			tl = append(tl, tr)
			if err := tl.Validate(); err != nil {
				t.Fatalf("request %+v at %s: appended %+v breaks the timeline: %v", req, now, tr, err)
			}
			for probe := -200; probe <= 100; probe++ {
				ts := h(probe)
				if !ts.Before(now) || len(before) == 0 {
					continue
				}
				if before.TierAt(ts).Rank() < TierEventLevel.Rank() && tl.TierAt(ts) == TierEventLevel {
					t.Fatalf("request %+v at %s re-opened %s (was %s)", req, now, ts, before.TierAt(ts))
				}
			}
		}
	}
}

func TestValidateRequests(t *testing.T) {
	from, to := h(1), h(2)
	good := ErasureRequest{InstanceID: "acme", RequestID: "GDPR-2026.0042", Scope: ScopeEvents, RequestedBy: RequesterDataSubject, From: &from, To: &to}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, who := range Requesters {
		r := good
		r.RequestedBy = who
		if err := r.Validate(); err != nil {
			t.Errorf("requester %s: %v", who, err)
		}
	}
	for name, mut := range map[string]func(*ErasureRequest){
		"empty id":     func(r *ErasureRequest) { r.RequestID = "" },
		"id with /":    func(r *ErasureRequest) { r.RequestID = "a/b" },
		"bad scope":    func(r *ErasureRequest) { r.Scope = "Everything" },
		"no requester": func(r *ErasureRequest) { r.RequestedBy = "" },
		"NUL":          func(r *ErasureRequest) { r.RequestedBy = "a\x00b" },
		// Words that any printable-text check lets through: the audit record is kept centrally
		// for years, so a requester is a role from a closed set, never a name.
		"a person":        func(r *ErasureRequest) { r.RequestedBy = "Jane Doe <jane.doe@acme.example>" },
		"a repository":    func(r *ErasureRequest) { r.RequestedBy = "acme-secret-repo" },
		"a ticket":        func(r *ErasureRequest) { r.RequestedBy = "support ticket 4711" },
		"another case":    func(r *ErasureRequest) { r.RequestedBy = "support" },
		"padded":          func(r *ErasureRequest) { r.RequestedBy = RequesterSupport + " " },
		"a role and more": func(r *ErasureRequest) { r.RequestedBy = RequesterLegal + ":jane" },
		"reversed":        func(r *ErasureRequest) { r.From, r.To = &to, &from },
	} {
		r := good
		mut(&r)
		if r.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if (Owner{Namespace: "acme", Name: "acme"}).Validate() != nil || (Owner{Namespace: "Acme", Name: "x"}).Validate() == nil {
		t.Fatal("owner validation")
	}
	// A UID is kept in the record for years: a Kubernetes UID, never text of anyone's choosing.
	for uid, ok := range map[string]bool{
		"": true, "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f": true, "receivertest-policy": true,
		"Jane Doe <jane.doe@acme.example>": false, "jane.doe": false, "a b": false, "-x": false, "x\u260e": false,
	} {
		if err := (Owner{Namespace: "acme", Name: "acme", UID: uid}).Validate(); (err == nil) != ok {
			t.Errorf("owner uid %q: %v, want accepted %v", uid, err, ok)
		}
	}
	if (Owner{Cluster: "a", Namespace: "n", Name: "p", UID: "1"}).Same(Owner{Cluster: "a", Namespace: "n", Name: "p", UID: "2"}) {
		t.Fatal("a policy created again under the same name (new UID) is not the owner until the record is released")
	}
	if !(Owner{Cluster: "a", Namespace: "n", Name: "p"}).Same(Owner{Cluster: "a", Namespace: "n", Name: "p", UID: "2"}) {
		t.Fatal("an owner recorded without a UID is matched by its coordinates")
	}
	if (Owner{Cluster: "a", Namespace: "n", Name: "p"}).Same(Owner{Cluster: "b", Namespace: "n", Name: "p"}) {
		t.Fatal("another cluster is not the same owner")
	}
}

// TestTheClosedSetsHoldWhatTheOperatorRecords: every reason and basis the operator may record
// is taken, and nothing else is.
func TestTheClosedSetsHoldWhatTheOperatorRecords(t *testing.T) {
	for _, r := range []string{v1alpha1.ReasonDeclared, v1alpha1.ReasonTrialExpired, v1alpha1.ReasonTermsOutdated, v1alpha1.ReasonApprovalMissing,
		v1alpha1.ReasonBasisNotEligible, v1alpha1.ReasonNotYetAccepted, v1alpha1.ReasonPolicyDeleted, ReasonRecordReleased, ""} {
		if !KnownReason(r) {
			t.Errorf("reason %q is refused", r)
		}
	}
	for _, b := range []v1alpha1.ContractBasis{v1alpha1.BasisSelfServeTrial, v1alpha1.BasisZeroDollarOrderForm, v1alpha1.BasisNewContract,
		v1alpha1.BasisRenewal, v1alpha1.BasisCELedTrial, v1alpha1.BasisLegacyTerms, ""} {
		if !KnownBasis(string(b)) {
			t.Errorf("basis %q is refused", b)
		}
	}
	for _, w := range []string{"ProjectFalcon", "declared", "Declared ", "NewContractAcme", "Eligible"} {
		if KnownReason(w) || KnownBasis(w) {
			t.Errorf("%q is taken", w)
		}
	}
}

func ptr(t time.Time) *time.Time { return &t }

// randomTimeline is up to 7 transitions a whole number of hours apart (ties included), with an
// Until on half the EventLevel ones when untils is set; it returns the last transition's hour.
func randomTimeline(r *rand.Rand, untils bool) (Timeline, int) {
	return randomTimelineOn(r, untils, h, 3, 4)
}

// randomTimelineOn is randomTimeline on the grid at: transitions 0 to maxGap-1 steps apart,
// Untils 1 to maxUntil steps after their transition.
func randomTimelineOn(r *rand.Rand, untils bool, at func(int) time.Time, maxGap, maxUntil int) (Timeline, int) {
	tiers := []Tier{TierOff, TierCriticalOnly, TierEventLevel}
	var tl Timeline
	n := 0
	for range r.IntN(8) {
		n += r.IntN(maxGap)
		tr := Transition{At: at(n), Tier: tiers[r.IntN(3)]}
		if untils && tr.Tier == TierEventLevel && r.IntN(2) == 0 {
			tr.Until = ptr(at(n + 1 + r.IntN(maxUntil)))
		}
		tl = append(tl, tr)
	}
	return tl, n
}

// TestUntilEndsEventLevel: an EventLevel transition's Until ends the window by itself, with no
// transition recorded at it.
func TestUntilEndsEventLevel(t *testing.T) {
	tl := Timeline{
		{At: h(0), Tier: TierEventLevel, Until: ptr(h(3)), Basis: "SelfServeTrial"},
		{At: h(5), Tier: TierEventLevel, Until: ptr(h(9))},  // renewed after it lapsed
		{At: h(7), Tier: TierEventLevel, Until: ptr(h(20))}, // extended before it lapsed
		{At: h(8), Tier: TierOff},
		{At: h(10), Tier: TierEventLevel, Until: ptr(h(12))},
	}
	if err := tl.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		at   int
		want Tier
	}{{-1, TierOff}, {0, TierEventLevel}, {2, TierEventLevel}, {3, TierCriticalOnly}, {4, TierCriticalOnly}, {5, TierEventLevel},
		{7, TierEventLevel}, {8, TierOff}, {9, TierOff}, {10, TierEventLevel}, {11, TierEventLevel}, {12, TierCriticalOnly}, {500, TierCriticalOnly}} {
		if got := tl.TierAt(h(c.at)); got != c.want {
			t.Errorf("TierAt(h%d) = %s, want %s", c.at, got, c.want)
		}
		if got := tl.Effective().TierAt(h(c.at)); got != c.want {
			t.Errorf("Effective().TierAt(h%d) = %s, want %s", c.at, got, c.want)
		}
	}
	if got := tl.CurrentAt(h(11)); got != TierEventLevel {
		t.Errorf("CurrentAt before the Until = %s", got)
	}
	if got := tl.CurrentAt(h(12)); got != TierCriticalOnly {
		t.Errorf("CurrentAt at the Until = %s", got)
	}
	ev := tl.Windows(TierEventLevel)
	if len(ev) != 3 || !ev[0].End.Equal(h(3)) || !ev[1].Start.Equal(h(5)) || !ev[1].End.Equal(h(8)) || !ev[2].End.Equal(h(12)) {
		t.Fatalf("EventLevel windows = %+v", ev)
	}
	eff := tl.Effective()
	if len(eff) != 7 || eff[1].Tier != TierCriticalOnly || !eff[1].At.Equal(h(3)) || eff[1].Reason != ReasonTrialExpired || eff[1].Basis != "SelfServeTrial" {
		t.Fatalf("Effective() = %+v", eff)
	}
	for _, tr := range eff {
		if tr.Until != nil {
			t.Fatalf("Effective() keeps an Until: %+v", eff)
		}
	}
	days := Timeline{{At: t0, Tier: TierEventLevel, Until: ptr(t0.Add(36 * time.Hour))}}.AggregateDays()
	if days.Allow(t0) || days.Allow(t0.AddDate(0, 0, 1)) || !days.Allow(t0.AddDate(0, 0, 2)) {
		t.Fatal("aggregate days do not follow the Until: the day it lapsed mixed EventLevel, the next is CriticalOnly")
	}
}

// TestUntilAgreesWithItsDefinition: on random timelines with Untils, TierAt, Effective and the
// windows agree with the definition: the tier of the last transition at or before ts, and
// CriticalOnly if it is EventLevel whose Until is at or before ts.
func TestUntilAgreesWithItsDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6)) //nolint:gosec // test data
	for range 500 {
		tl, at := randomTimeline(r, true)
		eff := tl.Effective()
		for probe := -1; probe <= at+6; probe++ {
			ts := h(probe).Add(30 * time.Minute * time.Duration(r.IntN(2)))
			want := TierOff
			for _, tr := range tl {
				if tr.At.After(ts) {
					break
				}
				want = tr.Tier
				if tr.Until != nil && !ts.Before(*tr.Until) {
					want = TierCriticalOnly
				}
			}
			if got := tl.TierAt(ts); got != want {
				t.Fatalf("timeline %+v: TierAt(%s) = %s, want %s", tl, ts, got, want)
			}
			if got := eff.TierAt(ts); got != want {
				t.Fatalf("timeline %+v: Effective().TierAt(%s) = %s, want %s", tl, ts, got, want)
			}
			in := false
			for _, w := range tl.Windows(TierEventLevel) {
				in = in || w.Contains(ts)
			}
			if in != (want == TierEventLevel) {
				t.Fatalf("timeline %+v at %s: in an EventLevel window %v, want %s", tl, ts, in, want)
			}
		}
	}
}

func TestNextWithUntil(t *testing.T) {
	now := h(100)
	trial := Timeline{{At: h(10), Tier: TierEventLevel, Until: ptr(h(200))}}
	lapsed := Timeline{{At: h(10), Tier: TierEventLevel, Until: ptr(h(50))}}
	cases := []struct {
		name      string
		t         Timeline
		tr        Transition
		wantAt    time.Time
		wantUntil *time.Time
		wantAdd   bool
		wantErr   bool
	}{
		{name: "the same trial again: nothing to add", t: trial, tr: Transition{At: h(10), Tier: TierEventLevel, Until: ptr(h(200))}},
		{name: "a trial extended is a renewal, dated at the transition it renews", t: trial,
			tr: Transition{At: h(60), Tier: TierEventLevel, Until: ptr(h(300))}, wantAt: h(10), wantUntil: ptr(h(300)), wantAdd: true},
		{name: "a renewal dated ahead (clock skew) is dated at the transition it renews too", t: trial,
			tr: Transition{At: now.Add(4 * time.Minute), Tier: TierEventLevel, Until: ptr(h(300))}, wantAt: h(10), wantUntil: ptr(h(300)), wantAdd: true},
		{name: "a trial shortened is a renewal", t: trial,
			tr: Transition{At: now, Tier: TierEventLevel, Until: ptr(h(150))}, wantAt: h(10), wantUntil: ptr(h(150)), wantAdd: true},
		{name: "a trial shortened to a time already past is refused (never rewriting the past)", t: trial,
			tr: Transition{At: now, Tier: TierEventLevel, Until: ptr(h(50))}, wantErr: true},
		{name: "a trial dated a little ahead, shortened to before its grant: refused, not left to the database",
			t:  Timeline{{At: now.Add(3 * time.Minute), Tier: TierEventLevel, Until: ptr(h(200))}},
			tr: Transition{At: now, Tier: TierEventLevel, Until: ptr(now.Add(time.Minute))}, wantErr: true},
		{name: "a trial made a contract without expiry", t: trial,
			tr: Transition{At: now, Tier: TierEventLevel}, wantAt: h(10), wantAdd: true},
		{name: "a trial renewed after its Until is a new grant from now", t: lapsed,
			tr: Transition{At: h(10), Tier: TierEventLevel, Until: ptr(h(300))}, wantAt: now, wantUntil: ptr(h(300)), wantAdd: true},
		{name: "CriticalOnly after the Until is recorded at the Until", t: lapsed, tr: Transition{At: h(70), Tier: TierCriticalOnly}, wantAt: h(50), wantAdd: true},
		{name: "CriticalOnly once the expiry is recorded is in force already", t: append(lapsed, Transition{At: h(50), Tier: TierCriticalOnly}),
			tr: Transition{At: h(70), Tier: TierCriticalOnly}},
		{name: "CriticalOnly dated before the Until, recorded after it, ends EventLevel earlier", t: lapsed,
			tr: Transition{At: h(40), Tier: TierCriticalOnly}, wantAt: h(40), wantAdd: true},
		{name: "Off after the Until keeps its time, even before the Until", t: lapsed,
			tr: Transition{At: h(30), Tier: TierOff}, wantAt: h(30), wantAdd: true},
		{name: "a withdrawal before the Until", t: trial, tr: Transition{At: h(60), Tier: TierCriticalOnly}, wantAt: h(60), wantAdd: true},
		{name: "an Until is rounded down", t: lapsed,
			tr: Transition{At: now, Tier: TierEventLevel, Until: ptr(h(300).Add(700 * time.Millisecond))}, wantAt: now, wantUntil: ptr(h(300)), wantAdd: true},
		{name: "an Until at or before the grant is refused", t: lapsed,
			tr: Transition{At: now, Tier: TierEventLevel, Until: ptr(now.Add(500 * time.Millisecond))}, wantErr: true},
		{name: "an Until in the past on a first grant dated further back", tr: Transition{At: h(-50), Tier: TierEventLevel, Until: ptr(h(-10))},
			wantAt: h(-50), wantUntil: ptr(h(-10)), wantAdd: true},
		{name: "an Until on CriticalOnly is refused", t: trial, tr: Transition{At: now, Tier: TierCriticalOnly, Until: ptr(h(300))}, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, add, err := Next(tc.t, tc.tr, now)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", got)
				}
				return
			}
			if err != nil || add != tc.wantAdd || (add && (!got.At.Equal(tc.wantAt) || !SameTime(got.Until, tc.wantUntil))) {
				t.Fatalf("Next = %+v, %v, %v; want at %s until %v, add %v", got, add, err, tc.wantAt, tc.wantUntil, tc.wantAdd)
			}
			if add {
				if err := append(tc.t, got).Validate(); err != nil {
					t.Fatalf("appending the result breaks the timeline: %v", err)
				}
			}
		})
	}
}

func TestValidateUntil(t *testing.T) {
	for _, tl := range []Timeline{
		{{At: h(0), Tier: TierCriticalOnly, Until: ptr(h(1))}},
		{{At: h(1), Tier: TierEventLevel, Until: ptr(h(1))}},
		{{At: h(1), Tier: TierEventLevel, Until: ptr(h(0))}},
	} {
		if err := tl.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", tl)
		}
	}
}

// TestARenewalNeverHoldsAWithdrawalBack: a renewal recorded after a withdrawal was written (a
// reconcile planned it from the spec before the withdrawal) leaves the withdrawal its own time.
func TestARenewalNeverHoldsAWithdrawalBack(t *testing.T) {
	trial := Timeline{{At: h(10), Tier: TierEventLevel, Until: ptr(h(200))}}
	renewal, add, err := Next(trial, Transition{At: h(100).Add(30 * time.Second), Tier: TierEventLevel, Until: ptr(h(300))}, h(100).Add(31*time.Second))
	if err != nil || !add {
		t.Fatalf("renewal: %v %v", add, err)
	}
	tl := append(trial, renewal)
	w := h(100) // the withdrawal, written before the renewal was recorded
	withdrawal, add, err := Next(tl, Transition{At: w, Tier: TierCriticalOnly}, h(100).Add(time.Minute))
	if err != nil || !add || !withdrawal.At.Equal(w) {
		t.Fatalf("withdrawal after the renewal: %+v %v %v, want it at %s", withdrawal, add, err, w)
	}
	tl = append(tl, withdrawal)
	if got := tl.TierAt(w.Add(10 * time.Second)); got != TierCriticalOnly {
		t.Fatalf("tier just after the withdrawal: %s", got)
	}
	if err := tl.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestAggregateDaysAgreeWithTierAt holds Allow to its definition on random timelines: a day's
// cells may leave exactly when TierAt is CriticalOnly at its start and at every instant in it
// where the tier in force could change (a transition, or an Until).
func TestAggregateDaysAgreeWithTierAt(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11)) //nolint:gosec // test data
	quarter := func(n int) time.Time { return t0.Add(time.Duration(n) * 6 * time.Hour) }
	for range 500 {
		tl, _ := randomTimelineOn(r, true, quarter, 7, 8)
		days := tl.AggregateDays()
		for n := -1; n <= 16; n++ {
			day := t0.AddDate(0, 0, n)
			end := day.AddDate(0, 0, 1)
			want := tl.TierAt(day) == TierCriticalOnly
			for _, tr := range tl {
				for _, c := range []*time.Time{&tr.At, tr.Until} {
					if c != nil && c.After(day) && c.Before(end) && tl.TierAt(*c) != TierCriticalOnly {
						want = false
					}
				}
			}
			if got := days.Allow(day); got != want {
				t.Fatalf("Allow(%s) = %v, want %v on %+v", day.Format(time.DateOnly), got, want, tl)
			}
		}
	}
}

// TestRequestKeyKeepsNoWords: the key the receiver keeps for a request id is 32 hex digits, one
// per instance and id, and carries none of the id's text.
func TestRequestKeyKeepsNoWords(t *testing.T) {
	const wordy = "Jane.Doe_jane.doe-acme.example:acme-secret-repo"
	k := RequestKey("acme", wordy)
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(k) || strings.Contains(k, "acme") {
		t.Fatalf("key %q", k)
	}
	if k != RequestKey("acme", wordy) || k == RequestKey("globex", wordy) || k == RequestKey("acme", wordy+"x") {
		t.Fatal("a key is not one per instance and id")
	}
	// The separator keeps instance and id apart because neither may hold it.
	if ValidRequestID("b/c") || ValidName("a/b") {
		t.Fatal("an instance or request id may hold the key's separator")
	}
}
