/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/consent"
	"github.com/sourcegraph/telemetry-operator/internal/ledger"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// ConsentLedger is the receiver's consent ledger as the operator uses it (internal/ledger).
type ConsentLedger interface {
	Record(ctx context.Context, req consentv1.RecordRequest) (consentv1.State, error)
	State(ctx context.Context, instanceID string) (consentv1.State, error)
	Release(ctx context.Context, req consentv1.ReleaseRequest) error
	Erase(ctx context.Context, req consentv1.ErasureRequest) (consentv1.ErasureResult, error)
}

// Reasons of the ConsentRecorded condition.
const (
	ReasonRecorded            = "Recorded"
	ReasonReceiverUnavailable = "ReceiverUnavailable"
	ReasonOwnedElsewhere      = "InstanceOwnedElsewhere"
	ReasonLedgerRefused       = "LedgerRefused"
)

// defaultLedgerRetry is how soon a policy waiting on an unreachable receiver is tried again.
const defaultLedgerRetry = 15 * time.Second

// timelineOf turns status.consentHistory, the operator's copy of the ledger, into a timeline.
func timelineOf(history []v1.ConsentChange) consentv1.Timeline {
	t := make(consentv1.Timeline, 0, len(history))
	for _, c := range history {
		tr := consentv1.Transition{At: c.Time.UTC(), Tier: consentv1.Tier(c.To), Reason: c.Reason, Basis: string(c.Basis)}
		if c.RecordedAt != nil {
			at := c.RecordedAt.UTC()
			tr.RecordedAt = &at
		}
		t = append(t, tr)
	}
	return t
}

// historyOf turns the ledger's timeline into status.consentHistory (its newest entries).
func historyOf(t consentv1.Timeline) []v1.ConsentChange {
	start := max(0, len(t)-MaxConsentHistory)
	out := make([]v1.ConsentChange, 0, len(t)-start)
	for i := start; i < len(t); i++ {
		tr := t[i]
		c := v1.ConsentChange{Time: metav1.NewTime(tr.At.UTC().Truncate(time.Second)), To: v1.ConsentTier(tr.Tier), Basis: v1.ContractBasis(tr.Basis), Reason: tr.Reason}
		if i > 0 {
			c.From = v1.ConsentTier(t[i-1].Tier)
		}
		if c.Reason == "" {
			c.Reason = v1.ReasonDeclared
		}
		if tr.RecordedAt != nil {
			// Status keeps seconds: keep the copy equal to what a re-read returns.
			at := metav1.NewTime(tr.RecordedAt.UTC().Truncate(time.Second))
			c.RecordedAt = &at
		}
		out = append(out, c)
	}
	return out
}

// consentWriteTimes are the times the API server recorded for writes to the policy's consent or
// contract, the only fields whose edit can withdraw consent: the managedFields entry of each
// field manager that owns any of them holds the time of its last write. The status subresource
// and writers of other fields (finalizers, the export interval) are left out.
func consentWriteTimes(p *v1.TelemetryPolicy) []time.Time {
	var out []time.Time
	for _, mf := range p.ManagedFields {
		if mf.Subresource != "" || mf.Time == nil || mf.FieldsV1 == nil {
			continue
		}
		var fields struct {
			Spec map[string]json.RawMessage `json:"f:spec"`
		}
		if json.Unmarshal(mf.FieldsV1.GetRawBytes(), &fields) != nil {
			continue
		}
		_, consent := fields.Spec["f:consent"]
		_, contract := fields.Spec["f:contract"]
		if consent || contract {
			out = append(out, mf.Time.UTC())
		}
	}
	return out
}

// newestConsentWrite is the latest of consentWriteTimes, or nil.
func newestConsentWrite(p *v1.TelemetryPolicy) *metav1.Time {
	var newest *metav1.Time
	for _, t := range consentWriteTimes(p) {
		if newest == nil || t.After(newest.Time) {
			m := metav1.NewTime(t)
			newest = &m
		}
	}
	return newest
}

