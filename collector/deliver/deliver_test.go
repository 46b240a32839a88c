/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package deliver

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

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
