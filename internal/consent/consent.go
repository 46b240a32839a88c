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
	// ApprovalMissing, BasisNotEligible, NotYetAccepted).
	Reason string
	// Message explains the decision to a human.
	Message string
	// ReevaluateAt, when set, is the next moment at which the decision changes on its own
	// (a trial's expiry, or terms accepted with a future date). The caller schedules a
	// reconcile for it.
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
	case c.CloudTermsVersion != "" && !realDate(c.CloudTermsVersion):
		// (The CRD's pattern admits 2026-02-31, and a value stored before it was tightened
		// stays while nobody changes it.) Compared as text it could pass any minimum.
		return d.downgrade(telemetryv1alpha1.ReasonTermsOutdated,
			fmt.Sprintf("Cloud Terms of Service version %q is not a date (YYYY-MM-DD)", c.CloudTermsVersion))
	case c.CloudTermsVersion > now.UTC().AddDate(0, 0, 1).Format(time.DateOnly):
		// No version dated after today has taken effect (a day's slack for time zones): a
		// version such as 9999-12-31 would pass any minimum, compared as text. Decided again
		// when it takes effect.
		d = d.downgrade(telemetryv1alpha1.ReasonTermsOutdated,
			fmt.Sprintf("Cloud Terms of Service version %s is dated after today: no such version has taken effect", c.CloudTermsVersion))
		at, _ := time.Parse(time.DateOnly, c.CloudTermsVersion)
		at = at.AddDate(0, 0, -1) // the moment it passes the slack above
		d.ReevaluateAt = &at
		return d
	case minTermsVersion != "" && (c.CloudTermsVersion == "" || c.CloudTermsVersion < minTermsVersion):
		// Versions are dates (YYYY-MM-DD), so string order is chronological order.
		have := c.CloudTermsVersion
		if have == "" {
			have = "none recorded"
		}
		return d.downgrade(telemetryv1alpha1.ReasonTermsOutdated,
			fmt.Sprintf("Cloud Terms of Service version %s is older than the required %s", have, minTermsVersion))
	case c.AcceptedAt != nil && now.Before(c.AcceptedAt.Time):
		at := c.AcceptedAt.Time
		d = d.downgrade(telemetryv1alpha1.ReasonNotYetAccepted,
			fmt.Sprintf("the terms are recorded as accepted at %s, which has not come yet", at.UTC().Format(time.RFC3339)))
		d.ReevaluateAt = &at
		return d
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

// realDate reports whether s is a calendar date written YYYY-MM-DD.
func realDate(s string) bool {
	t, err := time.Parse(time.DateOnly, s)
	return err == nil && t.Format(time.DateOnly) == s
}

// Lower returns the lower of two tiers.
func Lower(a, b telemetryv1alpha1.ConsentTier) telemetryv1alpha1.ConsentTier {
	if a.Rank() <= b.Rank() {
		return a
	}
	return b
}

// Change is what the operator knows about a change of the tier in force that it is about to
// record in the consent ledger.
type Change struct {
	// From is the tier the ledger records as in force now; First is true when the ledger has no
	// record of the instance at all.
	From  telemetryv1alpha1.ConsentTier
	First bool
	// LastAt is when the ledger's last transition took effect (zero when First).
	LastAt time.Time
	// To is the decided tier.
	To telemetryv1alpha1.ConsentTier
	// Decision is the decision that produced To.
	Decision Decision
	// Spec is the policy's spec.
	Spec telemetryv1alpha1.TelemetryPolicySpec
	// DeletedAt is set when the policy is being deleted.
	DeletedAt *time.Time
	// SpecWrites are the times of the writes to the policy's consent and contract that the API
	// server recorded (metadata.managedFields, one time per field manager: its last write).
	SpecWrites []time.Time
	// SeenWritesUpTo is the newest of those writes the operator had already acted on (zero when
	// unknown): a withdrawal can only come from a later one.
	SeenWritesUpTo time.Time
	// RunningSince is when this operator process began watching policies (zero: unknown), and
	// DownSince, when known, is when its predecessor was last seen alive (its leader lease's last
	// renewal): writes in between were made while no operator watched.
	RunningSince time.Time
	DownSince    *time.Time
	// Lapsed, when set, is the expiry of the basis EventLevel was recorded under (kept in the
	// policy's status), passed since LastAt: EventLevel ended there at the latest, whatever the
	// spec says now.
	Lapsed *time.Time
	// Now is the operator's current time.
	Now time.Time
}

