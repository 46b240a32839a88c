/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

var (
	k8s        client.Client
	kubeconfig string
)

func TestMain(m *testing.M) {
	env, cfg, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer func() { _ = testenv.Stop(env) }()
		k8s, err = client.New(cfg, client.Options{Scheme: Scheme()})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "telemetryctl-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = os.RemoveAll(dir) }()
		kubeconfig, err = writeKubeconfig(env, dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func writeKubeconfig(env *envtest.Environment, dir string) (string, error) {
	path := filepath.Join(dir, "kubeconfig")
	return path, os.WriteFile(path, env.KubeConfig, 0o600)
}

// run runs the plugin in-process, as `kubectl telemetry ARGS...` would.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newCommand(&Options{
		Flags:   genericclioptions.NewConfigFlags(true),
		Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
		Now:     time.Now,
	})
	cmd.SetArgs(append([]string{"--kubeconfig", kubeconfig}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func namespace(t *testing.T, name string) {
	t.Helper()
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

// policy creates a policy and writes the status the operator would.
func policy(t *testing.T, ns, name string, tier v1.ConsentTier, status v1.TelemetryPolicyStatus) *v1.TelemetryPolicy {
	t.Helper()
	ctx := context.Background()
	p := &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1.TelemetryPolicySpec{
		InstanceID: name + "-inst", Consent: v1.ConsentSpec{Tier: tier},
		Contract: &v1.ContractSpec{Basis: v1.BasisLegacyTerms},
	}}
	if tier != v1.TierOff {
		p.Spec.Source = &v1.SourceSpec{DatabaseSecretRef: v1.SecretKeyRef{Name: "db", Key: "dsn"}}
		p.Spec.Export = &v1.ExportSpec{Endpoint: "https://receiver.example:8443"}
	}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), p) })
	status.ObservedGeneration = p.Generation
	p.Status = status
	if err := k8s.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func cond(typ string, status metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.Now()}
}

func readyStatus(tier v1.ConsentTier) v1.TelemetryPolicyStatus {
	now := metav1.Now()
	later := metav1.NewTime(now.Add(40 * 24 * time.Hour))
	return v1.TelemetryPolicyStatus{
		EffectiveTier: tier,
		Conditions: []metav1.Condition{
			cond(v1.ConditionReady, metav1.ConditionTrue, "Enforced", "effective tier enforced"),
			cond(v1.ConditionConsentEligible, metav1.ConditionTrue, "Eligible", "as declared"),
			cond(v1.ConditionExporting, metav1.ConditionTrue, "Flowing", "flowing"),
		},
		Credentials: &v1.CredentialsStatus{Revision: 2, SerialNumber: "ab12", NotAfter: &later},
		Export:      &v1.ExportStatus{LastSuccessTime: &now, Cursor: 42, EventsExported: 40, LagSeconds: 3},
	}
}

func TestStatusListsDeclaredAndEnforcedTierAndWhy(t *testing.T) {
	namespace(t, "st-a")
	namespace(t, "st-b")
	policy(t, "st-a", "healthy", v1.TierCriticalOnly, readyStatus(v1.TierCriticalOnly))
	st := readyStatus(v1.TierCriticalOnly)
	st.Conditions = []metav1.Condition{
		cond(v1.ConditionReady, metav1.ConditionFalse, "ReceiverUnavailable", "the receiver's consent ledger is unreachable"),
		cond(v1.ConditionConsentRecorded, metav1.ConditionFalse, "ReceiverUnavailable", "dial tcp: connection refused"),
		cond(v1.ConditionExporting, metav1.ConditionFalse, "NoRecentSuccess", "no batch acknowledged for 20m"),
	}
	// A hostile collector's error, steering the terminal, must not reach it as such.
	st.Export.LastError = "receiver answered 503 \x1b[2J\x1b]0;owned\x07 ReceiverBusy \u202eevil"
	policy(t, "st-b", "broken", v1.TierCriticalOnly, st)

	out, _, err := run(t, "status", "-A")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := map[string][]string{
		"healthy": {"st-a", "healthy-inst", "CriticalOnly", "AsDeclared", "True", "expires in 39d", "3s"},
		"broken":  {"st-b", "False (ReceiverUnavailable)"},
	}
	for name, cells := range want {
		found := false
		for _, l := range lines {
			if strings.Contains(l, " "+name+" ") {
				found = true
				for _, c := range cells {
					if !strings.Contains(l, c) {
						t.Errorf("status line of %s lacks %q:\n%s", name, c, l)
					}
				}
			}
		}
		if !found {
			t.Errorf("no status line for %s:\n%s", name, out)
		}
	}
	if !strings.HasPrefix(lines[0], "NAMESPACE") {
		t.Errorf("-A prints the namespace column first:\n%s", lines[0])
	}

	// Only the current namespace without -A.
	out, _, err = run(t, "status", "-n", "st-a")
	if err != nil || strings.Contains(out, "broken") || !strings.Contains(out, "healthy") || strings.HasPrefix(out, "NAMESPACE") {
		t.Errorf("status -n st-a: %v\n%s", err, out)
	}

	// --problems: only the broken one, each problem with what it means and what to do.
	out, _, err = run(t, "status", "-A", "--problems", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "healthy") || !strings.Contains(out, "st-b/broken") {
		t.Errorf("--problems lists exactly the policies not Ready or not exporting:\n%s", out)
	}
	for _, s := range []string{"Ready=False ReceiverUnavailable", "Exporting=False NoRecentSuccess", "means:", "do:", "kubectl telemetry check", "ReceiverBusy"} {
		if !strings.Contains(out, s) {
			t.Errorf("--problems output lacks %q:\n%s", s, out)
		}
	}
	if strings.ContainsAny(out, "\x1b\x07\u202e") {
		t.Errorf("a control or bidi character from the cluster reached the terminal: %q", out)
	}

	// -o json is the same data for scripts.
	out, _, err = run(t, "status", "-A", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Items []Summary }
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	byName := map[string]Summary{}
	for _, s := range doc.Items {
		byName[s.Name] = s
	}
	if s := byName["broken"]; s.Ready != "False" || s.Reason != "ReceiverUnavailable" || s.LagSeconds == nil || *s.LagSeconds != 3 {
		t.Errorf("-o json for broken: %+v", s)
	}
	if s := byName["healthy"]; s.EffectiveTier != v1.TierCriticalOnly || s.CredentialsNotAfter == nil {
		t.Errorf("-o json for healthy: %+v", s)
	}

	if _, _, err := run(t, "status", "-o", "xml"); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Errorf("an unknown output format is refused: %v", err)
	}
	if _, _, err := run(t, "status", "-n", "st-a", "nosuch"); err == nil || !strings.Contains(err.Error(), "st-a/nosuch") {
		t.Errorf("a missing policy names where it was looked for: %v", err)
	}
}

