/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

// bigBatch is a valid batch of n events from instance with ids from first.
func bigBatch(instance string, first, n int) []byte {
	b := &batchv1.Batch{Version: 1, InstanceID: instance, BatchID: fmt.Sprintf("%s-e-%d-%d", instance, first, n), Kind: batchv1.KindEvents,
		Tier: "EventLevel", AllowListVersion: catalogv1.CurrentVersion}
	for i := first; i < first+n; i++ {
		b.Events = append(b.Events, batchv1.Event{ID: strconv.Itoa(i), Name: "SearchSubmitted", Timestamp: time.Date(2026, 11, 2, 10, 0, i%60, 0, time.UTC),
			Source: "WEB", UserID: fmt.Sprintf("f%031x", i%7), Properties: map[string]any{"patternType": "literal"}})
	}
	data, _ := batchv1.Encode(b)
	return data
}

// sendTo posts body to r as instance and returns the status, the Retry-After header and the answer.
func sendTo(t *testing.T, r *receivertest.Receiver, c *http.Client, body []byte) (int, string, batchv1.Response) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, r.URL+batchv1.PathBatches, bytes.NewReader(body))
	req.Header.Set("Content-Type", batchv1.ContentType)
	resp, err := c.Do(req)
	if err != nil {
		t.Error(err)
		return -1, "", batchv1.Response{}
	}
	defer func() { _ = resp.Body.Close() }()
	var out batchv1.Response
	if resp.StatusCode == http.StatusOK {
		_ = json.NewDecoder(resp.Body).Decode(&out)
	}
	return resp.StatusCode, resp.Header.Get("Retry-After"), out
}

// TestTheReceiverUnderAbuse: an instance that floods is slowed down with 429 (its listing too),
// another instance keeps being served, and under a small in-flight budget every event
// acknowledged as accepted is stored and every refusal carries Retry-After. That the budget
// refuses is asserted deterministically in TestReadBodyHonoursContentLength; here concurrency
// decides how many are refused.
func TestTheReceiverUnderAbuse(t *testing.T) {
	ctx := context.Background()
	limits := server.DefaultLimits()
	limits.InstanceRate, limits.InstanceBurst = 2, 4
	limits.MaxInFlightBytes, limits.InFlightWait = 160<<10, time.Millisecond
	r, err := receivertest.StartWith(ctx, receivertest.Options{Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clientOf := func(instance string) *http.Client {
		if err := r.Grant(ctx, instance, consentv1.TierEventLevel, since); err != nil {
			t.Fatal(err)
		}
		cert, err := r.ClientCert(instance, time.Now().Add(-time.Hour), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return r.HTTPClient(&cert)
	}

	t.Run("a flooding instance gets 429, another does not", func(t *testing.T) {
		flood, calm := clientOf("flood"), clientOf("calm")
		var limited, accepted int
		for i := range 12 {
			status, retry, out := sendTo(t, r, flood, bigBatch("flood", i*10+1, 10))
			switch status {
			case http.StatusOK:
				accepted += out.Accepted
			case http.StatusTooManyRequests:
				limited++
				if n, err := strconv.Atoi(retry); err != nil || n < 1 {
					t.Fatalf("429 without a usable Retry-After: %q", retry)
				}
			default:
				t.Fatalf("flood: status %d", status)
			}
		}
		if limited == 0 {
			t.Fatal("12 batches at once from one instance were all taken with a burst of 4")
		}
		if status, _, _ := sendTo(t, r, calm, bigBatch("calm", 1, 10)); status != http.StatusOK {
			t.Fatalf("another instance was not served: %d", status)
		}
		// Listing what it exported counts against the same rate.
		resp, err := flood.Get(r.URL + batchv1.PathExported)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("a listing from the flooding instance: %d", resp.StatusCode)
		}
		if n, _ := r.Count(ctx, "events", "flood"); n != accepted {
			t.Fatalf("%d events stored, %d acknowledged as accepted", n, accepted)
		}
	})

	t.Run("under a small in-flight budget every accepted event is stored and refusals carry Retry-After", func(t *testing.T) {
		var mu sync.Mutex
		accepted, busy := map[string]int{}, 0
		var wg sync.WaitGroup
		for c := range 16 {
			instance := fmt.Sprintf("big-%d", c)
			cl := clientOf(instance)
			wg.Go(func() {
				// About 120 KiB each: the budget holds one at a time.
				status, retry, out := sendTo(t, r, cl, bigBatch(instance, 1, 600))
				mu.Lock()
				defer mu.Unlock()
				switch status {
				case http.StatusOK:
					accepted[instance] = out.Accepted
				case http.StatusServiceUnavailable:
					busy++
					if retry == "" {
						t.Error("503 without Retry-After")
					}
				default:
					t.Errorf("%s: status %d", instance, status)
				}
			})
		}
		wg.Wait()
		if len(accepted) == 0 {
			t.Fatal("nothing was accepted")
		}
		for instance, n := range accepted {
			if got, _ := r.Count(ctx, "events", instance); got != n {
				t.Errorf("%s: %d stored, %d acknowledged", instance, got, n)
			}
		}
		t.Logf("%d of 16 large bodies accepted at once, %d told to retry", len(accepted), busy)
	})
}
