/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// TestReadBodyHonoursContentLength covers what a real client cannot easily send through
// net/http: a body shorter than its declared length (a cut connection) must be refused, never
// decoded as a truncated batch; a body without a declared length is read up to the limit; the
// shared zstd decoder serves one request after another.
func TestReadBodyHonoursContentLength(t *testing.T) {
	s := New(nil, Limits{MaxBodyBytes: 1 << 10, MaxDecompressedBytes: 4 << 10, MaxInFlightBytes: 64 << 10, InFlightWait: time.Second},
		slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	body := `{"version":1}`
	request := func(data []byte, length int64, encoding string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, batchv1.PathBatches, bytes.NewReader(data))
		r.ContentLength = length
		if encoding != "" {
			r.Header.Set("Content-Encoding", encoding)
		}
		return r
	}
	enc, _ := zstd.NewWriter(nil)
	compressed := enc.EncodeAll([]byte(body), nil)
	bomb := enc.EncodeAll([]byte(strings.Repeat(" ", 8<<10)), nil)
	cases := []struct {
		name   string
		req    *http.Request
		status int
		want   string
	}{
		{"declared length", request([]byte(body), int64(len(body)), ""), 0, body},
		{"shorter than declared", request([]byte(body), int64(len(body))+5, ""), http.StatusBadRequest, ""},
		{"no declared length", request([]byte(body), -1, ""), 0, body},
		{"declared over the limit", request([]byte(body), 2<<10, ""), http.StatusRequestEntityTooLarge, ""},
		{"undeclared over the limit", request(bytes.Repeat([]byte(" "), 2<<10), -1, ""), http.StatusRequestEntityTooLarge, ""},
		{"zstd", request(compressed, int64(len(compressed)), "zstd"), 0, body},
		{"zstd again, same decoder", request(compressed, int64(len(compressed)), "zstd"), 0, body},
		{"zstd over the decompressed limit", request(bomb, int64(len(bomb)), "zstd"), http.StatusRequestEntityTooLarge, ""},
		{"zstd that is not zstd", request([]byte(body), int64(len(body)), "zstd"), http.StatusBadRequest, ""},
	}
	for _, c := range cases {
		held := &reservation{s: s}
		got, status, reason, msg := s.readBody(c.req, held)
		held.release()
		if status != c.status || string(got) != c.want {
			t.Errorf("%s: got %q, status %d (%s: %s); want %q, status %d", c.name, got, status, reason, msg, c.want, c.status)
		}
		if !s.inFlight.TryAcquire(s.largeBudget) || !s.inFlightSmall.TryAcquire(s.smallBudget) {
			t.Fatalf("%s: in-flight bytes were not released", c.name)
		}
		s.inFlight.Release(s.largeBudget)
		s.inFlightSmall.Release(s.smallBudget)
	}

	// Large bodies filling their lane leave the small lane free: a small batch is still served.
	large := &reservation{s: s}
	if !large.take(context.Background(), 8*smallRequest) || large.small {
		t.Fatal("could not fill the large lane")
	}
	smallOne := &reservation{s: s}
	if got, status, _, _ := s.readBody(request([]byte(body), int64(len(body)), ""), smallOne); status != 0 || string(got) != body {
		t.Fatalf("a small body while large ones fill their lane: status %d", status)
	}
	smallOne.release()
	large.release()

	// Bodies held by other requests leave no room: the request is refused as busy, not queued
	// without end, and nothing is read.
	full := &reservation{s: s}
	if !full.take(context.Background(), 64<<10) || !full.small {
		t.Fatal("could not fill the small lane")
	}
	// Slow clients holding the small lane do not shut small batches out: they wait in the
	// large one.
	fallback := &reservation{s: s}
	if got, status, _, _ := s.readBody(request([]byte(body), int64(len(body)), ""), fallback); status != 0 || string(got) != body || fallback.small {
		t.Fatalf("a small body with the small lane full: status %d, small lane %v", status, fallback.small)
	}
	fallback.release()
	both := &reservation{s: s}
	if !both.take(context.Background(), 8*smallRequest) {
		t.Fatal("could not fill the large lane")
	}
	if _, status, reason, _ := s.readBody(request([]byte(body), int64(len(body)), ""), &reservation{s: s}); status != http.StatusServiceUnavailable || reason != batchv1.ReasonBusy {
		t.Fatalf("with no room: status %d (%s), want 503 %s", status, reason, batchv1.ReasonBusy)
	}
	both.release()
	full.release()

	// Concatenated frames: the first declares its size (1 KiB), the next carries 2.5 KiB more
	// (still within the decompressed limit). Decoding may not grow past what was reserved from
	// the declaration.
	small := enc.EncodeAll(bytes.Repeat([]byte("y"), 1<<10), nil)
	var h zstd.Header
	if err := h.Decode(small); err != nil || !h.HasFCS {
		t.Fatalf("the first frame does not declare its size (%v): the case tests nothing", err)
	}
	big := enc.EncodeAll(bytes.Repeat([]byte(" "), 2560), nil)
	frames := append(append([]byte{}, small...), big...)
	held := &reservation{s: s}
	if _, status, _, _ := s.readBody(request(frames, int64(len(frames)), "zstd"), held); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("frames beyond the first one's declared size: status %d, want 413", status)
	}
	held.release()
}

