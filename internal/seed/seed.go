/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package seed fills an event_logs table with realistic synthetic activity: several users over
// weeks, every allow-listed event name plus names the allow-list does not know, and personal data
// in the columns that must never leave an instance. The demo and the end-to-end tests use it.
package seed

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// Schema is Sourcegraph's event_logs table and a read-only role for the collector. The same file
// is the collector tests' fixture (collector/testdata/event_logs.sql links to it).
//
//go:embed event_logs.sql
var Schema string

// PersonalData is planted in the columns that must never leave an instance.
var PersonalData = []string{
	"alice@acme-corp.com", "bob.smith@globex.example", "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
	"github.com/acme/payments-service", "internal/auth/session.go", "repo:acme/secret password=hunter2",
	"https://sourcegraph.acme-corp.com/github.com/acme/payments-service/-/blob/main.go", "10.20.30.40",
}

// Unlisted are real-looking event names the allow-list does not know.
var Unlisted = []string{"UserSignedUp", "ViewRepository", "CodyChatSubmitted", "PasswordResetRequested"}

// Options shape the synthetic activity.
type Options struct {
	Users int
	Days  int
	// EventsPerUserDay is the mean number of events per active user and day.
	EventsPerUserDay int
	Now              time.Time
	Seed             uint64
}

// Generate inserts the activity and returns the number of rows.
func Generate(ctx context.Context, db *pgxpool.Pool, o Options) (int, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	r := rand.New(rand.NewPCG(o.Seed, o.Seed^0x5eed)) //nolint:gosec // synthetic data, not security
	names := catalogv1.Current().Names()
	patterns := []string{"literal", "literal", "literal", "regexp", "standard", "structural", "keyword"}
	langs := []string{"go", "typescript", "python", "java", "rust"}
	var rows [][]any
	for u := 1; u <= o.Users; u++ {
		// Users differ: some are daily power users, some fade away in the last week.
		activity := 0.2 + 0.8*r.Float64()
		fading := u%4 == 0
		for d := o.Days - 1; d >= 0; d-- {
			if r.Float64() > activity || (fading && d < 7 && r.Float64() < 0.8) {
				continue
			}
			day := o.Now.Add(-time.Duration(d) * 24 * time.Hour)
			ts := day.Add(-time.Duration(r.IntN(8*3600)) * time.Second)
			n := 1 + r.IntN(2*o.EventsPerUserDay)
			for range n {
				ts = ts.Add(time.Duration(30+r.IntN(20*60)) * time.Second)
				if ts.After(o.Now) {
					break
				}
				name := names[r.IntN(len(names))]
				if r.IntN(10) == 0 {
					name = Unlisted[r.IntN(len(Unlisted))]
				}
				pii := PersonalData[r.IntN(len(PersonalData))]
				pub := map[string]any{"query": pii}
				switch catalogv1.Current().FeatureOf(name) {
				case catalogv1.FeatureSearch:
					pub["patternType"] = patterns[r.IntN(len(patterns))]
					pub["source"] = "nav"
					pub["durationMs"] = 20 + r.IntN(900)
				case catalogv1.FeatureCodeNavigation, catalogv1.FeatureFileView:
					pub["languageId"] = langs[r.IntN(len(langs))]
				}
				pubJSON, _ := json.Marshal(pub)
				arg, _ := json.Marshal(map[string]any{"query": pii, "repository": PersonalData[3], "file": PersonalData[4]})
				flags, _ := json.Marshal(map[string]bool{"search-ranking": r.IntN(2) == 0, "cody": true})
				rows = append(rows, []any{name, PersonalData[6], u, "", "WEB", string(arg), "5.3.0", ts, string(flags),
					string(pubJSON), PersonalData[6], PersonalData[6], PersonalData[6], fmt.Sprintf("device-%d", u), pii, "VSCODE_CODY_EXTENSION"})
			}
		}
	}
	cols := []string{"name", "url", "user_id", "anonymous_user_id", "source", "argument", "version", "timestamp", "feature_flags",
		"public_argument", "first_source_url", "last_source_url", "referrer", "device_id", "billing_event_id", "client"}
	n, err := db.CopyFrom(ctx, pgx.Identifier{"event_logs"}, cols, pgx.CopyFromRows(rows))
	return int(n), err
}