func TestStatusWhyNamesTheDowngrade(t *testing.T) {
	p := &v1.TelemetryPolicy{Spec: v1.TelemetryPolicySpec{Consent: v1.ConsentSpec{Tier: v1.TierEventLevel}}}
	p.Status.EffectiveTier = v1.TierCriticalOnly
	meta.SetStatusCondition(&p.Status.Conditions, cond(v1.ConditionReady, metav1.ConditionTrue, "Enforced", ""))
	meta.SetStatusCondition(&p.Status.Conditions, cond(v1.ConditionConsentEligible, metav1.ConditionFalse, "TrialExpired", "trial ended"))
	if s := Summarize(p); s.Why != "TrialExpired" {
		t.Errorf("why of a downgraded policy: %q", s.Why)
	}
	// A Ready policy downgraded by its contract has no problem to fix here; one not yet
	// reconciled does.
	if pr := ProblemsOf(p); len(pr) != 0 {
		t.Errorf("problems of a Ready, downgraded policy: %+v", pr)
	}
	if pr := ProblemsOf(&v1.TelemetryPolicy{}); len(pr) != 1 || pr[0].Reason != "NotReconciled" {
		t.Errorf("problems of an unreconciled policy: %+v", pr)
	}
}

const secretValue = "s3cr3t-QmFzZTY0LXNlY3JldA"

// hostile is text a collector or a namespace editor could write, meant to steer a terminal.
const hostile = "\x1b]0;owned\x07\x1b[2J\u009b31m\u202eevil"

// owned creates the objects the operator would own for p and the collector pod its Deployment's
// ReplicaSet would run (running podConfigHash), with Events; state is the collector's progress.
func owned(t *testing.T, p *v1.TelemetryPolicy, podConfigHash, state string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	n := resources.NamesFor(p.Name)
	cfg := resources.ConfigMap(p, []byte(`{"version":1}`))
	st := resources.StateConfigMap(p)
	st.Data[resources.StateKey] = state
	tlsSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: n.Credentials,
		Labels: resources.Labels(p, "credentials"),
		Annotations: map[string]string{resources.AnnotationRevision: "2", resources.AnnotationIssueReason: "Scheduled",
			LastAppliedAnnotation: `{"data":{"tls.key":"` + secretValue + `"}}`}},
		Data: map[string][]byte{"tls.key": []byte(secretValue), "tls.crt": []byte("cert")}}
	key := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: n.PseudonymKey}, Data: map[string][]byte{"key": []byte(secretValue)}}
	if podConfigHash == "current" {
		podConfigHash = resources.ConfigHash([]byte(cfg.Data[resources.ConfigKey]))
	}
	dep := resources.Deployment(p, "collector:dev", resources.ConfigHash([]byte(cfg.Data[resources.ConfigKey])), v1.TierCriticalOnly)
	// A literal value in the pod template (a DSN set inline, say) must not reach a bundle.
	dep.Spec.Template.Spec.Containers[0].Env = append(dep.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "PGPASSWORD", Value: secretValue})
	for _, o := range []client.Object{cfg, st, tlsSecret, key, resources.ServiceAccount(p), resources.Role(p), resources.RoleBinding(p), dep} {
		if err := controllerutil.SetControllerReference(p, o, Scheme()); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: n.Deployment + "-5d9c", Labels: dep.Spec.Template.Labels},
		Spec: appsv1.ReplicaSetSpec{Selector: dep.Spec.Selector, Template: dep.Spec.Template}}
	if err := controllerutil.SetControllerReference(dep, rs, Scheme()); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: n.Deployment + "-5d9c-abc12",
		Labels:      dep.Spec.Template.Labels,
		Annotations: map[string]string{resources.AnnotationConfigHash: podConfigHash, resources.AnnotationTier: "CriticalOnly"}},
		Spec: dep.Spec.Template.Spec}
	if err := controllerutil.SetControllerReference(rs, pod, Scheme()); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
		Name: resources.ContainerName, RestartCount: 3, Image: "collector:dev", ImageID: "x",
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 40s"}},
	}}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	for i, e := range []struct{ kind, obj, reason string }{{"TelemetryPolicy", p.Name, "CredentialsIssued"}, {"Pod", pod.Name, "BackOff"},
		{"Pod", "unrelated", "Other"}, {"ConfigMap", p.Name, "SameNameOtherKind"}} {
		ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: fmt.Sprintf("ev-%s-%d", p.Name, i)},
			InvolvedObject: corev1.ObjectReference{Kind: e.kind, Name: e.obj, Namespace: p.Namespace},
			Reason:         e.reason, Message: "message of " + e.reason, Type: corev1.EventTypeNormal,
			LastTimestamp: metav1.NewTime(time.Now().Add(time.Duration(i) * time.Second))}
		if err := k8s.Create(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	return pod
}

