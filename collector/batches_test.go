/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector

import (
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	collectorconfig "github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
)

// TestAggregateBatchesStayWithinTheReceiversLimits: days are packed whole, and no batch
// carries more days than the receiver audits in one (it refuses more), however few cells a
// day has.
func TestAggregateBatchesStayWithinTheReceiversLimits(t *testing.T) {
	p := &Pipeline{cfg: &collectorconfig.Config{InstanceID: "acme"}}
	var cells []batchv1.Aggregate
	start := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	for d := range 2*batchv1.MaxAggregateDaysPerBatch + 3 {
		for i := range 1 + d%3 {
			cells = append(cells, batchv1.Aggregate{Day: start.AddDate(0, 0, d).Format(time.DateOnly), Metric: batchv1.MetricEventCount,
				Dimension: []string{"ViewBlob", "hover", "SearchSubmitted"}[i], Value: 5, Users: 5, Final: true})
		}
	}
	batches := p.aggregateBatches(cells)
	seen, total := map[string]bool{}, 0
	for _, b := range batches {
		days := map[string]bool{}
		for _, c := range b.Aggregates {
			days[c.Day] = true
		}
		if len(days) > batchv1.MaxAggregateDaysPerBatch {
			t.Fatalf("batch %s carries %d days, the receiver takes %d", b.BatchID, len(days), batchv1.MaxAggregateDaysPerBatch)
		}
		for d := range days {
			if seen[d] {
				t.Fatalf("day %s is in two batches", d)
			}
			seen[d] = true
		}
		total += len(b.Aggregates)
	}
	if total != len(cells) || len(batches) != 3 {
		t.Fatalf("%d batches with %d cells, want 3 with all %d", len(batches), total, len(cells))
	}
}
