/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package fleetcheck holds what the demo and the real-cluster test both apply and check of a
// running fleet: the sample policies pointed at a receiver, and the questions asked of the
// receiver's and the instances' databases (what was stored, when it was recorded, whether any
// personal data arrived). Test harness, not shipped code.
package fleetcheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"sigs.k8s.io/yaml"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// Samples are the three sample policies' names, which are also their namespaces and instances.
var Samples = []string{"acme", "globex", "initech"}

// SampleTiers is the tier each sample policy runs at once applied.
var SampleTiers = map[string]string{"acme": "EventLevel", "globex": "CriticalOnly", "initech": "Off"}

// SamplePolicies returns config/samples' three policies as one YAML stream, pointed at endpoint,
// exporting every interval from the beginning, with acme's trial accepted at accepted and
// running for another thirty days.
func SamplePolicies(endpoint, interval string, accepted time.Time) (string, error) {
	var docs []string
	for _, f := range []string{"eventlevel", "criticalonly", "off"} {
		raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "samples", "telemetry_v1alpha1_telemetrypolicy_"+f+".yaml"))
		if err != nil {
			return "", err
		}
		obj := map[string]any{}
		if err := yaml.Unmarshal(raw, &obj); err != nil {
			return "", err
		}
		spec := obj["spec"].(map[string]any)
		if exp, ok := spec["export"].(map[string]any); ok {
			exp["endpoint"] = endpoint
			exp["interval"] = interval
			exp["startFrom"] = "Beginning"
		}
		if c, ok := spec["contract"].(map[string]any); ok && c["expiresAt"] != nil {
			c["acceptedAt"] = accepted.Format(time.RFC3339)
			c["expiresAt"] = time.Now().Add(30 * 24 * time.Hour).UTC().Format(time.RFC3339)
		}
		out, err := yaml.Marshal(obj)
		if err != nil {
			return "", err
		}
		docs = append(docs, string(out))
	}
	return strings.Join(docs, "---\n"), nil
}

// Receiver asks questions of the receiver's database.
type Receiver struct{ Pool *pgxpool.Pool }

// Stored counts an instance's rows in table (events or aggregates); -1 if the query failed.
func (r Receiver) Stored(ctx context.Context, table, instance string) int {
	return r.count(ctx, "SELECT count(*) FROM "+table+" WHERE instance_id = $1", instance)
}

// StoredBetween counts an instance's stored events recorded in [from, to).
func (r Receiver) StoredBetween(ctx context.Context, instance string, from, to time.Time) int {
	return r.count(ctx, "SELECT count(*) FROM events WHERE instance_id = $1 AND ts >= $2 AND ts < $3", instance, from, to)
}

// OpenDayCells counts an instance's aggregate cells of the current UTC day (never published).
func (r Receiver) OpenDayCells(ctx context.Context, instance string) int {
	return r.count(ctx, "SELECT count(*) FROM aggregates WHERE instance_id = $1 AND day >= (now() AT TIME ZONE 'UTC')::date", instance)
}

// SmallCells counts aggregate cells under 5 users (never published).
func (r Receiver) SmallCells(ctx context.Context) int {
	return r.count(ctx, "SELECT count(*) FROM aggregates WHERE users < 5")
}

// NotPseudonymous counts stored events whose user id is not a pseudonym (128 bits in hex): a
// raw user id, an anonymous id or anything else the instance knows its users by.
func (r Receiver) NotPseudonymous(ctx context.Context) int {
	return r.count(ctx, "SELECT count(*) FROM events WHERE user_id !~ '^[0-9a-f]{32}$'")
}

// Unlisted counts stored events whose names the catalog does not list (seeded on purpose).
func (r Receiver) Unlisted(ctx context.Context) int {
	return r.count(ctx, "SELECT count(*) FROM events WHERE name = ANY($1)", seed.Unlisted)
}

// PersonalData returns ": found <value>" if any of the personal data seeded into the instances
// appears anywhere in a stored event or aggregate cell, else "".
func (r Receiver) PersonalData(ctx context.Context) string {
	var dump string
	if err := r.Pool.QueryRow(ctx, "SELECT coalesce((SELECT string_agg(to_jsonb(e)::text, ' ') FROM events e), '') || coalesce((SELECT string_agg(to_jsonb(a)::text, ' ') FROM aggregates a), '')").Scan(&dump); err != nil {
		return ": the receiver's database could not be read: " + err.Error()
	}
	// The seeded device ids are personal data as well.
	for _, pii := range append([]string{"device-"}, seed.PersonalData...) {
		if strings.Contains(dump, pii) {
			return ": found " + pii
		}
	}
	return ""
}

// ServesConfined returns "" if every connection of `receiver serve` logs in as login, a member of
// telemetry_ingest and not of telemetry_consent_admin (so it may not hand consent records over),
// else what is wrong.
func (r Receiver) ServesConfined(ctx context.Context, login string) string {
	var logins []string
	var ingest, admin bool
	if err := r.Pool.QueryRow(ctx, `
SELECT (SELECT coalesce(array_agg(DISTINCT usename::text), '{}') FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'receiver serve'),
       pg_has_role($1, 'telemetry_ingest', 'USAGE'), pg_has_role($1, 'telemetry_consent_admin', 'MEMBER')`, login).Scan(&logins, &ingest, &admin); err != nil {
		return "the receiver's database could not be read: " + err.Error()
	}
	switch {
	case len(logins) != 1 || logins[0] != login:
		return fmt.Sprintf("the receiver's connections log in as %v, want %s only", logins, login)
	case !ingest || admin:
		return fmt.Sprintf("%s is in telemetry_ingest %v, in telemetry_consent_admin %v: want in the first only", login, ingest, admin)
	}
	return ""
}

func (r Receiver) count(ctx context.Context, sql string, args ...any) int {
	var n int
	if err := r.Pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		return -1
	}
	return n
}

// AllowListed counts an instance's event_logs rows the catalog lists, recorded in [from, to):
// what EventLevel exports of that period.
func AllowListed(ctx context.Context, instance *pgxpool.Pool, from, to time.Time) int {
	var n int
	if err := instance.QueryRow(ctx, "SELECT count(*) FROM event_logs WHERE name = ANY($1) AND timestamp >= $2 AND timestamp < $3", catalogv1.Current().Names(), from, to).Scan(&n); err != nil {
		return -1
	}
	return n
}

// Record inserts n allow-listed events into an instance's event_logs (they carry the
// time of the insert) and returns the period they were recorded in.
func Record(ctx context.Context, instance *pgxpool.Pool, n int) (from, to time.Time, err error) {
	from = time.Now()
	for i := range n {
		if _, err = instance.Exec(ctx, `INSERT INTO event_logs (name, user_id, source, version, public_argument) VALUES ('hover', $1, 'WEB', '5.3.0', '{"languageId":"go"}')`, i%5+1); err != nil {
			return from, time.Now(), err
		}
	}
	return from, time.Now(), nil
}