func (r *TelemetryPolicyReconciler) owner(p *v1.TelemetryPolicy) consentv1.Owner {
	return consentv1.Owner{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
}

// planTransition decides what, if anything, to record in the ledger: the decided tier when the
// ledger (as the operator last saw it) records another one, or the first record of a policy the
// operator has not synced yet. A policy with no history in status may still have one at the
// receiver (it was deleted and created again): the record is read first, so that a re-created
// policy never dates consent back to contract.acceptedAt.
func (r *TelemetryPolicyReconciler) planTransition(ctx context.Context, st *reconcileState) error {
	p := st.policy
	first := len(p.Status.ConsentHistory) == 0
	if first {
		state, err := r.Ledger.State(ctx, p.Spec.InstanceID)
		switch {
		case err == nil:
			st.timeline = state.Timeline
			st.ledgerKnown = true
			first = len(state.Timeline) == 0
		case errors.Is(err, ledger.ErrUnknownInstance):
			st.ledgerKnown = true
		default:
			st.ledgerErr = err
			return nil
		}
	} else {
		st.ledgerKnown = true
	}
	from := st.timeline.Current()
	if !first && from == consentv1.Tier(st.intent) && len(p.Status.ConsentHistory) > 0 {
		return nil
	}
	var lastAt time.Time
	if n := len(st.timeline); n > 0 {
		lastAt = st.timeline[n-1].At
	}
	var deletedAt *time.Time
	if p.DeletionTimestamp != nil {
		t := p.DeletionTimestamp.UTC()
		deletedAt = &t
	}
	var seen time.Time
	if p.Status.ObservedConsentWriteTime != nil {
		seen = p.Status.ObservedConsentWriteTime.UTC()
	}
	at, reason := consent.TransitionTime(consent.Change{
		From: v1.ConsentTier(from), First: first, LastAt: lastAt, To: st.intent, Decision: st.decision,
		Spec: p.Spec, DeletedAt: deletedAt, SpecWrites: consentWriteTimes(p), SeenWritesUpTo: seen, Now: r.Clock.Now(),
	})
	st.want = &consentv1.Transition{At: at.UTC(), Tier: consentv1.Tier(st.intent), Reason: reason, Basis: string(contractBasis(p))}
	return nil
}

// configTimeline is the timeline the collector filters by: the ledger's, plus a lowering the
// operator enforces locally before the receiver has recorded it (never a raising: that waits
// for the receiver).
func (st *reconcileState) configTimeline(now time.Time) consentv1.Timeline {
	t := st.timeline
	if st.want != nil && st.want.Tier.Rank() < t.Current().Rank() && len(t) > 0 {
		if tr, add, err := consentv1.Next(t, *st.want, now); err == nil && add {
			t = append(t[:len(t):len(t)], tr)
		}
	}
	return t
}

// enforceDowngrade runs before every step that could stall (pseudonym key, credentials, the
// ledger): when the decided tier is below what a collector may be running, the collector is
// lowered now. Off stops it, judged from a live read so that a Deployment whose labels were
// stripped is still found; CriticalOnly rewrites its configuration (the collector re-reads it
// before every batch) and rolls the Deployment to the lower tier.
func (r *TelemetryPolicyReconciler) enforceDowngrade(ctx context.Context, st *reconcileState) error {
	if !st.mutate {
		return nil
	}
	if err := r.planTransition(ctx, st); err != nil {
		return err
	}
	if st.intent == v1.TierOff {
		return r.stopCollector(ctx, st)
	}
	p := st.policy
	dep := &appsv1.Deployment{}
	err := r.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Deployment}, dep)
	switch {
	case apierrors.IsNotFound(err):
		st.deployment, st.deploymentObserved = nil, true
		return nil
	case err != nil:
		return err
	}
	st.deployment, st.deploymentObserved = dep, true
	if templateTier(dep).Rank() <= st.intent.Rank() || p.Spec.Source == nil {
		return nil
	}
	log.FromContext(ctx).Info("lowering the running collector ahead of everything else", "tier", st.intent, "from", templateTier(dep))
	if err := r.writeConfig(ctx, st, st.intent); err != nil {
		return err
	}
	lowered, err := ensureOwned(ctx, r, p, resources.Deployment(p, r.Options.CollectorImage, st.configHash, st.intent), deploymentKind)
	if err != nil {
		return err
	}
	st.deployment = lowered
	return nil
}

