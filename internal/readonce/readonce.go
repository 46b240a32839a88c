/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package readonce lets one unit of work (a reconcile) read each object from the API server at
// most once until it writes it.
//
// Without watches in the tenant namespaces every read of a collector's Deployment, ConfigMaps
// and Secrets is a request to the API server, and a reconcile's steps each read what they
// judge (the downgrade guard, the configuration, the workload, the observation): about 19 GETs
// per new policy where 8 objects are created. A context started with With remembers what its
// reads returned (an object, or that it was not found); a later read of the same object in the
// same context is answered from it, as a copy. Any write of an object through Client (create,
// update, patch, delete, of the object or a subresource, successful or not) forgets the
// remembered reads of that kind and name, so a read after a write, or after a conflict or
// AlreadyExists, goes to the API server again.
//
// What a reconcile reads is thus the API server's state when it first read each object, as
// it would be had every step read at that moment; a change made by someone else meanwhile is
// seen by the next reconcile, and an update based on the older read fails on its
// resourceVersion as it always did (a delete judged on an older read should carry the read's UID
// as a precondition). Outside a context from With, or once it is done, nothing is remembered.
// Lists are never remembered.
package readonce

import (
	"context"
	"reflect"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// memoKey names one read: by the reader that made it (a memo never answers for another
// reader, a cache say, what an API reader read), the Go type and the kind the caller set (every
// kind read as unstructured or metadata-only has the same Go type), and the object's name.
type memoKey struct {
	reader *reader
	typ    reflect.Type
	gvk    schema.GroupVersionKind
	name   types.NamespacedName
}

type memoEntry struct {
	obj runtime.Object // a private copy; nil when the read found nothing
	err error          // the NotFound error the read returned
}

// memo is what one unit of work has read.
type memo struct {
	mu    sync.Mutex
	done  bool
	reads map[memoKey]memoEntry
}

type ctxKey struct{}

// With returns a context whose reads through Reader are remembered until a write through Client
// forgets them, and a function ending the unit of work: it drops what was remembered (objects
// read may hold key material) and remembers nothing more, even through a context kept beyond
// it by a goroutine the unit of work started.
func With(ctx context.Context) (context.Context, func()) {
	m := &memo{reads: map[memoKey]memoEntry{}}
	return context.WithValue(ctx, ctxKey{}, m), func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.done, m.reads = true, nil
	}
}

func memoOf(ctx context.Context) *memo {
	m, _ := ctx.Value(ctxKey{}).(*memo)
	return m
}

func (m *memo) lookup(k memoKey) (memoEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.reads[k]
	return e, ok
}

func (m *memo) store(k memoKey, e memoEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.done {
		m.reads[k] = e
	}
}

// forget drops the remembered reads of obj's name made with obj's Go type, and those made as
// unstructured or metadata-only objects, whose kind a typed write does not tell apart (a write
// of such an object forgets every read of the name). Other kinds of the same name (a
// collector's Deployment and its ServiceAccount) are kept.
func (m *memo) forget(obj client.Object) {
	name, typ := client.ObjectKeyFromObject(obj), reflect.TypeOf(obj)
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.reads {
		if k.name == name && (k.typ == typ || generic(k.typ) || generic(typ)) {
			delete(m.reads, k)
		}
	}
}

var (
	unstructuredType = reflect.TypeFor[*unstructured.Unstructured]()
	metadataType     = reflect.TypeFor[*metav1.PartialObjectMetadata]()
)

// generic reports whether objects of type t may be of any kind.
func generic(t reflect.Type) bool { return t == unstructuredType || t == metadataType }

func (m *memo) forgetAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.reads)
}

// Reader remembers the reads of r made in a context from With. Wrap a reader of the API server:
// what a reader remembers answers only that reader's later reads.
func Reader(r client.Reader) client.Reader { return &reader{Reader: r} }

type reader struct{ client.Reader }

