/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"time"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
)

// Tenancy tells whether the manager may work in a namespace (see internal/tenants).
type Tenancy interface {
	// Ensure decides whether the namespace is onboarded and, if so, has its cache running.
	Ensure(ctx context.Context, namespace string) (tenants.Status, error)
	// Onboarded reports what the last Ensure found, without an API call.
	Onboarded(namespace string) bool
}

// notPermittedRetry is how soon a policy in a labelled namespace where the manager lacks its
// permissions is tried again: granting them is not an event the manager can watch.
const notPermittedRetry = time.Minute

// checkNamespace stops a policy in a namespace the manager was not let into before anything is
// created for it. A policy whose consent was ever recorded at the receiver goes on to the ledger
// step first (see holdOutside): a withdrawal still reaches the receiver, which enforces it, even
// though the collector left behind cannot be lowered from here.
func (r *TelemetryPolicyReconciler) checkNamespace(ctx context.Context, st *reconcileState) error {
	if r.Tenants == nil {
		return nil
	}
	s, err := r.Tenants.Ensure(ctx, st.policy.Namespace)
	if err != nil {
		return err
	}
	if s.Onboarded {
		return nil
	}
	st.outside = &s
	if s.Reason == tenants.ReasonNotPermitted {
		st.requeueIn(notPermittedRetry, r.Clock.Now())
	}
	if !everRecorded(st.policy) {
		st.stall(s.Reason, s.Message)
	}
	return nil
}

// holdOutside stalls a policy outside the onboarded namespaces once its consent is recorded.
func (r *TelemetryPolicyReconciler) holdOutside(_ context.Context, st *reconcileState) error {
	if st.outside != nil {
		st.stall(st.outside.Reason, st.outside.Message+"; consent changes are still recorded at the receiver, which enforces them")
	}
	return nil
}

// everRecorded reports whether the policy's consent was ever recorded or sent to the receiver.
func everRecorded(p *v1.TelemetryPolicy) bool {
	return len(p.Status.ConsentHistory) > 0 || len(p.Status.PendingConsentChanges) > 0
}
