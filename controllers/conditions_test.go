/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

func dep(hash string, gen, observed int64, replicas, updated, available int32, conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
	d := &appsv1.Deployment{}
	d.Generation = gen
	d.Spec.Template.Annotations = map[string]string{resources.AnnotationConfigHash: hash}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: observed, Replicas: replicas, UpdatedReplicas: updated, AvailableReplicas: available, Conditions: conds}
	return d
}

// terminating sets the pods being deleted the Deployment controller reports.
func terminating(d *appsv1.Deployment, n int32) *appsv1.Deployment {
	d.Status.TerminatingReplicas = &n
	return d
}

// TestEnforcedTierWaitsForTerminatingPods: after a downgrade whose later steps stalled, the lower
// tier is reported once no pod of the older, higher-tier template is left. A pod being deleted is
// not in status.replicas, and runs (and may send) until it exits.
func TestEnforcedTierWaitsForTerminatingPods(t *testing.T) {
	lowered := func(d *appsv1.Deployment) *appsv1.Deployment {
		d.Spec.Template.Annotations[resources.AnnotationTier] = string(v1.TierCriticalOnly)
		return d
	}
	cases := []struct {
		name string
		d    *appsv1.Deployment
		want v1.ConsentTier
	}{
		{"the old pod shutting down, none counted", terminating(lowered(dep("h", 3, 3, 0, 0, 0)), 1), v1.TierEventLevel},
		{"the old pod gone, the new one not up yet", terminating(lowered(dep("h", 3, 3, 0, 0, 0)), 0), v1.TierCriticalOnly},
		{"terminating pods not reported, nothing up", lowered(dep("h", 3, 3, 0, 0, 0)), v1.TierEventLevel},
		{"terminating pods not reported, the new pod available", lowered(dep("h", 3, 3, 1, 1, 1)), v1.TierCriticalOnly},
		{"terminating pods not reported, the new pod created but never available", lowered(dep("h", 3, 3, 1, 1, 0)), v1.TierCriticalOnly},
		{"an old pod counted", terminating(lowered(dep("h", 3, 3, 1, 0, 1)), 0), v1.TierEventLevel},
	}
	for _, c := range cases {
		got := enforcedTier(v1.TierEventLevel, v1.TierCriticalOnly, v1.TierCriticalOnly, workloadObservation{v1.TierCriticalOnly, c.d, "other"}, false, true)
		if got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

func TestSetSyncedCondition(t *testing.T) {
	deadline := appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded", Message: "image pull backoff"}
	refused := appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
		Message: `pods "x" is forbidden: exceeded quota: compute`}
	refusedDelete := refused
	refusedDelete.Reason = "FailedDelete"
	refusedOnce := refused
	refusedOnce.Status = corev1.ConditionFalse
	cases := []struct {
		name        string
		obs         workloadObservation
		wantStatus  metav1.ConditionStatus
		wantReason  string
		wantStalled bool
	}{
		{"no deployment yet", workloadObservation{tier: v1.TierEventLevel, configHash: "h"}, metav1.ConditionFalse, ReasonCollectorMissing, false},
		{"old template in spec (stale cache)", workloadObservation{v1.TierEventLevel, dep("old", 2, 2, 1, 1, 1), "h"}, metav1.ConditionFalse, ReasonRollingOut, false},
		{"generation not observed", workloadObservation{v1.TierEventLevel, dep("h", 3, 2, 1, 1, 1), "h"}, metav1.ConditionFalse, ReasonRollingOut, false},
		{"old pod still running", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 1, 0, 1), "h"}, metav1.ConditionFalse, ReasonOldCollectorRunning, false},
		{"old and new pods", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 2, 1, 2), "h"}, metav1.ConditionFalse, ReasonOldCollectorRunning, false},
		{"new pod not available", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 1, 1, 0), "h"}, metav1.ConditionFalse, ReasonCollectorStarting, false},
		{"no pods at all", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 0, 0, 0), "h"}, metav1.ConditionFalse, ReasonCollectorStarting, false},
		{"rollout stuck", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 1, 1, 0, deadline), "h"}, metav1.ConditionFalse, ReasonProgressDeadline, true},
		{"pods refused", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 0, 0, 0, refused), "h"}, metav1.ConditionFalse, ReasonCollectorPodsRefused, false},
		{"pods refused past the deadline", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 0, 0, 0, refused, deadline), "h"}, metav1.ConditionFalse, ReasonProgressDeadline, true},
		// A pod that cannot be deleted is an old one still running (a downgrade not in effect).
		{"old pod not deleted", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 1, 0, 0, refusedDelete), "h"}, metav1.ConditionFalse, ReasonOldCollectorRunning, false},
		{"pods refused once, created since", workloadObservation{v1.TierEventLevel, dep("h", 3, 3, 1, 1, 1, refusedOnce), "h"}, metav1.ConditionTrue, ReasonSynced, false},
		// Recreate starts the current template's pod only once the old ones are gone: a pod
		// still terminating beside an available current one is the current template's (its
		// node lost), and must not keep Synced false.
		{"synced beside a terminating pod of its own template", workloadObservation{v1.TierCriticalOnly, terminating(dep("h", 3, 3, 1, 1, 1), 1), "h"}, metav1.ConditionTrue, ReasonSynced, false},
		{"synced", workloadObservation{v1.TierCriticalOnly, dep("h", 3, 3, 1, 1, 1), "h"}, metav1.ConditionTrue, ReasonSynced, false},
		{"off with deployment left", workloadObservation{v1.TierOff, dep("h", 3, 3, 1, 1, 1), ""}, metav1.ConditionFalse, ReasonCollectorStopping, false},
		{"off and gone", workloadObservation{tier: v1.TierOff}, metav1.ConditionTrue, ReasonCollectorStopped, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &v1.TelemetryPolicy{}
			p.Generation = 7
			stalled := setSyncedCondition(p, tc.obs)
			c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionSynced)
			if c.Status != tc.wantStatus || c.Reason != tc.wantReason || stalled != tc.wantStalled {
				t.Fatalf("got %s/%s stalled=%v (%s), want %s/%s stalled=%v", c.Status, c.Reason, stalled, c.Message, tc.wantStatus, tc.wantReason, tc.wantStalled)
			}
			if c.ObservedGeneration != 7 {
				t.Fatalf("observedGeneration = %d", c.ObservedGeneration)
			}
		})
	}
}

