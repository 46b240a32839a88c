/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package rbac holds the shipped RBAC manifests; this test reads them as the API server would.
package rbac

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/component-helpers/auth/rbac/validation"
	"sigs.k8s.io/yaml"

	"github.com/sourcegraph/telemetry-operator/internal/tenants"
	"github.com/sourcegraph/telemetry-operator/internal/tenantwatch"
)

// clusterRoles returns every ClusterRole in this directory's manifests, by name.
func clusterRoles(t *testing.T) map[string]rbacv1.ClusterRole {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	tenant, _ := filepath.Glob("tenant*/*.yaml")
	files = append(files, tenant...)
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	out := map[string]rbacv1.ClusterRole{}
	for _, f := range files {
		data, err := os.ReadFile(f) //nolint:gosec // the test's own directory
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---") {
			var r rbacv1.ClusterRole
			if err := yaml.Unmarshal([]byte(doc), &r); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if r.Kind == "ClusterRole" {
				out[r.Name] = r
			}
		}
	}
	return out
}

// TestConsentIsNotGrantedToNamespaceEditors: the built-in edit and admin roles aggregate every
// ClusterRole labelled for them; none of ours may bring a write on TelemetryPolicies there, or
// any namespace editor could assert consent and claim an instance.
func TestConsentIsNotGrantedToNamespaceEditors(t *testing.T) {
	roles := clusterRoles(t)
	read := []string{"get", "list", "watch"}
	for name, r := range roles {
		if r.Labels["rbac.authorization.k8s.io/aggregate-to-edit"] != "true" && r.Labels["rbac.authorization.k8s.io/aggregate-to-admin"] != "true" {
			continue
		}
		for _, rule := range r.Rules {
			for _, v := range rule.Verbs {
				if !slices.Contains(read, v) {
					t.Errorf("ClusterRole %s is aggregated to edit/admin and grants %q on %v", name, v, rule.Resources)
				}
			}
		}
	}
	admin, ok := roles["telemetrypolicy-consent-admin"]
	if !ok {
		t.Fatal("no consent-admin ClusterRole is shipped")
	}
	if !slices.ContainsFunc(admin.Rules, func(r rbacv1.PolicyRule) bool {
		return slices.Contains(r.Resources, "telemetrypolicies") && slices.Contains(r.Verbs, "update")
	}) {
		t.Error("the consent-admin role cannot update policies")
	}
	viewer := roles["telemetrypolicy-viewer-role"]
	for _, rule := range viewer.Rules {
		for _, v := range rule.Verbs {
			if !slices.Contains(read, v) {
				t.Errorf("the viewer role grants %q", v)
			}
		}
	}
}

// TestManagerHoldsNothingClusterWideOnCustomerObjects: the manager's ClusterRole (bound
// cluster-wide) grants nothing on Secrets, ConfigMaps, workloads, RBAC or Leases; those come
// from the tenant role, bound namespace by namespace at onboarding.
func TestManagerHoldsNothingClusterWideOnCustomerObjects(t *testing.T) {
	manager, ok := clusterRoles(t)["manager-role"]
	if !ok {
		t.Fatal("no manager-role ClusterRole")
	}
	forbidden := []string{"secrets", "configmaps", "serviceaccounts", "deployments", "pods", "roles", "rolebindings", "clusterroles", "clusterrolebindings", "leases", "events", "*"}
	for _, r := range manager.Rules {
		for _, res := range r.Resources {
			if slices.Contains(forbidden, res) {
				t.Errorf("the manager's ClusterRole grants %v on %s", r.Verbs, res)
			}
		}
		for _, v := range r.Verbs {
			if v == "*" || v == "bind" || v == "escalate" || v == "impersonate" || (v == "create" || v == "delete") && slices.Contains(r.Resources, "telemetrypolicies") {
				t.Errorf("the manager's ClusterRole grants %s on %v", v, r.Resources)
			}
		}
	}
}

// TestTenantRoleIsWhatTheManagerChecks: the manager reviews its permissions in a namespace
// against tenants.Rules before working there (and tenantwatch.Rules too when it watches); the
// shipped tenant roles must grant exactly that, and the tenant role lists and watches nothing.
func TestTenantRoleIsWhatTheManagerChecks(t *testing.T) {
	roles := clusterRoles(t)
	for name, want := range map[string][]rbacv1.PolicyRule{"tenant-role": tenants.Rules, "tenant-watch-role": tenantwatch.Rules} {
		role, ok := roles[name]
		if !ok {
			t.Fatalf("no %s ClusterRole", name)
		}
		if covers, missing := validation.Covers(role.Rules, want); !covers {
			t.Errorf("%s lacks what the manager checks for: %v", name, missing)
		}
		if covers, extra := validation.Covers(want, role.Rules); !covers {
			t.Errorf("%s grants more than the manager needs: %v", name, extra)
		}
		if !reflect.DeepEqual(role.AggregationRule, (*rbacv1.AggregationRule)(nil)) || len(role.Labels) > 0 {
			t.Errorf("%s must not be aggregated anywhere: it is bound only at onboarding", name)
		}
	}
	for _, r := range roles["tenant-role"].Rules {
		if slices.Contains(r.Verbs, "list") || slices.Contains(r.Verbs, "watch") || slices.Contains(r.Verbs, "*") {
			t.Errorf("the tenant role lets the manager list or watch %v in a customer namespace: by default it reads by name only", r.Resources)
		}
	}
}
