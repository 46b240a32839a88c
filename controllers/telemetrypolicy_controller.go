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
	"io"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/allowed"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/consent"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/readonce"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
)

// MaxConsentHistory bounds status.consentHistory; the oldest entries are dropped first.
const MaxConsentHistory = 20

// maxStateSize bounds how much of the collector-written state object is parsed.
const maxStateSize = 16 << 10

// Options are the manager-level settings the reconciler applies to every policy.
type Options struct {
	// CollectorImage is the collector image used unless a policy names one.
	CollectorImage string
	// MinCloudTermsVersion is the oldest Cloud Terms of Service version (YYYY-MM-DD) that allows
	// EventLevel; empty accepts any.
	MinCloudTermsVersion string
	// LedgerRetry is how soon a policy waiting on an unreachable receiver is tried again
	// (default 15s).
	LedgerRetry time.Duration
	// LedgerResync is how often each policy's record is read back from the receiver and
	// compared with the copy in status (default 10m).
	LedgerResync time.Duration
	// Images are the collector images a policy may name in spec.collector.image (CollectorImage
	// is always allowed); Endpoints the receivers it may name in spec.export.endpoint. A policy
	// naming anything else stalls and nothing is created for it: the collector runs with the
	// fleet certificate and the instance's pseudonym key.
	Images    allowed.Images
	Endpoints allowed.Endpoints
	// IssuerMinRemaining is the least life the fleet issuer must have left to issue from it
	// (default 24h). Closer to its end a certificate would expire with it and be due again at
	// once: the policy stalls instead (IssuerExpiring) and keeps the certificate it has.
	IssuerMinRemaining time.Duration
	// StartLease is the leader-election Lease as found at start (nil without leader election).
	// A withdrawal written while no operator watched is dated when the previous operator was
	// last alive, which the lease tells (see watchGap).
	StartLease *LeaseObservation
	// MaxConcurrentReconciles is how many policies are reconciled at once (default
	// DefaultMaxConcurrentReconciles). One policy is never reconciled twice at once.
	MaxConcurrentReconciles int
	// CollectorRBACResync is how often, at least, the collector's ServiceAccount, Role and
	// RoleBinding are read back and put in order (default DefaultCollectorRBACResync): they are
	// not watched (see collectorrbac.go).
	CollectorRBACResync time.Duration
	// TenantResync, if set, says the objects policies own are not watched (the manager's
	// --watch-tenant-namespaces=false): each policy is reconciled again every TenantResync to
	// put back what was edited by hand and fold its collector's progress into status, and sooner
	// (from 1 s, backing off) while it is not Ready. Zero: they are watched.
	TenantResync time.Duration
}

// DefaultMaxConcurrentReconciles reconciles sixteen policies at once: a reconcile spends most
// of its time waiting on the API server and the receiver's ledger, not on the CPU. Setting up
// a new policy waits longest on the collector's Role and RoleBinding: for a creator that may
// not escalate or bind, the API server first reads the bindings from its watch cache with a
// consistent read, which waits for etcd's next progress notification (100 ms in Kubernetes
// 1.37). On the 2-core machine of `make bench`, 200 new policies converged in 18.7 s with 4
// workers and 12.9 s with 16.
const DefaultMaxConcurrentReconciles = 16

// TelemetryPolicyReconciler turns each TelemetryPolicy into an enforced, observable collector.
type TelemetryPolicyReconciler struct {
	client.Client
	// APIReader reads directly from the API server, for objects the label-filtered cache cannot
	// see and to confirm a rotation is really due.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  recorder.EventRecorder
	Clock     clock.PassiveClock
	// Issuers holds the fleet issuer that signs collector client certificates, replaced when
	// the issuer Secret changes. Without it, Issuer is used; neither stalls every policy.
	Issuers *pki.Holder
	Issuer  *pki.Issuer
	Metrics *Metrics
	// Random is the entropy source for keys and serial numbers (nil: crypto/rand).
	Random io.Reader
	// Ledger is the receiver's consent ledger, where consent is recorded before it takes effect
	// and whose record outlives the policy.
	Ledger ConsentLedger
	// Tenants decides which namespaces the manager may work in; nil allows every namespace.
	Tenants Tenancy
	// IssuerChanged, if set, names policies to reconcile after the fleet issuer changed.
	IssuerChanged <-chan event.GenericEvent
	Options       Options

	verifiedMu sync.Mutex
	verified   map[client.ObjectKey]verification
	// seen: lowerings of the decided tier the policy watch saw, until a reconcile plans from
	// them (seenlowerings.go).
	seenMu   sync.Mutex
	seen     map[client.ObjectKey][]seenLowering
	seenSeq  uint64
	recorded map[client.ObjectKey]recordedFrom

	pollMu      sync.Mutex
	pollBackoff map[client.ObjectKey]pollState

	// notReserved: policies waiting for a reservation of their instance (notreserved.go).
	notReservedMu sync.Mutex
	notReserved   map[client.ObjectKey]notReservedHold

	rbacMu      sync.Mutex
	rbacChecked map[client.ObjectKey]rbacCheck

	// writes: each policy's last status write by this process (see statusWrite).
	writesMu sync.Mutex
	writes   map[client.ObjectKey]statusWrite

	// written: the collector Deployments this process wrote, as the API server stored them
	// (see deploymentEdited).
	writtenMu sync.Mutex
	written   map[client.ObjectKey]writtenDeployment

	// guardLive: policies never enforced whose collector this process's downgrade guard has
	// read live and found none, or found rolled out at the decided tier (see enforceDowngrade).
	guardMu   sync.Mutex
	guardLive map[client.ObjectKey]guardMark

	gapOnce      sync.Once
	runningSince time.Time
	downSince    *time.Time
}