// templateTier is the tier a Deployment's pods are configured for; a template without the
// annotation (an older operator, or an edit) is assumed to run the highest tier.
func templateTier(dep *appsv1.Deployment) v1.ConsentTier {
	switch t := v1.ConsentTier(dep.Spec.Template.Annotations[resources.AnnotationTier]); t {
	case v1.TierCriticalOnly, v1.TierOff:
		return t
	default:
		return v1.TierEventLevel
	}
}

// writeConfig renders the collector configuration for tier and the configuration timeline.
func (r *TelemetryPolicyReconciler) writeConfig(ctx context.Context, st *reconcileState, tier v1.ConsentTier) error {
	p := st.policy
	rendered, err := collectorconfig.Render(resources.CollectorConfig(p, tier, st.configTimeline(r.Clock.Now())))
	if err != nil {
		st.stall(ReasonInvalidSpec, err.Error())
		return nil
	}
	st.configHash = resources.Hash(rendered)
	_, err = ensureOwned(ctx, r, p, resources.ConfigMap(p, rendered), configMapKind)
	return err
}

// stopCollector makes sure no collector runs: an Off configuration first (a collector still
// running re-reads it before every batch and stops sending), then the Deployment deleted in the
// foreground, found by a live read; once it is gone, its credentials and RBAC are removed.
func (r *TelemetryPolicyReconciler) stopCollector(ctx context.Context, st *reconcileState) error {
	p := st.policy
	names := resources.NamesFor(p.Name)
	cm := &corev1.ConfigMap{}
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: names.Config}, cm); {
	case err == nil:
		if err := r.writeConfig(ctx, st, v1.TierOff); err != nil {
			return err
		}
	case !apierrors.IsNotFound(err):
		return err
	}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.Deployment}}
	present, err := deleteOwned(ctx, r, r.APIReader, p, dep, client.PropagationPolicy(metav1.DeletePropagationForeground))
	if err != nil {
		return err
	}
	st.deploymentObserved = true
	if present {
		// Foreground deletion ends when the pods are gone. The cache may not see this
		// Deployment (its labels may have been stripped), so look again rather than wait for
		// an event that may never come.
		st.deployment = dep
		st.requeueIn(2*time.Second, r.Clock.Now())
		return nil
	}
	st.deployment = nil
	for _, obj := range []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.Credentials}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.RoleBinding}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.Role}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.ServiceAccount}},
	} {
		if _, err := deleteOwned(ctx, r, r.APIReader, p, obj); err != nil {
			return err
		}
	}
	if p.DeletionTimestamp == nil {
		p.Status.Credentials = nil
		r.Metrics.CertExpiry.DeleteLabelValues(p.Namespace, p.Name)
		setCondition(p, v1.ConditionCredentialsReady, metav1.ConditionTrue, ReasonCredentialsOff, "no collector runs: no transport credentials are needed and none exist")
	}
	return nil
}

