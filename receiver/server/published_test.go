/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// storedCells returns instance's stored cells as "day metric/dimension=value/users".
func storedCells(t *testing.T, instance string) []string {
	t.Helper()
	rows, err := rcv.DB.Query(context.Background(),
		`SELECT day::text, metric, dimension, value, users FROM aggregates WHERE instance_id = $1 ORDER BY 1, 2, 3`, instance)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var day, metric, dim string
		var value, users int64
		if err := rows.Scan(&day, &metric, &dim, &value, &users); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %s/%s=%d/%d", day, metric, dim, value, users))
	}
	return out
}

func cellBatch(instance, batchID string, cells ...batchv1.Aggregate) *batchv1.Batch {
	return &batchv1.Batch{Version: 1, InstanceID: instance, BatchID: collectorID(instance, batchID), Kind: batchv1.KindAggregates, Tier: "CriticalOnly",
		AllowListVersion: catalogv1.CurrentVersion, Aggregates: cells}
}

func cell(day, metric, dim string, value, users int64) batchv1.Aggregate {
	return batchv1.Aggregate{Day: day, Metric: metric, Dimension: dim, Value: value, Users: users, Final: true}
}

// TestADayIsPublishedOnce: the first publication of an instance's day is kept whole; a resend,
// a different publication of the same day and a partial day change nothing, so no two values of
// a cell can be differenced.
func TestADayIsPublishedOnce(t *testing.T) {
	if err := rcv.Grant(context.Background(), "once", consentv1.TierCriticalOnly, consentSince); err != nil {
		t.Fatal(err)
	}
	first := cellBatch("once", "once-a-1",
		cell("2026-11-20", batchv1.MetricEventCount, "ViewBlob", 30, 6),
		cell("2026-11-20", batchv1.MetricFeatureUsers, "code_navigation", 6, 6),
		cell("2026-11-21", batchv1.MetricEventCount, "ViewBlob", 12, 5))
	want := []string{
		"2026-11-20 event_count/ViewBlob=30/6",
		"2026-11-20 feature_users/code_navigation=6/6",
		"2026-11-21 event_count/ViewBlob=12/5",
	}
	resp, r := send(t, first)
	if r.status != http.StatusOK || resp.Accepted != 3 {
		t.Fatalf("first publication: %d %s", r.status, r.body)
	}
	resp, r = send(t, first)
	if r.status != http.StatusOK || resp.Accepted != 0 || resp.Duplicates != 3 {
		t.Fatalf("resend: %d %s", r.status, r.body)
	}
	// Another publication of 2026-11-20 (a collector that lost its progress, or a hostile one):
	// a changed value and a new cell of a published day are both absorbed; a new day is stored.
	other := cellBatch("once", "once-a-2",
		cell("2026-11-20", batchv1.MetricEventCount, "ViewBlob", 31, 7),
		cell("2026-11-20", batchv1.MetricEventCount, "SearchSubmitted", 9, 5),
		cell("2026-11-22", batchv1.MetricEventCount, "ViewBlob", 8, 5))
	resp, r = send(t, other)
	if r.status != http.StatusOK || resp.Accepted != 1 || resp.Duplicates != 2 {
		t.Fatalf("second publication: %d %s", r.status, r.body)
	}
	want = append(want, "2026-11-22 event_count/ViewBlob=8/5")
	if got := storedCells(t, "once"); !slices.Equal(got, want) {
		t.Fatalf("stored cells\n got %q\nwant %q", got, want)
	}

	today := time.Now().UTC()
	for _, tc := range []struct {
		name   string
		b      *batchv1.Batch
		reason string
	}{
		{"a partial day", cellBatch("once", "once-p", batchv1.Aggregate{Day: "2026-11-23", Metric: batchv1.MetricEventCount,
			Dimension: "ViewBlob", Value: 7, Users: 5}), batchv1.ReasonTierViolation},
		{"today", cellBatch("once", "once-t", cell(today.Format(time.DateOnly), batchv1.MetricEventCount, "ViewBlob", 7, 5)), batchv1.ReasonDayNotClosed},
		{"a closed day alongside today", cellBatch("once", "once-tt", cell("2026-11-24", batchv1.MetricEventCount, "ViewBlob", 7, 5),
			cell(today.Format(time.DateOnly), batchv1.MetricEventCount, "ViewBlob", 7, 5)), batchv1.ReasonDayNotClosed},
		{"tomorrow", cellBatch("once", "once-f", cell(today.AddDate(0, 0, 1).Format(time.DateOnly), batchv1.MetricEventCount, "ViewBlob", 7, 5)), batchv1.ReasonDayNotClosed},
		{"more users than events", cellBatch("once", "once-u", cell("2026-11-25", batchv1.MetricEventCount, "ViewBlob", 5, 6)), batchv1.ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, r := send(t, tc.b)
			if r.status != http.StatusBadRequest || r.errorResponse(t).Reason != tc.reason {
				t.Fatalf("%d %s, want 400 %s", r.status, r.body, tc.reason)
			}
			if got := storedCells(t, "once"); !slices.Equal(got, want) {
				t.Fatalf("stored cells changed\n got %q\nwant %q", got, want)
			}
		})
	}
}

