/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package testenv starts a real control plane (kube-apiserver and etcd built by `make envtest`)
// with the project's CRDs installed, for tests that talk to an API server.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	telemetryv1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// RepoRoot returns the repository's root directory, found from this source file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Start starts kube-apiserver and etcd with the CRDs from config/crd/bases installed and returns
// the environment (call Stop on it) and a rest config for it. The binaries come from
// KUBEBUILDER_ASSETS, which `make test` points at the versions it built.
func Start() (*envtest.Environment, *rest.Config, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return nil, nil, fmt.Errorf("KUBEBUILDER_ASSETS is not set: run the tests with `make test`, which builds kube-apiserver and etcd into bin/k8s and points the tests at them")
	}
	if err := telemetryv1alpha1.AddToScheme(scheme.Scheme); err != nil {
		return nil, nil, err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		Scheme:                scheme.Scheme,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, nil, fmt.Errorf("starting the control plane from %s: %w", assets, err)
	}
	return env, cfg, nil
}

// PolicyGVR is the TelemetryPolicy resource, for dynamic and raw clients.
var PolicyGVR = schema.GroupVersionResource{Group: telemetryv1alpha1.GroupVersion.Group, Version: telemetryv1alpha1.GroupVersion.Version, Resource: "telemetrypolicies"}
