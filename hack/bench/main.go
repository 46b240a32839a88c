/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command bench measures the system against its targets and prints figures and ratios, every
// baseline measured in the same run on the same machine (see `make bench`):
//
//   - collector end-to-end throughput (event_logs -> stored at the receiver) against a raw
//     COPY of the same rows, and per stage;
//   - receiver ingest throughput, new and re-sent (de-duplicated);
//   - collector peak memory for a small and a large backlog (it must not grow with the backlog);
//   - operator convergence for many policies against a plain client creating the same objects,
//     API writes while idle, and manager peak memory.
//
// Sizes are flags; BENCH_FULL=1 uses the sizes (5,000,000-row backlog, 1,000 policies in
// 100 namespaces, 60 s of idleness).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5/pgxpool"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	dto "github.com/prometheus/client_model/go"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/deliver"
	"github.com/sourcegraph/telemetry-operator/collector/scrub"
	"github.com/sourcegraph/telemetry-operator/collector/source"
	"github.com/sourcegraph/telemetry-operator/collector/state"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
	"github.com/sourcegraph/telemetry-operator/internal/tlsreload"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
)

type result struct {
	name, value, target string
	ok                  *bool
}

var results []result

func record(name, value, target string, ok *bool) {
	results = append(results, result{name, value, target, ok})
	mark := "    "
	if ok != nil {
		mark = "ok  "
		if !*ok {
			mark = "MISS"
		}
	}
	fmt.Printf("  [%s] %-58s %-26s %s\n", mark, name, value, target)
}

func b(v bool) *bool { return &v }

func main() {
	// The harness's own Kubernetes clients would otherwise print a warning with a stack trace.
	logf.SetLogger(logr.Discard())
	full := os.Getenv("BENCH_FULL") == "1"
	rows := flag.Int("rows", 300_000, "Rows for the throughput run.")
	rounds := flag.Int("rounds", 5, "Alternating COPY/collector rounds for the throughput figures (medians are reported).")
	backlogSmall := flag.Int("backlog-small", 100_000, "Backlog for the small memory run.")
	backlogLarge := flag.Int("backlog-large", 1_000_000, "Backlog for the large memory run.")
	policies := flag.Int("policies", 200, "Policies for the operator scale run.")
	namespaces := flag.Int("namespaces", 20, "Namespaces for the operator scale run.")
	idle := flag.Duration("idle", 20*time.Second, "Idle window for counting API writes.")
	bin := flag.String("bin", "bin", "Directory with the manager, collector and receiver binaries.")
	kubectl := flag.String("kubectl", "", "kubectl binary.")
	installer := flag.String("installer", "dist/install.yaml", "The rendered installer (make build-installer): the operator runs with its RBAC.")
	managerArgs := flag.String("manager-args", "", "More flags for the manager in the operator scale run (space-separated), such as --max-concurrent-reconciles=16.")
	only := flag.String("only", "", "Run only: collector, receiver, history, memory, abuse, operator or live.")
	history := flag.Int("history-events", 50_000_000, "Events prefilled for the receiver-with-history run.")
	livePolicies := flag.Int("live-policies", 10, "Policies with running collectors for the live API-write run.")
	liveWindow := flag.Duration("live-window", 60*time.Second, "Window for counting API writes with collectors running.")
	abuseClients := flag.Int("abuse-clients", 16, "Flooding clients in the abuse run.")
	abuseFor := flag.Duration("abuse-for", 15*time.Second, "Length of the abuse run.")
	flag.BoolVar(&managerBaseline, "manager-baseline", true, "In the operator scale run, also measure a plain client with the manager's identity (informational; at 5,000 policies it takes about 17 minutes).")
	flag.StringVar(&apiserverCPUProfile, "apiserver-cpuprofile", "", "Write a CPU profile of the API server, taken over the first 30 s of the operator's convergence, to this file.")
	flag.StringVar(&managerHeapProfile, "manager-heap-profile", "", "Write the manager's heap profile, taken once the operator scale run converged, to this file (and its goroutines to FILE.goroutines.txt).")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "Write a CPU profile of the last collector throughput run (the in-process collector and receiver) to this file.")
	flag.Parse()
	if full {
		*rows, *backlogSmall, *backlogLarge, *policies, *namespaces, *idle = 1_000_000, 500_000, 5_000_000, 1000, 100, 60*time.Second
		*abuseClients, *abuseFor = 32, 60*time.Second
	}
	defer exitOnFailure()
	ctx := context.Background()
	run := func(name string) bool { return *only == "" || *only == name }
	fmt.Println("telemetry-operator benchmarks (figures and ratios measured side by side in this run)")
	if run("collector") || run("receiver") || run("memory") || run("abuse") {
		r, err := receivertest.StartWith(ctx, receivertest.Options{Unrecorded: true})
		must(err)
		defer r.Close()
		if run("collector") {
			collectorThroughput(ctx, r, *rows, *rounds)
		}
		if run("receiver") {
			receiverIngest(ctx, r)
			receiverReplicas(ctx, r)
		}
		if run("memory") {
			collectorMemory(ctx, r, *bin, *backlogSmall, *backlogLarge)
		}
		if run("abuse") {
			receiverUnderAbuse(ctx, r, *bin, *abuseClients, *abuseFor)
		}
	}
	if run("history") {
		receiverHistory(ctx, *history)
	}
	if run("operator") {
		operatorScale(ctx, *bin, *kubectl, *installer, *policies, *namespaces, *idle, strings.Fields(*managerArgs))
	}
	if run("live") {
		operatorLive(ctx, stackBinaries(*bin, *kubectl, *installer), *livePolicies, *liveWindow)
	}
	fmt.Println()
	misses := 0
	for _, r := range results {
		if r.ok != nil && !*r.ok {
			misses++
		}
	}
	fmt.Printf("%d figures, %d below target\n", len(results), misses)
}

