/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

// BenchmarkInsertEvents measures storing 5,000-event batches, new and re-sent.
func BenchmarkInsertEvents(b *testing.B) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if err := r.Grant(ctx, "bench", consentv1.TierEventLevel, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		b.Fatal(err)
	}
	batch := func(from int) *batchv1.Batch {
		bt := &batchv1.Batch{InstanceID: "bench", BatchID: fmt.Sprint(from), Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(from + 5000)}
		for i := from; i < from+5000; i++ {
			bt.Events = append(bt.Events, batchv1.Event{ID: fmt.Sprint(i), Name: "SearchSubmitted", Timestamp: time.Unix(1_790_000_000+int64(i), 0),
				Source: "WEB", ProductVersion: "5.3.0", UserID: fmt.Sprintf("f%031x", i%500), Properties: map[string]any{"patternType": "literal"},
				FeatureFlags: map[string]bool{"search-ranking": true}})
		}
		return bt
	}
	b.Run("new", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := r.Store.InsertEvents(ctx, "bench", batch(i*5000)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*5000)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("duplicate", func(b *testing.B) {
		dup := batch(0)
		for i := 0; i < b.N; i++ {
			if _, err := r.Store.InsertEvents(ctx, "bench", dup); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*5000)/b.Elapsed().Seconds(), "events/s")
	})
}
