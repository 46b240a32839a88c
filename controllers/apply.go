/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	telemetryv1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// ownedKind describes how to compare and update one kind of owned object. inSync must be true
// when live already carries everything desired sets (server-side defaults are ignored), so an
// unchanged policy causes no writes.
type ownedKind[T client.Object] struct {
	// direct: read from the API server, not a cache (UncachedKinds).
	direct   bool
	newEmpty func() T
	inSync   func(desired, live T) bool
	copyInto func(desired, live T)
	// edited, when set, reports an object changed by someone else since this process last
	// wrote it, in a way inSync may not see; written notes each write's result for it.
	edited  func(r *TelemetryPolicyReconciler, owner *telemetryv1alpha1.TelemetryPolicy, live T) bool
	written func(r *TelemetryPolicyReconciler, owner *telemetryv1alpha1.TelemetryPolicy, stored T)
}

var (
	configMapKind = ownedKind[*corev1.ConfigMap]{
		newEmpty: func() *corev1.ConfigMap { return &corev1.ConfigMap{} },
		inSync: func(d, l *corev1.ConfigMap) bool {
			return equality.Semantic.DeepEqual(d.Data, l.Data) && len(l.BinaryData) == 0
		},
		copyInto: func(d, l *corev1.ConfigMap) { l.Data = d.Data; l.BinaryData = nil },
	}
	serviceAccountKind = ownedKind[*corev1.ServiceAccount]{
		direct:   true,
		newEmpty: func() *corev1.ServiceAccount { return &corev1.ServiceAccount{} },
		inSync: func(d, l *corev1.ServiceAccount) bool {
			return equality.Semantic.DeepEqual(d.AutomountServiceAccountToken, l.AutomountServiceAccountToken)
		},
		copyInto: func(d, l *corev1.ServiceAccount) { l.AutomountServiceAccountToken = d.AutomountServiceAccountToken },
	}
	roleKind = ownedKind[*rbacv1.Role]{
		direct:   true,
		newEmpty: func() *rbacv1.Role { return &rbacv1.Role{} },
		inSync:   func(d, l *rbacv1.Role) bool { return equality.Semantic.DeepEqual(d.Rules, l.Rules) },
		copyInto: func(d, l *rbacv1.Role) { l.Rules = d.Rules },
	}
	roleBindingKind = ownedKind[*rbacv1.RoleBinding]{
		direct:   true,
		newEmpty: func() *rbacv1.RoleBinding { return &rbacv1.RoleBinding{} },
		inSync: func(d, l *rbacv1.RoleBinding) bool {
			return equality.Semantic.DeepEqual(d.Subjects, l.Subjects) && d.RoleRef == l.RoleRef
		},
		copyInto: func(d, l *rbacv1.RoleBinding) { l.Subjects = d.Subjects },
	}
	deploymentKind = ownedKind[*appsv1.Deployment]{
		newEmpty: func() *appsv1.Deployment { return &appsv1.Deployment{} },
		// DeepDerivative ignores fields desired leaves unset, i.e. those the API server defaults,
		// but also what was appended to a list: an argument, a variable, a volume or a container
		// added by hand (a second --config that wins) would pass. The API server's defaults never
		// add list elements, so any list longer than desired's is not in sync.
		inSync: func(d, l *appsv1.Deployment) bool {
			return equality.Semantic.DeepDerivative(d.Spec, l.Spec) && !podSpecAdds(&d.Spec.Template.Spec, &l.Spec.Template.Spec) &&
				!templateMetaAdds(&d.Spec.Template.ObjectMeta, &l.Spec.Template.ObjectMeta)
		},
		copyInto: func(d, l *appsv1.Deployment) {
			restarted, ok := l.Spec.Template.Annotations[restartedAtAnnotation]
			l.Spec = *d.Spec.DeepCopy()
			if ok {
				// kubectl rollout restart is not undone (undoing it would roll the pods again).
				if l.Spec.Template.Annotations == nil {
					l.Spec.Template.Annotations = map[string]string{}
				}
				l.Spec.Template.Annotations[restartedAtAnnotation] = restarted
			}
		},
		edited:  (*TelemetryPolicyReconciler).deploymentEdited,
		written: (*TelemetryPolicyReconciler).noteWritten,
	}
)

