/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"testing"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// TestPollingWithoutWatches: with the tenant namespaces unwatched, a policy that is not Ready is
// looked at again from 1 s, doubling up to 15 s (or the resync); once Ready, Stalled or
// suspended, every resync, and a policy that falls back starts again from 1 s. With watches
// nothing is polled.
func TestPollingWithoutWatches(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	r := &TelemetryPolicyReconciler{Clock: clocktesting.NewFakePassiveClock(start), Options: Options{TenantResync: 10 * time.Second}}
	p := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}}
	other := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "p"}}
	setReady := func(ready bool) {
		status := metav1.ConditionFalse
		if ready {
			status = metav1.ConditionTrue
		}
		apimeta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: status, Reason: "Test"})
	}
	next := func(pol *v1.TelemetryPolicy) time.Duration {
		return r.result(&reconcileState{policy: pol}).RequeueAfter
	}
	r.Options.TenantResync = time.Hour
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 15 * time.Second, 15 * time.Second} {
		if got := next(p); got != want {
			t.Fatalf("not Ready, resync 1h, look %d: requeue after %s, want %s", i+1, got, want)
		}
	}
	apimeta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{Type: v1.ConditionStalled, Status: metav1.ConditionTrue, Reason: "Test"})
	if got := next(p); got != time.Hour {
		t.Errorf("Stalled: requeue after %s, want the resync", got)
	}
	apimeta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionStalled)
	p.Spec.Suspend = true
	if got := next(p); got != time.Hour {
		t.Errorf("suspended: requeue after %s, want the resync", got)
	}
	p.Spec.Suspend = false
	r.Options.TenantResync = 10 * time.Second
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		if got := next(p); got != want {
			t.Fatalf("not Ready, look %d: requeue after %s, want %s", i+1, got, want)
		}
	}
	if got := next(other); got != time.Second {
		t.Errorf("another policy shares the backoff: %s", got)
	}
	p.Generation++
	if got := next(p); got != time.Second {
		t.Errorf("a changed policy: requeue after %s, want 1s again", got)
	}
	if got := next(p); got != 2*time.Second {
		t.Errorf("the changed policy's second look: requeue after %s, want 2s", got)
	}
	setReady(true)
	if got := next(p); got != 10*time.Second {
		t.Errorf("Ready: requeue after %s, want the resync", got)
	}
	setReady(false)
	if got := next(p); got != time.Second {
		t.Errorf("no longer Ready: requeue after %s, want 1s again", got)
	}
	r.forgetPoll(client.ObjectKeyFromObject(p))
	if len(r.pollBackoff) != 1 {
		t.Errorf("a deleted policy's backoff is kept: %v", r.pollBackoff)
	}

	r.Options.TenantResync = 0
	if got := next(p); got != 0 {
		t.Errorf("watched: requeue after %s, want none", got)
	}
	// A sooner requeue a step asked for still comes first.
	r.Options.TenantResync = time.Minute
	setReady(true)
	st := &reconcileState{policy: p}
	st.requeueIn(3*time.Second, start)
	if got := r.result(st).RequeueAfter; got != 3*time.Second {
		t.Errorf("a step's requeue in 3s: requeue after %s", got)
	}
}

// TestRetriesBackOffToTheResyncWithoutWatches: a policy whose reconcile keeps failing is tried
// again within the resync, as no watch would bring it back sooner.
func TestRetriesBackOffToTheResyncWithoutWatches(t *testing.T) {
	l := retryLimiter(time.Minute)
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "a", Name: "p"}}
	var last time.Duration
	for range 40 {
		last = l.When(req)
	}
	if last != time.Minute {
		t.Errorf("after 40 failures: next try in %s, want 1m", last)
	}
	l.Forget(req)
	if d := l.When(req); d > time.Second {
		t.Errorf("after a success: next try in %s", d)
	}
}
