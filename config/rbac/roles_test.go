/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package rbac holds the shipped RBAC manifests; this test reads them as the API server would.
package rbac

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// clusterRoles returns every ClusterRole in this directory's manifests, by name.
func clusterRoles(t *testing.T) map[string]rbacv1.ClusterRole {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
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
