/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/deliver"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
	"github.com/sourcegraph/telemetry-operator/internal/tlsreload"
)

func newTransport(c *tlsreload.Client) *http.Transport {
	return &http.Transport{TLSClientConfig: c.TLSConfig("localhost")}
}

// personalData must never leave an instance. It is placed in every column of event_logs.
var personalData = []string{
	"alice@acme-corp.com", "Alice Liddell", "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
	"https://sourcegraph.acme-corp.com/github.com/acme/secret-repo/-/blob/main.go",
	"github.com/acme/secret-repo", "cmd/frontend/internal/auth/session.go", "repo:acme/secret password=hunter2",
	"10.20.30.40", "/home/alice/.ssh/id_rsa", "device-7f3a9c", "billing-evt-99812", "insert-id-5521",
}

// seedPersonalData writes one row per allow-listed event (plus unlisted ones) for several users,
// with personal data in every column, including nested in argument and public_argument. Rows are
// dated on closed days, so the CriticalOnly tier publishes their aggregates.
func seedPersonalData(in *instance) {
	names := append(catalogv1.Current().Names(), "UserSignedUp", "PasswordChanged", "ViewRepository")
	for u := 1; u <= 6; u++ {
		for _, name := range names {
			for i, pii := range personalData {
				pub := map[string]any{"query": pii, "patternType": pii, "languageId": pii, "durationMs": pii, "source": pii,
					"nested": map[string]any{"email": pii}, pii: "x"}
				if i%3 == 0 { // some rows carry valid allowed values too, next to the personal ones
					pub["patternType"], pub["languageId"], pub["durationMs"] = "regexp", "go", 12
				}
				pubJSON, _ := json.Marshal(pub)
				arg, _ := json.Marshal(map[string]any{"query": pii, "repo": pii, "deep": map[string]any{"path": pii}})
				flags, _ := json.Marshal(map[string]any{pii: true, "search-ranking": true})
				// Every signed-in user also records versions that are personal data, so an
				// aggregate cell over them would have enough users to escape suppression.
				version := "5.3.0"
				if i%2 == 1 {
					version = pii
				}
				in.exec(`INSERT INTO event_logs (name, url, user_id, anonymous_user_id, source, argument, public_argument, version, timestamp,
					feature_flags, cohort_id, first_source_url, last_source_url, referrer, device_id, insert_id, billing_product_category, billing_event_id, client)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() - interval '60 hours' - $9 * interval '1 hour', $10, current_date, $2, $2, $2, $2, $2, $2, $2, $11)`,
					name, pii, u, "", "WEB", string(arg), string(pubJSON), version, i, string(flags), "VSCODE_CODY_EXTENSION")
				// Anonymous users too, with personal data in the anonymous id.
				in.exec(`INSERT INTO event_logs (name, url, user_id, anonymous_user_id, source, public_argument, version, client, timestamp)
					VALUES ($1, $2, 0, $2, $3, $4, $2, $2, now() - interval '60 hours')`, name, pii, "WEB", string(pubJSON))
			}
		}
	}
}

