/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package tenants keeps the manager's view of the namespaces it was let into. A namespace is
// onboarded when a cluster admin has labelled it (see telemetryv1alpha1.LabelOnboarded) and has
// bound the manager's tenant ClusterRole to its ServiceAccount there. The manager holds no
// cluster-wide permission on Secrets, ConfigMaps, workloads or RBAC, so it cannot cache them
// cluster-wide: it starts one informer cache per onboarded namespace, registers the
// controller's watches on it, and routes reads of those kinds to it.
//
// Or, with Options.Live, it watches nothing there: reads of those kinds go to the API server,
// filtered as the caches would filter them, and the controller polls instead of being told.
// Each watch costs the manager about 14 goroutines, a 16 KiB event ring and its decoder state,
// whatever it holds: with one policy in each of 1,000 namespaces, 600-650 MiB against 94 MiB
// without watches (see the README).
package tenants

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"k8s.io/component-helpers/auth/rbac/validation"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Reasons a namespace is not usable, as set on the policies in it.
const (
	// ReasonNotOnboarded: the namespace lacks the onboarding label.
	ReasonNotOnboarded = "NamespaceNotOnboarded"
	// ReasonNotPermitted: the namespace is labelled, but the manager lacks permissions there.
	ReasonNotPermitted = "ManagerNotPermitted"
)

// Status says whether the manager may work in a namespace, and if not, why.
type Status struct {
	Onboarded bool
	// Reason and Message explain a namespace that is not onboarded (see the Reason constants).
	Reason, Message string
}

// Options configures a Set.
type Options struct {
	// Config is the manager's connection to the API server.
	Config *rest.Config
	// Cache is the template of each namespace's cache (scheme, mapper, HTTP client, label
	// selectors by object); its DefaultNamespaces is set per namespace.
	Cache cache.Options
	// Kinds are the object kinds read through the namespace caches; reads of other kinds are
	// refused, so a mistake cannot start a cluster-wide informer the manager may not hold.
	Kinds []client.Object
	// Uncached are kinds in the onboarded namespaces that are read from the API server only:
	// reads of them through Client are refused, for the same reason.
	Uncached []client.Object
	// Namespaces reads Namespace objects (from the manager's cache).
	Namespaces client.Reader
	// Selector selects the onboarded namespaces by label.
	Selector labels.Selector
	// Reviewer creates SelfSubjectRulesReviews and SelfSubjectAccessReviews.
	Reviewer client.Client
	// Rules are the permissions the manager needs in an onboarded namespace.
	Rules []rbacv1.PolicyRule
	// RoleName names the ClusterRole an admin binds to grant Rules, for messages.
	RoleName string
	// Subject names the manager's ServiceAccount (namespace/name), for messages.
	Subject string
	// Watch registers the controller's watches on a namespace's new cache.
	Watch func(cache.Cache) error
	// Live, if set, serves the reads of Kinds in every onboarded namespace instead of a cache:
	// no namespace cache is started and Watch is never called. Reads see what a cache would
	// (Cache.ByObject's label selectors apply), only never stale.
	Live client.Reader
	// Clock decides when a namespace's permissions are reviewed again.
	Clock clock.PassiveClock
	// Recheck is how long a successful permission review holds (default 5m); SyncTimeout bounds
	// the wait for a new cache (default 15s).
	Recheck, SyncTimeout time.Duration
}

type tenant struct {
	cache    client.Reader // the namespace's cache, or the live reader (Options.Live)
	cancel   context.CancelFunc
	reviewed time.Time
	// invalidations counts Invalidate calls, so a review that was under way when one came
	// does not make the namespace fresh again.
	invalidations int
}

// Set is the manager's onboarded namespaces: a manager.Runnable that owns their caches, and a
// client.Reader that routes reads to them.
type Set struct {
	opts Options

	mu sync.Mutex
	// nsLocks make reviewing and starting a namespace's cache single-flight per namespace.
	// One lock for all namespaces serialized onboarding: with one policy in each of 1,000
	// namespaces, every worker waited on one namespace's review and cache sync at a time.
	nsLocks map[string]*nsLock
	ctx     context.Context // the manager's, once started
	tenants map[string]*tenant
	started chan struct{}
}

