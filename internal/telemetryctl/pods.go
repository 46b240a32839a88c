/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"context"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// collectorWorkload is a policy's collector: its Deployment, that Deployment's ReplicaSets and
// their pods, followed by controller references. Labels alone would not do: anyone who may create
// pods in the namespace can copy them, and the plugin execs into, reads the logs of and bundles
// what it finds here.
type collectorWorkload struct {
	Deployment  *appsv1.Deployment
	ReplicaSets []appsv1.ReplicaSet
	Pods        []corev1.Pod
	// Foreign counts pods with the collector's labels that the Deployment does not control.
	Foreign int
}

// findCollector reads the collector workload of p; a missing Deployment is no error (Off).
func findCollector(ctx context.Context, c client.Client, p *v1.TelemetryPolicy) (*collectorWorkload, error) {
	w := &collectorWorkload{}
	dep := &appsv1.Deployment{}
	err := c.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Deployment}, dep)
	switch {
	case apierrors.IsNotFound(err):
		return w, nil
	case err != nil:
		return nil, fmt.Errorf("reading the collector Deployment: %w", err)
	}
	if !metav1.IsControlledBy(dep, p) {
		return nil, fmt.Errorf("the Deployment %s/%s is not controlled by TelemetryPolicy %s: it is not this policy's collector", dep.Namespace, dep.Name, p.Name)
	}
	w.Deployment = dep
	sel := client.MatchingLabels{resources.LabelPolicy: p.Name}
	rss := &appsv1.ReplicaSetList{}
	if err := c.List(ctx, rss, client.InNamespace(p.Namespace), sel); err != nil {
		return nil, fmt.Errorf("listing the collector's ReplicaSets: %w", err)
	}
	owned := map[string]bool{}
	for _, rs := range rss.Items {
		if metav1.IsControlledBy(&rs, dep) {
			w.ReplicaSets = append(w.ReplicaSets, rs)
			owned[string(rs.UID)] = true
		}
	}
	pods := &corev1.PodList{}
	if err := c.List(ctx, pods, client.InNamespace(p.Namespace), sel); err != nil {
		return nil, fmt.Errorf("listing the collector pods: %w", err)
	}
	for _, pod := range pods.Items {
		if ref := metav1.GetControllerOf(&pod); ref != nil && owned[string(ref.UID)] {
			w.Pods = append(w.Pods, pod)
		} else {
			w.Foreign++
		}
	}
	sort.Slice(w.Pods, func(i, j int) bool { return w.Pods[i].Name < w.Pods[j].Name })
	return w, nil
}