// foreignPod is a pod someone with pod-create rights made with the collector's labels.
func foreignPod(t *testing.T, p *v1.TelemetryPolicy, name string) {
	t.Helper()
	ctx := context.Background()
	dep := resources.Deployment(p, "evil:latest", "", v1.TierCriticalOnly)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: name, Labels: dep.Spec.Template.Labels,
		Annotations: map[string]string{resources.AnnotationTier: hostile}}, Spec: dep.Spec.Template.Spec}
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PGPASSWORD", Value: secretValue}}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
}

func TestStatusTreeShowsOwnedObjectsPodAndEvents(t *testing.T) {
	namespace(t, "tree")
	p := policy(t, "tree", "acme", v1.TierCriticalOnly, readyStatus(v1.TierCriticalOnly))
	owned(t, p, "0ld0ld0ld0ld0ld0", `{"cursor":42,"eventsExported":40,"eventsDropped":2,"tier":"CriticalOnly"}`)
	foreignPod(t, p, "aaa-fake")

	out, _, err := run(t, "status", "-n", "tree", "acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"TelemetryPolicy tree/acme (instance acme-inst)",
		"├── ConfigMap acme-collector-config: collector configuration",
		"ConfigMap acme-collector-state: collector progress: tier CriticalOnly, cursor 42, 40 exported, 2 dropped",
		"Secret acme-collector-tls: client certificate revision 2 (Scheduled), expires in 39d",
		"Secret acme-pseudonym-key: pseudonym key",
		"RoleBinding acme-collector: present",
		"└── Deployment acme-collector: 0/1 ready, tier CriticalOnly",
		"1 pod(s) carry the collector's labels but are not its Deployment's",
		"└── Pod acme-collector-5d9c-abc12: Running, not ready, 3 restarts",
		"STALE", "waiting: CrashLoopBackOff",
		"CredentialsIssued", "BackOff",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("the tree lacks %q:\n%s", s, out)
		}
	}
	for _, s := range []string{"message of Other", "SameNameOtherKind", "aaa-fake", secretValue} {
		if strings.Contains(out, s) {
			t.Errorf("the tree shows %q:\n%s", s, out)
		}
	}

	out, _, err = run(t, "status", "-n", "tree", "acme", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var d Detail
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Tree.Children) != 8 || d.Tree.Children[7].Kind != "Deployment" || len(d.Tree.Children[7].Children) != 1 {
		t.Errorf("-o json tree: %+v", d.Tree)
	}
	if len(d.Events) != 2 {
		t.Errorf("-o json events: %+v", d.Events)
	}

	// An owned object missing is named as a problem.
	if err := k8s.Delete(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "tree", Name: "acme-collector"}}); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, "status", "-n", "tree", "acme")
	if !strings.Contains(out, "ServiceAccount acme-collector: absent  ⚠ missing") {
		t.Errorf("a missing owned object is not flagged:\n%s", out)
	}
}

