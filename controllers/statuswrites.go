/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"slices"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// statusWrite is what this process knows of a policy's status beyond what its cache may show:
// the resourceVersion its last status write was stored with (or the newest it has read since),
// and the withdrawals enforced on the collector that a failed status write could not keep
// there. A withdrawal not yet recorded at the receiver lives only in status; a reconcile that
// starts from a copy without it (the cache not yet showing the write that kept it, or a write
// that failed) and sees consent raised would configure the collector as if it had never been
// withdrawn.
type statusWrite struct {
	uid             types.UID
	resourceVersion string
	unwritten       consentv1.Timeline
	// history: the ledger copy (status.consentHistory) a failed status write could not keep: the
	// reconcile may have recorded at the receiver, or read its record back, before it failed.
	history []v1.ConsentChange
}

// freshPolicy makes p, read from the cache, at least as new as this process's last status write
// of it: a copy with another resourceVersion may predate that write (the cache lags), and is
// read again from the API server. Only policies written by someone else since (their spec
// edited, say) cost the read.
func (r *TelemetryPolicyReconciler) freshPolicy(ctx context.Context, p *v1.TelemetryPolicy) error {
	key := client.ObjectKeyFromObject(p)
	r.writesMu.Lock()
	w, ok := r.writes[key]
	r.writesMu.Unlock()
	if !ok || w.uid != p.UID || w.resourceVersion == "" || w.resourceVersion == p.ResourceVersion {
		return nil
	}
	if err := r.APIReader.Get(ctx, key, p); err != nil {
		return err
	}
	r.noteRead(p)
	return nil
}

// noteRead: p is the API server's copy, as new as any status this process wrote.
func (r *TelemetryPolicyReconciler) noteRead(p *v1.TelemetryPolicy) {
	r.updateWrite(p, func(w *statusWrite) { w.resourceVersion = p.ResourceVersion })
}

// noteStatusWritten: p, as the API server stored it, holds this reconcile's ledger copy.
func (r *TelemetryPolicyReconciler) noteStatusWritten(p *v1.TelemetryPolicy) {
	r.updateWrite(p, func(w *statusWrite) {
		w.resourceVersion, w.unwritten, w.history = p.ResourceVersion, stillUnwritten(w.unwritten, p), unkept(w.history, p)
	})
}

// noteStatusKept: status already held this reconcile's ledger copy; nothing was written.
func (r *TelemetryPolicyReconciler) noteStatusKept(p *v1.TelemetryPolicy) {
	r.updateWrite(p, func(w *statusWrite) { w.unwritten, w.history = stillUnwritten(w.unwritten, p), unkept(w.history, p) })
}

// stillUnwritten is what of unwritten p's status neither holds pending nor records: a reconcile
// that stopped before it loaded the remembered withdrawals (a stall) writes a status without
// them, which must not make them forgotten.
func stillUnwritten(unwritten consentv1.Timeline, p *v1.TelemetryPolicy) consentv1.Timeline {
	held := timelineOf(p.Status.PendingConsentChanges)
	var out consentv1.Timeline
	for _, u := range unwritten {
		if !slices.ContainsFunc(held, func(h consentv1.Transition) bool { return h.At.Equal(u.At) && h.Tier == u.Tier }) {
			out = append(out, u)
		}
	}
	return unrecorded(timelineOf(p.Status.ConsentHistory), out)
}

// noteStatusUnwritten: the status write failed; the withdrawals this reconcile leaves pending
// (those it started with included) are kept here for the next reconcile.
func (r *TelemetryPolicyReconciler) noteStatusUnwritten(p *v1.TelemetryPolicy) {
	pending := timelineOf(p.Status.PendingConsentChanges)
	history := slices.Clone(p.Status.ConsentHistory)
	r.updateWrite(p, func(w *statusWrite) {
		// Merged: a reconcile that stalled before loading what was remembered did not carry it.
		w.unwritten = unrecorded(timelineOf(history), mergePending(w.unwritten, pending))
		if len(history) > 0 {
			w.history = history
		}
	})
}

func (r *TelemetryPolicyReconciler) updateWrite(p *v1.TelemetryPolicy, f func(*statusWrite)) {
	key := client.ObjectKeyFromObject(p)
	r.writesMu.Lock()
	defer r.writesMu.Unlock()
	if r.writes == nil {
		r.writes = map[client.ObjectKey]statusWrite{}
	}
	w := r.writes[key]
	if w.uid != p.UID {
		w = statusWrite{uid: p.UID}
	}
	f(&w)
	r.writes[key] = w
}