// syncLedger records the planned transition at the receiver and learns the tier the ledger
// records in force. The collector then runs at no more than that: a raising waits for the
// receiver, a lowering never does (it was enforced in enforceDowngrade).
func (r *TelemetryPolicyReconciler) syncLedger(ctx context.Context, st *reconcileState) error {
	p := st.policy
	if !st.mutate {
		st.tier = p.Status.EffectiveTier
		return nil
	}
	defer func() { st.tier = st.runnableTier() }()
	if st.ledgerErr == nil && st.want != nil {
		state, err := r.Ledger.Record(ctx, consentv1.RecordRequest{InstanceID: p.Spec.InstanceID, Owner: r.owner(p), Transition: *st.want})
		if err != nil {
			st.ledgerErr = err
		} else if r.adoptLedger(ctx, st, state) {
			st.want = nil
		}
	}
	if st.ledgerKnown && len(st.timeline) > 0 {
		st.recorded = v1.ConsentTier(st.timeline.Current())
	}
	switch err := st.ledgerErr; {
	case err == nil && len(st.timeline) == 0:
		// Cannot happen: a record always has a transition once written.
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionUnknown, ReasonProgressing, "the receiver's consent ledger holds no record yet")
	case err == nil:
		last := st.timeline[len(st.timeline)-1]
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionTrue, ReasonRecorded,
			fmt.Sprintf("the receiver's consent ledger records %s in force since %s", last.Tier, last.At.UTC().Format(time.RFC3339)))
	case errors.Is(err, ledger.ErrOwnedElsewhere):
		st.ownedElsewhere = true
		st.recorded = v1.TierOff // nothing is recorded on this policy's behalf
		msg := fmt.Sprintf("instance %q is claimed by another TelemetryPolicy at the receiver: %v. Nothing is collected for this policy; "+
			"delete the other policy, or have the receiver's operator run `receiver consent release --instance %s`", p.Spec.InstanceID, err, p.Spec.InstanceID)
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionFalse, ReasonOwnedElsewhere, msg)
		if err := r.stopCollector(ctx, st); err != nil {
			return err
		}
		st.stall(ReasonOwnedElsewhere, msg)
	case errors.Is(err, ledger.ErrUnavailable):
		msg := fmt.Sprintf("the receiver's consent ledger is unreachable (%v); ", err)
		if st.want != nil && st.want.Tier.Rank() < st.timeline.Current().Rank() {
			msg += fmt.Sprintf("the collector already runs at most %s; the receiver will record it when reachable", st.want.Tier)
		} else {
			msg += "a higher tier takes effect only once the receiver records it"
		}
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionFalse, ReasonReceiverUnavailable, msg)
		st.requeueIn(r.ledgerRetry(), r.Clock.Now())
	default:
		msg := fmt.Sprintf("the receiver refused to record the consent change: %v", err)
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionFalse, ReasonLedgerRefused, msg)
		st.stall(ReasonLedgerRefused, msg)
	}
	return nil
}

// runnableTier is the most the collector may run with: the decided tier, but no more than the
// ledger records (nothing at all while the ledger knows nothing or another policy owns it).
func (st *reconcileState) runnableTier() v1.ConsentTier {
	if st.ownedElsewhere || !st.ledgerKnown || len(st.timeline) == 0 {
		return v1.TierOff
	}
	return consent.Lower(st.intent, v1.ConsentTier(st.timeline.Current()))
}

// adoptLedger takes the receiver's record as the operator's copy; false when it is unusable.
func (r *TelemetryPolicyReconciler) adoptLedger(ctx context.Context, st *reconcileState, state consentv1.State) bool {
	p := st.policy
	err := state.Timeline.Validate()
	if err == nil && len(state.Timeline) == 0 {
		err = errors.New("it holds no transition")
	}
	if err != nil {
		st.ledgerErr = fmt.Errorf("%w: the receiver's consent record is unusable: %w", ledger.ErrRejected, err)
		return false
	}
	st.timeline = state.Timeline
	st.ledgerKnown = true
	p.Status.ConsentHistory = historyOf(state.Timeline)
	if state.EventsRemoved > 0 {
		n := state.EventsRemoved
		st.afterPatch = append(st.afterPatch, func() {
			r.event(p, corev1.EventTypeNormal, "EventsRemoved", "RecordConsent",
				"the receiver removed %d stored events recorded after consent was withdrawn", n)
		})
		log.FromContext(ctx).Info("the receiver removed events recorded after consent was withdrawn", "count", n)
	}
	return true
}

