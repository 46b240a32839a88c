/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package deliver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

func TestRetryAfterParsing(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "3": 3 * time.Second, "-1": 0, "junk": 0, "99999": 10 * time.Minute} {
		if got := retryAfter(in); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestBatchesAreBoundedByBytes: a batch whose body exceeds MaxBodyBytes is split before any
// request is made, so no request ever exceeds the bound.
func TestBatchesAreBoundedByBytes(t *testing.T) {
	var largest atomic.Int64
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		requests.Add(1)
		if int64(len(body)) > largest.Load() {
			largest.Store(int64(len(body)))
		}
		_, _ = w.Write([]byte(`{"accepted":1}`))
	}))
	defer srv.Close()
	c := New(srv.URL, http.DefaultTransport, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.MaxBodyBytes = 400
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "b", Kind: batchv1.KindEvents, Tier: "EventLevel"}
	for i := range 64 {
		// Incompressible-ish properties so the compressed size grows with the count.
		b.Events = append(b.Events, batchv1.Event{ID: strconv.Itoa(i + 1), Name: "ViewBlob", Timestamp: time.Unix(1_790_000_000, 0),
			UserID:     strconv.FormatInt(int64(i)*7919, 16) + "0123456789abcdef0123456789abcdef"[:32-len(strconv.FormatInt(int64(i)*7919, 16))],
			Properties: map[string]any{"languageId": strconv.FormatInt(int64(i)*104729*7919, 36)}})
	}
	out, err := c.Send(context.Background(), b, func(*batchv1.Batch) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if requests.Load() < 2 || largest.Load() > 400 {
		t.Fatalf("%d requests, largest body %d bytes: want the batch split under 400 bytes", requests.Load(), largest.Load())
	}
	if len(out.Quarantined) != 0 {
		t.Fatalf("quarantined %v", out.Quarantined)
	}
}

// TestExportedPassesOnlyAWellFormedBoundedAnswer: what the receiver answers is printed to a
// person; a refusal, a body that is not JSON or one beyond the bound is an error instead.
func TestExportedPassesOnlyAWellFormedBoundedAnswer(t *testing.T) {
	var answer func(w http.ResponseWriter)
	var query atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query.Store(r.URL.Path + "?" + r.URL.RawQuery)
		answer(w)
	}))
	defer srv.Close()
	c := New(srv.URL, http.DefaultTransport, slog.New(slog.DiscardHandler))
	answer = func(w http.ResponseWriter) { _, _ = w.Write([]byte(`{"deliveries":[]}`)) }
	body, err := c.Exported(context.Background(), 3)
	if err != nil || string(body) != `{"deliveries":[]}` || query.Load() != batchv1.PathExported+"?limit=3" {
		t.Fatalf("a good answer: %q %v (asked %v)", body, err, query.Load())
	}
	for name, a := range map[string]func(http.ResponseWriter){
		"refused": func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"reason":"NotAnInstance"}`))
		},
		"not JSON": func(w http.ResponseWriter) { _, _ = w.Write([]byte("\x1b[2J<html>")) },
		"too big": func(w http.ResponseWriter) {
			_, _ = w.Write([]byte(`["`))
			chunk := make([]byte, 1<<20)
			for i := range chunk {
				chunk[i] = 'a'
			}
			for range MaxExportedBytes>>20 + 1 {
				_, _ = w.Write(chunk)
			}
			_, _ = w.Write([]byte(`"]`))
		},
	} {
		answer = a
		if body, err := c.Exported(context.Background(), 1); err == nil || body != nil {
			t.Errorf("%s: got %d bytes, err %v", name, len(body), err)
		}
	}
}

// TestARefusedDayIsIsolatedWhole: the receiver keeps the first publication of a day, so when
// it refuses an aggregates batch the halves that isolate the cause never cut through a day:
// every other day arrives whole in one request, and the refused day is quarantined whole.
func TestARefusedDayIsIsolatedWhole(t *testing.T) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var mu sync.Mutex
	requests := map[string][]int{} // day -> cells of that day in each request carrying it
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		body, err := dec.DecodeAll(raw, nil)
		if err != nil {
			t.Error(err)
		}
		b, err := batchv1.Decode(body)
		if err != nil {
			t.Error(err)
			return
		}
		perDay := map[string]int{}
		for _, a := range b.Aggregates {
			perDay[a.Day]++
		}
		mu.Lock()
		for d, n := range perDay {
			requests[d] = append(requests[d], n)
		}
		mu.Unlock()
		if i := slices.IndexFunc(b.Aggregates, func(a batchv1.Aggregate) bool { return a.Day == "2026-11-03" }); i >= 0 {
			// As the receiver refuses a day its audit refuses: naming the day's first cell.
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"narrowed","reason":"TierViolation","eventIndex":` + strconv.Itoa(i) + `}`))
			return
		}
		_, _ = w.Write([]byte(`{"accepted":` + strconv.Itoa(len(b.Aggregates)) + `}`))
	}))
	defer srv.Close()
	c := New(srv.URL, http.DefaultTransport, slog.New(slog.DiscardHandler))
	b := &batchv1.Batch{InstanceID: "acme", BatchID: "acme-a-20261101-20261105", Kind: batchv1.KindAggregates, Tier: "CriticalOnly"}
	// Cells of five days, interleaved and of uneven sizes, so a split by count would cut days.
	for i := range 47 {
		day := fmt.Sprintf("2026-11-%02d", 1+(i*i+i/4)%5)
		b.Aggregates = append(b.Aggregates, batchv1.Aggregate{Day: day, Metric: batchv1.MetricEventCount,
			Dimension: fmt.Sprintf("n%d", i), Value: 9, Users: 5, Final: true})
	}
	want := map[string]int{}
	for _, a := range b.Aggregates {
		want[a.Day]++
	}
	if len(want) != 5 {
		t.Fatalf("cells of %d days, want 5", len(want))
	}
	out, err := c.Send(context.Background(), b, func(*batchv1.Batch) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Quarantined) != 1 || out.Quarantined[0] != "aggregates of 2026-11-03" {
		t.Fatalf("quarantined %v, want the refused day alone", out.Quarantined)
	}
	for day, n := range want {
		for _, got := range requests[day] {
			if got != n {
				t.Fatalf("day %s was sent as %v cells per request, want all %d in each", day, requests[day], n)
			}
		}
	}
	if out.Accepted != len(b.Aggregates)-want["2026-11-03"] {
		t.Fatalf("accepted %d cells, want every cell of the other days", out.Accepted)
	}
}
