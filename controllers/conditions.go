/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/consent"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// Reasons of the conditions the operator sets (besides the consent reasons in the API package).
const (
	ReasonSynced              = "Synced"
	ReasonCollectorMissing    = "CollectorMissing"
	ReasonRollingOut          = "RollingOut"
	ReasonOldCollectorRunning = "OldCollectorRunning"
	ReasonCollectorStarting   = "CollectorStarting"
	ReasonCollectorStopping   = "CollectorStopping"
	ReasonCollectorStopped    = "CollectorStopped"
	ReasonProgressDeadline    = "ProgressDeadlineExceeded"
	// ReasonCollectorPodsRefused: the ReplicaSet controller cannot create the collector's pod
	// (a quota, a LimitRange, Pod Security admission, resources that contradict each other); it
	// keeps trying, and the rollout stalls at its progress deadline.
	ReasonCollectorPodsRefused = "CollectorPodsRefused"
	ReasonCredentialsValid     = "Valid"
	ReasonCredentialsOff       = "NotNeeded"
	ReasonIssuerUnavailable    = "IssuerUnavailable"
	ReasonIssuerExpiring       = "IssuerExpiring"
	ReasonIssueFailed          = "IssueFailed"
	ReasonExportFlowing        = "Flowing"
	ReasonExportStale          = "NoRecentSuccess"
	ReasonExportNoProgress     = "NoProgressYet"
	ReasonExportDisabled       = "ExportDisabled"
	ReasonEnforced             = "Enforced"
	ReasonProgressing          = "Progressing"
	ReasonSuspended            = "Suspended"
	ReasonInvalidSpec          = "InvalidSpec"
	ReasonImageNotAllowed      = "ImageNotAllowed"
	// ReasonNameTaken: an object the policy needs has a name taken by an object that is not its.
	ReasonNameTaken          = "NameTaken"
	ReasonEndpointNotAllowed = "EndpointNotAllowed"
	ReasonReconcileError     = "ReconcileError"
	ReasonConsentPending     = "ConsentChangePending"
)

// setConsentEligibleCondition reports whether the declared tier runs as declared.
func setConsentEligibleCondition(p *v1.TelemetryPolicy, d consent.Decision) {
	status := metav1.ConditionTrue
	if !d.Eligible {
		status = metav1.ConditionFalse
	}
	setCondition(p, v1.ConditionConsentEligible, status, d.Reason, d.Message)
}

// workloadObservation is what the operator saw of the collector Deployment.
type workloadObservation struct {
	// tier the operator wants enforced.
	tier v1.ConsentTier
	// deployment is the live Deployment, nil when absent.
	deployment *appsv1.Deployment
	// configHash is the hash of the configuration the collector must run.
	configHash string
}