type nsLock struct {
	sync.Mutex
	// users counts holders and waiters; the lock is dropped when none are left.
	users int
}

// lockNamespace takes the lock of ns and returns its release.
func (s *Set) lockNamespace(ns string) (unlock func()) {
	s.mu.Lock()
	l := s.nsLocks[ns]
	if l == nil {
		l = &nsLock{}
		s.nsLocks[ns] = l
	}
	l.users++
	s.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.mu.Lock()
		if l.users--; l.users == 0 {
			delete(s.nsLocks, ns)
		}
		s.mu.Unlock()
	}
}

// New returns a Set; add it to the manager so its caches live as long as the manager's.
func New(o Options) *Set {
	if o.Recheck <= 0 {
		o.Recheck = 5 * time.Minute
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = 15 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return &Set{opts: o, tenants: map[string]*tenant{}, nsLocks: map[string]*nsLock{}, started: make(chan struct{})}
}

// Start runs until ctx ends, then stops every namespace cache.
func (s *Set) Start(ctx context.Context) error {
	s.mu.Lock()
	s.ctx = ctx
	close(s.started)
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	defer s.mu.Unlock()
	for ns, t := range s.tenants {
		t.cancel()
		delete(s.tenants, ns)
	}
	return nil
}

// NeedLeaderElection: only the leader reconciles, so only the leader needs the caches.
func (s *Set) NeedLeaderElection() bool { return true }

// Onboarded reports, without any API call, whether ns has a running cache.
func (s *Set) Onboarded(ns string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tenants[ns] != nil
}

// Ensure decides whether the manager may work in ns, and starts its cache if so. A namespace
// that lost its label or its binding has its cache stopped.
func (s *Set) Ensure(ctx context.Context, ns string) (Status, error) {
	select {
	case <-s.started:
	case <-ctx.Done():
		return Status{}, ctx.Err()
	}
	if on, err := s.labelled(ctx, ns); err != nil || !on {
		if err == nil {
			s.remove(ctx, ns)
			return s.notOnboarded(ns), nil
		}
		return Status{}, err
	}
	if s.fresh(ns) {
		return Status{Onboarded: true}, nil
	}
	// Reviewing and starting are single-flight for each namespace, and serialized with its
	// Sync: a label removed meanwhile is seen below, before a cache is kept.
	defer s.lockNamespace(ns)()
	if s.fresh(ns) {
		return Status{Onboarded: true}, nil // reviewed by the caller this one waited for
	}
	now := s.opts.Clock.Now()
	s.mu.Lock()
	invalidations := 0
	if t := s.tenants[ns]; t != nil {
		invalidations = t.invalidations
	}
	s.mu.Unlock()
	missing, err := s.missing(ctx, ns)
	if err != nil {
		return Status{}, fmt.Errorf("reviewing the manager's permissions in namespace %s: %w", ns, err)
	}
	if len(missing) > 0 {
		s.remove(ctx, ns)
		return Status{Reason: ReasonNotPermitted, Message: fmt.Sprintf(
			"namespace %s is labelled for onboarding but the manager may not %s there: bind ClusterRole %s to ServiceAccount %s in it (a RoleBinding)",
			ns, describe(missing), s.opts.RoleName, s.opts.Subject)}, nil
	}
	if on, err := s.labelled(ctx, ns); err != nil || !on {
		if err == nil {
			s.remove(ctx, ns)
			return s.notOnboarded(ns), nil
		}
		return Status{}, err
	}
	s.mu.Lock()
	t := s.tenants[ns]
	if t != nil && t.invalidations == invalidations {
		t.reviewed = now
	}
	s.mu.Unlock()
	if t != nil {
		return Status{Onboarded: true}, nil
	}
	if err := s.add(ctx, ns, now); err != nil {
		return Status{}, err
	}
	return Status{Onboarded: true}, nil
}

// fresh reports whether ns has a cache and a permission review younger than Recheck.
func (s *Set) fresh(ns string) bool {
	now := s.opts.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenants[ns]
	return t != nil && now.Sub(t.reviewed) < s.opts.Recheck
}

// labelled reports whether the manager's cache holds ns as onboarded: labelled, and not being
// deleted (a namespace being deleted loses its RoleBindings before its policies go, so the
// manager treats it as offboarded already).
func (s *Set) labelled(ctx context.Context, ns string) (bool, error) {
	nsObj := &corev1.Namespace{}
	err := s.opts.Namespaces.Get(ctx, client.ObjectKey{Name: ns}, nsObj)
	switch {
	case apierrors.IsNotFound(err):
		return false, nil // the manager's cache holds only labelled namespaces
	case err != nil:
		return false, err
	}
	return s.opts.Selector.Matches(labels.Set(nsObj.Labels)) && nsObj.DeletionTimestamp.IsZero(), nil
}

// Invalidate makes the next Ensure review the manager's permissions in ns again, as after a
// request there was refused.
func (s *Set) Invalidate(ns string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[ns]; t != nil {
		t.reviewed = time.Time{}
		t.invalidations++
	}
}

// Sync stops the cache of ns if the manager's cache no longer holds it as onboarded (its label
// was removed, or it was deleted), whether or not a policy is left there to reconcile.
func (s *Set) Sync(ctx context.Context, ns string) {
	defer s.lockNamespace(ns)()
	if on, err := s.labelled(ctx, ns); err == nil && !on {
		s.remove(ctx, ns)
	}
}

func (s *Set) notOnboarded(ns string) Status {
	return Status{Reason: ReasonNotOnboarded, Message: fmt.Sprintf(
		"namespace %s is not onboarded: the operator creates nothing here until a cluster admin binds ClusterRole %s to ServiceAccount %s in it and labels it %s",
		ns, s.opts.RoleName, s.opts.Subject, s.opts.Selector)}
}

// add starts a cache for ns, registers the watches on it and waits until it has synced.
func (s *Set) add(ctx context.Context, ns string, now time.Time) error {
	if s.opts.Live != nil {
		s.mu.Lock()
		s.tenants[ns] = &tenant{cache: liveReader{live: s.opts.Live, selectors: s.opts.Cache.ByObject}, cancel: func() {}, reviewed: now}
		s.mu.Unlock()
		log.FromContext(ctx).Info("namespace onboarded: reading the operator's objects in it from the API server", "namespace", ns)
		return nil
	}
	o := s.opts.Cache
	o.DefaultNamespaces = map[string]cache.Config{ns: {}}
	c, err := cache.New(s.opts.Config, o)
	if err != nil {
		return fmt.Errorf("creating the cache of namespace %s: %w", ns, err)
	}
	s.mu.Lock()
	cctx, cancel := context.WithCancel(s.ctx)
	s.mu.Unlock()
	logger := log.FromContext(ctx) // not ctx itself: the cache outlives the reconcile that asked for it
	go func() {
		if err := c.Start(cctx); err != nil {
			logger.Error(err, "namespace cache stopped", "namespace", ns)
		}
	}()
	wctx, wcancel := context.WithTimeout(ctx, s.opts.SyncTimeout)
	defer wcancel()
	for _, k := range s.opts.Kinds {
		if _, err := c.GetInformer(wctx, k); err != nil {
			cancel()
			return fmt.Errorf("starting the cache of namespace %s: %w", ns, err)
		}
	}
	if !c.WaitForCacheSync(wctx) {
		cancel()
		return fmt.Errorf("the cache of namespace %s did not sync within %s", ns, s.opts.SyncTimeout)
	}
	if s.opts.Watch != nil {
		if err := s.opts.Watch(c); err != nil {
			cancel()
			return fmt.Errorf("watching namespace %s: %w", ns, err)
		}
	}
	s.mu.Lock()
	s.tenants[ns] = &tenant{cache: c, cancel: cancel, reviewed: now}
	s.mu.Unlock()
	log.FromContext(ctx).Info("namespace onboarded: watching the operator's objects in it", "namespace", ns)
	return nil
}

func (s *Set) remove(ctx context.Context, ns string) {
	s.mu.Lock()
	t := s.tenants[ns]
	delete(s.tenants, ns)
	s.mu.Unlock()
	if t != nil {
		t.cancel()
		log.FromContext(ctx).Info("namespace no longer onboarded: stopped watching it", "namespace", ns)
	}
}

// missing returns the required rules the manager does not hold in ns. The rules review is one
// request; where it is incomplete (an authorizer besides RBAC), each missing rule is asked
// about directly before it is reported.
func (s *Set) missing(ctx context.Context, ns string) ([]rbacv1.PolicyRule, error) {
	review := &authorizationv1.SelfSubjectRulesReview{Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns}}
	if err := s.opts.Reviewer.Create(ctx, review); err != nil {
		return nil, err
	}
	held := make([]rbacv1.PolicyRule, 0, len(review.Status.ResourceRules))
	for _, r := range review.Status.ResourceRules {
		held = append(held, rbacv1.PolicyRule{Verbs: r.Verbs, APIGroups: r.APIGroups, Resources: r.Resources, ResourceNames: r.ResourceNames})
	}
	ok, uncovered := validation.Covers(held, s.opts.Rules)
	if ok {
		return nil, nil
	}
	if !review.Status.Incomplete {
		return uncovered, nil
	}
	var still []rbacv1.PolicyRule
	for _, r := range uncovered {
		for _, one := range expand(r) {
			sar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: one.Verbs[0], Group: one.APIGroups[0], Resource: one.Resources[0]}}}
			if err := s.opts.Reviewer.Create(ctx, sar); err != nil {
				return nil, err
			}
			if !sar.Status.Allowed {
				still = append(still, one)
			}
		}
	}
	return still, nil
}

