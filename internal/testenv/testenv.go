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
	"strings"
	"time"

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
	// The API server keeps its serving certificates in a directory of ours rather than one it
	// deletes on Stop, so RestartAPIServer brings it back with the same certificates and port
	// and clients holding the old rest.Config keep working.
	certDir, err := os.MkdirTemp("", "telemetry-apiserver-")
	if err != nil {
		return nil, nil, err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		Scheme:                scheme.Scheme,
	}
	env.ControlPlane.APIServer = &envtest.APIServer{CertDir: certDir}
	cfg, err := env.Start()
	if err != nil {
		_ = os.RemoveAll(certDir)
		return nil, nil, fmt.Errorf("starting the control plane from %s: %w", assets, err)
	}
	return env, cfg, nil
}

// Stop stops the control plane and removes the API server's certificate directory.
func Stop(env *envtest.Environment) error {
	err := env.Stop()
	if as := env.ControlPlane.APIServer; as != nil && as.CertDir != "" {
		_ = os.RemoveAll(as.CertDir)
	}
	return err
}

// RestartAPIServer stops kube-apiserver, leaves it down for down, and starts it again on the
// same port with the same certificates (etcd keeps running, so no data is lost): what clients
// see when a control plane is upgraded or fails over. The API server gets two seconds to shut
// down gracefully and is killed after that, as a crashed or evicted one would be (with clients
// watching, a graceful shutdown can take longer than the outage being simulated).
func RestartAPIServer(env *envtest.Environment, down time.Duration) error {
	as := env.ControlPlane.GetAPIServer()
	saved := as.StopTimeout
	as.StopTimeout = 2 * time.Second
	err := as.Stop()
	as.StopTimeout = saved
	// envtest reports the kill after the grace period as a timeout; the process is gone either way.
	if err != nil && !strings.Contains(err.Error(), "timeout waiting for process") {
		return fmt.Errorf("stopping kube-apiserver: %w", err)
	}
	time.Sleep(down)
	if err := as.Start(); err != nil {
		return fmt.Errorf("starting kube-apiserver again: %w", err)
	}
	return nil
}

// PolicyGVR is the TelemetryPolicy resource, for dynamic and raw clients.
var PolicyGVR = schema.GroupVersionResource{Group: telemetryv1alpha1.GroupVersion.Group, Version: telemetryv1alpha1.GroupVersion.Version, Resource: "telemetrypolicies"}
