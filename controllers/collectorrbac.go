/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// The collector's ServiceAccount, Role and RoleBinding are not watched. Each kind watched in
// each onboarded namespace costs the manager a watch of its own (about 14 goroutines, a 16 KiB
// event ring, decoders and HTTP/2 stream state: at 100 namespaces, six kinds took 172 MiB and
// three 127 MiB, `make bench`), and these three change only when
// someone edits them by hand. They are read from the API server and put back when the
// collector is (re)deployed or rolled out, when it is not fully available (and they were not
// checked in the last collectorRBACSettle), after every spec change or
// `kubectl telemetry reconcile`, and at least every CollectorRBACResync otherwise (plus up to a
// tenth of it, fixed per policy, so they do not all come due at once).

// DefaultCollectorRBACResync is the default of Options.CollectorRBACResync.
const DefaultCollectorRBACResync = 10 * time.Minute

// rbacCheck is when the collector's RBAC objects of a policy were last found or put in order.
type rbacCheck struct {
	uid        types.UID
	generation int64
	// request is the policy's reconcile-request annotation at the time.
	request string
	at      time.Time
}

func (r *TelemetryPolicyReconciler) collectorRBACResync() time.Duration {
	if r.Options.CollectorRBACResync > 0 {
		return r.Options.CollectorRBACResync
	}
	return DefaultCollectorRBACResync
}

// rbacDue says whether the collector's RBAC objects are read in this reconcile.
type rbacDue int

const (
	rbacNotDue rbacDue = iota
	rbacDueCheck
	// rbacDueCreate: the collector has no Deployment (a new policy, or one coming back from
	// Off), so its RBAC objects most likely do not exist either: create them first, and read
	// only those that do.
	rbacDueCreate
)

// collectorRBACDue reports whether the collector's ServiceAccount, Role and RoleBinding must be
// read (and put back) in this reconcile, and when they are due otherwise. desired is the
// collector's Deployment as this reconcile will have it, dep the one it read (nil: none), which
// is also the one this reconcile rolls out from: a rollout is never decided on a newer read
// than the one that decided whether to look at the RBAC objects.
func (r *TelemetryPolicyReconciler) collectorRBACDue(p *v1.TelemetryPolicy, desired, dep *appsv1.Deployment) (rbacDue, time.Time) {
	now := r.Clock.Now()
	r.rbacMu.Lock()
	c, ok := r.rbacChecked[client.ObjectKeyFromObject(p)]
	r.rbacMu.Unlock()
	next := c.at.Add(r.collectorRBACResync() + spread(p.UID, r.collectorRBACResync()/10))
	due := !ok || c.uid != p.UID || c.generation != p.Generation || c.request != p.Annotations[v1.AnnotationReconcileRequestedAt] || !now.Before(next)
	if dep == nil {
		return rbacDueCreate, time.Time{}
	}
	// A collector about to be rolled out, or not running as desired, may fail for want of them
	// (a deleted ServiceAccount stops its pods from starting): look. A rollout is seen here, in
	// the reconcile that makes it, so they are in place before its new pod is created.
	s := dep.Status
	running := s.ObservedGeneration >= dep.Generation && s.AvailableReplicas > 0 && s.UnavailableReplicas == 0 &&
		(dep.Spec.Replicas == nil || s.UpdatedReplicas >= *dep.Spec.Replicas)
	// Any update, of its metadata too, writes the whole desired spec back over fields an edit
	// added (which inSync ignores) and may roll the collector out.
	if due || !deploymentKind.inSync(desired, dep) || !metaInSync(desired, dep) || r.deploymentEdited(p, dep) {
		return rbacDueCheck, time.Time{}
	}
	if !running {
		// A collector still starting right after its objects were created or checked is no
		// sign that they went missing since: look once that check is collectorRBACSettle old,
		// if the collector is still not running then. (A real Deployment controller reports a
		// new collector starting before it reports it available: three reads each time.)
		// The resync, when shorter, still comes first: a requeue replaces the pending one.
		if settled := c.at.Add(collectorRBACSettle); now.Before(settled) {
			return rbacNotDue, minTime(settled, next)
		}
		return rbacDueCheck, time.Time{}
	}
	return rbacNotDue, next
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// collectorRBACSettle is how long after the collector's RBAC objects were found or put in
// order a collector that is not (yet) running does not make them be read again.
const collectorRBACSettle = 30 * time.Second

// spread is a fixed share of up to max for each policy, so policies checked at the same moment
// (all of them, after the manager starts) are not all due again at the same moment.
func spread(uid types.UID, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(uid))
	return time.Duration(h.Sum64() % uint64(max))
}