// reconcileState carries what the steps of one reconcile learn and decide.
type reconcileState struct {
	policy   *v1.TelemetryPolicy
	decision consent.Decision
	// intent is the decided tier (while suspended: the tier in force, unless lower is decided).
	intent v1.ConsentTier
	// timeline is the consent ledger as known: the status copy, or the receiver's answer.
	timeline consentv1.Timeline
	// ledgerKnown: timeline reflects the receiver's record (possibly empty: no record yet).
	ledgerKnown bool
	// want is the transition to record, if the ledger does not record intent yet.
	want *consentv1.Transition
	// ledgerErr is the last error talking to the ledger in this reconcile.
	ledgerErr error
	// verifyErr: reading the receiver's record back failed; the copy in status stood in.
	verifyErr error
	// pending are lowerings enforced on the collector that the receiver has not recorded yet.
	pending consentv1.Timeline
	// planned: the ledger's state was known and what to change was decided.
	planned bool
	// readBackDue: the plan was made from the operator's copy alone, to lower the collector
	// before the receiver is asked; the ledger step reads the record back and plans again,
	// from beforeReadBack (the pending lowerings as they were before that plan).
	readBackDue    bool
	beforeReadBack consentv1.Timeline
	// loweredBeforeReadBack: the collector's configuration was lowered from that plan (with a
	// collector running, or not); once the record is read it is written from the record.
	loweredBeforeReadBack *bool
	// lowering: the withdrawal that plan added (dated), which the plan after the read-back
	// keeps the date of.
	lowering *consentv1.Transition
	// claim: the receiver's record has no owner; recording the tier in force claims it.
	claim bool
	// addUID: the receiver's record names this policy without its UID (claimed by an operator
	// that did not send UIDs); recording the tier in force adds it.
	addUID bool
	// recordLost: the receiver's record lacks transitions it acknowledged before; they are
	// being recorded again.
	recordLost bool
	// ownedElsewhere: another policy owns the instance's record (or, while suspended, nobody
	// does); nothing may run.
	ownedElsewhere bool
	// seenConsidered: the lowerings the watch saw (their seq) that this reconcile planned from.
	seenConsidered []uint64
	// outside: the policy's namespace is not onboarded (why, for its status).
	outside *tenants.Status
	// recordedBefore: the policy's consent was recorded or sent to the receiver before this
	// reconcile (judged from status as read, before any step ran).
	recordedBefore bool
	// recorded is the tier the ledger records in force ("" unknown).
	recorded v1.ConsentTier
	// tier is what the collector is configured for: no more than intent and recorded.
	tier       v1.ConsentTier
	mutate     bool // false while suspended (and no downgrade is pending)
	configHash string
	deployment *appsv1.Deployment
	// deploymentObserved: deployment (nil or not) reflects a read made in this reconcile.
	deploymentObserved bool
	// replaced: an owned object stopCollector judged was replaced before it could be deleted;
	// it is looked at again before anything is declared gone.
	replaced bool
	// synced: the Synced condition was computed in this reconcile, and is true.
	synced    bool
	requeueAt []time.Time
	stalled   struct{ reason, message string }
	// afterPatch runs once the status patch succeeded.
	afterPatch []func()
	// afterLedger announces what the receiver did to the instance's record (a lost record
	// recorded again, events removed); it runs once this reconcile's copy of the ledger is in
	// status, by the status patch or, after a conflict, by the ledger copy alone: the receiver
	// will not report it again.
	afterLedger []func()
}

func (st *reconcileState) requeueIn(d time.Duration, now time.Time) {
	st.requeueAt = append(st.requeueAt, now.Add(d))
}

func (st *reconcileState) stall(reason, message string) {
	st.stalled.reason, st.stalled.message = reason, message
}

func (st *reconcileState) requeue(t *time.Time) {
	if t != nil {
		st.requeueAt = append(st.requeueAt, *t)
	}
}

type step struct {
	name string
	run  func(context.Context, *reconcileState) error
	// thenLedger: should this step fail or stall, the consent-ledger step still runs before the
	// reconcile ends (a withdrawal reaches the receiver even if lowering the collector fails).
	thenLedger bool
}

