/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pgtest"
)

// TestMigrationMovesStoredEventsIntoPartitions: a database holding events in the unpartitioned
// table of the previous release keeps every one of them, unchanged, in its day's partition, the
// report view reads them, and a re-send of one is still absorbed.
func TestMigrationMovesStoredEventsIntoPartitions(t *testing.T) {
	ctx := context.Background()
	s := storeMigratedBefore(t, "0006") // the previous release's schema: migrations 1 to 5
	if _, err := s.pool.Exec(ctx, `
INSERT INTO events (instance_id, event_id, name, ts, user_id, properties, delivery)
SELECT 'acme', i, 'SearchSubmitted', timestamptz '2026-10-30 22:00:00+00' + i * interval '1 hour',
  lpad(to_hex(i), 32, '0'), '{"patternType": "regexp"}', i / 10
FROM generate_series(1, 100) i`); err != nil {
		t.Fatal(err)
	}
	// Timestamps the previous release accepted at its bounds (it checked the year in the sender's
	// offset): the migration moves them too, whatever the partition functions would allow now.
	if _, err := s.pool.Exec(ctx, `
INSERT INTO events (instance_id, event_id, name, ts, user_id) VALUES
  ('edge', 1, 'SearchSubmitted', '9999-12-31 23:59:59.999999+00', '00000000000000000000000000000001'),
  ('edge', 2, 'SearchSubmitted', '1999-12-31 23:30:00+00', '00000000000000000000000000000002')`); err != nil {
		t.Fatal(err)
	}
	const digest = `SELECT count(*), md5(string_agg(to_jsonb(e)::text, ',' ORDER BY event_id)) FROM events e`
	var before, after struct {
		n   int
		sum string
	}
	if err := s.pool.QueryRow(ctx, digest).Scan(&before.n, &before.sum); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.pool.QueryRow(ctx, digest).Scan(&after.n, &after.sum); err != nil {
		t.Fatal(err)
	}
	if after != before || after.n != 102 {
		t.Fatalf("events before the migration %+v, after %+v", before, after)
	}
	var misplaced, parts, viewed int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tableoid::regclass::text <> 'events_p' || to_char(ts AT TIME ZONE 'UTC', 'YYYYMMDD')),
		count(DISTINCT tableoid) FROM events`).Scan(&misplaced, &parts); err != nil {
		t.Fatal(err)
	}
	if misplaced != 0 || parts != 8 {
		t.Errorf("%d events outside their day's partition, %d partitions; want 0 and 8", misplaced, parts)
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM report_events WHERE pattern_type = 'regexp'`).Scan(&viewed); err != nil || viewed != 100 {
		t.Errorf("report view reads %d events (%v), want 100", viewed, err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO consent_instances (instance_id) VALUES ('acme');
INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
VALUES ('acme', 1, '2026-01-01', 'EventLevel', 'c', 'n', 'p')`); err != nil {
		t.Fatal(err)
	}
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "resend", Kind: batchv1.KindEvents, Cursor: 7, Events: []batchv1.Event{{
		ID: "7", Name: "SearchSubmitted", Timestamp: time.Date(2026, 10, 31, 5, 0, 0, 0, time.UTC), UserID: "f0000000000000000000000000000007"}}}
	if res, err := s.InsertEvents(ctx, "acme", b); err != nil || res.Duplicates != 1 || res.Accepted != 0 {
		t.Errorf("re-send of a migrated event: %+v %v, want one duplicate", res, err)
	}
}

// TestMigrationTiesRecordsReleasedBeforeIt: a record released before the receiver remembered
// where (migration 0009) is tied to the namespace of the policy that last recorded it, so a
// policy of another namespace cannot claim it after the upgrade either; an owned record and one
// never recorded are left as they are.
func TestMigrationTiesRecordsReleasedBeforeIt(t *testing.T) {
	ctx := context.Background()
	s := storeMigratedBefore(t, "0009")
	if _, err := s.pool.Exec(ctx, `
INSERT INTO consent_instances (instance_id) VALUES ('released'), ('owned'), ('fresh');
UPDATE consent_instances SET owner_cluster = 'c1', owner_namespace = 'owner', owner_name = 'p' WHERE instance_id = 'owned';
INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name) VALUES
  ('released', 1, '2026-01-01', 'EventLevel', 'c1', 'first', 'p'),
  ('released', 2, '2026-02-01', 'Off', 'c1', 'acme', 'p'),
  ('owned', 1, '2026-01-01', 'EventLevel', 'c1', 'owner', 'p')`); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	got := placeOf(t, s, "released")
	if want := map[string]string{"released": "c1/acme", "owned": "/", "fresh": "/"}; !maps.Equal(got, want) {
		t.Fatalf("released where: %v, want %v", got, want)
	}
	claim := func(ns string) error {
		_, err := s.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: "released", Owner: consentv1.Owner{Namespace: ns, Name: "p", UID: "u-" + ns},
			Transition: consentv1.Transition{At: time.Now(), Tier: consentv1.TierCriticalOnly}})
		return err
	}
	if err := claim("mallory"); !errors.Is(err, ErrOwnedElsewhere) {
		t.Fatalf("another namespace claiming a record released before the upgrade: %v", err)
	}
	if err := claim("acme"); err != nil {
		t.Fatalf("its own namespace claiming it again: %v", err)
	}
}

// TestMigrationRemembersEachRecordsLastOwner: migration 0013 takes an owned record's owner as
// its last owner, a released one's namespace it was released to, and for a record open to
// anyone the owner named by its latest transition or erasure request (earlier releases kept
// nothing closer); with reservations required, only that namespace claims it again.
func TestMigrationRemembersEachRecordsLastOwner(t *testing.T) {
	ctx := context.Background()
	s := storeMigratedBefore(t, "0013")
	if _, err := s.pool.Exec(ctx, `
INSERT INTO consent_instances (instance_id) VALUES ('owned'), ('open'), ('released'), ('fresh'), ('erased');
UPDATE consent_instances SET owner_cluster = 'c1', owner_namespace = 'owner', owner_name = 'p' WHERE instance_id = 'owned';
UPDATE consent_instances SET released_cluster = 'c1', released_namespace = 'next' WHERE instance_id = 'released';
INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name, recorded_at) VALUES
  ('owned', 1, '2026-01-01', 'EventLevel', 'c1', 'first', 'p', '2026-01-01'),
  ('open', 1, '2026-01-01', 'EventLevel', 'c1', 'first', 'p', '2026-01-01'),
  ('open', 2, '2026-02-01', 'CriticalOnly', 'c2', 'acme', 'p', '2026-02-01'),
  ('released', 1, '2026-01-01', 'EventLevel', 'c1', 'acme', 'p', '2026-01-01'),
  ('erased', 1, '2026-01-01', 'EventLevel', 'c1', 'first', 'p', '2026-01-01');