// benchFailure is what must panics with: the panic unwinds through the deferred Close of every
// stack and server started so far, and main turns it into an exit status of 1. (An os.Exit here
// left a failed run's API server, PostgreSQL and processes running.)
type benchFailure struct{ err error }

func must(err error) {
	if err != nil {
		panic(benchFailure{err})
	}
}

// exitOnFailure, deferred first in main, reports a must failure once everything is closed.
func exitOnFailure() {
	if r := recover(); r != nil {
		if f, ok := r.(benchFailure); ok {
			fmt.Fprintln(os.Stderr, "bench:", f.err)
			os.Exit(1)
		}
		panic(r)
	}
}

// instanceDB creates a database with n realistic rows (see realistic.go) on r's PostgreSQL.
func instanceDB(ctx context.Context, r *receivertest.Receiver, name string, n int) (*pgxpool.Pool, string) {
	must(r.PG.CreateDatabase(ctx, name))
	must(r.PG.Exec(ctx, name, seed.Schema))
	pool, err := pgxpool.New(ctx, r.PG.DSN(name))
	must(err)
	must(fillRealistic(ctx, pool, n))
	return pool, strings.Replace(r.PG.DSN(name), "postgres@", "telemetry_reader@", 1)
}

// benchConsentSince is when the benchmark instances' EventLevel consent began.
var benchConsentSince = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func collectorConfig(r *receivertest.Receiver, dir, id, dsn string, batch int) string {
	clientDir, err := r.ClientFiles(id, 24*time.Hour)
	must(err)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		must(os.WriteFile(p, data, 0o600))
		return p
	}
	// Consent (at the receiver and in the configuration) covers every benchmark row, so every
	// allow-listed row is stored.
	must(r.Grant(context.Background(), id, consentv1.TierEventLevel, benchConsentSince))
	cfg := collectorconfig.Config{InstanceID: id, Tier: v1.TierEventLevel, Endpoint: r.URL, Interval: "1s", BatchSize: batch,
		Consent:          consentv1.Timeline{{At: benchConsentSince, Tier: consentv1.TierEventLevel}},
		TLS:              collectorconfig.TLSFiles{CertFile: filepath.Join(clientDir, "tls.crt"), KeyFile: filepath.Join(clientDir, "tls.key"), CAFile: filepath.Join(clientDir, "ca.crt")},
		PseudonymKeyFile: write("key", key), DatabaseDSNFile: write("dsn", []byte(dsn)), State: collectorconfig.StateRef{Namespace: "n", ConfigMap: "c"}}
	data, err := collectorconfig.Render(cfg)
	must(err)
	return write("config.json", data)
}

