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
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/consent"
	"github.com/sourcegraph/telemetry-operator/internal/ledger"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
)

// ConsentLedger is the receiver's consent ledger as the operator uses it (internal/ledger).
type ConsentLedger interface {
	// Cluster is the cluster name the operator identifies as.
	Cluster() string
	Record(ctx context.Context, req consentv1.RecordRequest) (consentv1.State, error)
	State(ctx context.Context, instanceID, namespace string) (consentv1.State, error)
	Release(ctx context.Context, req consentv1.ReleaseRequest) error
	Erase(ctx context.Context, req consentv1.ErasureRequest) (consentv1.ErasureResult, error)
}

// Reasons of the ConsentRecorded condition.
const (
	ReasonRecorded            = "Recorded"
	ReasonReceiverUnavailable = "ReceiverUnavailable"
	ReasonOwnedElsewhere      = "InstanceOwnedElsewhere"
	ReasonReleased            = "InstanceReleased"
	ReasonLedgerRefused       = "LedgerRefused"
)

// errAsLastRead marks a hold kept from the last read of the record, which could not be read again.
var errAsLastRead = errors.New("as last read")

// defaultLedgerRetry is how soon a policy waiting on an unreachable receiver is tried again.
const defaultLedgerRetry = 15 * time.Second

// timelineOf turns status.consentHistory, the operator's copy of the ledger, into a timeline.
func timelineOf(history []v1.ConsentChange) consentv1.Timeline {
	t := make(consentv1.Timeline, 0, len(history))
	for _, c := range history {
		tr := consentv1.Transition{At: c.Time.UTC(), Tier: consentv1.Tier(c.To), Reason: c.Reason, Basis: string(c.Basis)}
		// Status is writable apart from the spec: what is recorded from it again names a
		// reason and basis of the closed sets the receiver takes, never text written there.
		if !consentv1.KnownReason(tr.Reason) {
			tr.Reason = v1.ReasonDeclared
		}
		if !consentv1.KnownBasis(tr.Basis) {
			tr.Basis = ""
		}
		if c.RecordedAt != nil {
			at := c.RecordedAt.UTC()
			tr.RecordedAt = &at
		}
		if c.Until != nil && tr.Tier == consentv1.TierEventLevel && c.Until.After(tr.At) {
			// (An until anywhere else is none the receiver keeps: written there by hand.)
			u := c.Until.UTC()
			tr.Until = &u
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
		if tr.Until != nil {
			u := metav1.NewTime(tr.Until.UTC())
			c.Until = &u
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

// ownedByUs reports whether the record's owner is this policy of this operator's cluster.
func (r *TelemetryPolicyReconciler) ownedByUs(p *v1.TelemetryPolicy, o consentv1.Owner) bool {
	us := r.owner(p)
	us.Cluster = r.Ledger.Cluster()
	return o.Same(us)
}

// verifyDue reports whether the operator should read the receiver's record of the policy's
// instance instead of trusting its copy in status: always for a policy with no copy (it may be
// a re-created policy whose instance has a history), after every spec change, and at least
// every LedgerResync, so a record the receiver lost or that was changed behind the operator's
// back is noticed. The marks are kept in memory: a restarted operator verifies everything once.
func (r *TelemetryPolicyReconciler) verifyDue(p *v1.TelemetryPolicy) bool {
	if len(p.Status.ConsentHistory) == 0 {
		return true
	}
	r.verifiedMu.Lock()
	defer r.verifiedMu.Unlock()
	m, ok := r.verified[client.ObjectKeyFromObject(p)]
	return !ok || m.uid != p.UID || m.generation != p.Generation || !r.Clock.Now().Before(m.at.Add(r.ledgerResync()))
}

// nextVerification is when the policy's record is next due to be read back: a LedgerResync
// after it was last found consistent, so that a requeue for it finds verifyDue true (one
// computed from the reconcile's start came a little early, and the record was then read a
// resync later still). Without a mark, or one already due (the read failed, and planTransition
// asked for the ledger's retry, which comes sooner), a LedgerResync from now.
func (r *TelemetryPolicyReconciler) nextVerification(p *v1.TelemetryPolicy) time.Time {
	now := r.Clock.Now()
	r.verifiedMu.Lock()
	defer r.verifiedMu.Unlock()
	m, ok := r.verified[client.ObjectKeyFromObject(p)]
	if due := m.at.Add(r.ledgerResync()); ok && m.uid == p.UID && m.generation == p.Generation && due.After(now) {
		return due
	}
	return now.Add(r.ledgerResync())
}

// markVerified notes that the receiver's record matched the policy's copy as read at readAt.
// It is dated when the record was read, not when the check ended: a change made at the
// receiver after the read (a failover losing a transition) must be looked for a LedgerResync
// after the read, even if this reconcile took long or the clock moved on meanwhile.
func (r *TelemetryPolicyReconciler) markVerified(p *v1.TelemetryPolicy, readAt time.Time) {
	r.verifiedMu.Lock()
	defer r.verifiedMu.Unlock()
	if r.verified == nil {
		r.verified = map[client.ObjectKey]verification{}
	}
	r.verified[client.ObjectKeyFromObject(p)] = verification{uid: p.UID, generation: p.Generation, at: readAt}
}

func (r *TelemetryPolicyReconciler) forgetVerified(key client.ObjectKey) {
	r.verifiedMu.Lock()
	defer r.verifiedMu.Unlock()
	delete(r.verified, key)
}

// LeaseObservation is the leader-election Lease as the manager found it when it started.
type LeaseObservation struct {
	// Holder is who held it ("" when released).
	Holder string
	// RenewTime is when its holder last renewed it.
	RenewTime time.Time
	// Duration is how long a renewal holds it.
	Duration time.Duration
	// ObservedAt is when it was read.
	ObservedAt time.Time
}

// watchMargin covers clock skew between the operator and the API server, which dates writes.
const watchMargin = 5 * time.Second

// watchGap returns when this operator began watching policies (its first reconcile, when it
// was elected leader) and, when known, when the previous operator was last alive: writes in
// between were made while no operator watched. The lease read at start tells: released or
// expired, its last renewal; held by a live leader (this one waited as a standby), that
// leader could have died a lease duration and a retry before this one took over.
func (r *TelemetryPolicyReconciler) watchGap() (time.Time, *time.Time) {
	r.gapOnce.Do(func() {
		now := r.Clock.Now()
		r.runningSince = now.Add(watchMargin)
		l := r.Options.StartLease
		if l == nil {
			return
		}
		down := l.RenewTime
		if l.Holder != "" && l.ObservedAt.Before(l.RenewTime.Add(l.Duration)) {
			down = now.Add(-l.Duration - 2*time.Second)
		}
		r.downSince = &down
	})
	return r.runningSince, r.downSince
}

// verification is when the operator last read the receiver's record of a policy's instance.
type verification struct {
	uid        types.UID
	generation int64
	at         time.Time
}

// localTimeline is consent as the operator enforces it: the ledger's timeline followed by the
// lowerings enforced on the collector that the receiver has not recorded yet.
func (st *reconcileState) localTimeline() consentv1.Timeline {
	if len(st.pending) == 0 {
		return st.timeline
	}
	return append(st.timeline[:len(st.timeline):len(st.timeline)], st.pending...)
}

// lostWithdrawals compares the operator's copy of the record (status.consentHistory, whose
// entries know the tier they lowered from) with the receiver's record. It reports whether the
// receiver's record holds the copy (possibly followed by later transitions), and otherwise the
// withdrawals in the copy that the receiver no longer holds (a restore, a failover to a replica
// that missed them): they are recorded again at their own times, never forgotten.
func lostWithdrawals(copyOf []v1.ConsentChange, theirs consentv1.Timeline) (lost consentv1.Timeline, consistent bool) {
	if len(copyOf) == 0 {
		return nil, true
	}
	ours := timelineOf(copyOf)
	same := func(a, b consentv1.Transition) bool { return a.At.Equal(b.At) && a.Tier == b.Tier }
	matched := 0
	for start := range theirs {
		if !same(theirs[start], ours[0]) {
			continue
		}
		for matched < len(ours) && start+matched < len(theirs) && same(theirs[start+matched], ours[matched]) {
			matched++
		}
		break
	}
	if matched == len(ours) {
		return nil, true
	}
	for i := matched; i < len(copyOf); i++ {
		if c := copyOf[i]; c.To.Rank() < c.From.Rank() || c.From == "" && c.To != v1.TierEventLevel {
			lost = append(lost, ours[i])
		}
	}
	return lost, false
}

// mergePending adds withdrawals to the pending ones, in time order, without duplicates.
func mergePending(pending, more consentv1.Timeline) consentv1.Timeline {
	out := append(consentv1.Timeline(nil), pending...)
	for _, m := range more {
		dup := false
		for _, p := range out {
			dup = dup || p.At.Equal(m.At) && p.Tier == m.Tier
		}
		if !dup {
			out = append(out, m)
		}
	}
	slices.SortStableFunc(out, func(a, b consentv1.Transition) int { return a.At.Compare(b.At) })
	return out
}

// planTransition learns the ledger's state (the status copy, or the receiver's record when a
// verification is due) and decides what to change. A lowering is enforced on the collector at
// once and kept in status.pendingConsentChanges, dated when consent was withdrawn, until the
// receiver records it: it is never lost, even if consent is raised again before the receiver is
// reachable, or the receiver loses it. A raise, or an instance's first record, waits for the
// receiver. The copy in status is replaced only by a receiver record that holds it.
func (r *TelemetryPolicyReconciler) planTransition(ctx context.Context, st *reconcileState) error {
	p := st.policy
	defer func() { p.Status.PendingConsentChanges = pendingOf(st.timeline, st.pending) }()
	if r.verifyDue(p) {
		if !r.readBack(ctx, st) {
			return nil
		}
	} else {
		st.ledgerKnown = true
	}
	r.plan(st)
	return nil
}

// planLocally plans from the operator's copy alone when the receiver's record is due to be
// read back: that read waits for the receiver, and a lowering is enforced before (see
// Reconcile). The plan is made again from the record once it is read (replan, in the ledger
// step); until then it serves only to lower the collector.
func (r *TelemetryPolicyReconciler) planLocally(ctx context.Context, st *reconcileState) error {
	if !r.verifyDue(st.policy) {
		return r.planTransition(ctx, st)
	}
	st.readBackDue, st.beforeReadBack = true, slices.Clone(st.pending)
	r.plan(st)
	if n := len(st.pending); n > len(st.beforeReadBack) {
		l := st.pending[n-1]
		st.lowering = &l
	}
	return nil
}

// replan reads the receiver's record back and plans again from it, when planLocally (or a
// suspended policy) left that to the ledger step.
func (r *TelemetryPolicyReconciler) replan(ctx context.Context, st *reconcileState) error {
	if !st.readBackDue {
		return nil
	}
	st.readBackDue = false
	tentative := st.pending
	st.pending, st.want, st.planned = st.beforeReadBack, nil, false
	defer func() {
		next := r.nextVerification(st.policy)
		st.requeue(&next)
	}()
	if !st.mutate {
		// Suspended: nothing is planned; what the receiver lost joins the pending withdrawals.
		// A record nobody owns is claimed only by recording, which a suspended policy does
		// only for a withdrawal: nothing of it is adopted, and unless a withdrawal recorded in
		// the ledger step claims it, the collector stops (syncLedger).
		before, history := *st, st.policy.Status.ConsentHistory
		ok := r.readBack(ctx, st)
		switch {
		case st.claim:
			*st, st.policy.Status.ConsentHistory = before, history
			st.claim = true
			st.pending = tentative // what the watch saw, judged against the copy, stays
		case ok:
			// What the watch saw is judged again against the record as read (a withdrawal
			// planned from the copy may predate a grant the copy lacks).
			r.injectSeenLowerings(st)
		case !errors.Is(st.ledgerErr, ledger.ErrOwnedElsewhere):
			st.pending = tentative // the record could not be used: kept, as unsuspended
		}
		return nil
	}
	err := r.planTransition(ctx, st)
	if !st.planned && !errors.Is(st.ledgerErr, ledger.ErrOwnedElsewhere) {
		// The record could not be used (unusable, or unknown and unreadable): a lowering the
		// collector was given from the copy is kept pending, not forgotten; it is recorded
		// once the receiver's record can be used again.
		st.pending = tentative
		st.policy.Status.PendingConsentChanges = pendingOf(st.timeline, st.pending)
	}
	return err
}

// readBack reads the receiver's record and takes it as the ledger's state (fail closed: what
// the receiver lost of the copy in status is recorded again). It reports false when nothing
// can be planned (the record is another policy's, unusable, or unknown and unreadable).
func (r *TelemetryPolicyReconciler) readBack(ctx context.Context, st *reconcileState) bool {
	p := st.policy
	readAt := r.Clock.Now()
	state, err := r.Ledger.State(ctx, p.Spec.InstanceID, p.Namespace)
	if errors.Is(err, ledger.ErrUnknownInstance) {
		err, state = nil, consentv1.State{InstanceID: p.Spec.InstanceID}
	}
	switch {
	case err == nil && state.Owner.Cluster != "" && !r.ownedByUs(p, state.Owner):
		st.ledgerErr = ledger.ErrOwnedElsewhere
		return false
	case err == nil && state.Timeline.Validate() != nil:
		st.ledgerErr = fmt.Errorf("%w: the receiver's consent record is unusable", ledger.ErrRejected)
		return false
	case err == nil:
		// A record nobody owns (released, lost, or a policy deleted) is claimed by recording.
		st.claim = state.Owner.Cluster == ""
		lost, consistent := lostWithdrawals(p.Status.ConsentHistory, state.Timeline)
		st.timeline = state.Timeline
		switch {
		case consistent && st.claim:
			// Not this policy's until the claim is recorded (the record's answer then becomes
			// the copy): a claim refused must leave neither another policy's history in status
			// nor a verified copy a later reconcile would run a collector from.
		case consistent:
			r.markVerified(p, readAt)
			// Until the record carries this policy's UID, the receiver matches certificates
			// by name: one of a deleted policy of the same name would keep working.
			// (Only where the policy may claim a record anyway: a release landing between this
			// read and that write would let the write claim it.)
			st.addUID = state.Owner.UID == "" && p.UID != "" && st.mutate && st.outside == nil
			if h := historyOf(state.Timeline); !equality.Semantic.DeepEqual(h, p.Status.ConsentHistory) {
				p.Status.ConsentHistory = h
			}
		default:
			// Fail closed: what the receiver lost is recorded again, withdrawals at their own
			// times; the copy in status stays until the receiver holds it again.
			st.recordLost = true
			st.pending = mergePending(lost, st.pending)
			msg := fmt.Sprintf("the receiver's consent record lacks transitions it acknowledged before; recording %d withdrawal(s) again at their own times", len(lost))
			log.FromContext(ctx).Info(msg)
			st.afterLedger = append(st.afterLedger, func() { r.event(p, corev1.EventTypeWarning, "ConsentRecordLost", "VerifyConsent", "%s", msg) })
		}
		st.pending = lowerings(st.timeline, unrecorded(st.timeline, st.pending))
		st.ledgerKnown = true
	case errors.Is(err, ledger.ErrOwnedElsewhere):
		st.ledgerErr = err
		return false
	default:
		if heldOwnedElsewhere(p) {
			// Last found another policy's: the copy in status is no longer this policy's to
			// run from, and the hold stays until the record can be read again.
			st.ledgerErr = fmt.Errorf("%w (%w; reading it again failed: %w)", ledger.ErrOwnedElsewhere, errAsLastRead, err)
			st.ledgerKnown = false
			return false
		}
		if len(st.timeline) == 0 && len(st.pending) == 0 {
			// Nothing known of the instance's consent: nothing can be planned.
			st.ledgerErr = err
			return false
		}
		// Go on with the copy in status; the receiver is asked again at the ledger's retry,
		// not a resync later (nothing may be pending, so nothing else brings it back).
		st.verifyErr = err
		log.FromContext(ctx).Info("could not read the receiver's consent record back; going on with the copy in status", "error", err.Error())
		st.ledgerKnown = true
		st.requeueIn(r.ledgerRetry(), r.Clock.Now())
	}
	return true
}

// plan decides the transition to make from the ledger's state as known: a lowering joins the
// pending ones (enforced at once), a raise or first record is wanted from the receiver.
func (r *TelemetryPolicyReconciler) plan(st *reconcileState) {
	p := st.policy
	st.planned = true
	noted := r.injectSeenLowerings(st)
	r.judgeAtLatestKnown(st, r.Clock.Now()) // the record may have been read back since
	lapse, lapsed := lapsedExpiry(p, st.timeline, r.Clock.Now())
	if lapsed {
		if st.intent == v1.TierEventLevel {
			// Renewed: the lapse is recorded first (before any later lowering the watch saw),
			// and the grant from now.
			st.pending = lowerings(st.timeline, mergePending(st.pending, consentv1.Timeline{lapse}))
		} else {
			// Lowered too: the lowering planned below is dated no later than the lapse
			// (consent.Change.Lapsed), and the lapse joins the pending lowerings only where
			// it ends EventLevel earlier than they do.
			defer func() { st.pending = lowerings(st.timeline, mergePending(st.pending, consentv1.Timeline{lapse})) }()
		}
	}
	local := st.localTimeline()
	now := r.Clock.Now()
	// (The last recorded tier, not minding its until: a trial past its until is recorded as
	// expired all the same, for the record's readers, and the receiver takes EventLevel
	// again as a new grant.)
	from := local.Current()
	until := untilOf(p, st.intent)
	renewal := false
	if len(local) > 0 && from == consentv1.Tier(st.intent) && !st.claim {
		if from != consentv1.TierEventLevel || consentv1.SameTime(local[len(local)-1].Until, until) {
			return
		}
		// EventLevel in force with another expiry than the spec's (a trial extended,
		// shortened or made a contract): recorded again with the spec's, from now.
		renewal = true
	}
	var lastAt time.Time
	if n := len(local); n > 0 {
		lastAt = local[n-1].At
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
	runningSince, downSince := r.watchGap()
	// Only a policy the operator never recorded anything for may date its first grant in the
	// past (startFrom Beginning); one whose record the receiver lost never does.
	// Nor one the watch saw lowered before it was first recorded: its first grant starts now.
	// Nor one whose spec changed since it was created (generation 1): it may have declared a
	// lower tier, or been ineligible, for a while nobody recorded (the receiver unreachable, a
	// reservation pending, an operator restarted since), and its first grant starts now too.
	first := len(local) == 0 && len(p.Status.ConsentHistory) == 0 && !noted && p.Generation <= 1
	at, reason := consent.TransitionTime(consent.Change{
		From: v1.ConsentTier(from), First: first, LastAt: lastAt, To: st.intent, Decision: st.decision,
		Spec: p.Spec, DeletedAt: deletedAt, SpecWrites: consentWriteTimes(p), SeenWritesUpTo: seen, Lapsed: lapsedAt(lapse, lapsed),
		RunningSince: runningSince, DownSince: downSince, Now: now,
	})
	if !first && len(local) == 0 && at.Before(now) {
		at = now
	}
	if renewal {
		at, reason = now, v1.ReasonDeclared
	}
	tr := consentv1.Transition{At: at.UTC(), Tier: consentv1.Tier(st.intent), Reason: reason, Basis: string(contractBasis(p)), Until: until}
	if len(local) > 0 && tr.Tier.Rank() < from.Rank() {
		if l := st.lowering; l != nil && l.Tier == tr.Tier && l.At.Before(tr.At) && !l.At.Before(lastAt) {
			// Planned again once the record was read back: dated as when the collector was
			// lowered (a withdrawal dated "now" would otherwise move by the read's duration).
			tr.At, tr.Reason = l.At, l.Reason
		}
		if next, add, err := consentv1.Next(local, tr, now); err == nil && add {
			st.pending = append(st.pending, next)
		}
		return
	}
	st.want = &tr
}

// lapsedExpiry is the trial expiry no reconcile recorded in time: EventLevel is in force by the
// receiver's record, and the basis it was recorded under expired (status.eventLevelExpiresAt)
// since its last transition, whatever the spec says now (extended or replaced since, while no
// operator acted on it: down, failing, or behind). Consent lapsed at the expiry all the same; a
// renewal is a new grant, from when it is recorded.
func lapsedExpiry(p *v1.TelemetryPolicy, recorded consentv1.Timeline, now time.Time) (consentv1.Transition, bool) {
	e, n := p.Status.EventLevelExpiresAt, len(recorded)
	if e == nil || n == 0 || recorded.Current() != consentv1.TierEventLevel || e.After(now) || e.Time.Before(recorded[n-1].At) {
		return consentv1.Transition{}, false
	}
	if u := recorded[n-1].Until; u != nil && !u.After(e.Time) {
		// Recorded with this expiry or an earlier one: the receiver ended EventLevel there
		// itself. (A later one is a shortening the receiver never recorded: the lapse is.)
		return consentv1.Transition{}, false
	}
	basis := recorded[n-1].Basis
	if !consentv1.KnownBasis(basis) {
		basis = ""
	}
	return consentv1.Transition{At: e.UTC(), Tier: consentv1.TierCriticalOnly, Reason: v1.ReasonTrialExpired, Basis: basis}, true
}

// lapsedAt is the lapse's time for consent.Change, or nil.
func lapsedAt(tr consentv1.Transition, lapsed bool) *time.Time {
	if !lapsed {
		return nil
	}
	return &tr.At
}

// untilOf is the until a grant of tier records: the basis's expiry (whole seconds, rounded
// down), for EventLevel only.
func untilOf(p *v1.TelemetryPolicy, tier v1.ConsentTier) *time.Time {
	if tier != v1.TierEventLevel || p.Spec.Contract == nil || p.Spec.Contract.ExpiresAt == nil {
		return nil
	}
	u := p.Spec.Contract.ExpiresAt.UTC().Truncate(time.Second)
	return &u
}

// eventLevelExpiry is status.eventLevelExpiresAt once this reconcile's transitions are known:
// the spec's expiry while EventLevel is in force by the record (with the lowerings not yet
// recorded), else none.
func eventLevelExpiry(p *v1.TelemetryPolicy, st *reconcileState) *metav1.Time {
	if st.localTimeline().Current() != consentv1.TierEventLevel || p.Spec.Contract == nil || p.Spec.Contract.ExpiresAt == nil {
		return nil
	}
	e := p.Spec.Contract.ExpiresAt.DeepCopy()
	return e
}

// unrecorded keeps the pending lowerings the receiver's timeline does not hold yet. Only this
// policy writes its record, and it records pending lowerings first, in order: one dated before
// the record's last transition was recorded (or superseded) by an earlier reconcile.
func unrecorded(timeline, pending consentv1.Timeline) consentv1.Timeline {
	if len(timeline) == 0 {
		return pending
	}
	head := timeline[len(timeline)-1].At
	var out consentv1.Timeline
	for _, p := range pending {
		if p.At.Before(head) {
			continue
		}
		recorded := false
		for _, t := range timeline {
			recorded = recorded || t.At.Equal(p.At) && t.Tier == p.Tier
		}
		if !recorded {
			out = append(out, p)
		}
	}
	return out
}

// pendingOf turns the unrecorded lowerings into status entries.
func pendingOf(timeline, pending consentv1.Timeline) []v1.ConsentChange {
	if len(pending) == 0 {
		return nil
	}
	out := make([]v1.ConsentChange, 0, len(pending))
	prev := timeline.Current()
	for _, tr := range pending {
		out = append(out, v1.ConsentChange{
			Time: metav1.NewTime(tr.At.UTC().Truncate(time.Second)), From: v1.ConsentTier(prev), To: v1.ConsentTier(tr.Tier),
			Basis: v1.ContractBasis(tr.Basis), Reason: tr.Reason,
		})
		prev = tr.Tier
	}
	return out
}

// configTimeline is the timeline the collector filters by: the ledger's, plus the lowerings
// enforced locally that the receiver has not recorded yet (never a raise: that waits for the
// receiver).
func (st *reconcileState) configTimeline() consentv1.Timeline {
	// No more of the ledger than the copy in status keeps (before it, Off): written from the
	// record after a read-back or from the copy, the configuration is the same, and the
	// collector is not rolled for nothing.
	t := st.timeline.Tail(MaxConsentHistory)
	return append(t[:len(t):len(t)], st.pending...)
}

// enforceDowngrade runs before every step that could stall (the receiver, the pseudonym key,
// credentials): when the decided tier is below what a collector may be running, the collector
// is lowered now. Off stops it, judged from a live read so that a Deployment whose labels were
// stripped is still found; CriticalOnly rewrites the configuration the collector re-reads before
// every batch and rolls the Deployment to it, and if no lowered configuration can be written
// the collector is stopped instead.
func (r *TelemetryPolicyReconciler) enforceDowngrade(ctx context.Context, st *reconcileState) error {
	p := st.policy
	if !st.mutate {
		r.forgetGuardSeen(client.ObjectKeyFromObject(p)) // suspended: nobody looks meanwhile
		return nil
	}
	if st.outside != nil {
		return nil // not onboarded: the collector is not the operator's to touch (holdOutside)
	}
	if st.intent == v1.TierOff {
		r.forgetGuardSeen(client.ObjectKeyFromObject(p))
		return r.stopCollector(ctx, st)
	}
	key := client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Deployment}
	dep := &appsv1.Deployment{}
	err := r.Get(ctx, key, dep)
	switch {
	case apierrors.IsNotFound(err):
		dep = nil
	case err != nil:
		return err
	}
	mayRun := p.Status.EffectiveTier
	switch {
	case mayRun != "":
		r.forgetGuardSeen(client.ObjectKeyFromObject(p))
		if dep == nil && mayRun != v1.TierOff {
			// A collector runs, but the cache does not show it: its labels may have been
			// stripped, and its configuration's with them. Look.
			mayRun = v1.TierEventLevel
		}
	case !r.guardSeen(p, st.intent) || dep == nil:
		// Never enforced yet, and not seen live by this process at the decided tier: assume
		// the worst. Once a live read below found no collector, or found it at or below that
		// tier and rolled out, the cache is trusted as it is for an enforced tier, as long as
		// it shows the collector: a policy's second reconcile (its collector rolled out, not
		// yet Synced) reads nothing live.
		mayRun = v1.TierEventLevel
	}
	if dep != nil && templateTier(dep).Rank() > mayRun.Rank() {
		mayRun = templateTier(dep)
	}
	if t := r.configuredTier(ctx, p, dep != nil); t.Rank() > mayRun.Rank() {
		mayRun = t // the configuration the collector obeys, whatever its Deployment says
	}
	if st.intent.Rank() >= mayRun.Rank() {
		st.deployment, st.deploymentObserved = dep, true
		return nil
	}
	// A downgrade: judge from live reads, the cache may not see what runs.
	dep = &appsv1.Deployment{}
	switch err := r.APIReader.Get(ctx, key, dep); {
	case apierrors.IsNotFound(err):
		dep = nil
	case err != nil:
		return err
	}
	foundLive := dep != nil
	if dep != nil && mayTakeOver(dep, p) != nil {
		dep = nil // not ours (one of ours whose owner reference was stripped is lowered below)
	}
	lowered, err := r.lowerConfig(ctx, st, st.intent, foundLive)
	var why error
	if isNameTaken(err) || foundLive && refused(err) {
		// The configuration of a running collector cannot be written (another's name, or the
		// API server refuses the write: a policy engine, a quota, validation): stop the
		// collector instead. With none running there is nothing to stop: the error stands.
		why, lowered, err = err, false, nil
	}
	if err != nil {
		return err
	}
	if lowered && st.readBackDue {
		st.loweredBeforeReadBack = &foundLive
	}
	if !lowered {
		log.FromContext(ctx).Info("no lowered configuration can be written; stopping the collector instead", "tier", st.intent, "reason", fmt.Sprint(why))
		if why != nil {
			r.event(p, corev1.EventTypeWarning, "CollectorStopped", "EnforceTier", "the collector's configuration could not be lowered to %s (%v): the collector is stopped instead", st.intent, why)
		}
		return r.stopCollector(ctx, st)
	}
	st.deployment, st.deploymentObserved = dep, true
	if dep == nil || templateTier(dep).Rank() <= st.intent.Rank() && dep.Spec.Template.Annotations[resources.AnnotationConfigHash] == st.configHash {
		// Seen live: no collector, or one at the tier and configuration decided. Only a
		// rolled-out one counts (old pods may still run an earlier template), and never one
		// merely written below: a write judged against a stale cache may have changed nothing.
		if !foundLive || dep != nil && noOldPods(dep) {
			r.markGuardSeen(p, st.intent)
		}
		return nil
	}
	log.FromContext(ctx).Info("lowering the running collector ahead of everything else", "tier", st.intent, "from", templateTier(dep))
	if p.Spec.Source == nil {
		return r.stopCollector(ctx, st)
	}
	// Nor an image it does not allow: the running one is kept.
	shape := p
	if !r.imageAllowed(p) {
		shape = p.DeepCopy()
		shape.Spec.Collector.Image = "" // the default, unless the running one was allowed
		if cs := dep.Spec.Template.Spec.Containers; len(cs) > 0 && (cs[0].Image == r.Options.CollectorImage || r.Options.Images.Allows(cs[0].Image)) {
			shape.Spec.Collector.Image = cs[0].Image
		}
	}
	desired := resources.Deployment(shape, r.Options.CollectorImage, st.configHash, st.intent)
	// Judged against the live read, not the cache: a cache that lags the collector's raise
	// would find nothing to lower. A copy: st.deployment must keep showing what runs if the
	// update is refused.
	out, err := ensureOwnedFrom(ctx, r, p, desired, deploymentKind, dep.DeepCopy(), nil)
	if err != nil {
		return err
	}
	st.deployment = out
	return nil
}

// refused reports whether err is the API server refusing a write for good (forbidden, invalid,
// or turned down by admission), rather than a conflict or an outage worth retrying.
func refused(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)
}

// guardSeen reports whether this process's downgrade guard read p's collector live (since p was
// created, as the UID tells) and found none, or found it rolled out at tier (see
// enforceDowngrade). A mark made at another tier is dropped: after a raise the operator itself
// rolls the collector above it.
func (r *TelemetryPolicyReconciler) guardSeen(p *v1.TelemetryPolicy, tier v1.ConsentTier) bool {
	r.guardMu.Lock()
	defer r.guardMu.Unlock()
	key := client.ObjectKeyFromObject(p)
	m, ok := r.guardLive[key]
	if ok && (m.uid != p.UID || m.tier != tier) {
		delete(r.guardLive, key)
		return false
	}
	return ok
}

func (r *TelemetryPolicyReconciler) markGuardSeen(p *v1.TelemetryPolicy, tier v1.ConsentTier) {
	if p.Status.EffectiveTier != "" {
		return // the cache is trusted for an enforced tier anyway
	}
	r.guardMu.Lock()
	defer r.guardMu.Unlock()
	if r.guardLive == nil {
		r.guardLive = map[client.ObjectKey]guardMark{}
	}
	r.guardLive[client.ObjectKeyFromObject(p)] = guardMark{uid: p.UID, tier: tier}
}

// guardMark is a never-enforced policy's collector as this process's downgrade guard saw it.
type guardMark struct {
	uid  types.UID
	tier v1.ConsentTier
}

func (r *TelemetryPolicyReconciler) forgetGuardSeen(key client.ObjectKey) {
	r.guardMu.Lock()
	defer r.guardMu.Unlock()
	delete(r.guardLive, key)
}

// configuredTier is the tier in the collector's configuration ConfigMap (from the cache; Off
// when there is none, EventLevel when it cannot be read). With the collector's Deployment in the
// cache (collector), a configuration missing from it is looked for on the API server: the
// configuration is written before the Deployment, so its absence from the label-filtered cache
// may be a configuration whose labels were stripped, which the collector still obeys.
func (r *TelemetryPolicyReconciler) configuredTier(ctx context.Context, p *v1.TelemetryPolicy, collector bool) v1.ConsentTier {
	cm := &corev1.ConfigMap{}
	key := client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Config}
	err := r.Get(ctx, key, cm)
	if apierrors.IsNotFound(err) && collector {
		err = r.APIReader.Get(ctx, key, cm)
	}
	switch {
	case apierrors.IsNotFound(err):
		return v1.TierOff
	case err != nil:
		return v1.TierEventLevel
	}
	c, err := collectorconfig.Parse(strings.NewReader(cm.Data[resources.ConfigKey]))
	if err != nil {
		return v1.TierEventLevel
	}
	return c.Tier
}

// lowerConfig writes the collector configuration at tier (below what runs). It is rendered
// from the policy; when the policy cannot be rendered (an invalid spec) or names an endpoint the
// manager does not allow, the configuration the collector runs is kept and only its tier and
// timeline are lowered. It reports false when
// neither works.
func (r *TelemetryPolicyReconciler) lowerConfig(ctx context.Context, st *reconcileState, tier v1.ConsentTier, live bool) (bool, error) {
	p := st.policy
	key := client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Config}
	// A collector runs: judge its configuration as the API server holds it, not as a cache
	// that may lag a raise shows it (a new policy, with no collector yet, creates it first).
	cm := &corev1.ConfigMap{}
	var readErr error
	if live {
		if readErr = r.APIReader.Get(ctx, key, cm); readErr != nil && !apierrors.IsNotFound(readErr) {
			return false, readErr
		}
	}
	timeline := st.configTimeline()
	if live && readErr == nil && st.readBackDue {
		// Planned from the copy in status alone, which may lag the receiver's record (a status
		// write lost): the running collector keeps every restriction its configuration holds
		// until the record is read back.
		if running, err := collectorconfig.Parse(strings.NewReader(cm.Data[resources.ConfigKey])); err == nil {
			timeline = lowest(timeline, running.Consent)
		}
	}
	rendered, err := collectorconfig.Render(resources.CollectorConfig(p, tier, timeline))
	if err == nil && !r.endpointAllowed(p) {
		// A downgrade is enforced before the allow-lists are judged: it must never put a
		// receiver the manager does not allow into the running configuration.
		err = errors.New("the policy's export endpoint is not allowed")
	}
	if err != nil {
		if !live {
			readErr = r.APIReader.Get(ctx, key, cm)
		}
		if readErr != nil {
			return false, client.IgnoreNotFound(readErr)
		}
		running, err := collectorconfig.Parse(strings.NewReader(cm.Data[resources.ConfigKey]))
		if err != nil {
			return false, nil
		}
		lowered := resources.CollectorConfig(p, tier, timeline)
		running.Tier, running.Consent = tier, lowered.Consent
		if rendered, err = collectorconfig.Render(*running); err != nil {
			return false, nil
		}
	}
	st.configHash = resources.ConfigHash(rendered)
	desired := resources.ConfigMap(p, rendered)
	if !live {
		_, err := ensureOwned(ctx, r, p, desired, configMapKind)
		return err == nil, err
	}
	if _, err := ensureOwnedFrom(ctx, r, p, desired, configMapKind, cm, readErr); err != nil {
		return false, err
	}
	return true, nil
}

// lowest is the timeline whose tier at every moment is the lower of a's and b's (only times
// and tiers: what a collector's configuration holds). When that is a's everywhere, it is a
// itself: the configuration, and its hash, do not change for nothing.
func lowest(a, b consentv1.Timeline) consentv1.Timeline {
	// (Untils carried out first: the tiers change at each, and the result holds none.)
	orig := a
	a, b = a.Effective(), b.Effective()
	var at []time.Time
	for _, tr := range slices.Concat(a, b) {
		at = append(at, tr.At)
	}
	slices.SortFunc(at, func(x, y time.Time) int { return x.Compare(y) })
	at = slices.CompactFunc(at, func(x, y time.Time) bool { return x.Equal(y) })
	var out consentv1.Timeline
	for _, t := range at {
		tier := a.TierAt(t)
		if tb := b.TierAt(t); tb.Rank() < tier.Rank() {
			tier = tb
		}
		if len(out) == 0 && tier == consentv1.TierOff || len(out) > 0 && out[len(out)-1].Tier == tier {
			continue // Off before the first transition anyway; no change
		}
		tr := consentv1.Transition{At: t, Tier: tier}
		// What the receiver recorded stays marked so, whichever timeline knows it (the record is
		// append-only, so a mark never turns false): the collector holds back aggregates of days
		// only an unrecorded lowering lets publish (the receiver would refuse them), and a
		// timeline left without any mark would be taken as recorded whole.
		for _, from := range []consentv1.Timeline{a, b} {
			if i := slices.IndexFunc(from, func(x consentv1.Transition) bool { return x.At.Equal(t) && x.Tier == tier }); i >= 0 && tr.RecordedAt == nil {
				tr.RecordedAt = from[i].RecordedAt
			}
		}
		out = append(out, tr)
	}
	for _, t := range at {
		if out.TierAt(t) != a.TierAt(t) {
			return out
		}
	}
	return orig
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
	rendered, err := collectorconfig.Render(resources.CollectorConfig(p, tier, st.configTimeline()))
	if err != nil {
		st.stall(ReasonInvalidSpec, err.Error())
		return nil
	}
	st.configHash = resources.ConfigHash(rendered)
	_, err = ensureOwned(ctx, r, p, resources.ConfigMap(p, rendered), configMapKind)
	return err
}

// stopCollector makes sure no collector runs: an Off configuration first (a collector still
// running re-reads it before every batch and stops sending), then the Deployment deleted in the
// foreground, found by a live read; once it is gone, its credentials and RBAC are removed.
func (r *TelemetryPolicyReconciler) stopCollector(ctx context.Context, st *reconcileState) error {
	p := st.policy
	st.loweredBeforeReadBack = nil // stopped: the Off configuration stands
	names := resources.NamesFor(p.Name)
	cm := &corev1.ConfigMap{}
	var configErr error
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: names.Config}, cm); {
	case err == nil:
		// A ConfigMap of that name that is not the policy's is left alone (it configures no
		// collector of this policy); the Deployment is stopped all the same, as it is when
		// the Off configuration cannot be written (the step still fails, and is retried).
		if err := r.writeConfig(ctx, st, v1.TierOff); err != nil && !isNameTaken(err) {
			configErr = err
		}
	case !apierrors.IsNotFound(err):
		configErr = err
	}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.Deployment}}
	present, err := deleteOwned(ctx, r, r.APIReader, p, dep, client.PropagationPolicy(metav1.DeletePropagationForeground))
	if errors.Is(err, errReplaced) {
		err, st.replaced = nil, true // present: looked at again below
	}
	if err != nil || configErr != nil {
		return errors.Join(configErr, err)
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
	r.forgetCollectorRBAC(client.ObjectKeyFromObject(p)) // deleted below: due again when the collector returns
	for _, obj := range []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.Credentials}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.RoleBinding}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.Role}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: names.ServiceAccount}},
	} {
		switch _, err := deleteOwned(ctx, r, r.APIReader, p, obj); {
		case errors.Is(err, errReplaced):
			st.replaced = true
			st.requeueIn(2*time.Second, r.Clock.Now())
		case err != nil:
			return err
		}
	}
	if p.DeletionTimestamp == nil && !st.replaced {
		p.Status.Credentials = nil
		r.Metrics.forgetCredentials(p.Namespace, p.Name)
		setCondition(p, v1.ConditionCredentialsReady, metav1.ConditionTrue, ReasonCredentialsOff, "no collector runs: no transport credentials are needed and none exist")
	}
	return nil
}

