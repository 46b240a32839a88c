/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
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
	Issuers   *pki.Holder
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
	iss := m.Issuers.Current()
	m.Metrics.IssuerExpiry.Set(float64(iss.Cert.NotAfter.Unix()))
	if !iss.ExpiresWithin(m.Clock.Now(), m.Warning) {
		m.Metrics.IssuerNearExpiry.Set(0)
		return false
	}
	m.Metrics.IssuerNearExpiry.Set(1)
	msg := fmt.Sprintf("the fleet issuer %q expires at %s: replace it before then, or collector certificates stop being renewable",
		iss.Cert.Subject.CommonName, iss.Cert.NotAfter.UTC().Format(time.RFC3339))
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

// IssuerReloader watches the fleet issuer Secret and makes a changed, usable issuer the one in
// use, without a restart. Rotation with an overlap: put the new CA in tls.crt/tls.key and both
// roots in ca.crt. Every policy is then reconciled: collectors get the new bundle at once and
// keep their certificates (the old root is still trusted) until their next renewal, which the
// new issuer signs. Removing the old root from ca.crt ends the overlap: certificates it signed
// are re-issued at once. A Secret that cannot be used (malformed, not a CA, not valid now, a
// bundle without its own certificate, or less life left than the floor while the issuer in use
// has more) is refused with a Warning Event and a metric, and the issuer in use stays.
//
// It runs on every replica, so a standby promoted to leader already signs with the current
// issuer; only the leader writes Events and has the policies reconciled.
type IssuerReloader struct {
	Issuers   *pki.Holder
	SecretRef types.NamespacedName
	// Reader reads the issuer Secret (a cache watching that one Secret).
	Reader   client.Reader
	Recorder recorder.EventRecorder
	Clock    clock.PassiveClock
	Metrics  *Metrics
	// MinRemaining is the floor of the issuer's remaining life (see Options.IssuerMinRemaining).
	MinRemaining time.Duration
	// Elected is closed once this replica leads (nil: always).
	Elected <-chan struct{}
	// Policies lists every policy, and Changed receives one event per policy after a rotation.
	Policies client.Reader
	Changed  chan<- event.GenericEvent

	mu sync.Mutex
	// announced is the last issuer the policies were reconciled for.
	announced *pki.Issuer
}

// Reconcile loads the issuer Secret and swaps it in if it changed and is usable.
func (l *IssuerReloader) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	if req.NamespacedName != l.SecretRef {
		return ctrl.Result{}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	logger := log.FromContext(ctx).WithValues("secret", l.SecretRef.String())
	s := &corev1.Secret{}
	if err := l.Reader.Get(ctx, l.SecretRef, s); err != nil {
		if apierrors.IsNotFound(err) {
			logger.Info("WARNING: the fleet issuer Secret is gone; the issuer loaded before stays in use until it is recreated (a restarted manager would not start without it)")
			l.Metrics.IssuerReloads.WithLabelValues("missing").Inc()
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	now := l.Clock.Now()
	current := l.Issuers.Current()
	if l.announced == nil {
		l.announced = current
	}
	next, err := pki.LoadIssuer(s.Data, now)
	if err == nil && !next.Same(current) && next.ExpiresWithin(now, l.floor()) && !current.ExpiresWithin(now, l.floor()) {
		err = fmt.Errorf("it expires at %s, within --issuer-min-remaining (%s), while the issuer in use does not", next.Cert.NotAfter.UTC().Format(time.RFC3339), l.floor())
	}
	if err != nil {
		logger.Info("WARNING: refused a changed fleet issuer; the one in use stays", "error", err.Error())
		l.Metrics.IssuerReloads.WithLabelValues("refused").Inc()
		l.eventf(s, corev1.EventTypeWarning, "IssuerRefused", "the issuer Secret cannot be used (%v); still signing with %q until it is fixed (a restarted manager would not start with it)", err, current.Cert.Subject.CommonName)
		if cert, perr := pki.ParseCertificatePEM(s.Data[pki.KeyCert]); perr == nil && now.Before(cert.NotBefore) {
			return ctrl.Result{RequeueAfter: cert.NotBefore.Sub(now) + time.Second}, nil // valid soon
		}
		return ctrl.Result{}, nil
	}
	if !next.Same(current) {
		l.Issuers.Set(next)
		l.Metrics.IssuerReloads.WithLabelValues("rotated").Inc()
		l.Metrics.IssuerExpiry.Set(float64(next.Cert.NotAfter.Unix()))
		overlap := next.BundleHolds(current.Cert)
		logger.Info("fleet issuer changed: signing with the new one", "issuer", next.Cert.Subject.CommonName,
			"notAfter", next.Cert.NotAfter.UTC(), "previousRootStillTrusted", overlap)
		switch {
		case overlap:
			l.eventf(s, corev1.EventTypeNormal, "IssuerRotated", "now signing with %q; its bundle still trusts the previous issuer, so collectors keep their certificates until their next renewal", next.Cert.Subject.CommonName)
		default:
			l.eventf(s, corev1.EventTypeWarning, "IssuerRotated", "now signing with %q; its bundle no longer trusts the previous issuer: collector certificates it signed are re-issued now", next.Cert.Subject.CommonName)
		}
	}
	if l.announced == l.Issuers.Current() || !l.leading() {
		return ctrl.Result{}, nil
	}
	list := &v1.TelemetryPolicyList{}
	if err := l.Policies.List(ctx, list); err != nil {
		return ctrl.Result{}, err // retried: the policies still have to hear of it
	}
	for i := range list.Items {
		select {
		case l.Changed <- event.GenericEvent{Object: &list.Items[i]}:
		case <-ctx.Done():
			return ctrl.Result{}, ctx.Err()
		}
	}
	l.announced = l.Issuers.Current()
	return ctrl.Result{}, nil
}

func (l *IssuerReloader) floor() time.Duration {
	if l.MinRemaining <= 0 {
		return DefaultIssuerMinRemaining
	}
	return l.MinRemaining
}

func (l *IssuerReloader) leading() bool {
	if l.Elected == nil {
		return true
	}
	select {
	case <-l.Elected:
		return true
	default:
		return false
	}
}

func (l *IssuerReloader) eventf(s *corev1.Secret, eventType, reason, format string, args ...any) {
	if l.Recorder != nil && l.leading() {
		l.Recorder.Eventf(s, nil, eventType, reason, "ReloadIssuer", format, args...)
	}
}
