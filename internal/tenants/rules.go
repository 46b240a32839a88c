/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package tenants

import rbacv1 "k8s.io/api/rbac/v1"

// What the manager needs in an onboarded namespace, generated into config/rbac/tenant/role.yaml
// (ClusterRole telemetry-operator-tenant-role), which an admin binds there with a RoleBinding:
// the collector's Deployment, ConfigMaps and Secrets, its ServiceAccount, Role and RoleBinding
// (all read by name, never listed or watched), and Events about its policies. Watching the
// Deployments, ConfigMaps and Secrets (--watch-tenant-namespaces) takes a second role,
// internal/tenantwatch. Rules below must say the same; a test compares them with the generated
// manifest.

// +kubebuilder:rbac:groups="",resources=configmaps;secrets,verbs=get;create;update;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;create;update;delete
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;create;update;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;create;update;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Rules are the permissions the manager checks it holds in a namespace before working there.
var Rules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"configmaps", "secrets"}, Verbs: byNameVerbs},
	{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: byNameVerbs},
	{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: byNameVerbs},
	{APIGroups: []string{"rbac.authorization.k8s.io"}, Resources: []string{"roles", "rolebindings"}, Verbs: byNameVerbs},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
}

// byNameVerbs are what the manager does to the objects it owns: it reads them by name and
// updates, never patches, them.
var byNameVerbs = []string{"get", "create", "update", "delete"}
