/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package source

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

func TestParseSnapshot(t *testing.T) {
	s, err := ParseSnapshot("100:105:101,103")
	if err != nil || s.Xmin != 100 || s.Xmax != 105 || !reflect.DeepEqual(s.Xip, []uint64{101, 103}) {
		t.Fatalf("%+v %v", s, err)
	}
	if s, err := ParseSnapshot("7:7:"); err != nil || len(s.Xip) != 0 {
		t.Fatalf("%+v %v", s, err)
	}
	for _, bad := range []string{"", "1:2", "a:b:", "1:2:x", "1:2:3:4"} {
		if _, err := ParseSnapshot(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if !s.Finished(6) || (Snapshot{Xmin: 100, Xmax: 105, Xip: []uint64{101}}).Finished(101) || !(Snapshot{Xmin: 100, Xmax: 105, Xip: []uint64{101}}).Finished(102) {
		t.Fatal("Finished is wrong")
	}
}

func TestTrackerHoldsTheCursorBelowInFlightTransactions(t *testing.T) {
	tr := NewTracker(0, 1000)
	// Round 1: ids 2 and 3 visible; transaction 50 (which holds id 1) is in flight.
	s1 := Snapshot{Xmin: 50, Xmax: 60, Xip: []uint64{50}}
	if tr.NeedLateScan(s1) {
		t.Fatal("nothing to rescan yet")
	}
	if got := tr.Plan(s1, 3, true); got != 0 {
		t.Fatalf("planned cursor %d, want 0 while transaction 50 is in flight", got)
	}
	if c := tr.Acknowledge(s1, []int64{2, 3}, 3, true); c != 0 || tr.High() != 3 {
		t.Fatalf("cursor %d high %d", c, tr.High())
	}
	// Round 2: still in flight, id 4 arrives.
	s2 := Snapshot{Xmin: 50, Xmax: 62, Xip: []uint64{50}}
	if tr.NeedLateScan(s2) {
		t.Fatal("no transaction finished")
	}
	tr.Acknowledge(s2, []int64{4}, 4, true)
	if tr.Cursor() != 0 || !tr.Sent(3) || tr.Sent(1) {
		t.Fatalf("cursor %d", tr.Cursor())
	}
	// Round 3: transaction 50 committed; the late scan must run, and afterwards the cursor moves.
	s3 := Snapshot{Xmin: 63, Xmax: 63}
	if !tr.NeedLateScan(s3) {
		t.Fatal("transaction 50 finished: a late scan is needed")
	}
	if got := tr.Plan(s3, 4, true); got != 4 {
		t.Fatalf("planned %d, want 4", got)
	}
	if c := tr.Acknowledge(s3, []int64{1}, 4, true); c != 4 || tr.Pending() != 0 {
		t.Fatalf("cursor %d pending %d", c, tr.Pending())
	}
	if len(tr.sent) != 0 {
		t.Fatalf("sent ids at or below the cursor are forgotten, %d left", len(tr.sent))
	}
}

func TestTrackerDoesNotAdvanceOnAnIncompleteLateScan(t *testing.T) {
	tr := NewTracker(10, 1000)
	tr.Acknowledge(Snapshot{Xmin: 5, Xmax: 9, Xip: []uint64{5}}, []int64{12}, 12, true)
	done := Snapshot{Xmin: 9, Xmax: 9}
	if c := tr.Acknowledge(done, []int64{11}, 12, false); c != 10 {
		t.Fatalf("cursor moved to %d on an incomplete late scan", c)
	}
	if !tr.NeedLateScan(done) {
		t.Fatal("the late scan must continue")
	}
	if c := tr.Acknowledge(done, nil, 12, true); c != 12 {
		t.Fatalf("cursor %d, want 12", c)
	}
}

func TestTrackerWithoutConcurrencyAdvancesAtOnce(t *testing.T) {
	tr := NewTracker(0, 10)
	quiet := Snapshot{Xmin: 10, Xmax: 10}
	for high := int64(100); high <= 1000; high += 100 {
		ids := make([]int64, 0, 100)
		for id := high - 99; id <= high; id++ {
			ids = append(ids, id)
		}
		if c := tr.Acknowledge(quiet, ids, high, true); c != high {
			t.Fatalf("cursor %d, want %d", c, high)
		}
	}
	if len(tr.sent) > 10 {
		t.Fatalf("sent set grew to %d", len(tr.sent))
	}
}

// TestAheadIsTheStateAfterAcknowledge drives a tracker through random rounds with transactions
// starting and finishing, and checks at every step that the view computed before one or two
// acknowledgements (chained) answers exactly as the tracker does after them.
func TestAheadIsTheStateAfterAcknowledge(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	tr := NewTracker(0, 50)
	var nextID int64
	var xid uint64 = 100
	inFlight := map[uint64]bool{}
	type round struct {
		snap     Snapshot
		ids      []int64
		newHigh  int64
		complete bool
	}
	// next makes a round as a read against view v would see it.
	next := func(v View) round {
		for x := range inFlight {
			if rng.IntN(3) == 0 {
				delete(inFlight, x)
			}
		}
		if rng.IntN(2) == 0 {
			inFlight[xid] = true
		}
		xid++
		r := round{snap: Snapshot{Xmin: xid, Xmax: xid + 1}, newHigh: v.High(), complete: rng.IntN(6) > 0}
		for x := range inFlight {
			r.snap.Xip = append(r.snap.Xip, x)
			r.snap.Xmin = min(r.snap.Xmin, x)
		}
		slices.Sort(r.snap.Xip)
		for id := max(v.Cursor()+1, nextID-int64(rng.IntN(10))); id <= nextID+int64(rng.IntN(8)); id++ {
			if !v.Sent(id) && rng.IntN(4) > 0 {
				r.ids = append(r.ids, id)
			}
		}
		if n := len(r.ids); n > 0 {
			r.newHigh = max(r.newHigh, r.ids[n-1])
			nextID = max(nextID, r.ids[n-1]+1)
		}
		return r
	}
	compared, chained := 0, 0
	for step := range 2000 {
		r1 := next(tr)
		ahead := tr.Ahead(r1.snap, r1.ids, r1.newHigh, r1.complete)
		rounds := []round{r1}
		if rng.IntN(2) == 0 {
			r2 := next(ahead)
			ahead = ahead.Ahead(r2.snap, r2.ids, r2.newHigh, r2.complete)
			rounds = append(rounds, r2)
			chained++
		}
		lo, hi := tr.Cursor()-3, nextID+3
		var aheadSent []bool
		for id := lo; id <= hi; id++ {
			aheadSent = append(aheadSent, ahead.Sent(id))
		}
		forgot := false
		for _, r := range rounds {
			tr.Acknowledge(r.snap, r.ids, r.newHigh, r.complete)
			forgot = forgot || len(tr.sent) == 0
		}
		if ahead.Cursor() != tr.Cursor() || ahead.High() != tr.High() {
			t.Fatalf("step %d: ahead cursor/high %d/%d, tracker %d/%d", step, ahead.Cursor(), ahead.High(), tr.Cursor(), tr.High())
		}
		for x := xid - 20; x <= xid+1; x++ {
			probe := Snapshot{Xmin: x, Xmax: x + 1}
			if ahead.NeedLateScan(probe) != tr.NeedLateScan(probe) {
				t.Fatalf("step %d: NeedLateScan(%v) differs", step, probe)
			}
		}
		if !forgot { // unless the tracker forgot (or had nothing to remember), answers agree on every id
			compared++
			for id := lo; id <= hi; id++ {
				if aheadSent[id-lo] != tr.Sent(id) {
					t.Fatalf("step %d: Sent(%d) ahead %v tracker %v", step, id, aheadSent[id-lo], tr.Sent(id))
				}
			}
		}
	}
	if compared < 500 || chained < 500 {
		t.Fatalf("only %d steps compared Sent and %d chained two rounds; the test did not exercise the views", compared, chained)
	}
}