func (r *reader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	m := memoOf(ctx)
	if m == nil || len(opts) > 0 {
		return r.Reader.Get(ctx, key, obj, opts...)
	}
	k := memoKey{reader: r, typ: reflect.TypeOf(obj), gvk: obj.GetObjectKind().GroupVersionKind(), name: key}
	if e, ok := m.lookup(k); ok {
		if e.obj == nil {
			return e.err
		}
		// The caller's object is overwritten as a Get overwrites it.
		reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(e.obj.DeepCopyObject()).Elem())
		return nil
	}
	err := r.Reader.Get(ctx, key, obj)
	switch {
	case err == nil:
		m.store(k, memoEntry{obj: obj.DeepCopyObject()})
	case apierrors.IsNotFound(err):
		m.store(k, memoEntry{err: err})
	}
	return err
}

// Client forgets the remembered reads of every object written through c.
func Client(c client.Client) client.Client { return writer{Client: c} }

type writer struct{ client.Client }

// around runs a write of obj, forgetting obj's reads before it (a read racing it is not kept)
// and after it (obj may have been named by generateName, and what the write returned is not a
// read).
func around(ctx context.Context, obj client.Object, write func() error) error {
	m := memoOf(ctx)
	if m == nil {
		return write()
	}
	m.forget(obj)
	defer m.forget(obj)
	return write()
}

// forgetAll runs a write whose object is not named in a form read here (an apply configuration,
// a delete of a collection), forgetting everything remembered first.
func forgetAll(ctx context.Context, write func() error) error {
	if m := memoOf(ctx); m != nil {
		m.forgetAll()
	}
	return write()
}

func (w writer) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	return around(ctx, obj, func() error { return w.Client.Create(ctx, obj, opts...) })
}

func (w writer) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	return around(ctx, obj, func() error { return w.Client.Update(ctx, obj, opts...) })
}

func (w writer) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	return around(ctx, obj, func() error { return w.Client.Patch(ctx, obj, patch, opts...) })
}

func (w writer) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	return forgetAll(ctx, func() error { return w.Client.Apply(ctx, obj, opts...) })
}

func (w writer) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	return around(ctx, obj, func() error { return w.Client.Delete(ctx, obj, opts...) })
}

func (w writer) DeleteAllOf(ctx context.Context, obj client.Object, opts ...client.DeleteAllOfOption) error {
	return forgetAll(ctx, func() error { return w.Client.DeleteAllOf(ctx, obj, opts...) })
}

func (w writer) Status() client.SubResourceWriter { return subWriter{w.Client.Status()} }

func (w writer) SubResource(subResource string) client.SubResourceClient {
	return subClient{SubResourceClient: w.Client.SubResource(subResource)}
}

type subWriter struct{ client.SubResourceWriter }

func (s subWriter) Create(ctx context.Context, obj client.Object, sub client.Object, opts ...client.SubResourceCreateOption) error {
	return around(ctx, obj, func() error { return s.SubResourceWriter.Create(ctx, obj, sub, opts...) })
}

func (s subWriter) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	return around(ctx, obj, func() error { return s.SubResourceWriter.Update(ctx, obj, opts...) })
}

func (s subWriter) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	return around(ctx, obj, func() error { return s.SubResourceWriter.Patch(ctx, obj, patch, opts...) })
}

func (s subWriter) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
	return forgetAll(ctx, func() error { return s.SubResourceWriter.Apply(ctx, obj, opts...) })
}

type subClient struct{ client.SubResourceClient }

func (s subClient) Create(ctx context.Context, obj client.Object, sub client.Object, opts ...client.SubResourceCreateOption) error {
	return subWriter{s.SubResourceClient}.Create(ctx, obj, sub, opts...)
}

func (s subClient) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	return subWriter{s.SubResourceClient}.Update(ctx, obj, opts...)
}

func (s subClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	return subWriter{s.SubResourceClient}.Patch(ctx, obj, patch, opts...)
}

func (s subClient) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
	return subWriter{s.SubResourceClient}.Apply(ctx, obj, opts...)
}
