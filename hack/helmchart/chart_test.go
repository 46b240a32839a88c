/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

func tool(t *testing.T, env string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		t.Fatalf("%s is not set: run the tests with `make test`, which builds helm, kustomize and kubectl into bin/", env)
	}
	return p
}

func runTool(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...) //nolint:gosec // tools make test built
	cmd.Dir = testenv.RepoRoot()
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func kustomize(t *testing.T, dir string) []Object {
	t.Helper()
	objs, err := ParseDocs(runTool(t, nil, tool(t, "TELEMETRY_TEST_KUSTOMIZE"), "build", dir))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

const chartDir = "charts/telemetry-operator"

func helmTemplate(t *testing.T, args ...string) []byte {
	t.Helper()
	return runTool(t, nil, tool(t, "TELEMETRY_TEST_HELM"), append([]string{"template", "telemetry", chartDir}, args...)...)
}

// TestChartIsCurrent: the committed chart is what the generator makes of today's kustomize
// renderings (make helm-chart writes it; make test fails on a stale one).
func TestChartIsCurrent(t *testing.T) {
	files, err := Generate(kustomize(t, "config/default"), kustomize(t, "config/monitoring"), "0.1.0")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(testenv.RepoRoot(), chartDir)
	have := map[string][]byte{}
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			have[rel], _ = os.ReadFile(path)
		}
		return nil
	})
	for name, want := range files {
		if !bytes.Equal(have[name], want) {
			t.Errorf("%s/%s is stale: run `make helm-chart` and commit", chartDir, name)
		}
		delete(have, name)
	}
	for name := range have {
		t.Errorf("%s/%s is not generated: run `make helm-chart` and commit", chartDir, name)
	}
}

// normalize drops what the chart adds on purpose: its own labels and the keep annotation.
func normalize(t *testing.T, objs []Object) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, o := range objs {
		if o.kind() == "Namespace" {
			continue
		}
		m := o.meta()
		if labels, ok := m["labels"].(map[string]any); ok {
			delete(labels, "helm.sh/chart")
			if labels["app.kubernetes.io/managed-by"] == "Helm" || labels["app.kubernetes.io/managed-by"] == "kustomize" {
				delete(labels, "app.kubernetes.io/managed-by")
			}
			if len(labels) == 0 {
				delete(m, "labels")
			}
		}
		if ann, ok := m["annotations"].(map[string]any); ok {
			delete(ann, "helm.sh/resource-policy")
		}
		// Through JSON, so numbers compare alike whichever side parsed them.
		b, _ := json.Marshal(o)
		var v any
		_ = json.Unmarshal(b, &v)
		if _, dup := out[o.Key()]; dup {
			t.Errorf("%s twice", o.Key())
		}
		out[o.Key()] = v
	}
	return out
}

func sameObjects(t *testing.T, what string, chart, kust []Object) {
	t.Helper()
	c, k := normalize(t, chart), normalize(t, kust)
	for key, want := range k {
		got, ok := c[key]
		if !ok {
			t.Errorf("%s: the chart lacks %s", what, key)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			gb, _ := json.MarshalIndent(got, "", " ")
			wb, _ := json.MarshalIndent(want, "", " ")
			t.Errorf("%s: %s differs\nchart:\n%s\nkustomize:\n%s", what, key, gb, wb)
		}
	}
	for key := range c {
		if _, ok := k[key]; !ok {
			t.Errorf("%s: the chart renders %s, kustomize does not", what, key)
		}
	}
}

