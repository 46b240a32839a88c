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
	"os"
	"strings"
	"testing"

	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

// TestConsentCommandsShowTheOwnershipTrail runs the administrator's consent commands against a
// real database: a reservation made through them shows in the record's trail with the user who
// ran it (its command), a deleted record's trail is still shown (table and json), and the reservations
// listing names each open record's last owner.
func TestConsentCommandsShowTheOwnershipTrail(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	t.Setenv("RECEIVER_DATABASE_DSN", r.PG.DSN("receiver"))
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
