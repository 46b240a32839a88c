/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/deliver"
	"github.com/sourcegraph/telemetry-operator/collector/scrub"
	"github.com/sourcegraph/telemetry-operator/collector/source"
	"github.com/sourcegraph/telemetry-operator/collector/state"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
	"github.com/sourcegraph/telemetry-operator/internal/tlsreload"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

// The collector tests run against a real receiver (real PostgreSQL, real mutual TLS) and real
// instance databases with Sourcegraph's event_logs schema (testdata/event_logs.sql).

var (
	rcv          *receivertest.Receiver
	rcvClock     *clocktesting.FakeClock
	collectorBin string
	dbCounter    atomic.Int64
)

func TestMain(m *testing.M) {
	ctx := context.Background()
	var err error
	// The receiver's clock dates consent transitions; the consent tests move it to lay out a
	// ledger with periods in the past.
	rcvClock = clocktesting.NewFakeClock(time.Now())
	rcv, err = receivertest.StartWith(ctx, receivertest.Options{Limits: server.DefaultLimits(), Clock: rcvClock})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the receiver:", err)
		os.Exit(1)
	}
	dir, _ := os.MkdirTemp("", "collector-bin-")
	collectorBin = filepath.Join(dir, "collector")
	build := exec.Command("go", "build", "-o", collectorBin, "./cmd/collector")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the collector: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	rcv.Close()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// instance is one simulated managed instance: its database, files and configuration.
type instance struct {
	t         testing.TB
	id        string
	db        *pgxpool.Pool
	dsn       string
	dir       string
	config    string
	stateFile string
	key       []byte
	// logs holds what the instance's in-process pipelines logged, for leak checks.
	logs receivertest.LogBuffer
	// metrics is the registry of the pipeline's metrics, for leak checks.
	metrics *prometheus.Registry
}

// grant lays timeline out in the receiver's ledger for instance id, dating each transition by
// setting the receiver's clock to it (the ledger dates later transitions when it records them).
func grant(t testing.TB, id string, timeline consentv1.Timeline) {
	t.Helper()
	defer rcvClock.SetTime(time.Now())
	for _, tr := range timeline {
		rcvClock.SetTime(tr.At)
		if tr.Reason == "" {
			tr.Reason = "Declared"
		}
		if err := rcv.Record(context.Background(), id, tr); err != nil {
			t.Fatal(err)
		}
	}
}

// consentSince is when the test instances' consent began (by default: long before any test
// row, even the one dated before the receiver accepts).
var consentSince = time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)

func newInstance(t testing.TB, tier v1.ConsentTier, batchSize int) *instance {
	t.Helper()
	return newInstanceConsent(t, tier, batchSize, consentv1.Timeline{{At: consentSince, Tier: consentv1.Tier(tier)}})
}

