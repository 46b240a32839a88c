/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package consent

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(d)); return &t }
	eligible := func() *v1.ContractSpec {
		return &v1.ContractSpec{
			Basis: v1.BasisSelfServeTrial, Reference: "0065e00000AbCdEf", CloudTermsVersion: "2024-06-01",
			AcceptedAt: at(-24 * time.Hour), ExpiresAt: at(time.Hour), UserLevelEventDataApproved: true,
		}
	}
	spec := func(tier v1.ConsentTier, mutate func(*v1.ContractSpec)) v1.TelemetryPolicySpec {
		c := eligible()
		if mutate != nil {
			mutate(c)
		}
		return v1.TelemetryPolicySpec{InstanceID: "acme", Consent: v1.ConsentSpec{Tier: tier}, Contract: c}
	}

	cases := []struct {
		name          string
		spec          v1.TelemetryPolicySpec
		minTerms      string
		wantTier      v1.ConsentTier
		wantReason    string
		wantReeval    *time.Time
		wantInMessage string
	}{
		{name: "eligible trial runs EventLevel until expiry", spec: spec(v1.TierEventLevel, nil), minTerms: "2024-01-01",
			wantTier: v1.TierEventLevel, wantReason: v1.ReasonEligible, wantReeval: &[]time.Time{now.Add(time.Hour)}[0]},
		{name: "contract without expiry needs no re-evaluation", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.Basis = v1.BasisNewContract; c.ExpiresAt = nil }),
			wantTier: v1.TierEventLevel, wantReason: v1.ReasonEligible},
		{name: "expired trial is downgraded", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.ExpiresAt = at(-time.Second) }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonTrialExpired, wantInMessage: "expired at 2026-11-28T11:59:59Z"},
		{name: "expiry takes effect at the exact moment", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.ExpiresAt = at(0) }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonTrialExpired},
		{name: "legacy terms are not eligible", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.Basis = v1.BasisLegacyTerms }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonBasisNotEligible, wantInMessage: "LegacyTerms"},
		{name: "missing contract is not eligible", spec: v1.TelemetryPolicySpec{Consent: v1.ConsentSpec{Tier: v1.TierEventLevel}},
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonBasisNotEligible},
		{name: "missing CRM approval", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.UserLevelEventDataApproved = false }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonApprovalMissing, wantInMessage: "User Level Event Usage Data Analytics"},
		{name: "missing CRM reference", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.Reference = "" }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonApprovalMissing, wantInMessage: "reference"},
		{name: "outdated terms", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.CloudTermsVersion = "2023-12-31" }), minTerms: "2024-01-01",
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonTermsOutdated, wantInMessage: "2023-12-31 is older than the required 2024-01-01"},
		{name: "terms version missing when a minimum is configured", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.CloudTermsVersion = "" }), minTerms: "2024-01-01",
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonTermsOutdated, wantInMessage: "none recorded"},
		{name: "terms equal to the minimum are fine", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.CloudTermsVersion = "2024-01-01" }), minTerms: "2024-01-01",
			wantTier: v1.TierEventLevel, wantReason: v1.ReasonEligible, wantReeval: &[]time.Time{now.Add(time.Hour)}[0]},
		{name: "basis is checked before approval", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.Basis = v1.BasisLegacyTerms; c.UserLevelEventDataApproved = false }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonBasisNotEligible},
		{name: "CriticalOnly is never upgraded, even on an eligible contract", spec: spec(v1.TierCriticalOnly, nil),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonEligible},
		{name: "CriticalOnly on an expired trial stays CriticalOnly", spec: spec(v1.TierCriticalOnly, func(c *v1.ContractSpec) { c.ExpiresAt = at(-time.Hour) }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonEligible},
		{name: "Off is never upgraded", spec: spec(v1.TierOff, nil),
			wantTier: v1.TierOff, wantReason: v1.ReasonEligible},
		{name: "unknown tier fails closed", spec: spec("Everything", nil),
			wantTier: v1.TierOff, wantReason: v1.ReasonBasisNotEligible},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.spec, tc.minTerms, now)
			if d.Effective != tc.wantTier {
				t.Errorf("effective tier = %s, want %s (%s)", d.Effective, tc.wantTier, d.Message)
			}
			if d.Reason != tc.wantReason {
				t.Errorf("reason = %s, want %s", d.Reason, tc.wantReason)
			}
			if d.Effective.Rank() > tc.spec.Consent.Tier.Rank() {
				t.Errorf("effective tier %s is higher than declared %s", d.Effective, tc.spec.Consent.Tier)
			}
			if d.Eligible != (d.Effective == tc.spec.Consent.Tier) {
				t.Errorf("eligible = %v with effective %s and declared %s", d.Eligible, d.Effective, tc.spec.Consent.Tier)
			}
			switch {
			case tc.wantReeval == nil && d.ReevaluateAt != nil:
				t.Errorf("unexpected re-evaluation at %v", d.ReevaluateAt)
			case tc.wantReeval != nil && (d.ReevaluateAt == nil || !d.ReevaluateAt.Equal(*tc.wantReeval)):
				t.Errorf("re-evaluate at %v, want %v", d.ReevaluateAt, tc.wantReeval)
			}
			if !strings.Contains(d.Message, tc.wantInMessage) {
				t.Errorf("message %q does not mention %q", d.Message, tc.wantInMessage)
			}
		})
	}
}

func TestLower(t *testing.T) {
	tiers := []v1.ConsentTier{v1.TierOff, v1.TierCriticalOnly, v1.TierEventLevel}
	for i, a := range tiers {
		for j, b := range tiers {
			want := tiers[min(i, j)]
			if got := Lower(a, b); got != want {
				t.Errorf("Lower(%s, %s) = %s, want %s", a, b, got, want)
			}
		}
	}
	if got := Lower("bogus", v1.TierEventLevel); got.Rank() != 0 {
		t.Errorf("an unknown tier must rank lowest, got %s", got)
	}
}