// expand splits a rule into one rule per verb, group and resource.
func expand(r rbacv1.PolicyRule) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, g := range r.APIGroups {
		for _, res := range r.Resources {
			for _, v := range r.Verbs {
				out = append(out, rbacv1.PolicyRule{APIGroups: []string{g}, Resources: []string{res}, Verbs: []string{v}})
			}
		}
	}
	return out
}

// describe names missing permissions compactly: "get,list secrets; create rolebindings.rbac.authorization.k8s.io".
func describe(rules []rbacv1.PolicyRule) string {
	byResource := map[string][]string{}
	for _, r := range rules {
		for _, one := range expand(r) {
			res := one.Resources[0]
			if one.APIGroups[0] != "" {
				res += "." + one.APIGroups[0]
			}
			byResource[res] = append(byResource[res], one.Verbs[0])
		}
	}
	names := make([]string, 0, len(byResource))
	for res := range byResource {
		names = append(names, res)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, res := range names {
		parts = append(parts, strings.Join(byResource[res], ",")+" "+res)
	}
	return strings.Join(parts, "; ")
}

// ErrNotOnboarded is returned for reads in a namespace without a cache.
var ErrNotOnboarded = errors.New("namespace is not onboarded")

func (s *Set) reader(ns string, obj client.Object) (client.Reader, error) {
	if !s.Routes(obj) {
		return nil, fmt.Errorf("tenants: %T is not read through namespace caches", obj)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenants[ns]
	if t == nil {
		return nil, fmt.Errorf("reading in namespace %q: %w", ns, ErrNotOnboarded)
	}
	return t.cache, nil
}

// Routes reports whether reads of obj's kind go through the namespace caches.
func (s *Set) Routes(obj client.Object) bool {
	for _, k := range s.opts.Kinds {
		if fmt.Sprintf("%T", k) == fmt.Sprintf("%T", obj) {
			return true
		}
	}
	return false
}

// Get reads obj from its namespace's cache.
func (s *Set) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	r, err := s.reader(key.Namespace, obj)
	if err != nil {
		return err
	}
	return r.Get(ctx, key, obj, opts...)
}

// List lists from one namespace's cache; a list across namespaces is refused.
func (s *Set) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	lo := &client.ListOptions{}
	lo.ApplyOptions(opts)
	if lo.Namespace == "" {
		return errors.New("tenants: a list must name its namespace")
	}
	kind := strings.TrimSuffix(fmt.Sprintf("%T", list), "List")
	for _, k := range s.opts.Kinds {
		if fmt.Sprintf("%T", k) == kind {
			r, err := s.reader(lo.Namespace, k)
			if err != nil {
				return err
			}
			return r.List(ctx, list, opts...)
		}
	}
	return fmt.Errorf("tenants: %T is not read through namespace caches", list)
}