// Reconcile runs the steps in order and patches status once at the end, only if it changed.
// The consent steps come first: a downgrade is enforced before anything that could stall or
// fail (the receiver, the pseudonym key, credentials), and an erasure request is carried out
// whatever the collector's state. Each object is read from the API server at most once until
// the reconcile writes it (readonce), with a Client and APIReader wrapped by readonce.
func (r *TelemetryPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	ctx, done := readonce.With(ctx)
	defer done()
	p := &v1.TelemetryPolicy{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		if apierrors.IsNotFound(err) {
			r.Metrics.Forget(req.NamespacedName)
			r.forgetVerified(req.NamespacedName)
			r.forgetCollectorRBAC(req.NamespacedName)
			r.forgetWritten(req.NamespacedName)
			r.forgetGuardSeen(req.NamespacedName)
			r.forgetPoll(req.NamespacedName)
			r.forgetNotReserved(req.NamespacedName)
			r.forgetWrites(req.NamespacedName)
			r.forgetPolicyLowerings(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if err := r.freshPolicy(ctx, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	logger := log.FromContext(ctx).WithValues("policy", p.Name, "namespace", p.Namespace, "instance", p.Spec.InstanceID)
	ctx = log.IntoContext(ctx, logger)
	outside, err := r.namespaceStatus(ctx, p)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !p.DeletionTimestamp.IsZero() {
		if !controllerutil.ContainsFinalizer(p, v1.FinalizerConsentLedger) {
			return ctrl.Result{}, nil // owned objects go with the policy through their owner references
		}
		after, err := r.finalize(ctx, p, outside)
		r.noteForbidden(p.Namespace, err)
		return ctrl.Result{RequeueAfter: after}, err
	}
	// A policy that never ran in an onboarded namespace gets no finalizer: nothing was recorded
	// for it that its deletion would have to close.
	if !controllerutil.ContainsFinalizer(p, v1.FinalizerConsentLedger) && (outside == nil || everRecorded(p)) {
		// Held until the instance's consent is closed at the receiver (see finalize).
		patch := client.MergeFromWithOptions(p.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(p, v1.FinalizerConsentLedger)
		if err := r.Patch(ctx, p, patch); err != nil {
			if apierrors.IsConflict(err) {
				return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
			}
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}

	orig := p.DeepCopy()
	st := &reconcileState{policy: p, mutate: true, outside: outside, recordedBefore: everRecorded(p)}
	defer func() {
		began := r.Clock.Now()
		err := r.summarizeAndPatch(ctx, orig, st, retErr)
		r.Metrics.StepDuration.WithLabelValues("status").Observe(r.Clock.Since(began).Seconds())
		if apierrors.IsConflict(err) && retErr == nil {
			// Our copy was stale; nothing was written. Start again from fresh state, quietly.
			result, retErr = ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
			return
		}
		if err != nil && retErr == nil {
			retErr = err
		}
		if retErr == nil {
			result = r.result(st)
		}
	}()

	// The collector is lowered before the receiver is asked anything, and the receiver is
	// asked even if lowering fails: neither waits on the other. A withdrawal reaches the
	// receiver even if lowering the collector fails, and the collector is lowered even if the
	// receiver is unreachable, never answers (each call waits for the client's timeout), or
	// refuses the record.
	steps := []step{
		{name: "namespace", run: r.checkNamespace},
		{name: "consent", run: r.reconcileConsent},
		{name: "enforce-downgrade", run: r.enforceDowngrade, thenLedger: true},
		{name: "consent-ledger", run: r.syncLedger},
		{name: "namespace-hold", run: r.holdOutside},
		{name: "allowed", run: r.checkAllowed},
		{name: "pseudonym-key", run: r.reconcilePseudonymKey},
		{name: "config", run: r.reconcileConfig},
		{name: "workload", run: r.reconcileWorkload},
		{name: "observe", run: r.observe},
	}
	var stepErr error
	ending := false // a thenLedger step failed or stalled: the next step is the last
	for _, s := range steps {
		began := r.Clock.Now()
		err := s.run(ctx, st)
		r.Metrics.StepDuration.WithLabelValues(s.name).Observe(r.Clock.Since(began).Seconds())
		if taken := (*nameTakenError)(nil); errors.As(err, &taken) {
			st.stall(ReasonNameTaken, taken.Error())
			st.requeueIn(nameTakenRetry, r.Clock.Now())
			err = nil
		}
		if err != nil {
			r.Metrics.ReconcileErrors.WithLabelValues(s.name).Inc()
			r.event(p, corev1.EventTypeWarning, "ReconcileFailed", s.name, "step %s failed: %v", s.name, err)
			if stepErr == nil {
				stepErr = fmt.Errorf("step %s: %w", s.name, err)
			}
		}
		if ending {
			break
		}
		if err != nil || st.stalled.reason != "" {
			if !s.thenLedger {
				break
			}
			ending = true
		}
	}
	if (!st.mutate || st.stalled.reason != "") && stepErr == nil {
		if err := r.repairIdentity(ctx, st); err != nil {
			r.Metrics.ReconcileErrors.WithLabelValues("credentials").Inc()
			stepErr = fmt.Errorf("step credentials: %w", err)
		}
	}
	// An erasure does not depend on the collector: a stalled or failed collector step, or
	// suspend, never holds it up. It needs the instance's record to be this policy's.
	if !st.ownedElsewhere && (st.outside == nil || st.recordedBefore && !st.claim) {
		if err := r.reconcileErasure(ctx, st); err != nil && stepErr == nil {
			r.Metrics.ReconcileErrors.WithLabelValues("erasure").Inc()
			stepErr = fmt.Errorf("step erasure: %w", err)
		}
	} else if e := p.Spec.Erasure; st.ownedElsewhere && e != nil && (p.Status.Erasure == nil || p.Status.Erasure.RequestID != e.RequestID || p.Status.Erasure.Phase == v1.ErasurePending) {
		// Not carried out, and nobody would say why: the receiver erases only for the owner.
		r.setErasurePending(st, e, "waiting for this policy to own the instance's record at the receiver (see the ConsentRecorded condition)")
	}
	r.noteForbidden(p.Namespace, stepErr)
	return ctrl.Result{}, stepErr
}

// reconcileConsent decides the tier the policy should run at, and reads the operator's copy of
// the consent ledger. Changes of the tier in force are announced when they are enforced (see
// summarizeAndPatch), not here.
func (r *TelemetryPolicyReconciler) reconcileConsent(ctx context.Context, st *reconcileState) error {
	p := st.policy
	now := r.Clock.Now()
	d := consent.Decide(p.Spec, r.Options.MinCloudTermsVersion, now)
	st.requeue(d.ReevaluateAt)
	r.startLedger(st)
	st.ledgerKnown = len(st.timeline) > 0
	st.decision = d
	setConsentEligibleCondition(p, d)
	st.intent = d.Effective
	r.judgeAtLatestKnown(st, now)
	defer func() { // the receiver's record is read back periodically (planTransition)
		if !st.readBackDue { // else once it is read (replan)
			next := r.nextVerification(p)
			st.requeue(&next)
		}
	}()
	if p.Spec.Suspend {
		inForce := p.Status.EffectiveTier
		if cur := st.timeline.CurrentAt(r.Clock.Now()); st.ledgerKnown && cur.Rank() > consentv1.Tier(inForce).Rank() {
			inForce = v1.ConsentTier(cur)
		}
		if inForce != "" && d.Effective.Rank() < inForce.Rank() {
			log.FromContext(ctx).Info("suspended, but enforcing a consent downgrade", "tier", d.Effective, "from", inForce)
			return r.planLocally(ctx, st)
		}
		st.mutate = false
		st.intent = p.Status.EffectiveTier
		// Nothing is planned, but the record is still read back when due (in the ledger
		// step): withdrawals the receiver lost are recorded again while suspended too. Its
		// starting point is taken before what the watch saw is added: that is judged again
		// against the record as read.
		st.readBackDue, st.beforeReadBack = r.verifyDue(p), slices.Clone(st.pending)
		// A withdrawal the watch saw, granted again since: recorded, never the grant (that
		// waits for resume; the receiver refuses what was recorded since the withdrawal).
		r.injectSeenLowerings(st)
		return nil
	}
	return r.planLocally(ctx, st)
}

func contractBasis(p *v1.TelemetryPolicy) v1.ContractBasis {
	if p.Spec.Contract == nil {
		return ""
	}
	return p.Spec.Contract.Basis
}

// stateKind keeps the state ConfigMap's labels and owner but never its data: only the collector
// writes progress there.
var stateKind = ownedKind[*corev1.ConfigMap]{
	newEmpty: func() *corev1.ConfigMap { return &corev1.ConfigMap{} },
	inSync:   func(_, _ *corev1.ConfigMap) bool { return true },
	copyInto: func(_, _ *corev1.ConfigMap) {},
}

// checkAllowed stalls a policy that would run a collector image, or export to an endpoint, the
// manager does not allow, before any key, certificate or workload is made for it. A collector
// already running (with an allowed image and endpoint) is left as it is.
func (r *TelemetryPolicyReconciler) checkAllowed(_ context.Context, st *reconcileState) error {
	p := st.policy
	if !st.mutate || st.intent == v1.TierOff {
		return nil
	}
	if !r.imageAllowed(p) {
		st.stall(ReasonImageNotAllowed, fmt.Sprintf("spec.collector.image %q is not an image this operator runs (its --allowed-collector-images); remove it to run the default collector", truncate(p.Spec.Collector.Image, 128)))
		return nil
	}
	// A malformed endpoint is the configuration step's to report (InvalidSpec): it keeps the
	// running configuration's delivery settings while it lowers the tier.
	if p.Spec.Export != nil && allowed.WellFormedEndpoint(p.Spec.Export.Endpoint) && !r.endpointAllowed(p) {
		st.stall(ReasonEndpointNotAllowed, fmt.Sprintf("spec.export.endpoint is not a receiver this operator exports to (allowed: %s)", r.Options.Endpoints))
		return nil
	}
	return nil
}

// imageAllowed reports whether the policy's collector image may run.
func (r *TelemetryPolicyReconciler) imageAllowed(p *v1.TelemetryPolicy) bool {
	img := p.Spec.Collector.Image
	return img == "" || img == r.Options.CollectorImage || r.Options.Images.Allows(img)
}

// endpointAllowed reports whether the policy's export endpoint may be sent to.
func (r *TelemetryPolicyReconciler) endpointAllowed(p *v1.TelemetryPolicy) bool {
	return p.Spec.Export == nil || p.Spec.Export.Endpoint == "" || r.Options.Endpoints.Allows(p.Spec.Export.Endpoint)
}

// reconcileConfig renders the collector configuration for the tier the collector may run at.
func (r *TelemetryPolicyReconciler) reconcileConfig(ctx context.Context, st *reconcileState) error {
	p := st.policy
	if !st.mutate {
		return nil
	}
	if st.tier != v1.TierOff && (p.Spec.Source == nil || p.Spec.Export == nil || p.Spec.Export.Endpoint == "") {
		st.stall(ReasonInvalidSpec, fmt.Sprintf("consent tier %s needs spec.source.databaseSecretRef and spec.export.endpoint", st.tier))
		return nil
	}
	if err := r.writeConfig(ctx, st, st.tier); err != nil || st.stalled.reason != "" {
		return err
	}
	_, err := ensureOwned(ctx, r, p, resources.StateConfigMap(p), stateKind)
	return err
}

// reconcileWorkload runs the collector for EventLevel and CriticalOnly and removes it for Off
// (or while the ledger records nothing this policy may run at).
func (r *TelemetryPolicyReconciler) reconcileWorkload(ctx context.Context, st *reconcileState) error {
	p := st.policy
	names := resources.NamesFor(p.Name)
	if !st.mutate {
		dep := &appsv1.Deployment{}
		if err := r.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: names.Deployment}, dep); err == nil {
			st.deployment = dep
			st.configHash = dep.Spec.Template.Annotations[resources.AnnotationConfigHash]
		} else if !apierrors.IsNotFound(err) {
			return err
		}
		st.deploymentObserved = true
		return nil
	}
	if st.tier == v1.TierOff {
		return r.stopCollector(ctx, st)
	}
	renewal, err := r.reconcileCredentials(ctx, st)
	if err != nil || st.stalled.reason != "" {
		return err
	}
	st.requeue(renewal)
	desired := resources.Deployment(p, r.Options.CollectorImage, st.configHash, st.tier)
	if err := controllerutil.SetControllerReference(p, desired, r.Scheme); err != nil {
		return err
	}
	// One read of the Deployment decides both whether the collector's RBAC objects are looked
	// at and what is rolled out: an edit landing between two reads could otherwise be rolled
	// out by this reconcile with its RBAC objects unchecked.
	live := &appsv1.Deployment{}
	readErr := r.Get(ctx, client.ObjectKeyFromObject(desired), live)
	observed := live
	switch {
	case apierrors.IsNotFound(readErr):
		observed = nil
	case readErr != nil:
		return readErr
	}
	if err := r.reconcileCollectorRBAC(ctx, st, desired.DeepCopy(), observed); err != nil {
		return err
	}
	dep, err := ensureOwnedFrom(ctx, r, p, desired, deploymentKind, live, readErr)
	if err != nil {
		return err
	}
	st.deployment, st.deploymentObserved = dep, true
	return nil
}

// observe reports whether what runs matches the policy (Synced) and folds the collector's
// reported progress into status (Exporting). The state object is written by the collector, so it
// is parsed defensively and bounded.
func (r *TelemetryPolicyReconciler) observe(ctx context.Context, st *reconcileState) error {
	p := st.policy
	if stalled := setSyncedCondition(p, workloadObservation{tier: st.tier, deployment: st.deployment, configHash: st.configHash}); stalled {
		_, msg := conditionReason(p, v1.ConditionSynced)
		st.stall(ReasonProgressDeadline, msg)
	}
	st.synced = meta.IsStatusConditionTrue(p.Status.Conditions, v1.ConditionSynced)
	cm := &corev1.ConfigMap{}
	err := r.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).State}, cm)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	var progress *v1.ExportStatus
	now := r.Clock.Now()
	if raw := cm.Data[resources.StateKey]; raw != "" && raw != "{}" {
		progress = parseCollectorState(raw)
	}
	dropSuccessDatedAhead(progress, now)
	p.Status.Export = progress
	interval := p.Spec.Export.IntervalOrDefault()
	st.requeue(setExportingCondition(p, exportObservation{tier: st.tier, progress: progress, interval: interval, now: now}))
	return nil
}

// parseCollectorState reads the collector's progress; malformed input yields a status that says so.
func parseCollectorState(raw string) *v1.ExportStatus {
	if len(raw) > maxStateSize {
		return &v1.ExportStatus{LastError: fmt.Sprintf("collector state is larger than %d bytes; ignored", maxStateSize)}
	}
	var s collectorconfig.Progress
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return &v1.ExportStatus{LastError: "collector state is not valid JSON; ignored"}
	}
	out := &v1.ExportStatus{
		Cursor: s.Cursor, EventsExported: s.EventsExported, EventsDropped: s.EventsDropped,
		LagSeconds: s.LagSeconds, LastError: truncate(s.LastError, 1024),
	}
	switch s.Tier {
	case v1.TierEventLevel, v1.TierCriticalOnly, v1.TierOff:
		out.CollectorTier = s.Tier
	}
	if s.LastSuccessTime != nil {
		out.LastSuccessTime = &metav1.Time{Time: s.LastSuccessTime.UTC().Truncate(time.Second)}
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// summarizeAndPatch decides the tier in force, computes the summary conditions and patches
// status if anything changed.
func (r *TelemetryPolicyReconciler) summarizeAndPatch(ctx context.Context, orig *v1.TelemetryPolicy, st *reconcileState, reconcileErr error) error {
	p := st.policy
	if len(st.seenConsidered) > 0 {
		// Planned from: kept by this status write, by the copy merged after a lost race, or
		// by this process's memory of a write that failed.
		defer r.forgetSeenLowerings(client.ObjectKeyFromObject(p), st.seenConsidered)
	}
	s := summary{suspended: !st.mutate, stalledReason: st.stalled.reason, stalledMsg: st.stalled.message}
	if reconcileErr != nil {
		s.errMsg = reconcileErr.Error()
		if apierrors.IsConflict(reconcileErr) {
			// A stale read; the retry will converge. Do not flap status for it, but keep what
			// the receiver holds and is owed: a withdrawal not yet recorded there lives only in
			// status, and a raise before the retry must not erase it.
			return r.keepLedgerCopy(ctx, orig, p, st)
		}
	}
	if v := p.Annotations[v1.AnnotationReconcileRequestedAt]; v != "" {
		// Handled, whatever its outcome (a stalled or failing reconcile too): whoever asked
		// reads the outcome in the conditions next to it.
		p.Status.LastHandledReconcileAt = v
	}
	if st.mutate || st.ownedElsewhere { // a suspended policy's collector stopped for another's record too
		r.updateEffectiveTier(ctx, st)
		if st.planned {
			// Everything written so far is acted on (a withdrawal is kept, dated, in
			// pendingConsentChanges until recorded): a later write that withdraws consent is
			// dated by its own time.
			if w := newestConsentWrite(p); w != nil && (p.Status.ObservedConsentWriteTime == nil || w.After(p.Status.ObservedConsentWriteTime.Time)) {
				p.Status.ObservedConsentWriteTime = w
			}
			if st.ledgerKnown {
				p.Status.EventLevelExpiresAt = eventLevelExpiry(p, st)
			}
		}
	}
	s.pending = st.mutate && (st.intent != p.Status.EffectiveTier || st.want != nil || len(st.pending) > 0)
	p.Status.ObservedGeneration = p.Generation
	setSummaryConditions(p, s)
	r.Metrics.SetTier(client.ObjectKeyFromObject(p), p.Status.EffectiveTier)
	if equality.Semantic.DeepEqual(orig.Status, p.Status) {
		r.noteStatusKept(p)
		runAll(st.afterLedger)
		return nil
	}
	// Optimistic lock: status computed from a stale copy (the cache lagging our own last patch)
	// is refused by the API server instead of overwriting newer status; the retry starts fresh.
	if err := r.Status().Patch(ctx, p, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		if apierrors.IsConflict(err) {
			// The policy was written since it was read (the user raising consent again, say):
			// the rest of status is computed afresh by the retry, but the ledger copy cannot be.
			if kerr := r.mergeLedgerCopy(ctx, orig, p, st, nil); kerr != nil {
				return kerr
			}
			return err
		}
		r.noteStatusUnwritten(p)
		return fmt.Errorf("patching status: %w", err)
	}
	r.noteStatusWritten(p)
	runAll(st.afterLedger)
	runAll(st.afterPatch)
	return nil
}

func runAll(fs []func()) {
	for _, f := range fs {
		f()
	}
}

// ledgerCopyAttempts bounds how often the ledger copy is written again onto a policy that keeps
// changing under it.
const ledgerCopyAttempts = 5

// keepLedgerCopy writes only status.consentHistory and status.pendingConsentChanges, as this
// reconcile left them, onto the status it read; should the policy have changed since, onto the
// policy as it is now.
func (r *TelemetryPolicyReconciler) keepLedgerCopy(ctx context.Context, orig, p *v1.TelemetryPolicy, st *reconcileState) error {
	return r.mergeLedgerCopy(ctx, orig, p, st, orig)
}

// mergeLedgerCopy writes this reconcile's copy of the ledger onto the policy as the API server
// holds it now (onto first, if given, before reading it), after a status patch lost the
// optimistic-lock race to another write. A withdrawal enforced on the collector and not yet
// recorded at the receiver lives only in status.pendingConsentChanges: dropping it with the rest
// of a stale status would let the next reconcile, seeing consent raised again, configure the
// collector with no record that it was ever withdrawn. The pending withdrawals are merged into
// those the policy holds now (each read is the API server's: the failed write made readonce
// forget the policy); the history is this reconcile's unless someone else moved it since. The
// read, merge and patch are tried a few times; a policy that keeps changing fails the reconcile,
// loudly, rather than lose a withdrawal quietly, and what could not be written is kept for this
// process's next reconcile.
func (r *TelemetryPolicyReconciler) mergeLedgerCopy(ctx context.Context, orig, p *v1.TelemetryPolicy, st *reconcileState, first *v1.TelemetryPolicy) error {
	err := r.writeLedgerCopy(ctx, orig, p, st, first)
	if err != nil {
		r.noteStatusUnwritten(p)
	}
	return err
}

func (r *TelemetryPolicyReconciler) writeLedgerCopy(ctx context.Context, orig, p *v1.TelemetryPolicy, st *reconcileState, first *v1.TelemetryPolicy) error {
	ours := timelineOf(p.Status.PendingConsentChanges)
	var err error
	for range ledgerCopyAttempts {
		live := first
		if first = nil; live == nil {
			live = &v1.TelemetryPolicy{}
			if err = r.APIReader.Get(ctx, client.ObjectKeyFromObject(p), live); err != nil {
				if apierrors.IsNotFound(err) {
					return nil
				}
				return fmt.Errorf("reading the policy to keep its consent ledger copy: %w", err)
			}
			if live.UID != p.UID {
				return nil // deleted and created again: not this policy's ledger
			}
			r.noteRead(live)
		}
		keep := live.DeepCopy()
		timeline := timelineOf(keep.Status.ConsentHistory)
		if equality.Semantic.DeepEqual(live.Status.ConsentHistory, orig.Status.ConsentHistory) {
			keep.Status.ConsentHistory = p.Status.ConsentHistory // nobody else moved it since our read
			timeline = timelineOf(p.Status.ConsentHistory)
			if len(st.timeline) > 0 {
				// The pending withdrawals follow the record this reconcile worked from, which
				// differs from the copy kept when the receiver had lost transitions.
				timeline = st.timeline
			}
		}
		pending := lowerings(timeline, unrecorded(timeline, mergePending(timelineOf(live.Status.PendingConsentChanges), ours)))
		keep.Status.PendingConsentChanges = pendingOf(timeline, pending)
		if equality.Semantic.DeepEqual(live.Status, keep.Status) {
			r.noteStatusKept(live)
			runAll(st.afterLedger)
			return nil
		}
		err = r.Status().Patch(ctx, keep, client.MergeFromWithOptions(live, client.MergeFromWithOptimisticLock{}))
		switch {
		case err == nil:
			r.noteStatusWritten(keep)
			runAll(st.afterLedger)
			return nil
		case apierrors.IsNotFound(err):
			return nil
		case !apierrors.IsConflict(err):
			return fmt.Errorf("keeping the consent ledger copy in status: %w", err)
		}
	}
	// Not a conflict error: a conflict is retried quietly, this must be seen.
	return fmt.Errorf("keeping the consent ledger copy in status: the policy changed %d times in a row while being written (%s)", ledgerCopyAttempts, err.Error())
}

// updateEffectiveTier moves status.effectiveTier once a change is enforced at both points, and
// announces it (Event, metric, log) after the status patch lands.
func (r *TelemetryPolicyReconciler) updateEffectiveTier(ctx context.Context, st *reconcileState) {
	p := st.policy
	prev := p.Status.EffectiveTier
	next := enforcedTier(prev, st.tier, st.recorded, workloadObservation{tier: st.tier, deployment: st.deployment}, st.synced, st.deploymentObserved)
	if next == prev {
		return
	}
	p.Status.EffectiveTier = next
	reason := v1.ReasonDeclared
	if n := len(st.timeline); n > 0 && st.timeline[n-1].Reason != "" {
		reason = st.timeline[n-1].Reason
	}
	eventType, eventReason := corev1.EventTypeNormal, "TierChanged"
	downgrade := prev != "" && next.Rank() < prev.Rank()
	if downgrade {
		eventReason = "TierDowngraded"
	}
	if !st.decision.Eligible && st.decision.Reason != "" {
		eventType = corev1.EventTypeWarning
	}
	from := string(prev)
	if from == "" {
		from = "none"
	}
	since := ""
	if n := len(st.timeline); n > 0 {
		since = " since " + st.timeline[n-1].At.UTC().Format(time.RFC3339)
	}
	// The Event, metric and log line follow the status patch: a reconcile that started from a
	// stale copy of the policy loses the optimistic-lock race and must not announce a change twice.
	msg := fmt.Sprintf("effective tier %s -> %s (%s), enforced by the collector and the receiver%s: %s", from, next, reason, since, st.decision.Message)
	st.afterPatch = append(st.afterPatch, func() {
		if downgrade {
			r.Metrics.Downgrades.WithLabelValues(reason).Inc()
		}
		r.event(p, eventType, eventReason, "EnforceTier", "%s", msg)
		log.FromContext(ctx).Info("effective tier changed", "tier", next, "from", prev, "reason", reason)
	})
}

// result requeues for the earliest moment something changes on its own (trial expiry,
// certificate renewal, export staleness), never by polling.
func (r *TelemetryPolicyReconciler) result(st *reconcileState) ctrl.Result {
	if d := r.pollNext(st); d > 0 {
		st.requeueIn(d, r.Clock.Now())
	}
	if len(st.requeueAt) == 0 {
		return ctrl.Result{}
	}
	next := slices.MinFunc(st.requeueAt, func(a, b time.Time) int { return a.Compare(b) })
	d := next.Sub(r.Clock.Now())
	if d < time.Second {
		d = time.Second
	}
	return ctrl.Result{RequeueAfter: d}
}

func (r *TelemetryPolicyReconciler) event(p *v1.TelemetryPolicy, eventType, reason, action, format string, args ...any) {
	// The manager may not write Events where it was not let in.
	if r.Recorder != nil && (r.Tenants == nil || r.Tenants.Onboarded(p.Namespace)) {
		r.Recorder.Eventf(p, nil, eventType, reason, action, format, args...)
	}
}

// SetupWithManager watches policies, and the namespaces they may be onboarded to. The objects
// policies own are watched namespace by namespace as namespaces are onboarded (WatchOwned).
func (r *TelemetryPolicyReconciler) SetupWithManager(mgr ctrl.Manager) (controller.Controller, error) {
	b := ctrl.NewControllerManagedBy(mgr).
		For(&v1.TelemetryPolicy{}, builder.WithPredicates(r.seeLowerings(), predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.policiesIn), builder.WithPredicates(predicate.LabelChangedPredicate{}))
	if r.IssuerChanged != nil {
		b = b.WatchesRawSource(source.Channel(r.IssuerChanged, &handler.EnqueueRequestForObject{}))
	}
	workers := r.Options.MaxConcurrentReconciles
	if workers <= 0 {
		workers = DefaultMaxConcurrentReconciles
	}
	opts := controller.Options{MaxConcurrentReconciles: workers}
	if r.Options.TenantResync > 0 {
		// No watch brings a failing policy back sooner: its retries back off to the resync, not
		// to client-go's 16 minutes, so an edit by hand waits no longer than it would if the
		// reconcile succeeded.
		opts.RateLimiter = retryLimiter(r.Options.TenantResync)
	}
	return b.Named("telemetrypolicy").WithOptions(opts).Build(r)
}

// retryLimiter is client-go's default controller rate limiter for failed reconciles (from 5 ms,
// doubling; 10 a second overall, bursts of 100) with its longest wait cut to maxDelay.
func retryLimiter(maxDelay time.Duration) workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, maxDelay),
		&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
	)
}