// syncLedger records the pending lowerings (in order, each dated when it happened) and then the
// planned raise or first record at the receiver, and learns the tier the ledger records in
// force. The collector then runs at no more than that: a raise waits for the receiver, a
// lowering never does (it was enforced in enforceDowngrade).
func (r *TelemetryPolicyReconciler) syncLedger(ctx context.Context, st *reconcileState) error {
	p := st.policy
	if err := r.replan(ctx, st); err != nil {
		return err
	}
	defer func() { p.Status.PendingConsentChanges = pendingOf(st.timeline, st.pending) }()
	if !st.mutate {
		// Suspended: nothing is raised or changed, but a withdrawal is always recorded, and a
		// record another policy claimed meanwhile stops the collector as it would unsuspended.
		st.want = nil
		r.flushLedger(ctx, st)
		if st.ledgerErr == nil {
			r.forgetNotReserved(client.ObjectKeyFromObject(p)) // its own record: no longer waiting
		}
		st.tier = p.Status.EffectiveTier
		if errors.Is(st.ledgerErr, ledger.ErrOwnedElsewhere) {
			st.tier = v1.TierOff
			return r.holdOwnedElsewhere(ctx, st)
		}
		if st.claim {
			// Released while suspended, and no write of this reconcile claimed it back: what
			// the collector runs under is no longer this policy's record.
			st.tier = v1.TierOff
			return r.holdReleased(ctx, st)
		}
		if st.outside == nil {
			return r.narrowSuspendedConsent(ctx, st)
		}
		return nil
	}
	defer func() { st.tier = st.runnableTier(r.Clock.Now()) }()
	if st.outside != nil {
		// Outside the onboarded namespaces only withdrawals are recorded: they travel as pending
		// lowerings; a planned transition there is a raise, a first record or a claim.
		st.want = nil
		if st.claim {
			return nil // the record is no longer this policy's: nothing is recorded for it from here
		}
	}
	r.flushLedger(ctx, st)
	if st.ledgerKnown && len(st.timeline) > 0 {
		st.recorded = v1.ConsentTier(st.timeline.CurrentAt(r.Clock.Now()))
	}
	if st.ledgerErr == nil {
		r.forgetNotReserved(client.ObjectKeyFromObject(p)) // claimed, or recorded: no longer waiting
	}
	switch err := st.ledgerErr; {
	case err == nil && len(st.timeline) == 0:
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionUnknown, ReasonProgressing, "the receiver's consent ledger holds no record yet")
	case err == nil:
		msg := recordedMessage(st.timeline)
		if st.verifyErr != nil {
			msg += fmt.Sprintf("; reading the record back to compare it with this copy failed (%v), retrying", st.verifyErr)
		}
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionTrue, ReasonRecorded, msg)
	case errors.Is(err, ledger.ErrOwnedElsewhere):
		if err := r.holdOwnedElsewhere(ctx, st); err != nil {
			return err
		}
	case err != nil && st.claim && len(st.timeline) > 0:
		// The record has no owner and this policy's claim was not recorded (unreachable,
		// refused, or computed from a stale copy): held as released, so that a reconcile
		// reading nothing (the receiver gone) runs nothing from the copy in status; the claim
		// is tried again (at once after a stale copy, else at the ledger's interval).
		if err := r.holdReleased(ctx, st); err != nil {
			return err
		}
		if errors.Is(err, ledger.ErrStale) {
			st.requeueIn(100*time.Millisecond, r.Clock.Now())
		} else {
			st.requeueIn(r.ledgerRetry(), r.Clock.Now())
		}
	case errors.Is(err, ledger.ErrStale):
		// This reconcile worked from an outdated copy (the cache lagging the operator's own
		// last update): nothing was applied; read the record again and start over.
		st.requeueIn(100*time.Millisecond, r.Clock.Now())
	case errors.Is(err, ledger.ErrUnavailable):
		msg := fmt.Sprintf("the receiver's consent ledger is unreachable (%v); ", err)
		if len(st.pending) > 0 {
			msg += fmt.Sprintf("the collector already runs at most %s; the receiver will record the change, dated %s, when reachable",
				st.pending[len(st.pending)-1].Tier, st.pending[0].At.UTC().Format(time.RFC3339))
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
	if live := st.loweredBeforeReadBack; live != nil && st.planned && st.verifyErr == nil && !st.ownedElsewhere {
		// The collector was lowered from the copy in status, which may lag the record; now
		// that the record is read, its configuration is written from it, so that a later
		// stall does not leave the copy's timeline in force (unchanged, nothing is written).
		if _, err := r.lowerConfig(ctx, st, st.runnableTier(r.Clock.Now()), *live); err != nil {
			return err
		}
	}
	return nil
}