// exported reads GET /v1/exported with c.
func exported(t *testing.T, c *http.Client, query string) (batchv1.ExportedResponse, reply) {
	t.Helper()
	r := adminDo(t, c, http.MethodGet, batchv1.PathExported+query, nil, "")
	var out batchv1.ExportedResponse
	if r.status == http.StatusOK {
		if err := json.Unmarshal(r.body, &out); err != nil {
			t.Fatal(err)
		}
	}
	return out, r
}

// TestAnInstanceListsWhatItExported: the listing shows, newest first, each delivery that stored
// something and exactly the items it stored; another instance's certificate sees none of it.
func TestAnInstanceListsWhatItExported(t *testing.T) {
	grant(t, "lister")
	grant(t, "nosy")
	ev := events("lister", 1, 3)
	ev.Events[1].FeatureFlags = map[string]bool{"search-ranking": true}
	if _, r := send(t, ev); r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if _, r := send(t, ev); r.status != http.StatusOK { // a resend stores nothing: no delivery
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Downgraded to CriticalOnly after the events: aggregates of the days wholly under it.
	downgraded := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	if err := rcv.Grant(context.Background(), "lister", consentv1.TierCriticalOnly, downgraded); err != nil {
		t.Fatal(err)
	}
	agg := cellBatch("lister", "lister-a", cell(downgraded.Format(time.DateOnly), batchv1.MetricEventCount, "ViewBlob", 30, 6))
	if _, r := send(t, agg); r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if _, r := send(t, events("nosy", 1, 2)); r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}

	list, r := exported(t, client(t, "lister"), "")
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if list.InstanceID != "lister" || len(list.Deliveries) != 2 {
		t.Fatalf("listing %s", r.body)
	}
	a, e := list.Deliveries[0], list.Deliveries[1]
	if a.BatchID != collectorID("lister", "lister-a") || a.Kind != batchv1.KindAggregates || a.Accepted != 1 || len(a.Aggregates) != 1 || a.Aggregates[0] != agg.Aggregates[0] {
		t.Errorf("newest delivery %+v", a)
	}
	if e.BatchID != ev.BatchID || e.Accepted != 3 || len(e.Events) != 3 || a.ReceivedAt.Before(e.ReceivedAt) || e.Truncated {
		t.Fatalf("events delivery %+v", e)
	}
	if strings.Contains(string(r.body), `"seq"`) {
		t.Errorf("the listing shows the receiver-wide delivery number (its gaps count other instances' deliveries): %s", r.body)
	}
	for i, got := range e.Events {
		sent := ev.Events[i]
		if got.ID != sent.ID || got.Name != sent.Name || !got.Timestamp.Equal(sent.Timestamp) || got.UserID != sent.UserID ||
			got.Source != sent.Source || fmt.Sprint(got.FeatureFlags) != fmt.Sprint(sent.FeatureFlags) || fmt.Sprint(got.Properties) != fmt.Sprint(sent.Properties) {
			t.Errorf("event %d listed as %+v, sent %+v", i, got, sent)
		}
	}
	// The item bound cuts the older delivery short and says so.
	cut, err := rcv.Store.Exported(context.Background(), "lister", 10, 2)
	if err != nil || len(cut) != 2 || cut[0].Truncated || !cut[1].Truncated || len(cut[1].Events) != 1 || cut[1].Events[0].ID != "1" {
		t.Errorf("listing bounded to 2 items: %+v, %v", cut, err)
	}
	if one, _ := exported(t, client(t, "lister"), "?limit=1"); len(one.Deliveries) != 1 || one.Deliveries[0].BatchID != collectorID("lister", "lister-a") {
		t.Errorf("limit=1: %+v", one)
	}
	nosy, _ := exported(t, client(t, "nosy"), "")
	for _, d := range nosy.Deliveries {
		if d.BatchID != "nosy-e-1-2" {
			t.Errorf("another instance's certificate lists %q", d.BatchID)
		}
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?limit=x", "?instance=lister", "?limit=1&limit=2", "?%zz"} {
		if _, r := exported(t, client(t, "nosy"), q); r.status != http.StatusBadRequest {
			t.Errorf("query %q: %d %s, want 400", q, r.status, r.body)
		}
	}
	if r := adminDo(t, client(t, "lister"), http.MethodPost, batchv1.PathExported, nil, ""); r.status != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", r.status)
	}
	if _, r := exported(t, rcv.OperatorClient("east"), ""); r.status != http.StatusForbidden {
		t.Errorf("an operator certificate names no instance: %d %s", r.status, r.body)
	}
}

