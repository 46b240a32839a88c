/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package undeploy holds what `make undeploy` deletes; this test pins it to config/default
// without the CRD and the namespace, so that nothing added to the install later is deleted by
// undeploy without anyone deciding it should be, and the CRD (every policy) never is.
package undeploy

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

type object struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func render(t *testing.T, kustomize, dir string) []string {
	t.Helper()
	cmd := exec.Command(kustomize, "build", dir) //nolint:gosec // the tool make test built
	cmd.Dir = testenv.RepoRoot()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kustomize build %s: %v\n%s", dir, err, stderr.String())
	}
	var ids []string
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if o.Kind != "" {
			ids = append(ids, o.Kind+" "+o.Metadata.Namespace+"/"+o.Metadata.Name)
		}
	}
	slices.Sort(ids)
	return ids
}

func TestUndeployKeepsTheCRDAndTheNamespaceOnly(t *testing.T) {
	kustomize := os.Getenv("TELEMETRY_TEST_KUSTOMIZE")
	if kustomize == "" {
		t.Fatal("TELEMETRY_TEST_KUSTOMIZE is not set: run the tests with `make test`, which builds kustomize into bin/")
	}
	installed := render(t, kustomize, "config/default")
	deleted := render(t, kustomize, "config/undeploy")
	var want []string
	kept := 0
	for _, id := range installed {
		if strings.HasPrefix(id, "CustomResourceDefinition ") || strings.HasPrefix(id, "Namespace ") {
			kept++
			continue
		}
		want = append(want, id)
	}
	if kept != 2 {
		t.Fatalf("config/default installs %d CRDs and namespaces, want 2 (the test's premise): %v", kept, installed)
	}
	if !slices.Equal(deleted, want) {
		t.Fatalf("make undeploy deletes\n  %v\nwant everything config/default installs but the CRD and the namespace:\n  %v", deleted, want)
	}
	if !slices.ContainsFunc(deleted, func(id string) bool { return strings.HasPrefix(id, "Deployment ") }) {
		t.Fatal("make undeploy leaves the manager running")
	}
}