-- Claimed at the tier in force by another namespace (no transition), which then asked for an erasure.
INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by, owner_cluster, owner_namespace, owner_name, requested_at) VALUES
  ('erased', 'r1', 'Events', '2026-03-01', 'dsr', 'c1', 'beta', 'p', '2026-03-01'),
  ('open', 'r0', 'Events', '2026-01-15', 'dsr', 'c1', 'first', 'p', '2026-01-15')`); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	got := placeOf(t, s, "last_owner")
	if want := map[string]string{"owned": "c1/owner", "open": "c2/acme", "released": "c1/next", "fresh": "/", "erased": "c1/beta"}; !maps.Equal(got, want) {
		t.Fatalf("last owners: %v, want %v", got, want)
	}
	if err := s.SetReservationsRequired(ctx, true); err != nil {
		t.Fatal(err)
	}
	claim := func(cluster, ns string) error {
		_, err := s.RecordTransition(ctx, cluster, consentv1.RecordRequest{InstanceID: "open", Owner: consentv1.Owner{Namespace: ns, Name: "p", UID: "u-" + ns},
			Transition: consentv1.Transition{At: time.Now(), Tier: consentv1.TierOff}})
		return err
	}
	for _, who := range [][2]string{{"c1", "first"}, {"c1", "acme"}} {
		var e *OwnedElsewhereError
		if err := claim(who[0], who[1]); !errors.As(err, &e) || !e.Unreserved {
			t.Errorf("%s/%s claiming a record open to anyone it does not own last: %v", who[0], who[1], err)
		}
	}
	if err := claim("c2", "acme"); err != nil {
		t.Fatalf("its last owner's namespace claiming it again: %v", err)
	}
}

// placeOf returns, by instance, the CLUSTER/NAMESPACE pair of columns prefix_cluster and
// prefix_namespace of consent_instances ("/" when unset).
func placeOf(t *testing.T, s *Store, prefix string) map[string]string {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), fmt.Sprintf(`SELECT instance_id, coalesce(%[1]s_cluster, ''), coalesce(%[1]s_namespace, '') FROM consent_instances`, prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var id, c, n string
		if err := rows.Scan(&id, &c, &n); err != nil {
			t.Fatal(err)
		}
		got[id] = c + "/" + n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// storeMigratedBefore opens a store on a new database of a PostgreSQL server of its own, with
// the migrations before the one named by the prefix applied (an earlier release's schema).
func storeMigratedBefore(t *testing.T, prefix string) *Store {
	t.Helper()
	ctx := context.Background()
	pg, err := pgtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	if err := pg.CreateDatabase(ctx, "receiver"); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, pg.DSN("receiver"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for v, name := range names {
		if filepath.Base(name) >= prefix {
			break
		}
		sql, err := migrations.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.pool.Exec(ctx, string(sql)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := s.pool.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, v+1); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// TestMigrationDropsCellsOfDaysNotWhollyCriticalOnly: migration 0018 deletes exactly the stored
// cells of days AggregateDays no longer allows (checked against it on random ledgers, with
// ties, expiries, moves at midnight and a transition dated a fraction of a second before the
// one it follows), and keeps their days claimed so they are never published again.
func TestMigrationDropsCellsOfDaysNotWhollyCriticalOnly(t *testing.T) {
	ctx := context.Background()
	s := storeMigratedBefore(t, "0018")
	r := rand.New(rand.NewPCG(3, 5))
	start := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	quarter := func(n int) time.Time { return start.Add(time.Duration(n) * 6 * time.Hour) }
	tiers := []consentv1.Tier{consentv1.TierOff, consentv1.TierCriticalOnly, consentv1.TierEventLevel}
	ledgers := map[string]consentv1.Timeline{}
	for i := range 200 {
		instance := fmt.Sprintf("i%d", i)
		var tl consentv1.Timeline
		at := 0
		for range r.IntN(7) {
			at += r.IntN(6)
			tr := consentv1.Transition{At: quarter(at), Tier: tiers[r.IntN(3)]}
			switch n := len(tl); {
			case r.IntN(4) == 0:
				tr.At = tr.At.Add(500 * time.Millisecond) // a fraction of a second...
			case n > 0 && r.IntN(4) == 0:
				tr.At = tl[n-1].At.Truncate(time.Second) // ...and the next dated at its second, before it (the trigger allows it)
			}
			if tr.Tier == consentv1.TierEventLevel && r.IntN(2) == 0 {
				u := quarter(at + 1 + r.IntN(8))
				tr.Until = &u
			}
			tl = append(tl, tr)
		}
		ledgers[instance] = tl
		if _, err := s.pool.Exec(ctx, `INSERT INTO consent_instances (instance_id) VALUES ($1)`, instance); err != nil {
			t.Fatal(err)
		}
		for seq, tr := range tl {
			if _, err := s.pool.Exec(ctx, `INSERT INTO consent_transitions (instance_id, seq, at, tier, until, owner_cluster, owner_namespace, owner_name)