// restartedAtAnnotation is what kubectl rollout restart sets on a Deployment's pod template.
const restartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// writtenDeployment is a collector Deployment as the API server stored this process's last
// write of it.
type writtenDeployment struct {
	uid        types.UID
	generation int64
}

// deploymentEdited reports whether live's spec may have been changed by someone else since this
// process last wrote it. inSync compares with desired only the fields desired sets and the list
// lengths and fields it knows an edit could use; a change anywhere else in the spec (a probe's
// host, an SELinux label, a volume's items, a field a later Kubernetes adds) would pass it. The
// API server increments a Deployment's metadata.generation on every change of its spec, and
// only it sets the field: a generation above the one our own write was stored with is an edit,
// and the whole desired spec is written back. Without a record (a new process, or a new
// leader) the spec is written once, which changes nothing when nothing was edited (the API
// server stores no update that changes nothing). A generation below ours is a cache that has
// not seen our write yet.
func (r *TelemetryPolicyReconciler) deploymentEdited(owner *telemetryv1alpha1.TelemetryPolicy, live *appsv1.Deployment) bool {
	key := client.ObjectKeyFromObject(owner)
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	w, ok := r.written[key]
	return !ok || w.uid != live.UID || live.Generation > w.generation
}

// noteWritten remembers owner's collector Deployment as the API server stored this process's
// write (keyed by the policy reconciled, not by anything in the object, which an edit could change).
func (r *TelemetryPolicyReconciler) noteWritten(owner *telemetryv1alpha1.TelemetryPolicy, stored *appsv1.Deployment) {
	key := client.ObjectKeyFromObject(owner)
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	if r.written == nil {
		r.written = map[client.ObjectKey]writtenDeployment{}
	}
	r.written[key] = writtenDeployment{uid: stored.UID, generation: stored.Generation}
}

// forgetWritten drops the record of a policy's collector Deployment.
func (r *TelemetryPolicyReconciler) forgetWritten(key client.ObjectKey) {
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	delete(r.written, key)
}