// TestHostileTextNeverReachesTheTerminal: what a collector writes (its progress, its error) and
// what a namespace editor writes (Events, pods, annotations) is printed cleaned in every view,
// and encoded as JSON and YAML without failing the rest.
func TestHostileTextNeverReachesTheTerminal(t *testing.T) {
	namespace(t, "hostile")
	st := readyStatus(v1.TierCriticalOnly)
	st.Export.LastError = "receiver answered 503 " + hostile
	st.Conditions = append(st.Conditions[:0], cond(v1.ConditionReady, metav1.ConditionFalse, "ReconcileError", "failed: "+hostile))
	p := policy(t, "hostile", "acme", v1.TierCriticalOnly, st)
	owned(t, p, "current", `{"cursor":1,"tier":"`+hostile+`"}`)
	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "hostile", Name: "forged"},
		InvolvedObject: corev1.ObjectReference{Kind: "TelemetryPolicy", Name: "acme", Namespace: "hostile"},
		Reason:         "Forged", Message: hostile, Type: hostile, LastTimestamp: metav1.Now()}
	if err := k8s.Create(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"status", "-A", "-o", "wide"}, {"status", "-A", "--problems"}, {"status", "-n", "hostile", "acme"},
		{"status", "-n", "hostile", "acme", "--problems"}, {"status", "-A", "-o", "yaml"}, {"status", "-n", "hostile", "acme", "-o", "yaml"},
		{"status", "-A", "-o", "json"},
	} {
		out, errOut, err := run(t, args...)
		if err != nil {
			t.Errorf("%v: %v", args, err)
		}
		if strings.ContainsAny(out+errOut, "\x1b\x07\u009b\u202e") {
			t.Errorf("%v: a control or bidi character reached the terminal: %q", args, out)
		}
		if !strings.Contains(out, "owned") && !strings.Contains(out, "\\ufffd") {
			t.Errorf("%v: the hostile text is not shown (cleaned) at all:\n%s", args, out)
		}
	}
	file := filepath.Join(t.TempDir(), "b.tar.gz")
	if _, _, err := run(t, "bundle", "-n", "hostile", "acme", "-f", file); err != nil {
		t.Fatal(err)
	}
	files := testenv.Untar(t, file)
	for _, f := range []string{"bundle/policy.yaml", "bundle/events.yaml", "bundle/status.txt", "bundle/objects/configmap-acme-collector-state.yaml"} {
		if len(files[f]) == 0 {
			t.Errorf("%s is missing: a hostile string cost the whole file", f)
		}
		if bytes.ContainsAny(files[f], "\x1b\x07\u009b\u202e") {
			t.Errorf("%s carries a control character", f)
		}
	}
}