func assertNoPersonalData(t *testing.T, in *instance) {
	t.Helper()
	var everything strings.Builder
	for _, b := range rcv.Bodies() {
		// The receiver is shared between tests: look at this instance's requests.
		if strings.Contains(string(b), `"instanceID":"`+in.id+`"`) {
			everything.Write(b)
		}
	}
	ctx := context.Background()
	for _, q := range []string{
		"SELECT coalesce(string_agg(to_jsonb(e)::text, ' '), '') FROM events e WHERE instance_id = $1",
		"SELECT coalesce(string_agg(to_jsonb(a)::text, ' '), '') FROM aggregates a WHERE instance_id = $1",
	} {
		var dump string
		if err := rcv.DB.QueryRow(ctx, q, in.id).Scan(&dump); err != nil {
			t.Fatal(err)
		}
		everything.WriteString(dump)
	}
	all := everything.String()
	if !strings.Contains(all, in.id) {
		t.Fatal("the leak check saw none of this instance's data: it would pass vacuously")
	}
	for _, pii := range personalData {
		for _, form := range []string{pii, strings.Trim(mustJSON(pii), `"`)} {
			if i := strings.Index(all, form); i >= 0 {
				t.Fatalf("personal data %q reached the receiver: …%s…", pii, all[max(0, i-200):min(len(all), i+100)])
			}
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestPersonalDataNeverLeavesEventLevel(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 500)
	seedPersonalData(in)
	p := in.pipeline()
	drain(t, p)
	if n := in.stored(); n == 0 {
		t.Fatal("nothing was exported")
	}
	// Every allow-listed row arrived; no unlisted one did.
	var unlisted int
	_ = rcv.DB.QueryRow(context.Background(), "SELECT count(*) FROM events WHERE instance_id = $1 AND name IN ('UserSignedUp','PasswordChanged','ViewRepository')", in.id).Scan(&unlisted)
	if unlisted != 0 {
		t.Fatalf("%d unlisted events exported", unlisted)
	}
	if want := in.count("name = ANY($1)", catalogv1.Current().Names()); in.stored() != want {
		t.Fatalf("stored %d events, want every allow-listed row (%d)", in.stored(), want)
	}
	assertNoPersonalData(t, in)
	if p.Progress().EventsDropped == 0 {
		t.Fatal("unlisted events must be counted as dropped")
	}
}

func TestPersonalDataNeverLeavesCriticalOnly(t *testing.T) {
	in := newInstance(t, v1.TierCriticalOnly, 500)
	seedPersonalData(in)
	p := in.pipeline()
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	var cells int
	_ = rcv.DB.QueryRow(context.Background(), "SELECT count(*) FROM aggregates WHERE instance_id = $1", in.id).Scan(&cells)
	if cells == 0 {
		t.Fatal("no aggregates were exported")
	}
	if in.stored() != 0 {
		t.Fatal("CriticalOnly exported per-user events")
	}
	assertNoPersonalData(t, in)
}

func TestRowCommittedLateWithALowerIDIsDelivered(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	p := in.pipeline()
	ctx := context.Background()

	slow, err := in.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lowID int64
	if err := slow.QueryRow(ctx, `INSERT INTO event_logs (name, user_id, source, version) VALUES ('ViewBlob', 1, 'WEB', '5.3.0') RETURNING id`).Scan(&lowID); err != nil {
		t.Fatal(err)
	}
	var highID int64
	if err := in.db.QueryRow(ctx, `INSERT INTO event_logs (name, user_id, source, version) VALUES ('hover', 2, 'WEB', '5.3.0') RETURNING id`).Scan(&highID); err != nil {
		t.Fatal(err)
	}
	if highID <= lowID {
		t.Fatalf("ids %d, %d: the slow transaction must hold the lower id", lowID, highID)
	}
	drain(t, p)
	if in.stored() != 1 {
		t.Fatalf("stored %d, want the committed higher id only", in.stored())
	}
	if c := p.Cursor(); c >= lowID {
		t.Fatalf("cursor %d passed id %d of a transaction still in flight", c, lowID)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	drain(t, p)
	var got []string
	rows, _ := rcv.DB.Query(ctx, "SELECT event_id::text FROM events WHERE instance_id = $1 ORDER BY event_id", in.id)
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		got = append(got, id)
	}
	rows.Close()
	if want := []string{fmt.Sprint(lowID), fmt.Sprint(highID)}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("stored %v, want %v", got, want)
	}
	if c := p.Cursor(); c != highID {
		t.Fatalf("cursor %d, want %d once nothing is in flight", c, highID)
	}
	// A rolled-back transaction leaves a permanent gap, which must not hold the cursor forever.
	tx, _ := in.db.Begin(ctx)
	_, _ = tx.Exec(ctx, `INSERT INTO event_logs (name, user_id, source, version) VALUES ('hover', 3, 'WEB', '5.3.0')`)
	in.insert("ViewBlob", 1, 1, `{}`)
	drain(t, p)
	_ = tx.Rollback(ctx)
	drain(t, p)
	var maxID int64
	_ = in.db.QueryRow(ctx, "SELECT max(id) FROM event_logs").Scan(&maxID)
	if c := p.Cursor(); c != maxID {
		t.Fatalf("cursor %d stuck behind a rolled-back transaction, want %d", c, maxID)
	}
}

func TestCrashMidBatchLosesNothing(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 200)
	in.insert("UserSignedUp", 500, 40, `{}`)
	in.insert("SearchSubmitted", 6000, 40, `{"patternType":"literal"}`)
	want := in.count("name = 'SearchSubmitted'")
	metricsAddr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	start := func() *exec.Cmd {
		cmd := exec.Command(collectorBin, "--config", in.config, "--state-file", in.stateFile, "--metrics-addr", metricsAddr)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	// Slow the receiver down so the kills land mid-stream.
	rcv.SetIntercept(func(http.ResponseWriter, *http.Request, []byte) bool { time.Sleep(5 * time.Millisecond); return false })
	defer rcv.SetIntercept(nil)
	for kill := 0; kill < 4; kill++ {
		cmd := start()
		target := (kill + 1) * want / 6
		deadline := time.Now().Add(60 * time.Second)
		for in.stored() < target && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	cmd := start()
	var maxID int64
	_ = in.db.QueryRow(context.Background(), "SELECT max(id) FROM event_logs").Scan(&maxID)
	deadline := time.Now().Add(90 * time.Second)
	for testenv.ScrapeMetric("http://"+metricsAddr+"/metrics", "collector_cursor") < float64(maxID) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the collector did not stop cleanly on SIGTERM: %v", err)
	}
	if got := in.stored(); got != want {
		t.Fatalf("stored %d events after crashes, want %d exactly once each", got, want)
	}
	if c := in.progress().Cursor; c != maxID {
		t.Fatalf("saved cursor %d after SIGTERM, want %d", c, maxID)
	}
}

func TestReceiverOutageThenBacklogDrains(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("ViewBlob", 250, 10, `{"languageId":"go"}`)
	p := in.pipeline()
	var down sync.Mutex
	outage := true
	rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		down.Lock()
		defer down.Unlock()
		if outage && r.URL.Path == batchv1.PathBatches {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	defer rcv.SetIntercept(nil)
	done := make(chan error, 1)
	go func() {
		for {
			more, err := p.RunOnce(context.Background())
			if err != nil || !more {
				done <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if in.stored() != 0 {
		t.Fatal("stored during the outage")
	}
	if got := p.Progress().LastError; !strings.Contains(got, "delivery retrying (503)") {
		t.Fatalf("the outage is not visible in the progress report while it lasts: lastError %q", got)
	}
	down.Lock()
	outage = false
	down.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	drain(t, p)
	if in.stored() != 250 {
		t.Fatalf("stored %d, want 250 after the outage", in.stored())
	}
	if pr := p.Progress(); pr.LastError != "" {
		t.Fatalf("lastError %q remains after recovery", pr.LastError)
	}
}

func TestOneRejectedEventIsQuarantinedAndTheRestDelivered(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("hover", 40, 5, `{"languageId":"go"}`)
	// The receiver refuses timestamps before 2000; the collector does not judge them.
	in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', 1, 'WEB', '5.3.0', '1999-12-31T00:00:00Z')`)
	in.insert("hover", 40, 5, `{"languageId":"go"}`)
	p := in.pipeline()
	drain(t, p)
	if in.stored() != 80 {
		t.Fatalf("stored %d, want 80 (all but the bad one)", in.stored())
	}
	var maxID int64
	_ = in.db.QueryRow(context.Background(), "SELECT max(id) FROM event_logs").Scan(&maxID)
	if pr := p.Progress(); pr.EventsDropped != 1 || pr.Cursor != maxID {
		t.Fatalf("progress %+v: want one quarantined event and the cursor past it", pr)
	}
}

func TestLoweredTierIsObeyedByTheNextBatch(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("SearchSubmitted", 50, 10, `{"patternType":"regexp"}`)
	p := in.pipeline()
	drain(t, p)
	if in.stored() != 50 {
		t.Fatalf("stored %d", in.stored())
	}
	in.setTier(v1.TierCriticalOnly)
	// Rows of a closed day recorded under EventLevel, read after the tier was lowered: they are
	// neither sent nor counted (the receiver holds that period's events one by one; cells counting
	// them could be differenced against them).
	in.exec(`INSERT INTO event_logs (name, user_id, source, public_argument, version, timestamp)
		SELECT 'SearchSubmitted', (g % 10) + 1, 'WEB', '{"patternType":"regexp"}', '5.3.0', now() - interval '3 days' - g * interval '1 minute'
		FROM generate_series(1, 50) g`)
	drain(t, p)
	if in.stored() != 50 {
		t.Fatalf("events exported after the tier was lowered: %d", in.stored())
	}
	if cells := publishedCells(t, in); len(cells) != 0 {
		t.Fatalf("aggregates counted an EventLevel period: %v", cells)
	}
	if p.Progress().AggregatesThrough != "" {
		t.Fatalf("a day before the first CriticalOnly period was marked published: %q", p.Progress().AggregatesThrough)
	}

	// A batch built under EventLevel is refused if the tier drops while it waits to be sent.
	in2 := newInstance(t, v1.TierEventLevel, 100)
	in2.insert("ViewBlob", 20, 5, `{}`)
	p2 := in2.pipeline()
	var once sync.Once
	rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if r.URL.Path != batchv1.PathBatches {
			return false
		}
		once.Do(func() { in2.setTier(v1.TierCriticalOnly) })
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	_, err := p2.RunOnce(context.Background())
	rcv.SetIntercept(nil)
	if !errors.Is(err, deliver.ErrConsent) {
		t.Fatalf("error %v, want the consent guard to refuse", err)
	}
	if in2.stored() != 0 {
		t.Fatal("an EventLevel batch was delivered after the tier was lowered")
	}
}

func TestOffRefusesToStart(t *testing.T) {
	in := newInstance(t, v1.TierOff, 100)
	out, err := exec.Command(collectorBin, "--config", in.config, "--state-file", in.stateFile).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "consent tier is Off") {
		t.Fatalf("exit %v, output %q", err, out)
	}
}

func TestBadConfigurationNamesTheField(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/config.json"
	_ = os.WriteFile(path, []byte(`{"version":1,"instanceID":"acme","tier":"EventLevel","endpoint":"http://x","interval":"5m","batchSize":5000,"consent":[],"tls":{"certFile":"/a","keyFile":"/b","caFile":"/c"},"pseudonymKeyFile":"/d","databaseDSNFile":"/e","state":{"namespace":"n","configMap":"c"}}`), 0o600)
	out, err := exec.Command(collectorBin, "--config", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "endpoint:") {
		t.Fatalf("exit %v, output %q", err, out)
	}
	_, err = collector.LoadConfig(dir + "/missing.json")
	if err == nil {
		t.Fatal("a missing configuration is accepted")
	}
}

// TestBacklogIsSentTwoBatchesAtATimeAndTheReceiverCursorCatchesUp drains a backlog of exactly
// four full rounds, which the pipeline sends as two pairs of batches in flight. The second batch
// of a pair carries an older cursor, so when the backlog ends on a pair the receiver's cursor
// trails; the next (empty) round must send the cursor on its own. Every event is stored once
// and, afterwards, the receiver's cursor is the newest id, as a collector without saved progress
// would ask for.
func TestBacklogIsSentTwoBatchesAtATimeAndTheReceiverCursorCatchesUp(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("SearchSubmitted", 400, 7, `{"patternType":"literal"}`)
	p := in.pipeline()
	ctx := context.Background()
	calls := 0
	for {
		more, err := p.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		calls++
		if !more {
			break
		}
	}
	if got := in.stored(); got != 400 {
		t.Fatalf("stored %d events, want 400", got)
	}
	// Four full rounds in pairs take two calls; then one call finds nothing new and, with the
	// receiver's cursor trailing by the last batch, sends the cursor alone.
	if calls != 3 {
		t.Errorf("drained in %d rounds, want 3 (two pairs, then the cursor)", calls)
	}
	var newest int64
	if err := in.db.QueryRow(ctx, `SELECT max(id) FROM event_logs`).Scan(&newest); err != nil {
		t.Fatal(err)
	}
	cursor, known, err := rcv.Store.Cursor(ctx, in.id)
	if err != nil || !known {
		t.Fatalf("receiver cursor: %v (known %v)", err, known)
	}
	if cursor != newest || p.Cursor() != newest {
		t.Fatalf("receiver cursor %d, collector cursor %d, want both at the newest id %d", cursor, p.Cursor(), newest)
	}
}

// TestBatchSizeChangeMidBacklogKeepsGoing changes the batch size while a round read ahead under
// the old size is waiting: that round must still count as full, so the pipeline reports more
// work instead of idling for an interval with the backlog half drained.
func TestBatchSizeChangeMidBacklogKeepsGoing(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	in.insert("SearchSubmitted", 600, 7, `{"patternType":"literal"}`)
	p := in.pipeline()
	ctx := context.Background()
	if more, err := p.RunOnce(ctx); err != nil || !more {
		t.Fatalf("first round: more %v, err %v", more, err)
	}
	cfg, err := collector.LoadConfig(in.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg.BatchSize = 250
	in.writeConfig(*cfg)
	if more, err := p.RunOnce(ctx); err != nil || !more {
		t.Fatalf("round after the batch size grew: more %v, err %v; want more (only %d of 600 stored)", more, err, in.stored())
	}
	drain(t, p)
	if got := in.stored(); got != 600 {
		t.Fatalf("stored %d, want 600", got)
	}
}
