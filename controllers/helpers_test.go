/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/allowed"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

var nsCounter atomic.Int64

// newNamespace creates a fresh onboarded namespace holding the instance's database Secret,
// which the operator must mount but never read.
func newNamespace(ctx context.Context) string {
	return newNamespaceLabelled(ctx, map[string]string{v1.LabelOnboarded: "true"})
}

// newNamespaceLabelled creates a fresh namespace with the given labels (none: not onboarded).
func newNamespaceLabelled(ctx context.Context, labels map[string]string) string {
	ns := fmt.Sprintf("instance-%d", nsCounter.Add(1))
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}})).To(Succeed())
	Expect(k8s.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "frontend-db", Namespace: ns},
		StringData: map[string]string{"dsn": "postgres://sg:secret-password@pgsql:5432/sg"},
	})).To(Succeed())
	return ns
}

// instanceOf is the instance id of the test policy ns/name: unique, as the receiver's consent
// ledger lets one policy own an instance.
func instanceOf(ns, name string) string { return ns + "-" + name }

// eventLevelPolicy is an eligible self-serve trial that expires in a week of fake time.
func eventLevelPolicy(ns, name string) *v1.TelemetryPolicy {
	accepted := metav1.NewTime(fakeClock.Now().Add(-24 * time.Hour))
	expires := metav1.NewTime(fakeClock.Now().Add(7 * 24 * time.Hour))
	return &v1.TelemetryPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.TelemetryPolicySpec{
			InstanceID: instanceOf(ns, name),
			Consent:    v1.ConsentSpec{Tier: v1.TierEventLevel},
			Contract: &v1.ContractSpec{
				Basis: v1.BasisSelfServeTrial, Reference: "0065e00000AbCdEf", CloudTermsVersion: "2024-06-01",
				AcceptedAt: &accepted, ExpiresAt: &expires, UserLevelEventDataApproved: true,
			},
			Source: &v1.SourceSpec{DatabaseSecretRef: v1.SecretKeyRef{Name: "frontend-db", Key: "dsn"}},
			Export: &v1.ExportSpec{Endpoint: testEndpoint},
		},
	}
}

// testEndpoint is the receiver the test policies name; the manager allows it.
const testEndpoint = "https://receiver.example.com:8443"

func testEndpoints() allowed.Endpoints {
	ep, err := allowed.ParseEndpoints([]string{testEndpoint})
	Expect(err).NotTo(HaveOccurred())
	return ep
}

func getPolicy(ctx context.Context, ns, name string) *v1.TelemetryPolicy {
	p := &v1.TelemetryPolicy{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, p)).To(Succeed())
	return p
}

// condition returns a policy's condition of type t, or nil.
func condition(p *v1.TelemetryPolicy, t string) *metav1.Condition {
	return meta.FindStatusCondition(p.Status.Conditions, t)
}

// conditionStatus is a Gomega-friendly "type=status/reason" summary.
func conditionStatus(ctx context.Context, ns, name, t string) func() string {
	return func() string {
		p := getPolicy(ctx, ns, name)
		c := condition(p, t)
		if c == nil {
			return t + "=absent"
		}
		if c.ObservedGeneration != p.Generation {
			return t + "=stale"
		}
		return fmt.Sprintf("%s=%s/%s", t, c.Status, c.Reason)
	}
}

func deployment(ctx context.Context, ns, policy string) (*appsv1.Deployment, error) {
	d := &appsv1.Deployment{}
	err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor(policy).Deployment}, d)
	return d, err
}

// rollOut plays the Deployment controller and kubelet: once the Deployment carries the current
// configuration, its template runs and is available.
func rollOut(ctx context.Context, ns, policy string) {
	Eventually(func() error {
		d, err := deployment(ctx, ns, policy)
		if err != nil {
			return err
		}
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor(policy).Config}, cm); err != nil {
			return err
		}
		if want := resources.ConfigHash([]byte(cm.Data[resources.ConfigKey])); d.Spec.Template.Annotations[resources.AnnotationConfigHash] != want {
			return fmt.Errorf("deployment does not carry the current configuration yet")
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1,
		}
		return k8s.Status().Update(ctx, d)
	}).Should(Succeed())
}

// rollOutUntilReady plays the Deployment controller until the policy reports Ready=True/Enforced:
// each time the operator changes the pod template (a consent record landing after the first
// rollout changes the configuration), the new generation is rolled out too, as a real cluster
// would.
func rollOutUntilReady(ctx context.Context, ns, policy string) {
	GinkgoHelper()
	Eventually(func() string {
		d, err := deployment(ctx, ns, policy)
		if err != nil {
			return err.Error()
		}
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor(policy).Config}, cm); err != nil {
			return err.Error()
		}
		done := appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
		if want := resources.ConfigHash([]byte(cm.Data[resources.ConfigKey])); d.Spec.Template.Annotations[resources.AnnotationConfigHash] == want &&
			!equality.Semantic.DeepEqual(d.Status, done) {
			d.Status = done
			if err := k8s.Status().Update(ctx, d); err != nil {
				return err.Error()
			}
		}
		return conditionStatus(ctx, ns, policy, v1.ConditionReady)()
	}, 20*time.Second, 100*time.Millisecond).Should(Equal("Ready=True/Enforced"))
}

