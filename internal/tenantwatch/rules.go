/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package tenantwatch holds what the manager needs in an onboarded namespace on top of the
// tenant role when it watches the objects there (--watch-tenant-namespaces): list and watch on
// the kinds it caches. Its markers generate config/rbac/tenant-watch/role.yaml (ClusterRole
// telemetry-operator-tenant-watch-role), bound beside the tenant role only in that mode. Without
// it the manager reads its objects by name and may not list a namespace's Secrets.
package tenantwatch

import rbacv1 "k8s.io/api/rbac/v1"

// +kubebuilder:rbac:groups="",resources=configmaps;secrets,verbs=list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=list;watch

// Rules are what the manager also checks it holds in a namespace when it watches there. Rules
// and the markers above must say the same; a test compares them with the generated manifest.
var Rules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"configmaps", "secrets"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"list", "watch"}},
}
