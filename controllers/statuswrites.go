/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
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
	r.updateWrite(p, func(w *statusWrite) { w.resourceVersion, w.unwritten = p.ResourceVersion, nil })
}

// noteStatusKept: status already held this reconcile's ledger copy; nothing was written.
func (r *TelemetryPolicyReconciler) noteStatusKept(p *v1.TelemetryPolicy) {
	r.updateWrite(p, func(w *statusWrite) { w.unwritten = nil })
}

// noteStatusUnwritten: the status write failed; the withdrawals this reconcile leaves pending
// (those it started with included) are kept here for the next reconcile.
func (r *TelemetryPolicyReconciler) noteStatusUnwritten(p *v1.TelemetryPolicy) {
	pending := timelineOf(p.Status.PendingConsentChanges)
	r.updateWrite(p, func(w *statusWrite) { w.unwritten = pending })
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

// unwrittenPending is what a failed status write of p could not keep.
func (r *TelemetryPolicyReconciler) unwrittenPending(p *v1.TelemetryPolicy) consentv1.Timeline {
	r.writesMu.Lock()
	defer r.writesMu.Unlock()
	if w, ok := r.writes[client.ObjectKeyFromObject(p)]; ok && w.uid == p.UID {
		return w.unwritten
	}
	return nil
}

// forgetWrites drops what is known of a policy gone.
func (r *TelemetryPolicyReconciler) forgetWrites(key client.ObjectKey) {
	r.writesMu.Lock()
	defer r.writesMu.Unlock()
	delete(r.writes, key)
}

// pendingWithdrawals is the withdrawals a reconcile starts with: those in the policy's status,
// those a failed status write of this process could not keep there, and those the collector's
// configuration holds beyond status (configuredWithdrawals), less what the timeline records,
// each a lowering of the tier before it.
func (r *TelemetryPolicyReconciler) pendingWithdrawals(ctx context.Context, st *reconcileState) consentv1.Timeline {
	p := st.policy
	pending := mergePending(timelineOf(p.Status.PendingConsentChanges), r.unwrittenPending(p))
	pending = mergePending(pending, r.configuredWithdrawals(ctx, st))
	return lowerings(st.timeline, unrecorded(st.timeline, pending))
}

// ReasonRecoveredFromConfig is the reason recorded for a withdrawal found only in the
// collector's configuration (see configuredWithdrawals).
const ReasonRecoveredFromConfig = "EnforcedNotRecorded"

// configuredWithdrawals are the withdrawals the collector's configuration holds from the last
// transition of the policy's status copy on (those it records are dropped by the caller). The configuration is lowered at once and status
// written at the end of the reconcile; a status write that failed in a process since gone (a
// restart, a new leader) leaves a withdrawal only there, and a raise before the next reconcile
// would otherwise configure the collector as if consent had never been withdrawn. Only
// lowerings are taken, not dated in the future, from a configuration made for this policy (its
// audit fields are not in it: they are recorded with ReasonRecoveredFromConfig and the policy's
// basis). An edit of the configuration can thus at worst withdraw consent that was not, which
// fails closed.
func (r *TelemetryPolicyReconciler) configuredWithdrawals(ctx context.Context, st *reconcileState) consentv1.Timeline {
	p := st.policy
	if st.outside != nil {
		return nil // its objects are not the operator's to read there
	}
	cm := &corev1.ConfigMap{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Config}, cm); err != nil || mayTakeOver(cm, p) != nil {
		return nil
	}
	c, err := collectorconfig.Parse(strings.NewReader(cm.Data[resources.ConfigKey]))
	if err != nil {
		return nil
	}
	var head time.Time
	if n := len(st.timeline); n > 0 {
		head = st.timeline[n-1].At
	}
	now := r.Clock.Now()
	var out consentv1.Timeline
	prev := consentv1.TierOff
	for _, tr := range c.Consent {
		lowers := tr.Tier.Rank() < prev.Rank()
		prev = tr.Tier
		if lowers && !tr.At.Before(head) && !tr.At.After(now) {
			out = append(out, consentv1.Transition{At: tr.At.UTC(), Tier: tr.Tier, Reason: ReasonRecoveredFromConfig, Basis: string(contractBasis(p))})
		}
	}
	return out
}

// lowerings keeps the pending changes that lower the tier before them (from the timeline's
// current tier on). Pending changes are withdrawals; one that would raise the tier, which two
// copies merged could put there, is dropped: the tier before it stays in force, and the raise
// is planned again, waiting for the receiver as every raise does.
func lowerings(timeline, pending consentv1.Timeline) consentv1.Timeline {
	var out consentv1.Timeline
	cur := timeline.Current()
	for _, tr := range pending {
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
