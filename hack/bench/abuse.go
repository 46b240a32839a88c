/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
)

// abuseBudget is the in-flight budget the receiver process runs with in the abuse run: small, so
// that the flood is many times larger than it.
const abuseBudget = 32 << 20

// receiverUnderAbuse floods a receiver process with maximum-size batches (10,000 events each,
// uncompressed) from many instances at once, for d, while another instance sends a small batch
// every 100 ms. It reports the process's peak memory against its in-flight budget, whether the
// other instance was served throughout, and whether every event acknowledged as accepted was
// stored.
func receiverUnderAbuse(ctx context.Context, r *receivertest.Receiver, bin string, clients int, d time.Duration) {
	fmt.Printf("\n== receiver under abuse (%d clients sending 10,000-event batches for %s, in-flight budget %d MiB) ==\n", clients, d, abuseBudget>>20)
	dir, err := os.MkdirTemp("", "bench-abuse-")
	must(err)
	defer func() { _ = os.RemoveAll(dir) }()
	cert, err := r.CA.ServerCert("receiver", []string{"localhost", "127.0.0.1"}, time.Time{})
	must(err)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		must(os.WriteFile(p, data, 0o600))
		return p
	}
	api, err := testenv.FreeAddr()
	must(err)
	ops, err := testenv.FreeAddr()
	must(err)
	cmd := exec.Command(filepath.Join(bin, "receiver"), "serve", "--listen", api, "--ops-listen", ops, //nolint:gosec // our binary
		"--tls-cert", write("tls.crt", cert.CertPEM), "--tls-key", write("tls.key", cert.KeyPEM), "--client-ca", r.CAFile,
		"--database-dsn-file", write("dsn", []byte(r.PG.DSN("receiver"))), "--max-in-flight-bytes", strconv.Itoa(abuseBudget))
	log, err := os.Create(filepath.Join(dir, "receiver.log"))
	must(err)
	defer func() { _ = log.Close() }()
	cmd.Stdout, cmd.Stderr = log, log
	must(cmd.Start())
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	for start := time.Now(); ; {
		resp, err := http.Get("http://" + ops + "/readyz") //nolint:gosec,noctx // loopback
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Since(start) > time.Minute {
			must(fmt.Errorf("the receiver process did not become ready"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, port, _ := net.SplitHostPort(api)
	url := "https://localhost:" + port + batchv1.PathBatches
	baseline := vmRSS(cmd.Process.Pid)

	clientFor := func(instance string) *http.Client {
		must(r.Grant(ctx, instance, consentv1.TierEventLevel, benchConsentSince))
		c, err := r.ClientCert(instance, time.Now().Add(-time.Hour), 24*time.Hour)
		must(err)
		return r.HTTPClient(&c)
	}
	post := func(c *http.Client, body []byte) (int, string, batchv1.Response, time.Duration) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", batchv1.ContentType)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return -1, "", batchv1.Response{}, time.Since(start)
		}
		defer func() { _ = resp.Body.Close() }()
		var out batchv1.Response
		if resp.StatusCode == http.StatusOK {
			_ = json.NewDecoder(resp.Body).Decode(&out)
		}
		return resp.StatusCode, resp.Header.Get("Retry-After"), out, time.Since(start)
	}
	batch := func(instance string, first, n int) []byte {
		b := &batchv1.Batch{InstanceID: instance, BatchID: fmt.Sprintf("%s-e-%d-%d", instance, first, n), Kind: batchv1.KindEvents,
			Tier: "EventLevel", AllowListVersion: catalogv1.CurrentVersion}
		b.Events = make([]batchv1.Event, n)
		for i := range b.Events {
			b.Events[i] = batchv1.Event{ID: strconv.Itoa(first + i), Name: "SearchResultClicked", Timestamp: time.Date(2026, 11, 2, 10, 0, i%60, 0, time.UTC),
				Source: "WEB", ProductVersion: "5.3.9104", Client: "VSCODE_CODY_EXTENSION", UserID: fmt.Sprintf("f%031x", i%97),
				FeatureFlags: map[string]bool{"cody": true, "search-ranking": false}, Properties: map[string]any{"patternType": "structural", "resultType": "content"}}
		}
		data, err := batchv1.Encode(b)
		must(err)
		return data
	}

	stop := make(chan struct{})
	var peak atomic.Int64
	var sampled sync.WaitGroup
	sampled.Go(func() {
		for {
			peak.Store(max(peak.Load(), vmRSS(cmd.Process.Pid)))
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	type tally struct {
		accepted, sent, retried int
		bodyBytes               int
	}
	tallies := make([]tally, clients)
	var flood sync.WaitGroup
	deadline := time.Now().Add(d)
	for c := range clients {
		instance := fmt.Sprintf("abuse-%d", c)
		cl := clientFor(instance)
		flood.Go(func() {
			for next := 1; time.Now().Before(deadline); {
				body := batch(instance, next, 10_000)
				status, retry, out, _ := post(cl, body)
				t := &tallies[c]
				t.sent++
				t.bodyBytes = len(body)
				switch status {
				case http.StatusOK:
					t.accepted += out.Accepted
					next += 10_000
				case http.StatusTooManyRequests, http.StatusServiceUnavailable:
					t.retried++
					wait, _ := strconv.Atoi(retry)
					time.Sleep(min(time.Duration(max(wait, 1))*time.Second, time.Second))
				default:
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	calm := clientFor("abuse-calm")
	var calmOK, calmAll int
	var latencies []time.Duration
	for next := 1; time.Now().Before(deadline); next += 10 {
		status, _, _, took := post(calm, batch("abuse-calm", next, 10))
		calmAll++
		if status == http.StatusOK {
			calmOK++
		}
		latencies = append(latencies, took)
		time.Sleep(100 * time.Millisecond)
	}
	flood.Wait()
	close(stop)
	sampled.Wait()

	var accepted, sent, retried int
	lost := 0
	for c, t := range tallies {
		accepted, sent, retried = accepted+t.accepted, sent+t.sent, retried+t.retried
		var stored int
		must(r.DB.QueryRow(ctx, "SELECT count(*) FROM events WHERE instance_id = $1", fmt.Sprintf("abuse-%d", c)).Scan(&stored))
		lost += max(0, t.accepted-stored)
	}
	slices.Sort(latencies)
	p99 := latencies[min(len(latencies)-1, len(latencies)*99/100)]
	growth := max(peak.Load(), vmHWM(cmd.Process.Pid)) - baseline
	record(fmt.Sprintf("receiver peak RSS above idle, flooded (%d batches, %d told to retry)", sent, retried),
		fmt.Sprintf("%.0f MiB (idle %.0f MiB)", float64(growth)/(1<<20), float64(baseline)/(1<<20)),
		fmt.Sprintf("< 3x the %d MiB budget", abuseBudget>>20), b(growth < 3*abuseBudget))
	record("another instance served during the flood", fmt.Sprintf("%d of %d batches, p99 %s", calmOK, calmAll, p99.Round(time.Millisecond)),
		"every batch", b(calmOK == calmAll && calmAll > 0))
	record("events acknowledged as accepted but not stored", fmt.Sprintf("%d of %d", lost, accepted), "0", b(lost == 0 && accepted > 0))
}

func vmRSS(pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(raw) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, _ := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