// setSyncedCondition is true only when what runs matches the policy: for Off, the collector
// Deployment is gone (foreground deletion finishes only after its pods are gone); otherwise the
// Deployment controller has observed the current template, no pod of an older template is left,
// and the current pod is available. It returns true when a stalled rollout was detected.
func setSyncedCondition(p *v1.TelemetryPolicy, o workloadObservation) (stalled bool) {
	d := o.deployment
	set := func(status metav1.ConditionStatus, reason, format string, args ...any) {
		setCondition(p, v1.ConditionSynced, status, reason, fmt.Sprintf(format, args...))
	}
	if o.tier == v1.TierOff {
		if d != nil {
			set(metav1.ConditionFalse, ReasonCollectorStopping, "waiting for the collector Deployment and its pods to be deleted")
			return false
		}
		set(metav1.ConditionTrue, ReasonCollectorStopped, "no collector runs: consent tier Off")
		return false
	}
	if d == nil {
		set(metav1.ConditionFalse, ReasonCollectorMissing, "the collector Deployment does not exist yet")
		return false
	}
	if d.Spec.Template.Annotations[resources.AnnotationConfigHash] != o.configHash {
		set(metav1.ConditionFalse, ReasonRollingOut, "the collector Deployment does not carry the current configuration yet")
		return false
	}
	if d.Status.ObservedGeneration < d.Generation {
		set(metav1.ConditionFalse, ReasonRollingOut, "waiting for the Deployment controller to observe generation %d", d.Generation)
		return false
	}
	refused := podsRefused(d)
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
			msg := c.Message
			if refused != nil {
				msg += "; the collector's pod cannot be created: " + refused.Message
			}
			set(metav1.ConditionFalse, ReasonProgressDeadline, "the collector rollout exceeded its progress deadline: %s", msg)
			return true
		}
	}
	if old := d.Status.Replicas - d.Status.UpdatedReplicas; old > 0 {
		set(metav1.ConditionFalse, ReasonOldCollectorRunning, "%d collector pod(s) still run an older configuration", old)
		return false
	}
	if refused != nil && d.Status.UpdatedReplicas < 1 {
		// Said at once, not only at the progress deadline; not a stall before it: the
		// ReplicaSet controller keeps trying, and a quota freed or a webhook back lets it.
		set(metav1.ConditionFalse, ReasonCollectorPodsRefused, "the collector's pod cannot be created: %s", refused.Message)
		return false
	}
	if d.Status.UpdatedReplicas < 1 || d.Status.AvailableReplicas < 1 {
		set(metav1.ConditionFalse, ReasonCollectorStarting, "the collector pod with the current configuration is not available yet")
		return false
	}
	set(metav1.ConditionTrue, ReasonSynced, "the collector runs the current configuration (tier %s, config %s)", o.tier, shortHash(o.configHash))
	return false
}

// podsRefused is the Deployment's ReplicaFailure condition while the ReplicaSet controller
// cannot create a pod (a quota, a LimitRange, Pod Security admission), else nil. A failure to
// delete one is not this: the old pod it concerns is reported as still running.
func podsRefused(d *appsv1.Deployment) *appsv1.DeploymentCondition {
	for i, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue && c.Reason == "FailedCreate" {
			return &d.Status.Conditions[i]
		}
	}
	return nil
}

// exportObservation is the collector's reported progress.
type exportObservation struct {
	tier     v1.ConsentTier
	progress *v1.ExportStatus
	interval time.Duration
	now      time.Time
}

// exportStaleAfter is how long after a success Exporting stays true: three intervals plus slack,
// so one slow or retried round does not flap the condition.
func exportStaleAfter(interval time.Duration) time.Duration { return 3*interval + time.Minute }

// maxCollectorClockAhead is how far ahead of the manager's clock a collector's reported success
// may be dated (the two run on different nodes: the clock skew the ledger allows) before observe
// drops it from status: the state ConfigMap lives in the tenant's namespace, where an editor may
// write it, and a success dated ahead would keep Exporting=True (and the export-stopped alert
// quiet) however long nothing is delivered.
const maxCollectorClockAhead = consentv1.MaxClockSkew

// setExportingCondition is true when the receiver acknowledged a batch (or answered a collector
// with nothing to send) recently relative to the export interval. It returns when the condition
// would turn stale, for requeueing.
func setExportingCondition(p *v1.TelemetryPolicy, o exportObservation) *time.Time {
	if o.tier == v1.TierOff {
		setCondition(p, v1.ConditionExporting, metav1.ConditionFalse, ReasonExportDisabled, "consent tier Off: nothing is exported")
		return nil
	}
	if o.progress == nil || o.progress.LastSuccessTime == nil {
		msg := "the collector has not reported a successful export yet"
		if o.progress != nil && o.progress.LastError != "" {
			msg += ": " + o.progress.LastError
		}
		setCondition(p, v1.ConditionExporting, metav1.ConditionFalse, ReasonExportNoProgress, msg)
		return nil
	}
	staleAt := o.progress.LastSuccessTime.Add(exportStaleAfter(o.interval))
	if !o.now.Before(staleAt) {
		msg := fmt.Sprintf("the receiver has not acknowledged a batch or answered the collector since %s", o.progress.LastSuccessTime.UTC().Format(time.RFC3339))
		if o.progress.LastError != "" {
			msg += "; last error: " + o.progress.LastError
		}
		setCondition(p, v1.ConditionExporting, metav1.ConditionFalse, ReasonExportStale, msg)
		return nil
	}
	setCondition(p, v1.ConditionExporting, metav1.ConditionTrue, ReasonExportFlowing,
		fmt.Sprintf("receiver last acknowledged a batch or answered the collector at %s; %d exported", o.progress.LastSuccessTime.UTC().Format(time.RFC3339), o.progress.EventsExported))
	return &staleAt
}