// recordedMessage says what the receiver's record holds in force (timeline is not empty).
func recordedMessage(timeline consentv1.Timeline) string {
	last := timeline[len(timeline)-1]
	return fmt.Sprintf("the receiver's consent ledger records %s in force since %s", last.Tier, last.At.UTC().Format(time.RFC3339))
}

// heldOwnedElsewhere reports whether the policy's last reconcile found its instance's record
// another policy's, or (suspended) nobody's: either way not this policy's to run from until it
// is read again.
func heldOwnedElsewhere(p *v1.TelemetryPolicy) bool {
	c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionConsentRecorded)
	return c != nil && (c.Reason == ReasonOwnedElsewhere || c.Reason == ReasonReleased)
}

// holdOwnedElsewhere stops the collector of a policy whose instance record another policy
// owns at the receiver (its data would be taken under that policy's consent) and says so.
func (r *TelemetryPolicyReconciler) holdOwnedElsewhere(ctx context.Context, st *reconcileState) error {
	p := st.policy
	if c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionConsentRecorded); errors.Is(st.ledgerErr, errAsLastRead) && c != nil && c.Reason == ReasonReleased {
		st.requeueIn(r.ledgerRetry(), r.Clock.Now()) // read again soon: resumed, it claims the record
		return r.holdReleased(ctx, st)
	}
	r.forgetVerified(client.ObjectKeyFromObject(p)) // read the record again before trusting any copy
	st.ownedElsewhere = true
	st.recorded = v1.TierOff // nothing is recorded on this policy's behalf
	msg := fmt.Sprintf("instance %q is claimed by another TelemetryPolicy, or not open to this one, at the receiver (%v). Nothing is collected for this policy; "+
		"check spec.instanceID, or have the receiver's operators run `receiver consent show|release --instance %s`", p.Spec.InstanceID, st.ledgerErr, p.Spec.InstanceID)
	key, now := client.ObjectKeyFromObject(p), r.Clock.Now()
	switch notReserved := errors.Is(st.ledgerErr, ledger.ErrNotReserved); {
	case notReserved || errors.Is(st.ledgerErr, errAsLastRead) && r.waitingForReservation(key, p.UID):
		msg = fmt.Sprintf("instance %q is not reserved for this namespace, and the receiver requires it. Nothing is collected for this policy; "+
			"have the receiver's operators run `receiver consent reserve --instance %s --to %s/%s` (asked again every --ledger-retry at first, "+
			"less often the longer it waits)", p.Spec.InstanceID, p.Spec.InstanceID, r.Ledger.Cluster(), p.Namespace)
		if !notReserved {
			msg += fmt.Sprintf("; the receiver's answer cannot be read again now (%v)", st.ledgerErr)
		}
		st.requeueIn(r.reservationBackoff(r.notReservedSince(key, p.UID, now), now), now)
	case !errors.Is(st.ledgerErr, errAsLastRead):
		r.forgetNotReserved(key) // answered otherwise: a later NotReserved starts a new wait
	}
	setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionFalse, ReasonOwnedElsewhere, msg)
	if st.outside == nil {
		if err := r.stopCollector(ctx, st); err != nil {
			return err
		}
	}
	st.stall(ReasonOwnedElsewhere, msg)
	return nil
}

