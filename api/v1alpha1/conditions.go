/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

// Condition types reported in TelemetryPolicy status.conditions.
const (
	// ConditionReady summarizes: the effective tier is enforced by a collector running the current
	// configuration (or, for Off, no collector runs), credentials are valid, and nothing is stalled.
	ConditionReady = "Ready"
	// ConditionReconciling is present (True) only while the operator is converging the policy.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is present (True) only while the operator cannot make progress without help.
	ConditionStalled = "Stalled"
	// ConditionConsentEligible says whether the declared tier is allowed by the contract.
	// False means the policy runs at a lower effective tier; the reason says why.
	ConditionConsentEligible = "ConsentEligible"
	// ConditionSynced says whether what runs matches the policy: every collector pod runs the
	// current configuration (for Off: no collector pod is left).
	ConditionSynced = "Synced"
	// ConditionCredentialsReady says whether the collector's client certificate is valid and current.
	ConditionCredentialsReady = "CredentialsReady"
	// ConditionExporting says whether data is flowing: the receiver acknowledged a batch, or
	// answered a collector with nothing new to send, recently.
	ConditionExporting = "Exporting"
	// ConditionConsentRecorded says whether the receiver's consent ledger records the decided
	// tier, so that the receiver enforces it on its own. False while the receiver is unreachable
	// or refuses (for example because another policy owns the instance).
	ConditionConsentRecorded = "ConsentRecorded"
	// ConditionErasureCompleted is present once spec.erasure is set: True when the requested
	// erasure was carried out and verified.
	ConditionErasureCompleted = "ErasureCompleted"
)

// Reasons for ConsentEligible=False; each names why EventLevel was downgraded to CriticalOnly.
const (
	ReasonTrialExpired     = "TrialExpired"
	ReasonTermsOutdated    = "TermsOutdated"
	ReasonApprovalMissing  = "ApprovalMissing"
	ReasonBasisNotEligible = "BasisNotEligible"
	// ReasonNotYetAccepted: contract.acceptedAt lies in the future.
	ReasonNotYetAccepted = "NotYetAccepted"
	// ReasonEligible: the declared tier is allowed as declared.
	ReasonEligible = "Eligible"
	// ReasonDeclared: consent history entry for a change of the declared tier itself.
	ReasonDeclared = "Declared"
	// ReasonPolicyDeleted: consent history entry for a policy that was deleted.
	ReasonPolicyDeleted = "PolicyDeleted"
)

// FinalizerConsentLedger holds a deleted policy until its instance's consent is closed at the
// receiver (recorded as Off from the deletion time) and its ownership released.
const FinalizerConsentLedger = "telemetry.sourcegraph.com/consent-ledger"

// LabelOnboarded marks a namespace the operator may work in (value "true"), once a cluster admin
// has also bound the operator's tenant ClusterRole there. Policies in other namespaces stall with
// reason NamespaceNotOnboarded and nothing is created for them.
const LabelOnboarded = "telemetry.sourcegraph.com/onboarded"

// Annotations the operator reads on a TelemetryPolicy.
const (
	// AnnotationRotateRequestedAt: a new value requests exactly one credential rotation.
	AnnotationRotateRequestedAt = "telemetry.sourcegraph.com/rotate-requested-at"
	// AnnotationReconcileRequestedAt: a new value requests a reconcile; echoed in status.lastHandledReconcileAt.
	AnnotationReconcileRequestedAt = "reconcile.telemetry.sourcegraph.com/requestedAt"
)
