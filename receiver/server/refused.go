/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server

import (
	"hash/maphash"
	"sync"
	"time"
)

// refusedFor is how long a caller the store refused as not owning its instance's record is
// refused again without asking the store. Its requests never took the owner's slots (rate and
// open requests are counted per caller); this spares the database a former owner's retries for
// the time its certificate has left. A consent write this process records for the instance
// forgets its callers at once; one recorded by another replica, within refusedFor (the
// collector's next rounds are refused meanwhile, nothing is dropped).
const refusedFor = time.Minute

// maxRefused bounds the remembered callers (certificates are the fleet issuer's, so callers
// are too, but a bound costs nothing): beyond it, new ones are not remembered and go to the
// store as before.
const maxRefused = 10000

// refusedSenders remembers callers the store refused as not owning the instance's record,
// until a deadline.
type refusedSenders struct {
	mu        sync.Mutex
	until     map[string]map[caller]time.Time // instance -> caller -> refused until
	n         int
	forgot    [forgetShards]uint64 // consent writes that forgot callers, by shard of instance
	lastSweep time.Time
}

// forgetShards spreads the forget counts over instances, so that consent writes for other
// instances seldom keep a refusal from being remembered.
const forgetShards = 256

var shardSeed = maphash.MakeSeed()

func shardOf(instance string) int { return int(maphash.String(shardSeed, instance) % forgetShards) }

// refused reports whether c was refused less than refusedFor before now.
func (r *refusedSenders) refused(c caller, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	until, ok := r.until[c.instance][c]
	if ok && !now.Before(until) {
		r.forgetLocked(c)
		return false
	}
	return ok
}

// forgets returns the count of forgetInstance calls so far that may have concerned instance,
// to pass to remember.
func (r *refusedSenders) forgets(instance string) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.forgot[shardOf(instance)]
}

// remember notes that c was refused at now by a store read made after forgets returned seen;
// if c's instance's callers may have been forgotten since, the read may predate a write that
// made c the owner, and nothing is remembered.
func (r *refusedSenders) remember(c caller, seen uint64, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.forgot[shardOf(c.instance)] != seen {
		return
	}
	if r.until == nil {
		r.until = map[string]map[caller]time.Time{}
	}
	if _, ok := r.until[c.instance][c]; !ok && r.n >= maxRefused {
		// Full: sweep at most once a second, so that a full table does not cost every refusal
		// a pass over it under the lock.
		if now.Sub(r.lastSweep) < time.Second {
			return
		}
		r.lastSweep = now
		r.sweepLocked(now)
		if r.n >= maxRefused {
			return
		}
	}
	byCaller := r.until[c.instance]
	if byCaller == nil {
		byCaller = map[caller]time.Time{}
		r.until[c.instance] = byCaller
	}
	if _, ok := byCaller[c]; !ok {
		r.n++
	}
	byCaller[c] = now.Add(refusedFor)
}

// forgetInstance drops every caller of instance: its record changed.
func (r *refusedSenders) forgetInstance(instance string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgot[shardOf(instance)]++
	r.n -= len(r.until[instance])
	delete(r.until, instance)
}

func (r *refusedSenders) forgetLocked(c caller) {
	byCaller := r.until[c.instance]
	if _, ok := byCaller[c]; !ok {
		return
	}
	delete(byCaller, c)
	r.n--
	if len(byCaller) == 0 {
		delete(r.until, c.instance)
	}
}

// sweepLocked drops the callers whose time is up.
func (r *refusedSenders) sweepLocked(now time.Time) {
	for _, byCaller := range r.until {
		for c, until := range byCaller {
			if !now.Before(until) {
				r.forgetLocked(c)
			}
		}
	}
}