func TestBundleCarriesNoSecretData(t *testing.T) {
	namespace(t, "bundle")
	p := policy(t, "bundle", "acme", v1.TierCriticalOnly, readyStatus(v1.TierCriticalOnly))
	owned(t, p, "current", `{"cursor":42,"tier":"CriticalOnly","planted":"`+secretValue+`"}`)
	foreignPod(t, p, "aaa-fake")
	// The policy itself carries a last-applied copy too (as kubectl apply leaves it).
	p.Annotations = map[string]string{LastAppliedAnnotation: `{"spec":{"note":"` + secretValue + `"}}`}
	if err := k8s.Update(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "b.tar.gz")
	_, errOut, err := run(t, "bundle", "-n", "bundle", "acme", "-f", file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "wrote "+file) {
		t.Errorf("bundle says where it wrote: %q", errOut)
	}
	files := testenv.Untar(t, file)
	for _, want := range []string{"bundle/policy.yaml", "bundle/status.txt", "bundle/events.yaml",
		"bundle/objects/secret-acme-collector-tls.yaml", "bundle/objects/deployment-acme-collector.yaml",
		"bundle/objects/pod-acme-collector-5d9c-abc12.yaml", "bundle/objects/replicaset-acme-collector-5d9c.yaml",
		"bundle/objects/configmap-acme-collector-state.yaml", "bundle/errors.txt"} {
		if _, ok := files[want]; !ok {
			t.Errorf("the bundle lacks %s (has %v)", want, keys(files))
		}
	}
	for name, data := range files {
		// As it is, and as a Secret's YAML would carry it (base64).
		if bytes.Contains(data, []byte(secretValue)) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString([]byte(secretValue)))) {
			t.Errorf("%s carries Secret data", name)
		}
		if bytes.Contains(data, []byte("managedFields")) {
			t.Errorf("%s carries managedFields", name)
		}
	}
	if !bytes.Contains(files["bundle/objects/secret-acme-collector-tls.yaml"], []byte("telemetry.sourcegraph.com/revision")) {
		t.Errorf("the Secret's metadata is kept:\n%s", files["bundle/objects/secret-acme-collector-tls.yaml"])
	}
	// The collector's logs, current and (it restarted) previous; no kubelet runs here, so the API
	// server answers them empty. No manager pod runs: errors.txt says so, the bundle is written.
	for _, f := range []string{"bundle/collector/logs/acme-collector-5d9c-abc12-collector.log", "bundle/collector/logs/acme-collector-5d9c-abc12-collector.previous.log"} {
		if _, ok := files[f]; !ok {
			t.Errorf("the bundle lacks %s", f)
		}
	}
	for name := range files {
		if strings.Contains(name, "aaa-fake") {
			t.Errorf("the bundle includes %s, a pod the collector Deployment does not control", name)
		}
	}
	if !bytes.Contains(files["bundle/objects/pod-acme-collector-5d9c-abc12.yaml"], []byte("value: "+redacted)) {
		t.Errorf("the pod's literal env value is not redacted:\n%s", files["bundle/objects/pod-acme-collector-5d9c-abc12.yaml"])
	}
	if !bytes.Contains(files["bundle/errors.txt"], []byte("manager pods in telemetry-system: none")) ||
		!bytes.Contains(files["bundle/errors.txt"], []byte("1 pod(s) carry the collector's labels")) {
		t.Errorf("errors.txt: %s", files["bundle/errors.txt"])
	}
	if !bytes.Contains(files["bundle/events.yaml"], []byte("CredentialsIssued")) || bytes.Contains(files["bundle/events.yaml"], []byte("message of Other")) ||
		bytes.Contains(files["bundle/events.yaml"], []byte("SameNameOtherKind")) {
		t.Errorf("events.yaml: %s", files["bundle/events.yaml"])
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestActionsSetTheFieldsTheOperatorReads(t *testing.T) {
	namespace(t, "act")
	policy(t, "act", "acme", v1.TierCriticalOnly, readyStatus(v1.TierCriticalOnly))
	ctx := context.Background()
	get := func() *v1.TelemetryPolicy {
		p := &v1.TelemetryPolicy{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: "act", Name: "acme"}, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, _, err := run(t, "suspend", "-n", "act", "acme"); err != nil || !get().Spec.Suspend {
		t.Fatalf("suspend: %v", err)
	}
	out, _, err := run(t, "rotate", "-n", "act", "acme")
	first := get().Annotations[v1.AnnotationRotateRequestedAt]
	if err != nil || first == "" || !strings.Contains(out, "suspended") {
		t.Fatalf("rotate: %v %q\n%s", err, first, out)
	}
	if _, _, err := run(t, "rotate", "-n", "act", "acme"); err != nil || get().Annotations[v1.AnnotationRotateRequestedAt] == first {
		t.Errorf("a second rotate must set a new value: %v", err)
	}
	if _, _, err := run(t, "resume", "-n", "act", "acme"); err != nil || get().Spec.Suspend {
		t.Fatalf("resume: %v", err)
	}
	// --wait: nothing handles the request here, so it times out and says what to check.
	_, _, err = run(t, "reconcile", "-n", "act", "acme", "--wait", "1s")
	if err == nil || !strings.Contains(err.Error(), "has not handled the reconcile") || get().Annotations[v1.AnnotationReconcileRequestedAt] == "" {
		t.Errorf("reconcile --wait without an operator: %v", err)
	}
	if err == nil || !strings.Contains(err.Error(), "the policy is Ready=True Enforced") {
		t.Errorf("a timeout says where the policy stands: %v", err)
	}
	// ... and returns once the operator echoes the new value (the stand-in operator waits for
	// the request to differ from the last one, as the real one sees a new value).
	echo := func(annotation string, handle func(p *v1.TelemetryPolicy, value string)) {
		last := get().Annotations[annotation]
		go func() {
			for range 200 {
				time.Sleep(50 * time.Millisecond)
				p := get()
				if v := p.Annotations[annotation]; v != last {
					handle(p, v)
					_ = k8s.Status().Update(ctx, p)
					return
				}
			}
		}()
	}
	echo(v1.AnnotationReconcileRequestedAt, func(p *v1.TelemetryPolicy, v string) { p.Status.LastHandledReconcileAt = v })
	if out, _, err := run(t, "reconcile", "-n", "act", "acme", "--wait", "20s"); err != nil || !strings.Contains(out, "reconcile handled: Ready=True Enforced") {
		t.Errorf("reconcile --wait with an echo: %v\n%s", err, out)
	}
	// A rotation echoed without a new certificate is not reported as done.
	echo(v1.AnnotationRotateRequestedAt, func(p *v1.TelemetryPolicy, v string) { p.Status.LastHandledRotateRequest = v })
	if _, _, err := run(t, "rotate", "-n", "act", "acme", "--wait", "20s"); err == nil || !strings.Contains(err.Error(), "issued no new certificate") {
		t.Errorf("rotate --wait with an echo but no new certificate: %v", err)
	}
	echo(v1.AnnotationRotateRequestedAt, func(p *v1.TelemetryPolicy, v string) {
		p.Status.LastHandledRotateRequest = v
		p.Status.Credentials.Revision++
	})
	if out, _, err := run(t, "rotate", "-n", "act", "acme", "--wait", "20s"); err != nil || !strings.Contains(out, "rotation handled: certificate revision 3") {
		t.Errorf("rotate --wait with a new certificate: %v\n%s", err, out)
	}
	if _, _, err := run(t, "rotate", "-n", "act", "nosuch"); err == nil {
		t.Error("rotate of a missing policy succeeded")
	}
}

func TestPreviewSaysWhyItCannot(t *testing.T) {
	namespace(t, "prev")
	policy(t, "prev", "off", v1.TierOff, v1.TelemetryPolicyStatus{EffectiveTier: v1.TierOff})
	policy(t, "prev", "nopod", v1.TierCriticalOnly, readyStatus(v1.TierCriticalOnly))
	out, _, err := run(t, "preview", "-n", "prev", "off")
	if err != nil || !strings.Contains(out, "consent tier Off: no collector runs") {
		t.Errorf("preview of an Off policy: %v\n%s", err, out)
	}
	_, _, err = run(t, "preview", "-n", "prev", "nopod")
	if err == nil || !strings.Contains(err.Error(), "prev/nopod has no collector Deployment") {
		t.Errorf("preview without a collector pod: %v", err)
	}
	if _, _, err := run(t, "preview", "-n", "prev", "nopod", "--limit", "0"); err == nil {
		t.Error("--limit 0 accepted")
	}
	// A pod with the collector's labels that its Deployment does not control is never chosen.
	p := policy(t, "prev", "acme", v1.TierCriticalOnly, readyStatus(v1.TierCriticalOnly))
	foreignPod(t, p, "aaa-fake")
	if _, _, err = run(t, "preview", "-n", "prev", "acme"); err == nil || !strings.Contains(err.Error(), "has no collector Deployment") {
		t.Errorf("preview with only a foreign pod: %v", err)
	}
	// Nor is the collector's own pod while it runs an old configuration.
	owned(t, p, "0ld0ld0ld0ld0ld0", `{}`)
	if _, _, err = run(t, "preview", "-n", "prev", "acme"); err == nil || !strings.Contains(err.Error(), "no running collector pod with the current configuration") ||
		strings.Contains(err.Error(), "aaa-fake") {
		t.Errorf("preview with a stale collector pod: %v", err)
	}
}

// issuerSecret stores ca as the fleet issuer in telemetry-system.
func issuerSecret(t *testing.T, ca *pkitest.CA, key []byte) {
	t.Helper()
	ctx := context.Background()
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: DefaultManagerNamespace, Name: DefaultIssuerSecret}}
	_ = k8s.Delete(ctx, sec)
	sec.Data = map[string][]byte{"tls.crt": ca.CertPEM, "tls.key": key}
	if err := k8s.Create(ctx, sec); err != nil {
		t.Fatal(err)
	}
}

