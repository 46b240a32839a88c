/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

func eventsBatch(id string, from, to int) *batchv1.Batch {
	b := &batchv1.Batch{InstanceID: "acme", BatchID: id, Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(to)}
	for i := from; i <= to; i++ {
		b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprint(i), Name: "SearchSubmitted", Timestamp: time.Unix(1_790_000_000+int64(i), 0).UTC(),
			UserID: fmt.Sprintf("f%031x", i%7), Properties: map[string]any{"patternType": "literal"}, FeatureFlags: map[string]bool{"f": true}})
	}
	return b
}

// TestInsertEventsExactlyOnce covers both write paths: the direct COPY for new events and the
// staging path for a re-sent batch, a different batch overlapping stored events (the COPY fails
// on the key and is undone), and overlapping batches racing each other.
func TestInsertEventsExactlyOnce(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Grant(ctx, "acme", consentv1.TierEventLevel, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	count := func() (n, distinct int) {
		t.Helper()
		if err := r.DB.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_id) FROM events WHERE instance_id = 'acme'`).Scan(&n, &distinct); err != nil {
			t.Fatal(err)
		}
		return n, distinct
	}
	steps := []struct {
		name                 string
		batch                *batchv1.Batch
		accepted, duplicates int
		stored               int
	}{
		{"new batch", eventsBatch("b1", 1, 100), 100, 0, 100},
		{"same batch re-sent", eventsBatch("b1", 1, 100), 0, 100, 100},
		{"new batch id overlapping stored events", eventsBatch("b2", 51, 150), 50, 50, 150},
		{"new batch id wholly stored", eventsBatch("b3", 1, 150), 0, 150, 150},
		{"next new batch", eventsBatch("b4", 151, 200), 50, 0, 200},
	}
	for _, s := range steps {
		res, err := r.Store.InsertEvents(ctx, "acme", s.batch)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if res.Accepted != s.accepted || res.Duplicates != s.duplicates {
			t.Errorf("%s: accepted %d duplicates %d, want %d and %d", s.name, res.Accepted, res.Duplicates, s.accepted, s.duplicates)
		}
		if n, distinct := count(); n != s.stored || distinct != s.stored {
			t.Errorf("%s: %d rows (%d distinct), want %d", s.name, n, distinct, s.stored)
		}
	}
	var stored struct {
		props, flags string
		ts           time.Time
		user         string
	}
	if err := r.DB.QueryRow(ctx, `SELECT properties::text, feature_flags::text, ts, user_id FROM events WHERE instance_id = 'acme' AND event_id = '120'`).
		Scan(&stored.props, &stored.flags, &stored.ts, &stored.user); err != nil {
		t.Fatal(err)
	}
	if stored.props != `{"patternType": "literal"}` || stored.flags != `{"f": true}` || !stored.ts.Equal(time.Unix(1_790_000_120, 0)) || stored.user != fmt.Sprintf("f%031x", 120%7) {
		t.Errorf("stored event 120 = %+v", stored)
	}

	// Overlapping batches under different ids, all at once: every event once, and the accepted
	// counts add up to what was stored.
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := r.Store.InsertEvents(ctx, "acme", eventsBatch(fmt.Sprintf("race-%d", i), 1001+i*50, 1200+i*50))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			accepted += res.Accepted
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	n, distinct := count()
	if want := 200 + 450; n != want || distinct != want || accepted != 450 {
		t.Errorf("after the race: %d rows (%d distinct), %d accepted; want %d rows and 450 accepted", n, distinct, accepted, want)
	}
}