// holdReleased stops the collector of a policy whose instance record nobody owns (its operators
// released it, or handed it back to this namespace) and whose claim is not recorded: a suspended
// policy claims nothing but a withdrawal, and a claim can fail to reach the receiver. It sends
// nothing until its claim is recorded, or another policy's claim holds it as owned elsewhere.
func (r *TelemetryPolicyReconciler) holdReleased(ctx context.Context, st *reconcileState) error {
	p := st.policy
	r.forgetVerified(client.ObjectKeyFromObject(p)) // read the record again at every reconcile
	st.ownedElsewhere = true                        // not this policy's: nothing runs, nothing is erased
	st.recorded = v1.TierOff
	msg := fmt.Sprintf("instance %q's consent record at the receiver is owned by no TelemetryPolicy (released by the receiver's operators, or by a deleted policy) "+
		"and this policy's claim is not recorded: nothing is collected until it is", p.Spec.InstanceID)
	if p.Spec.Suspend {
		msg += "; a suspended policy claims nothing: set spec.suspend to false to claim it (if it was released to this namespace)"
	}
	if st.ledgerErr != nil {
		msg += fmt.Sprintf(" (%v)", st.ledgerErr)
	}
	setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionFalse, ReasonReleased, msg)
	if st.outside != nil {
		return nil
	}
	return r.stopCollector(ctx, st)
}