// TestADifferencedDayIsRefusedWhole: a batch whose cells for one day let a reader subtract a
// withheld pattern type down to 2 searches is refused whole, naming the day's first cell (so a
// collector isolates that day and delivers the rest), and nothing of it is stored; the same
// batch without that day is stored.
func TestADifferencedDayIsRefusedWhole(t *testing.T) {
	if err := rcv.Grant(context.Background(), "differenced", consentv1.TierCriticalOnly, consentSince); err != nil {
		t.Fatal(err)
	}
	good := []batchv1.Aggregate{cell("2026-11-20", batchv1.MetricEventCount, "ViewBlob", 30, 6)}
	bad := []batchv1.Aggregate{
		cell("2026-11-21", batchv1.MetricEventCount, catalogv1.SearchEvent, 20, 10),
		cell("2026-11-21", batchv1.MetricSearchesByType, "literal", 10, 5),
		cell("2026-11-21", batchv1.MetricSearchesByType, "standard", 8, 5),
	}
	_, r := send(t, cellBatch("differenced", "differenced-a-1", append(slices.Clone(good), bad...)...))
	e := r.errorResponse(t)
	if r.status != http.StatusBadRequest || e.Reason != batchv1.ReasonTierViolation || e.EventIndex == nil || *e.EventIndex != len(good) ||
		!strings.Contains(e.Error, "2026-11-21") {
		t.Fatalf("a differenced day: %d %s", r.status, r.body)
	}
	if got := storedCells(t, "differenced"); len(got) != 0 {
		t.Fatalf("stored %v from a refused batch", got)
	}
	resp, r := send(t, cellBatch("differenced", "differenced-a-2", append(slices.Clone(good), bad[:2]...)...))
	if r.status != http.StatusOK || resp.Accepted != 3 {
		t.Fatalf("the day with one pattern type withheld: %d %s", r.status, r.body)
	}
}
