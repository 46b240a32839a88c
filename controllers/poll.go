/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// firstPoll is how soon a policy that is not Ready is looked at again when the objects it owns
// are not watched (Options.TenantResync); each look that finds it still not Ready doubles it,
// up to lastPoll (or TenantResync, if sooner). A collector that takes 20 s to start is seen
// Ready within 31 s at most.
const (
	firstPoll = time.Second
	lastPoll  = 15 * time.Second
)

// pollNext is when a policy is reconciled again because nothing would tell the manager that
// its objects changed (no watch in its namespace): soon while it is not Ready (its collector
// rolling out), every TenantResync once it is, or while it is Stalled or suspended (what ends
// either is a change of the policy, which is watched, or comes with its own requeue). Zero
// when its objects are watched.
func (r *TelemetryPolicyReconciler) pollNext(st *reconcileState) time.Duration {
	resync := r.Options.TenantResync
	if resync <= 0 {
		return 0
	}
	key := client.ObjectKeyFromObject(st.policy)
	r.pollMu.Lock()
	defer r.pollMu.Unlock()
	conds := st.policy.Status.Conditions
	if apimeta.IsStatusConditionTrue(conds, v1.ConditionReady) || apimeta.IsStatusConditionTrue(conds, v1.ConditionStalled) || st.policy.Spec.Suspend {
		delete(r.pollBackoff, key)
		return resync
	}
	if r.pollBackoff == nil {
		r.pollBackoff = map[client.ObjectKey]pollState{}
	}
	last := r.pollBackoff[key]
	if last.generation != st.policy.Generation {
		last.after = 0 // a changed policy is followed closely again
	}
	next := min(max(2*last.after, firstPoll), lastPoll, resync)
	r.pollBackoff[key] = pollState{generation: st.policy.Generation, after: next}
	return next
}

// pollState is the last poll interval of a policy that is not Ready, and the generation it
// was for.
type pollState struct {
	generation int64
	after      time.Duration
}

// forgetPoll drops a deleted policy's backoff.
func (r *TelemetryPolicyReconciler) forgetPoll(key client.ObjectKey) {
	r.pollMu.Lock()
	defer r.pollMu.Unlock()
	delete(r.pollBackoff, key)
}