// narrowSuspendedConsent closes, in a suspended policy's running collector configuration, the
// periods the ledger and the withdrawals pending for it close (a withdrawal the watch saw,
// granted again since, is recorded while suspended): its consent windows only, never opened
// wider, and nothing else of it changed while suspended (the Deployment waits for resume; the
// collector re-reads the file before every batch). Judged at every suspended reconcile, so a
// write that failed is tried again.
func (r *TelemetryPolicyReconciler) narrowSuspendedConsent(ctx context.Context, st *reconcileState) error {
	p := st.policy
	if !st.ledgerKnown {
		return nil
	}
	// Read from the API server, not the label-filtered cache: a configuration whose labels
	// were stripped is still what the collector runs from.
	cm := &corev1.ConfigMap{}
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Config}, cm); {
	case apierrors.IsNotFound(err):
		return nil // nothing runs from it
	case err != nil:
		return err
	}
	running, err := collectorconfig.Parse(strings.NewReader(cm.Data[resources.ConfigKey]))
	if err != nil {
		return nil // the collector sends nothing under a file it cannot read
	}
	rendered, changed := narrowConfig(*running, st.configTimeline())
	if !changed {
		return nil
	}
	// Taken over as the other steps would (its owner reference or labels put back), unless it
	// is another's object of that name: that configures no collector of this policy.
	if _, err = ensureOwnedFrom(ctx, r, p, resources.ConfigMap(p, rendered), configMapKind, cm, nil); isNameTaken(err) {
		return nil
	}
	return err
}

