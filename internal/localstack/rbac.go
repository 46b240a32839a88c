/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package localstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// rbacKinds are the installer's objects the stack applies; the CRD is installed by the control
// plane already and the manager runs as a process.
var rbacKinds = map[string]bool{"Namespace": true, "ServiceAccount": true, "ClusterRole": true, "ClusterRoleBinding": true, "Role": true, "RoleBinding": true}

// applyRBAC applies the installer's RBAC and writes a kubeconfig that authenticates as the
// manager's ServiceAccount (a client certificate naming it: RBAC matches ServiceAccount subjects
// by user name), so the operator holds exactly the permissions it ships with.
func (s *Stack) applyRBAC(ctx context.Context) error {
	if s.Opts.Bins.Installer == "" {
		return errors.New("localstack: Binaries.Installer (the rendered dist/install.yaml) is required")
	}
	raw, err := os.ReadFile(s.Opts.Bins.Installer)
	if err != nil {
		return fmt.Errorf("reading the installer (run make build-installer): %w", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("installer: %w", err)
		}
		switch kind := u.GetKind(); {
		case kind == "Deployment":
			dep := &appsv1.Deployment{}
			if err := runtimeConvert(u, dep); err != nil {
				return err
			}
			s.managerSA = "system:serviceaccount:" + dep.Namespace + ":" + dep.Spec.Template.Spec.ServiceAccountName
		case kind == "ClusterRole" && strings.HasSuffix(u.GetName(), "tenant-role"):
			s.tenantRole = u.GetName()
			fallthrough
		case kind == "ClusterRole" && strings.HasSuffix(u.GetName(), "tenant-watch-role"):
			if s.tenantRole != u.GetName() {
				s.tenantWatchRole = u.GetName()
			}
			fallthrough
		case rbacKinds[kind]:
			if err := s.Client.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("applying %s %s: %w", kind, u.GetName(), err)
			}
		}
	}
	if s.managerSA == "" || s.tenantRole == "" {
		return errors.New("the installer names no manager Deployment or no tenant ClusterRole")
	}
	parts := strings.Split(s.managerSA, ":")
	user, err := s.Env.AddUser(envtest.User{Name: s.managerSA, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + parts[2]}}, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	s.ManagerRestConfig = user.Config()
	s.ManagerRestConfig.QPS = -1
	s.managerKubeconfig = filepath.Join(s.Dir, "manager-kubeconfig")
	return os.WriteFile(s.managerKubeconfig, kc, 0o600)
}

func runtimeConvert(u *unstructured.Unstructured, into any) error {
	return runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into)
}

// ManagerUser is the user name the operator authenticates as (its ServiceAccount's).
func (s *Stack) ManagerUser() string { return s.managerSA }

// TenantRole is the ClusterRole an admin binds in a namespace to onboard it.
func (s *Stack) TenantRole() string { return s.tenantRole }

// Onboard creates namespace ns (if missing) and onboards it as the README tells an admin to:
// bind the tenant ClusterRole to the manager's ServiceAccount there, then label it.
func (s *Stack) Onboard(ctx context.Context, ns string) error {
	if err := s.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if err := s.BindTenantRole(ctx, ns); err != nil {
		return err
	}
	return s.Label(ctx, ns)
}

// Label gives namespace ns the onboarding label (the other half of onboarding).
func (s *Stack) Label(ctx context.Context, ns string) error {
	nsObj := &corev1.Namespace{}
	if err := s.Client.Get(ctx, client.ObjectKey{Name: ns}, nsObj); err != nil {
		return err
	}
	patch := client.MergeFrom(nsObj.DeepCopy())
	if nsObj.Labels == nil {
		nsObj.Labels = map[string]string{}
	}
	nsObj.Labels[v1.LabelOnboarded] = "true"
	return s.Client.Patch(ctx, nsObj, patch)
}

// BindTenantRole grants the manager its tenant role in ns (the RoleBinding half of onboarding),
// and its tenant watch role too when ManagerArgs turn watching on.
func (s *Stack) BindTenantRole(ctx context.Context, ns string) error {
	if err := s.bind(ctx, ns, "telemetry-operator", s.tenantRole); err != nil {
		return err
	}
	if watchesTenants(s.Opts.ManagerArgs) {
		if s.tenantWatchRole == "" {
			return errors.New("the manager watches the tenant namespaces but the installer has no tenant watch ClusterRole")
		}
		return s.bind(ctx, ns, "telemetry-operator-watch", s.tenantWatchRole)
	}
	return nil
}

// bind binds ClusterRole role to the manager's ServiceAccount in ns.
func (s *Stack) bind(ctx context.Context, ns, name, role string) error {
	parts := strings.Split(s.managerSA, ":")
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: parts[2], Name: parts[3]}},
	}
	if err := s.Client.Create(ctx, rb); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// watchesTenants reports whether the manager's arguments turn --watch-tenant-namespaces on (in
// any form the flag package accepts).
func watchesTenants(args []string) bool {
	on := false
	for _, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "watch-tenant-namespaces" || !strings.HasPrefix(a, "-") {
			continue
		}
		if !hasValue {
			on = true
			continue
		}
		v, err := strconv.ParseBool(value)
		on = err == nil && v
	}
	return on
}