// collectorThroughput measures the collector end to end against two baselines: a raw COPY of
// the same rows out of event_logs (the read-side limit) and a binary COPY of the events it
// stored into the receiver's table (the write-side limit). The machine's speed drifts (shared
// cores), so the three are measured in alternation, rounds times, each collector run paired with
// the baselines measured next to it; the figures reported are the medians, with the range.
// "Rows read" counts every event_logs row; "stored" only the events that reached the receiver's
// table (allow-listed rows, about five in six).
func collectorThroughput(ctx context.Context, r *receivertest.Receiver, n, rounds int) {
	fmt.Printf("\n== collector throughput (%d realistic rows, %d alternating rounds) ==\n", n, rounds)
	pool, dsn := instanceDB(ctx, r, "bench_throughput", n)
	defer pool.Close()
	conn, err := pool.Acquire(ctx)
	must(err)
	defer conn.Release()
	// The first read after loading also sets hint bits; do it once before measuring anything.
	rawCopy := func() float64 {
		start := time.Now()
		_, err := conn.Conn().PgConn().CopyTo(ctx, io.Discard, `COPY (SELECT id, name, user_id, anonymous_user_id, source, public_argument, version, timestamp, feature_flags, client FROM event_logs ORDER BY id) TO STDOUT`)
		must(err)
		return float64(n) / time.Since(start).Seconds()
	}
	rawCopy()
	metrics := collector.NewMetrics(nil)
	var copyRates, readRates, storedRates, intoRates, ratios, intoRatios []float64
	stored := 0
	for round := range rounds {
		// The baselines are the faster of two COPYs, which makes the ratios harder to meet.
		copyRate := max(rawCopy(), rawCopy())
		id := fmt.Sprintf("bench-throughput-%d", round)
		cpu0, own0, pg0 := machineCPU(), ownCPU(), postgresCPU()
		if cpuProfile != "" && round == rounds-1 {
			f, err := os.Create(cpuProfile)
			must(err)
			must(pprof.StartCPUProfile(f))
		}
		took := collectorRun(ctx, r, dsn, id, metrics)
		pprof.StopCPUProfile()
		cpu, own, pg := machineCPU()-cpu0, ownCPU()-own0, postgresCPU()-pg0
		must(r.DB.QueryRow(ctx, "SELECT count(*) FROM events WHERE instance_id = $1", id).Scan(&stored))
		if stored == 0 || stored >= n {
			must(fmt.Errorf("the collector stored %d of %d rows: the data or the filter is wrong", stored, n))
		}
		into := max(copyIntoEvents(ctx, r, id, fmt.Sprintf("bench-copy-%d-a", round), stored), copyIntoEvents(ctx, r, id, fmt.Sprintf("bench-copy-%d-b", round), stored))
		read, rate := float64(n)/took.Seconds(), float64(stored)/took.Seconds()
		copyRates, readRates, storedRates, intoRates = append(copyRates, copyRate), append(readRates, read), append(storedRates, rate), append(intoRates, into)
		ratios, intoRatios = append(ratios, rate/copyRate), append(intoRatios, rate/into)
		fmt.Printf("        round %d: COPY out %.0f rows/s, COPY into events %.0f events/s; collector %.0f rows read/s, %.0f events stored/s (%.1f%%, %.1f%%), machine busy %.2f of %d cores (%.2f in the harness's collector and receiver, %.2f in PostgreSQL)\n",
			round+1, copyRate, into, read, rate, 100*rate/copyRate, 100*rate/into, cpu.Seconds()/took.Seconds(), runtime.NumCPU(), own.Seconds()/took.Seconds(), pg.Seconds()/took.Seconds())
	}
	spread := func(v []float64, format string, scale float64) string {
		return fmt.Sprintf(format, scale*median(v), scale*slices.Min(v), scale*slices.Max(v))
	}
	record("raw COPY out of event_logs (read-side baseline)", spread(copyRates, "%.0f rows/s (%.0f-%.0f)", 1), "", nil)
	record("binary COPY into the receiver's events (write-side baseline)", spread(intoRates, "%.0f events/s (%.0f-%.0f)", 1), "", nil)
	record("collector end to end, rows read", spread(readRates, "%.0f rows/s (%.0f-%.0f)", 1), "", nil)
	record("collector end to end, events stored", spread(storedRates, "%.0f events/s (%.0f-%.0f)", 1), ">= 100,000 events/s", b(median(storedRates) >= 100_000))
	record("events stored/s over raw COPY rows/s", spread(ratios, "%.1f%% (%.1f-%.1f)", 100), ">= 40%", b(median(ratios) >= 0.40))
	record("events stored/s over COPY into events", spread(intoRatios, "%.1f%% (%.1f-%.1f)", 100), ">= 60%", b(median(intoRatios) >= 0.60))
	record("events stored per run (allow-listed rows)", fmt.Sprintf("%d of %d rows", stored, n), "", nil)
	busy := func(stage string) float64 {
		var m dto.Metric
		h, _ := metrics.StageSeconds.GetMetricWithLabelValues(stage)
		_ = h.(interface{ Write(*dto.Metric) error }).Write(&m)
		return m.GetHistogram().GetSampleSum()
	}
	// Stages by busy time (rows over the seconds spent in the stage; stages overlap in time).
	rowsPer := func(seconds float64) string { return fmt.Sprintf("%.0f rows/s", float64(n*rounds)/seconds) }
	record("  stage read", rowsPer(busy("read")), "", nil)
	record("  stage filter + pseudonymize", rowsPer(busy("filter")), "", nil)
	record("  stage encode + compress", rowsPer(busy("encode")), "", nil)
	record("  stage send (network, receiver decode and store)", rowsPer(busy("send")-busy("encode")), "", nil)
}