// TestChartRendersWhatKustomizeRenders: with default values the chart renders exactly the
// objects of config/default (but the Namespace, which helm creates), and with monitoring those
// of config/monitoring.
func TestChartRendersWhatKustomizeRenders(t *testing.T) {
	chart, err := ParseDocs(helmTemplate(t, "--namespace", Namespace))
	if err != nil {
		t.Fatal(err)
	}
	sameObjects(t, "defaults", chart, kustomize(t, "config/default"))
	chart, err = ParseDocs(helmTemplate(t, "--namespace", Namespace, "--set", "monitoring.enable=true"))
	if err != nil {
		t.Fatal(err)
	}
	mon := kustomize(t, "config/monitoring")
	sameObjects(t, "monitoring", chart, mon)
	// The alert annotations and dashboard legends keep their braces through the template.
	for _, o := range chart {
		if o.kind() == "PrometheusRule" && !strings.Contains(mustJSON(o), "{{ $labels.namespace }}") {
			t.Errorf("the alerts lost their template braces")
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestChartValuesReachTheObjects: image, replicas, arguments, resources, namespace and the
// switches do what values.yaml says.
func TestChartValuesReachTheObjects(t *testing.T) {
	out := helmTemplate(t, "--namespace", "ops-telemetry",
		"--set", "manager.image.repository=registry.example/telemetry-operator,manager.image.tag=v9.9.9,manager.replicas=2",
		"--set-json", `manager.args=["--leader-elect","--issuer-secret=$(POD_NAMESPACE)/fleet","--receiver-url=https://receiver.example:8443","--cluster-name=eu-1"]`,
		"--set-json", `manager.resources={"limits":{"memory":"2Gi"},"requests":{"cpu":"200m","memory":"512Mi"}}`,
		"--set", "crd.enable=false,rbac.enable=false")
	objs, err := ParseDocs(out)
	if err != nil {
		t.Fatal(err)
	}
	var dep Object
	for _, o := range objs {
		switch {
		case o.kind() == "Deployment":
			dep = o
		case o.kind() == "CustomResourceDefinition" || strings.HasPrefix(apiVersion(o), "rbac.") || o.kind() == "ServiceAccount":
			t.Errorf("%s rendered with crd.enable=false, rbac.enable=false", o.Key())
		}
	}
	if dep == nil {
		t.Fatalf("no Deployment:\n%s", out)
	}
	if ns := dep.meta()["namespace"]; ns != "ops-telemetry" {
		t.Errorf("Deployment namespace %v", ns)
	}
	c := managerContainer(dep)
	spec := dep["spec"].(map[string]any)
	if c["image"] != "registry.example/telemetry-operator:v9.9.9" || mustJSON(spec["replicas"]) != "2" ||
		mustJSON(c["args"]) != `["--leader-elect","--issuer-secret=$(POD_NAMESPACE)/fleet","--receiver-url=https://receiver.example:8443","--cluster-name=eu-1"]` ||
		mustJSON(c["resources"]) != `{"limits":{"memory":"2Gi"},"requests":{"cpu":"200m","memory":"512Mi"}}` {
		t.Errorf("values did not reach the manager: %s", mustJSON(dep))
	}
	// Extra labels reach the monitors and the rule, for a Prometheus that selects by label.
	objs, _ = ParseDocs(helmTemplate(t, "--namespace", "ops-telemetry", "--set", "monitoring.enable=true,monitoring.labels.release=kps"))
	labelled := 0
	for _, o := range objs {
		if strings.HasPrefix(apiVersion(o), "monitoring.coreos.com/") {
			if l, _ := o.meta()["labels"].(map[string]any); l["release"] != "kps" || l["telemetry.sourcegraph.com/monitoring"] != "true" {
				t.Errorf("%s labels %v", o.Key(), l)
			}
			labelled++
		}
	}
	if labelled != 4 {
		t.Errorf("%d monitoring objects, want 4", labelled)
	}
	// RoleBinding subjects follow the release namespace.
	objs, _ = ParseDocs(helmTemplate(t, "--namespace", "ops-telemetry"))
	for _, o := range objs {
		if subjects, ok := o["subjects"].([]any); ok {
			for _, s := range subjects {
				if ns := s.(map[string]any)["namespace"]; ns != nil && ns != "ops-telemetry" {
					t.Errorf("%s: subject in namespace %v", o.Key(), ns)
				}
			}
		}
		if ns, ok := o.meta()["namespace"]; ok && ns != "ops-telemetry" {
			t.Errorf("%s in namespace %v", o.Key(), ns)
		}
	}
}

func TestHelmLint(t *testing.T) {
	helm := tool(t, "TELEMETRY_TEST_HELM")
	runTool(t, nil, helm, "lint", "--strict", chartDir)
	runTool(t, nil, helm, "lint", "--strict", chartDir, "--set", "monitoring.enable=true")
}

// TestChartAppliesToARealAPIServer: what helm renders, monitoring objects included, is accepted
// by the API server (strict field validation against the real schemas, the Prometheus
// Operator's CRDs installed), applied server-side into a namespace of the user's choosing, and
// the CRD it installs is established.
func TestChartAppliesToARealAPIServer(t *testing.T) {
	assets := tool(t, "KUBEBUILDER_ASSETS")
	env := &envtest.Environment{BinaryAssetsDirectory: assets,
		CRDDirectoryPaths: []string{tool(t, "TELEMETRY_TEST_MONITORING_CRDS")}, ErrorIfCRDPathMissing: true}
	if _, err := env.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl := tool(t, "TELEMETRY_TEST_KUBECTL")
	k := func(stdin []byte, args ...string) []byte {
		return runTool(t, stdin, kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	}
	k(nil, "create", "namespace", "ops-telemetry")
	k(helmTemplate(t, "--namespace", "ops-telemetry", "--set", "monitoring.enable=true"), "apply", "--server-side", "--field-manager", "helm-test", "-f", "-")
	k(nil, "wait", "--for=condition=Established", "crd/telemetrypolicies.telemetry.sourcegraph.com", "--timeout=60s")
	got := string(k(nil, "get", "deployment,serviceaccount,role,rolebinding,servicemonitor,podmonitor,prometheusrule,configmap", "-n", "ops-telemetry", "-o", "name"))
	for _, want := range []string{"deployment.apps/telemetry-operator-controller-manager", "serviceaccount/telemetry-operator-controller-manager",
		"role.rbac.authorization.k8s.io/telemetry-operator-manager-role", "rolebinding.rbac.authorization.k8s.io/telemetry-operator-manager-rolebinding",
		"servicemonitor.monitoring.coreos.com/telemetry-operator-manager", "podmonitor.monitoring.coreos.com/telemetry-operator-collectors",
		"prometheusrule.monitoring.coreos.com/telemetry-operator-alerts", "configmap/telemetry-operator-grafana-dashboard"} {
		if !strings.Contains(got, want) {
			t.Errorf("not applied: %s (have %s)", want, got)
		}
	}
	// A policy is accepted by the CRD the chart installed.
	k([]byte(`{"apiVersion":"telemetry.sourcegraph.com/v1alpha1","kind":"TelemetryPolicy","metadata":{"name":"acme","namespace":"ops-telemetry"},"spec":{"instanceID":"acme","consent":{"tier":"Off"}}}`), "apply", "--server-side", "-f", "-")
}