func TestSetExportingCondition(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(d)); return &t }
	cases := []struct {
		name       string
		obs        exportObservation
		wantStatus metav1.ConditionStatus
		wantReason string
		wantStale  *time.Time
		wantInMsg  string
	}{
		{"off", exportObservation{tier: v1.TierOff, now: now}, metav1.ConditionFalse, ReasonExportDisabled, nil, ""},
		{"nothing reported", exportObservation{tier: v1.TierEventLevel, interval: time.Minute, now: now}, metav1.ConditionFalse, ReasonExportNoProgress, nil, ""},
		{"only an error", exportObservation{tier: v1.TierEventLevel, progress: &v1.ExportStatus{LastError: "receiver unreachable"}, interval: time.Minute, now: now},
			metav1.ConditionFalse, ReasonExportNoProgress, nil, "receiver unreachable"},
		{"recent success", exportObservation{tier: v1.TierEventLevel, progress: &v1.ExportStatus{LastSuccessTime: at(-time.Minute)}, interval: 5 * time.Minute, now: now},
			metav1.ConditionTrue, ReasonExportFlowing, &[]time.Time{now.Add(-time.Minute + 16*time.Minute)}[0], ""},
		{"a success dated within the clocks' skew", exportObservation{tier: v1.TierEventLevel, progress: &v1.ExportStatus{LastSuccessTime: at(time.Minute)}, interval: 5 * time.Minute, now: now},
			metav1.ConditionTrue, ReasonExportFlowing, &[]time.Time{now.Add(time.Minute + 16*time.Minute)}[0], ""},
		{"stale success", exportObservation{tier: v1.TierCriticalOnly, progress: &v1.ExportStatus{LastSuccessTime: at(-16 * time.Minute), LastError: "503"}, interval: 5 * time.Minute, now: now},
			metav1.ConditionFalse, ReasonExportStale, nil, "last error: 503"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &v1.TelemetryPolicy{}
			stale := setExportingCondition(p, tc.obs)
			c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionExporting)
			if c.Status != tc.wantStatus || c.Reason != tc.wantReason {
				t.Fatalf("got %s/%s, want %s/%s", c.Status, c.Reason, tc.wantStatus, tc.wantReason)
			}
			if (stale == nil) != (tc.wantStale == nil) || (stale != nil && !stale.Equal(*tc.wantStale)) {
				t.Fatalf("stale at %v, want %v", stale, tc.wantStale)
			}
			if !strings.Contains(c.Message, tc.wantInMsg) {
				t.Fatalf("message %q lacks %q", c.Message, tc.wantInMsg)
			}
		})
	}
}