func lease(t *testing.T, renewed time.Time) {
	t.Helper()
	ctx := context.Background()
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: DefaultManagerNamespace, Name: LeaseName}}
	_ = k8s.Delete(ctx, l)
	l.Spec = coordinationv1.LeaseSpec{HolderIdentity: ptr.To("manager-1"), LeaseDurationSeconds: ptr.To[int32](15),
		RenewTime: &metav1.MicroTime{Time: renewed}}
	if err := k8s.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
}

// receiverTLS serves TLS on loopback with a certificate from ca, asking for client certificates
// as the receiver does.
func receiverTLS(t *testing.T, ca *pkitest.CA) string {
	t.Helper()
	return receiverTLSFor(t, ca, []string{"127.0.0.1", "localhost"}, time.Now().Add(24*time.Hour))
}

func receiverTLSFor(t *testing.T, ca *pkitest.CA, hosts []string, notAfter time.Time) string {
	t.Helper()
	leaf, err := ca.ServerCert("receiver", hosts, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) { _ = c.(*tls.Conn).Handshake(); _ = c.Close() }(c)
		}
	}()
	return "https://" + ln.Addr().String()
}

func TestCheckNamesEachFailureAndPassesWhenTheInstallWorks(t *testing.T) {
	namespace(t, DefaultManagerNamespace)
	ca, err := pkitest.NewCA("fleet issuer", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	url := receiverTLS(t, ca)

	// Nothing installed but the CRD: the manager and issuer checks fail, by name.
	out, _, err := run(t, "check", "--receiver-url", url)
	if err == nil || !strings.Contains(err.Error(), "manager") || !strings.Contains(err.Error(), "issuer") {
		t.Fatalf("check without manager or issuer: %v\n%s", err, out)
	}
	for _, s := range []string{"[ok  ] api: CRD telemetrypolicies.telemetry.sourcegraph.com established, serving v1alpha1",
		"[FAIL] manager: no Deployment telemetry-system/telemetry-operator-controller-manager and no leader-election Lease",
		"[FAIL] issuer: Secret telemetry-system/telemetry-fleet-issuer not found"} {
		if !strings.Contains(out, s) {
			t.Errorf("check output lacks %q:\n%s", s, out)
		}
	}

	// A lapsed Lease is no manager; a renewed one is.
	lease(t, time.Now().Add(-time.Minute))
	out, _, _ = run(t, "check", "--receiver-url", url)
	if !strings.Contains(out, "[FAIL] manager") || !strings.Contains(out, "lapses after 15s") {
		t.Errorf("a lapsed Lease passes as a manager:\n%s", out)
	}
	lease(t, time.Now())

	// An issuer whose key is another's, one that is no CA, one near expiry: each named.
	other, _ := pkitest.NewCA("other", pkitest.Options{})
	issuerSecret(t, ca, other.KeyPEM)
	out, _, _ = run(t, "check", "--receiver-url", url)
	if !strings.Contains(out, "the private key in tls.key does not belong to the certificate in tls.crt") || strings.Contains(out, string(other.KeyPEM[30:60])) {
		t.Errorf("a mismatched key:\n%s", out)
	}
	leafCA, _ := pkitest.NewCA("leaf", pkitest.Options{NotCA: true})
	issuerSecret(t, leafCA, leafCA.KeyPEM)
	out, _, _ = run(t, "check", "--receiver-url", url)
	if !strings.Contains(out, `certificate "leaf" is not a CA`) {
		t.Errorf("a leaf as issuer:\n%s", out)
	}
	soon, _ := pkitest.NewCA("soon", pkitest.Options{NotAfter: time.Now().Add(10 * 24 * time.Hour)})
	issuerSecret(t, soon, soon.KeyPEM)
	out, _, _ = run(t, "check", "--receiver-url", url)
	if !strings.Contains(out, "[FAIL] issuer") || !strings.Contains(out, "within 30d") {
		t.Errorf("an issuer near expiry:\n%s", out)
	}

	// A bundle that leaves the issuer out: the manager refuses it, so does check.
	issuerSecret(t, ca, ca.KeyPEM)
	sec := &corev1.Secret{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: DefaultManagerNamespace, Name: DefaultIssuerSecret}, sec); err != nil {
		t.Fatal(err)
	}
	sec.Data["ca.crt"] = other.CertPEM
	if err := k8s.Update(context.Background(), sec); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, "check", "--receiver-url", url)
	if !strings.Contains(out, "[FAIL] issuer") || !strings.Contains(out, "does not hold the issuer certificate") {
		t.Errorf("a bundle without the issuer:\n%s", out)
	}

	// The receiver's certificate must be one the fleet issuer's bundle trusts.
	issuerSecret(t, other, other.KeyPEM)
	out, _, _ = run(t, "check", "--receiver-url", url)
	if !strings.Contains(out, "[FAIL] receiver") || !strings.Contains(out, "not signed by the fleet issuer") {
		t.Errorf("a receiver the issuer does not sign for:\n%s", out)
	}
	issuerSecret(t, ca, ca.KeyPEM)
	out, _, err = run(t, "check", "--receiver-url", url)
	if err != nil {
		t.Fatalf("a working install: %v\n%s", err, out)
	}
	if !strings.Contains(out, "[ok  ] receiver: "+url) || !strings.Contains(out, "leader manager-1 renewed its Lease") {
		t.Errorf("a working install:\n%s", out)
	}

	// A receiver whose certificate is for another name, or expired, does not pass.
	wrongName := receiverTLSFor(t, ca, []string{"not-this-host.example"}, time.Now().Add(24*time.Hour))
	if out, _, err := run(t, "check", "--receiver-url", wrongName); err == nil || !strings.Contains(out, "its certificate is not for 127.0.0.1") {
		t.Errorf("a receiver certificate for another name: %v\n%s", err, out)
	}
	expired := receiverTLSFor(t, ca, []string{"127.0.0.1"}, time.Now().Add(-time.Minute))
	if out, _, err := run(t, "check", "--receiver-url", expired); err == nil || !strings.Contains(out, "its certificate is not valid") {
		t.Errorf("an expired receiver certificate: %v\n%s", err, out)
	}

	// A receiver that does not answer.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "https://" + ln.Addr().String()
	_ = ln.Close()
	if out, _, err := run(t, "check", "--receiver-url", dead); err == nil || !strings.Contains(out, "[FAIL] receiver: "+dead) {
		t.Errorf("an unreachable receiver: %v\n%s", err, out)
	}

	// The manager says it cannot reach the ledger for a policy.
	namespace(t, "ledger")
	st := readyStatus(v1.TierCriticalOnly)
	st.Conditions = append(st.Conditions, cond(v1.ConditionConsentRecorded, metav1.ConditionFalse, "ReceiverUnavailable", "refused"))
	policy(t, "ledger", "cut-off", v1.TierCriticalOnly, st)
	out, _, err = run(t, "check", "--receiver-url", url, "-o", "json")
	if err == nil {
		t.Fatalf("a policy without its ledger passed:\n%s", out)
	}
	var doc struct{ Checks []CheckResult }
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	last := doc.Checks[len(doc.Checks)-1]
	if last.Name != "ledger" || last.OK || !strings.Contains(last.Detail, "ledger/cut-off") {
		t.Errorf("ledger check: %+v", last)
	}
	if err := k8s.Delete(context.Background(), &v1.TelemetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ledger", Name: "cut-off"}}); err != nil {
		t.Fatal(err)
	}

	// --wait: retried until the manager is back.
	lease(t, time.Now().Add(-time.Hour))
	go func() {
		time.Sleep(3 * time.Second)
		lease(t, time.Now())
	}()
	if out, _, err := run(t, "check", "--receiver-url", url, "--wait", "30s"); err != nil {
		t.Errorf("check --wait did not see the manager come back: %v\n%s", err, out)
	}
}