// managerBaseline says whether the operator scale run measures the manager-identity baseline.
var managerBaseline bool

// apiserverCPUProfile is where the operator scale run puts the API server's CPU profile.
var apiserverCPUProfile string

// managerHeapProfile is where the operator scale run puts the manager's heap profile ("" for none).
var managerHeapProfile string

// fetchTo saves what url answers into path.
func fetchTo(url, path string) error {
	resp, err := http.Get(url) //nolint:gosec // the manager's loopback endpoint
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// cpuProfile is where the last collector run's CPU profile goes ("" for none).
var cpuProfile string

// copyIntoEvents copies the events stored for instance into the receiver's table again, as
// instance as, with one binary COPY (the partitions exist already), and returns events per
// second for the COPY into the table alone.
func copyIntoEvents(ctx context.Context, r *receivertest.Receiver, instance, as string, n int) float64 {
	conn, err := r.DB.Acquire(ctx)
	must(err)
	defer conn.Release()
	const cols = "event_id, name, ts, source, version, client, user_id, feature_flags, properties, received_at, delivery"
	var stream bytes.Buffer
	_, err = conn.Conn().PgConn().CopyTo(ctx, &stream, fmt.Sprintf("COPY (SELECT %s, %s FROM events WHERE instance_id = %s) TO STDOUT (FORMAT binary)",
		pgQuote(as), cols, pgQuote(instance)))
	must(err)
	start := time.Now()
	tag, err := conn.Conn().PgConn().CopyFrom(ctx, &stream, "COPY events (instance_id, "+cols+") FROM STDIN (FORMAT binary)")
	must(err)
	took := time.Since(start)
	if int(tag.RowsAffected()) != n {
		must(fmt.Errorf("copied %d events into events, want %d", tag.RowsAffected(), n))
	}
	return float64(n) / took.Seconds()
}

// machineCPU is the CPU time every process on the machine has used (all cores, from
// /proc/stat): the collector, the receiver and PostgreSQL share the machine in this run.
func machineCPU() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	must(err)
	fields := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])
	var ticks int64
	for i, f := range fields[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, _ := strconv.ParseInt(f, 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// postgresCPU is the CPU time used so far by the PostgreSQL processes alive now and by those
// that have exited (the server's backends and workers).
func postgresCPU() time.Duration { return commandCPU("postgres") }

// commandCPU is the CPU time used so far by the processes named name (as in /proc/PID/stat) and
// by their children that have exited.
func commandCPU(name string) time.Duration {
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, d := range dirs {
		data, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < 0 || s[open+1:end] != name {
			continue
		}
		// utime, stime, cutime, cstime: fields 14-17 of stat. The server's own process adds the
		// time of its children that have exited (connections closed during the run).
		f := strings.Fields(s[end+2:])
		for _, i := range []int{11, 12, 13, 14} {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// ownCPU is the CPU time this process has used (user and system).
func ownCPU() time.Duration {
	var ru syscall.Rusage
	must(syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pgQuote quotes a harness-made identifier as an SQL string literal.
func pgQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'::text" }

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// collectorRun drains the instance database into the receiver as instance id (a fresh identity,
// so every event is new to the receiver) and returns how long it took.
func collectorRun(ctx context.Context, r *receivertest.Receiver, dsn, id string, metrics *collector.Metrics) time.Duration {
	dir, _ := os.MkdirTemp("", "bench-")
	defer func() { _ = os.RemoveAll(dir) }()
	cfgPath := collectorConfig(r, dir, id, dsn, 5000)
	cfg, err := collector.LoadConfig(cfgPath)
	must(err)
	reader, err := source.Open(ctx, dsn)
	must(err)
	defer reader.Close()
	keyBytes, _ := os.ReadFile(cfg.PseudonymKeyFile)
	s, err := scrub.New(keyBytes)
	must(err)
	tc, err := tlsreload.NewClient(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.CAFile)
	must(err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := &collector.Pipeline{ConfigPath: cfgPath, Reader: reader, Scrubber: s,
		Client: deliver.New(cfg.Endpoint, &http.Transport{TLSClientConfig: tc.TLSConfig("localhost")}, log),
		State:  state.File{Path: filepath.Join(dir, "state.json")}, Clock: clock.RealClock{}, Log: log, Metrics: metrics}
	must(p.Init(ctx))
	start := time.Now()
	for {
		more, err := p.RunOnce(ctx)
		must(err)
		if !more {
			break
		}
	}
	return time.Since(start)
}

// ingestBatch is a 5,000-event batch of instance starting at event id from.
func ingestBatch(instance string, from int) *batchv1.Batch {
	bt := &batchv1.Batch{InstanceID: instance, BatchID: fmt.Sprintf("%s-e-%d-%d-%d", instance, from, from+4999, 5000), Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: int64(from + 5000),
		AllowListVersion: catalogv1.CurrentVersion}
	for i := from; i < from+5000; i++ {
		bt.Events = append(bt.Events, batchv1.Event{ID: fmt.Sprint(i), Name: "SearchSubmitted", Timestamp: time.Unix(1_790_000_000+int64(i), 0),
			Source: "WEB", ProductVersion: "5.3.0", UserID: fmt.Sprintf("f%031x", i%500), Properties: map[string]any{"patternType": "literal"}})
	}
	return bt
}

// receiverReplicas measures ingestion over the API (mutual TLS, decoding, consent, storing) by
// one receiver and by two on the same PostgreSQL, four instances sending at once.
func receiverReplicas(ctx context.Context, r *receivertest.Receiver) {
	const instances, perInstance = 4, 10
	fmt.Printf("\n== receivers side by side (API, %d instances sending %d batches of 5,000 events at once) ==\n", instances, perInstance)
	rep, err := r.Replica(ctx)
	must(err)
	defer rep.Close()
	run := func(tag string, targets []*receivertest.Receiver) float64 {
		type sender struct {
			c      *http.Client
			url    string
			bodies [][]byte
		}
		var senders []sender
		for k := range instances {
			inst := fmt.Sprintf("bench-%s-%d", tag, k)
			must(r.Grant(ctx, inst, consentv1.TierEventLevel, benchConsentSince))
			cert, err := r.ClientCert(inst, time.Now().Add(-time.Hour), 24*time.Hour)
			must(err)
			s := sender{c: r.HTTPClient(&cert), url: targets[k%len(targets)].URL + batchv1.PathBatches}
			for i := range perInstance {
				body, err := batchv1.Encode(ingestBatch(inst, i*5000))
				must(err)
				s.bodies = append(s.bodies, body)
			}
			senders = append(senders, s)
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(senders))
		start := time.Now()
		for _, s := range senders {
			// Errors come back to this goroutine: a panic in another would skip every Close.
			wg.Go(func() {
				for _, body := range s.bodies {
					resp, err := s.c.Post(s.url, batchv1.ContentType, bytes.NewReader(body))
					if err != nil {
						errs <- err
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						errs <- fmt.Errorf("receiver answered %s", resp.Status)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			must(err)
		}
		return float64(instances*perInstance*5000) / time.Since(start).Seconds()
	}
	one := run("one", []*receivertest.Receiver{r})
	two := run("two", []*receivertest.Receiver{r, rep})
	record("receiver over the API, 1 replica", fmt.Sprintf("%.0f events/s", one), "", nil)
	record("receiver over the API, 2 replicas on one PostgreSQL", fmt.Sprintf("%.0f events/s (%.2fx)", two, two/one), "", nil)
}

func receiverIngest(ctx context.Context, r *receivertest.Receiver) {
	fmt.Println("\n== receiver ingest (5,000-event batches) ==")
	mk := func(from int) *batchv1.Batch { return ingestBatch("bench-ingest", from) }
	const batches = 20
	must(r.Grant(ctx, "bench-ingest", consentv1.TierEventLevel, benchConsentSince))
	start := time.Now()
	for i := range batches {
		_, err := r.Store.InsertEvents(ctx, "bench-ingest", mk(i*5000))
		must(err)
	}
	newRate := float64(batches*5000) / time.Since(start).Seconds()
	start = time.Now()
	for i := range batches {
		_, err := r.Store.InsertEvents(ctx, "bench-ingest", mk(i*5000))
		must(err)
	}
	dupRate := float64(batches*5000) / time.Since(start).Seconds()
	record("receiver store, new events", fmt.Sprintf("%.0f events/s", newRate), "", nil)
	record("receiver store, re-sent events (de-duplicated)", fmt.Sprintf("%.0f events/s", dupRate), "", nil)
}

// peakRSS runs the collector binary over a backlog and returns its peak resident memory (VmHWM).
func peakRSS(ctx context.Context, r *receivertest.Receiver, bin string, name string, n int) (int64, time.Duration) {
	pool, dsn := instanceDB(ctx, r, name, n)
	defer pool.Close()
	dir, _ := os.MkdirTemp("", "bench-mem-")
	defer func() { _ = os.RemoveAll(dir) }()
	cfg := collectorConfig(r, dir, strings.ReplaceAll(name, "_", "-"), dsn, 5000)
	cmd := exec.Command(filepath.Join(bin, "collector"), "--config", cfg, "--state-file", filepath.Join(dir, "state.json"), "--metrics-addr", "127.0.0.1:0") //nolint:gosec // our binary
	must(cmd.Start())
	defer func() { // stopped below on success; killed here if a step fails first
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	start := time.Now()
	var peak int64
	var maxID int64
	must(pool.QueryRow(ctx, "SELECT max(id) FROM event_logs").Scan(&maxID))
	for {
		peak = max(peak, vmHWM(cmd.Process.Pid))
		raw, _ := os.ReadFile(filepath.Join(dir, "state.json"))
		if strings.Contains(string(raw), fmt.Sprintf(`"cursor":%d`, maxID)) {
			break
		}
		if time.Since(start) > 2*time.Hour {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	peak = max(peak, vmHWM(cmd.Process.Pid))
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	return peak, time.Since(start)
}

func vmHWM(pid int) int64 { return procStatus(pid, "VmHWM") }

// procStatus reads one kB figure of /proc/PID/status in bytes (0 if absent).
func procStatus(pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func collectorMemory(ctx context.Context, r *receivertest.Receiver, bin string, small, large int) {
	fmt.Printf("\n== collector peak memory (backlogs of %d and %d rows) ==\n", small, large)
	s, ds := peakRSS(ctx, r, bin, "bench_mem_small", small)
	l, dl := peakRSS(ctx, r, bin, "bench_mem_large", large)
	record(fmt.Sprintf("peak RSS, %d-row backlog (drained in %s)", small, ds.Round(time.Second)), fmt.Sprintf("%.1f MiB", float64(s)/(1<<20)), "< 100 MiB", b(s < 100<<20))
	record(fmt.Sprintf("peak RSS, %d-row backlog (drained in %s)", large, dl.Round(time.Second)), fmt.Sprintf("%.1f MiB", float64(l)/(1<<20)), "< 100 MiB", b(l < 100<<20))
	record("growth with a larger backlog", fmt.Sprintf("%.2fx", float64(l)/float64(s)), "does not grow (<= 1.25x)", b(float64(l) <= 1.25*float64(s)))
}

// stackBinaries locates the programs a local stack runs.
func stackBinaries(bin, kubectl, installer string) localstack.Binaries {
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	if kubectl == "" {
		kubectl = filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	}
	return localstack.Binaries{Manager: abs(filepath.Join(bin, "manager")), Collector: abs(filepath.Join(bin, "collector")),
		Receiver: abs(filepath.Join(bin, "receiver")), Kubectl: abs(kubectl), Installer: abs(installer)}
}

func operatorScale(ctx context.Context, bin, kubectl, installer string, n, nss int, idle time.Duration, extraArgs []string) {
	fmt.Printf("\n== operator scale (%d policies in %d namespaces) ==\n", n, nss)
	pprofAddr, err := testenv.FreeAddr()
	must(err)
	st, err := localstack.Start(ctx, localstack.Options{NoRunner: true, NoLeaderElection: true, Bins: stackBinaries(bin, kubectl, installer),
		ManagerArgs: append([]string{"--pprof-bind-address", pprofAddr}, extraArgs...)})
	must(err)
	defer st.Close()
	c := st.Client

	// Baselines: a plain client creating the same kinds and numbers of objects the operator
	// creates, one object after the other, as a cluster admin and with the manager's own
	// identity and permissions (in onboarded namespaces). The second pays what least privilege
	// costs the API server: creating a Role or RoleBinding as someone who may not escalate or
	// bind makes it resolve the creator's rules in the namespace.
	plainAs := func(prefix string, pc client.Client) time.Duration {
		for i := range nss {
			ns := fmt.Sprintf("%s-%d", prefix, i)
			must(st.Onboard(ctx, ns))
		}
		start := time.Now()
		for i := range n {
			ns := fmt.Sprintf("%s-%d", prefix, i%nss)
			p := policyObject(ns, fmt.Sprintf("p%d", i), st.ReceiverURL)
			objs := []client.Object{
				resources.ConfigMap(p, []byte("{}")), resources.StateConfigMap(p), resources.ServiceAccount(p), resources.Role(p), resources.RoleBinding(p),
				&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: resources.NamesFor(p.Name).Credentials, Namespace: ns}, StringData: map[string]string{"tls.crt": "x"}},
				&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: resources.NamesFor(p.Name).PseudonymKey, Namespace: ns}, StringData: map[string]string{"key": "x"}},
				resources.Deployment(p, "img", "h", v1.TierEventLevel),
			}
			for _, o := range objs {
				must(pc.Create(ctx, o))
			}
		}
		return time.Since(start)
	}
	adminBaseline := plainAs("base", c)
	asManager, err := client.New(st.ManagerRestConfig, client.Options{Scheme: operator.NewScheme()})
	must(err)
	var asManagerBaseline time.Duration
	if managerBaseline {
		asManagerBaseline = plainAs("mgr", asManager)
	}

	// The operator: create the policies, play the Deployment controller, wait until all are Synced.
	for i := range nss {
		ns := fmt.Sprintf("%s%d", scaleNamespacePrefix, i)
		must(st.Onboard(ctx, ns))
		must(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns}, StringData: map[string]string{"dsn": "postgres://x"}}))
	}
	watchCtx, stopWatching := context.WithCancel(ctx)
	obs, err := observeScale(watchCtx, st.RestConfig, c, n)
	must(err)
	cpuNames := []string{"kube-apiserver", "etcd", "manager"}
	cpuBefore := map[string]time.Duration{"machine": machineCPU(), "bench": ownCPU()}
	for _, name := range cpuNames {
		cpuBefore[name] = commandCPU(name)
	}
	profiled := make(chan error, 1)
	if apiserverCPUProfile != "" {
		go func() { profiled <- fetchAPIServerProfile(st.RestConfig, apiserverCPUProfile, 30*time.Second) }()
	} else {
		profiled <- nil
	}
	requestsBefore, err := apiserverRequests(st.RestConfig)
	must(err)
	start := time.Now()
	for i := range n {
		must(c.Create(ctx, policyObject(fmt.Sprintf("%s%d", scaleNamespacePrefix, i%nss), fmt.Sprintf("p%d", i), st.ReceiverURL)))
	}
	// Give up at twice the slower baseline, and never before 30 minutes.
	limit := max(30*time.Minute, 2*asManagerBaseline)
	select {
	case <-obs.done:
	case <-time.After(limit):
		fmt.Printf("  only %d of %d synced after %s\n", obs.Synced(), n, limit.Round(time.Second))
	}
	converged := time.Since(start)
	if !obs.Last().IsZero() {
		converged = obs.Last().Sub(start)
	}
	stopWatching()
	must(<-profiled)
	// Where the machine's time went while the operator converged: whether the API server (and
	// etcd) were saturated, or the manager waited.
	var cpuUse []string
	elapsed := time.Since(start).Seconds()
	for _, name := range append([]string{"machine", "bench"}, cpuNames...) {
		now := map[string]func() time.Duration{"machine": machineCPU, "bench": ownCPU}[name]
		if now == nil {
			now = func() time.Duration { return commandCPU(name) }
		}
		cpuUse = append(cpuUse, fmt.Sprintf("%s %.2f", name, (now()-cpuBefore[name]).Seconds()/elapsed))
	}
	time.Sleep(2 * time.Second)
	idleStart, idleErr := apiserverRequests(st.RestConfig)
	before := managerWrites(st.ManagerMetrics)
	time.Sleep(idle)
	after := managerWrites(st.ManagerMetrics)
	idleEnd, idleEndErr := apiserverRequests(st.RestConfig)
	idleErr = errors.Join(idleErr, idleEndErr)
	idleRequests := func() {
		if err := idleErr; err != nil {
			fmt.Printf("    (the API server's request counts: %v)\n", err)
			return
		}
		printRequests(fmt.Sprintf("API server requests during the %s idle window, every client (verb resource code: count, per policy):", idle), idleStart, idleEnd, n)
	}
	pid := st.ManagerPID()
	peak := vmHWM(pid)
	anon, file := procStatus(pid, "RssAnon"), procStatus(pid, "RssFile")
	if managerHeapProfile != "" {
		must(fetchTo("http://"+pprofAddr+"/debug/pprof/heap?gc=1", managerHeapProfile))
		must(fetchTo("http://"+pprofAddr+"/debug/pprof/goroutine?debug=1", managerHeapProfile+".goroutines.txt"))
	}
	record("plain client creating the same objects as a cluster admin (baseline)", adminBaseline.Round(time.Millisecond).String(), "", nil)
	if managerBaseline {
		record("plain client creating the same objects as the manager", asManagerBaseline.Round(time.Millisecond).String(), "", nil)
	}
	record("operator: all policies Synced", converged.Round(time.Millisecond).String(), "", nil)
	record(fmt.Sprintf("  cores busy meanwhile (of %d)", runtime.NumCPU()), strings.Join(cpuUse, " / "), "", nil)
	// The target is judged against the admin's client, the cheapest way to make the objects;
	// the ratio to a client with the manager's permissions says how much of the gap is theirs.
	ratio := converged.Seconds() / adminBaseline.Seconds()
	record("convergence ratio to the plain client as a cluster admin", fmt.Sprintf("%.2fx", ratio), "<= 1.5x", b(ratio <= 1.5))
	if managerBaseline {
		record("  ratio to the plain client as the manager", fmt.Sprintf("%.2fx", converged.Seconds()/asManagerBaseline.Seconds()), "", nil)
	}
	// A permission review is a POST that stores nothing (the manager reviews each namespace's
	// permissions every 5 minutes); what is judged is what writes an object.
	record(fmt.Sprintf("API requests other than reads by the manager during %s idle (no leader election)", idle), strconv.Itoa(after-before), "", nil)
	if idleErr == nil {
		stored := storingWrites(idleStart, idleEnd)
		record(fmt.Sprintf("  of which write requests (create, update, patch, delete; a no-op update counts too; the API server's counts, every client but leases and reviews) during %s idle", idle), strconv.Itoa(stored), "0", b(stored == 0))
	}
	record("manager peak RSS", fmt.Sprintf("%.1f MiB", float64(peak)/(1<<20)), "< 100 MiB", b(peak < 100<<20))
	record("  manager RSS at the end: anonymous / file-backed (its binary)", fmt.Sprintf("%.1f / %.1f MiB", float64(anon)/(1<<20), float64(file)/(1<<20)), "", nil)
	mib := func(metric string) float64 { return testenv.ScrapeMetric(st.ManagerMetrics, metric) / (1 << 20) }
	record("  manager Go heap in use / stacks / from the OS", fmt.Sprintf("%.1f / %.1f / %.1f MiB", mib("go_memstats_heap_inuse_bytes"),
		mib("go_memstats_stack_inuse_bytes"), mib("go_memstats_sys_bytes")), "", nil)
	record("  manager goroutines", fmt.Sprintf("%.0f", testenv.ScrapeMetric(st.ManagerMetrics, "go_goroutines")), "", nil)
	printSeries(st.ManagerMetrics, `controller_runtime_reconcile_total{controller="telemetrypolicy"`, "telemetry_reconcile_errors_total", "rest_client_requests_total",
		`controller_runtime_reconcile_time_seconds_sum{controller="telemetrypolicy"`, `controller_runtime_reconcile_time_seconds_count{controller="telemetrypolicy"`,
		`workqueue_queue_duration_seconds_sum{controller="telemetrypolicy"`, `workqueue_work_duration_seconds_sum{controller="telemetrypolicy"`,
		"telemetry_reconcile_step_duration_seconds_sum", "rest_client_request_duration_seconds_sum", "rest_client_request_duration_seconds_count")
	if idleStart != nil {
		printRequests("API server requests while the operator converged and 2 s after, every client (verb resource code: count, per policy):", requestsBefore, idleStart, n)
	}
	idleRequests()
}

// fetchAPIServerProfile writes a CPU profile of the API server over d to file.
func fetchAPIServerProfile(cfg *rest.Config, file string, d time.Duration) error {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return err
	}
	resp, err := hc.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimSuffix(cfg.Host, "/"), int(d.Seconds())))
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the API server's profile: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, body, 0o600)
}

// printSeries prints the manager's series with these prefixes (how it spent its reconciles and
// requests), for reading next to the figures.
func printSeries(url string, prefixes ...string) {
	resp, err := http.Get(url) //nolint:gosec // local endpoint
	if err != nil {
		return
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) && !strings.HasSuffix(line, " 0") {
				fmt.Println("    " + line)
			}
		}
	}
}

func policyObject(ns, name, endpoint string) *v1.TelemetryPolicy {
	return &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1.TelemetryPolicySpec{
		InstanceID: name, Consent: v1.ConsentSpec{Tier: v1.TierCriticalOnly},
		Contract: &v1.ContractSpec{Basis: v1.BasisLegacyTerms},
		Source:   &v1.SourceSpec{DatabaseSecretRef: v1.SecretKeyRef{Name: "db", Key: "dsn"}},
		Export:   &v1.ExportSpec{Endpoint: endpoint}}}
}

// managerWrites sums the manager's mutating API requests from its client metrics.
func managerWrites(url string) int {
	resp, err := http.Get(url) //nolint:gosec // local endpoint
	if err != nil {
		return -1
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	total := 0
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "rest_client_requests_total{") {
			continue
		}
		for _, m := range []string{`method="POST"`, `method="PUT"`, `method="PATCH"`, `method="DELETE"`} {
			if strings.Contains(line, m) {
				f := strings.Fields(line)
				v, _ := strconv.ParseFloat(f[len(f)-1], 64)
				total += int(v)
			}
		}
	}
	return total
}
