/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package controllers reconciles TelemetryPolicy objects into an enforced, observable collector.
package controllers

// The manager's cluster-wide permissions, generated into config/rbac/role.yaml: its own API,
// namespace names and labels (to see which namespaces are onboarded), and reviews of who may do
// what. It holds nothing cluster-wide on Secrets, ConfigMaps, workloads, RBAC or Leases: what it
// needs in a customer namespace is granted there at onboarding (internal/tenants), and what it
// needs in its own namespace (the issuer Secret, Events about it) by the Role below.

// +kubebuilder:rbac:groups=telemetry.sourcegraph.com,resources=telemetrypolicies,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=telemetry.sourcegraph.com,resources=telemetrypolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=telemetry.sourcegraph.com,resources=telemetrypolicies/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// The manager asks which permissions it holds in a namespace before it works there.
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=selfsubjectrulesreviews;selfsubjectaccessreviews,verbs=create
// The metrics endpoint asks the API server who a scraper is and whether it may read /metrics.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
// In the manager's own namespace: the fleet issuer Secret, by name (the shipped --issuer-secret;
// edit config/rbac if you name another), and Events about it.
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,resourceNames=telemetry-fleet-issuer,verbs=get;list;watch
// +kubebuilder:rbac:groups="",namespace=system,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,namespace=system,resources=events,verbs=create;patch
