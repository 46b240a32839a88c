/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/consent"
)

// maxSeenLowerings bounds the lowerings kept for one policy between two reconciles that act on
// them; beyond it the newest is merged into the last kept (the lower tier, the earlier time).
const maxSeenLowerings = 32

// seenLowering is a lowering of a policy's decided tier that the policy watch saw between two
// versions of it. A reconcile reads only the policy as it is: consent withdrawn and granted
// again before the policy was reconciled (both writes queued behind a reconcile under way, or
// made in quick succession) would otherwise never reach the receiver, and the collector would
// send what was recorded while it was withdrawn.
type seenLowering struct {
	uid        types.UID
	generation int64
	tr         consentv1.Transition
}

// seeLowerings is the policy watch's first predicate: it notes every lowering of the decided
// tier from one version of a policy to the next, and lets every event through (the predicates
// after it decide what is reconciled).
func (r *TelemetryPolicyReconciler) seeLowerings() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		r.noteLowering(e.ObjectOld, e.ObjectNew)
		return true
	}}
}

// noteLowering keeps the lowering from oldObj to newObj, if the decided tier went down, dated
// as a reconcile of newObj would have dated it: at the write that lowered it.
func (r *TelemetryPolicyReconciler) noteLowering(oldObj, newObj client.Object) {
	o, ok := oldObj.(*v1.TelemetryPolicy)
	n, ok2 := newObj.(*v1.TelemetryPolicy)
	if !ok || !ok2 || o.UID != n.UID || o.Generation == n.Generation || n.DeletionTimestamp != nil {
		return
	}
	now := r.Clock.Now()
	from := consent.Decide(o.Spec, r.Options.MinCloudTermsVersion, now)
	to := consent.Decide(n.Spec, r.Options.MinCloudTermsVersion, now)
	if to.Effective.Rank() >= from.Effective.Rank() {
		return
	}
	var seen, lastAt time.Time
	if w := newestConsentWrite(o); w != nil {
		seen = w.Time
	}
	for _, c := range append(n.Status.ConsentHistory[:len(n.Status.ConsentHistory):len(n.Status.ConsentHistory)], n.Status.PendingConsentChanges...) {
		if c.Time.After(lastAt) {
			lastAt = c.Time.UTC()
		}
	}
	at, reason := consent.TransitionTime(consent.Change{
		From: from.Effective, To: to.Effective, Decision: to, Spec: n.Spec,
		SpecWrites: consentWriteTimes(n), SeenWritesUpTo: seen, LastAt: lastAt, Now: now,
	})
	l := seenLowering{uid: n.UID, generation: n.Generation, tr: consentv1.Transition{
		At: at.UTC(), Tier: consentv1.Tier(to.Effective), Reason: reason, Basis: string(contractBasis(n)),
	}}
	key := client.ObjectKeyFromObject(n)
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	if r.seen == nil {
		r.seen = map[client.ObjectKey][]seenLowering{}
	}
	kept := r.seen[key]
	if len(kept) > 0 && kept[0].uid != n.UID {
		kept = nil // another policy of that name
	}
	if len(kept) >= maxSeenLowerings {
		last := &kept[len(kept)-1]
		last.generation = l.generation
		if l.tr.Tier.Rank() < last.tr.Tier.Rank() {
			last.tr.Tier, last.tr.Reason = l.tr.Tier, l.tr.Reason
		}
		r.seen[key] = kept
		return
	}
	r.seen[key] = append(kept, l)
}

// seenLowerings returns the lowerings noted for p, up to its generation (later ones belong to
// a version of the policy this reconcile has not read).
func (r *TelemetryPolicyReconciler) seenLowerings(p *v1.TelemetryPolicy) []seenLowering {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	var out []seenLowering
	for _, l := range r.seen[client.ObjectKeyFromObject(p)] {
		if l.uid == p.UID && l.generation <= p.Generation {
			out = append(out, l)
		}
	}
	return out
}

// forgetSeenLowerings drops the lowerings noted for p up to generation: a reconcile planned
// from them, and its status write (or this process's memory of a failed one) keeps them.
func (r *TelemetryPolicyReconciler) forgetSeenLowerings(key client.ObjectKey, uid types.UID, generation int64) {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	var kept []seenLowering
	for _, l := range r.seen[key] {
		if l.uid == uid && l.generation > generation {
			kept = append(kept, l)
		}
	}
	if len(kept) == 0 {
		delete(r.seen, key)
		return
	}
	r.seen[key] = kept
}

// injectSeenLowerings adds to the pending lowerings those the watch saw that the local timeline
// does not hold yet: a lowering dated after its last transition, below the tier it ends in. One
// dated at or before that transition was recorded or superseded already. Nothing is added to an
// instance with no record (its first transition is recorded as decided).
func (r *TelemetryPolicyReconciler) injectSeenLowerings(st *reconcileState) {
	st.seenConsidered = true
	local := st.localTimeline()
	if len(local) == 0 {
		return
	}
	now := r.Clock.Now()
	for _, l := range r.seenLowerings(st.policy) {
		last := local[len(local)-1]
		if !l.tr.At.After(last.At) || l.tr.Tier.Rank() >= last.Tier.Rank() {
			continue
		}
		if next, add, err := consentv1.Next(local, l.tr, now); err == nil && add {
			st.pending = append(st.pending, next)
			local = st.localTimeline()
		}
	}
}