VALUES ($1, $2, $3, $4, $5, 'c1', 'ns', 'p')`, instance, seq+1, tr.At, string(tr.Tier), tr.Until); err != nil {
				t.Fatal(err)
			}
		}
		for _, sql := range []string{
			`INSERT INTO aggregates (instance_id, day, metric, dimension, value, users, final, delivery)
SELECT $1, d::date, 'event_count', 'hover', 7, 5, true, 1 FROM generate_series($2::date - 1, $2::date + 12, interval '1 day') d`,
			`INSERT INTO aggregate_days (instance_id, day, delivery, published_at)
SELECT $1, d::date, 1, now() FROM generate_series($2::date - 1, $2::date + 12, interval '1 day') d`,
		} {
			if _, err := s.pool.Exec(ctx, sql, instance, start); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	kept, claimed := 0, 0
	for instance, tl := range ledgers {
		days := tl.AggregateDays()
		for n := -1; n <= 12; n++ {
			day := start.AddDate(0, 0, n)
			var stored, claim bool
			if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM aggregates WHERE instance_id = $1 AND day = $2::date),
  EXISTS (SELECT 1 FROM aggregate_days WHERE instance_id = $1 AND day = $2::date)`, instance, day).Scan(&stored, &claim); err != nil {
				t.Fatal(err)
			}
			if want := days.Allow(day); stored != want {
				t.Errorf("%s %s: cell kept %v, want %v (ledger %+v)", instance, day.Format(time.DateOnly), stored, want, tl)
			}
			if !claim {
				t.Errorf("%s %s: the day is no longer claimed", instance, day.Format(time.DateOnly))
			}
			if stored {
				kept++
			} else {
				claimed++
			}
		}
	}
	if kept == 0 || claimed == 0 {
		t.Fatalf("the ledgers tried nothing: %d cells kept, %d deleted", kept, claimed)
	}
}

