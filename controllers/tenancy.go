/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
)

// Tenancy tells whether the manager may work in a namespace (see internal/tenants).
type Tenancy interface {
	// Ensure decides whether the namespace is onboarded and, if so, has its cache running.
	Ensure(ctx context.Context, namespace string) (tenants.Status, error)
	// Onboarded reports what the last Ensure found, without an API call.
	Onboarded(namespace string) bool
	// Sync stops the namespace's cache if it is no longer onboarded (no API call).
	Sync(ctx context.Context, namespace string)
	// Invalidate has the next Ensure review the manager's permissions again.
	Invalidate(namespace string)
}

// noteForbidden has the manager review its permissions in the policy's namespace again when a
// request there was refused (its RoleBinding removed, or the namespace being deleted), instead
// of trusting the last review for minutes.
func (r *TelemetryPolicyReconciler) noteForbidden(namespace string, err error) {
	if r.Tenants != nil && apierrors.IsForbidden(err) {
		r.Tenants.Invalidate(namespace)
	}
}

// notPermittedRetry is how soon a policy in a labelled namespace where the manager lacks its
// permissions is tried again: granting them is not an event the manager can watch.
const notPermittedRetry = time.Minute

// nameTakenRetry is how soon a policy whose object name is taken looks again: renaming or
// deleting the other object is not an event the manager watches.
const nameTakenRetry = time.Minute

// namespaceStatus returns why the policy's namespace is not onboarded, or nil when it is.
func (r *TelemetryPolicyReconciler) namespaceStatus(ctx context.Context, p *v1.TelemetryPolicy) (*tenants.Status, error) {
	if r.Tenants == nil {
		return nil, nil
	}
	s, err := r.Tenants.Ensure(ctx, p.Namespace)
	if err != nil || s.Onboarded {
		return nil, err
	}
	return &s, nil
}

// checkNamespace stops a policy in a namespace the manager was not let into before anything is
// read from the receiver or created for it. A policy whose consent was recorded while its
// namespace was onboarded goes on to the ledger step (see holdOutside, and syncLedger: only
// withdrawals are recorded for it): a withdrawal still reaches the receiver, which enforces it,
// though the collector left behind cannot be lowered from here.
func (r *TelemetryPolicyReconciler) checkNamespace(_ context.Context, st *reconcileState) error {
	if st.outside == nil {
		return nil
	}
	r.forgetGuardSeen(client.ObjectKeyFromObject(st.policy)) // nobody looks at it meanwhile
	if st.outside.Reason == tenants.ReasonNotPermitted {
		st.requeueIn(notPermittedRetry, r.Clock.Now())
	}
	if !st.recordedBefore {
		st.stall(st.outside.Reason, st.outside.Message)
	}
	return nil
}

// holdOutside stalls a policy outside the onboarded namespaces once its withdrawals are recorded.
func (r *TelemetryPolicyReconciler) holdOutside(_ context.Context, st *reconcileState) error {
	if st.outside != nil {
		st.stall(st.outside.Reason, st.outside.Message+"; a withdrawal of consent is still recorded at the receiver, which enforces it (a raise waits for onboarding)")
	}
	return nil
}

// everRecorded reports whether the policy's consent was ever recorded or sent to the receiver.
func everRecorded(p *v1.TelemetryPolicy) bool {
	return len(p.Status.ConsentHistory) > 0 || len(p.Status.PendingConsentChanges) > 0
}
