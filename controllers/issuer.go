/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/sourcegraph/telemetry-operator/internal/pki"
)

// LoadIssuer reads the fleet issuer from the Secret at key and checks it can sign now. The error
// says what is wrong and what to do; the manager refuses to start with it.
func LoadIssuer(ctx context.Context, reader client.Reader, key types.NamespacedName, now time.Time) (*pki.Issuer, error) {
	s := &corev1.Secret{}
	if err := reader.Get(ctx, key, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: Secret %s not found: create it from the fleet CA (tls.crt and tls.key; for development run hack/dev-issuer.sh)", pki.ErrIssuer, key)
		}
		return nil, fmt.Errorf("%w: reading Secret %s: %w", pki.ErrIssuer, key, err)
	}
	iss, err := pki.LoadIssuer(s.Data, now)
	if err != nil {
		return nil, fmt.Errorf("issuer Secret %s: %w", key, err)
	}
	return iss, nil
}

// IssuerMonitor warns, with an Event on the issuer Secret and a metric, when the fleet issuer
// expires within Warning. Collector certificates are capped at the issuer's expiry, so an
// expiring issuer shortens every certificate's life.
type IssuerMonitor struct {
	Issuer    *pki.Issuer
	SecretRef types.NamespacedName
	Reader    client.Reader
	Recorder  recorder.EventRecorder
	Clock     clock.WithTicker
	Metrics   *Metrics
	Warning   time.Duration
	Interval  time.Duration
}

// Check evaluates the issuer's expiry once and reports whether it is near.
func (m *IssuerMonitor) Check(ctx context.Context) bool {
	m.Metrics.IssuerExpiry.Set(float64(m.Issuer.Cert.NotAfter.Unix()))
	if !m.Issuer.ExpiresWithin(m.Clock.Now(), m.Warning) {
		m.Metrics.IssuerNearExpiry.Set(0)
		return false
	}
	m.Metrics.IssuerNearExpiry.Set(1)
	msg := fmt.Sprintf("the fleet issuer %q expires at %s: replace it before then, or collector certificates stop being renewable",
		m.Issuer.Cert.Subject.CommonName, m.Issuer.Cert.NotAfter.UTC().Format(time.RFC3339))
	log.FromContext(ctx).Info("WARNING: "+msg, "secret", m.SecretRef.String())
	s := &corev1.Secret{}
	if err := m.Reader.Get(ctx, m.SecretRef, s); err == nil && m.Recorder != nil {
		m.Recorder.Eventf(s, nil, corev1.EventTypeWarning, "IssuerNearExpiry", "CheckIssuer", "%s", msg)
	}
	return true
}

// Start checks at start and then every Interval until ctx ends (a manager Runnable).
func (m *IssuerMonitor) Start(ctx context.Context) error {
	interval := m.Interval
	if interval <= 0 {
		interval = 12 * time.Hour
	}
	m.Check(ctx)
	t := m.Clock.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			m.Check(ctx)
		}
	}
}

// NeedLeaderElection: only the leader emits the warning.
func (m *IssuerMonitor) NeedLeaderElection() bool { return true }