func TestCheckFindsTheManagerDeploymentAndItsFlags(t *testing.T) {
	ns := "mgr-system"
	namespace(t, ns)
	ca, _ := pkitest.NewCA("fleet issuer 2", pkitest.Options{})
	url := receiverTLS(t, ca)
	ctx := context.Background()
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "my-issuer"}, Data: map[string][]byte{"tls.crt": ca.CertPEM, "tls.key": ca.KeyPEM}}
	if err := k8s.Create(ctx, sec); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app.kubernetes.io/name": "telemetry-operator"}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mgr"}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To[int32](1),
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "manager", Image: "m", Args: []string{"--issuer-secret=$(POD_NAMESPACE)/my-issuer", "--receiver-url", url}}}}}}}
	if err := k8s.Create(ctx, dep); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, "check", "--manager-namespace", ns, "--manager-deployment", "mgr")
	if err == nil || !strings.Contains(out, "[FAIL] manager: Deployment mgr-system/mgr not available: 0/1 ready") {
		t.Errorf("a Deployment not available: %v\n%s", err, out)
	}
	// Its flags name the issuer and the receiver.
	if !strings.Contains(out, "[ok  ] issuer: Secret mgr-system/my-issuer") || !strings.Contains(out, "[ok  ] receiver: "+url+" (the manager's --receiver-url)") {
		t.Errorf("the manager's flags were not followed:\n%s", out)
	}
	// Available, but an old replica in front of a rollout that has not finished.
	dep.Status = appsv1.DeploymentStatus{Replicas: 2, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1, ObservedGeneration: dep.Generation,
		Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue}}}
	if err := k8s.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, "check", "--manager-namespace", ns, "--manager-deployment", "mgr")
	if !strings.Contains(out, "[FAIL] manager: Deployment mgr-system/mgr is rolling out") {
		t.Errorf("a rollout in progress:\n%s", out)
	}
	dep.Status.Replicas = 1
	if err := k8s.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, "check", "--manager-namespace", ns, "--manager-deployment", "mgr")
	if !strings.Contains(out, "[ok  ] manager: Deployment mgr-system/mgr available, 1/1 ready") {
		t.Errorf("an available Deployment:\n%s", out)
	}

	// With --leader-elect, available is not enough: a replica must hold the Lease; and a
	// manager that trusts its own receiver CA file cannot be vouched for without it.
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(dep), dep); err != nil {
		t.Fatal(err)
	}
	dep.Spec.Template.Spec.Containers[0].Args = append(dep.Spec.Template.Spec.Containers[0].Args, "--leader-elect", "--receiver-ca-file=/etc/receiver-ca/ca.crt")
	if err := k8s.Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	dep.Status.ObservedGeneration = dep.Generation
	if err := k8s.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, "check", "--manager-namespace", ns, "--manager-deployment", "mgr")
	for _, s := range []string{"[FAIL] manager: Deployment mgr-system/mgr is available but no replica leads: no leader-election Lease",
		"[FAIL] receiver: cannot verify the receiver's certificate: the manager trusts its own --receiver-ca-file (/etc/receiver-ca/ca.crt)"} {
		if !strings.Contains(out, s) {
			t.Errorf("check lacks %q:\n%s", s, out)
		}
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := run(t, "check", "--manager-namespace", ns, "--manager-deployment", "mgr", "--receiver-ca-file", caFile); !strings.Contains(out, "[ok  ] receiver") {
		t.Errorf("with the manager's receiver CA given:\n%s", out)
	}
}

