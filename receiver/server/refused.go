/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server

import (
	"sync"
	"time"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// refusedFor is how long a certificate's policy refused as not owning an instance's record is
// refused again before its request takes any of the instance's slots (rate, open requests,
// in-flight bytes) or reaches the database: a former owner's collector, still running with
// the time its certificate has left, cannot slow the new owner's. A consent write this
// process records for the instance forgets it at once; one recorded by another replica, within
// refusedFor (the collector's next rounds are refused meanwhile, nothing is dropped).
const refusedFor = time.Minute

// maxRefused bounds the remembered pairs (certificates are the fleet issuer's, so the pairs
// are too, but a bound costs nothing): beyond it, new pairs are not remembered and go to the
// store as before.
const maxRefused = 10000

// refusedSenders remembers (instance, policy) pairs the store refused as not owning the
// instance's record, until a deadline.
type refusedSenders struct {
	mu    sync.Mutex
	until map[string]map[consentv1.Owner]time.Time // instance -> policy -> refused until
	n     int
}

// refused reports whether policy was refused for instance less than refusedFor before now.
func (r *refusedSenders) refused(instance string, policy consentv1.Owner, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	until, ok := r.until[instance][policy]
	if ok && !now.Before(until) {
		r.forgetLocked(instance, policy)
		return false
	}
	return ok
}

// remember notes that policy was refused for instance at now.
func (r *refusedSenders) remember(instance string, policy consentv1.Owner, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.until == nil {
		r.until = map[string]map[consentv1.Owner]time.Time{}
	}
	if _, ok := r.until[instance][policy]; !ok && r.n >= maxRefused {
		r.sweepLocked(now)
		if r.n >= maxRefused {
			return
		}
	}
	byPolicy := r.until[instance]
	if byPolicy == nil {
		byPolicy = map[consentv1.Owner]time.Time{}
		r.until[instance] = byPolicy
	}
	if _, ok := byPolicy[policy]; !ok {
		r.n++
	}
	byPolicy[policy] = now.Add(refusedFor)
}

// forgetInstance drops every pair of instance: its record changed.
func (r *refusedSenders) forgetInstance(instance string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n -= len(r.until[instance])
	delete(r.until, instance)
}

func (r *refusedSenders) forgetLocked(instance string, policy consentv1.Owner) {
	byPolicy := r.until[instance]
	if _, ok := byPolicy[policy]; !ok {
		return
	}
	delete(byPolicy, policy)
	r.n--
	if len(byPolicy) == 0 {
		delete(r.until, instance)
	}
}

// sweepLocked drops the pairs whose time is up.
func (r *refusedSenders) sweepLocked(now time.Time) {
	for instance, byPolicy := range r.until {
		for policy, until := range byPolicy {
			if !now.Before(until) {
				r.forgetLocked(instance, policy)
			}
		}
	}
}
