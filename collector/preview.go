/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector/source"
)

// Preview returns the batches the next round would send, built exactly as a round builds them
// (the same query, consent windows, catalog, pseudonyms and suppression), without sending
// anything or saving progress. Client is not used: a preview needs no network.
//
// Under EventLevel it is the next events batch from the saved cursor (from the start of
// event_logs without saved progress, where the collector would ask the receiver); rows sent
// above the cursor by a running collector are remembered only in its memory, so a preview may
// show events the receiver already holds: it would absorb them as duplicates. Under
// CriticalOnly it is every closed day not yet published. Under Off nothing leaves.
func (p *Pipeline) Preview(ctx context.Context) ([]*batchv1.Batch, error) {
	cfg, err := LoadConfig(p.ConfigPath)
	if err != nil {
		return nil, err
	}
	p.cfg = cfg
	if p.Metrics == nil {
		p.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	saved, err := p.State.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading saved progress: %w", err)
	}
	if saved != nil {
		p.progress = *saved
	}
	switch cfg.Tier {
	case v1.TierEventLevel:
		p.tracker = source.NewTracker(p.progress.Cursor, maxSentRemembered)
		f, err := p.readAndFilter(ctx, p.tracker, cfg.BatchSize)
		if err != nil {
			return nil, err
		}
		round := f.round
		cursor := p.tracker.Plan(round.Snapshot, round.NewHigh, round.Complete)
		if len(f.events) == 0 && cursor == p.tracker.Cursor() {
			return nil, nil
		}
		return []*batchv1.Batch{p.batch(f, cursor)}, nil
	case v1.TierCriticalOnly:
		pending, err := p.pendingAggregates(ctx)
		return pending.batches, err
	default:
		return nil, nil
	}
}