// podSpecAdds reports whether live holds what desired does not and DeepDerivative lets pass:
// list elements (containers, volumes, a container's arguments, command, variables or mounts),
// or a field desired leaves empty that the API server never defaults for a Deployment but
// that redirects or runs something in the collector's pod (host aliases, DNS settings,
// lifecycle hooks, probes, scheduling, pull secrets, added capabilities).
func podSpecAdds(desired, live *corev1.PodSpec) bool {
	if len(live.Containers) != len(desired.Containers) || len(live.InitContainers) != len(desired.InitContainers) ||
		len(live.EphemeralContainers) != 0 || len(live.Volumes) != len(desired.Volumes) {
		return true
	}
	set := func(d, l bool) bool { return !d && l } // desired leaves it empty, live sets it
	if set(len(desired.HostAliases) > 0, len(live.HostAliases) > 0) || set(desired.DNSConfig != nil, live.DNSConfig != nil) ||
		set(desired.DNSPolicy != "", live.DNSPolicy != "" && live.DNSPolicy != corev1.DNSClusterFirst) ||
		set(len(desired.NodeSelector) > 0, len(live.NodeSelector) > 0) || set(desired.Affinity != nil, live.Affinity != nil) ||
		set(len(desired.Tolerations) > 0, len(live.Tolerations) > 0) || set(desired.NodeName != "", live.NodeName != "") ||
		set(len(desired.ImagePullSecrets) > 0, len(live.ImagePullSecrets) > 0) || set(len(desired.SchedulingGates) > 0, len(live.SchedulingGates) > 0) ||
		set(desired.ActiveDeadlineSeconds != nil, live.ActiveDeadlineSeconds != nil) || set(desired.Overhead != nil, live.Overhead != nil) ||
		set(len(desired.ResourceClaims) > 0, len(live.ResourceClaims) > 0) ||
		set(desired.RuntimeClassName != nil, live.RuntimeClassName != nil) || set(desired.ShareProcessNamespace != nil, live.ShareProcessNamespace != nil) ||
		set(len(desired.TopologySpreadConstraints) > 0, len(live.TopologySpreadConstraints) > 0) ||
		live.SecurityContext != nil && len(live.SecurityContext.Sysctls) > 0 && (desired.SecurityContext == nil || len(desired.SecurityContext.Sysctls) == 0) {
		return true
	}
	adds := func(d, l []corev1.Container) bool {
		for i := range d {
			if len(l[i].Args) != len(d[i].Args) || len(l[i].Command) != len(d[i].Command) || len(l[i].Env) != len(d[i].Env) ||
				len(l[i].EnvFrom) != len(d[i].EnvFrom) || len(l[i].VolumeMounts) != len(d[i].VolumeMounts) ||
				len(l[i].VolumeDevices) != len(d[i].VolumeDevices) || len(l[i].Ports) != len(d[i].Ports) ||
				set(d[i].Lifecycle != nil, l[i].Lifecycle != nil) || set(d[i].StartupProbe != nil, l[i].StartupProbe != nil) ||
				set(d[i].LivenessProbe != nil, l[i].LivenessProbe != nil) || set(d[i].ReadinessProbe != nil, l[i].ReadinessProbe != nil) ||
				len(capabilitiesAdded(l[i].SecurityContext)) != len(capabilitiesAdded(d[i].SecurityContext)) {
				return true
			}
			for j := range d[i].VolumeMounts {
				if l[i].VolumeMounts[j].SubPath != d[i].VolumeMounts[j].SubPath || l[i].VolumeMounts[j].SubPathExpr != d[i].VolumeMounts[j].SubPathExpr {
					return true
				}
			}
		}
		return false
	}
	return adds(desired.Containers, live.Containers) || adds(desired.InitContainers, live.InitContainers)
}

// templateMetaAdds reports whether the pod template carries labels or annotations desired does
// not: an annotation can have an admission webhook inject a container into every collector pod
// (a service mesh, a secrets agent). kubectl rollout restart's annotation is left alone.
func templateMetaAdds(desired, live *metav1.ObjectMeta) bool {
	for k := range live.Labels {
		if _, ok := desired.Labels[k]; !ok {
			return true
		}
	}
	for k := range live.Annotations {
		if _, ok := desired.Annotations[k]; !ok && k != "kubectl.kubernetes.io/restartedAt" {
			return true
		}
	}
	return false
}

// capabilitiesAdded are the capabilities a container's security context adds.
func capabilitiesAdded(sc *corev1.SecurityContext) []corev1.Capability {
	if sc == nil || sc.Capabilities == nil {
		return nil
	}
	return sc.Capabilities.Add
}

// ensureOwned creates desired, or updates the live object where it differs from desired, and
// returns the live object. It writes nothing when the live object is already in sync.
func ensureOwned[T client.Object](ctx context.Context, r *TelemetryPolicyReconciler, owner *telemetryv1alpha1.TelemetryPolicy, desired T, kind ownedKind[T]) (T, error) {
	live := kind.newEmpty()
	var reader client.Reader = r
	if kind.direct {
		reader = r.APIReader
	}
	err := reader.Get(ctx, client.ObjectKeyFromObject(desired), live)
	return ensureOwnedFrom(ctx, r, owner, desired, kind, live, err)
}