// CachedKinds are the kinds of object a policy owns that are read and watched through each
// onboarded namespace's cache: those whose changes the operator acts on at once (the
// collector's progress, its rollout, its configuration and credentials).
func CachedKinds() []client.Object {
	return []client.Object{&appsv1.Deployment{}, &corev1.ConfigMap{}, &corev1.Secret{}}
}

// UncachedKinds are the kinds of object a policy owns that are read from the API server only
// (see collectorrbac.go): reading them through a cache would start a watch.
func UncachedKinds() []client.Object {
	return []client.Object{&corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}}
}

// WatchOwned has ctl reconcile a policy when an object it controls changes in cache c. Deployment
// status changes are not filtered out: they are how the operator learns that a new
// configuration is running.
func WatchOwned(ctl controller.Controller, c cache.Cache, scheme *runtime.Scheme, mapper meta.RESTMapper) error {
	return errors.Join(
		watchOwned(ctl, c, scheme, mapper, &appsv1.Deployment{}),
		watchOwned(ctl, c, scheme, mapper, &corev1.ConfigMap{}),
		watchOwned(ctl, c, scheme, mapper, &corev1.Secret{}),
	)
}

func watchOwned[T client.Object](ctl controller.Controller, c cache.Cache, scheme *runtime.Scheme, mapper meta.RESTMapper, obj T) error {
	return ctl.Watch(source.Kind(c, obj, handler.TypedEnqueueRequestForOwner[T](scheme, mapper, &v1.TelemetryPolicy{}, handler.OnlyControllerOwner())))
}

