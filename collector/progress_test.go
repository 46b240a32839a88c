/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/deliver"
	"github.com/sourcegraph/telemetry-operator/collector/state"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
)

// countingStore counts progress writes: each is an API write by the collector and a status
// update by the operator.
type countingStore struct {
	state.Store
	saves atomic.Int64
	// failing makes every write fail (the API server unreachable).
	failing atomic.Bool
}

func (c *countingStore) Save(ctx context.Context, p *collectorconfig.Progress) error {
	c.saves.Add(1)
	if c.failing.Load() {
		return errors.New("the API server is unreachable")
	}
	return c.Store.Save(ctx, p)
}

// An idle collector, or one keeping up with a trickle, writes its progress once per two export
// intervals (the heartbeat that keeps Exporting true), not every round; a backlog's progress and
// an error are written at once.
func TestCollectorWritesProgressAsAHeartbeatUnlessSomethingNeedsSaying(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("ViewBlob", 20, 5, `{}`)
	p := in.pipeline()
	drain(t, p)
	fc := clocktesting.NewFakeClock(time.Now())
	store := &countingStore{Store: p.State}
	p.State, p.Clock, p.ProgressEvery = store, fc, time.Millisecond
	const interval = time.Second // the harness's export interval
	round := func() bool {
		t.Helper()
		fc.Step(interval)
		more, err := p.RunOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return more
	}
	fresh := func(what string) {
		t.Helper()
		if last := in.progress().LastSuccessTime; last == nil || fc.Now().Sub(*last) > 2*interval {
			t.Errorf("%s: the saved success time %v is more than two intervals old at %v: Exporting would lapse", what, last, fc.Now())
		}
	}

	for range 10 {
		round()
	}
	if n := store.saves.Load(); n < 4 || n > 6 {
		t.Errorf("10 idle rounds wrote progress %d times, want about 5 (once per two intervals)", n)
	}
	fresh("idle")

	store.saves.Store(0)
	for range 10 {
		in.insert("ViewBlob", 1, 1, `{}`)
		round()
	}
	if n := store.saves.Load(); n < 4 || n > 6 {
		t.Errorf("10 rounds each delivering one event wrote progress %d times, want about 5 (once per two intervals)", n)
	}
	fresh("trickle")
	if saved, now := in.progress().Cursor, p.Cursor(); now-saved > 1 {
		t.Errorf("saved cursor %d trails the acknowledged %d by more than the last round", saved, now)
	}

	// A backlog: its progress is written every round, so status shows it moving.
	store.saves.Store(0)
	in.insert("ViewBlob", 1000, 5, `{}`)
	retriesBefore := counter(t, in.metrics, "collector_retries_total")
	rounds := 0
	for round() {
		rounds++
	}
	if n := store.saves.Load(); n < int64(rounds) {
		t.Errorf("a backlog of %d rounds wrote progress %d times, want every round", rounds, n)
	}
	if counter(t, in.metrics, "collector_retries_total") > retriesBefore {
		// A delivery retried (a connection reset on a loaded machine) wrote its error at the
		// same instant of the fake clock; the end of the backlog is then written at the next
		// round, ProgressEvery later, as the throttle intends.
		round()
	}
	if got, want := in.progress().Cursor, p.Cursor(); got != want {
		t.Errorf("after the backlog the saved cursor is %d, want %d", got, want)
	}

	// A backlog whose rows are dated ahead of the collector's clock (a skewed clock, or rows
	// written within the second) reads a lag of 0 s: it is still written every round, and its
	// end with it.
	store.saves.Store(0)
	in.exec(`INSERT INTO event_logs (name, url, user_id, source, public_argument, version, timestamp, argument)
SELECT 'ViewBlob', 'https://sourcegraph.example.com/x', (g % 5) + 1, 'WEB', '{}'::jsonb, '5.3.0', $1::timestamptz, '{}'::jsonb
FROM generate_series(1, 1000) g`, fc.Now().Add(time.Hour))
	retriesBefore = counter(t, in.metrics, "collector_retries_total")
	rounds = 0
	for round() {
		rounds++
	}
	if n := store.saves.Load(); n < int64(rounds) {
		t.Errorf("a backlog dated ahead of the clock, %d rounds, wrote progress %d times, want every round", rounds, n)
	}
	if counter(t, in.metrics, "collector_retries_total") > retriesBefore {
		round() // as above
	}
	if got, want := in.progress().Cursor, p.Cursor(); got != want {
		t.Errorf("after a backlog dated ahead of the clock the saved cursor is %d, want %d", got, want)
	}

	// A backlog read while another transaction was in flight: the cursor stops short of the
	// rows read until that transaction ends (a row it inserted could still appear below them),
	// so the cursor reaches the backlog's end in a later round, which writes it. These rounds
	// are 10 ms apart, so no heartbeat falls due among them.
	quick := func() bool {
		t.Helper()
		fc.Step(10 * time.Millisecond)
		more, err := p.RunOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return more
	}
	ctx := context.Background()
	tx, err := in.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SELECT txid_current()"); err != nil { // holds a transaction id
		t.Fatal(err)
	}
	in.insert("ViewBlob", 1000, 5, `{}`)
	for rounds = 0; quick(); rounds++ {
	}
	var newest int64
	if err := in.db.QueryRow(ctx, "SELECT max(id) FROM event_logs").Scan(&newest); err != nil {
		t.Fatal(err)
	}
	if p.Cursor() >= newest {
		t.Fatalf("the cursor %d reached the newest row %d with a transaction in flight: nothing here holds it back", p.Cursor(), newest)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	retriesBefore = counter(t, in.metrics, "collector_retries_total")
	quick()
	if p.Cursor() != newest {
		t.Fatalf("the cursor is %d once the transaction ended, want %d", p.Cursor(), newest)
	}
	if counter(t, in.metrics, "collector_retries_total") > retriesBefore {
		quick() // as above
	}
	if got, want := in.progress().Cursor, p.Cursor(); got != want {
		t.Errorf("once the transaction that held the cursor back ended, the saved cursor is %d, want %d", got, want)
	}

	// A write that fails is tried again at the next round, not a heartbeat later.
	store.failing.Store(true)
	store.saves.Store(0)
	for range 4 {
		round()
	}
	// The first failing write comes at the heartbeat (round 1 or 2), then one every round; at
	// the heartbeat's pace it would be 2.
	if n := store.saves.Load(); n < 3 {
		t.Errorf("with every write failing, 4 idle rounds tried %d writes, want at least 3 (a failed write is due again at the next round)", n)
	}
	store.failing.Store(false)
	round()
	fresh("after failed writes")
}

