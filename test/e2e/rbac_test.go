/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
)

// canI asks the API server, as kubectl does, whether the manager's ServiceAccount may do it.
func canI(t *testing.T, args ...string) bool {
	t.Helper()
	out, _ := stack.Kubectl(context.Background(), append(append([]string{"auth", "can-i"}, args...), "--as", stack.ManagerUser())...)
	lines := strings.Split(strings.TrimSpace(out), "\n") // after any warnings
	switch lines[len(lines)-1] {
	case "yes":
		return true
	case "no":
		return false
	}
	t.Fatalf("kubectl auth can-i %s: %q", strings.Join(args, " "), out)
	return false
}

// TestManagerHoldsLeastPrivilege checks the RBAC the installer ships, applied to the API server,
// as the manager's ServiceAccount: with kubectl auth can-i and with real requests. Every other
// test in this package runs the operator under the same RBAC, onboarded namespace by namespace.
func TestManagerHoldsLeastPrivilege(t *testing.T) {
	ctx := context.Background()
	const outside, inside = "rbac-outside", "rbac-inside"
	if err := stack.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: outside}}); err != nil {
		t.Fatal(err)
	}
	if err := stack.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "customer", Namespace: outside}, StringData: map[string]string{"password": "hunter2"}}); err != nil {
		t.Fatal(err)
	}
	if err := stack.Onboard(ctx, inside); err != nil {
		t.Fatal(err)
	}
	issuerNS := localstack.IssuerNamespace
	for _, c := range []struct {
		args []string
		want bool
	}{
		// Nothing in a namespace that is not onboarded.
		{[]string{"get", "secrets", "-n", outside}, false},
		{[]string{"list", "secrets", "-n", outside}, false},
		{[]string{"create", "rolebindings", "-n", outside}, false},
		{[]string{"create", "roles", "-n", outside}, false},
		{[]string{"create", "deployments.apps", "-n", outside}, false},
		{[]string{"list", "configmaps", "-n", outside}, false},
		{[]string{"create", "events", "-n", outside}, false},
		// Nothing cluster-wide on Secrets, workloads, RBAC or Leases.
		{[]string{"list", "secrets", "--all-namespaces"}, false},
		{[]string{"watch", "configmaps", "--all-namespaces"}, false},
		{[]string{"list", "deployments.apps", "--all-namespaces"}, false},
		{[]string{"create", "leases.coordination.k8s.io", "-n", "default"}, false},
		{[]string{"create", "clusterrolebindings"}, false},
		{[]string{"create", "clusterroles"}, false},
		{[]string{"bind", "clusterroles"}, false},
		{[]string{"escalate", "clusterroles"}, false},
		{[]string{"impersonate", "serviceaccounts"}, false},
		{[]string{"list", "pods", "--all-namespaces"}, false},
		{[]string{"delete", "namespaces"}, false},
		{[]string{"update", "namespaces"}, false},
		// In its own namespace: the issuer Secret by name, leader election, Events; no other Secret.
		{[]string{"get", "secrets/" + localstack.IssuerName, "-n", issuerNS}, true},
		{[]string{"get", "secrets/another", "-n", issuerNS}, false},
		{[]string{"list", "secrets", "-n", issuerNS}, false},
		{[]string{"update", "secrets/" + localstack.IssuerName, "-n", issuerNS}, false},
		{[]string{"create", "leases.coordination.k8s.io", "-n", issuerNS}, true},
		// Its own API everywhere (a policy outside is told why it stalls), namespace names.
		{[]string{"list", "telemetrypolicies.telemetry.sourcegraph.com", "--all-namespaces"}, true},
		{[]string{"update", "telemetrypolicies.telemetry.sourcegraph.com/status", "-n", outside}, true},
		{[]string{"create", "telemetrypolicies.telemetry.sourcegraph.com", "-n", outside}, false},
		{[]string{"delete", "telemetrypolicies.telemetry.sourcegraph.com", "-n", outside}, false},
		{[]string{"list", "namespaces"}, true},
		// Everything it needs in an onboarded namespace.
		{[]string{"get", "secrets", "-n", inside}, true},
		{[]string{"update", "configmaps", "-n", inside}, true},
		{[]string{"create", "rolebindings", "-n", inside}, true},
		{[]string{"create", "roles", "-n", inside}, true},
		{[]string{"delete", "deployments.apps", "-n", inside}, true},
		{[]string{"create", "events.events.k8s.io", "-n", inside}, true},
		// ...and nothing there it does not need.
		{[]string{"list", "pods", "-n", inside}, false},
		{[]string{"create", "pods", "-n", inside}, false},
		{[]string{"create", "serviceaccounts", "--subresource=token", "-n", inside}, false},
		{[]string{"create", "pods", "--subresource=exec", "-n", inside}, false},
		// The collector's ServiceAccount, Role and RoleBinding are read by name, never listed or watched.
		{[]string{"get", "serviceaccounts", "-n", inside}, true},
		{[]string{"list", "serviceaccounts", "-n", inside}, false},
		{[]string{"watch", "roles.rbac.authorization.k8s.io", "-n", inside}, false},
		// By default nothing there is listed or watched: its Secrets, ConfigMaps and Deployments
		// are read by name too (list and watch come with the tenant watch role, bound only for
		// --watch-tenant-namespaces).
		{[]string{"list", "secrets", "-n", inside}, false},
		{[]string{"watch", "configmaps", "-n", inside}, false},
		{[]string{"list", "deployments.apps", "-n", inside}, false},
		{[]string{"list", "rolebindings.rbac.authorization.k8s.io", "-n", inside}, false},
	} {
		if got := canI(t, c.args...); got != c.want {
			t.Errorf("can the manager %s? %v, want %v", strings.Join(c.args, " "), got, c.want)
		}
	}

	// Real requests as the manager.
	as := rest.CopyConfig(stack.RestConfig)
	as.Impersonate = rest.ImpersonationConfig{UserName: stack.ManagerUser(), Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	mc, err := client.New(as, client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.Get(ctx, client.ObjectKey{Namespace: outside, Name: "customer"}, &corev1.Secret{}); !apierrors.IsForbidden(err) {
		t.Errorf("reading a Secret in a namespace that is not onboarded: %v, want Forbidden", err)
	}
	if err := mc.List(ctx, &corev1.SecretList{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing Secrets cluster-wide: %v, want Forbidden", err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "grab", Namespace: outside},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "mallory"}}}
	if err := mc.Create(ctx, rb); !apierrors.IsForbidden(err) {
		t.Errorf("creating a RoleBinding in a namespace that is not onboarded: %v, want Forbidden", err)
	}
	rb.Namespace = inside
	if err := mc.Create(ctx, rb); !apierrors.IsForbidden(err) {
		t.Errorf("granting cluster-admin in an onboarded namespace (privilege escalation): %v, want Forbidden", err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "grab", Namespace: inside},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"create"}}}}
	if err := mc.Create(ctx, role); !apierrors.IsForbidden(err) {
		t.Errorf("creating a Role with more than the manager holds: %v, want Forbidden", err)
	}
	// In an onboarded namespace it reads what it owns by name; it may not list a customer's
	// Secrets (list and watch come with the tenant watch role, for --watch-tenant-namespaces).
	if err := mc.Get(ctx, client.ObjectKey{Namespace: inside, Name: "frontend-db"}, &corev1.Secret{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("reading a Secret by name in an onboarded namespace: %v", err)
	}
	if err := mc.List(ctx, &corev1.SecretList{}, client.InNamespace(inside)); !apierrors.IsForbidden(err) {
		t.Errorf("listing Secrets in an onboarded namespace: %v, want Forbidden", err)
	}
}

// TestOnboardingWithoutTheBindingStallsUntilItIsMade: a labelled namespace where the admin has
// not bound the tenant role yet: the policy says exactly what is missing, and goes ahead once
// the binding is made.
func TestOnboardingWithoutTheBindingStallsUntilItIsMade(t *testing.T) {
	ctx := context.Background()
	const name = "halfway"
	labelOnly := func(ctx context.Context, ns string) error {
		if err := stack.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
		return stack.Label(ctx, ns)
	}
	if _, err := stack.AddInstanceOnboardedBy(ctx, name, seed.Options{Users: 20, Days: 2, EventsPerUserDay: 2, Seed: 3}, labelOnly); err != nil {
		t.Fatal(err)
	}
	applyPolicy(t, name, v1.TierCriticalOnly, nil)
	var msg string
	eventually(t, 60*time.Second, "the policy stalls with ManagerNotPermitted", func() bool {
		p := policy(t, name)
		for _, c := range p.Status.Conditions {
			if c.Type == v1.ConditionStalled && c.Reason == "ManagerNotPermitted" {
				msg = c.Message
				return true
			}
		}
		return false
	})
	for _, want := range []string{stack.TenantRole(), stack.ManagerUser(), "secrets", "rolebindings"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the stall message does not name %q: %s", want, msg)
		}
	}
	if n := managedObjects(t, name); n != 0 {
		t.Errorf("%d objects were created before the manager was permitted", n)
	}
	if err := stack.BindTenantRole(ctx, name); err != nil {
		t.Fatal(err)
	}
	// Granting a permission is not an event the manager can watch: it retries within a minute,
	// or at once when asked to reconcile, as here.
	kubectl(t, "annotate", "tp", "-n", name, name, "--overwrite", v1.AnnotationReconcileRequestedAt+"="+time.Now().Format(time.RFC3339Nano))
	waitReady(t, name)
}

// managedObjects counts the Secrets, ConfigMaps and Deployments the operator made in ns.
func managedObjects(t *testing.T, ns string) int {
	t.Helper()
	sel := client.MatchingLabels{resources.LabelManagedBy: resources.ManagedByValue}
	var secrets corev1.SecretList
	var cms corev1.ConfigMapList
	var deps appsv1.DeploymentList
	for _, l := range []client.ObjectList{&secrets, &cms, &deps} {
		if err := stack.Client.List(context.Background(), l, client.InNamespace(ns), sel); err != nil {
			t.Fatal(err)
		}
	}
	return len(secrets.Items) + len(cms.Items) + len(deps.Items)
}
