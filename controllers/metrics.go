/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	telemetryv1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// Metrics are the operator's own Prometheus metrics, next to controller-runtime's.
type Metrics struct {
	PoliciesByTier      *prometheus.GaugeVec
	Downgrades          *prometheus.CounterVec
	ReconcileErrors     *prometheus.CounterVec
	StepDuration        *prometheus.HistogramVec
	CertExpiry          *prometheus.GaugeVec
	CertRenewal         *prometheus.GaugeVec
	Rotations           *prometheus.CounterVec
	RotationFailures    prometheus.Counter
	IssuerExpiry        prometheus.Gauge
	IssuerNearExpiry    prometheus.Gauge
	IssuerReloads       *prometheus.CounterVec
	Erasures            *prometheus.CounterVec
	ErasedRows          *prometheus.CounterVec
	mu                  sync.Mutex
	tierByPolicy        map[types.NamespacedName]telemetryv1alpha1.ConsentTier
	registeredCollector []prometheus.Collector
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		PoliciesByTier: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "telemetry_policies", Help: "TelemetryPolicies by effective consent tier.",
		}, []string{"effective_tier"}),
		Downgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemetry_consent_downgrades_total", Help: "Effective-tier downgrades, by reason.",
		}, []string{"reason"}),
		ReconcileErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemetry_reconcile_errors_total", Help: "Reconcile step failures, by step.",
		}, []string{"step"}),
		// Where a reconcile's time goes: most of it waits on the API server and the receiver,
		// which controller-runtime's per-reconcile histogram cannot tell apart.
		StepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "telemetry_reconcile_step_duration_seconds", Help: "Time spent in each reconcile step, by step (status: the status patch at the end).",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"step"}),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "telemetry_credentials_expiry_timestamp_seconds", Help: "Expiry of each collector's client certificate (Unix seconds).",
		}, []string{"namespace", "policy"}),
		CertRenewal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "telemetry_credentials_renewal_timestamp_seconds", Help: "When each collector's client certificate is due to be rotated (Unix seconds); past it, rotation is overdue.",
		}, []string{"namespace", "policy"}),
		Rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemetry_credentials_rotations_total", Help: "Client certificates issued, by reason.",
		}, []string{"reason"}),
		RotationFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemetry_credentials_rotation_failures_total", Help: "Client certificate issues or rotations that failed.",
		}),
		IssuerExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "telemetry_issuer_expiry_timestamp_seconds", Help: "Expiry of the fleet issuer CA certificate (Unix seconds).",
		}),
		IssuerReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemetry_issuer_reloads_total", Help: "Changes of the fleet issuer Secret seen while running, by outcome (rotated, refused, missing).",
		}, []string{"outcome"}),
		IssuerNearExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "telemetry_issuer_near_expiry", Help: "1 when the fleet issuer CA expires within the warning window.",
		}),
		Erasures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemetry_erasures_total", Help: "Erasure requests carried out at the receiver, by outcome (verified, refused).",
		}, []string{"outcome"}),
		ErasedRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemetry_erased_rows_total", Help: "Rows the receiver deleted for erasure requests, by kind (events, aggregates).",
		}, []string{"kind"}),
		tierByPolicy: map[types.NamespacedName]telemetryv1alpha1.ConsentTier{},
	}
	for _, t := range []telemetryv1alpha1.ConsentTier{telemetryv1alpha1.TierEventLevel, telemetryv1alpha1.TierCriticalOnly, telemetryv1alpha1.TierOff} {
		m.PoliciesByTier.WithLabelValues(string(t)).Set(0)
	}
	m.registeredCollector = []prometheus.Collector{m.PoliciesByTier, m.Downgrades, m.ReconcileErrors, m.StepDuration, m.CertExpiry, m.CertRenewal, m.Rotations, m.RotationFailures, m.IssuerExpiry, m.IssuerNearExpiry, m.IssuerReloads, m.Erasures, m.ErasedRows}
	if reg != nil {
		for _, c := range m.registeredCollector {
			reg.MustRegister(c)
		}
	}
	return m
}

// SetTier records a policy's effective tier (empty: forget the policy).
func (m *Metrics) SetTier(key types.NamespacedName, tier telemetryv1alpha1.ConsentTier) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.tierByPolicy[key]; ok {
		if old == tier {
			return
		}
		m.PoliciesByTier.WithLabelValues(string(old)).Dec()
		delete(m.tierByPolicy, key)
	}
	if tier != "" {
		m.tierByPolicy[key] = tier
		m.PoliciesByTier.WithLabelValues(string(tier)).Inc()
	}
}

// Forget drops every per-policy series of a deleted policy.
func (m *Metrics) Forget(key types.NamespacedName) {
	m.SetTier(key, "")
	m.forgetCredentials(key.Namespace, key.Name)
}

// forgetCredentials drops a policy's certificate series (no collector, no certificate).
func (m *Metrics) forgetCredentials(namespace, name string) {
	m.CertExpiry.DeleteLabelValues(namespace, name)
	m.CertRenewal.DeleteLabelValues(namespace, name)
}
