/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collectorconfig

import (
	"time"

	telemetryv1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// ProgressKey is the key of the state ConfigMap holding the collector's Progress as JSON.
const ProgressKey = "state.json"

// Progress is what the collector reports to its state object and the operator folds into
// status.export. The collector is its only writer; the operator treats it as untrusted input.
type Progress struct {
	// Cursor: every event_logs id at or below it is delivered.
	Cursor int64 `json:"cursor"`
	// LastSuccessTime is when the receiver last acknowledged a batch or, in a round with nothing
	// to send, last answered for this instance.
	LastSuccessTime *time.Time `json:"lastSuccessTime,omitempty"`
	// EventsExported counts acknowledged events or aggregate cells.
	EventsExported int64 `json:"eventsExported"`
	// EventsDropped counts events dropped by the allow-list, quarantined, or suppressed cells.
	EventsDropped int64 `json:"eventsDropped"`
	// LagSeconds is how far delivery trails the newest event.
	LagSeconds int64 `json:"lagSeconds"`
	// LastError is the most recent error (never event contents), empty after a success.
	LastError string `json:"lastError,omitempty"`
	// Tier is the tier the collector ran with.
	Tier telemetryv1alpha1.ConsentTier `json:"tier,omitempty"`
	// AggregatesThrough is the last closed UTC day (YYYY-MM-DD) whose aggregates the receiver
	// acknowledged: each day is published once.
	AggregatesThrough string `json:"aggregatesThrough,omitempty"`
}
