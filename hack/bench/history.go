/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/report"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// historyDays is how many days (today included) the prefilled history spreads over.
const historyDays = 365

// receiverHistory measures ingestion into an empty events table and into one already holding
// history events (a year of a fleet: 200 instances, spread evenly over the days, today
// included), on a receiver of its own so the history does not weigh on the other figures.
func receiverHistory(ctx context.Context, history int) {
	fmt.Printf("\n== receiver ingest with history (5,000-event batches; %d events over %d days prefilled) ==\n", history, historyDays)
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	must(err)
	defer r.Close()
	st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithRetention(historyDays+30), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	must(err)
	defer st.Close()
	_, err = st.MaintainPartitions(ctx)
	must(err)
	const runs, batches = 3, 20
	measure := func(tag string) float64 {
		var rates []float64
		for k := range runs {
			inst := fmt.Sprintf("history-%s-%d", tag, k)
			must(r.Grant(ctx, inst, consentv1.TierEventLevel, benchConsentSince))
			base := time.Now().Add(-time.Hour)
			start := time.Now()
			for i := range batches {
				_, err := st.InsertEvents(ctx, inst, historyBatch(inst, i*5000, base))
				must(err)
			}
			rates = append(rates, float64(batches*5000)/time.Since(start).Seconds())
		}
		return median(rates)
	}
	measure("warmup") // the first batches of a fresh database and process run slower: discarded
	empty := measure("empty")
	start := time.Now()
	prefillHistory(ctx, r, history)
	var stored int64
	must(r.DB.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&stored))
	fmt.Printf("  prefilled %d events in %s\n", stored, time.Since(start).Round(time.Second))
	full := measure("full")
	ratio := full / empty
	record("receiver store, new events, empty table", fmt.Sprintf("%.0f events/s", empty), "", nil)
	record(fmt.Sprintf("receiver store, new events, table holding %d M events", stored/1_000_000), fmt.Sprintf("%.0f events/s (%.2fx of empty)", full, ratio), ">= 0.80x", b(ratio >= 0.8))
	reportAtScale(ctx, r, st, stored)
}

// reportAtScale builds the report's rollups over the history, stores a little more, and times
// the incremental refresh and every answer of the report as the reporting role reads it.
func reportAtScale(ctx context.Context, r *receivertest.Receiver, st *store.Store, stored int64) {
	owner := r.DB
	start := time.Now()
	days, err := report.RefreshRollups(ctx, owner)
	must(err)
	record(fmt.Sprintf("report rollups built from scratch over %d M events", stored/1_000_000),
		fmt.Sprintf("%s (%d instance-days)", time.Since(start).Round(time.Second), days), "", nil)
	var userDays, runs int64
	must(owner.QueryRow(ctx, `SELECT (SELECT count(*) FROM rollup_user_days), (SELECT count(*) FROM rollup_day_sessions)`).Scan(&userDays, &runs))
	fmt.Printf("  rollups: %d user-days, %d day sessions\n", userDays, runs)
	// A trickle after the build: today's day of one instance is queued again.
	inst := "history-late"
	must(r.Grant(ctx, inst, consentv1.TierEventLevel, benchConsentSince))
	_, err = st.InsertEvents(ctx, inst, historyBatch(inst, 0, time.Now().Add(-time.Hour)))
	must(err)
	start = time.Now()
	days, err = report.RefreshRollups(ctx, owner)
	must(err)
	record("report rollups, refresh after new events", fmt.Sprintf("%s (%d instance-days)", time.Since(start).Round(time.Millisecond), days), "", nil)
	reporting, err := store.OpenPool(ctx, r.PG.DSN("receiver"), store.RoleReporting)
	must(err)
	defer reporting.Close()
	rep, err := report.Build(ctx, reporting, report.Options{})
	must(err)
	for _, s := range rep.Sections {
		record(fmt.Sprintf("report answer over %d M events: %s", stored/1_000_000, s.Title),
			fmt.Sprintf("%s (%d rows)", s.Took.Round(time.Millisecond), len(s.Rows)), "< 5s", b(s.Took < 5*time.Second))
	}
}

