/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/ledger"
)

// Reasons of the ErasureCompleted condition.
const (
	ReasonErasureVerified = "Verified"
	ReasonErasurePending  = "Pending"
	ReasonErasureRefused  = "Refused"
)

// reconcileErasure carries out spec.erasure once per request id: the receiver deletes the
// instance's data in scope, verifies by re-query that none is left, and keeps an audit record
// without any of the data. A request the receiver refused is not retried until the spec changes.
func (r *TelemetryPolicyReconciler) reconcileErasure(ctx context.Context, st *reconcileState) error {
	p := st.policy
	e := p.Spec.Erasure
	if e == nil {
		meta.RemoveStatusCondition(&p.Status.Conditions, v1.ConditionErasureCompleted)
		return nil
	}
	scope := e.Scope
	if scope == "" {
		scope = v1.ErasureScopeEvents
	}
	done := p.Status.Erasure
	if done != nil && done.RequestID == e.RequestID {
		switch {
		case done.Phase == v1.ErasureVerified && sameRequest(done, e, scope):
			setCondition(p, v1.ConditionErasureCompleted, metav1.ConditionTrue, ReasonErasureVerified, erasureMessage(done))
			return nil
		case done.Phase == v1.ErasureFailed && failedAtGeneration(p):
			return nil
		}
	}
	if !st.ledgerKnown || len(st.timeline) == 0 {
		// The instance has no record this policy owns yet (the ledger step has not succeeded):
		// the receiver would refuse the request.
		r.setErasurePending(st, e, "waiting for the receiver to record this policy's consent first")
		return nil
	}
	req := consentv1.ErasureRequest{
		InstanceID: p.Spec.InstanceID, Owner: r.owner(p), RequestID: e.RequestID, Scope: string(scope),
		RequestedBy: requester(e.RequestedBy),
	}
	if e.From != nil {
		t := e.From.UTC()
		req.From = &t
	}
	if e.To != nil {
		t := e.To.UTC()
		req.To = &t
	}
	res, err := r.Ledger.Erase(ctx, req)
	switch {
	case err == nil && res.VerifiedAt != nil:
		s := &v1.ErasureStatus{
			RequestID: e.RequestID, Phase: v1.ErasureVerified, Scope: scope, From: e.From, To: e.To,
			EventsDeleted: res.EventsDeleted, AggregatesDeleted: res.AggregatesDeleted,
			RequestedAt: timePtr(res.RequestedAt), VerifiedAt: timePtr(*res.VerifiedAt),
		}
		if s.To == nil {
			s.To = timePtr(res.To)
		}
		p.Status.Erasure = s
		setCondition(p, v1.ConditionErasureCompleted, metav1.ConditionTrue, ReasonErasureVerified, erasureMessage(s))
		st.afterPatch = append(st.afterPatch, func() {
			r.Metrics.Erasures.WithLabelValues("verified").Inc()
			r.Metrics.ErasedRows.WithLabelValues("events").Add(float64(res.EventsDeleted))
			r.Metrics.ErasedRows.WithLabelValues("aggregates").Add(float64(res.AggregatesDeleted))
			r.event(p, corev1.EventTypeNormal, "ErasureVerified", "Erase", "%s", erasureMessage(s))
			// The receiver's key of the id, never the id (a ticket reference that may hold words).
			log.FromContext(ctx).Info("erasure verified", "request", res.RequestID, "events", res.EventsDeleted, "aggregates", res.AggregatesDeleted)
		})
		return nil
	case err == nil, errors.Is(err, ledger.ErrUnavailable):
		msg := "the receiver could not verify the erasure yet"
		if err != nil {
			msg = fmt.Sprintf("the receiver is unreachable (%v)", err)
		}
		r.setErasurePending(st, e, msg+"; retrying")
		st.requeueIn(r.ledgerRetry(), r.Clock.Now())
		return nil
	default:
		msg := fmt.Sprintf("the receiver refused erasure request %q: %v", e.RequestID, err)
		p.Status.Erasure = &v1.ErasureStatus{RequestID: e.RequestID, Phase: v1.ErasureFailed, Scope: scope, Message: truncate(msg, 1024)}
		setCondition(p, v1.ConditionErasureCompleted, metav1.ConditionFalse, ReasonErasureRefused, msg)
		st.afterPatch = append(st.afterPatch, func() {
			r.Metrics.Erasures.WithLabelValues("refused").Inc()
			r.event(p, corev1.EventTypeWarning, "ErasureRefused", "Erase", "%s", msg)
		})
		return nil
	}
}

func (r *TelemetryPolicyReconciler) setErasurePending(st *reconcileState, e *v1.ErasureSpec, msg string) {
	p := st.policy
	if p.Status.Erasure == nil || p.Status.Erasure.RequestID != e.RequestID || p.Status.Erasure.Phase != v1.ErasurePending {
		p.Status.Erasure = &v1.ErasureStatus{RequestID: e.RequestID, Phase: v1.ErasurePending, Scope: e.Scope}
	}
	setCondition(p, v1.ConditionErasureCompleted, metav1.ConditionFalse, ReasonErasurePending, fmt.Sprintf("erasure request %q: %s", e.RequestID, msg))
}

// sameRequest: what was carried out is what the spec asks for (a request id reused with other
// parameters is sent again, and the receiver refuses it).
func sameRequest(done *v1.ErasureStatus, e *v1.ErasureSpec, scope v1.ErasureScope) bool {
	sameTime := func(a, b *metav1.Time) bool { return (a == nil) == (b == nil) && (a == nil || a.Equal(b)) }
	return done.Scope == scope && sameTime(done.From, e.From) && (e.To == nil || sameTime(done.To, e.To))
}

// failedAtGeneration: the request failed and the spec has not changed since.
func failedAtGeneration(p *v1.TelemetryPolicy) bool {
	c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionErasureCompleted)
	return c != nil && c.Reason == ReasonErasureRefused && c.ObservedGeneration == p.Generation
}

func erasureMessage(s *v1.ErasureStatus) string {
	at := ""
	if s.VerifiedAt != nil {
		at = s.VerifiedAt.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("erasure request %q (%s): the receiver deleted %d events and %d aggregate cells; a re-query at %s found none left in scope",
		s.RequestID, s.Scope, s.EventsDeleted, s.AggregatesDeleted, at)
}

func timePtr(t time.Time) *metav1.Time {
	m := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &m
}

// requester is the role sent for the audit record. A policy written before requesters were a
// closed set may still hold free text (the API server keeps a value it no longer admits while
// nobody changes it): that text never leaves the cluster, the request names no role instead.
func requester(r v1.ErasureRequester) string {
	if s := string(r); s != consentv1.RequesterUnspecified && consentv1.ValidRequester(s) {
		return s
	}
	return consentv1.RequesterUnspecified
}