// narrowConfig returns running with its consent windows narrowed to timeline's, and whether
// that changes them. Only the newest collectorconfig.MaxConsentTransitions are kept (older ones
// left out count as Off); should the result still not render, the collector is configured Off
// rather than left sending under the wider windows.
func narrowConfig(running collectorconfig.Config, timeline consentv1.Timeline) ([]byte, bool) {
	if running.Tier == v1.TierOff {
		return nil, false
	}
	narrowed := lowest(running.Consent, timeline).Tail(collectorconfig.MaxConsentTransitions)
	if slices.EqualFunc(narrowed, running.Consent, func(a, b consentv1.Transition) bool { return a.At.Equal(b.At) && a.Tier == b.Tier }) {
		return nil, false
	}
	running.Consent = narrowed
	if rendered, err := collectorconfig.Render(running); err == nil {
		return rendered, true
	}
	running.Tier, running.Consent = v1.TierOff, nil
	rendered, err := collectorconfig.Render(running)
	return rendered, err == nil
}

// recordRequest asks for tr on top of the ledger as this reconcile knows it: if the receiver's
// record has moved on (this copy is stale), it refuses, and the record is read again.
func (r *TelemetryPolicyReconciler) recordRequest(st *reconcileState, tr consentv1.Transition) consentv1.RecordRequest {
	p := st.policy
	req := consentv1.RecordRequest{InstanceID: p.Spec.InstanceID, Owner: r.owner(p), Transition: tr}
	if n := len(st.timeline); n > 0 {
		head := st.timeline[n-1]
		req.ExpectedHead = &consentv1.Transition{At: head.At, Tier: head.Tier, Until: head.Until}
	}
	return req
}

