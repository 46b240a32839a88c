/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ConsentTier is how much usage telemetry an instance's admin agreed to share.
// +kubebuilder:validation:Enum=EventLevel;CriticalOnly;Off
type ConsentTier string

const (
	// TierEventLevel exports individual, allow-listed events with a pseudonymous user id.
	TierEventLevel ConsentTier = "EventLevel"
	// TierCriticalOnly exports only aggregated, anonymized daily counts.
	TierCriticalOnly ConsentTier = "CriticalOnly"
	// TierOff exports nothing; no collector runs.
	TierOff ConsentTier = "Off"
)

// Rank orders tiers by how much data they let leave the instance: Off < CriticalOnly < EventLevel.
// Unknown tiers rank lowest, so comparisons fail closed.
func (t ConsentTier) Rank() int {
	switch t {
	case TierEventLevel:
		return 2
	case TierCriticalOnly:
		return 1
	default:
		return 0
	}
}

// ContractBasis is the contractual ground on which the instance's telemetry consent rests.
// +kubebuilder:validation:Enum=SelfServeTrial;ZeroDollarOrderForm;NewContract;Renewal;CELedTrial;LegacyTerms
type ContractBasis string

const (
	// BasisSelfServeTrial is a lead that signed up for a trial and accepted the Cloud ToS.
	BasisSelfServeTrial ContractBasis = "SelfServeTrial"
	// BasisZeroDollarOrderForm is an existing customer that signed a $0 order form with the updated Cloud ToS.
	BasisZeroDollarOrderForm ContractBasis = "ZeroDollarOrderForm"
	// BasisNewContract is a new customer that signed a contract with the updated Cloud ToS.
	BasisNewContract ContractBasis = "NewContract"
	// BasisRenewal is a renewal signed with the updated Cloud ToS.
	BasisRenewal ContractBasis = "Renewal"
	// BasisCELedTrial is a trial started by a customer engineer through the trial workflow.
	BasisCELedTrial ContractBasis = "CELedTrial"
	// BasisLegacyTerms is a contract without the updated ToS; it allows at most CriticalOnly.
	BasisLegacyTerms ContractBasis = "LegacyTerms"
)

// EventLevelEligible reports whether the basis may ever allow the EventLevel tier.
func (b ContractBasis) EventLevelEligible() bool {
	switch b {
	case BasisSelfServeTrial, BasisZeroDollarOrderForm, BasisNewContract, BasisRenewal, BasisCELedTrial:
		return true
	default:
		return false
	}
}

// IsTrial reports whether the basis is a trial, which is expected to carry an expiry.
func (b ContractBasis) IsTrial() bool {
	return b == BasisSelfServeTrial || b == BasisCELedTrial
}

// StartPoint says when an instance's first consent period begins.
// +kubebuilder:validation:Enum=Now;Beginning
type StartPoint string

const (
	// StartFromNow: the first consent period begins when the operator first enforces the policy.
	StartFromNow StartPoint = "Now"
	// StartFromBeginning: the first consent period begins at contract.acceptedAt, so data
	// recorded since the customer accepted the terms may leave, never data from before.
	StartFromBeginning StartPoint = "Beginning"
)

