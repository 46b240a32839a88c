/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the collector's Prometheus metrics.
type Metrics struct {
	EventsRead      prometheus.Counter
	EventsExported  prometheus.Counter
	EventsDropped   *prometheus.CounterVec
	ValuesDropped   *prometheus.CounterVec
	Quarantined     prometheus.Counter
	Batches         *prometheus.CounterVec
	Retries         prometheus.Counter
	ConsentRefusals prometheus.Counter
	Lag             prometheus.Gauge
	LastSuccess     prometheus.Gauge
	Cursor          prometheus.Gauge
	StageSeconds    *prometheus.HistogramVec
	// Interval is the configured export interval, so alerts can judge staleness per instance.
	Interval prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		EventsRead:     prometheus.NewCounter(prometheus.CounterOpts{Name: "collector_events_read_total", Help: "Rows read from event_logs."}),
		EventsExported: prometheus.NewCounter(prometheus.CounterOpts{Name: "collector_events_exported_total", Help: "Events or aggregate cells acknowledged by the receiver."}),
		EventsDropped:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "collector_events_dropped_total", Help: "Rows not exported, by reason."}, []string{"reason"}),
		ValuesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "collector_values_dropped_total",
			Help: "Values removed from exported events because the event catalog does not list them, by field (source, client, version, feature_flag, property)."}, []string{"field"}),
		Quarantined:     prometheus.NewCounter(prometheus.CounterOpts{Name: "collector_events_quarantined_total", Help: "Events the receiver refused individually."}),
		Batches:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "collector_batches_total", Help: "Batches, by outcome."}, []string{"outcome"}),
		Retries:         prometheus.NewCounter(prometheus.CounterOpts{Name: "collector_retries_total", Help: "Retried delivery attempts."}),
		ConsentRefusals: prometheus.NewCounter(prometheus.CounterOpts{Name: "collector_consent_refusals_total", Help: "Batches refused by the consent guard because the configured tier was lowered."}),
		Lag:             prometheus.NewGauge(prometheus.GaugeOpts{Name: "collector_lag_seconds", Help: "How far delivery trails the newest event."}),
		LastSuccess:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "collector_last_success_timestamp_seconds", Help: "When the receiver last acknowledged a batch or, in a round with nothing to send, answered for this instance."}),
		Cursor:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "collector_cursor", Help: "The acknowledged event_logs id."}),
		Interval:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "collector_export_interval_seconds", Help: "The configured export interval: a round starts at least this often."}),
		StageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "collector_stage_duration_seconds", Help: "Time per pipeline stage (read, filter, encode: encoding and compressing a body, send: delivering a batch including its encoding).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"stage"}),
	}
	if reg != nil {
		reg.MustRegister(m.EventsRead, m.EventsExported, m.EventsDropped, m.ValuesDropped, m.Quarantined, m.Batches, m.Retries, m.ConsentRefusals, m.Lag, m.LastSuccess, m.Cursor, m.StageSeconds, m.Interval)
	}
	return m
}