// historyBatch is a 5,000-event batch of instance from event id from, one event every 10 ms
// after base, with 2,000 users and the three pattern types.
func historyBatch(instance string, from int, base time.Time) *batchv1.Batch {
	bt := &batchv1.Batch{InstanceID: instance, BatchID: fmt.Sprintf("%s-e-%d-%d-%d", instance, from, from+4999, 5000), Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(from + 5000),
		AllowListVersion: catalogv1.CurrentVersion}
	patterns := []string{"literal", "regexp", "structural"}
	for i := from; i < from+5000; i++ {
		bt.Events = append(bt.Events, batchv1.Event{ID: fmt.Sprint(i), Name: "SearchSubmitted", Timestamp: base.Add(time.Duration(i) * 10 * time.Millisecond).UTC(),
			Source: "WEB", ProductVersion: "5.3.0", UserID: fmt.Sprintf("f%031x", i%2000), Properties: map[string]any{"patternType": patterns[i%3]}})
	}
	return bt
}

// prefillHistory inserts n events spread evenly over the last historyDays days (today
// included): 200 instances, 60,000 users, the catalog's event names, varied properties and
// versions. Two
// connections fill days side by side. Past days are loaded the way a bulk restore would: into a
// table of their own, indexed once, then attached as the day's partition (per-row index upkeep
// would make the fill take three times as long); today's share goes through the events table.
func prefillHistory(ctx context.Context, r *receivertest.Receiver, n int) {
	perDay := n / historyDays
	today := time.Now().UTC().Truncate(24 * time.Hour)
	days := make(chan int, historyDays)
	for d := range historyDays {
		days <- d
	}
	close(days)
	// One day's rows are computed once; every day copies them with its own times, ids and users.
	// Each day 18,000 of the 60,000 users are active (a window that moves by 2,000 users a day,
	// so most users come back on many days), each in one session of eight events four minutes
	// apart at a time of day of their own; each user belongs to one of 200 instances; names are
	// the catalog's, searches of three pattern types; 400 flag names, 1,164 versions, 5 clients.
	names := catalogv1.Current().Names()
	_, err := r.DB.Exec(ctx, `
CREATE UNLOGGED TABLE history_template AS
SELECT i, i % 18000 AS u,
  ($2::text[])[1 + (i * 7) % cardinality($2::text[])] AS name,
  ((i % 18000) * 37 % 1380) * interval '1 minute' + (i / 18000) * interval '4 minutes' + (i % 60) * interval '1 second' AS at,
  (ARRAY['WEB','IDEEXTENSION','CODYCHAT'])[1 + i % 3] AS source, '5.' || (i % 7) || '.' || (i % 1164) AS version,
  (ARRAY['', 'vscode', 'jetbrains', 'web', 'cli'])[1 + i % 5] AS client,
  jsonb_build_object('flag-' || (i % 400), i % 2 = 0) AS feature_flags,
  jsonb_build_object('patternType', (ARRAY['literal','regexp','structural'])[1 + i % 3], 'resultCount', i % 500) AS properties
FROM generate_series(0, $1 - 1) i`, perDay, names)
	must(err)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			conn, err := r.DB.Acquire(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Release()
			if _, err := conn.Exec(ctx, `SET maintenance_work_mem = '256MB'`); err != nil {
				errs <- err
				return
			}
			for d := range days {
				day := today.AddDate(0, 0, -d)
				table := "events"
				part := "events_p" + day.Format("20060102")
				if d > 0 {
					table = part
					// A year-old day is long vacuumed and never written again: autovacuum stays off
					// these, or its first pass over 50 M rows would run during the measurement.
					if _, err := conn.Exec(ctx, `CREATE TABLE `+part+` (LIKE events INCLUDING DEFAULTS) WITH (autovacuum_enabled = false)`); err != nil {
						errs <- err
						return
					}
				}
				if _, err := conn.Exec(ctx, `
INSERT INTO `+table+` (instance_id, event_id, name, ts, source, version, client, user_id, feature_flags, properties, received_at, delivery)
SELECT 'fleet-' || ((u + $3 * 2000) % 60000 % 200), $2::bigint * 1000000000 + i, name, $1::timestamptz + at, source, version, client,
  lpad(to_hex((u + $3 * 2000) % 60000), 32, '0'), feature_flags, properties, $1::timestamptz + interval '1 day', $2::bigint
FROM history_template`, day, historyDays-d, d); err != nil {
					errs <- err
					return
				}
				if d > 0 {
					// DDL takes no parameters: the bounds are dates this function formatted.
					if _, err := conn.Exec(ctx, fmt.Sprintf(`ALTER TABLE events ATTACH PARTITION %s FOR VALUES FROM ('%s+00') TO ('%s+00')`,
						part, day.Format(time.DateOnly), day.AddDate(0, 0, 1).Format(time.DateOnly))); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		must(err)
	}
	_, err = r.DB.Exec(ctx, `DROP TABLE history_template`)
	must(err)
}
