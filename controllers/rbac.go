/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package controllers reconciles TelemetryPolicy objects into an enforced, observable collector.
package controllers

// The manager's permissions, generated into config/rbac/role.yaml. Secrets and ConfigMaps are
// cached only when labelled as managed by this operator (see main.go), so the list/watch verbs
// below never bring customer Secrets into memory.

// +kubebuilder:rbac:groups=telemetry.sourcegraph.com,resources=telemetrypolicies,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=telemetry.sourcegraph.com,resources=telemetrypolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=telemetry.sourcegraph.com,resources=telemetrypolicies/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=configmaps;secrets;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=namespaces,resourceNames=kube-system,verbs=get
// The metrics endpoint asks the API server who a scraper is and whether it may read /metrics.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
