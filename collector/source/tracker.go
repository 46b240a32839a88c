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
	position
	sent    map[int64]struct{}
	maxSent int
}

// position is the part of the delivery state that rounds move forward: the cursor, the highest
// id read, and the horizons still held back by in-flight transactions.
type position struct {
	cursor  int64
	high    int64
	pending []horizon
}

// NewTracker starts at cursor (everything at or below it is delivered). maxSent bounds the memory
// spent remembering ids delivered above the cursor; past it they are forgotten and re-sent, which
// the receiver absorbs.
func NewTracker(cursor int64, maxSent int) *Tracker {
	return &Tracker{position: position{cursor: cursor, high: cursor}, sent: map[int64]struct{}{}, maxSent: maxSent}
}

// Cursor is the safe position: every id at or below it is delivered.
func (p *position) Cursor() int64 { return p.cursor }

// High is the highest id delivered.
func (p *position) High() int64 { return p.high }

// Pending reports how many in-flight horizons hold the cursor back.
func (p *position) Pending() int { return len(p.pending) }

// NeedLateScan reports whether, at snap, some transaction tracked as in flight has finished, so
// rows with ids in (Cursor, High] may have become visible.
func (p *position) NeedLateScan(snap Snapshot) bool {
	for _, h := range p.pending {
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
func (p *position) Plan(snap Snapshot, newHigh int64, complete bool) int64 {
	return p.after(snap, newHigh, complete).cursor
}

// after is the position once a round at snap that read every visible id up to newHigh is
// acknowledged. It does not change p.
func (p *position) after(snap Snapshot, newHigh int64, complete bool) position {
	if !complete {
		return *p
	}
	high := max(p.high, newHigh)
	pending := append(append([]horizon(nil), p.pending...), horizon{w: high, xip: snap.Xip})
	c := p.cursor
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
	// Horizons with the same in-flight set can merge: keep the list short under steady load.
	return position{cursor: c, high: high, pending: compact(pending[done:])}
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
	t.position = t.after(snap, newHigh, complete)
	for id := range t.sent {
		if id <= t.cursor {
			delete(t.sent, id)
		}
	}
	if len(t.sent) > t.maxSent {
		// Forget: the late scan will re-send these and the receiver will absorb them.
		t.sent = map[int64]struct{}{}
	}
	return t.cursor
}

// View is what a read needs to know of the delivery state.
type View interface {
	Cursor() int64
	High() int64
	NeedLateScan(Snapshot) bool
	Sent(int64) bool
}

// Ahead is the delivery state as it will be once one or more rounds are acknowledged, so the
// next round can be read (and sent) while those are still being sent. It reads the tracker
// without changing it: the tracker must not change while an Ahead is in use.
type Ahead struct {
	position
	t   *Tracker
	ids [][]int64 // each round's ids, ascending
}

// Ahead returns the state after Acknowledge(snap, ids, newHigh, complete); ids must be ascending
// (as a round's rows are).
func (t *Tracker) Ahead(snap Snapshot, ids []int64, newHigh int64, complete bool) *Ahead {
	return &Ahead{position: t.after(snap, newHigh, complete), t: t, ids: [][]int64{ids}}
}

// Ahead returns the state after a further round is acknowledged.
func (a *Ahead) Ahead(snap Snapshot, ids []int64, newHigh int64, complete bool) *Ahead {
	return &Ahead{position: a.after(snap, newHigh, complete), t: a.t, ids: append(append([][]int64(nil), a.ids...), ids)}
}

// Sent reports whether id is delivered once the rounds are acknowledged.
func (a *Ahead) Sent(id int64) bool {
	if id <= a.cursor || a.t.Sent(id) {
		return true
	}
	for _, ids := range a.ids {
		if _, found := slices.BinarySearch(ids, id); found {
			return true
		}
	}
	return false
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
