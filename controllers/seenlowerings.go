/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"slices"
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
	seq        uint64 // the order the watch saw it in: a reconcile forgets only what it planned from
	uid        types.UID
	generation int64
	tr         consentv1.Transition
}

// recordedFrom is the generation of the policy the transitions this process last asked the
// receiver to record were planned from, and when it began asking: what the receiver recorded
// from then on (its reply may have been lost) came from that plan. A withdrawal the watch saw in
// a later version than a grant recorded after it was planned from an older one is not
// superseded by that grant.
type recordedFrom struct {
	uid        types.UID
	generation int64
	since      time.Time
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
	r.seenSeq++
	l.seq = r.seenSeq
	kept := r.seen[key]
	if len(kept) > 0 && kept[0].uid != n.UID {
		kept = nil // another policy of that name
	}
	if len(kept) >= maxSeenLowerings {
		last := &kept[len(kept)-1]
		last.generation, last.seq = l.generation, l.seq
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

// forgetSeenLowerings drops the lowerings a reconcile planned from (by their seq): its status
// write, the copy merged after a lost race, or this process's memory of a failed write keeps
// them. One noted while it ran stays for the next.
func (r *TelemetryPolicyReconciler) forgetSeenLowerings(key client.ObjectKey, seqs []uint64) {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	kept := slices.DeleteFunc(r.seen[key], func(l seenLowering) bool { return slices.Contains(seqs, l.seq) })
	if len(kept) == 0 {
		delete(r.seen, key)
		return
	}
	r.seen[key] = kept
}

// forgetPolicyLowerings drops everything noted for a policy that is gone.
func (r *TelemetryPolicyReconciler) forgetPolicyLowerings(key client.ObjectKey) {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	delete(r.seen, key)
	delete(r.recorded, key)
}

// notePlanRecorded remembers, before the first request to record a transition planned from the
// policy's generation, when this process began asking.
func (r *TelemetryPolicyReconciler) notePlanRecorded(p *v1.TelemetryPolicy, since time.Time) {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	if r.recorded == nil {
		r.recorded = map[client.ObjectKey]recordedFrom{}
	}
	r.recorded[client.ObjectKeyFromObject(p)] = recordedFrom{uid: p.UID, generation: p.Generation, since: since}
}

// plannedBefore reports whether the transition at at came from this process's last plan, made
// from a version of p older than generation. The receiver's clock may lag this one's by up to
// consentv1.MaxClockSkew.
func (r *TelemetryPolicyReconciler) plannedBefore(p *v1.TelemetryPolicy, at time.Time, generation int64) bool {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	m, ok := r.recorded[client.ObjectKeyFromObject(p)]
	return ok && m.uid == p.UID && !at.Before(m.since.Add(-consentv1.MaxClockSkew)) && m.generation < generation
}

// injectSeenLowerings adds to the pending lowerings those the watch saw that the local timeline
// does not hold. A lowering to X at W is added at W when the timeline has not moved on since W
// and the tier in force at W is higher than X. When the timeline has moved on since W, it was
// recorded with that (dated a moment later), or superseded by a later plan, unless the last
// transition came from a plan of an older version of the policy than the lowering (a grant
// planned before consent was withdrawn, recorded after): then it is added from that transition
// on. Nothing is added to an instance with no record (its first grant starts now, after what
// was noted: see plan). A lowering is forgotten only once a reconcile's last look found it held
// or superseded, not when it was added: a pending lowering may yet be dropped by a read-back
// that finds a later transition, and must then be judged again. It reports whether any
// lowering was noted for the policy.
func (r *TelemetryPolicyReconciler) injectSeenLowerings(st *reconcileState) bool {
	notes := r.seenLowerings(st.policy)
	st.seenConsidered = st.seenConsidered[:0]
	local := st.localTimeline()
	if len(local) == 0 {
		return len(notes) > 0
	}
	now := r.Clock.Now()
	for _, l := range notes {
		last := local[len(local)-1]
		switch {
		case last.At.After(l.tr.At):
			if last.Tier.Rank() <= l.tr.Tier.Rank() || !r.plannedBefore(st.policy, last.At, l.generation) {
				st.seenConsidered = append(st.seenConsidered, l.seq) // held, or superseded
				continue
			}
		case local.TierAt(l.tr.At).Rank() <= l.tr.Tier.Rank():
			st.seenConsidered = append(st.seenConsidered, l.seq) // in force already
			continue
		}
		if next, add, err := consentv1.Next(local, l.tr, now); err == nil && add {
			st.pending = append(st.pending, next)
			local = st.localTimeline()
		}
	}
	return len(notes) > 0
}