// ledgerRetry is how soon to try the receiver again.
func (r *TelemetryPolicyReconciler) ledgerRetry() time.Duration {
	if r.Options.LedgerRetry > 0 {
		return r.Options.LedgerRetry
	}
	return defaultLedgerRetry
}

// enforcedTier decides status.effectiveTier: the tier in force changes only once both
// enforcement points agree. The ledger must record the tier the collector is configured for,
// and the collector side must match it: for Off, no collector Deployment is left; otherwise the
// collector runs the current configuration, or, after a downgrade whose later steps stalled, no
// pod of an older, higher-tier template is left.
func enforcedTier(prev, tier, recorded v1.ConsentTier, o workloadObservation, synced, observed bool) v1.ConsentTier {
	if recorded == "" || recorded != tier || !observed {
		return prev
	}
	d := o.deployment
	switch {
	case tier == v1.TierOff:
		if d == nil {
			return v1.TierOff
		}
	case synced:
		return tier
	case prev != "" && tier.Rank() < prev.Rank() && d != nil && noOldPods(d) && templateTier(d).Rank() <= tier.Rank():
		return tier
	}
	return prev
}

// noOldPods reports whether the Deployment controller has observed the current template and no
// pod of an older one is left.
func noOldPods(d *appsv1.Deployment) bool {
	return d.Status.ObservedGeneration >= d.Generation && d.Status.Replicas == d.Status.UpdatedReplicas
}

// finalize runs for a policy being deleted: the collector is stopped, the instance's consent
// is recorded as Off from the deletion time and the policy's ownership of the record released,
// and only then the finalizer removed. Stored data is kept (erase it first with spec.erasure).
// Should the receiver stay unreachable, the finalizer stays too; removing it by hand skips the
// ledger and leaves the record as it was.
func (r *TelemetryPolicyReconciler) finalize(ctx context.Context, p *v1.TelemetryPolicy) (time.Duration, error) {
	st := &reconcileState{policy: p, mutate: true, intent: v1.TierOff}
	st.timeline = timelineOf(p.Status.ConsentHistory)
	st.ledgerKnown = len(st.timeline) > 0
	if err := r.stopCollector(ctx, st); err != nil {
		return 0, err
	}
	if err := r.planTransition(ctx, st); err != nil {
		return 0, err
	}
	err := st.ledgerErr
	if err == nil && st.want != nil && len(st.timeline) > 0 {
		_, err = r.Ledger.Record(ctx, consentv1.RecordRequest{InstanceID: p.Spec.InstanceID, Owner: r.owner(p), Transition: *st.want})
	}
	if err == nil || errors.Is(err, ledger.ErrUnknownInstance) {
		err = r.Ledger.Release(ctx, consentv1.ReleaseRequest{InstanceID: p.Spec.InstanceID, Owner: r.owner(p)})
	}
	switch {
	case err == nil, errors.Is(err, ledger.ErrOwnedElsewhere), errors.Is(err, ledger.ErrUnknownInstance):
		// Closed and released, or not ours to close.
	case len(p.Status.ConsentHistory) == 0 && errors.Is(err, ledger.ErrUnavailable):
		// Never recorded: nothing at the receiver to close.
	default:
		r.event(p, corev1.EventTypeWarning, "ConsentCloseFailed", "DeletePolicy",
			"waiting to record the deletion in the receiver's consent ledger before letting the policy go: %v", err)
		return r.ledgerRetry(), nil
	}
	log.FromContext(ctx).Info("consent closed at the receiver; releasing the policy", "tier", v1.TierOff)
	patch := client.MergeFromWithOptions(p.DeepCopy(), client.MergeFromWithOptimisticLock{})
	var kept []string
	for _, f := range p.Finalizers {
		if f != v1.FinalizerConsentLedger {
			kept = append(kept, f)
		}
	}
	p.Finalizers = kept
	if err := r.Patch(ctx, p, patch); err != nil && !apierrors.IsNotFound(err) {
		return 0, err
	}
	return 0, nil
}
