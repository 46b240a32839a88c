/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
)

// postTo sends a batch to the receiver at base and decodes its answer (and an error's reason).
func postTo(t *testing.T, c *http.Client, base string, body []byte) (int, batchv1.Response, string) {
	t.Helper()
	for {
		req, err := http.NewRequest(http.MethodPost, base+batchv1.PathBatches, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", batchv1.ContentType)
		resp, err := c.Do(req)
		if err != nil {
			t.Error(err)
			return 0, batchv1.Response{}, ""
		}
		raw, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		var out batchv1.Response
		var failure batchv1.ErrorResponse
		_ = json.Unmarshal(raw, &out)
		_ = json.Unmarshal(raw, &failure)
		if resp.StatusCode == http.StatusTooManyRequests { // more open than an instance may have: retry, as a collector does
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return resp.StatusCode, out, failure.Reason
	}
}

// Two receivers on one database, as two replicas behind a Service: the same batch sent to both
// at once is stored once, the cursor only moves forward whichever replica stores which batch,
// and a consent withdrawal recorded through one is enforced at once by the other (its policy
// cache is keyed by the ledger's version, not trusted).
func TestReplicasSideBySide(t *testing.T) {
	ctx := context.Background()
	other, err := rcv.Replica(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	replicas := []*receivertest.Receiver{rcv, other}
	grant(t, "twin")
	c := client(t, "twin")

	// The same batch to both replicas at the same moment, twenty times.
	const batches, size = 20, 100
	for i := range batches {
		body := mustEncode(t, events("twin", 1+i*size, size))
		start := make(chan struct{})
		var wg sync.WaitGroup
		answers := make([]batchv1.Response, 2)
		for k, r := range replicas {
			wg.Go(func() {
				<-start
				status, resp, _ := postTo(t, c, r.URL, body)
				if status != http.StatusOK {
					t.Errorf("replica %d answered %d", k, status)
				}
				answers[k] = resp
			})
		}
		close(start)
		wg.Wait()
		if a, d := answers[0].Accepted+answers[1].Accepted, answers[0].Duplicates+answers[1].Duplicates; a != size || d != size {
			t.Fatalf("batch %d sent to both replicas: accepted %d and duplicates %d in all, want %d and %d (%+v)", i, a, d, size, size, answers)
		}
	}
	if n := count(t, "events", "twin"); n != batches*size {
		t.Fatalf("%d events stored, want %d, each once", n, batches*size)
	}

	// Batches in shuffled order, each to a random replica, concurrently: the cursor ends at the
	// highest and no answer reports one below its own batch's.
	var cursors []int
	for i := range 40 {
		cursors = append(cursors, batches*size+1+i*10)
	}
	rand.Shuffle(len(cursors), func(i, j int) { cursors[i], cursors[j] = cursors[j], cursors[i] })
	var wg sync.WaitGroup
	for _, from := range cursors {
		wg.Go(func() {
			b := events("twin", from, 10)
			status, resp, _ := postTo(t, c, replicas[rand.IntN(2)].URL, mustEncode(t, b))
			if status != http.StatusOK || resp.Cursor < b.Cursor {
				t.Errorf("batch with cursor %d: status %d, receiver's cursor %d", b.Cursor, status, resp.Cursor)
			}
		})
	}
	wg.Wait()
	want := int64(batches*size + 40*10)
	for k, r := range replicas {
		resp, err := c.Get(r.URL + batchv1.PathCursor)
		if err != nil {
			t.Fatal(err)
		}
		var cur batchv1.CursorResponse
		_ = json.NewDecoder(resp.Body).Decode(&cur)
		_ = resp.Body.Close()
		if !cur.Known || cur.Cursor != want {
			t.Errorf("replica %d reports cursor %+v, want %d", k, cur, want)
		}
	}

	// Consent withdrawn through the first replica's store (dated before these events); the
	// second, whose cache holds the instance's policy from the batches above, refuses at once.
	if err := rcv.Grant(ctx, "twin", consentv1.TierOff, consentSince.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Off is in force: the whole batch is refused for consent, not for any other reason.
	status, resp, reason := postTo(t, c, other.URL, mustEncode(t, events("twin", 10_000, 10)))
	if status != http.StatusForbidden || reason != consentv1.ReasonConsentRefused {
		t.Errorf("after the withdrawal the other replica answered %d %q %+v, want 403 %s", status, reason, resp, consentv1.ReasonConsentRefused)
	}
	var late int
	if err := rcv.DB.QueryRow(ctx, "SELECT count(*) FROM events WHERE instance_id = 'twin' AND event_id::bigint >= 10000").Scan(&late); err != nil {
		t.Fatal(err)
	}
	if late != 0 {
		t.Errorf("the other replica stored %d events after the withdrawal", late)
	}
}