// flushLedger records the pending lowerings, oldest first, then the planned transition, and
// stops at the first failure (st.ledgerErr).
func (r *TelemetryPolicyReconciler) flushLedger(ctx context.Context, st *reconcileState) {
	p := st.policy
	defer func() {
		if errors.Is(st.ledgerErr, ledger.ErrStale) {
			r.forgetVerified(client.ObjectKeyFromObject(p)) // read the record again next time
		}
	}()
	writtenFrom := r.Clock.Now() // the record as the writes below return it is dated no later
	if len(st.pending) > 0 || st.want != nil {
		r.notePlanRecorded(p, writtenFrom)
	} else if st.addUID && st.ledgerErr == nil {
		defer r.addUID(ctx, st) // (any write below adds it too)
	}
	for st.ledgerErr == nil && len(st.pending) > 0 {
		state, err := r.Ledger.Record(ctx, r.recordRequest(st, st.pending[0]))
		if err != nil {
			st.ledgerErr = err
			return
		}
		if !r.adoptLedger(ctx, st, state) {
			return
		}
		st.pending = st.pending[1:]
	}
	if st.ledgerErr == nil && len(st.pending) == 0 && st.recordLost && !st.claim {
		// (A record the receiver lost whole is verified only once the claim is recorded.)
		st.recordLost = false
		r.markVerified(p, writtenFrom)
	}
	if st.ledgerErr == nil && st.want != nil {
		state, err := r.Ledger.Record(ctx, r.recordRequest(st, *st.want))
		if err != nil {
			st.ledgerErr = err
		} else if r.adoptLedger(ctx, st, state) {
			st.want = nil
		}
	}
}

// addUID records the tier in force again, which the receiver appends nothing for, so that it
// adds this policy's UID to a record an earlier operator claimed without one: until then it
// matches certificates by name, and one of a deleted policy of the same name would be served.
// Best effort: a failure changes nothing in this reconcile (the record stands, and so does the
// copy); the record is read back, and the write tried again, at the ledger's retry interval.
// Only an unsuspended policy in an onboarded namespace asks (see readBack).
func (r *TelemetryPolicyReconciler) addUID(ctx context.Context, st *reconcileState) {
	p := st.policy
	st.addUID = false
	if st.ledgerErr != nil || len(st.timeline) == 0 {
		return
	}
	last := st.timeline[len(st.timeline)-1]
	tr := consentv1.Transition{At: last.At, Tier: last.Tier, Reason: last.Reason, Basis: last.Basis, Until: last.Until}
	if st.timeline.CurrentAt(r.Clock.Now()) != last.Tier {
		// A trial past its until: CriticalOnly is in force, and asking for it records the
		// expiry at the until (which the plan would have asked for anyway).
		tr = consentv1.Transition{At: *last.Until, Tier: consentv1.TierCriticalOnly, Reason: v1.ReasonTrialExpired, Basis: last.Basis}
	}
	state, err := r.Ledger.Record(ctx, r.recordRequest(st, tr))
	if err != nil {
		log.FromContext(ctx).Info("could not add this policy's UID to its consent record; reading it back again", "error", err.Error())
		r.forgetVerified(client.ObjectKeyFromObject(p))
		st.requeueIn(r.ledgerRetry(), r.Clock.Now())
		return
	}
	if state.Owner.UID != string(p.UID) {
		return // a receiver that keeps no UIDs: asked again at the next read-back
	}
	log.FromContext(ctx).Info("added this policy's UID to its consent record, which an earlier operator claimed without it")
	st.afterLedger = append(st.afterLedger, func() {
		r.event(p, corev1.EventTypeNormal, "ConsentRecordUIDAdded", "VerifyConsent",
			"the receiver's consent record named this policy without its UID (claimed by an earlier operator, or by a deleted policy of the same name); its UID was added, and certificates of any other policy of this name are refused from now on")
	})
}