// newInstanceConsent creates an instance whose consent timeline, at the receiver and in the
// configuration, is timeline (laid out at the receiver by moving its clock to each transition).
func newInstanceConsent(t testing.TB, tier v1.ConsentTier, batchSize int, timeline consentv1.Timeline) *instance {
	t.Helper()
	ctx := context.Background()
	id := fmt.Sprintf("inst-%d", dbCounter.Add(1))
	dbName := strings.ReplaceAll(id, "-", "_")
	if err := rcv.PG.CreateDatabase(ctx, dbName); err != nil {
		t.Fatal(err)
	}
	schema, err := os.ReadFile("testdata/event_logs.sql")
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.PG.Exec(ctx, dbName, string(schema)); err != nil {
		t.Fatal(err)
	}
	// The collector connects as the read-only role.
	dsn := strings.Replace(rcv.PG.DSN(dbName), "postgres@", "telemetry_reader@", 1)
	admin, err := pgxpool.New(ctx, rcv.PG.DSN(dbName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	clientDir, err := rcv.ClientFiles(id, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	in := &instance{t: t, id: id, db: admin, dsn: dsn, dir: dir, key: key, stateFile: filepath.Join(dir, "state.json")}
	grant(t, id, timeline)
	cfg := collectorconfig.Config{
		InstanceID: id, Tier: tier, Endpoint: rcv.URL, Interval: "1s", BatchSize: batchSize, Consent: timeline,
		TLS:              collectorconfig.TLSFiles{CertFile: filepath.Join(clientDir, "tls.crt"), KeyFile: filepath.Join(clientDir, "tls.key"), CAFile: filepath.Join(clientDir, "ca.crt")},
		PseudonymKeyFile: write("pseudonym-key", key), DatabaseDSNFile: write("dsn", []byte(dsn+"\n")),
		State: collectorconfig.StateRef{Namespace: "ns", ConfigMap: "state"},
	}
	in.config = filepath.Join(dir, "config.json")
	in.writeConfig(cfg)
	return in
}

func (in *instance) writeConfig(cfg collectorconfig.Config) {
	in.t.Helper()
	data, err := collectorconfig.Render(cfg)
	if err != nil {
		in.t.Fatal(err)
	}
	tmp := in.config + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		in.t.Fatal(err)
	}
	if err := os.Rename(tmp, in.config); err != nil {
		in.t.Fatal(err)
	}
}

func (in *instance) setTier(tier v1.ConsentTier) {
	in.t.Helper()
	cfg, err := collector.LoadConfig(in.config)
	if err != nil {
		in.t.Fatal(err)
	}
	cfg.Tier = tier
	in.writeConfig(*cfg)
}

// pipeline builds an in-process pipeline over the instance, with fast retries.
func (in *instance) pipeline() *collector.Pipeline {
	in.t.Helper()
	ctx := context.Background()
	cfg, err := collector.LoadConfig(in.config)
	if err != nil {
		in.t.Fatal(err)
	}
	reader, err := source.Open(ctx, in.dsn)
	if err != nil {
		in.t.Fatal(err)
	}
	in.t.Cleanup(reader.Close)
	s, err := scrub.New(in.key)
	if err != nil {
		in.t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(&in.logs, nil))
	client := in.client(cfg.Endpoint, in.config)
	p := &collector.Pipeline{ConfigPath: in.config, Reader: reader, Scrubber: s, Client: client,
		State: state.File{Path: in.stateFile}, Clock: clock.RealClock{}, Log: log, Metrics: collector.NewMetrics(in.newRegistry())}
	if err := p.Init(ctx); err != nil {
		in.t.Fatal(err)
	}
	return p
}

// client builds a delivery client for endpoint with the TLS files of the configuration at
// config (fast retries), logging where the instance's pipelines log.
func (in *instance) client(endpoint, config string) *deliver.Client {
	in.t.Helper()
	cfg, err := collector.LoadConfig(config)
	if err != nil {
		in.t.Fatal(err)
	}
	tc, err := tlsreload.NewClient(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.CAFile)
	if err != nil {
		in.t.Fatal(err)
	}
	c := deliver.New(endpoint, newTransport(tc), slog.New(slog.NewJSONHandler(&in.logs, nil)))
	c.BaseBackoff, c.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	return c
}

// newRegistry gives each pipeline of the instance a fresh metrics registry (kept for leak checks).
func (in *instance) newRegistry() *prometheus.Registry {
	in.metrics = prometheus.NewRegistry()
	return in.metrics
}

// drain runs rounds until one reads nothing new.
func drain(t testing.TB, p *collector.Pipeline) {
	t.Helper()
	for range 10000 {
		more, err := p.RunOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			return
		}
	}
	t.Fatal("the backlog never drained")
}

func (in *instance) exec(sql string, args ...any) {
	in.t.Helper()
	if _, err := in.db.Exec(context.Background(), sql, args...); err != nil {
		in.t.Fatal(err)
	}
}

// insert adds n events of name for users 1..users, spread over the last days.
func (in *instance) insert(name string, n, users int, publicArg string) {
	in.t.Helper()
	in.exec(`INSERT INTO event_logs (name, url, user_id, source, public_argument, version, timestamp, argument)
SELECT $1, 'https://sourcegraph.example.com/x', (g % $3) + 1, 'WEB', $4::jsonb, '5.3.0', now() - (g % 20) * interval '1 hour', '{}'::jsonb
FROM generate_series(1, $2) g`, name, n, users, publicArg)
}

func (in *instance) stored() int {
	in.t.Helper()
	n, err := rcv.Count(context.Background(), "events", in.id)
	if err != nil {
		in.t.Fatal(err)
	}
	return n
}

func (in *instance) count(where string, args ...any) int {
	in.t.Helper()
	var n int
	if err := in.db.QueryRow(context.Background(), "SELECT count(*) FROM event_logs WHERE "+where, args...).Scan(&n); err != nil {
		in.t.Fatal(err)
	}
	return n
}

func (in *instance) progress() collectorconfig.Progress {
	in.t.Helper()
	raw, err := os.ReadFile(in.stateFile)
	if err != nil {
		in.t.Fatal(err)
	}
	var p collectorconfig.Progress
	if err := json.Unmarshal(raw, &p); err != nil {
		in.t.Fatal(err)
	}
	return p
}

func writeFileErr(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