// TestMigrationReplacesFreeTextRequesters: migrations 0019 and 0020 leave no customer words in an
// erasure's audit record (a requester that is not a role becomes Unspecified, a role is kept; a
// request id becomes the key the receiver computes for it, so a retry finds its record; nothing
// else in the record changes), and from then on the database refuses words there, whoever
// writes them.
func TestMigrationReplacesFreeTextRequesters(t *testing.T) {
	ctx := context.Background()
	s := storeMigratedBefore(t, "0019")
	if _, err := s.pool.Exec(ctx, `INSERT INTO consent_instances (instance_id, owner_cluster, owner_namespace, owner_name) VALUES ('acme', 'c', 'n', 'p');
INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
VALUES ('acme', 1, '2026-01-01', 'EventLevel', 'c', 'n', 'p')`); err != nil {
		t.Fatal(err)
	}
	before := map[string]string{
		"r1": "acme admin, support ticket 4711",
		"Jane.Doe_jane.doe-acme.example:project-falcon": "Jane Doe <jane.doe@acme.example>",
		"r3": consentv1.RequesterLegal,
		"r4": "support", // a role in another case is not a role
		// An id the old format admitted that equals another request's key: the rewrite does not
		// collide with it on the way.
		consentv1.RequestKey("acme", "r3"): consentv1.RequesterSupport,
	}
	for id, who := range before {
		if _, err := s.pool.Exec(ctx, `INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by,
  owner_cluster, owner_namespace, owner_name, requested_at, events_deleted, verified_at)
VALUES ('acme', $1, 'Events', '2026-02-01', $2, 'c', 'n', 'p', '2026-02-01', 40, '2026-02-01')`, id, who); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	key := func(id string) string { return consentv1.RequestKey("acme", id) }
	want := map[string]string{key("r1"): consentv1.RequesterUnspecified, key("Jane.Doe_jane.doe-acme.example:project-falcon"): consentv1.RequesterUnspecified,
		key("r3"): consentv1.RequesterLegal, key("r4"): consentv1.RequesterUnspecified,
		key(key("r3")): consentv1.RequesterSupport}
	rows, err := s.pool.Query(ctx, `SELECT request_id, requested_by, events_deleted, verified_at IS NOT NULL FROM erasures`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, who string
		var deleted int64
		var verified bool
		if err := rows.Scan(&id, &who, &deleted, &verified); err != nil {
			t.Fatal(err)
		}
		if _, known := want[id]; !known {
			t.Errorf("a record's id after the migration is %q, not the key the receiver computes", id)
			continue
		}
		if who != want[id] || deleted != 40 || !verified {
			t.Errorf("%s after the migration: requested by %q, %d deleted, verified %v; want %q, 40, true", id, who, deleted, verified, want[id])
		}
		delete(want, id)
	}
	if err := rows.Err(); err != nil || len(want) != 0 {
		t.Fatalf("records missing after the migration: %v (%v)", want, err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by,
  owner_cluster, owner_namespace, owner_name, requested_at)
VALUES ('acme', $1, 'Events', '2026-02-01', 'jane.doe', 'c', 'n', 'p', '2026-02-01')`, key("r5")); err == nil {
		t.Fatal("the database stored free text as an erasure's requester")
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by,
  owner_cluster, owner_namespace, owner_name, requested_at)
VALUES ('acme', 'jane.doe-1', 'Events', '2026-02-01', 'Legal', 'c', 'n', 'p', '2026-02-01')`); err == nil {
		t.Fatal("the database stored a request id rather than its key")
	}
	// A retry of a request recorded before the migration finds its record: replayed, not
	// carried out again.
	res, err := s.Erase(ctx, "c", consentv1.ErasureRequest{InstanceID: "acme", Owner: consentv1.Owner{Namespace: "n", Name: "p"},
		RequestID: "r3", Scope: consentv1.ScopeEvents, To: &[]time.Time{time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)}[0],
		RequestedBy: consentv1.RequesterLegal})
	if err != nil || res.RequestID != key("r3") || res.EventsDeleted != 40 {
		t.Fatalf("a retry after the migration: %+v %v", res, err)
	}
}

// TestMigration0020LeavesKeysItFindsAlone: a database a development build migrated already holds
// keys and their check; 0020 leaves them as they are (hashing a key again would lose the record).
func TestMigration0020LeavesKeysItFindsAlone(t *testing.T) {
	ctx := context.Background()
	s := storeMigratedBefore(t, "0020")
	k := consentv1.RequestKey("acme", "DSR-1")
	if _, err := s.pool.Exec(ctx, `INSERT INTO consent_instances (instance_id) VALUES ('acme');
ALTER TABLE erasures ADD CONSTRAINT erasures_request_key CHECK (request_id ~ '^[0-9a-f]{32}$');
INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by, owner_cluster, owner_namespace, owner_name, requested_at)
VALUES ('acme', '`+k+`', 'Events', '2026-02-01', 'Legal', 'c', 'n', 'p', '2026-02-01')`); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := s.pool.QueryRow(ctx, `SELECT request_id FROM erasures`).Scan(&id); err != nil || id != k {
		t.Fatalf("request id after 0020 on a migrated database: %q (%v), want %q", id, err, k)
	}
}
