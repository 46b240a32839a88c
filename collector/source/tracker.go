/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package source

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Snapshot is a PostgreSQL snapshot (pg_current_snapshot()): transactions below Xmin are
// finished, those at or above Xmax had not started, and Xip lists those in progress.
type Snapshot struct {
	Xmin, Xmax uint64
	Xip        []uint64
}

// ParseSnapshot parses the text form "xmin:xmax:xip1,xip2,...".
func ParseSnapshot(s string) (Snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("malformed snapshot %q", s)
	}
	var snap Snapshot
	var err error
	if snap.Xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("malformed snapshot xmin %q", parts[0])
	}
	if snap.Xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("malformed snapshot xmax %q", parts[1])
	}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("malformed snapshot xip %q", x)
			}
			snap.Xip = append(snap.Xip, v)
		}
	}
	return snap, nil
}

// Finished reports whether transaction xid, in progress at some earlier snapshot, has committed
// or aborted as of s.
func (s Snapshot) Finished(xid uint64) bool {
	if xid < s.Xmin {
		return true
	}
	for _, x := range s.Xip {
		if x == xid {
			return false
		}
	}
	return xid < s.Xmax
}

// horizon records that after a round at a snapshot, every id at or below W that was visible had
// been delivered; ids at or below W not yet visible can only belong to the transactions in xip.
type horizon struct {
	w   int64
	xip []uint64
}

// Tracker decides which ids are safely delivered, for a table whose ids come from a sequence at
// insert time while rows become visible at commit time, possibly out of id order.
//
// The invariant: every id at or below Cursor has been delivered, or will never exist (rolled
// back). Ids above Cursor delivered so far are remembered in memory (bounded), and a "late" scan
// of (Cursor, High] is made whenever a transaction that was in flight during an earlier round has
// finished, because only then can a row with a lower id appear.
type Tracker struct {
	cursor  int64
	high    int64
	sent    map[int64]struct{}
	pending []horizon
	maxSent int
}

// NewTracker starts at cursor (everything at or below it is delivered). maxSent bounds the memory
// spent remembering ids delivered above the cursor; past it they are forgotten and re-sent, which
// the receiver absorbs.
func NewTracker(cursor int64, maxSent int) *Tracker {
	return &Tracker{cursor: cursor, high: cursor, sent: map[int64]struct{}{}, maxSent: maxSent}
}

// Cursor is the safe position: every id at or below it is delivered.
func (t *Tracker) Cursor() int64 { return t.cursor }

// High is the highest id delivered.
func (t *Tracker) High() int64 { return t.high }

// Pending reports how many in-flight horizons hold the cursor back.
func (t *Tracker) Pending() int { return len(t.pending) }

// NeedLateScan reports whether, at snap, some transaction tracked as in flight has finished, so
// rows with ids in (Cursor, High] may have become visible.
func (t *Tracker) NeedLateScan(snap Snapshot) bool {
	return needLateScan(t.pending, snap)
}

func needLateScan(pending []horizon, snap Snapshot) bool {
	for _, h := range pending {
		for _, x := range h.xip {
			if snap.Finished(x) {
				return true
			}
		}
	}
	return false
}

// Sent reports whether id was already delivered.
func (t *Tracker) Sent(id int64) bool {
	if id <= t.cursor {
		return true
	}
	_, ok := t.sent[id]
	return ok
}

// Plan computes the cursor that will hold once a round at snap, which read every visible id up to
// newHigh, is acknowledged. complete is false when the round's late scan was cut short. It does
// not change the tracker.
func (t *Tracker) Plan(snap Snapshot, newHigh int64, complete bool) int64 {
	if !complete {
		return t.cursor
	}
	c, _ := t.advance(snap, newHigh)
	return c
}

func (t *Tracker) advance(snap Snapshot, newHigh int64) (int64, int) {
	if newHigh < t.high {
		newHigh = t.high
	}
	pending := append(append([]horizon(nil), t.pending...), horizon{w: newHigh, xip: snap.Xip})
	c := t.cursor
	done := 0
	for _, h := range pending {
		finished := true
		for _, x := range h.xip {
			if !snap.Finished(x) {
				finished = false
				break
			}
		}
		if !finished {
			break
		}
		if h.w > c {
			c = h.w
		}
		done++
	}
	return c, done
}

// after computes the cursor, high and horizons Acknowledge would leave, without changing t.
func (t *Tracker) after(snap Snapshot, newHigh int64, complete bool) (cursor, high int64, pending []horizon) {
	if !complete {
		return t.cursor, t.high, t.pending
	}
	c, done := t.advance(snap, newHigh)
	high = max(t.high, newHigh)
	pending = append(append([]horizon(nil), t.pending...), horizon{w: high, xip: snap.Xip})[done:]
	return c, high, compact(pending)
}

// Acknowledge records a round at snap as delivered: ids were sent, every visible id up to newHigh
// was read. It advances the cursor as far as is safe and returns it.
func (t *Tracker) Acknowledge(snap Snapshot, ids []int64, newHigh int64, complete bool) int64 {
	for _, id := range ids {
		if id > t.cursor {
			t.sent[id] = struct{}{}
		}
	}
	if !complete {
		return t.cursor
	}
	c, high, pending := t.after(snap, newHigh, complete)
	t.cursor, t.high, t.pending = c, high, pending
	for id := range t.sent {
		if id <= c {
			delete(t.sent, id)
		}
	}
	if len(t.sent) > t.maxSent {
		// Forget: the late scan will re-send these and the receiver will absorb them.
		t.sent = map[int64]struct{}{}
	}
	return c
}

// View is what a read needs to know of the delivery state.
type View interface {
	Cursor() int64
	High() int64
	NeedLateScan(Snapshot) bool
	Sent(int64) bool
}

// Ahead is the delivery state as it will be once a round is acknowledged, so the next round
// can be read while this one is still being sent. It reads the tracker without changing it:
// the tracker must not change while an Ahead is in use.
type Ahead struct {
	t            *Tracker
	cursor, high int64
	pending      []horizon
	ids          []int64 // ascending
}

// Ahead returns the state after Acknowledge(snap, ids, newHigh, complete); ids must be ascending
// (as a round's rows are).
func (t *Tracker) Ahead(snap Snapshot, ids []int64, newHigh int64, complete bool) *Ahead {
	c, high, pending := t.after(snap, newHigh, complete)
	return &Ahead{t: t, cursor: c, high: high, pending: pending, ids: ids}
}

// Cursor is the cursor after the acknowledgement.
func (a *Ahead) Cursor() int64 { return a.cursor }

// High is the highest id delivered after the acknowledgement.
func (a *Ahead) High() int64 { return a.high }

// Sent reports whether id is delivered once the round is acknowledged.
func (a *Ahead) Sent(id int64) bool {
	if id <= a.cursor || a.t.Sent(id) {
		return true
	}
	_, found := slices.BinarySearch(a.ids, id)
	return found
}

// NeedLateScan is Tracker.NeedLateScan against the horizons after the acknowledgement.
func (a *Ahead) NeedLateScan(snap Snapshot) bool {
	return needLateScan(a.pending, snap)
}

func compact(hs []horizon) []horizon {
	out := hs[:0]
	for _, h := range hs {
		if n := len(out); n > 0 && sameSet(out[n-1].xip, h.xip) {
			out[n-1].w = h.w
			continue
		}
		out = append(out, h)
	}
	return out
}

func sameSet(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