// TelemetryPolicySpec declares one managed instance's telemetry consent and how to collect it.
// +kubebuilder:validation:XValidation:rule="self.consent.tier != 'EventLevel' || (has(self.contract) && self.contract.basis in ['SelfServeTrial', 'ZeroDollarOrderForm', 'NewContract', 'Renewal', 'CELedTrial'])",message="consent.tier EventLevel requires contract.basis to be one of SelfServeTrial, ZeroDollarOrderForm, NewContract, Renewal, CELedTrial (LegacyTerms allows at most CriticalOnly)"
// +kubebuilder:validation:XValidation:rule="self.consent.tier != 'EventLevel' || (has(self.contract) && has(self.contract.reference) && size(self.contract.reference) > 0)",message="consent.tier EventLevel requires contract.reference (the CRM account or opportunity id that evidences consent)"
// +kubebuilder:validation:XValidation:rule="self.consent.tier != 'EventLevel' || (has(self.contract) && has(self.contract.userLevelEventDataApproved) && self.contract.userLevelEventDataApproved)",message="consent.tier EventLevel requires contract.userLevelEventDataApproved=true (CRM field \"User Level Event Usage Data Analytics\" = Yes)"
// +kubebuilder:validation:XValidation:rule="self.consent.tier == 'Off' || (has(self.source) && has(self.source.databaseSecretRef))",message="consent.tier EventLevel and CriticalOnly require source.databaseSecretRef (where the collector finds the instance database)"
// +kubebuilder:validation:XValidation:rule="self.consent.tier == 'Off' || (has(self.export) && has(self.export.endpoint))",message="consent.tier EventLevel and CriticalOnly require export.endpoint (the receiver's https:// URL)"
// +kubebuilder:validation:XValidation:rule="!has(self.export) || !has(self.export.startFrom) || self.export.startFrom != 'Beginning' || (has(self.contract) && has(self.contract.acceptedAt))",message="export.startFrom Beginning requires contract.acceptedAt: consent begins when the terms were accepted, never earlier"
type TelemetryPolicySpec struct {
	// instanceID names the managed instance this policy governs. It becomes the identity in the
	// collector's client certificate, so the receiver attributes data to it; it cannot change.
	// Lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="instanceID is immutable: create a new TelemetryPolicy for another instance"
	InstanceID string `json:"instanceID"`

	// consent is what the instance's admin agreed to share.
	// +required
	Consent ConsentSpec `json:"consent"`

	// contract is the contractual basis that allows the consent tier. Required for EventLevel.
	// +optional
	Contract *ContractSpec `json:"contract,omitempty"`

	// source says where the collector reads the instance's event_logs table.
	// Required unless consent.tier is Off.
	// +optional
	Source *SourceSpec `json:"source,omitempty"`

	// export says where and how often the collector delivers data.
	// Required unless consent.tier is Off.
	// +optional
	Export *ExportSpec `json:"export,omitempty"`

	// credentials controls the collector's mutual-TLS client certificate.
	// +kubebuilder:default={rotationPeriod: "720h"}
	// +optional
	Credentials CredentialsSpec `json:"credentials,omitempty"`

	// collector overrides how the collector workload runs.
	// +optional
	Collector CollectorSpec `json:"collector,omitempty"`

	// suspend pauses reconciliation of this policy: no new configuration, no rotation.
	// Consent downgrades (a lower tier, an expired trial) are still enforced while suspended,
	// by a reconcile of the policy as it then stands: other changes made while suspended take
	// effect with the downgrade.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// erasure requests that the receiver delete this instance's stored data. Setting a new
	// requestID makes a new request; the operator carries it out once, and the receiver verifies
	// by re-query that nothing in scope is left, keeps an audit record without any of the data,
	// and refuses data in scope sent afterwards. See status.erasure for the outcome. Erasure does
	// not change consent: lower consent.tier as well to stop collection.
	// +optional
	Erasure *ErasureSpec `json:"erasure,omitempty"`
}

// ErasureScope is what an erasure deletes.
// +kubebuilder:validation:Enum=Events;All
type ErasureScope string

const (
	// ErasureScopeEvents deletes event-level data (individual events).
	ErasureScopeEvents ErasureScope = "Events"
	// ErasureScopeAll deletes event-level data and the anonymous daily aggregates.
	ErasureScopeAll ErasureScope = "All"
)

