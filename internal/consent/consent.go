/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package consent decides a policy's effective telemetry tier from its declared consent and
// contract. It is pure: callers gather the inputs and pass the current time.
package consent

import (
	"fmt"
	"time"

	telemetryv1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// Decision is the outcome for one policy at one moment.
type Decision struct {
	// Declared is the tier the policy asks for.
	Declared telemetryv1alpha1.ConsentTier
	// Effective is the tier to enforce; never higher than Declared.
	Effective telemetryv1alpha1.ConsentTier
	// Eligible is false when Effective is lower than Declared.
	Eligible bool
	// Reason is a CamelCase reason for ConsentEligible (Eligible, TrialExpired, TermsOutdated,
	// ApprovalMissing, BasisNotEligible).
	Reason string
	// Message explains the decision to a human.
	Message string
	// ReevaluateAt, when set, is the next moment at which the decision changes on its own
	// (a trial's expiry). The caller schedules a reconcile for it.
	ReevaluateAt *time.Time
}

// Decide returns the effective tier of spec at now. minTermsVersion is the oldest Cloud Terms of
// Service version (YYYY-MM-DD) that allows EventLevel; empty means any version is accepted.
func Decide(spec telemetryv1alpha1.TelemetryPolicySpec, minTermsVersion string, now time.Time) Decision {
	d := Decision{Declared: spec.Consent.Tier}
	switch spec.Consent.Tier {
	case telemetryv1alpha1.TierOff:
		return d.allow("consent tier Off: nothing is collected")
	case telemetryv1alpha1.TierCriticalOnly:
		return d.allow("consent tier CriticalOnly: aggregated, anonymized counts only")
	case telemetryv1alpha1.TierEventLevel:
	default:
		// An unknown tier cannot be honoured; fail closed to nothing at all.
		d.Effective = telemetryv1alpha1.TierOff
		d.Reason = telemetryv1alpha1.ReasonBasisNotEligible
		d.Message = fmt.Sprintf("unknown consent tier %q: nothing is collected", spec.Consent.Tier)
		return d
	}

	c := spec.Contract
	switch {
	case c == nil:
		return d.downgrade(telemetryv1alpha1.ReasonBasisNotEligible, "EventLevel requires a contract basis; none is recorded")
	case !c.Basis.EventLevelEligible():
		return d.downgrade(telemetryv1alpha1.ReasonBasisNotEligible,
			fmt.Sprintf("contract basis %q does not include the updated Cloud Terms of Service; it allows at most CriticalOnly", c.Basis))
	case !c.UserLevelEventDataApproved:
		return d.downgrade(telemetryv1alpha1.ReasonApprovalMissing,
			`the CRM field "User Level Event Usage Data Analytics" is not set to Yes (contract.userLevelEventDataApproved)`)
	case c.Reference == "":
		return d.downgrade(telemetryv1alpha1.ReasonApprovalMissing,
			"no CRM account or opportunity reference evidences the approval (contract.reference)")
	case minTermsVersion != "" && (c.CloudTermsVersion == "" || c.CloudTermsVersion < minTermsVersion):
		// Versions are dates (YYYY-MM-DD), so string order is chronological order.
		have := c.CloudTermsVersion
		if have == "" {
			have = "none recorded"
		}
		return d.downgrade(telemetryv1alpha1.ReasonTermsOutdated,
			fmt.Sprintf("Cloud Terms of Service version %s is older than the required %s", have, minTermsVersion))
	case c.ExpiresAt != nil && !now.Before(c.ExpiresAt.Time):
		return d.downgrade(telemetryv1alpha1.ReasonTrialExpired,
			fmt.Sprintf("the %s basis expired at %s", c.Basis, c.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	d = d.allow("EventLevel is allowed by the " + string(c.Basis) + " basis")
	if c.ExpiresAt != nil {
		at := c.ExpiresAt.Time
		d.ReevaluateAt = &at
		d.Message += ", until " + at.UTC().Format(time.RFC3339)
	}
	return d
}

func (d Decision) allow(msg string) Decision {
	d.Effective = d.Declared
	d.Eligible = true
	d.Reason = telemetryv1alpha1.ReasonEligible
	d.Message = msg
	return d
}

func (d Decision) downgrade(reason, msg string) Decision {
	d.Effective = telemetryv1alpha1.TierCriticalOnly
	d.Eligible = false
	d.Reason = reason
	d.Message = msg + "; running as CriticalOnly"
	return d
}

// Lower returns the lower of two tiers.
func Lower(a, b telemetryv1alpha1.ConsentTier) telemetryv1alpha1.ConsentTier {
	if a.Rank() <= b.Rank() {
		return a
	}
	return b
}