func TestCompletionOffersThePoliciesOfTheNamespace(t *testing.T) {
	namespace(t, "compl")
	policy(t, "compl", "alpha", v1.TierOff, v1.TelemetryPolicyStatus{})
	policy(t, "compl", "beta", v1.TierOff, v1.TelemetryPolicyStatus{})
	out, _, err := run(t, "__complete", "rotate", "-n", "compl", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "alpha\n") || !strings.Contains(out, "beta\n") {
		t.Errorf("completion of rotate NAME:\n%s", out)
	}
	if out, _, _ := run(t, "__complete", "rotate", "-n", "compl", "alpha", ""); strings.Contains(out, "beta") {
		t.Errorf("completion offers a second NAME:\n%s", out)
	}
}

// TestErrorsAreCleanedAndExitNonZero: an error can quote what the user or the cluster said;
// it reaches the terminal cleaned, with exit code 1.
func TestErrorsAreCleanedAndExitNonZero(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Run(context.Background(), []string{"--kubeconfig", kubeconfig, "rotate", "-n", "default", "x" + hostile},
		genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	if code != 1 || !strings.HasPrefix(errOut.String(), "error: ") || !strings.Contains(errOut.String(), "owned") {
		t.Errorf("exit %d, stderr %q", code, errOut.String())
	}
	if strings.ContainsAny(errOut.String(), "\x1b\x07\u009b\u202e") {
		t.Errorf("a control character reached the terminal: %q", errOut.String())
	}
	if code := Run(context.Background(), []string{"--kubeconfig", kubeconfig, "status", "-A"}, genericiooptions.IOStreams{Out: &out, ErrOut: &errOut}); code != 0 {
		t.Errorf("status -A exit %d", code)
	}
}

// TestLimitWriterSaysWhichStreamEnded: preview names the stream that exceeded its bound.
func TestLimitWriterSaysWhichStreamEnded(t *testing.T) {
	var sink bytes.Buffer
	w := &limitWriter{w: &sink, n: 4}
	if _, err := w.Write([]byte("abcd")); err != nil || sink.String() != "abcd" {
		t.Fatalf("within the bound: %v %q", err, sink.String())
	}
	if _, err := w.Write([]byte("e")); !errors.Is(err, errTooMuch) || w.n >= 0 || sink.String() != "abcd" {
		t.Errorf("beyond the bound: %v, n %d, wrote %q", err, w.n, sink.String())
	}
}
