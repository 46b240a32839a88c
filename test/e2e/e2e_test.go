/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package e2e tests the whole flow on the local stack: the operator, the collectors run by the
// local workload runner, the receiver and PostgreSQL, all as real processes.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5/pgxpool"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

var (
	stack    *localstack.Stack
	receiver *pgxpool.Pool
)

func TestMain(m *testing.M) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "e2e: KUBEBUILDER_ASSETS is not set: run with `make test`")
		os.Exit(1)
	}
	// The test process's own clients log through controller-runtime; their retries while the
	// API server is down are expected and not worth printing.
	logf.SetLogger(logr.Discard())
	dir, _ := os.MkdirTemp("", "e2e-bin-")
	// The operator runs with the RBAC the installer ships (make build-installer renders it).
	bins := localstack.Binaries{Kubectl: os.Getenv("TELEMETRY_TEST_KUBECTL"), Installer: filepath.Join(testenv.RepoRoot(), "dist", "install.yaml")}
	for name, pkg := range map[string]string{"manager": ".", "collector": "./cmd/collector", "receiver": "./cmd/receiver"} {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = testenv.RepoRoot()
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", name, err, b)
			os.Exit(1)
		}
		switch name {
		case "manager":
			bins.Manager = out
		case "collector":
			bins.Collector = out
		case "receiver":
			bins.Receiver = out
		}
	}
	ctx := context.Background()
	var err error
	stack, err = localstack.Start(ctx, localstack.Options{Bins: bins, Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local stack:", err)
		os.Exit(1)
	}
	receiver, err = pgxpool.New(ctx, stack.ReceiverPG.DSN("receiver"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	// The operator ran under the installer's RBAC throughout: a request it was refused means it
	// needs a permission the installer does not ship, or tried something it should not.
	if b, err := os.ReadFile(filepath.Join(stack.Dir, "manager.log")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "forbidden") {
				fmt.Fprintf(os.Stderr, "FAIL: the operator was refused a request under its shipped RBAC:\n%s\n", line)
				code = 1
				break
			}
		}
	}
	if code != 0 {
		for _, f := range []string{"manager.log", "receiver.log"} {
			b, _ := os.ReadFile(filepath.Join(stack.Dir, f))
			fmt.Fprintf(os.Stderr, "---- %s (tail) ----\n%s\n", f, tail(string(b), 4000))
		}
	}
	receiver.Close()
	stack.Close()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := stack.Kubectl(context.Background(), args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// apply creates a policy in its own namespace with a fresh instance database.
func apply(t *testing.T, name string, tier v1.ConsentTier, seedUsers int, mutate func(spec map[string]any)) *localstack.Instance {
	t.Helper()
	in, err := stack.AddInstance(context.Background(), name, seed.Options{Users: seedUsers, Days: 10, EventsPerUserDay: 4, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	applyPolicy(t, name, tier, mutate)
	return in
}

// applyPolicy applies, with kubectl, the policy of an instance whose namespace exists.
func applyPolicy(t *testing.T, name string, tier v1.ConsentTier, mutate func(spec map[string]any)) {
	t.Helper()
	spec := map[string]any{
		"instanceID": name,
		"consent":    map[string]any{"tier": string(tier)},
		// Accepted before the seeded history: with startFrom Beginning all of it may leave.
		"contract": map[string]any{"basis": "NewContract", "reference": "0065e00000AbCdEf", "cloudTermsVersion": "2024-06-01",
			"userLevelEventDataApproved": true, "acceptedAt": time.Now().Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339)},
		"source": map[string]any{"databaseSecretRef": map[string]any{"name": name + "-frontend-db", "key": "dsn"}},
		"export": map[string]any{"endpoint": stack.ReceiverURL, "interval": "10s", "startFrom": "Beginning", "batchSize": 200},
	}
	if mutate != nil {
		mutate(spec)
	}
	doc, _ := json.Marshal(map[string]any{"apiVersion": "telemetry.sourcegraph.com/v1alpha1", "kind": "TelemetryPolicy",
		"metadata": map[string]any{"name": name, "namespace": name}, "spec": spec})
	path := filepath.Join(t.TempDir(), "policy.json")
	_ = os.WriteFile(path, doc, 0o600)
	kubectl(t, "apply", "-f", path)
}

func patch(t *testing.T, name, mergePatch string) {
	t.Helper()
	kubectl(t, "patch", "tp", "-n", name, name, "--type=merge", "-p", mergePatch)
}

func waitReady(t *testing.T, name string) {
	t.Helper()
	kubectl(t, "wait", "--for=condition=Ready", "tp/"+name, "-n", name, "--timeout=120s")
}

func policy(t *testing.T, name string) *v1.TelemetryPolicy {
	t.Helper()
	p := &v1.TelemetryPolicy{}
	if err := stack.Client.Get(context.Background(), client.ObjectKey{Namespace: name, Name: name}, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := receiver.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func allowListed(t *testing.T, in *localstack.Instance) int {
	t.Helper()
	var n int
	if err := in.Pool.QueryRow(context.Background(), "SELECT count(*) FROM event_logs WHERE name = ANY($1)", catalogv1.Current().Names()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// trickle inserts one allow-listed event every interval until stopped; it returns how many.
func trickle(in *localstack.Instance, every time.Duration) (stop func() int) {
	var n atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(every):
			}
			if _, err := in.Pool.Exec(context.Background(),
				`INSERT INTO event_logs (name, user_id, source, version, public_argument) VALUES ('SearchSubmitted', 1 + (random()*9)::int, 'WEB', '5.3.0', '{"patternType":"literal"}')`); err == nil {
				n.Add(1)
			}
		}
	}()
	return func() int { close(done); <-finished; return int(n.Load()) }
}

func collectorMetric(name, series string) float64 {
	addr := stack.Runner.MetricsAddr(types.NamespacedName{Namespace: name, Name: name + "-collector"})
	return testenv.ScrapeMetric("http://"+addr+"/metrics", series)
}

func TestKubectlShowsTheRightColumnsAndWaitWorks(t *testing.T) {
	apply(t, "columns", v1.TierEventLevel, 4, nil)
	waitReady(t, "columns")
	out := kubectl(t, "get", "tp", "-n", "columns")
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if strings.Join(header, " ") != "NAME INSTANCE TIER EFFECTIVE BASIS READY SYNCED LAST EXPORT AGE" {
		t.Fatalf("columns: %v", header)
	}
	row := strings.Fields(strings.Split(out, "\n")[1])
	if row[2] != "EventLevel" || row[3] != "EventLevel" || row[5] != "True" || row[6] != "True" {
		t.Fatalf("row: %v", row)
	}
	describe := kubectl(t, "describe", "tp", "-n", "columns", "columns")
	for _, want := range []string{"ConsentEligible", "CredentialsReady", "Synced", "Exporting", "Effective Tier:", "TierChanged", "CredentialsIssued"} {
		if !strings.Contains(describe, want) {
			t.Errorf("kubectl describe lacks %q", want)
		}
	}
}

func TestDowngradeMidStreamStopsEventLevelDataOnceReported(t *testing.T) {
	in := apply(t, "downgrade", v1.TierEventLevel, 6, nil)
	waitReady(t, "downgrade")
	stop := trickle(in, 50*time.Millisecond)
	eventually(t, 60*time.Second, "event-level data flowing", func() bool {
		return count(t, "SELECT count(*) FROM events WHERE instance_id = 'downgrade'") > 0
	})
	patch(t, "downgrade", `{"spec":{"consent":{"tier":"CriticalOnly"}}}`)
	var reportedAt time.Time
	eventually(t, 90*time.Second, "the downgrade reported as in effect", func() bool {
		p := policy(t, "downgrade")
		for _, c := range p.Status.Conditions {
			if c.Type == v1.ConditionReady && c.Status == "True" && c.ObservedGeneration == p.Generation && p.Status.EffectiveTier == v1.TierCriticalOnly {
				reportedAt = time.Now()
				return true
			}
		}
		return false
	})
	time.Sleep(15 * time.Second) // more than an interval of the new collector, with inserts going on
	stop()
	late := count(t, "SELECT count(*) FROM events WHERE instance_id = 'downgrade' AND received_at > $1", reportedAt)
	if late != 0 {
		t.Fatalf("%d event-level rows were accepted after the downgrade was reported in effect", late)
	}
	// The CriticalOnly collector runs and reports success, and publishes nothing: every closed day
	// so far was EventLevel time, which the receiver holds event by event, and aggregates count
	// only CriticalOnly periods (cells counting both could be differenced against the events).
	// Its progress reaches status when the policy is next reconciled: at the manager's
	// --tenant-resync (1 minute) as it watches nothing in the tenant namespaces by default.
	eventually(t, 90*time.Second, "a successful round of the CriticalOnly collector", func() bool {
		p := policy(t, "downgrade")
		return p.Status.Export != nil && p.Status.Export.LastSuccessTime != nil && p.Status.Export.LastSuccessTime.After(reportedAt)
	})
	if n := count(t, "SELECT count(*) FROM aggregates WHERE instance_id = 'downgrade'"); n != 0 {
		t.Fatalf("%d aggregate cells cover EventLevel time", n)
	}
}

func TestTrialExpiryDowngradesOnTime(t *testing.T) {
	expires := time.Now().Add(20 * time.Second).UTC().Truncate(time.Second)
	apply(t, "trial", v1.TierEventLevel, 3, func(spec map[string]any) {
		c := spec["contract"].(map[string]any)
		c["basis"] = "SelfServeTrial"
		c["acceptedAt"] = time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		c["expiresAt"] = expires.Format(time.RFC3339)
	})
	waitReady(t, "trial")
	if policy(t, "trial").Status.EffectiveTier != v1.TierEventLevel {
		t.Fatal("the trial does not run EventLevel before it expires")
	}
	eventually(t, 60*time.Second, "the trial to expire", func() bool { return policy(t, "trial").Status.EffectiveTier == v1.TierCriticalOnly })
	p := policy(t, "trial")
	last := p.Status.ConsentHistory[len(p.Status.ConsentHistory)-1]
	if last.Reason != v1.ReasonTrialExpired || last.Time.Time.Before(expires) || expires.Add(5*time.Second).Before(last.Time.Time) {
		t.Fatalf("history entry %+v, want TrialExpired within 5s of %s (not at a later resync)", last, expires)
	}
}

func TestOffStopsTheCollectorAndNothingMoreArrives(t *testing.T) {
	in := apply(t, "goes-off", v1.TierEventLevel, 4, nil)
	waitReady(t, "goes-off")
	key := types.NamespacedName{Namespace: "goes-off", Name: "goes-off-collector"}
	eventually(t, 30*time.Second, "a collector process", func() bool { return stack.Runner.PID(key) != 0 })
	patch(t, "goes-off", `{"spec":{"consent":{"tier":"Off"}}}`)
	eventually(t, 60*time.Second, "Off in effect", func() bool {
		p := policy(t, "goes-off")
		return p.Status.EffectiveTier == v1.TierOff && strings.Contains(kubectl(t, "get", "tp", "-n", "goes-off", "goes-off", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"), "True")
	})
	if stack.Runner.PID(key) != 0 {
		t.Fatal("a collector process still runs after Off is reported")
	}
	if err := stack.Client.Get(context.Background(), key, &appsv1.Deployment{}); err == nil {
		t.Fatal("the collector Deployment still exists")
	}
	before := count(t, "SELECT count(*) FROM events WHERE instance_id = 'goes-off'")
	stop := trickle(in, 20*time.Millisecond)
	time.Sleep(12 * time.Second)
	stop()
	if after := count(t, "SELECT count(*) FROM events WHERE instance_id = 'goes-off'"); after != before {
		t.Fatalf("%d events arrived after Off", after-before)
	}
}

func TestRotationMidStreamFailsNoBatchAndLosesNothing(t *testing.T) {
	in := apply(t, "rotate", v1.TierEventLevel, 4, nil)
	waitReady(t, "rotate")
	stop := trickle(in, 30*time.Millisecond)
	before := policy(t, "rotate").Status.Credentials.Revision
	kubectl(t, "annotate", "tp", "-n", "rotate", "rotate", "--overwrite", v1.AnnotationRotateRequestedAt+"="+time.Now().UTC().Format(time.RFC3339Nano))
	eventually(t, 30*time.Second, "a rotation", func() bool { return policy(t, "rotate").Status.Credentials.Revision == before+1 })
	time.Sleep(12 * time.Second) // batches keep flowing with the new certificate
	stop()
	want := allowListed(t, in)
	eventually(t, 60*time.Second, "every event delivered", func() bool {
		return count(t, "SELECT count(*) FROM events WHERE instance_id = 'rotate'") == want
	})
	if acked := collectorMetric("rotate", `collector_batches_total{outcome="acknowledged"}`); acked <= 0 {
		t.Fatalf("cannot read the collector's batch counts (%v): the next check would pass vacuously", acked)
	}
	if failed := collectorMetric("rotate", `collector_batches_total{outcome="failed"}`); failed > 0 {
		t.Fatalf("%v batches failed across the rotation", failed)
	}
	if policy(t, "rotate").Status.LastHandledRotateRequest == "" {
		t.Fatal("the rotate request is not echoed in status")
	}
}

func TestOperatorRestartAndCollectorKillLoseAndDoubleNothing(t *testing.T) {
	in := apply(t, "restarts", v1.TierEventLevel, 6, nil)
	waitReady(t, "restarts")
	stop := trickle(in, 40*time.Millisecond)
	key := types.NamespacedName{Namespace: "restarts", Name: "restarts-collector"}

	stack.StopManager()
	time.Sleep(2 * time.Second)
	if err := stack.StartManager(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "a collector to kill", func() bool { return stack.Runner.PID(key) != 0 })
	first := stack.Runner.PID(key)
	stack.Runner.Kill(key)
	eventually(t, 60*time.Second, "the collector restarted", func() bool { pid := stack.Runner.PID(key); return pid != 0 && pid != first })
	time.Sleep(3 * time.Second)
	stop()

	want := allowListed(t, in)
	eventually(t, 90*time.Second, "every event delivered", func() bool {
		return count(t, "SELECT count(*) FROM events WHERE instance_id = 'restarts'") == want
	})
	deps := &appsv1.DeploymentList{}
	if err := stack.Client.List(context.Background(), deps, client.InNamespace("restarts")); err != nil {
		t.Fatal(err)
	}
	if len(deps.Items) != 1 {
		t.Fatalf("%d Deployments after the operator restart, want 1", len(deps.Items))
	}
	waitReady(t, "restarts")
}

// TestAPIServerRestartUnderTheOperator restarts kube-apiserver (etcd keeps its data) while the
// operator runs and events flow. Afterwards every event is stored exactly once, the operator
// acts on a change made after the restart (nothing is stuck), and it owns one Deployment.
func TestAPIServerRestartUnderTheOperator(t *testing.T) {
	in := apply(t, "apiserver-restart", v1.TierEventLevel, 6, nil)
	waitReady(t, "apiserver-restart")
	stop := trickle(in, 40*time.Millisecond)

	managerPID := stack.ManagerPID()
	if err := testenv.RestartAPIServer(stack.Env, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	stop()
	if stack.ManagerExited() {
		// controller-runtime exits when it cannot renew its leader lease in time; in a cluster the
		// kubelet restarts it, so do the same.
		t.Logf("the manager (pid %d) exited during the outage; restarting it as a kubelet would", managerPID)
		stack.StopManager()
		if err := stack.StartManager(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	want := allowListed(t, in)
	eventually(t, 90*time.Second, "every event delivered", func() bool {
		return count(t, "SELECT count(*) FROM events WHERE instance_id = 'apiserver-restart'") == want
	})
	if got := count(t, "SELECT count(DISTINCT event_id) FROM events WHERE instance_id = 'apiserver-restart'"); got != want {
		t.Fatalf("%d distinct events stored, want %d", got, want)
	}

	// A change made after the restart is carried out: the watch was re-established.
	patch(t, "apiserver-restart", `{"spec":{"consent":{"tier":"CriticalOnly"}}}`)
	eventually(t, 60*time.Second, "the downgrade after the restart to take effect", func() bool {
		p := policy(t, "apiserver-restart")
		return p.Status.ObservedGeneration == p.Generation && p.Status.EffectiveTier == v1.TierCriticalOnly
	})
	waitReady(t, "apiserver-restart")
	deps := &appsv1.DeploymentList{}
	if err := stack.Client.List(context.Background(), deps, client.InNamespace("apiserver-restart")); err != nil {
		t.Fatal(err)
	}
	if len(deps.Items) != 1 {
		t.Fatalf("%d Deployments after the API server restart, want 1", len(deps.Items))
	}
}
