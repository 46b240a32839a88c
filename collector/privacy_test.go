/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// wordsThatPassShapes reads testdata/words-that-pass-shapes.txt.
func wordsThatPassShapes(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("testdata/words-that-pass-shapes.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if w := strings.TrimSpace(sc.Text()); w != "" && !strings.HasPrefix(w, "#") {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		t.Fatal("the corpus is empty")
	}
	return out
}

// plantWords writes, for every listed event and each word, rows carrying the word in every
// column and nested document, shaped as each channel's values are: as the source and client, as
// a feature-flag name, as the version and a version suffix, as the value of every listed
// property and as a member name, in a long public_argument, in the anonymous id. Enough users
// carry each word that an aggregate over it would escape suppression. Rows are dated on closed
// days, so the CriticalOnly tier publishes their aggregates.
func plantWords(in *instance, words []string) {
	in.t.Helper()
	long := strings.Repeat("lorem ipsum ", 40_000) // a ~480 KB document around the words
	for _, name := range catalogv1.Current().Names() {
		for i, w := range words {
			pub := map[string]any{"patternType": w, "languageId": w, "source": w, "resultType": w, "durationMs": w, w: "literal",
				"query": w, "text": long + w + long, "nested": map[string]any{"k": w}}
			pubJSON, _ := json.Marshal(pub)
			flags, _ := json.Marshal(map[string]any{w: true, strings.ToLower(w): true, "cody": true})
			for u := 1; u <= 6; u++ {
				in.exec(`INSERT INTO event_logs (name, url, user_id, anonymous_user_id, source, argument, public_argument, version, timestamp,
					feature_flags, referrer, device_id, client)
					VALUES ($1, $2, $3, '', $2, $4, $5, $6, now() - interval '60 hours' - $7 * interval '1 hour', $8, $2, $2, $2)`,
					name, w, u, `{"q":"`+w+`"}`, string(pubJSON), []string{w, "5.3.0-" + strings.ToLower(w)}[u%2], i, string(flags))
			}
			in.exec(`INSERT INTO event_logs (name, url, user_id, anonymous_user_id, source, public_argument, version, client, timestamp)
				VALUES ($1, $2, 0, $2, $2, $3, $2, $2, now() - interval '60 hours')`, name, w, string(pubJSON))
		}
	}
}

// everythingThatLeft gathers what left the instance or was recorded about it: request bodies
// and stored rows at the receiver, the receiver's and the collector's logs and metrics.
func everythingThatLeft(t *testing.T, in *instance) string {
	t.Helper()
	var all strings.Builder
	for _, b := range rcv.Bodies() {
		if strings.Contains(string(b), `"instanceID":"`+in.id+`"`) {
			all.Write(b)
		}
	}
	for _, q := range []string{
		"SELECT coalesce(string_agg(to_jsonb(e)::text, ' '), '') FROM events e WHERE instance_id = $1",
		"SELECT coalesce(string_agg(to_jsonb(a)::text, ' '), '') FROM aggregates a WHERE instance_id = $1",
		"SELECT coalesce(string_agg(to_jsonb(b)::text, ' '), '') FROM batches b WHERE instance_id = $1",
	} {
		var dump string
		if err := rcv.DB.QueryRow(context.Background(), q, in.id).Scan(&dump); err != nil {
			t.Fatal(err)
		}
		all.WriteString(dump)
	}
	all.WriteString(rcv.Logs.String())
	all.WriteString(in.logs.String())
	for _, g := range []prometheus.Gatherer{rcv.Registry, in.metrics} {
		families, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			_, _ = expfmt.MetricFamilyToText(&all, f)
		}
	}
	return all.String()
}

// TestWordsThatPassShapeChecksNeverLeave plants words that look like the values each channel
// carries in every column and nested document, through both tiers, and looks for them in
// everything that left the instance or was recorded about it.
func TestWordsThatPassShapeChecksNeverLeave(t *testing.T) {
	words := wordsThatPassShapes(t)
	for _, tier := range []v1.ConsentTier{v1.TierEventLevel, v1.TierCriticalOnly} {
		t.Run(string(tier), func(t *testing.T) {
			in := newInstance(t, tier, 500)
			plantWords(in, words)
			p := in.pipeline()
			drain(t, p)
			all := everythingThatLeft(t, in)
			if !strings.Contains(all, in.id) || (tier == v1.TierEventLevel && in.stored() == 0) ||
				(tier == v1.TierCriticalOnly && len(publishedCells(t, in)) == 0) {
				t.Fatal("nothing of this instance left: the check would pass vacuously")
			}
			for _, w := range words {
				for _, form := range []string{w, strings.ToLower(w), strings.Trim(mustJSON(w), `"`)} {
					if i := strings.Index(all, form); i >= 0 {
						t.Fatalf("%q left the instance: …%s…", w, all[max(0, i-200):min(len(all), i+100)])
					}
				}
			}
			if tier == v1.TierEventLevel {
				// The words were dropped and counted, not silently passed over.
				fams, _ := in.metrics.Gather()
				var dropped float64
				for _, f := range fams {
					if f.GetName() == "collector_values_dropped_total" {
						for _, m := range f.GetMetric() {
							dropped += m.GetCounter().GetValue()
						}
					}
				}
				if dropped == 0 {
					t.Fatal("no value was counted as dropped")
				}
			}
		})
	}
}
