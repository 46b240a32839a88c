/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

var rcv *receivertest.Receiver

// Small limits keep the oversized-input tests fast; they exercise the same code paths.
var testLimits = server.Limits{MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20}

func TestMain(m *testing.M) {
	var err error
	rcv, err = receivertest.Start(context.Background(), testLimits)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the receiver:", err)
		os.Exit(1)
	}
	code := m.Run()
	rcv.Close()
	os.Exit(code)
}

// consentSince is when the instances of these tests were granted consent: before every
// timestamp their batches carry.
var consentSince = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// grant gives instance EventLevel consent from consentSince, so that a test of the ingestion API
// tests what it means to and not the consent ledger.
func grant(t *testing.T, instance string) {
	t.Helper()
	if err := rcv.Grant(context.Background(), instance, consentv1.TierEventLevel, consentSince); err != nil {
		t.Fatal(err)
	}
}

func events(instance string, from, n int) *batchv1.Batch {
	b := &batchv1.Batch{Version: 1, InstanceID: instance, BatchID: fmt.Sprintf("%s-e-%d-%d", instance, from, n), Kind: batchv1.KindEvents,
		Tier: "EventLevel", AllowListVersion: catalogv1.CurrentVersion, Cursor: int64(from + n - 1)}
	for i := from; i < from+n; i++ {
		b.Events = append(b.Events, batchv1.Event{
			ID: strconv.Itoa(i), Name: "SearchSubmitted", Timestamp: time.Date(2026, 11, 27, 10, 0, i%60, 0, time.UTC),
			Source: "WEB", UserID: fmt.Sprintf("f%031x", i%7), Properties: map[string]any{"patternType": "literal"},
		})
	}
	return b
}

// collectorID is a batch id of the shape a collector makes (the receiver refuses any other),
// one per label.
func collectorID(instance, label string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(label))
	return fmt.Sprintf("%s-c-%d", instance, h.Sum64()>>1)
}

type reply struct {
	status int
	body   []byte
	header http.Header
}

func (r reply) errorResponse(t *testing.T) batchv1.ErrorResponse {
	t.Helper()
	var e batchv1.ErrorResponse
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body is not JSON: %q", r.body)
	}
	return e
}

func post(t *testing.T, c *http.Client, body []byte, header map[string]string) (reply, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, rcv.URL+batchv1.PathBatches, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", batchv1.ContentType)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, data, resp.Header}, nil
}

