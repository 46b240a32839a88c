/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// TestItemsNotInTheDeclaredCatalogAreRefused: a collector is not trusted to filter. An event,
// property, value or cell dimension that the catalog version the batch declares does not list
// is refused with a reason naming the item and the field, never its value; nothing is stored.
func TestItemsNotInTheDeclaredCatalogAreRefused(t *testing.T) {
	if err := rcv.Grant(t.Context(), "cat", consentv1.TierEventLevel, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(*batchv1.Event){
		"event name":                      func(e *batchv1.Event) { e.Name = "UserSignedUp" },
		"source":                          func(e *batchv1.Event) { e.Source = "QX7CANARY" },
		"client":                          func(e *batchv1.Event) { e.Client = "QX7CANARY" },
		"version":                         func(e *batchv1.Event) { e.ProductVersion = "5.1.0-liddell" },
		"feature flag":                    func(e *batchv1.Event) { e.FeatureFlags = map[string]bool{"beta-liddell": true} },
		`property \"mode\"`:               func(e *batchv1.Event) { e.Properties["mode"] = "liddell" },
		`value of property \"patternType`: func(e *batchv1.Event) { e.Properties["patternType"] = "liddell" },
	}
	for field, mutate := range cases {
		t.Run(field, func(t *testing.T) {
			b := events("cat", 1, 5)
			b.BatchID = collectorID("cat", field)
			mutate(&b.Events[3])
			_, r := send(t, b)
			wantStatus(t, r, http.StatusBadRequest, batchv1.ReasonNotInCatalog)
			e := r.errorResponse(t)
			if e.EventIndex == nil || *e.EventIndex != 3 || !strings.Contains(string(r.body), field) {
				t.Fatalf("the refusal must name the item (3) and the field (%s): %s", field, r.body)
			}
			if strings.Contains(string(r.body), "liddell") || strings.Contains(string(r.body), "QX7CANARY") {
				t.Fatalf("the refusal echoes the value: %s", r.body)
			}
			if n, err := rcv.Count(t.Context(), "events", "cat"); err != nil || n != 0 {
				t.Fatalf("stored %d events (%v)", n, err)
			}
		})
	}
	t.Run("an aggregate dimension", func(t *testing.T) {
		if err := rcv.Grant(t.Context(), "cat-agg", consentv1.TierCriticalOnly, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
			t.Fatal(err)
		}
		b := cells("cat-agg", "cat-agg-1", time.Now().AddDate(0, 0, -2), time.Now().AddDate(0, 0, -1))
		b.Aggregates[1].Metric, b.Aggregates[1].Dimension = batchv1.MetricInstanceVersion, "5.1.0-liddell"
		b.Aggregates[1].Value = b.Aggregates[1].Users
		_, r := send(t, b)
		wantStatus(t, r, http.StatusBadRequest, batchv1.ReasonNotInCatalog)
		if e := r.errorResponse(t); e.EventIndex == nil || *e.EventIndex != 1 {
			t.Fatalf("the refusal must name cell 1: %s", r.body)
		}
	})
	t.Run("a catalog version the receiver does not know", func(t *testing.T) {
		b := events("cat", 1, 2)
		b.BatchID, b.AllowListVersion = "cat-c-1", 1
		_, r := send(t, b)
		wantStatus(t, r, http.StatusBadRequest, batchv1.ReasonUnsupportedCatalog)
		if r.errorResponse(t).EventIndex != nil {
			t.Fatal("a batch-level refusal must not name an item (the collector would drop it)")
		}
	})
	b := events("cat", 1, 5)
	b.BatchID = "cat-c-2"
	if resp, r := send(t, b); r.status != http.StatusOK || resp.Accepted != 5 {
		t.Fatalf("the valid batch: %d %s", r.status, r.body)
	}
}