// policiesIn maps a namespace whose onboarding label changed to the policies in it.
func (r *TelemetryPolicyReconciler) policiesIn(ctx context.Context, ns client.Object) []ctrl.Request {
	if r.Tenants != nil {
		r.Tenants.Sync(ctx, ns.GetName()) // offboarded: stop watching it even if no policy is left there
	}
	list := &v1.TelemetryPolicyList{}
	if err := r.List(ctx, list, client.InNamespace(ns.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "listing the policies of a namespace whose onboarding changed", "namespace", ns.GetName())
		return nil
	}
	reqs := make([]ctrl.Request, 0, len(list.Items))
	for _, p := range list.Items {
		reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&p)})
	}
	return reqs
}

// judgeAtLatestKnown keeps a replica whose clock is behind a change already recorded (by a
// replica whose clock was ahead, or before the clock was stepped back) from undoing it: a
// trial recorded as expired is judged expired. The tier is judged again at the latest change
// known (the receiver's record as read, with pending lowerings, and the copy in status), and
// only a lower tier is taken from that later time. It runs when the consent step decides and
// again when a transition is planned, after the receiver's record may have been read back.
func (r *TelemetryPolicyReconciler) judgeAtLatestKnown(st *reconcileState, now time.Time) {
	p := st.policy
	known := latestKnownChange(p, st.localTimeline())
	if !known.After(now) {
		return
	}
	later := consent.Decide(p.Spec, r.Options.MinCloudTermsVersion, known)
	if later.Effective.Rank() >= st.decision.Effective.Rank() {
		return
	}
	st.decision = later
	setConsentEligibleCondition(p, later)
	if st.intent.Rank() > later.Effective.Rank() {
		st.intent = later.Effective
	}
}

// latestKnownChange is the latest time a consent change of the policy is known to have taken
// effect: in the receiver's record (as the operator last read it, with its pending lowerings)
// or in the operator's copy in status.
func latestKnownChange(p *v1.TelemetryPolicy, timeline consentv1.Timeline) time.Time {
	var latest time.Time
	if n := len(timeline); n > 0 {
		latest = timeline[n-1].At
	}
	if n := len(p.Status.ConsentHistory); n > 0 && p.Status.ConsentHistory[n-1].Time.After(latest) {
		latest = p.Status.ConsentHistory[n-1].Time.Time
	}
	return latest
}

// dropSuccessDatedAhead removes from a collector's reported progress a last success dated more
// than maxCollectorClockAhead after now: written by hand (the state lives in the tenant's
// namespace), it is not shown as a success.
func dropSuccessDatedAhead(progress *v1.ExportStatus, now time.Time) {
	if progress == nil || progress.LastSuccessTime == nil || !progress.LastSuccessTime.After(now.Add(maxCollectorClockAhead)) {
		return
	}
	progress.LastSuccessTime = nil
	if progress.LastError == "" {
		progress.LastError = "the collector's state reports a success dated ahead of now; not believed"
	}
}
