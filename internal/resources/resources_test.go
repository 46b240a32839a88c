/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package resources

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// TestCollectorResourcesOverrideOneByOne: a policy's resources replace the defaults one by one;
// an empty override keeps every default (it used to remove the memory limit), and a memory
// request above the default limit raises the limit with it (else the pod would be refused).
func TestCollectorResourcesOverrideOneByOne(t *testing.T) {
	q := resource.MustParse
	cases := []struct {
		name                  string
		override              *corev1.ResourceRequirements
		cpu, memReq, memLimit string
	}{
		{"none", nil, "50m", "64Mi", "128Mi"},
		{"empty", &corev1.ResourceRequirements{}, "50m", "64Mi", "128Mi"},
		{"a CPU request", &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: q("200m")}}, "200m", "64Mi", "128Mi"},
		{"a larger memory request", &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: q("256Mi")}}, "50m", "256Mi", "256Mi"},
		{"a memory limit", &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: q("1Gi")}}, "50m", "64Mi", "1Gi"},
		// A limit below a default request lowers the request, or no pod could be created.
		{"a memory limit below the default request", &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: q("32Mi")}}, "50m", "32Mi", "32Mi"},
		{"a CPU limit below the default request", &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: q("20m")}}, "20m", "64Mi", "128Mi"},
		// Both named and contradictory: kept as written (the API server's refusal is reported).
		{"a request above a limit, both named", &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: q("256Mi")},
			Limits: corev1.ResourceList{corev1.ResourceMemory: q("128Mi")}}, "50m", "256Mi", "128Mi"},
	}
	for _, c := range cases {
		got := CollectorResources(c.override)
		cpu, memReq, memLimit := got.Requests[corev1.ResourceCPU], got.Requests[corev1.ResourceMemory], got.Limits[corev1.ResourceMemory]
		if cpu.Cmp(q(c.cpu)) != 0 || memReq.Cmp(q(c.memReq)) != 0 || memLimit.Cmp(q(c.memLimit)) != 0 {
			t.Errorf("%s: cpu %s, memory %s / limit %s; want %s, %s / %s", c.name, cpu.String(), memReq.String(), memLimit.String(), c.cpu, c.memReq, c.memLimit)
		}
	}
	if d := DefaultResources(); d.Limits.Memory().Cmp(q("128Mi")) != 0 {
		t.Fatalf("the defaults changed under an override: %v", d)
	}
}
