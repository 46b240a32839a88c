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
		{name: "terms accepted in the future do not grant EventLevel yet", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.AcceptedAt = at(2 * time.Hour); c.ExpiresAt = at(48 * time.Hour) }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonNotYetAccepted, wantReeval: &[]time.Time{now.Add(2 * time.Hour)}[0], wantInMessage: "has not come yet"},
		{name: "terms accepted at this very moment grant EventLevel", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.AcceptedAt = at(0) }),
			wantTier: v1.TierEventLevel, wantReason: v1.ReasonEligible, wantReeval: &[]time.Time{now.Add(time.Hour)}[0]},
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
		{name: "terms version dated after today (it would pass any minimum)", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.CloudTermsVersion = "9999-12-31" }), minTerms: "2024-01-01",
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonTermsOutdated, wantInMessage: "9999-12-31 is dated after today",
			wantReeval: &[]time.Time{time.Date(9999, 12, 30, 0, 0, 0, 0, time.UTC)}[0]},
		{name: "terms version that is no calendar date (the CRD pattern admits it)", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.CloudTermsVersion = "2026-02-31" }), minTerms: "2024-01-01",
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonTermsOutdated, wantInMessage: "is not a date"},
		{name: "terms version stored before the pattern was tightened", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.CloudTermsVersion = "2025-19-40" }),
			wantTier: v1.TierCriticalOnly, wantReason: v1.ReasonTermsOutdated, wantInMessage: "is not a date"},
		{name: "terms version dated tomorrow somewhere (time zones)", spec: spec(v1.TierEventLevel, func(c *v1.ContractSpec) { c.CloudTermsVersion = "2026-11-29" }), minTerms: "2024-01-01",
			wantTier: v1.TierEventLevel, wantReason: v1.ReasonEligible, wantReeval: &[]time.Time{now.Add(time.Hour)}[0]},
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

