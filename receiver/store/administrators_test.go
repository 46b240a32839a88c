/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// TestOnlyTheReceiversAdministratorsHandOverRecords: where a record may be claimed from next,
// and whether reservations are required, are the receiver's administrators' to change, not the
// receiver's. A receiver's store, and a login of its own that is a member of the receiver's
// roles only, may record what the owning policy asks (a claim, a release to its own namespace,
// an erasure) but neither reserve nor hand over a record, nor open it to anyone, nor turn
// reservations off, nor rewrite the consent timeline or an erasure's record, whatever SQL it
// runs; the administrators' role may.
func TestOnlyTheReceiversAdministratorsHandOverRecords(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	owner := consentv1.Owner{Namespace: "acme", Name: "policy", UID: "u1"}
	claim := func(st *store.Store, instance string, o consentv1.Owner, tier consentv1.Tier) error {
		_, err := st.RecordTransition(ctx, "c1", consentv1.RecordRequest{InstanceID: instance, Owner: o,
			Transition: consentv1.Transition{At: time.Now().UTC().Add(-time.Minute), Tier: tier}})
		return err
	}
	if err := claim(r.Store, "acme", owner, consentv1.TierEventLevel); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Store.Erase(ctx, "c1", consentv1.ErasureRequest{InstanceID: "acme", RequestID: "dsr-1", Scope: consentv1.ScopeEvents,
		RequestedBy: consentv1.RequesterDataSubject, Owner: owner}); err != nil {
		t.Fatalf("the receiver carries out its owner's erasure: %v", err)
	}

	// As if it had deleted something (the test stores no events): counts to undo.
	if _, err := r.DB.Exec(ctx, `UPDATE erasures SET events_deleted = 5, aggregates_deleted = 2`); err != nil {
		t.Fatal(err)
	}

	// A login of the receiver's own, as README advises: the receiver's roles and nothing else.
	if _, err := r.DB.Exec(ctx, `CREATE ROLE receiver_login LOGIN IN ROLE telemetry_ingest, telemetry_raw_reader`); err != nil {
		t.Fatal(err)
	}
	loginDSN := strings.Replace(r.PG.DSN("receiver"), "postgres@", "receiver_login@", 1)
	st, err := store.Open(ctx, loginDSN, store.WithRoles(store.RoleConsentAdmin, store.RoleRawReader))
	if err == nil {
		err = st.Ping(ctx) // the pool connects, and switches role, on first use
		st.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "switching to database role") {
		t.Fatalf("the receiver's own login works as the administrators' role: %v", err)
	}
	login, err := pgx.Connect(ctx, loginDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = login.Close(ctx) }()

	refused := func(err error) bool {
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && pgErr.Code == "42501"
	}
	hostile := []string{
		// Hand the owned record over to another namespace, or open it to anyone.
		`UPDATE consent_instances SET released_cluster = 'c1', released_namespace = 'mallory' WHERE instance_id = 'acme'`,
		`UPDATE consent_instances SET owner_cluster = NULL, owner_namespace = NULL, owner_name = NULL, owner_uid = NULL, claimed_at = NULL WHERE instance_id = 'acme'`,
		`UPDATE consent_instances SET owner_cluster = NULL, owner_namespace = NULL, owner_name = NULL, owner_uid = NULL, claimed_at = NULL,
		   released_cluster = 'c1', released_namespace = 'mallory' WHERE instance_id = 'acme'`,
		// Reserve an instance nobody has recorded for one's own namespace.
		`INSERT INTO consent_instances (instance_id, created_at, released_cluster, released_namespace) VALUES ('initech', now(), 'c1', 'mallory')`,
		// Turn reservations off, for every receiver.
		`INSERT INTO receiver_settings (name, value) VALUES ('reservations_required', false)`,
		`UPDATE receiver_settings SET value = false`,
		`DELETE FROM receiver_settings`,
		// Rewrite or delete the consent timeline and the erasure's record.
		`UPDATE consent_transitions SET tier = 'EventLevel'`,
		`UPDATE consent_transitions SET at = at - interval '1 year'`,
		`DELETE FROM consent_transitions`,
		`UPDATE erasures SET requested_by = 'nobody'`,
		`UPDATE erasures SET range_to = range_from`,
		`DELETE FROM erasures`,
		// Slip a period of consent in before the head, leave a gap that blocks the owner's next
		// transition (a withdrawal), date one before the last, or record one in another's name.
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
		   VALUES ('acme', 0, '1970-01-01', 'EventLevel', 'c1', 'acme', 'policy')`,
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
		   VALUES ('acme', 3, now(), 'Off', 'c1', 'acme', 'policy')`,
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
		   VALUES ('acme', 2, '1970-01-01', 'EventLevel', 'c1', 'acme', 'policy')`,
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
		   VALUES ('acme', 2, now(), 'Off', 'c1', 'mallory', 'p')`,
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
		   VALUES ('acme', 2, now(), 'EventLevel', 'c1', 'acme', 'policy')`,
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name)
		   VALUES ('acme', 2, 'infinity', 'CriticalOnly', 'c1', 'acme', 'policy')`,
		// An until that is no trial's expiry: on a lower tier, at or before the transition, never.
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name, until)
		   VALUES ('acme', 2, now(), 'Off', 'c1', 'acme', 'policy', now() + interval '1 day')`,
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name, until)
		   VALUES ('acme', 2, now(), 'EventLevel', 'c1', 'acme', 'policy', now())`,
		`INSERT INTO consent_transitions (instance_id, seq, at, tier, owner_cluster, owner_namespace, owner_name, until)
		   VALUES ('acme', 2, now(), 'EventLevel', 'c1', 'acme', 'policy', 'infinity')`,
		`UPDATE consent_transitions SET until = now()`,
		// Rename the owner, so that its policy no longer owns the record.
		`UPDATE consent_instances SET owner_name = 'other' WHERE instance_id = 'acme'`,
		`UPDATE consent_instances SET owner_uid = 'other' WHERE instance_id = 'acme'`,
		// Undo an erasure's counts or its verification, record one for another namespace, or
		// record one verified before the receiver carried it out (its retry would do nothing).
		`UPDATE erasures SET events_deleted = 0, aggregates_deleted = 0`,
		`UPDATE erasures SET events_deleted = events_deleted - 1`,
		`UPDATE erasures SET verified_at = NULL`,
		`UPDATE erasures SET verified_at = '2000-01-01'`,
		`INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by, owner_cluster, owner_namespace, owner_name, requested_at)
		   VALUES ('acme', 'd79a50f46cdc5e19963be5de8d4f7c36', 'Events', now(), 'DataSubject', 'c1', 'acme', 'policy', now())
		   ON CONFLICT (instance_id, request_id) DO UPDATE SET verified_at = '2000-01-01'`,
		`INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by, owner_cluster, owner_namespace, owner_name, requested_at)
		   VALUES ('acme', 'bfdf3f332693a52b0ea851dbd0b1c9c6', 'Events', now(), 'DataSubject', 'c1', 'mallory', 'p', now())`,
		`INSERT INTO erasures (instance_id, request_id, scope, range_to, requested_by, owner_cluster, owner_namespace, owner_name, requested_at, verified_at)
		   VALUES ('acme', '936cf9a60cd6627d61027999438aa4c7', 'All', now(), 'DataSubject', 'c1', 'acme', 'policy', now(), now())`,
	}
	for _, sql := range hostile {
		for who, exec := range map[string]func(string) error{
			"the receiver's store": func(sql string) error { _, err := r.Store.Pool().Exec(ctx, sql); return err },
			"the receiver's login": func(sql string) error { _, err := login.Exec(ctx, sql); return err },
		} {
			if err := exec(sql); !refused(err) {
				t.Errorf("%s: %s was not refused (%v)", who, sql, err)
			}
		}
	}
	if _, err := login.Exec(ctx, `SET ROLE telemetry_consent_admin`); err == nil {
		t.Fatal("the receiver's login switched to the administrators' role")
	}

	// Through the store's API: refused with ErrAdministratorsOnly, and nothing changes.
	if err := r.Store.Reserve(ctx, "initech", consentv1.Owner{Cluster: "c1", Namespace: "mallory"}); !errors.Is(err, store.ErrAdministratorsOnly) {
		t.Errorf("the receiver reserved an instance: %v", err)
	}
	for _, to := range []*consentv1.Owner{{Cluster: "c1", Namespace: "mallory"}, nil} {
		if _, err := r.Store.ForceRelease(ctx, "acme", to); !errors.Is(err, store.ErrAdministratorsOnly) {
			t.Errorf("the receiver handed the record over to %v: %v", to, err)
		}
	}
	for _, on := range []bool{true, false} {
		if err := r.Store.SetReservationsRequired(ctx, on); !errors.Is(err, store.ErrAdministratorsOnly) {
			t.Errorf("the receiver set reservations required to %v: %v", on, err)
		}
	}
	state, err := r.Store.ConsentState(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if state.Owner.Namespace != "acme" || len(state.Timeline) != 1 || len(state.Erasures) != 1 ||
		state.Erasures[0].RequestedBy != consentv1.RequesterDataSubject || state.Erasures[0].VerifiedAt == nil {
		t.Fatalf("after the refusals the record is %+v", state)
	}
	if _, err := r.Store.ConsentState(ctx, "initech"); !errors.Is(err, store.ErrUnknownInstance) {
		t.Fatalf("the refused reservation left a record: %v", err)
	}

	// What the owning policy asks still works: its transitions and erasures in order, its
	// release to its own namespace, then its claim again; once released, the receiver cannot
	// move or open the record either.
	if err := claim(r.Store, "acme", owner, consentv1.TierOff); err != nil {
		t.Fatalf("the owner's withdrawal: %v", err)
	}
	if state, err := r.Store.ConsentState(ctx, "acme"); err != nil || len(state.Timeline) != 2 || state.Timeline[1].Tier != consentv1.TierOff {
		t.Fatalf("the owner's withdrawal is not the timeline's head: %+v %v", state.Timeline, err)
	}
	if _, err := r.Store.Erase(ctx, "c1", consentv1.ErasureRequest{InstanceID: "acme", RequestID: "dsr-2", Scope: consentv1.ScopeAll,
		RequestedBy: consentv1.RequesterDataSubject, Owner: owner}); err != nil {
		t.Fatalf("the receiver carries out its owner's second erasure: %v", err)
	}
	if err := r.Store.Release(ctx, "c1", consentv1.ReleaseRequest{InstanceID: "acme", Owner: owner}); err != nil {
		t.Fatalf("the owner's release: %v", err)
	}
	for _, sql := range []string{
		`UPDATE consent_instances SET released_cluster = 'c1', released_namespace = 'mallory' WHERE instance_id = 'acme'`,
		`UPDATE consent_instances SET released_cluster = NULL, released_namespace = NULL WHERE instance_id = 'acme'`,
	} {
		if _, err := login.Exec(ctx, sql); !refused(err) {
			t.Errorf("the receiver's login, on a released record: %s was not refused (%v)", sql, err)
		}
	}
	if err := claim(r.Store, "acme", consentv1.Owner{Namespace: "mallory", Name: "p", UID: "u2"}, consentv1.TierEventLevel); !errors.Is(err, store.ErrOwnedElsewhere) {
		t.Fatalf("another namespace claimed the released record: %v", err)
	}
	if err := claim(r.Store, "acme", consentv1.Owner{Namespace: "acme", Name: "policy-2", UID: "u3"}, consentv1.TierCriticalOnly); err != nil {
		t.Fatalf("the owner's namespace claims its record again: %v", err)
	}

	// The administrators may do all of it.
	if _, err := r.Admin.ForceRelease(ctx, "acme", &consentv1.Owner{Cluster: "c1", Namespace: "initech-ns"}); err != nil {
		t.Fatalf("the administrators hand the record over: %v", err)
	}
	if err := r.Admin.Reserve(ctx, "initech", consentv1.Owner{Cluster: "c1", Namespace: "initech-ns"}); err != nil {
		t.Fatalf("the administrators reserve an instance: %v", err)
	}
	if err := r.Admin.SetReservationsRequired(ctx, true); err != nil {
		t.Fatalf("the administrators require reservations: %v", err)
	}
	if on, err := r.Store.ReservationsRequired(ctx); err != nil || !on {
		t.Fatalf("the receiver reads the setting: %v %v", on, err)
	}
	if err := claim(r.Store, "initech", consentv1.Owner{Namespace: "initech-ns", Name: "p", UID: "u4"}, consentv1.TierEventLevel); err != nil {
		t.Fatalf("the reserved namespace claims its instance: %v", err)
	}
}

// TestEveryFunctionResolvesNamesInItsSchema: a function that runs with the schema owner's rights
// (SECURITY DEFINER) or as a trigger on what another role writes must resolve names in its
// schema, then pg_temp: a temporary table or function of the caller's, found first, would run
// the caller's SQL with the owner's rights or fool the trigger.
func TestEveryFunctionResolvesNamesInItsSchema(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rows, err := r.DB.Query(ctx, `
SELECT p.proname, coalesce(p.proconfig, '{}')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND (p.prosecdef OR p.prorettype = 'trigger'::regtype OR p.proname = 'consent_owned_by')`)
	if err != nil {
		t.Fatal(err)
	}
	type fn struct {
		name   string
		config []string
	}
	fns, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fn, error) {
		var f fn
		return f, row.Scan(&f.name, &f.config)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(fns) < 10 {
		t.Fatalf("found only %d functions: %v", len(fns), fns)
	}
	var schema string
	if err := r.DB.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	for _, f := range fns {
		if !slices.Contains(f.config, "search_path="+schema+", pg_temp") {
			t.Errorf("%s resolves names through %v, want search_path=%s, pg_temp", f.name, f.config, schema)
		}
	}
}
