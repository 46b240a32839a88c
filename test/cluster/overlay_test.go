/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package cluster

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

const manifest = `apiVersion: v1
kind: Namespace
metadata:
  name: telemetry
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: receiver
spec:
  replicas: 2
  selector: {matchLabels: {app: r}}
  template:
    metadata: {labels: {app: r}}
    spec:
      containers:
      - name: receiver
        image: receiver:dev
        args: ["serve", "--listen=:8443", "--other=kept"]
        ports: [{name: https, containerPort: 8443}, {name: ops, containerPort: 9091}]
        readinessProbe: {httpGet: {path: /readyz, port: ops}}
`

func TestOverlayChangesOnlyTheNetwork(t *testing.T) {
	objs, err := Decode([]byte(manifest))
	if err != nil || len(objs) != 2 {
		t.Fatalf("decode: %v (%d objects)", err, len(objs))
	}
	o := Overlay{APIHost: "127.0.0.1", APIPort: "6443",
		Ports:    map[string]map[string]string{"receiver": {"https": "18443"}},
		Args:     map[string][]string{"receiver": {"--listen=127.0.0.1:18443", "--ops-listen=127.0.0.1:19091"}},
		Replicas: map[string]int32{"receiver": 1}}
	out, err := o.Apply(objs)
	if err != nil {
		t.Fatal(err)
	}
	if got := out[0].GetLabels()[LabelPodSecurityEnforce]; got != "privileged" {
		t.Errorf("namespace admits %q pods, want privileged (host network)", got)
	}
	if objs[0].GetLabels()[LabelPodSecurityEnforce] != "restricted" {
		t.Error("the input was modified")
	}
	dep := &appsv1.Deployment{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(out[1].Object, dep); err != nil {
		t.Fatal(err)
	}
	spec := dep.Spec.Template.Spec
	c := spec.Containers[0]
	if !spec.HostNetwork || *dep.Spec.Replicas != 1 {
		t.Errorf("hostNetwork=%v replicas=%d", spec.HostNetwork, *dep.Spec.Replicas)
	}
	want := []string{"serve", "--listen=127.0.0.1:18443", "--other=kept", "--ops-listen=127.0.0.1:19091"}
	if len(c.Args) != len(want) {
		t.Fatalf("args %v, want %v", c.Args, want)
	}
	for i := range want {
		if c.Args[i] != want[i] {
			t.Errorf("args %v, want %v", c.Args, want)
			break
		}
	}
	if c.Ports[0].ContainerPort != 18443 || c.Ports[0].HostPort != 18443 || c.Ports[1].ContainerPort != 9091 {
		t.Errorf("ports %+v", c.Ports)
	}
	if c.ReadinessProbe.HTTPGet.Host != "127.0.0.1" {
		t.Errorf("probe host %q", c.ReadinessProbe.HTTPGet.Host)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["KUBERNETES_SERVICE_HOST"] != "127.0.0.1" || env["KUBERNETES_SERVICE_PORT"] != "6443" {
		t.Errorf("env %v", env)
	}
}