func TestTransitionTime(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	mt := func(t time.Time) *metav1.Time { m := metav1.NewTime(t); return &m }
	spec := func(startFrom v1.StartPoint, accepted, expires *metav1.Time) v1.TelemetryPolicySpec {
		return v1.TelemetryPolicySpec{
			Consent:  v1.ConsentSpec{Tier: v1.TierEventLevel},
			Contract: &v1.ContractSpec{Basis: v1.BasisSelfServeTrial, AcceptedAt: accepted, ExpiresAt: expires},
			Export:   &v1.ExportSpec{StartFrom: startFrom},
		}
	}
	eligible := Decision{Eligible: true, Reason: v1.ReasonEligible}
	deleted := ago(3 * time.Second)
	cases := []struct {
		name       string
		c          Change
		wantAt     time.Time
		wantReason string
	}{
		{name: "first record with startFrom Beginning starts at acceptance",
			c:      Change{First: true, From: v1.TierOff, To: v1.TierEventLevel, Decision: eligible, Spec: spec(v1.StartFromBeginning, mt(ago(30*24*time.Hour)), nil), Now: now},
			wantAt: ago(30 * 24 * time.Hour), wantReason: v1.ReasonDeclared},
		{name: "first record with startFrom Now starts now",
			c:      Change{First: true, From: v1.TierOff, To: v1.TierEventLevel, Decision: eligible, Spec: spec(v1.StartFromNow, mt(ago(30*24*time.Hour)), nil), Now: now},
			wantAt: now, wantReason: v1.ReasonDeclared},
		{name: "an upgrade after history never reaches back to acceptance, even with Beginning",
			c:      Change{From: v1.TierCriticalOnly, LastAt: ago(10 * 24 * time.Hour), To: v1.TierEventLevel, Decision: eligible, Spec: spec(v1.StartFromBeginning, mt(ago(30*24*time.Hour)), nil), Now: now},
			wantAt: now, wantReason: v1.ReasonDeclared},
		{name: "never before acceptance",
			c:      Change{First: true, From: v1.TierOff, To: v1.TierEventLevel, Decision: eligible, Spec: spec(v1.StartFromNow, mt(now.Add(time.Minute)), nil), Now: now},
			wantAt: now.Add(time.Minute), wantReason: v1.ReasonDeclared},
		{name: "a trial's expiry closes at expiresAt, however late the operator notices",
			c: Change{From: v1.TierEventLevel, LastAt: ago(48 * time.Hour), To: v1.TierCriticalOnly,
				Decision: Decision{Reason: v1.ReasonTrialExpired}, Spec: spec(v1.StartFromNow, nil, mt(ago(26*time.Hour))), Now: now},
			wantAt: ago(26 * time.Hour), wantReason: v1.ReasonTrialExpired},
		{name: "an expired trial closes at expiresAt when another reason is named (terms outdated too)",
			c: Change{From: v1.TierEventLevel, LastAt: ago(48 * time.Hour), To: v1.TierCriticalOnly,
				Decision: Decision{Reason: v1.ReasonTermsOutdated}, Spec: spec(v1.StartFromNow, nil, mt(ago(6*time.Hour))), Now: now},
			wantAt: ago(6 * time.Hour), wantReason: v1.ReasonTrialExpired},
		{name: "an expired trial closes at expiresAt when a lower tier is declared later",
			c: Change{From: v1.TierEventLevel, LastAt: ago(48 * time.Hour), To: v1.TierOff, Decision: eligible, Spec: spec(v1.StartFromNow, nil, mt(ago(6*time.Hour))),
				SpecWrites: []time.Time{ago(time.Hour)}, Now: now},
			wantAt: ago(6 * time.Hour), wantReason: v1.ReasonTrialExpired},
		{name: "an expiry before the last transition was acted on already",
			c: Change{From: v1.TierEventLevel, LastAt: ago(2 * time.Hour), To: v1.TierCriticalOnly, Decision: Decision{Reason: v1.ReasonTermsOutdated},
				Spec: spec(v1.StartFromNow, nil, mt(ago(6*time.Hour))), Now: now},
			wantAt: now, wantReason: v1.ReasonTermsOutdated},
		{name: "a policy deleted after its trial expired: consent ended at expiresAt",
			c: Change{From: v1.TierEventLevel, LastAt: ago(48 * time.Hour), To: v1.TierOff, Decision: eligible, Spec: spec(v1.StartFromNow, nil, mt(ago(6*time.Hour))),
				DeletedAt: ptrTime(ago(time.Hour)), Now: now},
			wantAt: ago(6 * time.Hour), wantReason: v1.ReasonTrialExpired},
		{name: "an expiry does not end CriticalOnly",
			c: Change{From: v1.TierCriticalOnly, LastAt: ago(48 * time.Hour), To: v1.TierOff, Decision: eligible, Spec: spec(v1.StartFromNow, nil, mt(ago(6*time.Hour))),
				SpecWrites: []time.Time{ago(time.Hour)}, Now: now},
			wantAt: ago(time.Hour), wantReason: v1.ReasonDeclared},
		{name: "an edit that lowers consent closes at the write, not when the operator sees it",
			c: Change{From: v1.TierEventLevel, LastAt: ago(time.Hour), To: v1.TierCriticalOnly, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(5 * time.Hour), ago(40 * time.Minute)}, Now: now},
			wantAt: ago(40 * time.Minute), wantReason: v1.ReasonDeclared},
		{name: "several writers while the operator was away: the earliest write after the last transition",
			c: Change{From: v1.TierEventLevel, LastAt: ago(time.Hour), To: v1.TierOff, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(10 * time.Minute), ago(50 * time.Minute), ago(2 * time.Hour)}, Now: now},
			wantAt: ago(50 * time.Minute), wantReason: v1.ReasonDeclared},
		{name: "a write in the same second as the last transition counts",
			c: Change{From: v1.TierEventLevel, LastAt: ago(time.Hour).Add(700 * time.Millisecond), To: v1.TierOff, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(time.Hour)}, Now: now},
			wantAt: ago(time.Hour), wantReason: v1.ReasonDeclared},
		{name: "writes the operator already acted on are not the withdrawal",
			c: Change{From: v1.TierEventLevel, LastAt: ago(30 * 24 * time.Hour), To: v1.TierCriticalOnly, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(14 * 24 * time.Hour), ago(20 * time.Second)}, SeenWritesUpTo: ago(14 * 24 * time.Hour), Now: now},
			wantAt: ago(20 * time.Second), wantReason: v1.ReasonDeclared},
		{name: "a lowering write in the same second as one acted on: dated when seen",
			c: Change{From: v1.TierEventLevel, LastAt: ago(time.Hour), To: v1.TierCriticalOnly, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(time.Second)}, SeenWritesUpTo: ago(time.Second), Now: now},
			wantAt: now, wantReason: v1.ReasonDeclared},
		{name: "a write made while no operator watched: dated when the previous operator was last alive",
			c: Change{From: v1.TierEventLevel, LastAt: ago(48 * time.Hour), To: v1.TierCriticalOnly, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(10 * time.Minute)}, RunningSince: ago(time.Minute), DownSince: ptrTime(ago(30 * time.Minute)), Now: now},
			wantAt: ago(30 * time.Minute), wantReason: v1.ReasonDeclared},
		{name: "a write seen live is dated by itself, whatever the operator's past",
			c: Change{From: v1.TierEventLevel, LastAt: ago(48 * time.Hour), To: v1.TierCriticalOnly, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(2 * time.Second)}, RunningSince: ago(time.Hour), DownSince: ptrTime(ago(70 * time.Minute)), Now: now},
			wantAt: ago(2 * time.Second), wantReason: v1.ReasonDeclared},
		{name: "downtime before the last transition does not reach behind it",
			c: Change{From: v1.TierEventLevel, LastAt: ago(20 * time.Minute), To: v1.TierOff, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				SpecWrites: []time.Time{ago(10 * time.Minute)}, RunningSince: ago(time.Minute), DownSince: ptrTime(ago(time.Hour)), Now: now},
			wantAt: ago(20 * time.Minute), wantReason: v1.ReasonDeclared},
		{name: "no spec write to blame (a manager flag changed): now",
			c: Change{From: v1.TierEventLevel, LastAt: ago(time.Hour), To: v1.TierCriticalOnly, Decision: Decision{Reason: v1.ReasonTermsOutdated},
				Spec: spec(v1.StartFromNow, nil, nil), SpecWrites: []time.Time{ago(2 * time.Hour)}, Now: now},
			wantAt: now, wantReason: v1.ReasonTermsOutdated},
		{name: "deletion closes at the deletion timestamp",
			c: Change{From: v1.TierEventLevel, LastAt: ago(time.Hour), To: v1.TierOff, Decision: eligible, Spec: spec(v1.StartFromNow, nil, nil),
				DeletedAt: &deleted, SpecWrites: []time.Time{ago(2 * time.Second)}, Now: now},
			wantAt: deleted, wantReason: v1.ReasonPolicyDeleted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			at, reason := TransitionTime(tc.c)
			if !at.Equal(tc.wantAt) || reason != tc.wantReason {
				t.Fatalf("got %s %s, want %s %s", at.Format(time.RFC3339Nano), reason, tc.wantAt.Format(time.RFC3339Nano), tc.wantReason)
			}
		})
	}
}

func ptrTime(t time.Time) *time.Time { return &t }
