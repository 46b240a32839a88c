/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package e2ecluster deploys what the project ships onto a real single-node cluster (a kubelet
// and containerd running the images `make images` built) exactly as a user would, and checks
// what the demo checks plus what only a real cluster shows. Run it with `make e2e-cluster`.
package e2ecluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5/pgxpool"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/pgtest"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
	"github.com/sourcegraph/telemetry-operator/test/cluster"
	"github.com/sourcegraph/telemetry-operator/test/fleetcheck"
)

const (
	managerNS         = "telemetry-system"
	managerDeployment = "telemetry-operator-controller-manager"
	managerSA         = "telemetry-operator-controller-manager"
	tenantRole        = "telemetry-operator-tenant-role"
	receiverNS        = "telemetry"
	receiverName      = "telemetry-receiver"
)

// fixture is the running cluster and what the test deployed on it.
type fixture struct {
	t          *testing.T
	ctx        context.Context
	c          *cluster.Cluster
	kubectl    string
	db         fleetcheck.Receiver
	instances  map[string]*pgxpool.Pool
	accepted   time.Time
	receiverCA *pkitest.CA
}

func TestShippedManifestsOnARealCluster(t *testing.T) {
	if os.Getenv("TELEMETRY_E2E_CLUSTER") == "" {
		t.Skip("runs with `make e2e-cluster`: it needs root, containerd and runc, the node binaries and the images")
	}
	logf.SetLogger(logr.Discard())
	ctx := context.Background()
	root := testenv.RepoRoot()
	images := filepath.Join(root, "bin", "images")
	f := &fixture{t: t, ctx: ctx, kubectl: os.Getenv("TELEMETRY_TEST_KUBECTL"), instances: map[string]*pgxpool.Pool{},
		accepted: time.Now().Add(-30 * 24 * time.Hour).UTC().Truncate(time.Second)}

	instancePG, err := pgtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer instancePG.Close()
	receiverPG, err := pgtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer receiverPG.Close()
	if err := receiverPG.CreateDatabase(ctx, "receiver"); err != nil {
		t.Fatal(err)
	}
	// The receiver's own login, plain, as the README has a database administrator create it.
	receiverOwnerDSN := receiverPG.DSN("receiver") // a superuser here: the schema's owner
	receiverLoginDSN := strings.Replace(receiverOwnerDSN, "postgres@", "telemetry_receiver@", 1)
	if err := receiverPG.Exec(ctx, "receiver", `CREATE ROLE telemetry_receiver LOGIN`); err != nil {
		t.Fatal(err)
	}

	f.c, err = cluster.Start(ctx, cluster.Options{
		Bin:          os.Getenv("KUBEBUILDER_ASSETS"),
		Images:       []string{filepath.Join(images, "manager.oci.tar"), filepath.Join(images, "collector.oci.tar"), filepath.Join(images, "receiver.oci.tar")},
		PauseArchive: filepath.Join(images, "pause.oci.tar"),
		Log:          logWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.c.Close()
	defer f.dumpOnFailure()

	ca, err := pkitest.NewCA("telemetry e2e fleet issuer", pkitest.Options{NotAfter: time.Now().Add(365 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	f.receiverCA = ca
	ports := map[string]string{}
	for _, p := range []string{"receiver-api", "receiver-ops", "manager-health", "manager-metrics"} {
		addr, err := testenv.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		ports[p] = addr[strings.LastIndex(addr, ":")+1:]
	}
	receiverURL := "https://127.0.0.1:" + ports["receiver-api"]
	overlay := cluster.Overlay{
		APIHost: f.c.APIHost, APIPort: f.c.APIPort,
		Ports: map[string]map[string]string{
			receiverName:      {"https": ports["receiver-api"], "ops": ports["receiver-ops"]},
			managerDeployment: {"health": ports["manager-health"], "metrics": ports["manager-metrics"]},
		},
		Args: map[string][]string{
			receiverName: {"--listen=127.0.0.1:" + ports["receiver-api"], "--ops-listen=127.0.0.1:" + ports["receiver-ops"]},
			managerDeployment: {"--receiver-url=" + receiverURL,
				"--health-probe-bind-address=127.0.0.1:" + ports["manager-health"], "--metrics-bind-address=127.0.0.1:" + ports["manager-metrics"]},
		},
		Replicas: map[string]int32{receiverName: 1},
	}

	f.run1(t, "images are on the node", func(t *testing.T) {
		have, err := f.c.Images(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"docker.io/library/telemetry-operator:dev", "docker.io/library/telemetry-collector:dev", "docker.io/library/telemetry-receiver:dev"} {
			if !slices.Contains(have, want) {
				t.Errorf("%s not imported; the node has %v", want, have)
			}
		}
	})

	f.run1(t, "shipped pod templates pass Pod Security restricted", func(t *testing.T) {
		f.restrictedDryRun(t, "dist/install.yaml", "dist/receiver.yaml")
	})

	// The receiver, from dist/receiver.yaml, and the four Secrets its README section names.
	f.applyManifest(filepath.Join(root, "dist", "receiver.yaml"), overlay)
	server, err := ca.ServerCert("telemetry-receiver", []string{"telemetry-receiver.telemetry.svc", "localhost", "127.0.0.1"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	f.createSecret(receiverNS, "telemetry-receiver-db-owner", corev1.SecretTypeOpaque, map[string][]byte{"dsn": []byte(receiverOwnerDSN)})
	f.createSecret(receiverNS, "telemetry-receiver-db", corev1.SecretTypeOpaque, map[string][]byte{"dsn": []byte(receiverLoginDSN)})
	f.createSecret(receiverNS, "telemetry-receiver-tls", corev1.SecretTypeTLS, map[string][]byte{"tls.crt": server.CertPEM, "tls.key": server.KeyPEM})
	f.createSecret(receiverNS, "telemetry-receiver-client-ca", corev1.SecretTypeOpaque, map[string][]byte{"ca.crt": ca.CertPEM})
	f.must("rollout", "status", "-n", receiverNS, "deployment/"+receiverName, "--timeout=180s")

	// The operator, from dist/install.yaml, then the issuer Secret (the manager waits for it).
	f.applyManifest(filepath.Join(root, "dist", "install.yaml"), overlay)
	f.createSecret(managerNS, "telemetry-fleet-issuer", corev1.SecretTypeTLS, ca.Secret())
	f.must("rollout", "status", "-n", managerNS, "deployment/"+managerDeployment, "--timeout=180s")

	// Collector pods on the host network (see cluster.HostNetworkPolicy).
	f.applyYAML(cluster.HostNetworkPolicy)
	rdb, err := pgxpool.New(ctx, receiverPG.DSN("receiver"))
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	f.db = fleetcheck.Receiver{Pool: rdb}

	for i, name := range fleetcheck.Samples {
		f.onboard(name)
		pool, err := seedInstance(ctx, instancePG, name, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		f.instances[name] = pool
		dsn := strings.Replace(instancePG.DSN(strings.ReplaceAll(name, "-", "_")), "postgres@", "telemetry_reader@", 1)
		f.createSecret(name, name+"-frontend-db", corev1.SecretTypeOpaque, map[string][]byte{"dsn": []byte(dsn)})
	}
	policies, err := fleetcheck.SamplePolicies(receiverURL, "15s", f.accepted)
	if err != nil {
		t.Fatal(err)
	}
	f.applyYAML(policies)
	f.must("wait", "--for=condition=Ready", "tp", "--all", "-A", "--timeout=240s")

	f.run1(t, "the kubelet's API refuses anyone but the API server", func(t *testing.T) {
		// Without a client certificate of the kubelet's client CA: no pods, logs or exec.
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the kubelet's self-signed serving certificate
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://127.0.0.1:" + f.c.KubeletPort + "/pods")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("an anonymous GET /pods on the kubelet answered %s", resp.Status)
		}
	})
	f.run1(t, "what the demo checks", f.demoChecks)
	f.run1(t, "the receiver's Service and PodDisruptionBudget track its pod", f.receiverObjects)
	f.run1(t, "the receiver serves with its own login, which may not hand consent records over", func(t *testing.T) {
		if problem := f.db.ServesConfined(ctx, "telemetry_receiver"); problem != "" {
			t.Error(problem)
		}
	})
	f.run1(t, "manager works under its shipped RBAC as its ServiceAccount", f.managerChecks)
	f.run1(t, "collector template passes Pod Security restricted", f.collectorRestricted)
	f.run1(t, "every container runs its image's entrypoint as user 65532", f.containerUsers)
	f.run1(t, "kubectl telemetry sees and operates the fleet on a real cluster", f.plugin)
	f.run1(t, "certificate rotation reaches the running collector through its Secret volume", f.rotation)
	f.run1(t, "a configuration change is a Recreate rollout: old and new collectors never overlap", f.recreate)
	f.run1(t, "Off deletes the collector in the foreground and nothing recorded while Off leaves", f.offAndBack)
	f.run1(t, "after all of it the manager was never refused a request nor restarted", f.managerChecks)
}

// run1 runs a subtest with the fixture's helpers failing it, not the parent.
func (f *fixture) run1(t *testing.T, name string, fn func(*testing.T)) {
	t.Run(name, func(t *testing.T) {
		parent := f.t
		f.t = t
		defer func() { f.t = parent }()
		fn(t)
	})
}

// demoChecks: exactly once, tiers, nothing personal, as cmd/demo checks them.
func (f *fixture) demoChecks(t *testing.T) {
	ctx := f.ctx
	acme := f.instances["acme"]
	want := fleetcheck.AllowListed(ctx, acme, f.accepted, time.Now().Add(time.Hour))
	if want <= 0 {
		t.Fatalf("acme's database holds %d allow-listed events since the terms were accepted: nothing to check", want)
	}
	eventually(t, 3*time.Minute, "acme's backlog and globex's aggregates to arrive", func() bool {
		return f.db.Stored(ctx, "events", "acme") >= want && f.db.Stored(ctx, "aggregates", "globex") > 0
	})
	for name, tier := range fleetcheck.SampleTiers {
		if got := f.get("tp", "-n", name, name, "-o", "jsonpath={.status.effectiveTier}"); got != tier {
			t.Errorf("%s runs at %q, want %s", name, got, tier)
		}
	}
	time.Sleep(20 * time.Second) // another export round: nothing more may arrive
	if got := f.db.Stored(ctx, "events", "acme"); got != want {
		t.Errorf("acme: %d events stored, want each of the %d allow-listed events recorded since the terms were accepted exactly once", got, want)
	}
	if before := fleetcheck.AllowListed(ctx, acme, time.Time{}, f.accepted); before == 0 || f.db.StoredBetween(ctx, "acme", time.Time{}, f.accepted) != 0 {
		t.Errorf("acme: events recorded before the terms were accepted reached the receiver (%d of %d)", f.db.StoredBetween(ctx, "acme", time.Time{}, f.accepted), before)
	}
	if n := f.db.Stored(ctx, "events", "globex"); n != 0 {
		t.Errorf("globex (CriticalOnly): %d per-user events stored", n)
	}
	if n := f.db.OpenDayCells(ctx, "globex"); n != 0 {
		t.Errorf("globex: %d cells of a day that has not ended", n)
	}
	if n := f.db.SmallCells(ctx); n != 0 {
		t.Errorf("%d aggregate cells under 5 users", n)
	}
	if n := f.db.Stored(ctx, "events", "initech") + f.db.Stored(ctx, "aggregates", "initech"); n != 0 {
		t.Errorf("initech (Off): %d rows stored", n)
	}
	if out := f.get("deployments", "-n", "initech", "-o", "name"); out != "" {
		t.Errorf("initech (Off) has a workload: %s", out)
	}
	if leak := f.db.PersonalData(ctx); leak != "" {
		t.Errorf("personal data reached the receiver%s", leak)
	}
	if n := f.db.NotPseudonymous(ctx); n != 0 {
		t.Errorf("%d stored events carry a user id that is not a pseudonym", n)
	}
	if n := f.db.Unlisted(ctx); n != 0 {
		t.Errorf("%d events the catalog does not list were stored", n)
	}
}

// receiverObjects: the Service selects the receiver's ready pod (its EndpointSlice, as the
// endpoint-slice controller writes it), and the PodDisruptionBudget selects it and counts it
// healthy.
func (f *fixture) receiverObjects(t *testing.T) {
	eventually(t, time.Minute, "the receiver's EndpointSlice to list a ready endpoint", func() bool {
		return strings.Contains(f.get("endpointslices", "-n", receiverNS, "-l", "kubernetes.io/service-name="+receiverName,
			"-o", "jsonpath={.items[*].endpoints[*].conditions.ready}"), "true")
	})
	eventually(t, time.Minute, "the PodDisruptionBudget to count the receiver healthy", func() bool {
		return f.get("pdb", "-n", receiverNS, receiverName, "-o", "jsonpath={.status.expectedPods}/{.status.currentHealthy}") == "1/1"
	})
}

// managerChecks: the manager runs in a pod as its ServiceAccount (a bound token, not a client
// certificate), was never refused a request, and never restarted.
func (f *fixture) managerChecks(t *testing.T) {
	pods := &corev1.PodList{}
	if err := f.c.Client.List(f.ctx, pods, client.InNamespace(managerNS)); err != nil || len(pods.Items) != 1 {
		t.Fatalf("manager pods: %v (%d)", err, len(pods.Items))
	}
	pod := pods.Items[0]
	if pod.Spec.ServiceAccountName != managerSA {
		t.Errorf("the manager runs as %q", pod.Spec.ServiceAccountName)
	}
	tokenMounted := false
	for _, v := range pod.Spec.Volumes {
		tokenMounted = tokenMounted || (v.Projected != nil && strings.HasPrefix(v.Name, "kube-api-access-"))
	}
	if !tokenMounted {
		t.Error("the manager pod has no projected ServiceAccount token: it cannot be using its ServiceAccount")
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.RestartCount != 0 || !cs.Ready {
			t.Errorf("manager container: ready=%v restarts=%d", cs.Ready, cs.RestartCount)
		}
	}
	logs := f.logs(managerNS, pod.Name)
	if logs == "" {
		t.Fatal("no manager log through the kubelet")
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(strings.ToLower(line), "forbidden") {
			t.Errorf("the manager was refused a request: %s", line)
		}
	}
	// And it is confined: what it may not do, it cannot do.
	as := "system:serviceaccount:" + managerNS + ":" + managerSA
	for _, deny := range [][]string{{"list", "secrets", "-A"}, {"create", "deployments", "-n", "default"}, {"get", "secrets", "-n", receiverNS}} {
		out, _ := f.run(append([]string{"auth", "can-i", "--as", as}, deny...)...)
		if strings.TrimSpace(out) != "no" {
			t.Errorf("the manager may %v: %s", deny, out)
		}
	}
}

// containerUsers: what runs on the node is the images' entrypoints, as the non-root user the
// images declare (read from /proc, not from the pod specs).
func (f *fixture) containerUsers(t *testing.T) {
	procs, err := f.c.ContainerProcesses(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, p := range procs {
		entry := strings.Fields(p.Args)[0]
		seen[entry]++
		if p.UID != 65532 {
			t.Errorf("%s (pid %d) runs as uid %d", p.Args, p.PID, p.UID)
		}
	}
	// The receiver, the manager, acme's and globex's collectors, and a pause per pod.
	if seen["/receiver"] != 1 || seen["/manager"] != 1 || seen["/collector"] != 2 || seen["/pause"] != 4 {
		t.Errorf("containers on the node: %v", seen)
	}
}

// collectorRestricted: the collector pod the operator made (before the test cluster's host
// network mutation) would be admitted in a namespace that enforces Pod Security restricted.
func (f *fixture) collectorRestricted(t *testing.T) {
	dep := &appsv1.Deployment{}
	if err := f.c.Client.Get(f.ctx, client.ObjectKey{Namespace: "acme", Name: "acme-collector"}, dep); err != nil {
		t.Fatal(err)
	}
	f.dryRunPod(t, "collector", dep.Spec.Template)
}

// rotation: a requested rotation writes a new certificate into the credentials Secret; the
// kubelet updates the Secret volume of the running pod and the collector presents the new
// certificate in its next handshake, with no restart and no new pod.
func (f *fixture) rotation(t *testing.T) {
	before := f.collectorPod(t, "acme")
	secret := func() *corev1.Secret {
		s := &corev1.Secret{}
		if err := f.c.Client.Get(f.ctx, client.ObjectKey{Namespace: "acme", Name: resources.NamesFor("acme").Credentials}, s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	old := serialOf(t, secret())
	// The instance is in use: events keep arriving, so the collector keeps sending (an idle
	// collector makes no handshake to present a certificate in).
	stopUse := f.inUse("acme")
	defer stopUse()
	f.must("annotate", "tp", "-n", "acme", "acme", "--overwrite", v1.AnnotationRotateRequestedAt+"="+time.Now().UTC().Format(time.RFC3339Nano))
	var serial string
	eventually(t, 60*time.Second, "a new certificate in the credentials Secret", func() bool {
		serial = serialOf(t, secret())
		return serial != old
	})
	eventually(t, 3*time.Minute, "the running collector to present the new certificate", func() bool {
		return strings.Contains(f.logs("acme", before.Name), `"serial":"`+serial+`"`)
	})
	// Presented and accepted: what is recorded from now on arrives.
	since := time.Now()
	eventually(t, time.Minute, "events recorded after the rotation to arrive", func() bool {
		return f.db.StoredBetween(f.ctx, "acme", since, time.Now().Add(time.Hour)) > 0
	})
	after := f.collectorPod(t, "acme")
	if after.UID != before.UID {
		t.Errorf("the collector pod was replaced (%s → %s): the rotation should reach it through its volume", before.Name, after.Name)
	}
	for _, cs := range after.Status.ContainerStatuses {
		if cs.RestartCount != 0 {
			t.Errorf("the collector restarted %d times", cs.RestartCount)
		}
	}
}

// recreate: a configuration change rolls the collector out through the real Deployment
// controller with the Recreate strategy: the old pod is gone before the new one is created.
func (f *fixture) recreate(t *testing.T) {
	dep := &appsv1.Deployment{}
	if err := f.c.Client.Get(f.ctx, client.ObjectKey{Namespace: "acme", Name: "acme-collector"}, dep); err != nil {
		t.Fatal(err)
	}
	if dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("the collector's Deployment has strategy %q", dep.Spec.Strategy.Type)
	}
	old := f.collectorPod(t, "acme")
	w := f.watchPods("acme")
	defer w.stop()
	f.must("patch", "tp", "-n", "acme", "acme", "--type=merge", "-p", `{"spec":{"export":{"interval":"20s"}}}`)
	var fresh *corev1.Pod
	eventually(t, 3*time.Minute, "a new collector pod, ready", func() bool {
		p := f.collectorPod(t, "acme")
		if p == nil || p.UID == old.UID || !podReady(p) {
			return false
		}
		fresh = p
		return true
	})
	// The Deployment controller creates the new pod once the old one has stopped running (its
	// containers terminated), not once its object is gone: that is the moment that matters.
	oldGone, ok := w.whenStopped(old.UID)
	if !ok {
		t.Fatalf("the old pod %s was never seen stopped; saw %v", old.Name, w.seen())
	}
	newAdded, ok := w.when(fresh.UID, watch.Added)
	if !ok {
		t.Fatalf("the new pod %s was never seen created; saw %v", fresh.Name, w.seen())
	}
	if newAdded.Before(oldGone) {
		t.Errorf("old and new collector overlapped: %s created at %s, %s stopped at %s", fresh.Name, newAdded.Format(time.StampMilli), old.Name, oldGone.Format(time.StampMilli))
	}
	after := &appsv1.Deployment{}
	if err := f.c.Client.Get(f.ctx, client.ObjectKey{Namespace: "acme", Name: "acme-collector"}, after); err != nil || after.UID != dep.UID {
		t.Errorf("the Deployment was replaced rather than rolled out (%v)", err)
	}
	if hash := fresh.Annotations[resources.AnnotationConfigHash]; hash == "" || hash == old.Annotations[resources.AnnotationConfigHash] {
		t.Errorf("the new pod carries config hash %q (old %q)", hash, old.Annotations[resources.AnnotationConfigHash])
	}
}

// offAndBack turns acme Off: the operator deletes the collector's Deployment with foreground
// propagation, and the real garbage collector removes its pods before the Deployment goes.
// Events recorded while Off never reach the receiver, judged by their timestamps, once acme is
// turned back to EventLevel.
func (f *fixture) offAndBack(t *testing.T) {
	pods := f.watchPods("acme")
	defer pods.stop()
	deps := f.watchDeployments("acme")
	defer deps.stop()
	pod := f.collectorPod(t, "acme")
	f.must("patch", "tp", "-n", "acme", "acme", "--type=merge", "-p", `{"spec":{"consent":{"tier":"Off"}}}`)
	eventually(t, 2*time.Minute, "acme to report Off in force", func() bool {
		return f.get("tp", "-n", "acme", "acme", "-o", `jsonpath={.status.effectiveTier}/{.status.conditions[?(@.type=="Ready")].status}`) == "Off/True"
	})
	podGone, ok := pods.when(pod.UID, watch.Deleted)
	if !ok {
		t.Fatalf("the collector pod was never seen deleted; saw %v", pods.seen())
	}
	depGone, ok := deps.whenName("acme-collector", watch.Deleted)
	if !ok {
		t.Fatalf("the collector Deployment was never seen deleted; saw %v", deps.seen())
	}
	if !deps.sawForeground("acme-collector") {
		t.Errorf("the Deployment was not deleted in the foreground (no %s finalizer seen while it was going); saw %v", metav1.FinalizerDeleteDependents, deps.seen())
	}
	if depGone.Before(podGone) {
		t.Errorf("the Deployment was gone (%s) before its pod (%s)", depGone.Format(time.StampMilli), podGone.Format(time.StampMilli))
	}

	from, to, err := fleetcheck.Record(f.ctx, f.instances["acme"], 25)
	if err != nil {
		t.Fatal(err)
	}
	f.must("patch", "tp", "-n", "acme", "acme", "--type=merge", "-p", `{"spec":{"consent":{"tier":"EventLevel"}}}`)
	eventually(t, 3*time.Minute, "acme to report EventLevel in force, its collector ready", func() bool {
		p := f.collectorPod(t, "acme")
		return p != nil && podReady(p) &&
			f.get("tp", "-n", "acme", "acme", "-o", `jsonpath={.status.effectiveTier}/{.status.conditions[?(@.type=="Ready")].status}`) == "EventLevel/True"
	})
	// The collector exports again: events recorded now arrive (and it has read past the Off
	// period by then).
	since, _, err := fleetcheck.Record(f.ctx, f.instances["acme"], 5)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "events recorded after EventLevel returned to arrive", func() bool {
		return f.db.StoredBetween(f.ctx, "acme", since, time.Now().Add(time.Hour)) >= 5
	})
	if n := f.db.StoredBetween(f.ctx, "acme", from, to); n != 0 {
		t.Errorf("%d of the 25 events recorded while acme was Off reached the receiver", n)
	}
}

// plugin: the kubectl plugin, found by kubectl on PATH, against the real cluster: the install
// check, status and its tree with the real collector pod, preview through exec into that pod,
// rotate and reconcile answered by the real manager, suspend and resume, and a support bundle
// with real logs and no Secret data.
func (f *fixture) plugin(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kubectl-telemetry")
	build := exec.CommandContext(f.ctx, "go", "build", "-o", bin, "./cmd/kubectl-telemetry")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	// As a user runs it: kubectl finds kubectl-telemetry on PATH.
	plugin := func(args ...string) (string, error) {
		cmd := exec.CommandContext(f.ctx, f.kubectl, append([]string{"telemetry"}, args...)...) //nolint:gosec // test harness
		cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+f.c.Kubeconfig)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := plugin(args...)
		if err != nil {
			t.Fatalf("kubectl telemetry %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// The manager's own flags name the issuer and the receiver (on loopback here).
	out := must("check", "--wait", "60s")
	for _, s := range []string{"[ok  ] manager: Deployment telemetry-system/telemetry-operator-controller-manager available",
		"[ok  ] issuer: Secret telemetry-system/telemetry-fleet-issuer", "(the manager's --receiver-url) answers TLS", "[ok  ] ledger"} {
		if !strings.Contains(out, s) {
			t.Errorf("check lacks %q:\n%s", s, out)
		}
	}

	out = must("status", "-A")
	for _, name := range fleetcheck.Samples {
		if !strings.Contains(out, name+"   ") {
			t.Errorf("status -A lacks %s:\n%s", name, out)
		}
	}
	// What the collectors report reaches status at the manager's next resync of the policy (it
	// watches nothing in the tenant namespaces: --tenant-resync, 1m): the demo's checks just
	// restarted acme's collector.
	eventually(t, 90*time.Second, "a Ready fleet with no problems (kubectl telemetry status -A --problems)", func() bool {
		return strings.Contains(must("status", "-A", "--problems"), "No problems")
	})
	tree := must("status", "-n", "acme", "acme")
	pod := f.collectorPod(t, "acme")
	for _, s := range []string{"└── Pod " + pod.Name + ": Running, ready, 0 restarts, tier EventLevel, configuration", "(current)", "1/1 ready", "Problems:\n  none"} {
		if !strings.Contains(tree, s) {
			t.Errorf("status acme lacks %q:\n%s", s, tree)
		}
	}

	// Preview runs inside the collector pod: the next batch and the receiver's latest delivery.
	out = must("preview", "-n", "acme", "acme", "--limit", "2")
	for _, s := range []string{"==> what acme's collector would send next (pod " + pod.Name + ")", "instance acme: consent tier EventLevel",
		"==> what the receiver stored from acme last (latest 2 deliveries)", `"deliveries"`} {
		if !strings.Contains(out, s) {
			t.Errorf("preview lacks %q:\n%s", s, out)
		}
	}
	if out := must("preview", "-n", "initech", "initech"); !strings.Contains(out, "consent tier Off") {
		t.Errorf("preview of an Off instance:\n%s", out)
	}

	// The real manager answers the requests.
	revision, err := strconv.Atoi(f.get("tp", "-n", "globex", "globex", "-o", "jsonpath={.status.credentials.revision}"))
	if err != nil {
		t.Fatal(err)
	}
	out = must("rotate", "-n", "globex", "globex", "--wait", "2m")
	if want := fmt.Sprintf("rotation handled: certificate revision %d", revision+1); !strings.Contains(out, want) {
		t.Errorf("rotate lacks %q:\n%s", want, out)
	}
	if out := must("reconcile", "-n", "globex", "globex", "--wait", "2m"); !strings.Contains(out, "reconcile handled: Ready=") {
		t.Errorf("reconcile:\n%s", out)
	}
	must("suspend", "-n", "globex", "globex")
	eventually(t, time.Minute, "the suspended policy to show as such", func() bool {
		out, _ := plugin("status", "-A", "--problems")
		return strings.Contains(out, "globex/globex") && strings.Contains(out, "Ready=False Suspended") && strings.Contains(out, "kubectl telemetry resume NAME")
	})
	must("resume", "-n", "globex", "globex")
	f.must("wait", "--for=condition=Ready", "tp/globex", "-n", "globex", "--timeout=120s")

	// The bundle: real logs of the collector and the manager, and no Secret's data.
	file := filepath.Join(dir, "acme.tar.gz")
	must("bundle", "-n", "acme", "acme", "-f", file)
	files := testenv.Untar(t, file)
	if log := files["bundle/collector/logs/"+pod.Name+"-collector.log"]; !bytes.Contains(log, []byte("collector started")) {
		t.Errorf("the bundle lacks the collector's log (%d bytes)", len(log))
	}
	manager := false
	for name, data := range files {
		if strings.HasPrefix(name, "bundle/manager/logs/") && len(data) > 0 {
			manager = true
		}
	}
	if !manager {
		t.Errorf("the bundle lacks the manager's log: %v", slices.Sorted(maps.Keys(files)))
	}
	var secrets corev1.SecretList
	if err := f.c.Client.List(f.ctx, &secrets, client.InNamespace("acme")); err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		for key, value := range s.Data {
			if len(value) < 8 {
				continue
			}
			for name, data := range files {
				if bytes.Contains(data, value) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString(value))) {
					t.Errorf("the bundle's %s carries Secret %s's %s", name, s.Name, key)
				}
			}
		}
	}
}

// --- helpers ---

// inUse records an allow-listed event in an instance every second until the returned function
// is called.
func (f *fixture) inUse(instance string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Second):
				_, _, _ = fleetcheck.Record(f.ctx, f.instances[instance], 1)
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func seedInstance(ctx context.Context, pg *pgtest.Server, name string, s uint64) (*pgxpool.Pool, error) {
	db := strings.ReplaceAll(name, "-", "_")
	if err := pg.CreateDatabase(ctx, db); err != nil {
		return nil, err
	}
	if err := pg.Exec(ctx, db, seed.Schema); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, pg.DSN(db))
	if err != nil {
		return nil, err
	}
	if _, err := seed.Generate(ctx, pool, seed.Options{Users: 14, Days: 42, EventsPerUserDay: 6, Seed: s}); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// onboard does what the README asks of a cluster admin for an instance namespace: bind the
// tenant role to the manager's ServiceAccount, then label the namespace. The host-network label
// and parameters are the test cluster's own.
func (f *fixture) onboard(ns string) {
	f.t.Helper()
	port, err := testenv.FreeAddr()
	if err != nil {
		f.t.Fatal(err)
	}
	f.applyYAML(fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    %[2]s: "true"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: %[3]s
  namespace: %[1]s
data:
  port: %[4]q
  host: %[5]q
  apiPort: %[6]q
`, ns, cluster.HostNetworkLabel, cluster.HostNetworkParams, port[strings.LastIndex(port, ":")+1:], f.c.APIHost, f.c.APIPort))
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "telemetry-operator", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: tenantRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: managerNS, Name: managerSA}},
	}
	if err := f.c.Client.Create(f.ctx, rb); err != nil {
		f.t.Fatal(err)
	}
	f.must("label", "namespace", ns, v1.LabelOnboarded+"=true")
}

// restrictedDryRun creates, as a server-side dry run, a pod of each shipped Deployment's
// template in a namespace that enforces Pod Security restricted.
func (f *fixture) restrictedDryRun(t *testing.T, manifests ...string) {
	for _, m := range manifests {
		raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), m))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := cluster.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, u := range objs {
			if u.GetKind() != "Deployment" {
				continue
			}
			dep := &appsv1.Deployment{}
			if err := fromUnstructured(u, dep); err != nil {
				t.Fatal(err)
			}
			f.dryRunPod(t, dep.Name, dep.Spec.Template)
			n++
		}
		if n == 0 {
			t.Errorf("%s has no Deployment", m)
		}
	}
}

func (f *fixture) dryRunPod(t *testing.T, name string, tmpl corev1.PodTemplateSpec) {
	const ns = "pod-security-check"
	f.applyYAML(fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    %s: restricted\n", ns, cluster.LabelPodSecurityEnforce))
	sa := tmpl.Spec.ServiceAccountName
	if sa == "" {
		sa = "default" // made by the controller manager, shortly after the namespace
	}
	f.applyYAML(fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: %s\n  namespace: %s\n", sa, ns))
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "check-" + name, Namespace: ns, Labels: tmpl.Labels}, Spec: tmpl.Spec}
	if err := f.c.Client.Create(f.ctx, pod, client.DryRunAll); err != nil {
		t.Errorf("a pod of %s is refused under Pod Security restricted: %v", name, err)
	}
	// And the namespace does refuse what restricted forbids: the same pod on the host network.
	pod.Spec.HostNetwork = true
	if err := f.c.Client.Create(f.ctx, pod, client.DryRunAll); err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
		t.Errorf("a host-network pod of %s was not refused by Pod Security restricted: %v", name, err)
	}
}

func (f *fixture) collectorPod(t *testing.T, ns string) *corev1.Pod {
	t.Helper()
	pods := &corev1.PodList{}
	if err := f.c.Client.List(f.ctx, pods, client.InNamespace(ns), client.MatchingLabels{resources.LabelName: resources.NameValue}); err != nil {
		t.Fatal(err)
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	if len(live) == 0 {
		return nil
	}
	if len(live) > 1 {
		t.Errorf("%d collector pods in %s at once", len(live), ns)
	}
	return &live[0]
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func serialOf(t *testing.T, s *corev1.Secret) string {
	t.Helper()
	cert, err := pki.ParseCertificatePEM(s.Data[pki.KeyCert])
	if err != nil {
		t.Fatal(err)
	}
	return pki.SerialHex(cert)
}

// applyManifest applies a shipped manifest with the test cluster's overlay, server-side, as
// `kubectl apply --server-side -f` would.
func (f *fixture) applyManifest(path string, o cluster.Overlay) {
	f.t.Helper()
	raw, err := os.ReadFile(path) //nolint:gosec // the project's own file
	if err != nil {
		f.t.Fatalf("%v (run make build-installer)", err)
	}
	objs, err := cluster.Decode(raw)
	if err != nil {
		f.t.Fatal(err)
	}
	if objs, err = o.Apply(objs); err != nil {
		f.t.Fatal(err)
	}
	out, err := cluster.Encode(objs)
	if err != nil {
		f.t.Fatal(err)
	}
	f.applyYAML(string(out))
}

func (f *fixture) applyYAML(doc string) {
	f.t.Helper()
	path := filepath.Join(f.c.Dir, fmt.Sprintf("apply-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		f.t.Fatal(err)
	}
	f.must("apply", "--server-side", "--force-conflicts", "-f", path)
}

func (f *fixture) createSecret(ns, name string, typ corev1.SecretType, data map[string][]byte) {
	f.t.Helper()
	if err := f.c.Client.Create(f.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: typ, Data: data}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) run(args ...string) (string, error) {
	cmd := exec.CommandContext(f.ctx, f.kubectl, append([]string{"--kubeconfig", f.c.Kubeconfig}, args...)...) //nolint:gosec // test harness
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (f *fixture) must(args ...string) string {
	f.t.Helper()
	out, err := f.run(args...)
	if err != nil {
		f.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// get runs kubectl get and returns its trimmed output, or "" if it failed.
func (f *fixture) get(args ...string) string {
	out, err := f.run(append([]string{"get"}, args...)...)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// logs returns a pod's log as the kubelet serves it through the API server ("" if it cannot).
func (f *fixture) logs(ns, pod string) string {
	out, err := f.run("logs", "-n", ns, pod)
	if err != nil {
		return ""
	}
	return out
}

// dumpOnFailure logs what helps to see why: the cluster's pods, events and the project's logs.
func (f *fixture) dumpOnFailure() {
	if !f.t.Failed() {
		return
	}
	if hold := os.Getenv("TELEMETRY_E2E_CLUSTER_HOLD"); hold != "" {
		d, _ := time.ParseDuration(hold)
		if deadline, ok := f.t.Deadline(); ok && time.Until(deadline)-3*time.Minute < d {
			d = max(0, time.Until(deadline)-3*time.Minute) // leave Close its time
		}
		f.t.Logf("holding the cluster for %s: KUBECONFIG=%s", d, f.c.Kubeconfig)
		time.Sleep(d)
	}
	for _, args := range [][]string{{"get", "pods", "-A", "-o", "wide"}, {"get", "tp", "-A"}, {"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"logs", "-n", managerNS, "deployment/" + managerDeployment, "--tail=80"}, {"logs", "-n", receiverNS, "deployment/" + receiverName, "--tail=40"},
		{"logs", "-n", "acme", "deployment/acme-collector", "--tail=40"}} {
		out, _ := f.run(args...)
		f.t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
	f.t.Logf("kubelet log (tail):\n%s", tailLines(f.c.Log("kubelet"), 60))
	f.t.Logf("containerd log (tail):\n%s", tailLines(f.c.Log("containerd"), 30))
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func eventually(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(time.Second)
	}
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// observed is one watch event, with the time the test saw it.
type observed struct {
	At        time.Time
	Type      watch.EventType
	Name      string
	UID       types.UID
	Deleting  bool
	Finalizer []string
	// Stopped: a pod that no longer runs anything (phase Succeeded or Failed, or every
	// container terminated).
	Stopped bool
}

// watcher records a namespace's watch events as they come.
type watcher struct {
	mu     sync.Mutex
	events []observed
	w      watch.Interface
	done   chan struct{}
}

func (f *fixture) watchPods(ns string) *watcher {
	w, err := f.c.Clientset.CoreV1().Pods(ns).Watch(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return record(w)
}

func (f *fixture) watchDeployments(ns string) *watcher {
	w, err := f.c.Clientset.AppsV1().Deployments(ns).Watch(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return record(w)
}

func record(w watch.Interface) *watcher {
	r := &watcher{w: w, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ev := range w.ResultChan() {
			obj, ok := ev.Object.(metav1.Object)
			if !ok {
				continue
			}
			stopped := ev.Type == watch.Deleted
			if pod, ok := ev.Object.(*corev1.Pod); ok && !stopped {
				stopped = pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
				if len(pod.Status.ContainerStatuses) > 0 && !stopped {
					stopped = true
					for _, cs := range pod.Status.ContainerStatuses {
						stopped = stopped && cs.State.Terminated != nil
					}
				}
			}
			r.mu.Lock()
			r.events = append(r.events, observed{At: time.Now(), Type: ev.Type, Name: obj.GetName(), UID: obj.GetUID(),
				Deleting: obj.GetDeletionTimestamp() != nil, Finalizer: obj.GetFinalizers(), Stopped: stopped})
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *watcher) stop() { r.w.Stop(); <-r.done }

func (r *watcher) when(uid types.UID, typ watch.EventType) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.UID == uid && e.Type == typ {
			return e.At, true
		}
	}
	return time.Time{}, false
}

// whenStopped is when a pod was first seen no longer running anything.
func (r *watcher) whenStopped(uid types.UID) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.UID == uid && e.Stopped {
			return e.At, true
		}
	}
	return time.Time{}, false
}

func (r *watcher) whenName(name string, typ watch.EventType) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.Name == name && e.Type == typ {
			return e.At, true
		}
	}
	return time.Time{}, false
}

// sawForeground reports whether the object was seen being deleted while it held the
// foregroundDeletion finalizer (the garbage collector deleting its dependents first).
func (r *watcher) sawForeground(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.Name == name && e.Deleting && slices.Contains(e.Finalizer, metav1.FinalizerDeleteDependents) {
			return true
		}
	}
	return false
}

func (r *watcher) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, fmt.Sprintf("%s %s %s deleting=%v stopped=%v %v", e.At.Format(time.StampMilli), e.Type, e.Name, e.Deleting, e.Stopped, e.Finalizer))
	}
	return out
}

func fromUnstructured(u *unstructured.Unstructured, into any) error {
	return runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true)
}