// ErasureSpec is a request to delete an instance's stored data at the receiver.
// +kubebuilder:validation:XValidation:rule="!has(self.from) || !has(self.to) || self.to > self.from",message="erasure.to must be after erasure.from"
type ErasureSpec struct {
	// requestID identifies the request, e.g. your ticket's id; a new value makes a new request.
	// 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit. The receiver
	// keeps only a key computed from it (receiver erasures --request finds it), never the id;
	// still, write no names in it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._:-]*$`
	RequestID string `json:"requestID"`

	// scope is Events (event-level data, the default) or All (events and aggregates).
	// +kubebuilder:default=Events
	// +optional
	Scope ErasureScope `json:"scope,omitempty"`

	// from, when set, limits the erasure to data recorded at or after this time (RFC 3339).
	// +optional
	From *metav1.Time `json:"from,omitempty"`

	// to, when set, limits the erasure to data recorded before this time (RFC 3339); without it
	// the erasure covers everything recorded up to the moment the receiver carries it out,
	// including events an instance whose clock runs fast dated later.
	// +optional
	To *metav1.Time `json:"to,omitempty"`

	// requestedBy says who asked, by role, for the audit record: CustomerAdmin (the customer's
	// administrator), DataSubject (a user of the instance, about their own data), Support (support
	// staff, on the customer's behalf), Legal (a regulator, a court, counsel) or ContractEnd (the
	// contract ended). The record is kept centrally for years, so it names a role, never a person;
	// put the ticket reference in requestID.
	// +required
	RequestedBy ErasureRequester `json:"requestedBy"`
}

// ErasureRequester is who asked for an erasure, by role.
// +kubebuilder:validation:Enum=CustomerAdmin;DataSubject;Support;Legal;ContractEnd
type ErasureRequester string

// Erasure requesters.
const (
	// ErasureRequesterCustomerAdmin is the customer's administrator.
	ErasureRequesterCustomerAdmin ErasureRequester = "CustomerAdmin"
	// ErasureRequesterDataSubject is a user of the instance, asking about their own data.
	ErasureRequesterDataSubject ErasureRequester = "DataSubject"
	// ErasureRequesterSupport is support staff, acting on the customer's behalf.
	ErasureRequesterSupport ErasureRequester = "Support"
	// ErasureRequesterLegal is a legal obligation: a regulator, a court, counsel.
	ErasureRequesterLegal ErasureRequester = "Legal"
	// ErasureRequesterContractEnd is the end of the contract.
	ErasureRequesterContractEnd ErasureRequester = "ContractEnd"
)

// ConsentSpec is the consent declared by the instance's admin.
type ConsentSpec struct {
	// tier is the most the instance agreed to share:
	// EventLevel (individual allow-listed events with a pseudonymous user id),
	// CriticalOnly (aggregated, anonymized daily counts only), or
	// Off (nothing leaves the instance; no collector runs).
	// The operator may run a lower tier than declared (see status.effectiveTier), never a higher one.
	// +required
	Tier ConsentTier `json:"tier"`
}

// ContractSpec records the contractual basis for the consent, mirrored from the CRM.
// +kubebuilder:validation:XValidation:rule="!has(self.expiresAt) || !has(self.acceptedAt) || self.expiresAt > self.acceptedAt",message="contract.expiresAt must be after contract.acceptedAt"
type ContractSpec struct {
	// basis is the kind of agreement: SelfServeTrial, ZeroDollarOrderForm, NewContract, Renewal and
	// CELedTrial (all under the updated Cloud Terms of Service) may allow EventLevel; LegacyTerms
	// (a contract without the updated terms) allows at most CriticalOnly.
	// +required
	Basis ContractBasis `json:"basis"`

	// reference is the CRM account or opportunity id that evidences the agreement. Required for EventLevel.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._:/-]*$`
	Reference string `json:"reference,omitempty"`

	// cloudTermsVersion is the version of the Cloud Terms of Service the customer accepted, as the
	// date that version took effect (YYYY-MM-DD). EventLevel runs only when it is not older than the
	// operator's configured minimum (manager flag --min-cloud-terms-version).
	// +optional
	// +kubebuilder:validation:Pattern=`^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$`
	CloudTermsVersion string `json:"cloudTermsVersion,omitempty"`

	// acceptedAt is when the customer accepted the terms (RFC 3339).
	// +optional
	AcceptedAt *metav1.Time `json:"acceptedAt,omitempty"`

	// expiresAt is when the basis ends, e.g. the end of a trial (RFC 3339). From that moment the
	// operator runs the instance at CriticalOnly at most, without waiting for anyone to edit the policy.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// userLevelEventDataApproved mirrors the CRM field "User Level Event Usage Data Analytics".
	// It must be true for EventLevel.
	// +optional
	UserLevelEventDataApproved bool `json:"userLevelEventDataApproved,omitempty"`
}

