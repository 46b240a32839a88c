/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector/source"
)

// TestTheDatabaseSelectsOnlyListedMembersWithinBounds reads rows through the collector's query
// and holds what the database hands over, member by member: of public_argument only the members
// the catalog lists, each at most MaxValueBytes as JSON; of feature_flags only listed flags with
// a boolean value; nothing of either document for an event the catalog does not list, or when
// the document is not an object. A value that would pass the scrubber's shape checks (a listed
// pattern type, a listed flag) is still held back when it breaks a database bound.
func TestTheDatabaseSelectsOnlyListedMembersWithinBounds(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	long := `"` + strings.Repeat("a", source.MaxValueBytes-1) + `"` // MaxValueBytes+1 bytes as JSON
	cases := []struct {
		name, public, flags string
		wantPublic          map[string]any
		wantFlags           map[string]any
	}{
		{"SearchSubmitted", `{"patternType":"literal","query":"repo:acme secret","resultCount":3,"source":"nav"}`,
			`{"cody":true,"search-ranking":false,"exp-001":true,"secret-flag":false}`,
			map[string]any{"patternType": "literal", "source": "nav"}, map[string]any{"cody": true, "search-ranking": false}},
		{"SearchSubmitted", `{"patternType":` + long + `,"source":"nav"}`, `{"cody":"yes","code-insights":1,"search-debug":null,"enable-ownership":true}`,
			map[string]any{"source": "nav"}, map[string]any{"enable-ownership": true}},
		{"hover", `{"languageId":null,"durationMs":{"nested":"secret"},"repo":"acme/payments"}`, `["cody"]`,
			map[string]any{"languageId": nil, "durationMs": map[string]any{"nested": "secret"}}, map[string]any{}},
		{"hover", `["languageId","go"]`, `"cody"`, map[string]any{}, map[string]any{}},
		{"UserSignedUp", `{"patternType":"literal","source":"nav"}`, `{"cody":true}`, map[string]any{}, map[string]any{}},
	}
	for i, c := range cases {
		in.exec(`INSERT INTO event_logs (name, user_id, source, version, public_argument, feature_flags, timestamp) VALUES ($1, $2, 'WEB', '5.3.0', $3::jsonb, $4::jsonb, now())`,
			c.name, i+1, c.public, c.flags)
	}
	r, err := source.Open(context.Background(), in.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	round, err := r.Read(context.Background(), source.NewTracker(0, 100), 100, []consentv1.Window{{Start: time.Now().Add(-time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(round.Rows) != len(cases) {
		t.Fatalf("read %d rows, want %d", len(round.Rows), len(cases))
	}
	for i, c := range cases {
		row := round.Rows[i]
		var public, flags map[string]any
		if err := json.Unmarshal(row.PublicArgument, &public); err != nil {
			t.Fatalf("row %d: public_argument %q: %v", i, row.PublicArgument, err)
		}
		if err := json.Unmarshal(row.FeatureFlags, &flags); err != nil {
			t.Fatalf("row %d: feature_flags %q: %v", i, row.FeatureFlags, err)
		}
		if !reflect.DeepEqual(public, c.wantPublic) || !reflect.DeepEqual(flags, c.wantFlags) {
			t.Errorf("row %d (%s): the database handed over %s and %s, want %v and %v", i, c.name, row.PublicArgument, row.FeatureFlags, c.wantPublic, c.wantFlags)
		}
	}
}

// TestValuesDroppedAreCountedOncePerRow: rounds read ahead and thrown away (a batch was refused
// mid-backlog, so everything read after it is read again) must not count the values they
// dropped twice. Every row carries one version the catalog does not list; the count after the
// backlog is delivered must be the number of rows.
func TestValuesDroppedAreCountedOncePerRow(t *testing.T) {
	const rows = 80
	in := newInstance(t, v1.TierEventLevel, 10)
	in.exec(`INSERT INTO event_logs (name, user_id, source, version, public_argument, timestamp)
		SELECT 'hover', g, 'WEB', 'dev-build', '{"languageId":"go"}', now() - g * interval '1 second' FROM generate_series(1, $1) g`, rows)
	var posts atomic.Int32
	rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if r.URL.Path != batchv1.PathBatches || posts.Add(1) != 2 {
			return false
		}
		w.WriteHeader(http.StatusBadRequest) // names no item: the round fails, nothing advances past it
		return true
	})
	defer rcv.SetIntercept(nil)
	p := in.pipeline()
	failed := 0
	for range 100 {
		more, err := p.RunOnce(context.Background())
		if err != nil {
			failed++
			continue
		}
		if !more {
			break
		}
	}
	if failed != 1 || in.stored() != rows {
		t.Fatalf("%d rounds failed (want 1), %d of %d events stored", failed, in.stored(), rows)
	}
	fams, err := in.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var counted float64
	for _, f := range fams {
		if f.GetName() != "collector_values_dropped_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "field" && l.GetValue() == "version" {
					counted += m.GetCounter().GetValue()
				}
			}
		}
	}
	if counted != rows {
		t.Fatalf("%v unlisted versions counted for %d rows", counted, rows)
	}
}