// unkept is the remembered ledger copy, unless p's status holds it, or something newer.
func unkept(history []v1.ConsentChange, p *v1.TelemetryPolicy) []v1.ConsentChange {
	if len(history) == 0 {
		return nil
	}
	if holdsCopy(p.Status.ConsentHistory, history) {
		return nil
	}
	return history
}

// unwrittenOf is what a failed status write of p could not keep.
func (r *TelemetryPolicyReconciler) unwrittenOf(p *v1.TelemetryPolicy) (consentv1.Timeline, []v1.ConsentChange) {
	r.writesMu.Lock()
	defer r.writesMu.Unlock()
	if w, ok := r.writes[client.ObjectKeyFromObject(p)]; ok && w.uid == p.UID {
		return w.unwritten, w.history
	}
	return nil, nil
}

// forgetWrites drops what is known of a policy gone.
func (r *TelemetryPolicyReconciler) forgetWrites(key client.ObjectKey) {
	r.writesMu.Lock()
	defer r.writesMu.Unlock()
	delete(r.writes, key)
}

// pendingWithdrawals is the withdrawals a reconcile starts with: those in the policy's status
// and those a failed status write of this process could not keep there, less what the timeline
// records, each a lowering of the tier before it. (A process that never saw a failed write, a
// restart or a new leader, cannot know of it: the only other trace of the withdrawal is the
// collector's configuration, which whoever may edit the namespace's ConfigMaps could forge, and a
// forged withdrawal, backdated, would have the receiver delete stored events.)
func (r *TelemetryPolicyReconciler) pendingWithdrawals(st *reconcileState) consentv1.Timeline {
	p := st.policy
	unwritten, _ := r.unwrittenOf(p)
	pending := mergePending(timelineOf(p.Status.PendingConsentChanges), unwritten)
	return lowerings(st.timeline, unrecorded(st.timeline, pending))
}

// startLedger sets the ledger copy and the pending withdrawals a reconcile starts with: the
// copy in status, or the one a failed status write of this process could not keep when it holds
// status's (the receiver recorded, or was read back, since): otherwise the next reconcile would
// work from a copy without a withdrawal the receiver already holds, and configure the collector
// without it.
func (r *TelemetryPolicyReconciler) startLedger(st *reconcileState) {
	p := st.policy
	if _, history := r.unwrittenOf(p); len(history) > 0 {
		if holdsCopy(history, p.Status.ConsentHistory) {
			p.Status.ConsentHistory = slices.Clone(history)
		}
	}
	st.timeline = timelineOf(p.Status.ConsentHistory)
	st.pending = r.pendingWithdrawals(st)
}

// lowerings keeps the pending changes that lower the tier before them (from the timeline's
// current tier on). Pending changes are withdrawals; one that would raise the tier, which two
// copies merged could put there, is dropped: the tier before it stays in force, and the raise
// is planned again, waiting for the receiver as every raise does.
func lowerings(timeline, pending consentv1.Timeline) consentv1.Timeline {
	var out consentv1.Timeline
	cur := timeline.Current()
	for _, tr := range pending {
		if tr.Tier == consentv1.TierEventLevel || len(timeline) == 0 && len(out) == 0 && tr.Tier != consentv1.TierOff {
			// Never a withdrawal: EventLevel, or a first record above Off, from status (written
			// there by hand, or a copy of a record the receiver lost whole) would be recorded as
			// the instance's first grant, dated in the past. The plan records the declared tier
			// by the first-grant rules instead; failing closed, a lost record's CriticalOnly past
			// stays Off.
			continue
		}
		if len(timeline) > 0 || len(out) > 0 {
			if tr.Tier.Rank() >= cur.Rank() {
				continue
			}
		}
		out = append(out, tr)
		cur = tr.Tier
	}
	return out
}

// holdsCopy reports whether the ledger copy newer holds the copy older (possibly followed by
// later transitions). Each keeps only the newest MaxConsentHistory transitions: entries of older
// dated before newer's first, when newer is full, fell out of its window; they are not lost.
func holdsCopy(newer, older []v1.ConsentChange) bool {
	if len(newer) == 0 {
		return len(older) == 0
	}
	if len(newer) >= MaxConsentHistory {
		first := newer[0].Time
		for len(older) > 0 && older[0].Time.Before(&first) {
			older = older[1:]
		}
	}
	_, holds := lostWithdrawals(older, timelineOf(newer))
	return holds
}