func TestSetSummaryConditions(t *testing.T) {
	withConds := func(synced, creds metav1.ConditionStatus) *v1.TelemetryPolicy {
		p := &v1.TelemetryPolicy{}
		p.Status.EffectiveTier = v1.TierEventLevel
		setCondition(p, v1.ConditionSynced, synced, "S", "synced msg")
		setCondition(p, v1.ConditionCredentialsReady, creds, "C", "creds msg")
		setCondition(p, v1.ConditionConsentRecorded, metav1.ConditionTrue, "R", "recorded msg")
		return p
	}
	withLedger := func(recorded metav1.ConditionStatus) *v1.TelemetryPolicy {
		p := withConds(metav1.ConditionTrue, metav1.ConditionTrue)
		setCondition(p, v1.ConditionConsentRecorded, recorded, "L", "ledger msg")
		return p
	}
	withErasure := func(done metav1.ConditionStatus) *v1.TelemetryPolicy {
		p := withConds(metav1.ConditionTrue, metav1.ConditionTrue)
		setCondition(p, v1.ConditionErasureCompleted, done, "E", "erasure msg")
		return p
	}
	cases := []struct {
		name                      string
		p                         *v1.TelemetryPolicy
		s                         summary
		ready                     metav1.ConditionStatus
		readyReason               string
		reconciling, stalledShown bool
	}{
		{"all good", withConds(metav1.ConditionTrue, metav1.ConditionTrue), summary{}, metav1.ConditionTrue, ReasonEnforced, false, false},
		{"rolling out", withConds(metav1.ConditionFalse, metav1.ConditionTrue), summary{}, metav1.ConditionFalse, "S", true, false},
		{"credentials missing", withConds(metav1.ConditionTrue, metav1.ConditionFalse), summary{}, metav1.ConditionFalse, "C", true, false},
		{"error", withConds(metav1.ConditionTrue, metav1.ConditionTrue), summary{errMsg: "boom"}, metav1.ConditionFalse, ReasonReconcileError, true, false},
		{"stalled", withConds(metav1.ConditionFalse, metav1.ConditionTrue), summary{stalledReason: "IssuerUnavailable", stalledMsg: "x"}, metav1.ConditionFalse, "IssuerUnavailable", false, true},
		{"suspended", withConds(metav1.ConditionTrue, metav1.ConditionTrue), summary{suspended: true}, metav1.ConditionFalse, ReasonSuspended, false, false},
		{"receiver has not recorded the consent", withLedger(metav1.ConditionFalse), summary{}, metav1.ConditionFalse, "L", true, false},
		{"a consent change not in force yet", withConds(metav1.ConditionTrue, metav1.ConditionTrue), summary{pending: true}, metav1.ConditionFalse, ReasonConsentPending, true, false},
		{"erasure pending", withErasure(metav1.ConditionFalse), summary{}, metav1.ConditionFalse, "E", true, false},
		{"erasure verified", withErasure(metav1.ConditionTrue), summary{}, metav1.ConditionTrue, ReasonEnforced, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A previous Reconciling/Stalled must be cleared when no longer true.
			setCondition(tc.p, v1.ConditionReconciling, metav1.ConditionTrue, "old", "old")
			setCondition(tc.p, v1.ConditionStalled, metav1.ConditionTrue, "old", "old")
			setSummaryConditions(tc.p, tc.s)
			r := meta.FindStatusCondition(tc.p.Status.Conditions, v1.ConditionReady)
			if r.Status != tc.ready || r.Reason != tc.readyReason {
				t.Fatalf("Ready = %s/%s, want %s/%s", r.Status, r.Reason, tc.ready, tc.readyReason)
			}
			if got := meta.FindStatusCondition(tc.p.Status.Conditions, v1.ConditionReconciling) != nil; got != tc.reconciling {
				t.Fatalf("Reconciling present = %v, want %v", got, tc.reconciling)
			}
			if got := meta.FindStatusCondition(tc.p.Status.Conditions, v1.ConditionStalled) != nil; got != tc.stalledShown {
				t.Fatalf("Stalled present = %v, want %v", got, tc.stalledShown)
			}
			for _, typ := range []string{v1.ConditionConsentEligible, v1.ConditionConsentRecorded, v1.ConditionExporting} {
				if meta.FindStatusCondition(tc.p.Status.Conditions, typ) == nil {
					t.Fatalf("%s is not written on the first visit", typ)
				}
			}
		})
	}
}