// runnableTier is the most the collector may run with: the decided tier, but no more than the
// ledger records, nor than a lowering it has yet to record (nothing at all while the ledger
// knows nothing or another policy owns it).
func (st *reconcileState) runnableTier(now time.Time) v1.ConsentTier {
	local := st.localTimeline()
	// A record nobody owned when read is not this policy's until a write of this reconcile
	// claimed it (adoptLedger): a claim that failed, even as unavailable, runs nothing.
	if st.ownedElsewhere || st.claim || !st.ledgerKnown || len(local) == 0 {
		return v1.TierOff
	}
	return consent.Lower(st.intent, v1.ConsentTier(local.CurrentAt(now)))
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
	st.claim = false // written: the record is this policy's
	p.Status.ConsentHistory = historyOf(state.Timeline)
	if heldOwnedElsewhere(p) {
		// The hold of an earlier read no longer stands (a suspended policy's withdrawal claimed
		// the record): left in place, it would keep the policy from its own record later.
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionTrue, ReasonRecorded, recordedMessage(state.Timeline))
	}
	if state.EventsRemoved > 0 {
		n := state.EventsRemoved
		st.afterLedger = append(st.afterLedger, func() {
			r.event(p, corev1.EventTypeNormal, "EventsRemoved", "RecordConsent",
				"the receiver removed %d stored events recorded after consent was withdrawn", n)
		})
		log.FromContext(ctx).Info("the receiver removed events recorded after consent was withdrawn", "count", n)
	}
	return true
}

// defaultLedgerResync is how often the operator reads the receiver's record of each instance to
// compare it with its copy.
const defaultLedgerResync = 10 * time.Minute

// ledgerResync is how often a policy's record is verified at the receiver.
func (r *TelemetryPolicyReconciler) ledgerResync() time.Duration {
	if r.Options.LedgerResync > 0 {
		return r.Options.LedgerResync
	}
	return defaultLedgerResync
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
	case prev != "" && tier.Rank() < prev.Rank() && d == nil:
		// Nothing runs at all (a downgrade that could not be configured stopped the collector).
		return tier
	case prev != "" && tier.Rank() < prev.Rank() && noOldPods(d) && templateTier(d).Rank() <= tier.Rank() &&
		(d.Status.TerminatingReplicas != nil || d.Status.UpdatedReplicas >= 1):
		// Where the API server does not count terminating pods (before Kubernetes 1.33, or
		// with the feature off), a pod of the current template says the old one is gone: the
		// collector's Recreate strategy creates it only then, running or not. (Synced needs no
		// such check: it waits for that pod to be available.)
		return tier
	}
	return prev
}

// noOldPods reports whether the Deployment controller has observed the current template and no
// pod of an older one is left: none counted, and none terminating (status.replicas leaves out a
// pod being deleted, which runs, and may send, until it exits).
func noOldPods(d *appsv1.Deployment) bool {
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.Replicas == s.UpdatedReplicas &&
		(s.TerminatingReplicas == nil || *s.TerminatingReplicas == 0)
}

// finalize runs for a policy being deleted: the collector is stopped, the instance's consent
// is recorded as Off from the deletion time and the policy's ownership of the record released,
// and only then the finalizer removed. Stored data is kept (erase it first with spec.erasure).
// Should the receiver stay unreachable, the finalizer stays too, unless nothing was ever
// recorded for the policy and no collector credentials exist (nothing can have been sent);
// removing it by hand skips the ledger and leaves the record as it was.
func (r *TelemetryPolicyReconciler) finalize(ctx context.Context, p *v1.TelemetryPolicy, outside *tenants.Status) (time.Duration, error) {
	defer r.forgetVerified(client.ObjectKeyFromObject(p))
	// The cache can still hold a policy whose finalizer this process dropped a moment ago.
	// Finalizing that copy again would record its deletion once more, and the record claims the
	// instance for it: a release that then fails leaves the instance owned by a policy that no
	// longer exists, and a re-created policy stalled as owned elsewhere.
	if gone, err := r.finalized(ctx, p); gone || err != nil {
		return 0, err
	}
	st := &reconcileState{policy: p, mutate: true, intent: v1.TierOff, outside: outside}
	r.startLedger(st)
	if outside != nil && !everRecorded(p) && len(st.pending) == 0 {
		return 0, r.dropFinalizer(ctx, p) // nothing was ever recorded for it
	}
	// Outside the onboarded namespaces the collector cannot be stopped from here (its objects go
	// with the policy through their owner references); the deletion is still recorded as Off.
	if outside == nil {
		if err := r.stopCollector(ctx, st); err != nil {
			return 0, err
		}
		if st.replaced {
			// Something of ours was replaced while being deleted: judge it again before the
			// policy goes (one without an owner reference would outlive it).
			return 2 * time.Second, nil
		}
	}
	if err := r.planTransition(ctx, st); err != nil {
		return 0, err
	}
	if len(st.localTimeline()) == 0 {
		st.want = nil // never recorded: nothing to close, and no record to create
	}
	r.flushLedger(ctx, st)
	err := st.ledgerErr
	if err == nil || errors.Is(err, ledger.ErrUnknownInstance) {
		err = r.Ledger.Release(ctx, consentv1.ReleaseRequest{InstanceID: p.Spec.InstanceID, Owner: r.owner(p)})
	}
	switch {
	case errors.Is(err, ledger.ErrUnavailable) && len(p.Status.ConsentHistory) == 0 && len(p.Status.PendingConsentChanges) == 0 && !r.credentialsExist(ctx, p):
		// Never recorded and never given credentials: nothing can have been sent.
	case errors.Is(err, errAsLastRead):
		// Held as another's (or nobody's) as last read, and the record cannot be read now: it
		// may be this policy's again, so it waits to be closed like any other.
		r.event(p, corev1.EventTypeWarning, "ConsentCloseFailed", "DeletePolicy",
			"waiting to read the receiver's consent record before letting the policy go: %v", err)
		return r.ledgerRetry(), nil
	case err == nil, errors.Is(err, ledger.ErrOwnedElsewhere), errors.Is(err, ledger.ErrUnknownInstance):
		// Closed and released, or not ours to close.
	default:
		r.event(p, corev1.EventTypeWarning, "ConsentCloseFailed", "DeletePolicy",
			"waiting to record the deletion in the receiver's consent ledger before letting the policy go: %v", err)
		return r.ledgerRetry(), nil
	}
	log.FromContext(ctx).Info("consent closed at the receiver; releasing the policy", "tier", v1.TierOff)
	return 0, r.dropFinalizer(ctx, p)
}

// finalized reports whether the API server no longer holds the policy with its consent-ledger
// finalizer (deleted, re-created under a new UID, or let go already).
func (r *TelemetryPolicyReconciler) finalized(ctx context.Context, p *v1.TelemetryPolicy) (bool, error) {
	live := &v1.TelemetryPolicy{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(p), live); err != nil {
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	}
	return live.UID != p.UID || !controllerutil.ContainsFinalizer(live, v1.FinalizerConsentLedger), nil
}

// dropFinalizer removes the consent-ledger finalizer, letting the policy go.
func (r *TelemetryPolicyReconciler) dropFinalizer(ctx context.Context, p *v1.TelemetryPolicy) error {
	patch := client.MergeFromWithOptions(p.DeepCopy(), client.MergeFromWithOptimisticLock{})
	var kept []string
	for _, f := range p.Finalizers {
		if f != v1.FinalizerConsentLedger {
			kept = append(kept, f)
		}
	}
	p.Finalizers = kept
	if err := r.Patch(ctx, p, patch); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// credentialsExist reports whether the policy's collector credentials Secret exists (a live
// read: the cache may not see it).
func (r *TelemetryPolicyReconciler) credentialsExist(ctx context.Context, p *v1.TelemetryPolicy) bool {
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Credentials}, &corev1.Secret{})
	return !apierrors.IsNotFound(err)
}
