/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package readonce_test

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourcegraph/telemetry-operator/internal/readonce"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// TestReadOnceAgainstTheAPIServer checks, on a real API server, what a unit of work reads: an
// object changed by someone else after the first read is seen as first read (one request, not
// two), a write through the wrapped client makes the next read go to the server, a read that
// found nothing is remembered until a create, and outside a unit of work every read is live.
func TestReadOnceAgainstTheAPIServer(t *testing.T) {
	env, cfg, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = testenv.Stop(env) })
	direct, err := client.New(cfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	reader := readonce.Reader(direct)
	writer := readonce.Client(direct)
	bg := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "readonce"}}
	if err := direct.Create(bg, ns); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKey{Namespace: "readonce", Name: "config"}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}, Data: map[string]string{"v": "1"}}
	if err := direct.Create(bg, cm); err != nil {
		t.Fatal(err)
	}
	elsewhere := func(v string) {
		t.Helper()
		cm := &corev1.ConfigMap{}
		if err := direct.Get(bg, key, cm); err != nil {
			t.Fatal(err)
		}
		cm.Data["v"] = v
		if err := direct.Update(bg, cm); err != nil {
			t.Fatal(err)
		}
	}
	read := func(ctx context.Context) string {
		t.Helper()
		cm := &corev1.ConfigMap{}
		if err := reader.Get(ctx, key, cm); err != nil {
			t.Fatal(err)
		}
		return cm.Data["v"]
	}

	// unit starts a unit of work ended when the test ends.
	unit := func() context.Context {
		ctx, done := readonce.With(bg)
		t.Cleanup(done)
		return ctx
	}
	ctx, done := readonce.With(bg)
	first := &corev1.ConfigMap{}
	if err := reader.Get(ctx, key, first); err != nil || first.Data["v"] != "1" {
		t.Fatalf("first read: %v %v", err, first.Data)
	}
	first.Data["v"] = "changed by the caller" // the remembered copy is not the caller's
	elsewhere("2")
	if got := read(ctx); got != "1" {
		t.Fatalf("a second read in the same unit of work went to the server (or handed back the caller's copy): %q", got)
	}
	if got := read(bg); got != "2" {
		t.Fatalf("outside a unit of work reads are live: %q", got)
	}
	if got := read(unit()); got != "2" {
		t.Fatalf("a new unit of work reads again: %q", got)
	}

	// A write through the wrapped client forgets the read, whether it succeeds or not.
	stale := &corev1.ConfigMap{}
	if err := reader.Get(ctx, key, stale); err != nil {
		t.Fatal(err)
	}
	stale.Data["v"] = "3"
	if err := writer.Update(ctx, stale); !apierrors.IsConflict(err) {
		t.Fatalf("an update from the first read must conflict: %v", err)
	}
	if got := read(ctx); got != "2" {
		t.Fatalf("after a failed write the object is read again: %q", got)
	}
	elsewhere("4")
	if got := read(ctx); got != "2" {
		t.Fatalf("read again once, then remembered: %q", got)
	}
	fresh := &corev1.ConfigMap{}
	if err := reader.Get(unit(), key, fresh); err != nil {
		t.Fatal(err)
	}
	fresh.Data["v"] = "5"
	if err := writer.Update(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if got := read(ctx); got != "5" {
		t.Fatalf("after a write the object is read again: %q", got)
	}

	// Not found is remembered, by kind and name: a ConfigMap's read says nothing of a Secret's.
	gone := client.ObjectKey{Namespace: "readonce", Name: "later"}
	if err := reader.Get(ctx, gone, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("want not found: %v", err)
	}
	if err := direct.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: gone.Namespace, Name: gone.Name}}); err != nil {
		t.Fatal(err)
	}
	if err := reader.Get(ctx, gone, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a remembered not-found is answered again: %v", err)
	}
	err = writer.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: gone.Namespace, Name: gone.Name}})
	if !apierrors.IsAlreadyExists(err) {
		t.Fatalf("want already exists: %v", err)
	}
	if err := reader.Get(ctx, gone, &corev1.Secret{}); err != nil {
		t.Fatalf("after a create that found the object, it is read again: %v", err)
	}

	// Delete forgets that kind of that name; other kinds of the same name (a collector's
	// Deployment and ServiceAccount share one) are kept.
	depKey := client.ObjectKey{Namespace: "readonce", Name: "config"}
	if err := reader.Get(ctx, depKey, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Fatalf("no Deployment of that name: %v", err)
	}
	if err := writer.Delete(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}); err != nil {
		t.Fatal(err)
	}
	if err := reader.Get(ctx, key, &corev1.ConfigMap{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after a delete the object is read again: %v", err)
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "readonce", Name: "config"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"a": "b"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}},
			},
		},
	}
	if err := direct.Create(bg, dep.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	if err := reader.Get(ctx, depKey, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a ConfigMap's delete does not forget the Deployment's read: %v", err)
	}
	if err := writer.Create(ctx, dep.DeepCopy()); !apierrors.IsAlreadyExists(err) {
		t.Fatalf("want already exists: %v", err)
	}
	dep = &appsv1.Deployment{}
	if err := reader.Get(ctx, depKey, dep); err != nil {
		t.Fatalf("a Deployment's create forgets the Deployment's read: %v", err)
	}

	// A status write forgets too.
	dep.Status.ObservedGeneration = 7
	if err := writer.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	again := &appsv1.Deployment{}
	if err := reader.Get(ctx, client.ObjectKeyFromObject(dep), again); err != nil || again.Status.ObservedGeneration != 7 {
		t.Fatalf("after a status write the object is read again: %v %d", err, again.Status.ObservedGeneration)
	}

	// Metadata-only reads of different kinds of one name are told apart by the kind asked for.
	meta := func(ctx context.Context, kind string) error {
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(schema.GroupVersionKind{Version: "v1", Kind: kind})
		if kind == "Deployment" {
			m.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind(kind))
		}
		return reader.Get(ctx, depKey, m)
	}
	if err := meta(ctx, "Deployment"); err != nil {
		t.Fatal(err)
	}
	if err := meta(ctx, "Secret"); !apierrors.IsNotFound(err) {
		t.Fatalf("a Secret's metadata read was answered with the Deployment's: %v", err)
	}

	// A write of a metadata-only object forgets the typed reads of its name too.
	if err := reader.Get(ctx, depKey, &appsv1.Deployment{}); err != nil {
		t.Fatal(err)
	}
	patched := &metav1.PartialObjectMetadata{}
	patched.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("Deployment"))
	patched.SetNamespace(depKey.Namespace)
	patched.SetName(depKey.Name)
	if err := writer.Patch(ctx, patched, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"patched":"yes"}}}`))); err != nil {
		t.Fatal(err)
	}
	typed := &appsv1.Deployment{}
	if err := reader.Get(ctx, depKey, typed); err != nil || typed.Labels["patched"] != "yes" {
		t.Fatalf("after a metadata-only write the typed object is read again: %v %v", err, typed.Labels)
	}

	// Another reader's reads are its own: a memo never answers for a reader that did not read.
	other := readonce.Reader(direct)
	elsewhere2 := &corev1.Secret{}
	if err := other.Get(ctx, gone, elsewhere2); err != nil {
		t.Fatal(err)
	}
	if err := direct.Delete(bg, elsewhere2); err != nil {
		t.Fatal(err)
	}
	if err := reader.Get(ctx, gone, &corev1.Secret{}); err != nil {
		t.Fatalf("the first reader still remembers the Secret: %v", err)
	}
	if err := readonce.Reader(direct).Get(ctx, gone, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a new reader reads for itself: %v", err)
	}

	// Once the unit of work is done, nothing is remembered, even through its context.
	done()
	if err := reader.Get(ctx, gone, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after done every read is live: %v", err)
	}
	if err := direct.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: gone.Namespace, Name: gone.Name}}); err != nil {
		t.Fatal(err)
	}
	if err := reader.Get(ctx, gone, &corev1.Secret{}); err != nil {
		t.Fatalf("after done nothing is remembered: %v", err)
	}
}