func TestDecideRotation(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name                    string
		problem                 string
		exists, issuedBefore    bool
		renewal                 time.Time
		requested, handled      string
		wantReason, wantRequest string
	}{
		{"first issue", "", false, false, time.Time{}, "", "", pki.IssueInitial, ""},
		{"secret deleted", "", false, true, time.Time{}, "", "", pki.IssueSecretMissing, ""},
		{"tampered", pki.IssueKeyMismatch, true, true, now.Add(time.Hour), "", "", pki.IssueKeyMismatch, ""},
		{"not due", "", true, true, now.Add(time.Second), "", "", "", ""},
		{"due exactly now", "", true, true, now, "", "", pki.IssueScheduled, ""},
		{"new manual request", "", true, true, now.Add(time.Hour), "r1", "", pki.IssueRequested, "r1"},
		{"request already handled", "", true, true, now.Add(time.Hour), "r1", "r1", "", ""},
		{"another request", "", true, true, now.Add(time.Hour), "r2", "r1", pki.IssueRequested, "r2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := decideRotation(tc.problem, tc.exists, tc.issuedBefore, tc.renewal, now, tc.requested, tc.handled)
			if d.reason != tc.wantReason || d.request != tc.wantRequest {
				t.Fatalf("got %+v, want reason %q request %q", d, tc.wantReason, tc.wantRequest)
			}
		})
	}
}

func TestParseCollectorStateIsDefensive(t *testing.T) {
	cases := map[string]string{
		"not JSON":          `{`,
		"wrong types":       `{"cursor":"many"}`,
		"oversized":         `{"lastError":"` + strings.Repeat("a", maxStateSize) + `"}`,
		"huge number":       `{"cursor": 1e400}`,
		"invalid tier kept": `{"tier":"Everything","cursor":5}`,
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			s := parseCollectorState(raw)
			if s == nil {
				t.Fatal("nil state")
			}
			if name == "invalid tier kept" {
				if s.CollectorTier != "" || s.Cursor != 5 {
					t.Fatalf("an unknown tier must be dropped, got %+v", s)
				}
				return
			}
			if s.LastError == "" {
				t.Fatalf("malformed state must be reported, got %+v", s)
			}
		})
	}
	long := parseCollectorState(`{"lastError":"` + strings.Repeat("e", 5000) + `"}`)
	if len(long.LastError) > 1024 {
		t.Fatalf("lastError not truncated: %d bytes", len(long.LastError))
	}
}