// SecretKeyRef names one key of a Secret in the policy's namespace.
type SecretKeyRef struct {
	// name of the Secret, in the policy's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// key within the Secret's data.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}

// SourceSpec says where the instance's events are read from.
type SourceSpec struct {
	// databaseSecretRef names the Secret key holding the instance database's PostgreSQL connection
	// string (a URL or key=value DSN). A read-only role suffices. The operator mounts this Secret into
	// the collector; it never reads it.
	// +required
	DatabaseSecretRef SecretKeyRef `json:"databaseSecretRef"`
}

// ExportSpec says where and how the collector delivers data.
type ExportSpec struct {
	// endpoint is the receiver's base URL; it must use https:// and carry no credentials (the
	// collector authenticates with its client certificate, and a policy is readable by many).
	// Only receivers the manager allows (its --allowed-endpoints; by default the receiver that
	// holds the consent ledger) may be named: another stalls the policy (EndpointNotAllowed).
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') && isURL(self)",message="export.endpoint must be an https:// URL"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[a-z]+://[^/?#]*@')",message="export.endpoint must not contain credentials (user:password@); the collector authenticates with its client certificate"
	Endpoint string `json:"endpoint,omitempty"`

	// caSecretRef names a Secret key holding the PEM CA bundle that signs the receiver's server
	// certificate. When omitted the collector trusts the fleet issuer's CA bundle.
	// +optional
	CASecretRef *SecretKeyRef `json:"caSecretRef,omitempty"`

	// interval is how often the collector looks for new events (a Go duration, 10s to 24h).
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('24h')",message="export.interval must be between 10s and 24h"
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`

	// batchSize is the most events sent in one batch (1 to 10000).
	// +kubebuilder:default=5000
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	BatchSize int32 `json:"batchSize,omitempty"`

	// startFrom says when the instance's first consent period begins: Now (when the operator
	// first enforces the policy) or Beginning (at contract.acceptedAt, which it then requires).
	// It applies only to an instance the receiver has no consent record of: a policy re-created
	// for an instance, or raised to a higher tier later, never reaches back into a period recorded
	// as Off or CriticalOnly. Events leave only if recorded inside a period of EventLevel consent,
	// whatever the collector's saved progress says.
	// +kubebuilder:default=Now
	// +optional
	StartFrom StartPoint `json:"startFrom,omitempty"`
}

// CredentialsSpec controls the collector's mutual-TLS client certificate.
type CredentialsSpec struct {
	// rotationPeriod is how often the client certificate is reissued (a Go duration, 1h to 2160h,
	// 90 days). The certificate is valid for 1.5× this period, so it is always renewed with a
	// third of its lifetime left; the bound keeps a certificate a policy no longer needs (its
	// instance handed over, the policy deleted) from staying valid for longer than 135 days.
	// +kubebuilder:default="720h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h') && duration(self) <= duration('2160h')",message="credentials.rotationPeriod must be between 1h and 2160h (90 days)"
	// +optional
	RotationPeriod *metav1.Duration `json:"rotationPeriod,omitempty"`
}

// DefaultRotationPeriod applies when spec.credentials.rotationPeriod is unset.
const DefaultRotationPeriod = 720 * time.Hour

// DefaultExportInterval applies when spec.export.interval is unset.
const DefaultExportInterval = 5 * time.Minute

// MaxRotationPeriod bounds spec.credentials.rotationPeriod (the CRD refuses more).
const MaxRotationPeriod = 2160 * time.Hour

// RotationPeriodOrDefault returns the rotation period, defaulted, and never above
// MaxRotationPeriod: a policy stored before the bound (or by an API server that did not
// check it) gets no longer-lived certificate.
func (c CredentialsSpec) RotationPeriodOrDefault() time.Duration {
	if c.RotationPeriod == nil || c.RotationPeriod.Duration <= 0 {
		return DefaultRotationPeriod
	}
	return min(c.RotationPeriod.Duration, MaxRotationPeriod)
}

// IntervalOrDefault returns the export interval, defaulted; e may be nil.
func (e *ExportSpec) IntervalOrDefault() time.Duration {
	if e == nil || e.Interval == nil || e.Interval.Duration <= 0 {
		return DefaultExportInterval
	}
	return e.Interval.Duration
}

// CollectorSpec overrides how the collector workload runs.
type CollectorSpec struct {
	// image overrides the collector container image (default: the manager's --collector-image).
	// Only images the manager allows (its --allowed-collector-images; by default other tags of
	// --collector-image) may be named: another stalls the policy (ImageNotAllowed), since the
	// collector runs with the fleet certificate and the instance's pseudonym key.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// resources overrides the collector container's resource requests and limits one by one
	// (default: 50m CPU and 64Mi memory requested, 128Mi memory limit); what it leaves out keeps
	// its default, so the memory limit stays (a memory request above 128Mi raises it too, and a
	// limit below a default request lowers that request). Resource claims are not supported.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.claims)",message="collector.resources.claims is not supported"
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
}

// CredentialsStatus describes the client certificate currently issued to the collector.
type CredentialsStatus struct {
	// revision counts issued certificates; it increases by one on every issue or rotation.
	// +optional
	Revision int64 `json:"revision,omitempty"`
	// serialNumber of the current certificate, in hexadecimal.
	// +optional
	SerialNumber string `json:"serialNumber,omitempty"`
	// notBefore is when the current certificate became valid.
	// +optional
	NotBefore *metav1.Time `json:"notBefore,omitempty"`
	// notAfter is when the current certificate expires.
	// +optional
	NotAfter *metav1.Time `json:"notAfter,omitempty"`
	// renewalTime is when the operator will rotate the certificate next.
	// +optional
	RenewalTime *metav1.Time `json:"renewalTime,omitempty"`
	// lastIssueReason says why the current certificate was issued (Initial, Scheduled, Requested,
	// SecretMissing, KeyMismatch, WrongIdentity, WrongIssuer, Expired).
	// +optional
	LastIssueReason string `json:"lastIssueReason,omitempty"`
}

// ExportStatus is the collector's reported progress (see TelemetryPolicyStatus.Export for how
// fresh it is).
type ExportStatus struct {
	// lastSuccessTime is when the receiver last acknowledged a batch or, in a round with nothing
	// to send, last answered the collector for this instance (reachable, credentials accepted).
	// +optional
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`
	// cursor is the collector's acknowledged position in event_logs (an event id).
	// +optional
	Cursor int64 `json:"cursor,omitempty"`
	// eventsExported counts events (or aggregate cells) the receiver acknowledged.
	// +optional
	EventsExported int64 `json:"eventsExported,omitempty"`
	// eventsDropped counts events dropped by the allow-list or quarantined.
	// +optional
	EventsDropped int64 `json:"eventsDropped,omitempty"`
	// lagSeconds is how far the acknowledged data trails the newest event in the instance.
	// +optional
	LagSeconds int64 `json:"lagSeconds,omitempty"`
	// lastError is the collector's most recent error, if any (never contains event contents).
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	LastError string `json:"lastError,omitempty"`
	// collectorTier is the tier the reporting collector ran with.
	// +optional
	CollectorTier ConsentTier `json:"collectorTier,omitempty"`
}

