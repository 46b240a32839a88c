/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// receiverForCommands starts a receiver on a real database and points the commands at it.
func receiverForCommands(t *testing.T) *receivertest.Receiver {
	t.Helper()
	r, err := receivertest.Start(context.Background(), server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	t.Setenv("RECEIVER_DATABASE_DSN", r.PG.DSN("receiver"))
	return r
}

// TestConsentCommandsShowTheOwnershipTrail runs the administrator's consent commands against a
// real database: a reservation made through them shows in the record's trail with the user who
// ran it (its command), a deleted record's trail is still shown (table and json), and the reservations
// listing names each open record's last owner.
func TestConsentCommandsShowTheOwnershipTrail(t *testing.T) {
	ctx := context.Background()
	r := receiverForCommands(t)
	run := func(args ...string) string {
		t.Helper()
		out, err := captured(func() error { return consent(ctx, args) })
		if err != nil {
			t.Fatalf("consent %v: %v (%s)", args, err, out)
		}
		return out
	}

	if out := run("reserve", "--instance", "acme", "--to", "c1/acme"); !strings.Contains(out, "reserved") {
		t.Fatalf("reserve: %s", out)
	}
	show := run("show", "--instance", "acme")
	if !strings.Contains(show, "== ownership changes") || !strings.Contains(show, "reserve") ||
		!strings.Contains(show, "c1/acme") || !strings.Contains(show, "via receiver consent reserve") {
		t.Fatalf("show lacks the reservation in its trail:\n%s", show)
	}

	if _, err := r.DB.Exec(ctx, `DELETE FROM consent_instances WHERE instance_id = 'acme'`); err != nil {
		t.Fatal(err)
	}
	if show := run("show", "--instance", "acme"); !strings.Contains(show, "no record (deleted)") || !strings.Contains(show, "delete") {
		t.Fatalf("show of a deleted record:\n%s", show)
	}
	var deleted struct {
		Deleted          bool `json:"deleted"`
		OwnershipChanges []struct {
			Change string `json:"change"`
		} `json:"ownershipChanges"`
	}
	if err := json.Unmarshal([]byte(run("show", "--instance", "acme", "--format", "json")), &deleted); err != nil ||
		!deleted.Deleted || len(deleted.OwnershipChanges) != 2 || deleted.OwnershipChanges[1].Change != "delete" {
		t.Fatalf("json show of a deleted record: %+v %v", deleted, err)
	}
	if _, err := captured(func() error { return consent(ctx, []string{"show", "--instance", "never"}) }); err == nil {
		t.Fatal("show of an instance that never had a record succeeded")
	}

	if _, err := r.DB.Exec(ctx, `INSERT INTO consent_instances (instance_id, created_at) VALUES ('open', now());
UPDATE consent_instances SET owner_cluster = 'c2', owner_namespace = 'beta', owner_name = 'p' WHERE instance_id = 'open';
UPDATE consent_instances SET owner_cluster = NULL, owner_namespace = NULL, owner_name = NULL WHERE instance_id = 'open'`); err != nil {
		t.Fatal(err)
	}
	if out := run("reservations", "--required=true"); !strings.Contains(out, "reservations required") || !strings.Contains(out, "open: last owned from c2/beta") {
		t.Fatalf("reservations listing:\n%s", out)
	}
}

// TestAReceiversOwnLoginServesButNeverHandsOver: a login that is a member of the receiver's
// roles only starts a receiver (serve --migrate=false checks the schema an owner migrated), and
// reads the ledger, but may neither reserve, hand over nor open a record, nor require
// reservations; the same commands with the owner's DSN (a member of the administrators' role)
// may.
func TestAReceiversOwnLoginServesButNeverHandsOver(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// A plain login, as a database administrator creates it; receiver migrate grants it the
	// receiver's roles (as the shipped Deployment's init container does), and refuses a
	// superuser's.
	if _, err := r.DB.Exec(ctx, `CREATE ROLE receiver_login LOGIN`); err != nil {
		t.Fatal(err)
	}
	ownerDSN := r.PG.DSN("receiver")
	loginDSN := strings.Replace(ownerDSN, "postgres@", "receiver_login@", 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dsnFile := func(dsn string) string {
		f := filepath.Join(t.TempDir(), "dsn")
		if err := os.WriteFile(f, []byte(dsn), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	loginFile, ownerFile := dsnFile(loginDSN), dsnFile(ownerDSN)
	// Logins that could hand records over or rewrite the ledger whatever roles they are given:
	// refused, and granted nothing.
	for login, create := range map[string]string{
		"root_login":      `CREATE ROLE root_login LOGIN SUPERUSER`,
		"creator_login":   `CREATE ROLE creator_login LOGIN CREATEROLE`,
		"sneaky_login":    `CREATE ROLE sneaky_login LOGIN NOINHERIT IN ROLE telemetry_consent_admin`,
		"writer_login":    `CREATE ROLE writer_login LOGIN IN ROLE pg_write_all_data`,
		"owners_login":    `CREATE ROLE owners_login LOGIN IN ROLE postgres`,
		"old_owner_login": `CREATE ROLE old_owner_login LOGIN; CREATE TABLE leftover (); ALTER TABLE leftover OWNER TO old_owner_login`,
	} {
		if _, err := r.DB.Exec(ctx, create); err != nil {
			t.Fatal(err)
		}
		err := migrate(ctx, []string{"--database-dsn-file", ownerFile, "--serve-dsn-file", dsnFile(strings.Replace(ownerDSN, "postgres@", login+"@", 1))})
		if err == nil || !strings.Contains(err.Error(), "could hand consent records over") {
			t.Errorf("migrate granted the receiver's roles to %s: %v", login, err)
		}
		var granted bool
		if err := r.DB.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
WHERE u.rolname = $1 AND r.rolname = 'telemetry_raw_reader')`, login).Scan(&granted); err != nil || granted {
			t.Errorf("the refused %s was granted telemetry_raw_reader: %v %v", login, granted, err)
		}
	}
	if err := migrate(ctx, []string{"--database-dsn-file", ownerFile, "--serve-dsn-file", dsnFile(strings.Replace(ownerDSN, "postgres@", "nobody@", 1))}); err == nil ||
		!strings.Contains(err.Error(), "create the receiver's login first") {
		t.Errorf("migrate for a login that does not exist: %v", err)
	}
	for range 2 { // idempotent
		if err := migrate(ctx, []string{"--database-dsn-file", ownerFile, "--serve-dsn-file", loginFile}); err != nil {
			t.Fatalf("migrate --serve-dsn-file: %v", err)
		}
	}
	if err := migrate(ctx, []string{"--database-dsn-file", ownerFile, "--serve-dsn-file", ownerFile}); err != nil {
		t.Fatalf("migrate with one login for both: %v", err)
	}
	var ingest, admin bool
	if err := r.DB.QueryRow(ctx, `SELECT pg_has_role('receiver_login', 'telemetry_ingest', 'USAGE'), pg_has_role('receiver_login', 'telemetry_consent_admin', 'MEMBER')`).Scan(&ingest, &admin); err != nil ||
		!ingest || admin {
		t.Fatalf("after migrate the receiver's login is in ingest %v, in the administrators' role %v (%v)", ingest, admin, err)
	}

	st, err := openStore(ctx, loginFile)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := schemaCurrent(ctx, st, false, log); err != nil {
		t.Fatalf("serve --migrate=false with the receiver's own login on a migrated schema: %v", err)
	}
	if _, err := r.DB.Exec(ctx, `DELETE FROM schema_migrations WHERE version = 16`); err != nil {
		t.Fatal(err)
	}
	if err := schemaCurrent(ctx, st, false, log); err == nil || !strings.Contains(err.Error(), "lacks migrations [16]") {
		t.Fatalf("serve --migrate=false started on a schema that lacks a migration: %v", err)
	}
	if _, err := r.DB.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES (16)`); err != nil {
		t.Fatal(err)
	}

	t.Setenv("RECEIVER_DATABASE_DSN", loginDSN)
	for _, args := range [][]string{
		{"reserve", "--instance", "acme", "--to", "c1/mallory"},
		{"release", "--instance", "acme", "--to", "c1/mallory"},
		{"release", "--instance", "acme", "--to-anyone"},
		{"reservations", "--required=false"},
	} {
		if out, err := captured(func() error { return consent(ctx, args) }); err == nil || !strings.Contains(err.Error(), store.RoleConsentAdmin) {
			t.Errorf("consent %v with the receiver's own login: %v (%s)", args, err, out)
		}
	}
	if err := requireReservationsAtStart(ctx, st, loginFile); err == nil || !strings.Contains(err.Error(), "may not turn them on") {
		t.Errorf("serve --require-reservations with the receiver's own login: %v", err)
	}
	if out, err := captured(func() error { return consent(ctx, []string{"reservations"}) }); err != nil || !strings.Contains(out, "not required") {
		t.Errorf("the receiver's own login reads the setting: %v (%s)", err, out)
	}
	if _, err := captured(func() error { return consent(ctx, []string{"show", "--instance", "acme"}) }); err == nil || strings.Contains(err.Error(), store.RoleConsentAdmin) {
		t.Errorf("show of a record the refused reserve would have made: %v", err)
	}

	// The owner's DSN: a member of the administrators' role.
	if err := requireReservationsAtStart(ctx, st, ownerFile); err != nil {
		t.Fatalf("serve --require-reservations with the owner's DSN: %v", err)
	}
	if err := requireReservationsAtStart(ctx, st, loginFile); err != nil {
		t.Errorf("serve --require-reservations with the receiver's own login, reservations on already: %v", err)
	}
	t.Setenv("RECEIVER_DATABASE_DSN", ownerDSN)
	for _, args := range [][]string{
		{"reserve", "--instance", "acme", "--to", "c1/acme"},
		{"release", "--instance", "acme", "--to", "c1/beta"},
		{"reservations", "--required=false"},
	} {
		if out, err := captured(func() error { return consent(ctx, args) }); err != nil {
			t.Errorf("consent %v with the owner's DSN: %v (%s)", args, err, out)
		}
	}
}

// captured runs fn with the process's standard output collected.
func captured(fn func() error) (string, error) {
	rd, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	stdout := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		var b bytes.Buffer
		_, _ = io.Copy(&b, rd)
		done <- b.Bytes()
	}()
	err = fn()
	os.Stdout = stdout
	_ = w.Close()
	return string(<-done), err
}

// TestErasuresFindsARequestByItsID: the receiver keeps a key computed from an erasure's request
// id, never the id; `receiver erasures --instance --request ID` finds the record from the id the
// customer's ticket names, and shows only the key.
func TestErasuresFindsARequestByItsID(t *testing.T) {
	ctx := context.Background()
	r := receiverForCommands(t)
	if err := r.Grant(ctx, "acme", consentv1.TierEventLevel, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	owner := consentv1.Owner{Namespace: "acme", Name: "acme", UID: receivertest.TestPolicyUID}
	for _, id := range []string{"DSR-2026-0001", "DSR-2026-0002"} {
		if _, err := r.Store.Erase(ctx, receivertest.TestCluster, consentv1.ErasureRequest{InstanceID: "acme", Owner: owner,
			RequestID: id, Scope: consentv1.ScopeEvents, RequestedBy: consentv1.RequesterSupport}); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, error) {
		return captured(func() error { return erasures(ctx, args) })
	}
	out, err := run("--instance", "acme", "--request", "DSR-2026-0001")
	if err != nil || !strings.Contains(out, consentv1.RequestKey("acme", "DSR-2026-0001")) ||
		strings.Contains(out, consentv1.RequestKey("acme", "DSR-2026-0002")) || strings.Contains(out, "DSR-2026") {
		t.Fatalf("erasures --request DSR-2026-0001: %v\n%s", err, out)
	}
	if out, err := run("--instance", "acme", "--request", "DSR-2026-0003"); err == nil {
		t.Fatalf("erasures --request of a request never made succeeded:\n%s", out)
	}
	if out, err := run("--instance", "acme", "--request", "DSR 2026/1"); err == nil {
		t.Fatalf("erasures --request of an id the format refuses succeeded:\n%s", out)
	}
	if _, err := run("--request", "DSR-2026-0001"); err == nil {
		t.Fatal("--request without --instance was accepted")
	}
}