// TransitionTime returns when the change took effect, and its reason. Consent withdrawn is
// withdrawn when the lowering write reached the API server (or when a trial expired, or the
// policy was deleted), not when the operator got around to it: a lowering caused by an edit is
// dated at the earliest write to consent or contract that the operator had not acted on yet,
// which is the lowering write itself when the operator watched. A write made while no operator
// watched cannot be dated exactly (managedFields keep only each writer's last write, which may
// be a later, unrelated edit): the withdrawal is then dated when the previous operator was last
// seen alive, so consent ends early rather than late. managedFields keep seconds: a write in the
// same second as one already acted on cannot be told apart, and such a withdrawal is dated when
// the operator sees it (milliseconds later when it watches). Consent granted starts now, never before contract.acceptedAt; only
// an instance with no record at all, whose policy says startFrom Beginning, starts at
// contract.acceptedAt.
func TransitionTime(c Change) (time.Time, string) {
	reason := telemetryv1alpha1.ReasonDeclared
	if !c.Decision.Eligible && c.Decision.Reason != "" {
		reason = c.Decision.Reason
	}
	var expired *time.Time
	if c.From == telemetryv1alpha1.TierEventLevel && c.Spec.Contract != nil && c.Spec.Contract.ExpiresAt != nil {
		// EventLevel ended when the basis expired, whatever else ended it since (terms found
		// outdated, approval withdrawn, a lower tier declared, the policy deleted): the decision names only one reason.
		if e := c.Spec.Contract.ExpiresAt.Time; !e.After(c.Now) && !e.Before(c.LastAt) {
			expired = &e
		}
	}
	if l := c.Lapsed; c.From == telemetryv1alpha1.TierEventLevel && l != nil && !l.After(c.Now) && !l.Before(c.LastAt) && (expired == nil || l.Before(*expired)) {
		e := *l
		expired = &e
	}
	if c.DeletedAt != nil {
		if expired != nil && expired.Before(*c.DeletedAt) {
			return *expired, telemetryv1alpha1.ReasonTrialExpired
		}
		return *c.DeletedAt, telemetryv1alpha1.ReasonPolicyDeleted
	}
	var accepted *time.Time
	if c.Spec.Contract != nil && c.Spec.Contract.AcceptedAt != nil {
		t := c.Spec.Contract.AcceptedAt.Time
		accepted = &t
	}
	if c.First || c.To.Rank() > c.From.Rank() {
		at := c.Now
		beginning := c.Spec.Export != nil && c.Spec.Export.StartFrom == telemetryv1alpha1.StartFromBeginning
		if c.First && beginning && accepted != nil {
			at = *accepted
		}
		if accepted != nil && at.Before(*accepted) {
			at = *accepted
		}
		return at, reason
	}
	// Lowering.
	if reason == telemetryv1alpha1.ReasonTrialExpired && c.Spec.Contract != nil && c.Spec.Contract.ExpiresAt != nil {
		return c.Spec.Contract.ExpiresAt.Time, reason
	}
	at := c.Now
	for _, w := range c.SpecWrites {
		switch {
		case !c.SeenWritesUpTo.IsZero() && !w.After(c.SeenWritesUpTo):
			// Acted on already: not the write that lowered consent.
		case w.Before(c.LastAt.Truncate(time.Second)):
			// Before the last transition: it cannot have ended it.
		case w.Before(at):
			at = w
		}
	}
	if at.Before(c.Now) && !c.RunningSince.IsZero() && !at.After(c.RunningSince) && c.DownSince != nil {
		// Written while no operator watched.
		down := *c.DownSince
		if down.Before(c.LastAt) {
			down = c.LastAt
		}
		if down.Before(at) {
			at = down
		}
	}
	if expired != nil && expired.Before(at) {
		return *expired, telemetryv1alpha1.ReasonTrialExpired
	}
	return at, reason
}