// ConsentChange is one entry of the consent audit trail: a change of the tier in force, as the
// receiver's consent ledger records it.
type ConsentChange struct {
	// time the change took effect: when consent was granted, or the moment it was withdrawn (the
	// write that lowered it, or a trial's expiry), not when the operator noticed. Events recorded
	// from this time on are judged by the new tier.
	Time metav1.Time `json:"time"`
	// from is the effective tier before the change (empty for the first entry).
	// +optional
	From ConsentTier `json:"from,omitempty"`
	// to is the effective tier after the change.
	To ConsentTier `json:"to"`
	// basis is the contract basis at the time of the change.
	// +optional
	Basis ContractBasis `json:"basis,omitempty"`
	// reason is a CamelCase reason for the change (e.g. Declared, TrialExpired, TermsOutdated).
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason"`
	// until, on a change to EventLevel, is when that consent ends by itself: the basis's
	// expiresAt as recorded with the grant. From then on the receiver holds the instance at
	// CriticalOnly, with no change recorded at that moment and whether or not the operator runs.
	// +optional
	Until *metav1.Time `json:"until,omitempty"`
	// recordedAt is when the receiver recorded the change in its consent ledger.
	// +optional
	RecordedAt *metav1.Time `json:"recordedAt,omitempty"`
}

