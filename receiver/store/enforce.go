/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// policy is what ingestion judges a batch by: an instance's timeline and erasure tombstones at
// one version of its record. It is immutable once built, so cached copies are shared freely.
type policy struct {
	instance string
	timeline consentv1.Timeline
	// aggregateDays are the days whose aggregate cells may be stored.
	aggregateDays consentv1.AggregateDays
	// eventTombstones are every erased range (both scopes cover events); aggregateTombstones
	// those of scope All.
	eventTombstones, aggregateTombstones []consentv1.Window
	// aheadTombstones are the events dated ahead of the receiver's clock that erasures without
	// an end deleted: by time and the highest id deleted.
	aheadTombstones []aheadTombstone
}

// aheadTombstone refuses events dated in window with ids up to maxID.
type aheadTombstone struct {
	window consentv1.Window
	maxID  int64
}

// refusal returns the error refusing a whole batch of kind, or nil when the batch is judged item
// by item: nothing is accepted while the tier in force is Off, and events only while it is
// EventLevel. The tier in force is judged at now: a trial whose Until has come is CriticalOnly.
// The batch's own "tier" field plays no part.
func (p *policy) refusal(kind string, now time.Time) error {
	current := p.timeline.CurrentAt(now)
	e := &RefusedError{Instance: p.instance, Known: true, Tier: current, Kind: kind}
	if n := len(p.timeline); n > 0 {
		e.Since = p.timeline[n-1].At
		if last := p.timeline[n-1]; last.Tier != current {
			e.Since = *last.Until
		}
	}
	switch {
	case current == consentv1.TierOff:
		return e
	case kind == batchv1.KindEvents && current != consentv1.TierEventLevel:
		return e
	}
	return nil
}

// keepEvent reports whether an event may be stored: recorded while EventLevel was in force and
// in no erased range (an id that is not a number is never kept where an id decides).
func (p *policy) keepEvent(ts time.Time, id string) bool {
	if p.timeline.TierAt(ts) != consentv1.TierEventLevel {
		return false
	}
	for _, w := range p.eventTombstones {
		if w.Contains(ts) {
			return false
		}
	}
	for _, a := range p.aheadTombstones {
		if !a.window.Contains(ts) {
			continue
		}
		if n, err := strconv.ParseInt(id, 10, 64); err != nil || n <= a.maxID {
			return false
		}
	}
	return true
}

// keepAggregate reports whether a cell for UTC day may be stored: a day the ledger lets publish
// (CriticalOnly in force during all of it: consentv1.AggregateDays) and
// no range erased with scope All overlaps, and one that has ended by now, as the server checks
// before (DayNotClosed): a cell of a day to come counts what no ledger has judged yet (a renewal
// may yet make it EventLevel, and its cells could be differenced against the events stored one
// by one), so the store refuses it too, whoever calls it.
func (p *policy) keepAggregate(day string, now time.Time) bool {
	d, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return false // the decoder admits only dates; fail closed all the same
	}
	end := d.AddDate(0, 0, 1)
	if end.After(now) {
		return false
	}
	for _, w := range p.aggregateTombstones {
		if w.Overlaps(d, end) {
			return false
		}
	}
	return p.aggregateDays.Allow(d)
}

// loadPolicy locks the instance's record FOR SHARE for the rest of tx and returns its policy.
// The lock is what makes enforcement hold under concurrency: a transition or an erasure takes
// the row FOR UPDATE, so it waits for batches judged by the old state to commit (and then
// deletes what they stored), and batches wait for it and are judged by the new state. A batch
// for an instance with no record is refused: fail closed. So is one whose certificate's policy
// (WithSender) does not own the record, judged under the same lock.
//
// A row lock alone would let a steady stream of batches starve the writer: PostgreSQL grants
// FOR SHARE at once while other share lockers hold the row, whoever waits FOR UPDATE. So every
// batch first takes the instance's advisory lock in shared mode, and every writer in exclusive
// mode (lockExclusive): the lock manager queues new shared requests behind a waiting writer.
func (s *Store) loadPolicy(ctx context.Context, tx pgx.Tx, instance string) (*policy, error) {
	var version int64
	var cluster, namespace, name, uid *string
	batch := &pgx.Batch{}
	batch.Queue(`SELECT pg_advisory_xact_lock_shared($1, hashtext($2))`, advisoryClass, instance)
	batch.Queue(`SELECT version, owner_cluster, owner_namespace, owner_name, owner_uid FROM consent_instances WHERE instance_id = $1 FOR SHARE`,
		instance).QueryRow(func(row pgx.Row) error {
		return row.Scan(&version, &cluster, &namespace, &name, &uid)
	})
	err := tx.SendBatch(ctx, batch).Close()
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, &RefusedError{Instance: instance}
	}
	if err != nil {
		return nil, err
	}
	if err := checkSender(ctx, ownerOf(cluster, namespace, name, uid)); err != nil {
		return nil, err
	}
	if p := s.policies.get(instance, version); p != nil {
		return p, nil
	}
	// Under the lock, nothing can change the timeline or the tombstones of this version.
	tl, err := loadTimeline(ctx, tx, instance)
	if err != nil {
		return nil, err
	}
	p := &policy{instance: instance, timeline: tl, aggregateDays: tl.AggregateDays()}
	rows, err := tx.Query(ctx, `SELECT scope, range_from, range_to, ahead_to, ahead_max_id FROM erasures WHERE instance_id = $1`, instance)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var scope string
		var from, aheadTo *time.Time
		var to time.Time
		var aheadMaxID *int64
		if err := rows.Scan(&scope, &from, &to, &aheadTo, &aheadMaxID); err != nil {
			return nil, err
		}
		if aheadTo != nil && aheadMaxID != nil {
			p.aheadTombstones = append(p.aheadTombstones, aheadTombstone{window: consentv1.Window{Start: to, End: aheadTo}, maxID: *aheadMaxID})
		}
		w := consentv1.Window{End: &to}
		if from != nil {
			w.Start = *from
		}
		p.eventTombstones = append(p.eventTombstones, w)
		if scope == consentv1.ScopeAll {
			p.aggregateTombstones = append(p.aggregateTombstones, w)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	s.policies.put(instance, version, p)
	return p, nil
}

// maxCachedPolicies bounds the policy cache: one entry per instance sending, a few KiB each.
const maxCachedPolicies = 10_000

// policyCache keeps each instance's policy at its latest version seen. A version bump (any
// transition, erasure or release) makes the entry miss, so a stale policy is never used.
type policyCache struct {
	mu      sync.Mutex
	entries map[string]cachedPolicy
}

type cachedPolicy struct {
	version int64
	p       *policy
}

func (c *policyCache) get(instance string, version int64) *policy {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[instance]; ok && e.version == version {
		return e.p
	}
	return nil
}

func (c *policyCache) put(instance string, version int64, p *policy) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[string]cachedPolicy)
	}
	if e, ok := c.entries[instance]; ok && e.version > version {
		return // a concurrent batch already cached a newer version
	}
	if _, ok := c.entries[instance]; !ok && len(c.entries) >= maxCachedPolicies {
		for k := range c.entries { // evict an arbitrary entry: a miss only costs two queries
			delete(c.entries, k)
			break
		}
	}
	c.entries[instance] = cachedPolicy{version: version, p: p}
}