// setDeploymentStatus writes an arbitrary observed state, as the Deployment controller would.
func setDeploymentStatus(ctx context.Context, ns, policy string, mutate func(d *appsv1.Deployment)) {
	Eventually(func() error {
		d, err := deployment(ctx, ns, policy)
		if err != nil {
			return err
		}
		mutate(d)
		return k8s.Status().Update(ctx, d)
	}).Should(Succeed())
}

// collectGarbage plays the garbage collector for a Deployment deleted in the foreground: once
// its pods are gone, the foregroundDeletion finalizer is removed and the object disappears.
func collectGarbage(ctx context.Context, ns, policy string) {
	Eventually(func() error {
		d, err := deployment(ctx, ns, policy)
		if err != nil {
			return err
		}
		if d.DeletionTimestamp.IsZero() {
			return fmt.Errorf("deployment not being deleted yet")
		}
		Expect(d.Finalizers).To(ContainElement(metav1.FinalizerDeleteDependents), "deleted in the foreground")
		d.Finalizers = nil
		return k8s.Update(ctx, d)
	}).Should(Succeed())
}

// kstatusOf computes the policy's kstatus, as Flux and other GitOps tools do.
func kstatusOf(ctx context.Context, ns, name string) status.Status {
	p := getPolicy(ctx, ns, name)
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p)
	Expect(err).NotTo(HaveOccurred())
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	Expect(err).NotTo(HaveOccurred())
	return res.Status
}

// eventReasons lists the reasons of Events about the policy, oldest first.
func eventReasons(ctx context.Context, ns, name string) []string {
	list := &eventsv1.EventList{}
	Expect(k8s.List(ctx, list, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Kind == "TelemetryPolicy" && e.Regarding.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}

// requestReconcile sets the reconcile-request annotation to a new value, which triggers a
// reconcile and is echoed into status.
func requestReconcile(ctx context.Context, ns, name string) string {
	value := fmt.Sprintf("%d", time.Now().UnixNano())
	annotate(ctx, ns, name, v1.AnnotationReconcileRequestedAt, value)
	Eventually(func() string { return getPolicy(ctx, ns, name).Status.LastHandledReconcileAt }).Should(Equal(value))
	return value
}

func annotate(ctx context.Context, ns, name, key, value string) {
	Eventually(func() error {
		p := getPolicy(ctx, ns, name)
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[key] = value
		return k8s.Update(ctx, p)
	}).Should(Succeed())
}

// directReconciler is a reconciler outside the manager that reads and writes through c, with the
// fake clock, the test ledger and resyncs long enough not to fire.
func directReconciler(c client.Client) *controllers.TelemetryPolicyReconciler {
	return &controllers.TelemetryPolicyReconciler{
		Client: c, APIReader: c, Scheme: k8s.Scheme(), Clock: fakeClock, Issuer: mustIssuer(), Ledger: testLedger(),
		Metrics: controllers.NewMetrics(nil), Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
	}
}

func updatePolicy(ctx context.Context, ns, name string, mutate func(p *v1.TelemetryPolicy)) {
	Eventually(func() error {
		p := getPolicy(ctx, ns, name)
		mutate(p)
		return k8s.Update(ctx, p)
	}).Should(Succeed())
}

// expectOwned asserts obj is controlled by the policy and labelled as managed.
func expectOwned(obj client.Object, p *v1.TelemetryPolicy) {
	GinkgoHelper()
	Expect(metav1.IsControlledBy(obj, p)).To(BeTrue(), "%T %s has a controller reference to the policy", obj, obj.GetName())
	Expect(obj.GetLabels()).To(And(
		HaveKeyWithValue(resources.LabelManagedBy, resources.ManagedByValue),
		HaveKeyWithValue(resources.LabelInstance, p.Spec.InstanceID),
		HaveKeyWithValue(resources.LabelPartOf, "telemetry-operator"),
		HaveKey(resources.LabelName),
		HaveKey(resources.LabelComponent),
	))
}

// readyPolicy creates an EventLevel policy and drives it to Ready.
func readyPolicy(ctx context.Context, ns, name string) *v1.TelemetryPolicy {
	GinkgoHelper()
	Expect(k8s.Create(ctx, eventLevelPolicy(ns, name))).To(Succeed())
	Eventually(func() error { _, err := deployment(ctx, ns, name); return err }).Should(Succeed())
	rollOutUntilReady(ctx, ns, name)
	return getPolicy(ctx, ns, name)
}

// countingRecorder records Event reasons instead of writing Events.
type countingRecorder struct {
	n       int
	reasons []string
}

func (c *countingRecorder) Eventf(_, _ runtime.Object, _, reason, _, _ string, _ ...any) {
	c.n++
	c.reasons = append(c.reasons, reason)
}

func (c *countingRecorder) AnnotatedEventf(_, _ runtime.Object, _ map[string]string, _, reason, _, _ string, _ ...any) {
	c.n++
	c.reasons = append(c.reasons, reason)
}

// stopAndEditCollector stops the manager and edits the policy's collector Deployment, as a
// tenant could while no operator runs; the caller starts the manager again.
func stopAndEditCollector(ctx context.Context, ns, policy string, edit func(*appsv1.Deployment)) {
	GinkgoHelper()
	stopManager()
	d, err := deployment(ctx, ns, policy)
	Expect(err).NotTo(HaveOccurred())
	edit(d)
	Expect(k8s.Update(ctx, d)).To(Succeed())
}