// ensureOwnedFrom is ensureOwned with desired's object already read (live, with readErr the
// error of that read), so that a decision made on that read and the update judge one object.
func ensureOwnedFrom[T client.Object](ctx context.Context, r *TelemetryPolicyReconciler, owner *telemetryv1alpha1.TelemetryPolicy, desired T, kind ownedKind[T], live T, readErr error) (T, error) {
	var zero T
	if err := controllerutil.SetControllerReference(owner, desired, r.Scheme); err != nil {
		return zero, err
	}
	key := client.ObjectKeyFromObject(desired)
	err := readErr
	if apierrors.IsNotFound(err) {
		err = r.Create(ctx, desired)
		if err == nil {
			if kind.written != nil {
				kind.written(r, owner, desired)
			}
			return desired, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return zero, fmt.Errorf("creating %s: %w", key.Name, err)
		}
		// It exists, but the label-filtered cache cannot see it (its labels were edited by hand, or
		// the cache lags): read it directly so it can be put back.
		err = r.APIReader.Get(ctx, key, live)
	}
	if err != nil {
		return zero, fmt.Errorf("reading %s: %w", key.Name, err)
	}
	return putInOrder(ctx, r, owner, desired, live, kind)
}

// putInOrder updates live, an existing object of desired's name, where it differs from desired,
// if owner may take it over, and returns it. desired carries owner's controller reference.
func putInOrder[T client.Object](ctx context.Context, r *TelemetryPolicyReconciler, owner *telemetryv1alpha1.TelemetryPolicy, desired, live T, kind ownedKind[T]) (T, error) {
	var zero T
	key := client.ObjectKeyFromObject(desired)
	if err := mayTakeOver(live, owner); err != nil {
		return zero, err
	}
	if rb, ok := any(live).(*rbacv1.RoleBinding); ok && rb.RoleRef != any(desired).(*rbacv1.RoleBinding).RoleRef {
		// The role a binding grants cannot change: adopting it would hand its role to the collector.
		return zero, nameTaken(fmt.Sprintf("%s exists and binds %s %q, not the collector's Role; refusing to take it over: rename or delete it", key.Name, rb.RoleRef.Kind, rb.RoleRef.Name))
	}
	if metaInSync(desired, live) && kind.inSync(desired, live) && (kind.edited == nil || !kind.edited(r, owner, live)) {
		return live, nil
	}
	mergeMeta(desired, live)
	kind.copyInto(desired, live)
	if err := r.Update(ctx, live); err != nil {
		return zero, fmt.Errorf("updating %s: %w", key.Name, err)
	}
	if kind.written != nil {
		kind.written(r, owner, live)
	}
	return live, nil
}

// mayTakeOver refuses an object with the name the operator derives for a policy's object that the
// operator did not make for it: controlled by another owner, or neither controlled by this policy
// nor labelled for it (a customer's Secret or binding that happens to have that name). An object
// of this policy whose labels or owner reference were edited is put back.
func mayTakeOver(live client.Object, owner *telemetryv1alpha1.TelemetryPolicy) error {
	if c := metav1.GetControllerOf(live); c != nil {
		if c.UID != owner.UID {
			return nameTaken(fmt.Sprintf("%s exists and is controlled by %s %q; refusing to take it over", live.GetName(), c.Kind, c.Name))
		}
		return nil
	}
	l := live.GetLabels()
	if l[resources.LabelManagedBy] != resources.ManagedByValue || l[resources.LabelPolicy] != owner.Name {
		return nameTaken(fmt.Sprintf("%s exists and was not made by this operator for policy %s (no owner reference, no labels); refusing to take it over: rename or delete it", live.GetName(), owner.Name))
	}
	return nil
}

// nameTakenError: an object the policy needs has a name taken by an object that is not its.
// Only a person can resolve it, so the policy stalls instead of retrying.
type nameTakenError struct{ msg string }

func (e *nameTakenError) Error() string { return e.msg }

func nameTaken(msg string) error { return &nameTakenError{msg: msg} }

// isNameTaken reports whether err is, or wraps, a nameTakenError.
func isNameTaken(err error) bool {
	taken := (*nameTakenError)(nil)
	return errors.As(err, &taken)
}