// ErasurePhase is how far an erasure request has come.
type ErasurePhase string

const (
	// ErasurePending: the request has not been carried out and verified yet.
	ErasurePending ErasurePhase = "Pending"
	// ErasureVerified: the receiver deleted the data in scope and a re-query found none left.
	ErasureVerified ErasurePhase = "Verified"
	// ErasureFailed: the receiver refused the request; the message says why.
	ErasureFailed ErasurePhase = "Failed"
)

// ErasureStatus is the outcome of the last erasure request the operator handled.
type ErasureStatus struct {
	// requestID of the request this status describes.
	RequestID string `json:"requestID"`
	// phase is Pending, Verified or Failed.
	Phase ErasurePhase `json:"phase"`
	// scope that was erased.
	// +optional
	Scope ErasureScope `json:"scope,omitempty"`
	// from is the start of the erased range, as requested.
	// +optional
	From *metav1.Time `json:"from,omitempty"`
	// to is the end of the erased range: as requested, or the moment the receiver carried the
	// request out.
	// +optional
	To *metav1.Time `json:"to,omitempty"`
	// eventsDeleted is how many stored events the erasure deleted.
	// +optional
	EventsDeleted int64 `json:"eventsDeleted,omitempty"`
	// aggregatesDeleted is how many stored aggregate cells the erasure deleted.
	// +optional
	AggregatesDeleted int64 `json:"aggregatesDeleted,omitempty"`
	// requestedAt is when the receiver carried out the request.
	// +optional
	RequestedAt *metav1.Time `json:"requestedAt,omitempty"`
	// verifiedAt is when a re-query found nothing in scope left.
	// +optional
	VerifiedAt *metav1.Time `json:"verifiedAt,omitempty"`
	// message explains a failure.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// TelemetryPolicyStatus is what the operator observed and did.
type TelemetryPolicyStatus struct {
	// observedGeneration is the metadata.generation the status reflects; -1 until first reconciled.
	// +kubebuilder:default=-1
	// +optional
	ObservedGeneration int64 `json:"observedGeneration"`

	// conditions: Ready summarizes; Reconciling and Stalled are present only while true;
	// ConsentEligible, Synced, CredentialsReady and Exporting report each concern.
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// effectiveTier is the tier in force: the tier the receiver's consent ledger records and the
	// collector runs. It changes only once a change is enforced at both points: after a
	// downgrade, only when no collector with an older, higher-tier configuration is left and the
	// receiver refuses data above the new tier; after an upgrade, only when the collector runs
	// it. The tier decided from the spec and contract is in the ConsentEligible condition; it is
	// never higher than spec.consent.tier.
	// +optional
	EffectiveTier ConsentTier `json:"effectiveTier,omitempty"`

	// credentials describes the collector's current client certificate.
	// +optional
	Credentials *CredentialsStatus `json:"credentials,omitempty"`

	// export is the collector's reported progress. An error or its end, the tier and a backlog's
	// progress show at the export round where they change (at most every 10 seconds); while the
	// collector is idle or keeping up, the cursor, counts and success time are refreshed every two
	// export intervals (its Prometheus metrics carry them every round).
	// +optional
	Export *ExportStatus `json:"export,omitempty"`

	// consentHistory is the most recent part of the instance's consent ledger, newest last, at
	// most 20 entries: each change of the tier in force, dated when it took effect. The
	// authoritative, complete record lives at the receiver, where it outlives this policy
	// (see `receiver consent show`).
	// +kubebuilder:validation:MaxItems=20
	// +listType=atomic
	// +optional
	ConsentHistory []ConsentChange `json:"consentHistory,omitempty"`

	// lastHandledRotateRequest echoes the last value of the
	// telemetry.sourcegraph.com/rotate-requested-at annotation that caused a rotation.
	// +optional
	LastHandledRotateRequest string `json:"lastHandledRotateRequest,omitempty"`

	// pendingConsentChanges are withdrawals of consent already enforced on the collector that the
	// receiver's consent ledger has not recorded yet (it was unreachable), dated when consent was
	// withdrawn; they are recorded, in order, as soon as it is reachable, and until then the
	// collector filters by them.
	// +kubebuilder:validation:MaxItems=10
	// +listType=atomic
	// +optional
	PendingConsentChanges []ConsentChange `json:"pendingConsentChanges,omitempty"`

	// observedConsentWriteTime is the time of the newest write to spec.consent or spec.contract
	// the operator has acted on (from metadata.managedFields). A later write that withdraws
	// consent dates the withdrawal, however late the operator notices it.
	// +optional
	ObservedConsentWriteTime *metav1.Time `json:"observedConsentWriteTime,omitempty"`

	// eventLevelExpiresAt is when the contract basis under which EventLevel is recorded as in
	// force expires (spec.contract.expiresAt as the operator last acted on it). A basis extended
	// or replaced only after it had expired still ends consent here: the lapse is recorded, and
	// the renewal grants EventLevel again from when it is recorded, never back over the lapse.
	// The receiver keeps the same expiry with the grant (consentHistory's until) and ends
	// EventLevel there itself; this copy matters for records written without one.
	// +optional
	EventLevelExpiresAt *metav1.Time `json:"eventLevelExpiresAt,omitempty"`

	// erasure is the outcome of the last erasure request (spec.erasure) the operator handled.
	// +optional
	Erasure *ErasureStatus `json:"erasure,omitempty"`

	// lastHandledReconcileAt echoes the last value of the
	// reconcile.telemetry.sourcegraph.com/requestedAt annotation the operator handled, whatever
	// the outcome (a stalled or failing reconcile too: the conditions say how it went).
	// +optional
	LastHandledReconcileAt string `json:"lastHandledReconcileAt,omitempty"`
}

// TelemetryPolicy declares one managed instance's usage-telemetry consent. The operator decides the
// effective tier, runs and configures a collector for it, issues its credentials and reports status.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 40",message="metadata.name must be at most 40 characters: it prefixes the names of the objects the operator creates for the policy"
// +kubebuilder:resource:shortName=tp,categories=telemetry
// +kubebuilder:printcolumn:name="Instance",type=string,JSONPath=`.spec.instanceID`
// +kubebuilder:printcolumn:name="Tier",type=string,JSONPath=`.spec.consent.tier`
// +kubebuilder:printcolumn:name="Effective",type=string,JSONPath=`.status.effectiveTier`
// +kubebuilder:printcolumn:name="Basis",type=string,JSONPath=`.spec.contract.basis`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Synced",type=string,JSONPath=`.status.conditions[?(@.type=="Synced")].status`
// +kubebuilder:printcolumn:name="Last Export",type=date,JSONPath=`.status.export.lastSuccessTime`
// +kubebuilder:printcolumn:name="Reason",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TelemetryPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec declares the consent and how to collect it.
	// +required
	Spec TelemetryPolicySpec `json:"spec"`

	// status is what the operator observed and did.
	// +kubebuilder:default={"observedGeneration":-1}
	// +optional
	Status TelemetryPolicyStatus `json:"status,omitempty"`
}

// TelemetryPolicyList is a list of TelemetryPolicy.
// +kubebuilder:object:root=true
type TelemetryPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TelemetryPolicy `json:"items"`
}