// TestOneInstanceHoldsAtMostFourRequests: slow or stalled bodies from one certificate cannot
// occupy the receiver; a fifth open request of the instance is refused, another instance's is not.
func TestOneInstanceHoldsAtMostFourRequests(t *testing.T) {
	s := New(nil, DefaultLimits(), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	for i := range maxInstanceRequests {
		if !s.enter(caller{instance: "slowpoke"}) {
			t.Fatalf("request %d refused", i+1)
		}
	}
	if s.enter(caller{instance: "slowpoke"}) {
		t.Fatal("a fifth open request was admitted")
	}
	if !s.enter(caller{instance: "bystander"}) {
		t.Fatal("another instance was refused")
	}
	if !s.enter(caller{instance: "slowpoke", policy: consentv1.Owner{Cluster: "c", Namespace: "ns", Name: "next", UID: "u2"}}) {
		t.Fatal("the instance's certificate for another policy (its new owner's) was refused")
	}
	s.leave(caller{instance: "slowpoke"})
	if !s.enter(caller{instance: "slowpoke"}) {
		t.Fatal("a request after one finished was refused")
	}
}

// TestARequestRefusedForOpenRequestsSpendsNoRate: a request turned away because the instance
// has four open ones does not use up its rate, so its retry is not refused twice.
func TestARequestRefusedForOpenRequestsSpendsNoRate(t *testing.T) {
	limits := DefaultLimits()
	limits.InstanceRate, limits.InstanceBurst = 0.001, 2
	s := New(nil, limits, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if !s.hold(httptest.NewRecorder(), caller{instance: "acme"}) { // token 1
		t.Fatal("the first request was refused")
	}
	for range maxInstanceRequests - 1 {
		s.enter(caller{instance: "acme"})
	}
	if w := httptest.NewRecorder(); s.hold(w, caller{instance: "acme"}) || w.Code != http.StatusTooManyRequests {
		t.Fatalf("a fifth open request: %d", w.Code)
	}
	for range maxInstanceRequests {
		s.leave(caller{instance: "acme"})
	}
	if !s.hold(httptest.NewRecorder(), caller{instance: "acme"}) { // token 2, still there
		t.Fatal("the retry was refused: the refused request had spent the rate")
	}
}

// TestIdleLimitersAreDropped: every caller an instance ever had (each policy its certificates
// named) gets a limiter; those with a full bucket are dropped as new ones are made, so the map
// does not grow with every handover.
func TestIdleLimitersAreDropped(t *testing.T) {
	limits := DefaultLimits()
	limits.InstanceRate, limits.InstanceBurst = 1000, 1
	s := New(nil, limits, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	callerN := func(i int) caller {
		return caller{instance: "acme", policy: consentv1.Owner{Cluster: "c", Namespace: "ns", Name: "p", UID: strconv.Itoa(i)}}
	}
	for i := range limiterSweepEvery - 1 {
		if _, ok := s.admit(callerN(i)); !ok {
			t.Fatalf("caller %d refused", i)
		}
	}
	time.Sleep(20 * time.Millisecond) // every bucket refills (1 token a millisecond)
	if _, ok := s.admit(callerN(limiterSweepEvery)); !ok {
		t.Fatal("the last caller was refused")
	}
	n := 0
	s.limiters.Range(func(any, any) bool { n++; return true })
	if n > 1 {
		t.Fatalf("%d limiters kept after a sweep, want at most the one just used", n)
	}
}