func (r *TelemetryPolicyReconciler) markCollectorRBAC(p *v1.TelemetryPolicy) time.Time {
	now := r.Clock.Now()
	r.rbacMu.Lock()
	defer r.rbacMu.Unlock()
	if r.rbacChecked == nil {
		r.rbacChecked = map[client.ObjectKey]rbacCheck{}
	}
	r.rbacChecked[client.ObjectKeyFromObject(p)] = rbacCheck{uid: p.UID, generation: p.Generation, request: p.Annotations[v1.AnnotationReconcileRequestedAt], at: now}
	return now.Add(r.collectorRBACResync() + spread(p.UID, r.collectorRBACResync()/10))
}

func (r *TelemetryPolicyReconciler) forgetCollectorRBAC(key client.ObjectKey) {
	r.rbacMu.Lock()
	defer r.rbacMu.Unlock()
	delete(r.rbacChecked, key)
}

// reconcileCollectorRBAC puts the collector's ServiceAccount, Role and RoleBinding in order when
// they are due, and requeues the policy for the next time they are. desired is the collector's
// Deployment as this reconcile will have it, dep the one it read (nil: none).
func (r *TelemetryPolicyReconciler) reconcileCollectorRBAC(ctx context.Context, st *reconcileState, desired, dep *appsv1.Deployment) error {
	p := st.policy
	due, next := r.collectorRBACDue(p, desired, dep)
	if due == rbacNotDue {
		st.requeue(&next)
		return nil
	}
	create := due == rbacDueCreate
	if err := ensureCollectorObject(ctx, r, p, resources.ServiceAccount(p), serviceAccountKind, create); err != nil {
		return err
	}
	if err := ensureCollectorObject(ctx, r, p, resources.Role(p), roleKind, create); err != nil {
		return err
	}
	if err := ensureCollectorObject(ctx, r, p, resources.RoleBinding(p), roleBindingKind, create); err != nil {
		return err
	}
	next = r.markCollectorRBAC(p)
	st.requeue(&next)
	return nil
}

// ensureCollectorObject is ensureOwned, trying to create first when the object most likely
// does not exist (one request instead of a read and a create). Any refusal of that create is
// followed by a read of what the API server holds, which is judged as ensureOwned judges it:
// besides AlreadyExists, a quota or a webhook refuses a create before the API server looks for
// an existing object. When there is none, the refusal is the error.
func ensureCollectorObject[T client.Object](ctx context.Context, r *TelemetryPolicyReconciler, p *v1.TelemetryPolicy, desired T, kind ownedKind[T], create bool) error {
	if !create {
		_, err := ensureOwned(ctx, r, p, desired, kind)
		return err
	}
	if err := controllerutil.SetControllerReference(p, desired, r.Scheme); err != nil {
		return err
	}
	createErr := r.Create(ctx, desired.DeepCopyObject().(client.Object))
	if createErr == nil {
		return nil
	}
	key := client.ObjectKeyFromObject(desired)
	live := kind.newEmpty()
	switch err := r.APIReader.Get(ctx, key, live); {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("creating %s: %w", key.Name, createErr)
	case err != nil:
		return fmt.Errorf("creating %s: %w (and reading it back: %w)", key.Name, createErr, err)
	}
	_, err := putInOrder(ctx, r, p, desired, live, kind)
	return err
}