// metaInSync: live carries every desired label and annotation and the controller reference.
func metaInSync(desired, live client.Object) bool {
	return isSubset(desired.GetLabels(), live.GetLabels()) &&
		isSubset(desired.GetAnnotations(), live.GetAnnotations()) &&
		hasOwnerRef(live, desired.GetOwnerReferences()[0])
}

func mergeMeta(desired, live client.Object) {
	labels := live.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, desired.GetLabels())
	live.SetLabels(labels)
	if len(desired.GetAnnotations()) > 0 {
		ann := live.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		maps.Copy(ann, desired.GetAnnotations())
		live.SetAnnotations(ann)
	}
	if !hasOwnerRef(live, desired.GetOwnerReferences()[0]) {
		live.SetOwnerReferences(append(live.GetOwnerReferences(), desired.GetOwnerReferences()[0]))
	}
}

func isSubset(want, have map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

func hasOwnerRef(obj client.Object, ref metav1.OwnerReference) bool {
	for _, r := range obj.GetOwnerReferences() {
		if r.UID == ref.UID && r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}

// errReplaced: the object deleteOwned judged was replaced before it could be deleted. Something
// of that name is there, to be judged afresh by a later look: callers look again soon rather
// than fail the reconcile (a conflict error skips the status patch, and what it carries, such as
// a withdrawal not yet recorded at the receiver).
var errReplaced = errors.New("replaced while being deleted")

// replacedSince reports whether the object of obj's name is no longer the one with uid: the API
// server refuses a delete whose UID precondition names an object no longer there with a
// conflict, as it may any other (an admission webhook). The read goes to the API server again:
// the failed delete made readonce forget the earlier one.
func replacedSince(ctx context.Context, reader client.Reader, obj client.Object, uid types.UID) (bool, error) {
	now, ok := obj.DeepCopyObject().(client.Object)
	if !ok {
		return false, nil
	}
	switch err := reader.Get(ctx, client.ObjectKeyFromObject(obj), now); {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, err
	}
	return now.GetUID() != uid, nil
}

// deleteOwned deletes the named object if it exists and is owner's (controlled by it, or made
// for it and stripped of its owner reference: see mayTakeOver), reading it with
// reader (the API server itself, where objects whose labels were stripped must be found too). It
// reports whether the object is still present (e.g. waiting on foreground deletion).
func deleteOwned(ctx context.Context, r *TelemetryPolicyReconciler, reader client.Reader, owner *telemetryv1alpha1.TelemetryPolicy, obj client.Object, opts ...client.DeleteOption) (bool, error) {
	if err := reader.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	if mayTakeOver(obj, owner) != nil {
		return false, nil // not ours: leave it alone (one of ours whose owner reference was stripped is deleted too)
	}
	if obj.GetDeletionTimestamp() != nil {
		return true, nil
	}
	// The object judged above, not one that replaced it since (the read may be this reconcile's
	// first of it, some steps ago: readonce): a replacement fails the delete with a conflict.
	uid := obj.GetUID()
	if err := r.Delete(ctx, obj, append(opts, client.Preconditions{UID: &uid})...); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return false, nil
		case apierrors.IsConflict(err):
			replaced, rerr := replacedSince(ctx, reader, obj, uid)
			switch {
			case rerr != nil:
				return true, fmt.Errorf("deleting %s: %s; reading it again: %w", obj.GetName(), err.Error(), rerr)
			case replaced:
				return true, errReplaced
			}
			// Not wrapped: a conflict error is a stale read to the reconcile, retried without
			// a word in status; this one (an admission webhook answering 409, say) will not go
			// away by reading again.
			return true, fmt.Errorf("deleting %s: refused: %s", obj.GetName(), err.Error())
		}
		return false, fmt.Errorf("deleting %s: %w", obj.GetName(), err)
	}
	return true, nil
}