func TestWatchGap(t *testing.T) {
	start := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name     string
		lease    *LeaseObservation
		wantDown *time.Time
	}{
		{name: "no leader election: unknown", lease: nil},
		{name: "a lease released on shutdown: its last renewal",
			lease:    &LeaseObservation{Holder: "", RenewTime: start.Add(-3 * time.Second), Duration: time.Second, ObservedAt: start.Add(-time.Second)},
			wantDown: ptrTo(start.Add(-3 * time.Second))},
		{name: "an expired lease (the leader crashed): its last renewal",
			lease:    &LeaseObservation{Holder: "old", RenewTime: start.Add(-time.Minute), Duration: 15 * time.Second, ObservedAt: start.Add(-time.Second)},
			wantDown: ptrTo(start.Add(-time.Minute))},
		{name: "a live leader when this one started (a standby): a lease duration and a retry before taking over",
			lease:    &LeaseObservation{Holder: "active", RenewTime: start.Add(-10 * time.Hour), Duration: 15 * time.Second, ObservedAt: start.Add(-10*time.Hour + time.Second)},
			wantDown: ptrTo(start.Add(-17 * time.Second))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &TelemetryPolicyReconciler{Clock: clocktesting.NewFakePassiveClock(start), Options: Options{StartLease: tc.lease}}
			running, down := r.watchGap()
			if !running.Equal(start.Add(watchMargin)) {
				t.Fatalf("running since %s", running)
			}
			if (down == nil) != (tc.wantDown == nil) || down != nil && !down.Equal(*tc.wantDown) {
				t.Fatalf("down since %v, want %v", down, tc.wantDown)
			}
		})
	}
}

func TestLostWithdrawals(t *testing.T) {
	at := func(h int) metav1.Time { return metav1.NewTime(time.Date(2026, 11, 1, h, 0, 0, 0, time.UTC)) }
	copyOf := []v1.ConsentChange{
		{Time: at(1), To: v1.TierEventLevel},
		{Time: at(2), From: v1.TierEventLevel, To: v1.TierOff},
		{Time: at(3), From: v1.TierOff, To: v1.TierEventLevel},
		{Time: at(4), From: v1.TierEventLevel, To: v1.TierCriticalOnly},
	}
	full := timelineOf(copyOf)
	if lost, ok := lostWithdrawals(copyOf, append(full, consentv1.Transition{At: at(5).Time, Tier: consentv1.TierOff})); !ok || lost != nil {
		t.Fatalf("a receiver record that holds the copy and more: lost %v, consistent %v", lost, ok)
	}
	if lost, ok := lostWithdrawals(copyOf[2:], full); !ok || lost != nil {
		t.Fatalf("a copy that is the record's tail: lost %v, consistent %v", lost, ok)
	}
	lost, ok := lostWithdrawals(copyOf, full[:1])
	if ok || len(lost) != 2 || lost[0].Tier != consentv1.TierOff || !lost[0].At.Equal(at(2).Time) || lost[1].Tier != consentv1.TierCriticalOnly {
		t.Fatalf("withdrawals the receiver lost: %v, consistent %v", lost, ok)
	}
	if lost, ok := lostWithdrawals(copyOf, nil); ok || len(lost) != 2 {
		t.Fatalf("a record lost entirely: %v, consistent %v", lost, ok)
	}
}

func ptrTo[T any](v T) *T { return &v }

// A success dated ahead of the manager's clock is believed within the clocks' skew (the
// collector runs on another node) and not beyond it (written by hand into the tenant's state).
func TestASuccessDatedAheadIsBelievedOnlyWithinTheClockSkew(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		ahead    time.Duration
		believed bool
	}{
		{-time.Hour, true},
		{maxCollectorClockAhead - time.Second, true},
		{maxCollectorClockAhead, true},
		{maxCollectorClockAhead + time.Second, false},
		{24 * time.Hour, false},
	} {
		at := metav1.NewTime(now.Add(tc.ahead))
		progress := &v1.ExportStatus{LastSuccessTime: &at}
		dropSuccessDatedAhead(progress, now)
		if believed := progress.LastSuccessTime != nil; believed != tc.believed {
			t.Errorf("a success dated %v ahead: believed = %v, want %v", tc.ahead, believed, tc.believed)
		}
		if !tc.believed && !strings.Contains(progress.LastError, "not believed") {
			t.Errorf("a success dated %v ahead: lastError %q does not say it is not believed", tc.ahead, progress.LastError)
		}
	}
	dropSuccessDatedAhead(nil, now) // no progress reported: nothing to do
}