func client(t *testing.T, instance string) *http.Client {
	t.Helper()
	cert, err := rcv.ClientCert(instance, time.Now().Add(-time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return rcv.HTTPClient(&cert)
}

func mustEncode(t *testing.T, b *batchv1.Batch) []byte {
	t.Helper()
	data, err := batchv1.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func count(t *testing.T, table, instance string) int {
	t.Helper()
	n, err := rcv.Count(context.Background(), table, instance)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAuthenticationFailuresStoreNothing(t *testing.T) {
	grant(t, "auth")
	grant(t, "other")
	body := mustEncode(t, events("auth", 1, 3))
	rogueCA, _ := pkitest.NewCA("rogue", pkitest.Options{})
	rogueCert, _ := rogueCA.ServerCert("auth", []string{"localhost"}, time.Time{})
	roguePair, _ := tls.X509KeyPair(rogueCert.CertPEM, rogueCert.KeyPEM)
	expired, err := rcv.ClientCert("auth", time.Now().Add(-72*time.Hour), 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*http.Client{
		"no client certificate":       rcv.HTTPClient(nil),
		"certificate from another CA": rcv.HTTPClient(&roguePair),
		"expired certificate":         rcv.HTTPClient(&expired),
	} {
		t.Run(name, func(t *testing.T) {
			r, err := post(t, c, body, nil)
			if err == nil && r.status < 400 {
				t.Fatalf("accepted: %d %s", r.status, r.body)
			}
		})
	}
	t.Run("instance A sending instance B's batch", func(t *testing.T) {
		r, err := post(t, client(t, "other"), body, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.status != http.StatusForbidden || r.errorResponse(t).Reason != batchv1.ReasonWrongInstance {
			t.Fatalf("got %d %s", r.status, r.body)
		}
	})
	if n := count(t, "events", "auth"); n != 0 {
		t.Fatalf("%d events stored from rejected requests", n)
	}
}

func TestHostileBodiesGetTheRightStatusAndStoreNothing(t *testing.T) {
	grant(t, "hostile")
	c := client(t, "hostile")
	bomb := func() []byte {
		var buf bytes.Buffer
		enc, _ := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
		prefix := `{"version":1,"instanceID":"hostile","batchID":"hostile-c-1","kind":"events","tier":"EventLevel","events":[],"pad":"`
		_, _ = enc.Write([]byte(prefix))
		zeros := make([]byte, 1<<20)
		for range 64 { // 64 MiB of padding, a few KiB compressed
			_, _ = enc.Write(zeros)
		}
		_ = enc.Close()
		return buf.Bytes()
	}()
	if len(bomb) > int(testLimits.MaxBodyBytes) {
		t.Fatalf("the bomb should be small compressed, is %d bytes", len(bomb))
	}
	bigEvent := events("hostile", 1, 1)
	bigEvent.Events[0].Source = strings.Repeat("x", batchv1.MaxEventBytes)
	badZstd := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff}
	cases := []struct {
		name   string
		body   []byte
		header map[string]string
		status int
		reason string
	}{
		{"compression bomb", bomb, map[string]string{"Content-Encoding": "zstd"}, 413, batchv1.ReasonTooLarge},
		{"oversized body", bytes.Repeat([]byte(" "), int(testLimits.MaxBodyBytes)+1), nil, 413, batchv1.ReasonTooLarge},
		{"oversized event", mustEncode(t, bigEvent), nil, 413, batchv1.ReasonEventTooLarge},
		{"malformed JSON", []byte(`{"version":1,`), nil, 400, batchv1.ReasonMalformed},
		{"wrong content type", mustEncode(t, events("hostile", 1, 1)), map[string]string{"Content-Type": "text/plain"}, 415, batchv1.ReasonUnsupported},
		{"unknown encoding", mustEncode(t, events("hostile", 1, 1)), map[string]string{"Content-Encoding": "br"}, 415, batchv1.ReasonUnsupported},
		{"broken zstd", badZstd, map[string]string{"Content-Encoding": "zstd"}, 400, batchv1.ReasonMalformed},
		{"url in an event", []byte(`{"version":1,"instanceID":"hostile","batchID":"hostile-c-1","kind":"events","tier":"EventLevel","events":[{"id":"1","name":"ViewBlob","timestamp":"2026-11-27T10:00:00Z","userID":"0123456789abcdef0123456789abcdef","url":"https://x/secret"}]}`),
			nil, 400, batchv1.ReasonTierViolation},
		{"user ids in an aggregate batch", []byte(`{"version":1,"instanceID":"hostile","batchID":"hostile-c-1","kind":"aggregates","tier":"CriticalOnly","events":[{"id":"1"}]}`),
			nil, 400, batchv1.ReasonTierViolation},
		{"unsuppressed small cell", []byte(`{"version":1,"instanceID":"hostile","batchID":"hostile-c-1","kind":"aggregates","tier":"CriticalOnly","aggregates":[{"day":"2026-11-27","metric":"event_count","dimension":"ViewBlob","value":3,"users":2,"final":true}]}`),
			nil, 400, batchv1.ReasonTierViolation},
		{"mismatched idempotency key", mustEncode(t, events("hostile", 1, 1)), map[string]string{batchv1.HeaderIdempotencyKey: "other"}, 400, batchv1.ReasonMalformed},
		{"NUL bytes", []byte("{\"version\":1,\"instanceID\":\"hostile\x00\"}"), nil, 400, batchv1.ReasonMalformed},
		{"invalid UTF-8", []byte("{\"version\":1,\"batchID\":\"\xff\xfe\"}"), nil, 400, batchv1.ReasonMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := post(t, c, tc.body, tc.header)
			if err != nil {
				t.Fatal(err)
			}
			if r.status != tc.status || r.errorResponse(t).Reason != tc.reason {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tc.status, tc.reason)
			}
		})
	}
	if n := count(t, "events", "hostile"); n != 0 {
		t.Fatalf("%d events stored from rejected requests", n)
	}
	// The server is still healthy and takes a good batch.
	r, err := post(t, c, mustEncode(t, events("hostile", 1, 5)), nil)
	if err != nil || r.status != 200 {
		t.Fatalf("a valid batch after hostile ones: %v %d %s", err, r.status, r.body)
	}
}

func TestTheSameBatchIsStoredOnce(t *testing.T) {
	grant(t, "idem")
	c := client(t, "idem")
	b := events("idem", 1, 50)
	body := mustEncode(t, b)
	var first batchv1.Response
	r, err := post(t, c, body, map[string]string{batchv1.HeaderIdempotencyKey: b.BatchID})
	if err != nil || r.status != 200 {
		t.Fatalf("%v %d %s", err, r.status, r.body)
	}
	_ = json.Unmarshal(r.body, &first)
	if first.Accepted != 50 || first.Duplicates != 0 || first.Cursor != 50 {
		t.Fatalf("first send: %+v", first)
	}
	r, _ = post(t, c, body, nil)
	var second batchv1.Response
	_ = json.Unmarshal(r.body, &second)
	if second.Accepted != 0 || second.Duplicates != 50 {
		t.Fatalf("resend: %+v", second)
	}

	// Concurrently, overlapping batches from several connections.
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := client(t, "idem")
			b := events("idem", 40+g%2*10, 40) // ids 40..79 or 50..89
			r, err := post(t, cl, mustEncode(t, b), nil)
			for err == nil && r.status == http.StatusTooManyRequests { // more than an instance may have open: retry, as a collector does
				time.Sleep(20 * time.Millisecond)
				r, err = post(t, cl, mustEncode(t, b), nil)
			}
			if err != nil || r.status != 200 {
				t.Errorf("%v %d %s", err, r.status, r.body)
				return
			}
			var resp batchv1.Response
			_ = json.Unmarshal(r.body, &resp)
			mu.Lock()
			accepted += resp.Accepted
			mu.Unlock()
		}()
	}
	wg.Wait()
	if n := count(t, "events", "idem"); n != 89 {
		t.Fatalf("%d events stored, want 89 (ids 1..89 once each)", n)
	}
	if accepted != 39 {
		t.Fatalf("concurrent sends accepted %d new events, want 39", accepted)
	}
	// The cursor never goes backwards.
	resp, err := c.Get(rcv.URL + batchv1.PathCursor)
	if err != nil {
		t.Fatal(err)
	}
	var cur batchv1.CursorResponse
	_ = json.NewDecoder(resp.Body).Decode(&cur)
	_ = resp.Body.Close()
	if !cur.Known || cur.Cursor != 89 || cur.InstanceID != "idem" {
		t.Fatalf("cursor %+v", cur)
	}
}

func TestDatabaseDownAnswers503AndRetrySucceeds(t *testing.T) {
	ctx := context.Background()
	grant(t, "outage")
	c := client(t, "outage")
	if err := rcv.PG.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	b := events("outage", 1, 10)
	r, err := post(t, c, mustEncode(t, b), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || r.errorResponse(t).Reason != batchv1.ReasonUnavailable {
		t.Fatalf("got %d %v %s", r.status, r.header, r.body)
	}
	if err := rcv.PG.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	// The test's own pool still holds connections the restart ended; a connection idle for
	// under a second is handed out without a ping, and its first query would fail.
	rcv.DB.Reset()
	// A client honouring Retry-After gets through once the database is back.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err = post(t, c, mustEncode(t, b), nil)
		if err == nil && r.status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retry never succeeded: %v %d %s", err, r.status, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := count(t, "events", "outage"); n != 10 {
		t.Fatalf("%d events stored after the outage, want 10", n)
	}
}

func TestMigrationsAreSafeToRunConcurrently(t *testing.T) {
	ctx := context.Background()
	if err := rcv.PG.CreateDatabase(ctx, "migrations"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := store.Open(ctx, rcv.PG.DSN("migrations"))
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			errs <- st.Migrate(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpsEndpoints(t *testing.T) {
	ops := rcv.Server.OpsHandler(rcv.Registry)
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ok", "/metrics": "receiver_batches_total"} {
		rec := &responseRecorder{header: http.Header{}}
		req, _ := http.NewRequest(http.MethodGet, path, nil)
		ops.ServeHTTP(rec, req)
		if rec.status != 0 && rec.status != 200 || !strings.Contains(rec.body.String(), want) {
			t.Fatalf("%s: %d %q", path, rec.status, rec.body.String())
		}
	}
}

type responseRecorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *responseRecorder) Header() http.Header         { return r.header }
func (r *responseRecorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *responseRecorder) WriteHeader(s int)           { r.status = s }