// counter reads a counter without labels from reg (0 before its first increment).
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) > 0 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// TestARestartedCollectorReportsItsLastSuccessAndInterval: the metrics alerts read. A restarted
// collector reports its last success as saved (not as never, which would page at once while the
// receiver is down), and its export interval, by which staleness is judged per instance.
func TestARestartedCollectorReportsItsLastSuccessAndInterval(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("SearchSubmitted", 5, 2, `{}`)
	drain(t, in.pipeline())
	saved := in.progress().LastSuccessTime
	if saved == nil {
		t.Fatal("no success saved")
	}
	in.pipeline() // a restart: Init only, no round
	gauge := func(name string) float64 {
		families, err := in.metrics.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == name {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("%s not registered", name)
		return 0
	}
	if got := gauge("collector_last_success_timestamp_seconds"); got != float64(saved.Unix()) {
		t.Errorf("after a restart the last success reads %v, want the saved %v", got, saved.Unix())
	}

	// A success dated ahead, written into the state by hand (it lives in the tenant's
	// namespace): not believed, so the alert on the time since the last success can fire.
	forged := in.progress()
	ahead := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	forged.LastSuccessTime = &ahead
	raw, err := json.Marshal(forged)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in.stateFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	in.pipeline()
	if got := gauge("collector_last_success_timestamp_seconds"); got != 0 {
		t.Errorf("after a restart on a state dated 2099 the last success reads %v, want none (0)", got)
	}
	cfg, err := collector.LoadConfig(in.config)
	if err != nil {
		t.Fatal(err)
	}
	if got := gauge("collector_export_interval_seconds"); got != cfg.IntervalDuration().Seconds() || got == 0 {
		t.Errorf("collector_export_interval_seconds = %v, want %v", got, cfg.IntervalDuration().Seconds())
	}
}

// TestARoundThatSendsNothingIsASuccessOnlyWhenTheReceiverAnswers: an idle instance, and a
// CriticalOnly one between two days' publications, report success (the last-success time behind
// Exporting, and the gauge the export-stopped alert reads) only while the receiver answers for
// the instance: not through an outage, and not with credentials issued for another instance.
func TestARoundThatSendsNothingIsASuccessOnlyWhenTheReceiverAnswers(t *testing.T) {
	for _, tier := range []v1.ConsentTier{v1.TierEventLevel, v1.TierCriticalOnly} {
		t.Run(string(tier), func(t *testing.T) {
			in := newInstance(t, tier, 100)
			in.insert("SearchSubmitted", 5, 2, `{}`)
			other := newInstance(t, tier, 100)
			p := in.pipeline()
			drain(t, p)
			fc := clocktesting.NewFakeClock(time.Now())
			p.Clock = fc
			healthy := p.Client
			gauge := func() float64 {
				t.Helper()
				families, err := in.metrics.Gather()
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range families {
					if f.GetName() == "collector_last_success_timestamp_seconds" {
						return f.GetMetric()[0].GetGauge().GetValue()
					}
				}
				t.Fatal("collector_last_success_timestamp_seconds not registered")
				return 0
			}
			round := func(client *deliver.Client) error {
				t.Helper()
				p.Client = client
				// A day a round: a CriticalOnly instance has a day due each round, its cells
				// all suppressed (two users), so nothing is sent.
				fc.Step(25 * time.Hour)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_, err := p.RunOnce(ctx)
				return err
			}
			succeeded := func(what string, want bool) {
				t.Helper()
				last := p.Progress().LastSuccessTime
				fresh := last != nil && last.Equal(fc.Now().UTC())
				if fresh != want {
					t.Errorf("%s: last success %v at %v: fresh = %v, want %v", what, last, fc.Now().UTC(), fresh, want)
				}
				if g := gauge(); (g == float64(fc.Now().Unix())) != want {
					t.Errorf("%s: collector_last_success_timestamp_seconds = %v at %v, want fresh = %v", what, g, fc.Now().Unix(), want)
				}
				saved := in.progress() // what the operator reads
				if savedFresh := saved.LastSuccessTime != nil && saved.LastSuccessTime.Equal(fc.Now().UTC()); savedFresh != want {
					t.Errorf("%s: saved last success %v at %v: fresh = %v, want %v", what, saved.LastSuccessTime, fc.Now().UTC(), savedFresh, want)
				}
				if (saved.LastError == "") != want {
					t.Errorf("%s: saved lastError %q", what, saved.LastError)
				}
			}

			if err := round(healthy); err != nil {
				t.Fatal(err)
			}
			succeeded("an idle round, receiver up", true)
			through := p.Progress().AggregatesThrough

			// Nothing listens on port 1 of the loopback address: the receiver is down.
			down := in.client("https://localhost:1", in.config)
			down.OnRetry = healthy.OnRetry
			if err := round(down); err == nil {
				t.Error("an idle round succeeded with the receiver down")
			}
			succeeded("an idle round, receiver down", false)

			// The certificate of another instance: the receiver answers, but for that one.
			stolen := in.client(rcv.URL, other.config)
			err := round(stolen)
			if err == nil || !strings.Contains(err.Error(), "another instance") {
				t.Errorf("an idle round with another instance's certificate: err = %v, want it named", err)
			}
			succeeded("an idle round, another instance's certificate", false)

			if err := round(healthy); err != nil {
				t.Fatal(err)
			}
			succeeded("an idle round, receiver back", true)
			if tier == v1.TierCriticalOnly && p.Progress().AggregatesThrough <= through {
				t.Errorf("no day fell due while the receiver was not answering (published through %q, then %q): the test did not reach that path",
					through, p.Progress().AggregatesThrough)
			}
		})
	}
}

// A full round of rows the allow-list passes over, its cursor held back by a transaction in
// flight, sends nothing and is followed at once by the next: it asks the receiver nothing (one
// request per such round would be a request per batch of rows never sent), and it is no success
// either, so an error standing from the rounds before it stays in status until the receiver
// answers again.
func TestAFullRoundOfPassedOverRowsNeitherAsksTheReceiverNorClearsItsError(t *testing.T) {
	const batchSize = 10
	in := newInstance(t, v1.TierEventLevel, batchSize)
	in.insert("SearchSubmitted", 3, 2, `{}`)
	p := in.pipeline()
	drain(t, p)
	fc := clocktesting.NewFakeClock(time.Now())
	p.Clock = fc
	healthy := p.Client
	// Nothing listens on port 1 of the loopback address: the receiver is down, and every
	// request to it fails (after its retries, within the round's deadline).
	down := in.client("https://localhost:1", in.config)
	down.OnRetry = healthy.OnRetry
	round := func(client *deliver.Client) (bool, error) {
		t.Helper()
		p.Client = client
		fc.Step(time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return p.RunOnce(ctx)
	}

	if _, err := round(down); err == nil {
		t.Fatal("an idle round succeeded with the receiver down")
	}
	failedAt := p.Progress().LastSuccessTime
	standing := p.Progress().LastError
	if standing == "" || in.progress().LastError == "" {
		t.Fatalf("an idle round with the receiver down left no lastError (in memory %q, saved %q)", standing, in.progress().LastError)
	}

	ctx := context.Background()
	tx, err := in.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SELECT txid_current()"); err != nil { // holds a transaction id
		t.Fatal(err)
	}
	cursor := p.Cursor()
	in.insert("UserSignedUp", batchSize, 2, `{}`) // not listed: passed over
	storedBefore := in.stored()

	more, err := round(down)
	if err != nil {
		t.Fatalf("a full round of passed-over rows failed with the receiver down (it asked the receiver): %v", err)
	}
	if !more {
		t.Fatal("the round was not full: the test did not reach that path")
	}
	if p.Cursor() != cursor {
		t.Fatalf("the cursor moved from %d to %d with a transaction in flight: the test did not reach that path", cursor, p.Cursor())
	}
	if got := p.Progress().LastSuccessTime; (got == nil) != (failedAt == nil) || (got != nil && !got.Equal(*failedAt)) {
		t.Errorf("a round that heard nothing from the receiver counted as a success: last success %v, was %v", got, failedAt)
	}
	if got := p.Progress().LastError; got != standing {
		t.Errorf("a round that heard nothing from the receiver changed lastError from %q to %q", standing, got)
	}
	if got := in.progress().LastError; got == "" {
		t.Error("a round that heard nothing from the receiver cleared the saved lastError")
	}

	// The next round finds nothing new: it is idle, and asks the receiver, which is down.
	if _, err := round(down); err == nil {
		t.Error("an idle round after the full one succeeded with the receiver down")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	drainWith := func() {
		t.Helper()
		for {
			more, err := round(healthy)
			if err != nil {
				t.Fatal(err)
			}
			if !more {
				return
			}
		}
	}
	drainWith()
	if p.Progress().LastError != "" || in.progress().LastError != "" {
		t.Errorf("lastError %q (saved %q) once the receiver answers again", p.Progress().LastError, in.progress().LastError)
	}
	if in.stored() != storedBefore {
		t.Errorf("stored %d events, want %d: passed-over rows left the instance", in.stored(), storedBefore)
	}
}
