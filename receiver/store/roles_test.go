/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// TestRolesSeeOnlyWhatTheirJobNeeds: PostgreSQL itself keeps each role to its job. The ingest
// role stores batches but cannot read back a user, a name or a property; the reporting role
// reads only the report views, never the tables; the raw reader reads but cannot write.
func TestRolesSeeOnlyWhatTheirJobNeeds(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Grant(ctx, "acme", consentv1.TierEventLevel, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	b := &batchv1.Batch{Version: 1, InstanceID: "acme", BatchID: "roles-1", Kind: batchv1.KindEvents, Tier: "EventLevel",
		AllowListVersion: catalogv1.CurrentVersion, Cursor: 1,
		Events: []batchv1.Event{{ID: "1", Name: "SearchSubmitted", Timestamp: time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC),
			UserID: "0123456789abcdef0123456789abcdef", Properties: map[string]any{"patternType": "regexp"}}}}
	if res, err := r.Store.InsertEvents(ctx, "acme", b); err != nil || res.Accepted != 1 {
		t.Fatalf("the ingest role cannot store a batch: %+v %v", res, err)
	}
	reporting, err := store.OpenPool(ctx, r.PG.DSN("receiver"), store.RoleReporting)
	if err != nil {
		t.Fatal(err)
	}
	defer reporting.Close()
	raw, err := store.OpenPool(ctx, r.PG.DSN("receiver"), store.RoleRawReader)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	as := func(pool *pgxpool.Pool, sql string) error {
		rows, err := pool.Query(ctx, sql)
		if err != nil {
			return err
		}
		rows.Close()
		return rows.Err()
	}
	denied := func(err error) bool {
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && pgErr.Code == "42501" // insufficient_privilege
	}
	for _, c := range []struct {
		who  string
		pool *pgxpool.Pool
		sql  string
		ok   bool
	}{
		{"ingest", r.Store.Pool(), "SELECT current_user", true},
		{"ingest", r.Store.Pool(), "SELECT value FROM receiver_settings", true},
		{"reporting", reporting, "SELECT value FROM receiver_settings", false},
		{"reporting", reporting, "INSERT INTO receiver_settings (name, value) VALUES ('reservations_required', false)", false},
		{"raw reader", raw, "INSERT INTO receiver_settings (name, value) VALUES ('reservations_required', false)", false},
		{"ingest", r.Store.Pool(), "SELECT instance_id, event_id, ts, delivery FROM events", true},
		{"ingest", r.Store.Pool(), "SELECT user_id FROM events", false},
		{"ingest", r.Store.Pool(), "SELECT name FROM events", false},
		{"ingest", r.Store.Pool(), "SELECT properties FROM events", false},
		{"ingest", r.Store.Pool(), "SELECT * FROM events", false},
		{"ingest", r.Store.Pool(), "SELECT value FROM aggregates", false},
		{"ingest", r.Store.Pool(), "SELECT * FROM deliveries", false},
		{"ingest", r.Store.Pool(), "SELECT * FROM report_events", false},
		{"reporting", reporting, "SELECT instance_id, user_id, name, ts, pattern_type FROM report_events", true},
		{"reporting", reporting, "SELECT * FROM report_aggregates", true},
		{"reporting", reporting, "SELECT * FROM events", false},
		{"reporting", reporting, "SELECT instance_id FROM events", false},
		{"reporting", reporting, "SELECT * FROM aggregates", false},
		{"reporting", reporting, "SELECT * FROM consent_instances", false},
		{"reporting", reporting, "SELECT * FROM deliveries", false},
		{"raw reader", raw, "SELECT * FROM events", true},
		{"raw reader", raw, "DELETE FROM events", false},
		{"raw reader", raw, "SELECT * FROM consent_transitions", false},
		{"ingest", r.Store.Pool(), "SELECT * FROM consent_ownership_changes", true},
		{"ingest", r.Store.Pool(), "UPDATE consent_ownership_changes SET change = 'claim'", false},
		{"ingest", r.Store.Pool(), "INSERT INTO consent_ownership_changes (instance_id, change, application) VALUES ('acme', 'claim', 'forged')", false},
		{"ingest", r.Store.Pool(), "INSERT INTO consent_ownership_changes (instance_id, seq, change) OVERRIDING SYSTEM VALUE VALUES ('acme', 1000, 'claim')", false},
		{"ingest", r.Store.Pool(), "DELETE FROM consent_instances", false},
		{"ingest", r.Store.Pool(), "DELETE FROM consent_ownership_changes", false},
		{"reporting", reporting, "SELECT * FROM consent_ownership_changes", false},
		{"raw reader", raw, "SELECT * FROM consent_ownership_changes", false},
	} {
		err := as(c.pool, c.sql)
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: %s: %v", c.who, c.sql, err)
		case !c.ok && !denied(err):
			t.Errorf("%s: %s was not refused (%v)", c.who, c.sql, err)
		}
	}
	var user string
	if err := r.Store.Pool().QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user != store.RoleIngest {
		t.Fatalf("the store works as %q (%v), want %s", user, err, store.RoleIngest)
	}
	// The report view carries no column beyond what the report needs.
	rows, err := reporting.Query(ctx, "SELECT * FROM report_events LIMIT 0")
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	rows.Close()
	if want := []string{"instance_id", "user_id", "name", "ts", "pattern_type"}; len(cols) != len(want) {
		t.Fatalf("report_events columns %v, want %v", cols, want)
	}
}

// TestAStatementThatRunsTooLongIsCancelled: with a statement timeout, PostgreSQL cancels a
// statement that runs longer, and the store reports it as unavailability (503, retried), not as
// a failure.
func TestAStatementThatRunsTooLongIsCancelled(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithStatementTimeout(100*time.Millisecond), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Pool().Exec(ctx, "SELECT pg_sleep(2)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("a 2 s statement under a 100 ms timeout: %v", err)
	}
	if _, _, err := st.Cursor(ctx, "anyone"); err != nil {
		t.Fatalf("a quick statement after it: %v", err)
	}
}
