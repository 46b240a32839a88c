/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

// Exported returns the instance's last limit deliveries, newest first, each with the items it
// stored that are still stored, at most maxItems items in all (a delivery cut short is marked
// Truncated, and later ones are listed without items). It reads one snapshot.
func (s *Store) Exported(ctx context.Context, instance string, limit, maxItems int) ([]batchv1.Delivery, error) {
	if err := s.checkSenderNow(ctx, instance); err != nil {
		return nil, err
	}
	var out []batchv1.Delivery
	err := s.rawReadTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
SELECT seq, batch_id, kind, received_at, accepted, duplicates, refused
FROM deliveries WHERE instance_id = $1 ORDER BY seq DESC LIMIT $2`, instance, limit)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchv1.Delivery, error) {
			var d batchv1.Delivery
			err := row.Scan(&d.Seq, &d.BatchID, &d.Kind, &d.ReceivedAt, &d.Accepted, &d.Duplicates, &d.Refused)
			d.ReceivedAt = d.ReceivedAt.UTC()
			return d, err
		})
		if err != nil {
			return err
		}
		left := maxItems
		for i := range out {
			d := &out[i]
			if left <= 0 {
				d.Truncated = true
				continue
			}
			var n int
			if d.Kind == batchv1.KindEvents {
				n, err = deliveredEvents(ctx, tx, instance, d, left)
			} else {
				n, err = deliveredAggregates(ctx, tx, instance, d, left)
			}
			if err != nil {
				return err
			}
			left -= n
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// deliveredEvents fills d.Events with at most limit of the events d stored.
func deliveredEvents(ctx context.Context, tx pgx.Tx, instance string, d *batchv1.Delivery, limit int) (int, error) {
	rows, err := tx.Query(ctx, `
SELECT event_id, name, ts, source, version, client, user_id, feature_flags, properties
FROM events WHERE instance_id = $1 AND delivery = $2 ORDER BY event_id LIMIT $3`, instance, d.Seq, limit+1)
	if err != nil {
		return 0, err
	}
	d.Events, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchv1.Event, error) {
		var e batchv1.Event
		var id int64
		var flags, props []byte
		if err := row.Scan(&id, &e.Name, &e.Timestamp, &e.Source, &e.ProductVersion, &e.Client, &e.UserID, &flags, &props); err != nil {
			return e, err
		}
		e.ID, e.Timestamp = strconv.FormatInt(id, 10), e.Timestamp.UTC()
		if err := json.Unmarshal(flags, &e.FeatureFlags); err != nil {
			return e, fmt.Errorf("event %d: feature_flags: %w", id, err)
		}
		if err := json.Unmarshal(props, &e.Properties); err != nil {
			return e, fmt.Errorf("event %d: properties: %w", id, err)
		}
		if len(e.FeatureFlags) == 0 {
			e.FeatureFlags = nil
		}
		if len(e.Properties) == 0 {
			e.Properties = nil
		}
		return e, nil
	})
	if err != nil {
		return 0, err
	}
	if len(d.Events) > limit {
		d.Events, d.Truncated = d.Events[:limit], true
	}
	return len(d.Events), nil
}

// deliveredAggregates fills d.Aggregates with at most limit of the cells d stored.
func deliveredAggregates(ctx context.Context, tx pgx.Tx, instance string, d *batchv1.Delivery, limit int) (int, error) {
	rows, err := tx.Query(ctx, `
SELECT day::text, metric, dimension, value, users, final
FROM aggregates WHERE instance_id = $1 AND delivery = $2 ORDER BY day, metric, dimension LIMIT $3`, instance, d.Seq, limit+1)
	if err != nil {
		return 0, err
	}
	d.Aggregates, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchv1.Aggregate, error) {
		var a batchv1.Aggregate
		err := row.Scan(&a.Day, &a.Metric, &a.Dimension, &a.Value, &a.Users, &a.Final)
		return a, err
	})
	if err != nil {
		return 0, err
	}
	if len(d.Aggregates) > limit {
		d.Aggregates, d.Truncated = d.Aggregates[:limit], true
	}
	return len(d.Aggregates), nil
}