// Client returns c with reads of the routed kinds served from the namespace caches; writes,
// and reads of other kinds, go to c.
func (s *Set) Client(c client.Client) client.Client { return &routedClient{Client: c, set: s} }

type routedClient struct {
	client.Client
	set *Set
}

func (r *routedClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if r.set.Routes(obj) {
		return r.set.Get(ctx, key, obj, opts...)
	}
	if err := r.set.refuseUncached(fmt.Sprintf("%T", obj)); err != nil {
		return err
	}
	return r.Client.Get(ctx, key, obj, opts...)
}

func (r *routedClient) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	kind := strings.TrimSuffix(fmt.Sprintf("%T", list), "List")
	for _, k := range r.set.opts.Kinds {
		if fmt.Sprintf("%T", k) == kind {
			return r.set.List(ctx, list, opts...)
		}
	}
	if err := r.set.refuseUncached(kind); err != nil {
		return err
	}
	return r.Client.List(ctx, list, opts...)
}

// refuseUncached refuses a cached read of an uncached kind (named as by %T): the manager's
// cache would start a cluster-wide watch of it, which the manager may not hold.
func (s *Set) refuseUncached(kind string) error {
	for _, k := range s.opts.Uncached {
		if fmt.Sprintf("%T", k) == kind {
			return fmt.Errorf("tenants: %s is read from the API server, not a cache", strings.TrimPrefix(kind, "*"))
		}
	}
	return nil
}

