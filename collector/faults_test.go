/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/internal/faultproxy"
)

// The fault suite: after each fault, every event is stored exactly once, the counts reconcile
// (stored = allow-listed rows, cursor = newest id) and nothing is stuck. `make faults` runs it
// in its full form (FAULTS_FULL=1); `make test` runs the short form.

func full() bool { return os.Getenv("FAULTS_FULL") == "1" }

func (in *instance) maxID() int64 {
	in.t.Helper()
	var id int64
	if err := in.db.QueryRow(context.Background(), "SELECT coalesce(max(id), 0) FROM event_logs").Scan(&id); err != nil {
		in.t.Fatal(err)
	}
	return id
}

// reconciled asserts the end state after faults.
func reconciled(t *testing.T, in *instance, cursor int64) {
	t.Helper()
	want := in.count("name IN ('SearchSubmitted', 'ViewBlob', 'hover')")
	if got := in.stored(); got != want {
		t.Fatalf("stored %d events, want %d exactly once", got, want)
	}
	if cursor != in.maxID() {
		t.Fatalf("cursor %d, want %d (nothing stuck)", cursor, in.maxID())
	}
}

// drainThroughFaults runs rounds until the backlog is gone, tolerating failed rounds: until a
// round finds nothing more and the cursor has reached the instance's last row. A round can
// leave the cursor short of the rows it read, and the next one too: a transaction of the
// PostgreSQL server in flight at its read (the receiver storing the batch sent beside it) holds
// it back until a later round, as the running collector's later rounds do. A cursor stuck for
// good fails at the deadline.
func drainThroughFaults(t *testing.T, in *instance, p *collector.Pipeline, deadline time.Duration) {
	t.Helper()
	end := time.Now().Add(deadline)
	for time.Now().Before(end) {
		before := p.Cursor()
		more, err := p.RunOnce(context.Background())
		if err == nil && !more && p.Cursor() == in.maxID() {
			return
		}
		if p.Cursor() == before {
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Fatalf("the pipeline did not drain after the faults stopped: cursor %d, last row %d", p.Cursor(), in.maxID())
}

func seedMixed(in *instance, n int) {
	in.insert("SearchSubmitted", n, 30, `{"patternType":"regexp"}`)
	in.insert("UserSignedUp", n/10, 30, `{}`)
	in.insert("ViewBlob", n, 30, `{"languageId":"go"}`)
	in.insert("hover", n/2, 30, `{"languageId":"rust"}`)
}

func TestFaultyNetworkResetsStallsAndTruncations(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	if full() {
		seedMixed(in, 12000)
	} else {
		seedMixed(in, 3000)
	}
	target, err := url.Parse(rcv.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.Start(strings.Replace(target.Host, "localhost", "127.0.0.1", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	proxy.StallFor = 300 * time.Millisecond
	cfg, _ := collector.LoadConfig(in.config)
	cfg.Endpoint = "https://localhost:" + strings.Split(proxy.Addr(), ":")[1]
	in.writeConfig(*cfg)
	// Faults from the first connection on: a keep-alive connection opened in Pass mode would
	// otherwise carry every request.
	proxy.SetMode(faultproxy.Random)
	p := in.pipeline()

	faultFor := 4 * time.Second
	if full() {
		faultFor = 30 * time.Second
	}
	for end := time.Now().Add(faultFor); time.Now().Before(end); {
		if more, err := p.RunOnce(context.Background()); err == nil && !more {
			break
		}
	}
	if proxy.Faults() == 0 {
		t.Fatal("no fault was injected: the test would pass vacuously")
	}
	proxy.SetMode(faultproxy.Pass)
	drainThroughFaults(t, in, p, 2*time.Minute)
	reconciled(t, in, p.Cursor())
	t.Logf("%d faulted connections", proxy.Faults())
}

func TestReceiverRestartedMidBatch(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 300)
	seedMixed(in, 1500)
	p := in.pipeline()
	restarts := 2
	if full() {
		restarts = 6
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range restarts {
			time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond) //nolint:gosec // timing jitter
			rcv.Stop()
			time.Sleep(300 * time.Millisecond)
			if err := rcv.Listen(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	drainThroughFaults(t, in, p, 3*time.Minute)
	<-done
	drainThroughFaults(t, in, p, time.Minute)
	reconciled(t, in, p.Cursor())
}

func TestPostgresRestartedMidRead(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 200)
	seedMixed(in, 1500)
	p := in.pipeline()
	for range 3 {
		_, _ = p.RunOnce(context.Background())
	}
	// Both the instance database and the receiver's live on this server: both go away.
	if err := rcv.PG.StopServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The round read ahead before the stop may still be sent; the receiver cannot store it, so
	// the round fails (by its deadline at the latest) and nothing is acknowledged.
	down, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := p.RunOnce(down)
	cancel()
	if err == nil {
		t.Fatal("a round succeeded with the database down")
	}
	if err := rcv.PG.StartServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	drainThroughFaults(t, in, p, 2*time.Minute)
	reconciled(t, in, p.Cursor())
}

func TestCollectorKilledAtRandomMoments(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	seedMixed(in, 1500)
	kills := 10
	if full() {
		kills = 50
	}
	start := func() *exec.Cmd {
		cmd := exec.Command(collectorBin, "--config", in.config, "--state-file", in.stateFile, "--metrics-addr", "127.0.0.1:0")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	for range kills {
		cmd := start()
		time.Sleep(time.Duration(50+rand.IntN(400)) * time.Millisecond) //nolint:gosec // random moment
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	cmd := start()
	want := in.count("name IN ('SearchSubmitted', 'ViewBlob', 'hover')")
	deadline := time.Now().Add(2 * time.Minute)
	for in.stored() < want && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	// Let the last acknowledgement reach the saved progress, then stop cleanly.
	time.Sleep(1500 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the collector did not stop cleanly: %v", err)
	}
	reconciled(t, in, in.progress().Cursor)
}