// summary holds what the summarizing conditions depend on.
type summary struct {
	suspended     bool
	stalledReason string
	stalledMsg    string
	errMsg        string
	// pending: the decided tier is not in force yet (the receiver has not recorded it, or the
	// collector does not run it yet).
	pending bool
}

// setSummaryConditions sets Ready, and Reconciling/Stalled only while they are true (kstatus).
func setSummaryConditions(p *v1.TelemetryPolicy, s summary) {
	setUnknownConditions(p)
	synced := meta.IsStatusConditionTrue(p.Status.Conditions, v1.ConditionSynced)
	creds := meta.IsStatusConditionTrue(p.Status.Conditions, v1.ConditionCredentialsReady)
	recorded := meta.IsStatusConditionTrue(p.Status.Conditions, v1.ConditionConsentRecorded)
	erasure := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionErasureCompleted)
	erased := erasure == nil || erasure.Status == metav1.ConditionTrue
	switch {
	case s.stalledReason != "":
		setCondition(p, v1.ConditionStalled, metav1.ConditionTrue, s.stalledReason, s.stalledMsg)
		meta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionReconciling)
		setCondition(p, v1.ConditionReady, metav1.ConditionFalse, s.stalledReason, s.stalledMsg)
	case s.suspended:
		meta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionStalled)
		meta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionReconciling)
		setCondition(p, v1.ConditionReady, metav1.ConditionFalse, ReasonSuspended,
			"reconciliation is suspended (spec.suspend); consent downgrades are still enforced")
	case synced && creds && recorded && erased && !s.pending && s.errMsg == "":
		meta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionStalled)
		meta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionReconciling)
		setCondition(p, v1.ConditionReady, metav1.ConditionTrue, ReasonEnforced,
			fmt.Sprintf("effective tier %s is enforced", p.Status.EffectiveTier))
	default:
		meta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionStalled)
		reason, msg := ReasonProgressing, "converging"
		switch {
		case s.errMsg != "":
			reason, msg = ReasonReconcileError, s.errMsg
		case !recorded:
			reason, msg = conditionReason(p, v1.ConditionConsentRecorded)
		case !synced:
			reason, msg = conditionReason(p, v1.ConditionSynced)
		case !creds:
			reason, msg = conditionReason(p, v1.ConditionCredentialsReady)
		case !erased:
			reason, msg = conditionReason(p, v1.ConditionErasureCompleted)
		case s.pending:
			reason, msg = ReasonConsentPending, fmt.Sprintf("the decided tier is not in force yet (effective tier %s)", p.Status.EffectiveTier)
		}
		setCondition(p, v1.ConditionReconciling, metav1.ConditionTrue, reason, msg)
		setCondition(p, v1.ConditionReady, metav1.ConditionFalse, reason, msg)
	}
}

// setUnknownConditions writes every domain condition on the first visit, as Unknown, so
// tools never have to guess whether a missing condition means "not yet" or "not applicable".
func setUnknownConditions(p *v1.TelemetryPolicy) {
	for _, t := range []string{v1.ConditionConsentEligible, v1.ConditionConsentRecorded, v1.ConditionSynced, v1.ConditionCredentialsReady, v1.ConditionExporting} {
		if meta.FindStatusCondition(p.Status.Conditions, t) == nil {
			setCondition(p, t, metav1.ConditionUnknown, ReasonProgressing, "not observed yet")
		}
	}
}

func conditionReason(p *v1.TelemetryPolicy, typ string) (string, string) {
	if c := meta.FindStatusCondition(p.Status.Conditions, typ); c != nil {
		return c.Reason, c.Message
	}
	return ReasonProgressing, typ + " not observed yet"
}

func setCondition(p *v1.TelemetryPolicy, typ string, status metav1.ConditionStatus, reason, msg string) {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	meta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: p.Generation,
	})
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