// liveReader reads from the API server what a namespace cache would hold: objects of a kind
// with a label selector in selectors only match it, others are not found.
type liveReader struct {
	live      client.Reader
	selectors map[client.Object]cache.ByObject
}

// selector returns the label selector the caches apply to obj's kind, or nil.
func (l liveReader) selector(obj runtime.Object) labels.Selector {
	kind := strings.TrimSuffix(fmt.Sprintf("%T", obj), "List")
	for k, by := range l.selectors {
		if fmt.Sprintf("%T", k) == kind {
			return by.Label
		}
	}
	return nil
}

func (l liveReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if err := l.live.Get(ctx, key, obj, opts...); err != nil {
		return err
	}
	if sel := l.selector(obj); sel != nil && !sel.Matches(labels.Set(obj.GetLabels())) {
		// A cache selecting by label would not hold it: the caller sees what it would, and
		// none of it (a customer's object of the same name).
		v := reflect.ValueOf(obj).Elem()
		v.Set(reflect.Zero(v.Type()))
		kind := fmt.Sprintf("%T", obj) // *v1.Secret: the resource is secrets
		return apierrors.NewNotFound(schema.GroupResource{Resource: strings.ToLower(kind[strings.LastIndex(kind, ".")+1:]) + "s"}, key.Name)
	}
	return nil
}

func (l liveReader) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	sel := l.selector(list)
	if sel == nil {
		return l.live.List(ctx, list, opts...)
	}
	lo := &client.ListOptions{}
	lo.ApplyOptions(opts)
	if lo.LabelSelector != nil {
		reqs, selectable := lo.LabelSelector.Requirements()
		if !selectable { // labels.Nothing(): as a query it would read as no selector at all
			return meta.SetList(list, nil)
		}
		sel = sel.Add(reqs...)
	}
	lo.LabelSelector = sel
	if err := l.live.List(ctx, list, lo); err != nil {
		return err
	}
	// Whatever the server made of the selector, hand back only what the cache would hold.
	items, err := meta.ExtractList(list)
	if err != nil {
		return err
	}
	kept := items[:0]
	for _, item := range items {
		if o, ok := item.(client.Object); ok && sel.Matches(labels.Set(o.GetLabels())) {
			kept = append(kept, item)
		}
	}
	return meta.SetList(list, kept)
}
