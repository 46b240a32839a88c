/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/ledger"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/readonce"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// ledgerOf reads the receiver's record of the instance.
func ledgerOf(ctx context.Context, instance string) consentv1.State {
	GinkgoHelper()
	s, err := rcv.Store.ConsentState(ctx, instance)
	Expect(err).NotTo(HaveOccurred())
	return s
}

// templateTierOf is the tier the collector Deployment's pods are configured for.
func templateTierOf(ctx context.Context, ns, policy string) string {
	d, err := deployment(ctx, ns, policy)
	if err != nil {
		return "absent: " + err.Error()
	}
	return d.Spec.Template.Annotations[resources.AnnotationTier]
}

// sendEvents posts a batch of n events dated at ts to the receiver with a certificate for the
// instance and the policy owning its record from the fleet issuer, as the instance's collector
// would, and returns the answer.
func sendEvents(instance string, first, n int, ts time.Time) (int, batchv1.Response) {
	GinkgoHelper()
	b := &batchv1.Batch{Version: 1, InstanceID: instance, BatchID: fmt.Sprintf("%s-e-%d-%d", instance, first, n), Kind: batchv1.KindEvents,
		Tier: string(v1.TierEventLevel), AllowListVersion: catalogv1.CurrentVersion, Cursor: int64(first + n)}
	for i := range n {
		b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprint(first + i), Name: "hover", Timestamp: ts.Add(time.Duration(i) * time.Millisecond),
			Source: "WEB", UserID: "0123456789abcdef0123456789abcdef"})
	}
	body, err := batchv1.Encode(b)
	Expect(err).NotTo(HaveOccurred())
	cert, err := rcv.ClientCert(instance, time.Now(), 24*time.Hour)
	Expect(err).NotTo(HaveOccurred())
	req, err := http.NewRequest(http.MethodPost, rcv.URL+batchv1.PathBatches, bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", batchv1.ContentType)
	resp, err := rcv.HTTPClient(&cert).Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(resp.Body)
	var out batchv1.Response
	if resp.StatusCode == http.StatusOK {
		Expect(json.Unmarshal(data, &out)).To(Succeed())
	}
	return resp.StatusCode, out
}

// collectOwned plays the garbage collector for a deleted policy's remaining objects.
func collectOwned(ctx context.Context, ns string) {
	GinkgoHelper()
	managed := client.MatchingLabels{resources.LabelManagedBy: resources.ManagedByValue}
	for _, obj := range []client.Object{&corev1.ConfigMap{}, &corev1.Secret{}, &corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}} {
		Expect(k8s.DeleteAllOf(ctx, obj, client.InNamespace(ns), managed)).To(Succeed())
	}
}

var _ = Describe("Consent end to end, from the operator's side", func() {
	ctx := context.Background()

	It("enforces a downgrade while the pseudonym-key step is stalled", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "stuck")
		keyRef := client.ObjectKey{Namespace: ns, Name: resources.NamesFor("stuck").PseudonymKey}

		By("replacing the pseudonym key with an unusable one while the operator is away")
		stopManager()
		key := &corev1.Secret{}
		Expect(k8s.Get(ctx, keyRef, key)).To(Succeed())
		Expect(k8s.Delete(ctx, key)).To(Succeed())
		broken := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: keyRef.Name, Namespace: ns, Labels: key.Labels, OwnerReferences: key.OwnerReferences},
			Data: map[string][]byte{resources.PseudonymKeyKey: []byte("short")}}
		Expect(k8s.Create(ctx, broken)).To(Succeed())
		startManager()
		Eventually(conditionStatus(ctx, ns, "stuck", v1.ConditionStalled)).Should(Equal("Stalled=True/PseudonymKeyInvalid"))

		By("lowering consent: the collector is lowered although a later step stalls")
		updatePolicy(ctx, ns, "stuck", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "stuck").Tier }).Should(Equal(v1.TierCriticalOnly))
		Eventually(func() string { return templateTierOf(ctx, ns, "stuck") }).Should(Equal(string(v1.TierCriticalOnly)))
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instanceOf(ns, "stuck")).Timeline.Current() }).Should(Equal(consentv1.TierCriticalOnly))
		rollOut(ctx, ns, "stuck")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "stuck").Status.EffectiveTier }).Should(Equal(v1.TierCriticalOnly))
		Expect(conditionStatus(ctx, ns, "stuck", v1.ConditionStalled)()).To(Equal("Stalled=True/PseudonymKeyInvalid"), "the stall is still reported")

		By("turning it Off: the collector is stopped all the same")
		updatePolicy(ctx, ns, "stuck", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		collectGarbage(ctx, ns, "stuck")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "stuck").Status.EffectiveTier }).Should(Equal(v1.TierOff))
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instanceOf(ns, "stuck")).Timeline.Current() }).Should(Equal(consentv1.TierOff))
	})

	It("finds and stops a collector whose labels were stripped when consent goes Off", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "stripped")
		stopAndEditCollector(ctx, ns, "stripped", func(d *appsv1.Deployment) { d.Labels = nil })
		updatePolicy(ctx, ns, "stripped", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		startManager()
		Eventually(func() bool {
			d, err := deployment(ctx, ns, "stripped")
			return err == nil && !d.DeletionTimestamp.IsZero()
		}).Should(BeTrue(), "the Deployment the cache cannot see is deleted")
		collectGarbage(ctx, ns, "stripped")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "stripped").Status.EffectiveTier }).Should(Equal(v1.TierOff))
	})

	It("does not delete a Deployment that replaced the collector it judged when consent goes Off", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "replaced")
		stopManager()
		DeferCleanup(startManager)
		updatePolicy(ctx, ns, "replaced", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })

		// Between the reconcile's read of the collector and its delete, someone replaces it
		// with a Deployment of their own under the same name.
		name := resources.NamesFor("replaced").Deployment
		var replacement types.UID
		live := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if err := c.Get(ctx, key, obj, opts...); err != nil {
					return err
				}
				if _, ok := obj.(*appsv1.Deployment); ok && key.Name == name && replacement == "" {
					Expect(k8s.Delete(ctx, obj.DeepCopyObject().(client.Object))).To(Succeed())
					theirs := &appsv1.Deployment{
						ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "theirs"}},
						Spec: appsv1.DeploymentSpec{
							Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "theirs"}},
							Template: corev1.PodTemplateSpec{
								ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "theirs"}},
								Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "theirs"}}},
							},
						},
					}
					Eventually(func() error { return k8s.Create(ctx, theirs) }).Should(Succeed()) // once the old one is gone
					replacement = theirs.UID
				}
				return nil
			},
		})
		r := directReconciler(live)
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "replaced"}})
		Expect(replacement).NotTo(BeEmpty(), "the reconcile read the collector")
		Expect(err).NotTo(HaveOccurred(), "a replaced object is looked at again, not a failed reconcile")
		Expect(res.RequeueAfter).To(BeNumerically("<=", 2*time.Second))
		d, err := deployment(ctx, ns, "replaced")
		Expect(err).NotTo(HaveOccurred())
		Expect(d.UID).To(Equal(replacement))
		Expect(d.DeletionTimestamp).To(BeNil(), "their Deployment is left alone")
	})

	It("surfaces a delete refused with a conflict that is not a replacement", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "refused")
		stopManager()
		DeferCleanup(startManager)
		updatePolicy(ctx, ns, "refused", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })

		// An admission webhook answering 409 to the collector's deletion.
		refusing := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				if _, ok := obj.(*appsv1.Deployment); ok {
					return apierrors.NewConflict(schema.GroupResource{Group: "apps", Resource: "deployments"}, obj.GetName(), errors.New("held by change freeze"))
				}
				return c.Delete(ctx, obj, opts...)
			},
		})
		_, err := directReconciler(refusing).Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "refused"}})
		Expect(err).To(MatchError(ContainSubstring("held by change freeze")), "not taken for a replacement and retried quietly")
		Expect(apierrors.IsConflict(err)).To(BeFalse(), "a conflict error would be retried without a word in status")
		Expect(conditionStatus(ctx, ns, "refused", v1.ConditionReady)()).To(HavePrefix("Ready=False"))
		Expect(condition(getPolicy(ctx, ns, "refused"), v1.ConditionReady).Message).To(ContainSubstring("held by change freeze"))
	})

	It("does not let a deleted policy go while a collector of its own that replaced the one it judged is there", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "going")
		stopManager()
		DeferCleanup(startManager)
		Expect(k8s.Delete(ctx, getPolicy(ctx, ns, "going"))).To(Succeed())

		// Between the finalizer's read of the collector and its delete, the collector is
		// re-applied (GitOps): our labels, no owner reference, so no garbage collection.
		name := resources.NamesFor("going").Deployment
		replaced := false
		live := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if err := c.Get(ctx, key, obj, opts...); err != nil {
					return err
				}
				if d, ok := obj.(*appsv1.Deployment); ok && key.Name == name && !replaced {
					replaced = true
					Expect(k8s.Delete(ctx, d.DeepCopy())).To(Succeed())
					again := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: d.Labels}, Spec: d.Spec}
					Eventually(func() error { return k8s.Create(ctx, again) }).Should(Succeed())
				}
				return nil
			},
		})
		r := directReconciler(live)
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "going"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(replaced).To(BeTrue(), "the finalizer read the collector")
		Expect(res.RequeueAfter).To(Equal(2*time.Second), "looked at again soon")
		p := &v1.TelemetryPolicy{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "going"}, p)).To(Succeed(), "the policy is kept")
		Expect(p.Finalizers).To(ContainElement(v1.FinalizerConsentLedger))
		_, err = deployment(ctx, ns, "going")
		Expect(err).NotTo(HaveOccurred(), "the re-applied collector is still there, to be judged by the next look")
	})

	It("keeps a withdrawal the receiver has not recorded when the reconcile ends in a conflict", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "conflicted")
		stopManager()
		DeferCleanup(startManager)
		rcv.Stop()
		DeferCleanup(func() { _ = rcv.Listen() })
		updatePolicy(ctx, ns, "conflicted", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })

		// Writing the Off configuration meets a stale read (someone wrote it meanwhile).
		conflicting := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if _, ok := obj.(*corev1.ConfigMap); ok {
					return apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, obj.GetName(), errors.New("the object has been modified"))
				}
				return c.Update(ctx, obj, opts...)
			},
		})
		r := directReconciler(conflicting)
		_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "conflicted"}})
		Expect(apierrors.IsConflict(err)).To(BeTrue(), "%v", err)
		p := getPolicy(ctx, ns, "conflicted")
		Expect(p.Status.PendingConsentChanges).To(HaveLen(1), "the withdrawal the receiver could not record is kept in status")
		Expect(p.Status.PendingConsentChanges[0].To).To(Equal(v1.TierOff))
		Expect(p.Status.EffectiveTier).To(Equal(v1.TierEventLevel), "the rest of status is not touched on a conflict")
	})

	// The user withdraws consent; the reconcile lowers the collector and waits on a receiver that
	// does not answer; meanwhile the user raises consent again, so the status patch (an
	// optimistic lock on the policy as first read) conflicts. The withdrawal, enforced and not
	// recorded, must survive: otherwise the next reconcile sees consent raised everywhere and the
	// Off period is in no record and no filter. That next reconcile starts at once (the raise
	// queued it), from a cache that shows the raise but not yet the status write that kept the
	// withdrawal.
	// mode: how the reconcile's own status write ends (conflict, a conflict after another
	// conflicting write, or failed outright; recorded-failed: the receiver recorded the
	// withdrawal, then the status write failed, and the next reconcile cannot read the record
	// back).
	raisedDuringReconcile := func(mode string, raiseTo v1.ConsentTier) {
		otherConflict := mode == "other-conflict"
		failed := mode == "failed" || mode == "recorded-failed"
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "raised")
		instance := instanceOf(ns, "raised")
		stopManager()
		restarted := false
		DeferCleanup(func() {
			if !restarted {
				startManager()
			}
		})
		if mode != "recorded-failed" {
			rcv.Stop()
		}
		DeferCleanup(func() { _ = rcv.Listen() })
		updatePolicy(ctx, ns, "raised", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })

		var stale *v1.TelemetryPolicy // the policy as a lagging cache shows it after the raise
		c := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if p, ok := obj.(*v1.TelemetryPolicy); ok && stale != nil {
					stale.DeepCopyInto(p)
					return nil
				}
				return c.Get(ctx, key, obj, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if _, ok := obj.(*corev1.ConfigMap); ok && otherConflict && stale == nil {
					return apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, obj.GetName(), errors.New("the object has been modified"))
				}
				return c.Update(ctx, obj, opts...)
			},
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
				if _, ok := obj.(*v1.TelemetryPolicy); ok && sub == "status" && stale == nil {
					fakeClock.Step(time.Minute)
					updatePolicy(ctx, ns, "raised", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = raiseTo })
					stale = getPolicy(ctx, ns, "raised")
					if failed {
						return apierrors.NewInternalError(errors.New("etcdserver: request timed out"))
					}
				}
				return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
			},
		})
		// Wired as the operator wires it (readonce), the policy read from the "cache" (c), the
		// re-reads from the API server.
		r := directReconciler(readonce.Client(c))
		r.APIReader = readonce.Reader(noWatch{k8s})
		req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "raised"}}
		stale = nil
		_, err := r.Reconcile(ctx, req)
		switch mode {
		case "other-conflict":
			Expect(apierrors.IsConflict(err)).To(BeTrue(), "%v", err)
		case "failed", "recorded-failed":
			Expect(err).To(MatchError(ContainSubstring("request timed out")))
		default:
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(stale).NotTo(BeNil(), "consent was raised while the reconcile ran")
		p := getPolicy(ctx, ns, "raised")
		Expect(p.Spec.Consent.Tier).To(Equal(raiseTo))
		var withdrawn time.Time
		if failed {
			// Nothing reached status; the collector's filter has the withdrawal.
			Expect(p.Status.PendingConsentChanges).To(BeEmpty())
			c := configOf(ctx, ns, "raised").Consent
			Expect(c.Current()).To(Equal(consentv1.TierOff))
			withdrawn = c[len(c)-1].At
		} else {
			Expect(p.Status.PendingConsentChanges).To(HaveLen(1), "the withdrawal the receiver could not record is kept in status")
			Expect(p.Status.PendingConsentChanges[0].To).To(Equal(v1.TierOff))
			withdrawn = p.Status.PendingConsentChanges[0].Time.Time
		}

		By("the next reconcile, from the lagging cache: the withdrawal first, at its time")
		if mode == "recorded-failed" {
			rcv.Stop() // the record it holds cannot be read back
		} else {
			Expect(rcv.Listen()).To(Succeed())
		}
		_, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(configOf(ctx, ns, "raised").Consent.TierAt(withdrawn.Add(30*time.Second))).To(Equal(consentv1.TierOff), "the collector's filter keeps the Off period")
		if mode == "recorded-failed" {
			d, err := deployment(ctx, ns, "raised")
			Expect(apierrors.IsNotFound(err) || err == nil && d.DeletionTimestamp != nil).To(BeTrue(), "the raise waits for the receiver: nothing runs")
			Expect(rcv.Listen()).To(Succeed())
		}
		tl := ledgerOf(ctx, instance).Timeline
		Expect(len(tl)).To(BeNumerically(">=", 2))
		Expect(tl[1]).To(And(HaveField("Tier", consentv1.TierOff), HaveField("At", BeTemporally("==", withdrawn))))

		By("and once everything runs again")
		restarted = true
		startManager()
		collectGarbage(ctx, ns, "raised")
		Eventually(func() error { _, err := deployment(ctx, ns, "raised"); return err }, 20*time.Second).Should(Succeed())
		rollOutUntilReady(ctx, ns, "raised")
		tl = ledgerOf(ctx, instance).Timeline
		Expect(tl).To(HaveLen(3))
		Expect(tl[1]).To(And(HaveField("Tier", consentv1.TierOff), HaveField("At", BeTemporally("==", withdrawn))))
		Expect(tl[2].Tier).To(Equal(consentv1.Tier(raiseTo)))
		Expect(tl.TierAt(withdrawn.Add(30*time.Second))).To(Equal(consentv1.TierOff), "the Off period stays Off at the receiver")
		Expect(configOf(ctx, ns, "raised").Consent.TierAt(withdrawn.Add(30*time.Second))).To(Equal(consentv1.TierOff), "and in the collector's filter")
		Expect(getPolicy(ctx, ns, "raised").Status.PendingConsentChanges).To(BeEmpty())
	}

	It("keeps a withdrawal when consent is raised again while the reconcile that enforced it waits on the receiver", func() {
		raisedDuringReconcile("conflict", v1.TierEventLevel)
	})

	It("keeps a withdrawal when consent is raised to a lower tier than before while the reconcile that enforced it waits on the receiver", func() {
		raisedDuringReconcile("conflict", v1.TierCriticalOnly)
	})

	It("keeps a withdrawal when consent is raised again while a reconcile that ended in a conflict keeps its ledger copy", func() {
		raisedDuringReconcile("other-conflict", v1.TierCriticalOnly)
	})

	It("keeps a withdrawal when consent is raised again and the status write that should keep it fails", func() {
		raisedDuringReconcile("failed", v1.TierEventLevel)
	})

	It("keeps a withdrawal the receiver recorded when the status write that should keep it fails and the record cannot be read back", func() {
		raisedDuringReconcile("recorded-failed", v1.TierEventLevel)
	})

	// A receiver that accepts connections and never answers holds each ledger call for the
	// client's timeout; one that refuses the withdrawal's record stalls the ledger step. Neither
	// may keep the collector at the tier consent no longer allows: it is lowered before the
	// receiver is asked anything, and whatever the receiver answers.
	lowersBeforeAsking := func(to v1.ConsentTier, receiver string) {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "first")
		instance := instanceOf(ns, "first")
		stopManager()
		restarted := false
		DeferCleanup(func() {
			if !restarted {
				startManager()
			}
		})
		fakeClock.Step(time.Minute)
		updatePolicy(ctx, ns, "first", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = to })

		lowered := func() error {
			if c := configOf(ctx, ns, "first"); c.Tier != to || c.Consent.Current() != consentv1.Tier(to) {
				return fmt.Errorf("the collector's configuration is at %s, its timeline %v", c.Tier, c.Consent)
			}
			d, err := deployment(ctx, ns, "first")
			switch {
			case apierrors.IsNotFound(err):
				return nil
			case err != nil:
				return err
			case to == v1.TierOff && d.DeletionTimestamp == nil:
				return errors.New("the collector's Deployment is not being deleted")
			case to != v1.TierOff && d.Spec.Template.Annotations[resources.AnnotationTier] != string(to):
				return fmt.Errorf("the collector's pods are configured for %q", d.Spec.Template.Annotations[resources.AnnotationTier])
			}
			return nil
		}
		l := &askingLedger{ConsentLedger: testLedger(), receiver: receiver, lowered: lowered}
		r := directReconciler(noWatch{k8s})
		r.Ledger = l
		_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "first"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(l.calls).NotTo(BeEmpty(), "the receiver was asked")
		Expect(l.early).To(BeEmpty(), "asked before the collector was lowered")
		Expect(lowered()).To(Succeed())
		p := getPolicy(ctx, ns, "first")
		Expect(p.Status.PendingConsentChanges).To(HaveLen(1), "the withdrawal is kept until the receiver records it")
		withdrawn := p.Status.PendingConsentChanges[0].Time.Time
		Expect(configOf(ctx, ns, "first").Consent.TierAt(withdrawn)).To(Equal(consentv1.Tier(to)), "the collector's filter holds it from then")
		Expect(configOf(ctx, ns, "first").Consent.TierAt(withdrawn.Add(-time.Second))).To(Equal(consentv1.TierEventLevel))
		want := map[string]string{"silent": "ConsentRecorded=False/ReceiverUnavailable", "refusing": "ConsentRecorded=False/LedgerRefused", "garbled": "ConsentRecorded=False/LedgerRefused"}[receiver]
		Expect(conditionStatus(ctx, ns, "first", v1.ConditionConsentRecorded)()).To(Equal(want))

		By("the receiver answering again records the withdrawal at its time")
		restarted = true
		startManager()
		Eventually(func() consentv1.Timeline { return ledgerOf(ctx, instance).Timeline }).Should(HaveLen(2))
		tl := ledgerOf(ctx, instance).Timeline
		Expect(tl[1]).To(And(HaveField("Tier", consentv1.Tier(to)), HaveField("At", BeTemporally("==", withdrawn))))
	}

	It("lowers the collector to CriticalOnly before asking a receiver that never answers", func() {
		lowersBeforeAsking(v1.TierCriticalOnly, "silent")
	})

	It("stops the collector before asking a receiver that never answers", func() {
		lowersBeforeAsking(v1.TierOff, "silent")
	})

	It("lowers the collector to CriticalOnly when the receiver refuses to record the withdrawal", func() {
		lowersBeforeAsking(v1.TierCriticalOnly, "refusing")
	})

	It("stops the collector when the receiver refuses to record the withdrawal", func() {
		lowersBeforeAsking(v1.TierOff, "refusing")
	})

	It("lowers the collector within seconds when the receiver accepts connections and never answers (the real client)", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "blackholed")
		stopManager()
		DeferCleanup(startManager)
		fakeClock.Step(time.Minute)
		updatePolicy(ctx, ns, "blackholed", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })

		// A receiver address that accepts TCP connections and never says a word: the TLS
		// handshake, and so each ledger call, waits for the client's 30 s timeout.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		var mu sync.Mutex
		var held []net.Conn
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		}()
		DeferCleanup(func() {
			_ = ln.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range held {
				_ = c.Close()
			}
		})
		silent, err := ledger.New("https://"+ln.Addr().String(), testCluster, pki.NewHolder(mustIssuer()), nil)
		Expect(err).NotTo(HaveOccurred())
		r := directReconciler(noWatch{k8s})
		r.Ledger = silent
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			defer close(done)
			_, _ = r.Reconcile(rctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "blackholed"}})
		}()
		Eventually(func() error {
			if c := configOf(ctx, ns, "blackholed"); c.Tier != v1.TierCriticalOnly {
				return fmt.Errorf("configuration at %s", c.Tier)
			}
			if t := templateTierOf(ctx, ns, "blackholed"); t != string(v1.TierCriticalOnly) {
				return fmt.Errorf("pods configured for %q", t)
			}
			return nil
		}, 10*time.Second, 50*time.Millisecond).Should(Succeed(), "lowered while the first ledger call still waits")
		Eventually(func() int { mu.Lock(); defer mu.Unlock(); return len(held) }).Should(BeNumerically(">=", 1), "the receiver was asked (and holds the call)")
		Consistently(done, "500ms").ShouldNot(BeClosed(), "the reconcile is still waiting on the receiver")
		cancel()
		Eventually(done, 10*time.Second).Should(BeClosed())
	})

	It("keeps a withdrawal it enforced when the receiver's record cannot be used", func() {
		lowersBeforeAsking(v1.TierCriticalOnly, "garbled")
	})

	// The copy in status lags the receiver's record (status writes lost: a withdrawal and the
	// raise after it, or only the raise, are in the record and in the running collector's
	// configuration, not in status). Consent is then lowered to CriticalOnly, and the receiver
	// refuses to record it, so the reconcile ends at the ledger step. The collector is lowered
	// before the record is read back and must keep the withdrawal meanwhile; once the record is
	// read, the configuration follows it (the raise included: a granted period counted as
	// CriticalOnly would have its events both sent and aggregated).
	copyLagsRecord := func(withdrawTo v1.ConsentTier, keep int) {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "lagging")
		instance := instanceOf(ns, "lagging")
		fakeClock.Step(time.Minute)
		updatePolicy(ctx, ns, "lagging", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = withdrawTo })
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.Tier(withdrawTo)))
		if withdrawTo == v1.TierOff {
			collectGarbage(ctx, ns, "lagging")
		} else {
			rollOut(ctx, ns, "lagging")
		}
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "lagging").Status.EffectiveTier }).Should(Equal(withdrawTo))
		fakeClock.Step(time.Minute)
		updatePolicy(ctx, ns, "lagging", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "lagging").Tier }, 20*time.Second).Should(Equal(v1.TierEventLevel))
		rollOutUntilReady(ctx, ns, "lagging")
		tl := ledgerOf(ctx, instance).Timeline
		Expect(tl).To(HaveLen(3))
		withdrawal, raise := tl[1], tl[2]
		Expect(configOf(ctx, ns, "lagging").Consent.TierAt(withdrawal.At.Add(time.Second))).To(Equal(consentv1.Tier(withdrawTo)))

		stopManager()
		restarted := false
		DeferCleanup(func() {
			if !restarted {
				startManager()
			}
		})
		p := getPolicy(ctx, ns, "lagging")
		p.Status.ConsentHistory = p.Status.ConsentHistory[:keep]
		Expect(k8s.Status().Update(ctx, p)).To(Succeed())
		fakeClock.Step(time.Minute)
		updatePolicy(ctx, ns, "lagging", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })

		keepsWithdrawal := func() error {
			if c := configOf(ctx, ns, "lagging"); c.Consent.TierAt(withdrawal.At.Add(time.Second)) != consentv1.Tier(withdrawTo) {
				return fmt.Errorf("the withdrawal is gone from the collector's filter: %v", c.Consent)
			}
			return nil
		}
		l := &askingLedger{ConsentLedger: testLedger(), receiver: "refusing", lowered: keepsWithdrawal}
		r := directReconciler(noWatch{k8s})
		r.Ledger = l
		_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "lagging"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(l.calls).NotTo(BeEmpty())
		Expect(l.early).To(BeEmpty())
		Expect(conditionStatus(ctx, ns, "lagging", v1.ConditionStalled)()).To(Equal("Stalled=True/LedgerRefused"))
		c := configOf(ctx, ns, "lagging")
		Expect(c.Tier).To(Equal(v1.TierCriticalOnly), "the collector is lowered")
		Expect(keepsWithdrawal()).To(Succeed())
		Expect(c.Consent.TierAt(raise.At.Add(time.Second))).To(Equal(consentv1.TierEventLevel), "the record's raise, not the copy's lag: %v", c.Consent)
		Expect(c.Consent.Current()).To(Equal(consentv1.TierCriticalOnly))

		restarted = true
		startManager()
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierCriticalOnly))
		Eventually(func() consentv1.Tier { return configOf(ctx, ns, "lagging").Consent.Current() }).Should(Equal(consentv1.TierCriticalOnly))
		Expect(keepsWithdrawal()).To(Succeed())
		Expect(configOf(ctx, ns, "lagging").Consent.TierAt(raise.At.Add(time.Second))).To(Equal(consentv1.TierEventLevel))
	}

	It("keeps the running collector's restrictions when lowering it from a copy that lags the record", func() {
		copyLagsRecord(v1.TierOff, 1)
	})

	It("writes the lowered collector's configuration from the record once read, when the copy lacks a raise", func() {
		copyLagsRecord(v1.TierCriticalOnly, 2)
	})

	It("lowers the collector at once when the receiver is unreachable, and reports it only once the receiver records it", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "offline")
		rcv.Stop()
		DeferCleanup(func() { _ = rcv.Listen() })

		updatePolicy(ctx, ns, "offline", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Eventually(func() string { return templateTierOf(ctx, ns, "offline") }).Should(Equal(string(v1.TierCriticalOnly)))
		Expect(configOf(ctx, ns, "offline").Tier).To(Equal(v1.TierCriticalOnly))
		rollOut(ctx, ns, "offline")
		Eventually(conditionStatus(ctx, ns, "offline", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=False/ReceiverUnavailable"))
		Consistently(func() v1.ConsentTier { return getPolicy(ctx, ns, "offline").Status.EffectiveTier }, "1s").Should(Equal(v1.TierEventLevel),
			"not reported while the receiver would still accept EventLevel data")
		Expect(conditionStatus(ctx, ns, "offline", v1.ConditionReady)()).To(HavePrefix("Ready=False"))

		Expect(rcv.Listen()).To(Succeed())
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "offline").Status.EffectiveTier }, 20*time.Second).Should(Equal(v1.TierCriticalOnly))
		Eventually(conditionStatus(ctx, ns, "offline", v1.ConditionReady)).Should(Equal("Ready=True/Enforced"))
		Expect(ledgerOf(ctx, instanceOf(ns, "offline")).Timeline.Current()).To(Equal(consentv1.TierCriticalOnly))
	})

	It("runs nothing for a policy the receiver has no record of, until it records one", func() {
		rcv.Stop()
		DeferCleanup(func() { _ = rcv.Listen() })
		ns := newNamespace(ctx)
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "unrecorded"))).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "unrecorded", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=False/ReceiverUnavailable"))
		Consistently(func() bool { _, err := deployment(ctx, ns, "unrecorded"); return apierrors.IsNotFound(err) }, "1s").Should(BeTrue())
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor("unrecorded").Credentials}, &corev1.Secret{}))).To(BeTrue(),
			"no certificate is issued before the receiver records the instance")
		Expect(getPolicy(ctx, ns, "unrecorded").Status.EffectiveTier).To(BeEmpty())

		Expect(rcv.Listen()).To(Succeed())
		Eventually(func() error { _, err := deployment(ctx, ns, "unrecorded"); return err }, 20*time.Second).Should(Succeed())
		rollOutUntilReady(ctx, ns, "unrecorded")
	})

	It("never hands an instance its policy released to a policy of another namespace, nor shows it its history", func() {
		nsA, nsB := newNamespace(ctx), newNamespace(ctx)
		readyPolicy(ctx, nsA, "leaving")
		instance := instanceOf(nsA, "leaving")
		Expect(k8s.Delete(ctx, getPolicy(ctx, nsA, "leaving"))).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: nsA, Name: "leaving"}, &v1.TelemetryPolicy{}))
		}).Should(BeTrue())
		released := ledgerOf(ctx, instance)
		Expect(released.Owner.Name).To(BeEmpty(), "released")

		By("a policy in another namespace naming the released instance")
		squat := eventLevelPolicy(nsB, "squatter")
		squat.Spec.InstanceID = instance
		Expect(k8s.Create(ctx, squat)).To(Succeed())
		Eventually(conditionStatus(ctx, nsB, "squatter", v1.ConditionStalled)).Should(Equal("Stalled=True/InstanceOwnedElsewhere"))
		Consistently(func() consentv1.State { return ledgerOf(ctx, instance) }, "1s").Should(Equal(released), "not claimed, nothing recorded")
		Expect(getPolicy(ctx, nsB, "squatter").Status.ConsentHistory).To(BeEmpty(), "the other namespace's consent history is not shown")
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: nsB, Name: resources.NamesFor("squatter").Credentials}, &corev1.Secret{}))).To(BeTrue(),
			"no certificate for the instance is minted")

		By("the receiver's operators hand it over")
		_, err := rcv.Admin.ForceRelease(ctx, instance, nil)
		Expect(err).NotTo(HaveOccurred())
		requestReconcile(ctx, nsB, "squatter")
		Eventually(func() string { return ledgerOf(ctx, instance).Owner.Namespace }).Should(Equal(nsB))
	})

	It("runs nothing from a record another policy claimed between its read and its claim", func() {
		nsA, nsB := newNamespace(ctx), newNamespace(ctx)
		readyPolicy(ctx, nsA, "owner")
		instance := instanceOf(nsA, "owner")
		stopManager()
		DeferCleanup(startManager)
		_, err := rcv.Admin.ForceRelease(ctx, instance, nil) // opened to the next policy anywhere
		Expect(err).NotTo(HaveOccurred())
		racer := eventLevelPolicy(nsB, "racer")
		racer.Spec.InstanceID = instance
		Expect(k8s.Create(ctx, racer)).To(Succeed())

		By("the owner claiming it again just after the racer read it")
		r := directReconciler(noWatch{k8s})
		owner := ledgerOf(ctx, instance).Timeline
		r.Ledger = &racingLedger{ConsentLedger: testLedger(), race: func() {
			fakeClock.Step(time.Second)
			_, err := rcv.Store.RecordTransition(ctx, testCluster, consentv1.RecordRequest{InstanceID: instance,
				Owner:      consentv1.Owner{Namespace: nsA, Name: "owner", UID: string(getPolicy(ctx, nsA, "owner").UID)},
				Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierCriticalOnly, Reason: "Declared"}})
			Expect(err).NotTo(HaveOccurred())
		}}
		key := types.NamespacedName{Namespace: nsB, Name: "racer"}
		for range 3 {
			_, _ = r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
			fakeClock.Step(time.Second)
		}
		Expect(ledgerOf(ctx, instance).Owner.Namespace).To(Equal(nsA))
		p := getPolicy(ctx, nsB, "racer")
		Expect(conditionStatus(ctx, nsB, "racer", v1.ConditionStalled)()).To(Equal("Stalled=True/InstanceOwnedElsewhere"))
		Expect(p.Status.ConsentHistory).To(BeEmpty(), "the other policy's history (%v) is not shown", owner)
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: nsB, Name: resources.NamesFor("racer").Credentials}, &corev1.Secret{}))).To(BeTrue(),
			"no certificate for the instance, at any later reconcile")
		_, err = deployment(ctx, nsB, "racer")
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "no collector")
	})

	It("lets one policy own an instance's consent: a second policy or another cluster cannot claim it", func() {
		nsA, nsB := newNamespace(ctx), newNamespace(ctx)
		readyPolicy(ctx, nsA, "owner")
		instance := instanceOf(nsA, "owner")

		By("a second policy in another namespace naming the same instance")
		claim := eventLevelPolicy(nsB, "claimant")
		claim.Spec.InstanceID = instance
		Expect(k8s.Create(ctx, claim)).To(Succeed())
		Eventually(conditionStatus(ctx, nsB, "claimant", v1.ConditionStalled)).Should(Equal("Stalled=True/InstanceOwnedElsewhere"))
		Expect(condition(getPolicy(ctx, nsB, "claimant"), v1.ConditionConsentRecorded).Message).To(And(ContainSubstring("claimed by another TelemetryPolicy"), Not(ContainSubstring(nsA+"/owner"))),
			"the refusal names no other tenant")
		Consistently(func() bool { _, err := deployment(ctx, nsB, "claimant"); return apierrors.IsNotFound(err) }, "1s").Should(BeTrue())
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: nsB, Name: resources.NamesFor("claimant").Credentials}, &corev1.Secret{}))).To(BeTrue(),
			"no certificate for another policy's instance is ever minted")

		By("an operator of another cluster")
		body, _ := json.Marshal(consentv1.RecordRequest{InstanceID: instance, Owner: consentv1.Owner{Namespace: nsA, Name: "owner"},
			Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierOff, Reason: "Declared"}})
		resp, err := rcv.OperatorClient("elsewhere").Post(rcv.URL+consentv1.PathConsent, "application/json", bytes.NewReader(body))
		Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusConflict))

		By("the owner is untouched")
		s := ledgerOf(ctx, instance)
		Expect(s.Owner).To(And(HaveField("Cluster", testCluster), HaveField("Namespace", nsA), HaveField("Name", "owner")))
		Expect(s.Timeline.Current()).To(Equal(consentv1.TierEventLevel))
		Expect(conditionStatus(ctx, nsA, "owner", v1.ConditionReady)()).To(Equal("Ready=True/Enforced"))
	})

	It("asks for a reservation less often the longer it has waited, counting from the receiver's first such answer", func() {
		Expect(rcv.Admin.SetReservationsRequired(ctx, true)).To(Succeed())
		DeferCleanup(func() { Expect(rcv.Admin.SetReservationsRequired(context.Background(), false)).To(Succeed()) })
		ns := newNamespace(ctx)
		stopManager()
		DeferCleanup(startManager)
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "waiting"))).To(Succeed())
		key := types.NamespacedName{Namespace: ns, Name: "waiting"}
		r := directReconciler(k8s)
		r.Options.LedgerRetry, r.Options.LedgerResync = time.Second, time.Hour
		reconcile := func() time.Duration {
			GinkgoHelper()
			res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
			Expect(err).NotTo(HaveOccurred())
			return res.RequeueAfter
		}
		waitFor := func() time.Duration {
			GinkgoHelper()
			var wait time.Duration
			Eventually(func() string {
				wait = reconcile()
				return conditionStatus(ctx, ns, "waiting", v1.ConditionStalled)()
			}).Should(Equal("Stalled=True/InstanceOwnedElsewhere"))
			return wait
		}

		By("an earlier stall of another kind, long ago")
		Eventually(func() error {
			p := getPolicy(ctx, ns, "waiting")
			p.Status.Conditions = []metav1.Condition{{Type: v1.ConditionConsentRecorded, Status: metav1.ConditionFalse, Reason: controllers.ReasonReceiverUnavailable,
				Message: "unreachable", ObservedGeneration: p.Generation, LastTransitionTime: metav1.NewTime(time.Now().Add(-40 * time.Minute))}}
			return k8s.Status().Update(ctx, p)
		}).Should(Succeed())
		Expect(waitFor()).To(BeNumerically("<=", 2*time.Second), "at first, every --ledger-retry")
		Expect(reconcile()).To(BeNumerically("<=", 2*time.Second), "still at first: the earlier stall's time does not count")

		By("waiting 40 minutes")
		fakeClock.Step(40 * time.Minute)
		Expect(reconcile()).To(BeNumerically("~", 10*time.Minute, time.Minute), "a quarter of the time it has waited")

		By("the receiver unreachable")
		r.Ledger = unreachableLedger()
		Expect(reconcile()).To(BeNumerically("~", 10*time.Minute, time.Minute))
		Expect(condition(getPolicy(ctx, ns, "waiting"), v1.ConditionConsentRecorded).Message).To(
			ContainSubstring("receiver consent reserve --instance %s --to %s/%s", instanceOf(ns, "waiting"), testCluster, ns), "the advice kept while the receiver cannot answer")
		Expect(conditionStatus(ctx, ns, "waiting", v1.ConditionStalled)()).To(Equal("Stalled=True/InstanceOwnedElsewhere"))

		By("reserved, and claimed")
		r.Ledger = testLedger()
		instance := instanceOf(ns, "waiting")
		Expect(rcv.Admin.Reserve(ctx, instance, consentv1.Owner{Cluster: testCluster, Namespace: ns})).To(Succeed())
		Eventually(func() string {
			reconcile()
			return ledgerOf(ctx, instance).Owner.Namespace
		}).Should(Equal(ns))

		By("another namespace's since, opened to anyone before reservations were required again: a new wait")
		Expect(rcv.Admin.SetReservationsRequired(ctx, false)).To(Succeed())
		_, err := rcv.Admin.ForceRelease(ctx, instance, nil)
		Expect(err).NotTo(HaveOccurred())
		_, err = rcv.Store.RecordTransition(ctx, testCluster, consentv1.RecordRequest{InstanceID: instance,
			Owner:      consentv1.Owner{Namespace: "elsewhere", Name: "other", UID: "u-other"},
			Transition: consentv1.Transition{At: fakeClock.Now(), Tier: ledgerOf(ctx, instance).Timeline.Current(), Reason: "Declared"}})
		Expect(err).NotTo(HaveOccurred())
		_, err = rcv.Admin.ForceRelease(ctx, instance, nil)
		Expect(err).NotTo(HaveOccurred())
		Expect(rcv.Admin.SetReservationsRequired(ctx, true)).To(Succeed())
		waitFor()
		collectGarbage(ctx, ns, "waiting") // the collector it stopped is gone: nothing else asks sooner
		Expect(reconcile()).To(BeNumerically("<=", 2*time.Second), "the wait that ended with the claim does not count")
		Expect(reconcile()).To(BeNumerically("<=", 2*time.Second))
		Expect(condition(getPolicy(ctx, ns, "waiting"), v1.ConditionConsentRecorded).Message).To(ContainSubstring("receiver consent reserve"))
	})

	It("claims an instance reserved for its namespace, and a policy of another namespace cannot", func() {
		nsA, nsB := newNamespace(ctx), newNamespace(ctx)
		instance := instanceOf(nsA, "reserved")
		Expect(rcv.Admin.Reserve(ctx, instance, consentv1.Owner{Cluster: testCluster, Namespace: nsA})).To(Succeed())

		By("a policy of another namespace naming it first")
		squatter := eventLevelPolicy(nsB, "squatter")
		squatter.Spec.InstanceID = instance
		Expect(k8s.Create(ctx, squatter)).To(Succeed())
		Eventually(conditionStatus(ctx, nsB, "squatter", v1.ConditionStalled)).Should(Equal("Stalled=True/InstanceOwnedElsewhere"))
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: nsB, Name: resources.NamesFor("squatter").Credentials}, &corev1.Secret{}))).To(BeTrue(),
			"no certificate for an instance reserved for another namespace")

		By("the namespace it was reserved for")
		p := readyPolicy(ctx, nsA, "reserved")
		s := ledgerOf(ctx, instance)
		Expect(s.Owner).To(And(HaveField("Namespace", nsA), HaveField("Name", "reserved"), HaveField("UID", string(p.UID))))
		Expect(s.Timeline.Current()).To(Equal(consentv1.TierEventLevel))
	})

	It("waits for a reservation where the receiver requires one, and claims the instance once it is made", func() {
		Expect(rcv.Admin.SetReservationsRequired(ctx, true)).To(Succeed())
		DeferCleanup(func() { Expect(rcv.Admin.SetReservationsRequired(context.Background(), false)).To(Succeed()) })
		ns := newNamespace(ctx)
		instance := instanceOf(ns, "early")
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "early"))).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "early", v1.ConditionStalled)).Should(Equal("Stalled=True/InstanceOwnedElsewhere"))
		Expect(condition(getPolicy(ctx, ns, "early"), v1.ConditionConsentRecorded).Message).To(
			ContainSubstring("receiver consent reserve --instance %s --to %s/%s", instance, testCluster, ns))
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor("early").Credentials}, &corev1.Secret{}))).To(BeTrue())
		_, err := rcv.Store.ConsentState(ctx, instance)
		Expect(err).To(MatchError(store.ErrUnknownInstance), "the refused claim recorded nothing")

		By("the receiver's operators reserving it for the namespace")
		Expect(rcv.Admin.Reserve(ctx, instance, consentv1.Owner{Cluster: testCluster, Namespace: ns})).To(Succeed())
		Eventually(func() string { return ledgerOf(ctx, instance).Owner.Namespace }).Should(Equal(ns))
		rollOutUntilReady(ctx, ns, "early")
	})

	It("adds its UID to a record an earlier operator claimed without one, recording nothing else", func() {
		ns := newNamespace(ctx)
		p := readyPolicy(ctx, ns, "older")
		instance := instanceOf(ns, "older")
		before := ledgerOf(ctx, instance)
		Expect(before.Owner.UID).To(Equal(string(p.UID)))

		By("the record claimed again by name only, as an operator that sent no UIDs did")
		stopManager()
		claimWithoutUID(ctx, ns, "older", before.Timeline.Current())
		Expect(ledgerOf(ctx, instance).Owner.UID).To(BeEmpty())

		By("the operator reading its record back")
		startManager()
		requestReconcile(ctx, ns, "older")
		Eventually(func() string { return ledgerOf(ctx, instance).Owner.UID }).Should(Equal(string(p.UID)),
			"until then a certificate of a deleted policy of the same name would be served")
		Expect(ledgerOf(ctx, instance).Timeline).To(Equal(before.Timeline), "no transition is recorded for it")
		Expect(conditionStatus(ctx, ns, "older", v1.ConditionReady)()).To(Equal("Ready=True/Enforced"))
		Eventually(func() []string { return eventReasons(ctx, ns, "older") }).Should(ContainElement("ConsentRecordUIDAdded"), "the adoption leaves a trace")
	})

	It("adds its UID to a record claimed without one only once it is no longer suspended", func() {
		ns := newNamespace(ctx)
		p := readyPolicy(ctx, ns, "paused")
		instance := instanceOf(ns, "paused")
		stopManager()
		DeferCleanup(startManager)
		updatePolicy(ctx, ns, "paused", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true })
		claimWithoutUID(ctx, ns, "paused", consentv1.TierEventLevel)

		r := directReconciler(k8s)
		key := types.NamespacedName{Namespace: ns, Name: "paused"}
		_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
		Expect(err).NotTo(HaveOccurred())
		Expect(ledgerOf(ctx, instance).Owner.UID).To(BeEmpty(), "a suspended policy writes nothing but withdrawals (a write could claim a record released meanwhile)")

		updatePolicy(ctx, ns, "paused", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = false })
		_, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
		Expect(err).NotTo(HaveOccurred())
		Expect(ledgerOf(ctx, instance).Owner.UID).To(Equal(string(p.UID)))
	})

	It("keeps its conditions when adding its UID to its record fails, and adds it at a later reconcile", func() {
		ns := newNamespace(ctx)
		p := readyPolicy(ctx, ns, "flaky")
		instance := instanceOf(ns, "flaky")
		before := ledgerOf(ctx, instance)
		stopManager()
		DeferCleanup(startManager)
		claimWithoutUID(ctx, ns, "flaky", before.Timeline.Current())

		By("the write refused as unavailable")
		r := directReconciler(k8s)
		r.Ledger = &failingRecords{ConsentLedger: testLedger(), err: ledger.ErrUnavailable}
		key := types.NamespacedName{Namespace: ns, Name: "flaky"}
		_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
		Expect(err).NotTo(HaveOccurred())
		Expect(ledgerOf(ctx, instance).Owner.UID).To(BeEmpty())
		got := getPolicy(ctx, ns, "flaky")
		Expect(conditionStatus(ctx, ns, "flaky", v1.ConditionReady)()).To(Equal("Ready=True/Enforced"))
		Expect(conditionStatus(ctx, ns, "flaky", v1.ConditionConsentRecorded)()).To(Equal("ConsentRecorded=True/Recorded"))
		Expect(got.Status.EffectiveTier).To(Equal(p.Status.EffectiveTier))

		By("the next reconcile, the receiver answering")
		r.Ledger = testLedger()
		_, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
		Expect(err).NotTo(HaveOccurred())
		Expect(ledgerOf(ctx, instance).Owner.UID).To(Equal(string(p.UID)))
		Expect(ledgerOf(ctx, instance).Timeline).To(Equal(before.Timeline))
	})

	It("closes consent at the receiver when a policy is deleted, and a re-created policy never reaches back", func() {
		ns := newNamespace(ctx)
		// The API server dates the deletion by the wall clock (the fake clock may run ahead).
		accepted := metav1.NewTime(time.Now().Add(-24 * time.Hour).Truncate(time.Second))
		p := eventLevelPolicy(ns, "recreated")
		p.Spec.Contract.AcceptedAt = &accepted
		p.Spec.Export.StartFrom = v1.StartFromBeginning
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(func() error { _, err := deployment(ctx, ns, "recreated"); return err }).Should(Succeed())
		rollOutUntilReady(ctx, ns, "recreated")
		instance := instanceOf(ns, "recreated")
		first := ledgerOf(ctx, instance).Timeline
		Expect(first).To(HaveLen(1))
		Expect(first[0].At).To(BeTemporally("==", accepted.Time), "startFrom Beginning opens the first window at contract.acceptedAt")

		By("deleting the policy")
		Expect(k8s.Delete(ctx, getPolicy(ctx, ns, "recreated"))).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "recreated"}, &v1.TelemetryPolicy{}))
		}).Should(BeTrue(), "the finalizer lets go once the receiver recorded the deletion")
		closed := ledgerOf(ctx, instance)
		Expect(closed.Timeline.Current()).To(Equal(consentv1.TierOff))
		Expect(closed.Timeline[len(closed.Timeline)-1].Reason).To(Equal(v1.ReasonPolicyDeleted))
		Expect(closed.Owner.Name).To(BeEmpty(), "ownership is released")
		collectGarbage(ctx, ns, "recreated")
		collectOwned(ctx, ns)

		By("creating it again with the same startFrom Beginning")
		fakeClock.Step(time.Hour)
		again := eventLevelPolicy(ns, "recreated")
		again.Spec.Contract.AcceptedAt = &accepted
		again.Spec.Export.StartFrom = v1.StartFromBeginning
		Expect(k8s.Create(ctx, again)).To(Succeed())
		Eventually(func() error { _, err := deployment(ctx, ns, "recreated"); return err }).Should(Succeed())
		rollOutUntilReady(ctx, ns, "recreated")
		tl := ledgerOf(ctx, instance).Timeline
		Expect(tl.Current()).To(Equal(consentv1.TierEventLevel))
		Expect(tl[len(tl)-1].At).To(BeTemporally(">=", fakeClock.Now().Truncate(time.Second)), "the new window opens now, not at acceptedAt")
		Expect(tl.TierAt(closed.Timeline[len(closed.Timeline)-1].At.Add(time.Minute))).To(Equal(consentv1.TierOff), "the gap stays closed")
		Expect(getPolicy(ctx, ns, "recreated").Status.ConsentHistory).To(HaveLen(len(tl)), "the re-created policy shows the history it inherits")
		cfg := configOf(ctx, ns, "recreated")
		Expect(cfg.Consent.TierAt(accepted.Add(time.Hour))).To(Equal(consentv1.TierEventLevel))
		Expect(cfg.Consent.TierAt(fakeClock.Now().Add(-30 * time.Minute))).To(Equal(consentv1.TierOff))
	})

	It("never dates a first grant back to acceptedAt over a lower tier declared while nothing could be recorded", func() {
		ns := newNamespace(ctx)
		rcv.Stop()
		DeferCleanup(func() { _ = rcv.Listen() })
		accepted := metav1.NewTime(fakeClock.Now().Add(-24 * time.Hour).Truncate(time.Second))
		p := eventLevelPolicy(ns, "declared-off")
		p.Spec.Consent.Tier = v1.TierOff
		p.Spec.Contract.AcceptedAt = &accepted
		p.Spec.Export.StartFrom = v1.StartFromBeginning
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "declared-off", v1.ConditionConsentRecorded)).Should(HavePrefix("ConsentRecorded=False"))

		By("raising it to EventLevel an hour later, the receiver still unreachable")
		fakeClock.Step(time.Hour)
		raisedAt := fakeClock.Now()
		updatePolicy(ctx, ns, "declared-off", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
		Eventually(func() int64 { return getPolicy(ctx, ns, "declared-off").Status.ObservedGeneration }).Should(Equal(getPolicy(ctx, ns, "declared-off").Generation))

		By("the receiver back: the first record")
		Expect(rcv.Listen()).To(Succeed())
		instance := instanceOf(ns, "declared-off")
		Eventually(func() (consentv1.Tier, error) {
			st, err := rcv.Store.ConsentState(ctx, instance)
			return st.Timeline.Current(), err
		}, 30*time.Second).Should(Equal(consentv1.TierEventLevel))
		tl := ledgerOf(ctx, instance).Timeline
		Expect(tl[0].At).To(BeTemporally(">=", raisedAt.Truncate(time.Second)), "consent starts when EventLevel was declared, not at acceptedAt")
		Expect(tl.TierAt(accepted.Add(time.Hour))).To(Equal(consentv1.TierOff), "the hours declared Off stay closed")
	})

	It("does not finalize a deleted policy again from a stale copy, so the instance stays released", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "stale")
		instance := instanceOf(ns, "stale")
		stale := getPolicy(ctx, ns, "stale")
		Expect(k8s.Delete(ctx, stale.DeepCopy())).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "stale"}, &v1.TelemetryPolicy{}))
		}).Should(BeTrue())
		Expect(ledgerOf(ctx, instance).Owner.Name).To(BeEmpty())
		collectGarbage(ctx, ns, "stale")
		collectOwned(ctx, ns)

		// The cache may show the policy, being deleted and with its finalizer, a moment after
		// the finalizer was dropped; the receiver then fails the release.
		deleted := metav1.NewTime(time.Now())
		stale.DeletionTimestamp = &deleted
		cached := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if pol, ok := obj.(*v1.TelemetryPolicy); ok && key.Name == "stale" {
					stale.DeepCopyInto(pol)
					return nil
				}
				return c.Get(ctx, key, obj, opts...)
			},
		})
		calls := &failingRelease{ConsentLedger: testLedger()}
		r := &controllers.TelemetryPolicyReconciler{
			Client: cached, APIReader: k8s, Scheme: mgr.GetScheme(), Clock: fakeClock, Issuer: mustIssuer(), Ledger: calls,
			Metrics: controllers.NewMetrics(nil), Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
		}
		req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "stale"}}
		_, err := r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(calls.records).To(BeZero(), "nothing is recorded for a policy the API server no longer holds")
		Expect(ledgerOf(ctx, instance).Owner.Name).To(BeEmpty(), "the instance stays released")

		By("nor once a policy of the same name was created again (a new UID)")
		readyPolicy(ctx, ns, "stale")
		owner := ledgerOf(ctx, instance).Owner
		Expect(owner.UID).NotTo(Equal(string(stale.UID)))
		_, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(calls.records).To(BeZero())
		Expect(ledgerOf(ctx, instance).Owner).To(Equal(owner))
		Expect(deployment(ctx, ns, "stale")).NotTo(BeNil(), "the new policy's collector is left running")
	})

	It("does not raise an expired trial again from a new leader whose clock is behind, when only the receiver's record holds the expiry", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "lagging")
		instance := instanceOf(ns, "lagging")
		expires := getPolicy(ctx, ns, "lagging").Spec.Contract.ExpiresAt.Time
		fakeClock.SetTime(expires.Add(90 * time.Second))
		requestReconcile(ctx, ns, "lagging")
		rollOut(ctx, ns, "lagging")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "lagging").Status.EffectiveTier }).Should(Equal(v1.TierCriticalOnly))
		recorded := ledgerOf(ctx, instance).Timeline
		Expect(recorded.Current()).To(Equal(consentv1.TierCriticalOnly))

		By("reconciling as a new leader ten minutes behind the expiry, reading a status written before the expiry was recorded")
		stale := getPolicy(ctx, ns, "lagging").DeepCopy()
		stale.Status.ConsentHistory = stale.Status.ConsentHistory[:len(stale.Status.ConsentHistory)-1]
		stale.Status.EffectiveTier = v1.TierEventLevel
		cached := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if pol, ok := obj.(*v1.TelemetryPolicy); ok && key.Namespace == ns && key.Name == "lagging" {
					stale.DeepCopyInto(pol)
					return nil
				}
				return c.Get(ctx, key, obj, opts...)
			},
		})
		r := &controllers.TelemetryPolicyReconciler{
			Client: cached, APIReader: k8s, Scheme: mgr.GetScheme(), Clock: clocktesting.NewFakeClock(expires.Add(-10 * time.Minute)),
			Issuer: mustIssuer(), Ledger: testLedger(), Metrics: controllers.NewMetrics(nil),
			Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
		}
		_, _ = r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "lagging"}})
		Expect(ledgerOf(ctx, instance).Timeline).To(Equal(recorded), "no grant recorded at the receiver after the expiry")
		Expect(configOf(ctx, ns, "lagging").Tier).To(Equal(v1.TierCriticalOnly))
	})

	It("ends a trial at its expiry at the receiver itself, with the operator down and its memory of the expiry lost", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "renewed")
		instance := instanceOf(ns, "renewed")
		expires := getPolicy(ctx, ns, "renewed").Spec.Contract.ExpiresAt.Time
		Eventually(func() *time.Time {
			tl := ledgerOf(ctx, instance).Timeline
			return tl[len(tl)-1].Until
		}).Should(HaveValue(BeTemporally("==", expires.Truncate(time.Second))), "the grant is recorded with its trial's expiry")
		Expect(configOf(ctx, ns, "renewed").Consent.TierAt(expires)).To(Equal(consentv1.TierCriticalOnly), "the collector ends its window there too")

		By("the operator down across the expiry, its status copy of the expiry wiped, the collector still sending")
		stopManager()
		started := false
		DeferCleanup(func() {
			if !started {
				startManager()
			}
		})
		p := getPolicy(ctx, ns, "renewed")
		p.Status.EventLevelExpiresAt = nil
		for i := range p.Status.ConsentHistory {
			p.Status.ConsentHistory[i].Until = nil
		}
		Expect(k8s.Status().Update(ctx, p)).To(Succeed())
		event := func(id string, ts time.Time) batchv1.Event {
			return batchv1.Event{ID: id, Name: "SearchSubmitted", Timestamp: ts, UserID: "0123456789abcdef0123456789abcdef"}
		}
		fakeClock.SetTime(expires.Add(-30 * time.Minute))
		res, err := rcv.Store.InsertEvents(ctx, instance, &batchv1.Batch{InstanceID: instance, BatchID: instance + "-e-1", Kind: batchv1.KindEvents,
			Tier: "EventLevel", Cursor: 2, Events: []batchv1.Event{event("1", expires.Add(-time.Hour)), event("2", expires.Add(time.Hour))}})
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Accepted).To(Equal(1), "before the expiry, what is dated after it is refused already")
		fakeClock.SetTime(expires.Add(2 * time.Hour))
		late := &batchv1.Batch{InstanceID: instance, BatchID: instance + "-e-2", Kind: batchv1.KindEvents, Tier: "EventLevel", Cursor: 3,
			Events: []batchv1.Event{event("3", expires.Add(time.Hour))}}
		_, err = rcv.Store.InsertEvents(ctx, instance, late)
		Expect(err).To(MatchError(store.ErrConsentRefused), "after the expiry, with nobody recording it, events are refused")
		updatePolicy(ctx, ns, "renewed", func(p *v1.TelemetryPolicy) {
			renewed := metav1.NewTime(fakeClock.Now().Add(30 * 24 * time.Hour))
			p.Spec.Contract.ExpiresAt = &renewed
		})
		startManager()
		started = true

		By("the operator back: the renewal grants from now, never back over the lapse")
		rollOutUntilReady(ctx, ns, "renewed")
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.CurrentAt(fakeClock.Now()) }, 30*time.Second).Should(Equal(consentv1.TierEventLevel))
		tl := ledgerOf(ctx, instance).Timeline
		Expect(tl.TierAt(expires.Add(-time.Minute))).To(Equal(consentv1.TierEventLevel))
		Expect(tl.TierAt(expires.Add(time.Hour))).To(Equal(consentv1.TierCriticalOnly))
		Expect(tl.TierAt(fakeClock.Now().Add(-time.Minute))).To(Equal(consentv1.TierCriticalOnly), "the renewal grants from when it is recorded")
		Expect(tl[len(tl)-1].Until).To(HaveValue(BeTemporally("==", getPolicy(ctx, ns, "renewed").Spec.Contract.ExpiresAt.Time)))
		res, err = rcv.Store.InsertEvents(ctx, instance, late)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Refused).To(Equal(1), "what was recorded in the lapse is refused when sent again")
		var stamps []time.Time
		rows, err := rcv.DB.Query(ctx, `SELECT ts FROM events WHERE instance_id = $1 ORDER BY ts`, instance)
		Expect(err).NotTo(HaveOccurred())
		for rows.Next() {
			var ts time.Time
			Expect(rows.Scan(&ts)).To(Succeed())
			stamps = append(stamps, ts.UTC())
		}
		Expect(rows.Err()).NotTo(HaveOccurred())
		Expect(stamps).To(ConsistOf(BeTemporally("==", expires.Add(-time.Hour))), "only what the trial covered is stored")
	})

	It("erases an instance's data on request, verified, audited, with status, an Event and a metric", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "erase")
		instance := instanceOf(ns, "erase")
		since := ledgerOf(ctx, instance).Timeline[0].At

		By("storing events through the receiver's API")
		code, out := sendEvents(instance, 1, 40, since.Add(time.Minute))
		Expect(code).To(Equal(http.StatusOK))
		Expect(out.Accepted).To(Equal(40))
		n, err := rcv.Count(ctx, "events", instance)
		Expect(err).NotTo(HaveOccurred())
		Expect(n).To(Equal(40))
		before := metricValue(metrics.Erasures.WithLabelValues("verified"))
		fakeClock.Step(2 * time.Minute) // the receiver erases what was recorded up to its now

		By("requesting the erasure declaratively")
		updatePolicy(ctx, ns, "erase", func(p *v1.TelemetryPolicy) {
			p.Spec.Erasure = &v1.ErasureSpec{RequestID: "DSR-2026-0042", RequestedBy: v1.ErasureRequesterDataSubject}
		})
		Eventually(conditionStatus(ctx, ns, "erase", v1.ConditionErasureCompleted)).Should(Equal("ErasureCompleted=True/Verified"))
		st := getPolicy(ctx, ns, "erase").Status.Erasure
		Expect(st).To(And(HaveField("RequestID", "DSR-2026-0042"), HaveField("Phase", v1.ErasureVerified), HaveField("EventsDeleted", int64(40))))
		Expect(st.VerifiedAt).NotTo(BeNil())
		n, err = rcv.Count(ctx, "events", instance)
		Expect(err).NotTo(HaveOccurred())
		Expect(n).To(BeZero())
		audit, err := rcv.Store.Erasures(ctx, instance)
		Expect(err).NotTo(HaveOccurred())
		Expect(audit).To(HaveLen(1))
		Expect(audit[0]).To(And(HaveField("RequestedBy", consentv1.RequesterDataSubject), HaveField("EventsDeleted", int64(40))))
		Expect(audit[0].VerifiedAt).NotTo(BeNil())
		Eventually(func() []string { return eventReasons(ctx, ns, "erase") }).Should(ContainElement("ErasureVerified"))
		Expect(metricValue(metrics.Erasures.WithLabelValues("verified"))).To(Equal(before + 1))
		Eventually(conditionStatus(ctx, ns, "erase", v1.ConditionReady)).Should(Equal("Ready=True/Enforced"))

		By("re-sending the erased batch: absorbed, nothing stored")
		code, out = sendEvents(instance, 1, 40, since.Add(time.Minute))
		Expect(code).To(Equal(http.StatusOK))
		Expect(out.Accepted).To(BeZero())
		Expect(out.Refused).To(Equal(40))
		n, err = rcv.Count(ctx, "events", instance)
		Expect(err).NotTo(HaveOccurred())
		Expect(n).To(BeZero())

		By("handling the request once: later reconciles do not repeat it")
		requestReconcile(ctx, ns, "erase")
		audit, err = rcv.Store.Erasures(ctx, instance)
		Expect(err).NotTo(HaveOccurred())
		Expect(audit).To(HaveLen(1))
	})

	It("refuses an erasure request the receiver cannot honour, without retrying it", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "refused")
		updatePolicy(ctx, ns, "refused", func(p *v1.TelemetryPolicy) {
			p.Spec.Erasure = &v1.ErasureSpec{RequestID: "r-1", RequestedBy: v1.ErasureRequesterSupport, Scope: v1.ErasureScopeEvents}
		})
		Eventually(conditionStatus(ctx, ns, "refused", v1.ConditionErasureCompleted)).Should(Equal("ErasureCompleted=True/Verified"))
		By("reusing the request id for a different scope")
		updatePolicy(ctx, ns, "refused", func(p *v1.TelemetryPolicy) { p.Spec.Erasure.Scope = v1.ErasureScopeAll })
		Eventually(func() v1.ErasurePhase { return getPolicy(ctx, ns, "refused").Status.Erasure.Phase }).Should(Equal(v1.ErasureFailed))
		Expect(conditionStatus(ctx, ns, "refused", v1.ConditionErasureCompleted)()).To(Equal("ErasureCompleted=False/Refused"))
		Eventually(func() []string { return eventReasons(ctx, ns, "refused") }).Should(ContainElement("ErasureRefused"))
		Expect(conditionStatus(ctx, ns, "refused", v1.ConditionReady)()).To(HavePrefix("Ready=False"))
	})

	It("keeps a withdrawal the receiver could not record, even when consent is raised again before it can", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "flicker")
		instance := instanceOf(ns, "flicker")
		rcv.Stop()
		DeferCleanup(func() { _ = rcv.Listen() })

		By("Off while the receiver is unreachable: the collector stops and the withdrawal waits, dated")
		updatePolicy(ctx, ns, "flicker", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		collectGarbage(ctx, ns, "flicker")
		Eventually(func() []v1.ConsentChange { return getPolicy(ctx, ns, "flicker").Status.PendingConsentChanges }).Should(HaveLen(1))
		withdrawn := getPolicy(ctx, ns, "flicker").Status.PendingConsentChanges[0].Time.Time

		By("EventLevel again, still unreachable: nothing runs, the withdrawal is not forgotten")
		fakeClock.Step(time.Minute)
		updatePolicy(ctx, ns, "flicker", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
		Eventually(conditionStatus(ctx, ns, "flicker", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=False/ReceiverUnavailable"))
		Consistently(func() bool { _, err := deployment(ctx, ns, "flicker"); return apierrors.IsNotFound(err) }, "1s").Should(BeTrue(),
			"a raise waits for the receiver")
		Expect(getPolicy(ctx, ns, "flicker").Status.PendingConsentChanges).To(HaveLen(1))

		By("the receiver back: the withdrawal is recorded at its time, then the new grant")
		Expect(rcv.Listen()).To(Succeed())
		Eventually(func() error { _, err := deployment(ctx, ns, "flicker"); return err }, 20*time.Second).Should(Succeed())
		rollOutUntilReady(ctx, ns, "flicker")
		tl := ledgerOf(ctx, instance).Timeline
		Expect(tl).To(HaveLen(3))
		Expect(tl[1]).To(And(HaveField("Tier", consentv1.TierOff), HaveField("At", BeTemporally("==", withdrawn))))
		Expect(tl.TierAt(withdrawn.Add(30*time.Second))).To(Equal(consentv1.TierOff), "the Off period stays Off at the receiver")
		Expect(configOf(ctx, ns, "flicker").Consent.TierAt(withdrawn.Add(30*time.Second))).To(Equal(consentv1.TierOff), "and in the collector's filter")
		Expect(getPolicy(ctx, ns, "flicker").Status.PendingConsentChanges).To(BeEmpty())
	})

	It("notices a receiver record that no longer matches, and records consent again", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "verify")
		instance := instanceOf(ns, "verify")
		updatePolicy(ctx, ns, "verify", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		collectGarbage(ctx, ns, "verify")
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierOff))

		By("the receiver loses its last transition (a failover to a replica that missed it)")
		_, err := rcv.DB.Exec(ctx, `DELETE FROM consent_transitions WHERE instance_id = $1 AND seq = (SELECT max(seq) FROM consent_transitions WHERE instance_id = $1)`, instance)
		Expect(err).NotTo(HaveOccurred())
		_, err = rcv.DB.Exec(ctx, `UPDATE consent_instances SET version = version + 1 WHERE instance_id = $1`, instance)
		Expect(err).NotTo(HaveOccurred())
		Expect(ledgerOf(ctx, instance).Timeline.Current()).To(Equal(consentv1.TierEventLevel))

		By("the operator reads the record back within --ledger-resync and records Off again")
		fakeClock.Step(11 * time.Minute)
		requestReconcile(ctx, ns, "verify")
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierOff))
		Eventually(conditionStatus(ctx, ns, "verify", v1.ConditionReady)).Should(Equal("Ready=True/Enforced"))
	})

	It("lowers the collector when the spec cannot be rendered, keeping the running configuration's delivery settings", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "broken")
		updatePolicy(ctx, ns, "broken", func(p *v1.TelemetryPolicy) {
			p.Spec.Consent.Tier = v1.TierCriticalOnly
			p.Spec.Export.Endpoint = "https:///no-host"
		})
		Eventually(conditionStatus(ctx, ns, "broken", v1.ConditionStalled)).Should(Equal("Stalled=True/InvalidSpec"))
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "broken").Tier }).Should(Equal(v1.TierCriticalOnly))
		c := configOf(ctx, ns, "broken")
		Expect(c.Endpoint).To(Equal("https://receiver.example.com:8443"), "the running configuration's endpoint is kept")
		cm := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor("broken").Config}, cm)).To(Succeed())
		Eventually(func() string {
			d, _ := deployment(ctx, ns, "broken")
			return d.Spec.Template.Annotations[resources.AnnotationConfigHash]
		}).Should(Equal(resources.ConfigHash([]byte(cm.Data[resources.ConfigKey]))), "the Deployment runs the lowered configuration")
		Expect(templateTierOf(ctx, ns, "broken")).To(Equal(string(v1.TierCriticalOnly)))
		rollOut(ctx, ns, "broken")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "broken").Status.EffectiveTier }).Should(Equal(v1.TierCriticalOnly))
	})

	It("reads a never-enforced collector live until this process has seen it rolled out at the decided tier, then trusts its cache as for an enforced tier", func() {
		ns := newNamespace(ctx)
		p := eventLevelPolicy(ns, "fresh")
		p.Spec.Consent.Tier = v1.TierCriticalOnly
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(func() error { _, err := deployment(ctx, ns, "fresh"); return err }).Should(Succeed())
		// The suite's manager issues the credentials after creating the Deployment, and writes
		// them into its template: the status below must be of its last generation.
		Eventually(func() *v1.CredentialsStatus { return getPolicy(ctx, ns, "fresh").Status.Credentials }).ShouldNot(BeNil())
		generation := func() int64 { d, _ := deployment(ctx, ns, "fresh"); return d.Generation }
		Eventually(func() bool { g := generation(); time.Sleep(time.Second); return g == generation() }).Should(BeTrue())
		// Rolled out, never available (no Deployment controller runs here): never Synced, so
		// its tier is never enforced (status.effectiveTier stays empty).
		setDeploymentStatus(ctx, ns, "fresh", func(d *appsv1.Deployment) {
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, UnavailableReplicas: 1}
		})
		configName := resources.NamesFor("fresh").Config
		setTier := func(obj client.Object, tier v1.ConsentTier) {
			switch o := obj.(type) {
			case *appsv1.Deployment:
				o.Spec.Template.Annotations[resources.AnnotationTier] = string(tier)
			case *corev1.ConfigMap:
				if o.Name != configName {
					return
				}
				var c map[string]any
				Expect(json.Unmarshal([]byte(o.Data[resources.ConfigKey]), &c)).To(Succeed())
				c["tier"] = string(tier)
				changed, err := json.Marshal(c)
				Expect(err).NotTo(HaveOccurred())
				o.Data[resources.ConfigKey] = string(changed)
			}
		}
		raise := func(obj client.Object) { setTier(obj, v1.TierEventLevel) }
		// The API server's objects are never changed here (the suite's manager reconciles
		// them too): each client shows them as the case needs.
		var liveReads int
		var deploymentLowered, configLowered bool
		var liveRaised, cacheRaised, cacheHidesConfig bool
		var cacheShows v1.ConsentTier // the tier the cache shows the collector and its configuration at ("": as they are)
		live := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*appsv1.Deployment); ok {
					liveReads++
				}
				err := c.Get(ctx, key, obj, opts...)
				if err == nil && liveRaised {
					raise(obj)
				}
				return err
			},
		})
		cached := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*corev1.ConfigMap); ok && cacheHidesConfig && key.Name == configName {
					return apierrors.NewNotFound(corev1.Resource("configmaps"), key.Name)
				}
				err := c.Get(ctx, key, obj, opts...)
				if _, ok := obj.(*appsv1.Deployment); ok && err == nil && cacheRaised {
					raise(obj)
				}
				if err == nil && cacheShows != "" {
					setTier(obj, cacheShows)
				}
				return err
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				switch o := obj.(type) {
				case *appsv1.Deployment:
					if o.Spec.Template.Annotations[resources.AnnotationTier] == string(v1.TierCriticalOnly) {
						deploymentLowered = true
					}
					return nil // as if written: the API server's objects stay as they are
				case *corev1.ConfigMap:
					if o.Name == configName && strings.Contains(o.Data[resources.ConfigKey], string(v1.TierCriticalOnly)) {
						configLowered = true
					}
					return nil
				}
				return c.Update(ctx, obj, opts...)
			},
		})
		newReconciler := func() *controllers.TelemetryPolicyReconciler {
			return &controllers.TelemetryPolicyReconciler{
				Client: cached, APIReader: live, Scheme: mgr.GetScheme(), Clock: fakeClock, Issuer: mustIssuer(), Ledger: testLedger(),
				Metrics: controllers.NewMetrics(nil), Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
			}
		}
		r := newReconciler()
		req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "fresh"}}
		reconcile := func(r *controllers.TelemetryPolicyReconciler) int {
			GinkgoHelper()
			liveReads = 0
			_, err := r.Reconcile(ctx, req)
			Expect(err).NotTo(HaveOccurred())
			return liveReads
		}

		By("a process that has not seen the collector live reads it live: it assumes the worst")
		Expect(reconcile(r)).To(BeNumerically(">", 0))
		Expect(getPolicy(ctx, ns, "fresh").Status.EffectiveTier).To(BeEmpty())

		By("once seen live, rolled out at the decided tier, the next reconcile reads it from the cache only")
		Expect(reconcile(r)).To(BeZero())

		By("a cache showing it above the decided tier has it read live again")
		cacheRaised = true
		Expect(reconcile(r)).To(BeNumerically(">", 0))
		cacheRaised = false

		By("a cache that shows the collector but not its configuration has the configuration looked for live (labels stripped, raised)")
		Expect(reconcile(r)).To(BeZero())
		cacheHidesConfig, liveRaised = true, true
		Expect(reconcile(r)).To(BeNumerically(">", 0))
		cacheHidesConfig, liveRaised = false, false

		By("a new process (or a standby that takes over) reads it live again")
		r = newReconciler()
		Expect(reconcile(r)).To(BeNumerically(">", 0))

		By("a collector found live above the tier while the cache lags is lowered, judged against the live objects, and read live again next time")
		r = newReconciler()
		liveRaised, deploymentLowered, configLowered = true, false, false
		Expect(reconcile(r)).To(BeNumerically(">", 0))
		Expect(deploymentLowered).To(BeTrue(), "the Deployment is written at the decided tier")
		Expect(configLowered).To(BeTrue(), "the configuration is written at the decided tier")
		liveRaised = false
		Expect(reconcile(r)).To(BeNumerically(">", 0))
		Expect(reconcile(r)).To(BeZero())

		By("after a raise, a lowering is judged live again, even while the cache still shows the collector as it was before the raise")
		updatePolicy(ctx, ns, "fresh", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
		Expect(reconcile(r)).To(BeZero(), "a raise needs no guard")
		updatePolicy(ctx, ns, "fresh", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		cacheShows = v1.TierCriticalOnly
		Expect(reconcile(r)).To(BeNumerically(">", 0))
	})

	It("lowers a collector the cache cannot see while a later step stalls", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "hidden")
		stopAndEditCollector(ctx, ns, "hidden", func(d *appsv1.Deployment) { d.Labels = nil })
		keyRef := client.ObjectKey{Namespace: ns, Name: resources.NamesFor("hidden").PseudonymKey}
		key := &corev1.Secret{}
		Expect(k8s.Get(ctx, keyRef, key)).To(Succeed())
		Expect(k8s.Delete(ctx, key)).To(Succeed())
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: keyRef.Name, Namespace: ns, Labels: key.Labels, OwnerReferences: key.OwnerReferences},
			Data: map[string][]byte{resources.PseudonymKeyKey: []byte("short")}})).To(Succeed())
		updatePolicy(ctx, ns, "hidden", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		startManager()
		Eventually(func() string { return templateTierOf(ctx, ns, "hidden") }).Should(Equal(string(v1.TierCriticalOnly)))
		Expect(configOf(ctx, ns, "hidden").Tier).To(Equal(v1.TierCriticalOnly))
		Eventually(conditionStatus(ctx, ns, "hidden", v1.ConditionStalled)).Should(Equal("Stalled=True/PseudonymKeyInvalid"))
	})

	It("carries out an erasure while the policy is suspended", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "paused-erase")
		updatePolicy(ctx, ns, "paused-erase", func(p *v1.TelemetryPolicy) {
			p.Spec.Suspend = true
			p.Spec.Erasure = &v1.ErasureSpec{RequestID: "while-suspended", RequestedBy: v1.ErasureRequesterCustomerAdmin}
		})
		Eventually(conditionStatus(ctx, ns, "paused-erase", v1.ConditionErasureCompleted)).Should(Equal("ErasureCompleted=True/Verified"))
		audit, err := rcv.Store.Erasures(ctx, instanceOf(ns, "paused-erase"))
		Expect(err).NotTo(HaveOccurred())
		Expect(audit).To(HaveLen(1))
	})

	It("holds a deleted policy until the receiver records it, unless nothing was ever recorded or issued", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "held")
		rcv.Stop()
		DeferCleanup(func() { _ = rcv.Listen() })

		By("a policy the receiver never heard of goes at once")
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "never"))).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "never", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=False/ReceiverUnavailable"))
		Expect(k8s.Delete(ctx, getPolicy(ctx, ns, "never"))).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "never"}, &v1.TelemetryPolicy{}))
		}).Should(BeTrue())

		By("a recorded one waits for the receiver")
		Expect(k8s.Delete(ctx, getPolicy(ctx, ns, "held"))).To(Succeed())
		Consistently(func() error {
			return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "held"}, &v1.TelemetryPolicy{})
		}, "2s").Should(Succeed())
		Expect(rcv.Listen()).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "held"}, &v1.TelemetryPolicy{}))
		}, 20*time.Second).Should(BeTrue())
		Expect(ledgerOf(ctx, instanceOf(ns, "held")).Timeline.Current()).To(Equal(consentv1.TierOff))
	})

	It("never records again a withdrawal its stale copy still lists as pending", func() {
		ns := newNamespace(ctx)
		p := readyPolicy(ctx, ns, "stale-copy")
		instance := instanceOf(ns, "stale-copy")
		stopManager()

		By("the receiver already recorded the withdrawal and a new grant")
		l := testLedger()
		owner := consentv1.Owner{Namespace: ns, Name: "stale-copy", UID: string(p.UID)}
		withdrawn := fakeClock.Now().Add(time.Minute).Truncate(time.Second)
		fakeClock.SetTime(withdrawn)
		_, err := l.Record(ctx, consentv1.RecordRequest{InstanceID: instance, Owner: owner, Transition: consentv1.Transition{At: withdrawn, Tier: consentv1.TierOff, Reason: "Declared"}})
		Expect(err).NotTo(HaveOccurred())
		fakeClock.Step(time.Minute)
		until := p.Spec.Contract.ExpiresAt.UTC() // as the operator records a grant
		_, err = l.Record(ctx, consentv1.RecordRequest{InstanceID: instance, Owner: owner,
			Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierEventLevel, Reason: "Declared", Until: &until}})
		Expect(err).NotTo(HaveOccurred())
		want := ledgerOf(ctx, instance).Timeline
		Expect(want).To(HaveLen(3))

		By("but the policy's status still lists the withdrawal as pending (the patch that cleared it was lost)")
		stale := getPolicy(ctx, ns, "stale-copy")
		stale.Status.PendingConsentChanges = []v1.ConsentChange{{Time: metav1.NewTime(withdrawn), From: v1.TierEventLevel, To: v1.TierOff, Reason: "Declared"}}
		Expect(k8s.Status().Update(ctx, stale)).To(Succeed())
		startManager()
		requestReconcile(ctx, ns, "stale-copy")
		Eventually(func() []v1.ConsentChange { return getPolicy(ctx, ns, "stale-copy").Status.PendingConsentChanges }).Should(BeEmpty())
		Consistently(func() int { return len(ledgerOf(ctx, instance).Timeline) }, "1s").Should(Equal(3), "no withdrawal recorded twice")
		Expect(getPolicy(ctx, ns, "stale-copy").Status.ConsentHistory).To(HaveLen(3))
	})

	DescribeTable("records a withdrawal granted again before the policy was reconciled", func(suspended bool) {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "flip")
		instance := instanceOf(ns, "flip")
		Expect(ledgerOf(ctx, instance).Timeline).To(HaveLen(1))
		var interval string
		if suspended {
			interval = configOf(ctx, ns, "flip").Interval
			updatePolicy(ctx, ns, "flip", func(p *v1.TelemetryPolicy) {
				p.Spec.Suspend = true
				p.Spec.Export.Interval = &metav1.Duration{Duration: 7 * time.Minute} // waits for resume
			})
			Eventually(conditionStatus(ctx, ns, "flip", v1.ConditionReady)).Should(HaveSuffix("/Suspended"))
		}

		By("a reconcile held at its status write while consent is withdrawn and granted again")
		h := writes.holdStatus(ns, "flip")
		DeferCleanup(func() { writes.hold.Store(nil); h.Release() })
		fakeClock.Step(time.Minute)
		annotate(ctx, ns, "flip", v1.AnnotationReconcileRequestedAt, "held")
		Eventually(h.reached).Should(BeClosed())
		updatePolicy(ctx, ns, "flip", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		withdrawn := fakeClock.Now().Truncate(time.Second)
		// The manager's watch sees the withdrawal (its cache, then its handlers, a moment later)
		// before this clock moves on: in a cluster the two clocks are one.
		off := getPolicy(ctx, ns, "flip").Generation
		Eventually(func() int64 {
			p := &v1.TelemetryPolicy{}
			_ = mgr.GetCache().Get(ctx, client.ObjectKey{Namespace: ns, Name: "flip"}, p)
			return p.Generation
		}).Should(Equal(off))
		time.Sleep(200 * time.Millisecond)
		fakeClock.Step(time.Minute)
		updatePolicy(ctx, ns, "flip", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
		writes.hold.Store(nil)
		h.Release()

		if suspended {
			By("suspended: the withdrawal is recorded, the grant waits for resume")
			Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierOff))
			tl := ledgerOf(ctx, instance).Timeline
			Expect(tl).To(HaveLen(2))
			Expect(tl[1].At).To(BeTemporally("==", withdrawn), "dated when consent was withdrawn")
			Eventually(func() consentv1.Tier { return configOf(ctx, ns, "flip").Consent.TierAt(withdrawn) }).Should(Equal(consentv1.TierOff),
				"the collector's filter closes the period while suspended too")
			Expect(configOf(ctx, ns, "flip").Interval).To(Equal(interval), "and nothing else of the configuration changes while suspended")
			Consistently(func() consentv1.Timeline { return ledgerOf(ctx, instance).Timeline }, "1s").Should(HaveLen(2))
			updatePolicy(ctx, ns, "flip", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = false })
		}

		By("the receiver records the Off period, and the collector skips it")
		Eventually(func() consentv1.Timeline { return ledgerOf(ctx, instance).Timeline }).Should(HaveLen(3))
		tl := ledgerOf(ctx, instance).Timeline
		Expect(tl[1]).To(And(HaveField("Tier", consentv1.TierOff), HaveField("At", BeTemporally("==", withdrawn))), "dated when consent was withdrawn")
		Expect(tl[2]).To(And(HaveField("Tier", consentv1.TierEventLevel), HaveField("At", BeTemporally(">", withdrawn))), "granted again from then on, never reaching back")
		Eventually(func() consentv1.Tier { return configOf(ctx, ns, "flip").Consent.TierAt(withdrawn) }).Should(Equal(consentv1.TierOff))
		Expect(configOf(ctx, ns, "flip").Consent.TierAt(tl[2].At)).To(Equal(consentv1.TierEventLevel))
	},
		Entry("while the operator reconciles it", false),
		Entry("while the policy is suspended", true),
	)

	It("refuses a transition computed from an outdated copy of the record", func() {
		ns := newNamespace(ctx)
		p := readyPolicy(ctx, ns, "cas")
		instance := instanceOf(ns, "cas")
		l := testLedger()
		head := ledgerOf(ctx, instance).Timeline[0]
		owner := consentv1.Owner{Namespace: ns, Name: "cas", UID: string(p.UID)}
		stale := &consentv1.Transition{At: head.At.Add(-time.Hour), Tier: head.Tier}
		_, err := l.Record(ctx, consentv1.RecordRequest{InstanceID: instance, Owner: owner, ExpectedHead: stale,
			Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierOff, Reason: "Declared"}})
		Expect(err).To(MatchError(ledger.ErrStale))
		Expect(ledgerOf(ctx, instance).Timeline).To(HaveLen(1))
		_, err = l.Record(ctx, consentv1.RecordRequest{InstanceID: instance, Owner: owner, ExpectedHead: &consentv1.Transition{At: head.At, Tier: head.Tier},
			Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierCriticalOnly, Reason: "Declared"}})
		Expect(err).NotTo(HaveOccurred())
	})

	Describe("when the receiver loses transitions it acknowledged", func() {
		// dropLastTransitions removes the instance's newest n transitions at the receiver, as a
		// failover to a replica that missed them would.
		dropLastTransitions := func(instance string, n int) {
			GinkgoHelper()
			_, err := rcv.DB.Exec(ctx, `DELETE FROM consent_transitions WHERE instance_id = $1 AND seq > (SELECT max(seq) - $2 FROM consent_transitions WHERE instance_id = $1)`, instance, n)
			Expect(err).NotTo(HaveOccurred())
			_, err = rcv.DB.Exec(ctx, `UPDATE consent_instances SET version = version + 1 WHERE instance_id = $1`, instance)
			Expect(err).NotTo(HaveOccurred())
		}
		offPeriod := func(ctx context.Context, ns, name string) (consentv1.Transition, consentv1.Timeline) {
			GinkgoHelper()
			h := timelineOfStatus(getPolicy(ctx, ns, name))
			for _, tr := range h {
				if tr.Tier == consentv1.TierOff {
					return tr, h
				}
			}
			Fail("no Off period in the history")
			return consentv1.Transition{}, nil
		}

		It("records a lost withdrawal again at its own time", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "relost")
			instance := instanceOf(ns, "relost")
			updatePolicy(ctx, ns, "relost", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
			collectGarbage(ctx, ns, "relost")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "relost").Status.EffectiveTier }).Should(Equal(v1.TierOff))
			off, _ := offPeriod(ctx, ns, "relost")
			dropLastTransitions(instance, 1)
			fakeClock.Step(11 * time.Minute)
			requestReconcile(ctx, ns, "relost")
			Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierOff))
			tl := ledgerOf(ctx, instance).Timeline
			Expect(tl[len(tl)-1].At).To(BeTemporally("==", off.At), "dated when consent was withdrawn, not when the loss was noticed")
		})

		It("records a lost withdrawal again while the policy is suspended", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "paused")
			instance := instanceOf(ns, "paused")
			updatePolicy(ctx, ns, "paused", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
			Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierCriticalOnly))
			rollOut(ctx, ns, "paused")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "paused").Status.EffectiveTier }).Should(Equal(v1.TierCriticalOnly))
			withdrawn := ledgerOf(ctx, instance).Timeline[1]
			updatePolicy(ctx, ns, "paused", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true })
			Eventually(conditionStatus(ctx, ns, "paused", v1.ConditionReady)).Should(HaveSuffix("/Suspended"))

			dropLastTransitions(instance, 1)
			fakeClock.Step(11 * time.Minute)
			requestReconcile(ctx, ns, "paused")
			Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierCriticalOnly))
			tl := ledgerOf(ctx, instance).Timeline
			Expect(tl).To(HaveLen(2))
			Expect(tl[1].At).To(BeTemporally("==", withdrawn.At), "dated when consent was withdrawn, not when the loss was noticed")
			Expect(getPolicy(ctx, ns, "paused").Spec.Suspend).To(BeTrue())
		})

		It("adopts nothing of a record nobody owns while the policy is suspended, and claims nothing", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "held")
			instance := instanceOf(ns, "held")
			fakeClock.Step(time.Minute)
			updatePolicy(ctx, ns, "held", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
			Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierCriticalOnly))
			Eventually(func() string { return templateTierOf(ctx, ns, "held") }).Should(Equal(string(v1.TierCriticalOnly)))
			rollOut(ctx, ns, "held")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "held").Status.EffectiveTier }).Should(Equal(v1.TierCriticalOnly))
			updatePolicy(ctx, ns, "held", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true })
			Eventually(conditionStatus(ctx, ns, "held", v1.ConditionReady)).Should(HaveSuffix("/Suspended"))
			history := getPolicy(ctx, ns, "held").Status.ConsentHistory

			By("the instance handed over at the receiver: released by its operators, recorded by another policy, released again")
			stopManager()
			_, err := rcv.Admin.ForceRelease(ctx, instance, nil)
			Expect(err).NotTo(HaveOccurred())
			theirs := consentv1.Owner{Namespace: "elsewhere", Name: "next"}
			fakeClock.Step(time.Minute)
			_, err = rcv.Store.RecordTransition(ctx, testCluster, consentv1.RecordRequest{InstanceID: instance, Owner: theirs,
				Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierEventLevel, Reason: "Declared"}})
			Expect(err).NotTo(HaveOccurred())
			Expect(rcv.Store.Release(ctx, testCluster, consentv1.ReleaseRequest{InstanceID: instance, Owner: theirs})).To(Succeed())
			before := ledgerOf(ctx, instance)

			fakeClock.Step(11 * time.Minute)
			startManager()
			requestReconcile(ctx, ns, "held")
			Consistently(func() consentv1.State { return ledgerOf(ctx, instance) }, "3s").Should(Equal(before), "nothing recorded, nothing claimed")
			Expect(getPolicy(ctx, ns, "held").Status.ConsentHistory).To(Equal(history), "the other policy's history is not this policy's")
		})

		It("stops the collector of a suspended policy whose record another policy claimed meanwhile", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "ceded")
			instance := instanceOf(ns, "ceded")
			updatePolicy(ctx, ns, "ceded", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true })
			Eventually(conditionStatus(ctx, ns, "ceded", v1.ConditionReady)).Should(HaveSuffix("/Suspended"))

			By("the instance handed over by the receiver's operators and recorded by another policy")
			_, err := rcv.Admin.ForceRelease(ctx, instance, nil)
			Expect(err).NotTo(HaveOccurred())
			fakeClock.Step(time.Minute)
			_, err = rcv.Store.RecordTransition(ctx, testCluster, consentv1.RecordRequest{InstanceID: instance, Owner: consentv1.Owner{Namespace: "elsewhere", Name: "next"},
				Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierEventLevel, Reason: "Declared"}})
			Expect(err).NotTo(HaveOccurred())
			before := ledgerOf(ctx, instance)

			By("the record read back while suspended")
			fakeClock.Step(11 * time.Minute)
			requestReconcile(ctx, ns, "ceded")
			Eventually(conditionStatus(ctx, ns, "ceded", v1.ConditionStalled)).Should(Equal("Stalled=True/InstanceOwnedElsewhere"))
			Expect(conditionStatus(ctx, ns, "ceded", v1.ConditionConsentRecorded)()).To(Equal("ConsentRecorded=False/InstanceOwnedElsewhere"))
			collectGarbage(ctx, ns, "ceded")
			Eventually(func() bool { _, err := deployment(ctx, ns, "ceded"); return apierrors.IsNotFound(err) }).Should(BeTrue(),
				"its data would be taken under the other policy's consent")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "ceded").Status.EffectiveTier }).Should(Equal(v1.TierOff))
			Expect(ledgerOf(ctx, instance)).To(Equal(before), "nothing recorded on the other policy's record")
			Expect(getPolicy(ctx, ns, "ceded").Spec.Suspend).To(BeTrue())
		})

		It("stops the collector of a suspended policy whose record was released meanwhile, and claims it at resume", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "freed")
			instance := instanceOf(ns, "freed")
			updatePolicy(ctx, ns, "freed", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true })
			Eventually(conditionStatus(ctx, ns, "freed", v1.ConditionReady)).Should(HaveSuffix("/Suspended"))

			By("the receiver's operators releasing the record, handed back to the policy's own namespace")
			_, err := rcv.Admin.ForceRelease(ctx, instance, &consentv1.Owner{Cluster: testCluster, Namespace: ns})
			Expect(err).NotTo(HaveOccurred())
			before := ledgerOf(ctx, instance)
			Expect(before.Owner.Cluster).To(BeEmpty())

			By("the record read back while suspended")
			fakeClock.Step(11 * time.Minute)
			requestReconcile(ctx, ns, "freed")
			Eventually(conditionStatus(ctx, ns, "freed", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=False/InstanceReleased"))
			collectGarbage(ctx, ns, "freed")
			Eventually(func() bool { _, err := deployment(ctx, ns, "freed"); return apierrors.IsNotFound(err) }).Should(BeTrue(),
				"nothing is sent under a record that is no longer the policy's")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "freed").Status.EffectiveTier }).Should(Equal(v1.TierOff))
			Expect(ledgerOf(ctx, instance)).To(Equal(before), "a suspended policy claims nothing")

			By("an erasure requested meanwhile: pending, saying why, until the policy owns the record")
			updatePolicy(ctx, ns, "freed", func(p *v1.TelemetryPolicy) {
				p.Spec.Erasure = &v1.ErasureSpec{RequestID: "DSR-freed", RequestedBy: v1.ErasureRequesterLegal}
			})
			Eventually(conditionStatus(ctx, ns, "freed", v1.ConditionErasureCompleted)).Should(Equal("ErasureCompleted=False/Pending"))
			Expect(condition(getPolicy(ctx, ns, "freed"), v1.ConditionErasureCompleted).Message).To(ContainSubstring("own the instance's record"))
			Consistently(func() bool { _, err := deployment(ctx, ns, "freed"); return apierrors.IsNotFound(err) }, "2s").Should(BeTrue(),
				"and nothing starts while suspended")
			Expect(ledgerOf(ctx, instance).Owner.Cluster).To(BeEmpty())

			By("resuming while the receiver is unreachable: nothing runs from the copy in status")
			rcv.Stop()
			DeferCleanup(func() { _ = rcv.Listen() })
			updatePolicy(ctx, ns, "freed", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = false })
			Eventually(func() int64 { return getPolicy(ctx, ns, "freed").Status.ObservedGeneration }).Should(Equal(getPolicy(ctx, ns, "freed").Generation))
			Consistently(func() bool { _, err := deployment(ctx, ns, "freed"); return apierrors.IsNotFound(err) }, "3s").Should(BeTrue(),
				"the record was last read released: not this policy's until its claim is recorded")
			Expect(conditionStatus(ctx, ns, "freed", v1.ConditionConsentRecorded)()).To(Equal("ConsentRecorded=False/InstanceReleased"))
			Expect(getPolicy(ctx, ns, "freed").Status.EffectiveTier).To(Equal(v1.TierOff))

			By("the receiver back: the record is claimed and the collector runs again")
			Expect(rcv.Listen()).To(Succeed())
			Eventually(func() string { return ledgerOf(ctx, instance).Owner.Namespace }, 30*time.Second).Should(Equal(ns))
			Eventually(func() error { _, err := deployment(ctx, ns, "freed"); return err }, 20*time.Second).Should(Succeed())
			rollOutUntilReady(ctx, ns, "freed")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "freed").Status.EffectiveTier }, 20*time.Second).Should(Equal(v1.TierEventLevel))
			Eventually(conditionStatus(ctx, ns, "freed", v1.ConditionErasureCompleted), 20*time.Second).Should(Equal("ErasureCompleted=True/Verified"),
				"the erasure is carried out once the record is the policy's")
		})

		DescribeTable("runs nothing while its claim of a record released to it is not recorded, nor once the receiver is gone", func(answer int) {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "unclaimed")
			instance := instanceOf(ns, "unclaimed")

			By("the record handed back to the policy's namespace, and the receiver refusing writes for a while")
			rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
				if r.Method != http.MethodPost || r.URL.Path != consentv1.PathConsent {
					return false
				}
				w.WriteHeader(answer)
				return true
			})
			DeferCleanup(func() { rcv.SetIntercept(nil) })
			_, err := rcv.Admin.ForceRelease(ctx, instance, &consentv1.Owner{Cluster: testCluster, Namespace: ns})
			Expect(err).NotTo(HaveOccurred())
			fakeClock.Step(11 * time.Minute)
			requestReconcile(ctx, ns, "unclaimed")
			Eventually(conditionStatus(ctx, ns, "unclaimed", v1.ConditionConsentRecorded), 20*time.Second).Should(Equal("ConsentRecorded=False/InstanceReleased"))
			collectGarbage(ctx, ns, "unclaimed")
			Eventually(func() bool { _, err := deployment(ctx, ns, "unclaimed"); return apierrors.IsNotFound(err) }).Should(BeTrue(),
				"the record is nobody's until the claim is recorded")

			By("the receiver gone: nothing runs from the copy in status")
			rcv.Stop()
			DeferCleanup(func() { _ = rcv.Listen() })
			requestReconcile(ctx, ns, "unclaimed")
			Consistently(func() bool { _, err := deployment(ctx, ns, "unclaimed"); return apierrors.IsNotFound(err) }, "3s").Should(BeTrue())
			Expect(conditionStatus(ctx, ns, "unclaimed", v1.ConditionConsentRecorded)()).To(Equal("ConsentRecorded=False/InstanceReleased"))

			By("the receiver back: the claim is recorded and the collector runs again")
			rcv.SetIntercept(nil)
			Expect(rcv.Listen()).To(Succeed())
			Eventually(func() string { return ledgerOf(ctx, instance).Owner.Namespace }, 30*time.Second).Should(Equal(ns))
			Eventually(func() error { _, err := deployment(ctx, ns, "unclaimed"); return err }, 20*time.Second).Should(Succeed())
			rollOutUntilReady(ctx, ns, "unclaimed")
			Eventually(conditionStatus(ctx, ns, "unclaimed", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=True/Recorded"))
		},
			Entry("the receiver unreachable for the claim", http.StatusServiceUnavailable),
			Entry("the claim refused", http.StatusBadRequest),
		)

		It("keeps a policy held as another's while the receiver is gone from being let go unrecorded", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "leaving")
			instance := instanceOf(ns, "leaving")
			updatePolicy(ctx, ns, "leaving", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true })
			Eventually(conditionStatus(ctx, ns, "leaving", v1.ConditionReady)).Should(HaveSuffix("/Suspended"))
			_, err := rcv.Admin.ForceRelease(ctx, instance, &consentv1.Owner{Cluster: testCluster, Namespace: ns})
			Expect(err).NotTo(HaveOccurred())
			fakeClock.Step(11 * time.Minute)
			requestReconcile(ctx, ns, "leaving")
			Eventually(conditionStatus(ctx, ns, "leaving", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=False/InstanceReleased"))

			By("deleted while the receiver is gone: the deletion waits to be recorded")
			rcv.Stop()
			DeferCleanup(func() { _ = rcv.Listen() })
			Expect(k8s.Delete(ctx, getPolicy(ctx, ns, "leaving"))).To(Succeed())
			Consistently(func() error {
				return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "leaving"}, &v1.TelemetryPolicy{})
			}, "3s").Should(Succeed())

			By("the receiver back: Off recorded, the record released to the namespace, the policy gone")
			Expect(rcv.Listen()).To(Succeed())
			Eventually(func() bool {
				return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "leaving"}, &v1.TelemetryPolicy{}))
			}, 40*time.Second).Should(BeTrue())
			st := ledgerOf(ctx, instance)
			Expect(st.Timeline.Current()).To(Equal(consentv1.TierOff))
			Expect(st.Owner.Cluster).To(BeEmpty())
		})

		It("has the receiver refuse the collector's certificate once the instance is handed over", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "minted")
			instance := instanceOf(ns, "minted")
			minted, err := pki.ParseCertificatePEM(credentials(ctx, ns, "minted").Data[pki.KeyCert])
			Expect(err).NotTo(HaveOccurred())
			named, err := pki.PolicyOf(minted)
			Expect(err).NotTo(HaveOccurred())
			Expect(named).To(Equal(policyRefOf(ctx, ns, "minted")), "the certificate names the policy, as the receiver's record names its owner")
			// The same identity, valid by the real clock the receiver's TLS checks (the suite's
			// clock runs ahead of it).
			cc, err := rcv.Issuer.IssueClient(instance, named, 16*time.Hour, time.Now(), nil)
			Expect(err).NotTo(HaveOccurred())
			pair, err := tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
			Expect(err).NotTo(HaveOccurred())
			collector := rcv.HTTPClient(&pair)
			cursor := func() string {
				resp, err := collector.Get(rcv.URL + batchv1.PathCursor)
				Expect(err).NotTo(HaveOccurred())
				defer func() { _ = resp.Body.Close() }()
				var e batchv1.ErrorResponse
				_ = json.NewDecoder(resp.Body).Decode(&e)
				return fmt.Sprintf("%d%s", resp.StatusCode, e.Reason)
			}
			Expect(cursor()).To(Equal("200"), "the certificate the operator issued names the policy that owns the record")

			By("the receiver's operators handing the instance over to a policy of another namespace")
			stopManager()
			DeferCleanup(startManager)
			_, err = rcv.Admin.ForceRelease(ctx, instance, &consentv1.Owner{Cluster: testCluster, Namespace: "elsewhere"})
			Expect(err).NotTo(HaveOccurred())
			Expect(cursor()).To(Equal("403"+batchv1.ReasonNotOwner), "released: the certificate no longer works")
			fakeClock.Step(time.Minute)
			_, err = rcv.Store.RecordTransition(ctx, testCluster, consentv1.RecordRequest{InstanceID: instance, Owner: consentv1.Owner{Namespace: "elsewhere", Name: "next", UID: "next-uid"},
				Transition: consentv1.Transition{At: fakeClock.Now(), Tier: consentv1.TierEventLevel, Reason: "Declared"}})
			Expect(err).NotTo(HaveOccurred())
			Expect(cursor()).To(Equal("403"+batchv1.ReasonNotOwner), "nor once another policy owns the record, for all the time it has left")
		})

		It("keeps an Off period Off when the receiver loses it while a raise waits", func() {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "regrant")
			instance := instanceOf(ns, "regrant")
			updatePolicy(ctx, ns, "regrant", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
			collectGarbage(ctx, ns, "regrant")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "regrant").Status.EffectiveTier }).Should(Equal(v1.TierOff))
			off, _ := offPeriod(ctx, ns, "regrant")
			rcv.Stop()
			DeferCleanup(func() { _ = rcv.Listen() })
			fakeClock.Step(time.Hour)
			updatePolicy(ctx, ns, "regrant", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
			Eventually(conditionStatus(ctx, ns, "regrant", v1.ConditionConsentRecorded)).Should(Equal("ConsentRecorded=False/ReceiverUnavailable"))
			dropLastTransitions(instance, 1)
			Expect(rcv.Listen()).To(Succeed())
			Eventually(func() error { _, err := deployment(ctx, ns, "regrant"); return err }, 20*time.Second).Should(Succeed())
			rollOutUntilReady(ctx, ns, "regrant")
			mid := off.At.Add(30 * time.Minute)
			Expect(ledgerOf(ctx, instance).Timeline.TierAt(mid)).To(Equal(consentv1.TierOff), "the Off period stays Off at the receiver")
			Expect(configOf(ctx, ns, "regrant").Consent.TierAt(mid)).To(Equal(consentv1.TierOff), "and in the collector's filter")
		})

		It("never reaches back to acceptedAt when the receiver lost the whole record and a re-record fails once", func() {
			ns := newNamespace(ctx)
			accepted := metav1.NewTime(fakeClock.Now().Add(-48 * time.Hour).Truncate(time.Second))
			p := eventLevelPolicy(ns, "gone")
			p.Spec.Contract.AcceptedAt = &accepted
			p.Spec.Export.StartFrom = v1.StartFromBeginning
			Expect(k8s.Create(ctx, p)).To(Succeed())
			Eventually(func() error { _, err := deployment(ctx, ns, "gone"); return err }).Should(Succeed())
			rollOutUntilReady(ctx, ns, "gone")
			instance := instanceOf(ns, "gone")
			updatePolicy(ctx, ns, "gone", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
			collectGarbage(ctx, ns, "gone")
			Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "gone").Status.EffectiveTier }).Should(Equal(v1.TierOff))
			off, _ := offPeriod(ctx, ns, "gone")
			fakeClock.Step(time.Hour)
			updatePolicy(ctx, ns, "gone", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
			Eventually(func() error { _, err := deployment(ctx, ns, "gone"); return err }).Should(Succeed())
			rollOutUntilReady(ctx, ns, "gone")

			By("the receiver loses the instance entirely, and the first record attempt fails")
			_, err := rcv.DB.Exec(ctx, `DELETE FROM consent_transitions WHERE instance_id = $1`, instance)
			Expect(err).NotTo(HaveOccurred())
			_, err = rcv.DB.Exec(ctx, `DELETE FROM consent_instances WHERE instance_id = $1`, instance)
			Expect(err).NotTo(HaveOccurred())
			var failed sync.Once
			rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
				if r.Method != http.MethodPost || r.URL.Path != consentv1.PathConsent {
					return false
				}
				hit := false
				failed.Do(func() { hit = true })
				if hit {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
				return hit
			})
			DeferCleanup(func() { rcv.SetIntercept(nil) })
			fakeClock.Step(11 * time.Minute)
			requestReconcile(ctx, ns, "gone")
			Eventually(func() int { s, err := rcv.Store.ConsentState(ctx, instance); _ = err; return len(s.Timeline) }, 20*time.Second).Should(BeNumerically(">=", 2))
			tl := ledgerOf(ctx, instance).Timeline
			Expect(tl.TierAt(off.At.Add(30*time.Minute))).To(Equal(consentv1.TierOff), "the Off period stays Off")
			Expect(tl.TierAt(accepted.Add(time.Hour))).To(Equal(consentv1.TierOff), "the lost record is never re-granted back to acceptedAt")
			Expect(tl.Current()).To(Equal(consentv1.TierEventLevel))
		})
	})

	It("stops the collector when a lowered configuration cannot be written", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "unwritable")
		denyConfigMapUpdates(ctx, ns)
		updatePolicy(ctx, ns, "unwritable", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Eventually(func() bool {
			d, err := deployment(ctx, ns, "unwritable")
			return apierrors.IsNotFound(err) || err == nil && d.DeletionTimestamp != nil
		}, 20*time.Second).Should(BeTrue(), "the collector, whose EventLevel configuration stays, is stopped")
		Expect(configOf(ctx, ns, "unwritable").Tier).To(Equal(v1.TierEventLevel), "the configuration could not be lowered")
	})

	It("stops a collector whose owner reference was stripped when its configuration cannot be lowered", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "orphaned")
		stopAndEditCollector(ctx, ns, "orphaned", func(d *appsv1.Deployment) { d.OwnerReferences = nil }) // labels kept: still made for this policy
		denyConfigMapUpdates(ctx, ns)
		updatePolicy(ctx, ns, "orphaned", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		startManager()
		Eventually(func() bool {
			d, err := deployment(ctx, ns, "orphaned")
			return apierrors.IsNotFound(err) || err == nil && d.DeletionTimestamp != nil
		}, 20*time.Second).Should(BeTrue(), "the collector, whose EventLevel configuration stays, is stopped")
	})

	It("looks for an enforced collector the cache does not show, with its configuration, and lowers it", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "stripped")
		updatePolicy(ctx, ns, "stripped", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Eventually(func() string { return templateTierOf(ctx, ns, "stripped") }).Should(Equal(string(v1.TierCriticalOnly)))
		rollOut(ctx, ns, "stripped")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "stripped").Status.EffectiveTier }).Should(Equal(v1.TierCriticalOnly))
		names := resources.NamesFor("stripped")
		// The "cache" shows neither the Deployment nor the configuration (their labels were
		// stripped); the API server holds both raised to EventLevel. The API server's objects
		// are left alone (the suite's manager reconciles them too): each client shows them so.
		var liveReads int
		var deploymentLowered, configLowered bool
		raise := func(obj client.Object) {
			switch o := obj.(type) {
			case *appsv1.Deployment:
				o.Labels = nil
				o.Spec.Template.Annotations[resources.AnnotationTier] = string(v1.TierEventLevel)
			case *corev1.ConfigMap:
				if o.Name == names.Config {
					o.Labels = nil
					var c map[string]any
					Expect(json.Unmarshal([]byte(o.Data[resources.ConfigKey]), &c)).To(Succeed())
					c["tier"] = string(v1.TierEventLevel)
					raised, err := json.Marshal(c)
					Expect(err).NotTo(HaveOccurred())
					o.Data[resources.ConfigKey] = string(raised)
				}
			}
		}
		live := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*appsv1.Deployment); ok {
					liveReads++
				}
				err := c.Get(ctx, key, obj, opts...)
				if err == nil {
					raise(obj)
				}
				return err
			},
		})
		// And a later step stalls (the pseudonym key the cache shows is unusable): the lowering
		// must not wait for the configuration and workload steps.
		cached := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				switch obj.(type) {
				case *appsv1.Deployment:
					return apierrors.NewNotFound(appsv1.Resource("deployments"), key.Name)
				case *corev1.ConfigMap:
					if key.Name == names.Config {
						return apierrors.NewNotFound(corev1.Resource("configmaps"), key.Name)
					}
				}
				err := c.Get(ctx, key, obj, opts...)
				if s, ok := obj.(*corev1.Secret); ok && err == nil && key.Name == names.PseudonymKey {
					s.Data = map[string][]byte{resources.PseudonymKeyKey: []byte("short")}
				}
				return err
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				switch o := obj.(type) {
				case *appsv1.Deployment:
					deploymentLowered = deploymentLowered || o.Spec.Template.Annotations[resources.AnnotationTier] == string(v1.TierCriticalOnly)
					return nil
				case *corev1.ConfigMap:
					configLowered = configLowered || o.Name == names.Config && strings.Contains(o.Data[resources.ConfigKey], string(v1.TierCriticalOnly))
					return nil
				}
				return c.Update(ctx, obj, opts...)
			},
		})
		r := &controllers.TelemetryPolicyReconciler{
			Client: cached, APIReader: live, Scheme: mgr.GetScheme(), Clock: fakeClock, Issuer: mustIssuer(), Ledger: testLedger(),
			Metrics: controllers.NewMetrics(nil), Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
		}
		_, _ = r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "stripped"}})
		Expect(liveReads).To(BeNumerically(">", 0), "the collector is looked for on the API server")
		Expect(deploymentLowered).To(BeTrue(), "the Deployment is lowered ahead of every other step")
		Expect(configLowered).To(BeTrue(), "the configuration is lowered ahead of every other step")
	})

	It("records a withdrawal even while lowering the collector fails", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "frozen")
		instance := instanceOf(ns, "frozen")
		lift := denyDeploymentUpdates(ctx, ns)
		updatePolicy(ctx, ns, "frozen", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Eventually(func() consentv1.Tier { return ledgerOf(ctx, instance).Timeline.Current() }).Should(Equal(consentv1.TierCriticalOnly),
			"the receiver refuses EventLevel data although the collector cannot be rolled")
		Expect(getPolicy(ctx, ns, "frozen").Status.EffectiveTier).To(Equal(v1.TierEventLevel), "not reported while the collector cannot be lowered")

		By("once the Deployment can be updated, the downgrade completes (and the policy settles)")
		lift()
		Eventually(func() string { return templateTierOf(ctx, ns, "frozen") }, 30*time.Second).Should(Equal(string(v1.TierCriticalOnly)))
		rollOut(ctx, ns, "frozen")
		Eventually(conditionStatus(ctx, ns, "frozen", v1.ConditionReady), 30*time.Second).Should(Equal("Ready=True/Enforced"))
	})
})

// timelineOfStatus is a policy's consent history as a timeline.
func timelineOfStatus(p *v1.TelemetryPolicy) consentv1.Timeline {
	var t consentv1.Timeline
	for _, c := range p.Status.ConsentHistory {
		t = append(t, consentv1.Transition{At: c.Time.UTC(), Tier: consentv1.Tier(c.To)})
	}
	return t
}

// denyDeploymentUpdates makes the API server refuse every Deployment update in ns (an admission
// policy, as a policy engine or a quota would) until the returned function lifts it.
func denyDeploymentUpdates(ctx context.Context, ns string) (lift func()) {
	GinkgoHelper()
	return denyUpdates(ctx, ns, "apps", "deployments", &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns}, Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"probe": "x"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"probe": "x"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}}})
}

// denyConfigMapUpdates is denyDeploymentUpdates for ConfigMaps.
func denyConfigMapUpdates(ctx context.Context, ns string) (lift func()) {
	GinkgoHelper()
	return denyUpdates(ctx, ns, "", "configmaps", &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns}})
}

// denyUpdates makes the API server refuse every update of resource (of apiGroup, version v1) in
// ns until the returned function lifts it; probe, an object of that kind, shows when it holds.
func denyUpdates(ctx context.Context, ns, apiGroup, resource string, probe client.Object) (lift func()) {
	GinkgoHelper()
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "freeze-" + resource + "-" + ns},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{apiGroup}, APIVersions: []string{"v1"}, Resources: []string{resource}},
				},
			}}},
			Validations: []admissionregistrationv1.Validation{{Expression: "false", Message: "frozen"}},
		},
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: policy.Name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        policy.Name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources: &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}},
		},
	}
	Expect(k8s.Create(ctx, policy)).To(Succeed())
	Expect(k8s.Create(ctx, binding)).To(Succeed())
	lift = func() {
		_ = k8s.Delete(context.Background(), binding)
		_ = k8s.Delete(context.Background(), policy)
	}
	DeferCleanup(lift)
	// The policy takes effect once the API server has loaded it.
	Eventually(func() error {
		if err := k8s.Create(ctx, probe.DeepCopyObject().(client.Object)); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		obj := probe.DeepCopyObject().(client.Object)
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(probe), obj); err != nil {
			return err
		}
		obj.SetLabels(map[string]string{"touched": time.Now().Format("150405.000000")})
		if err := k8s.Update(ctx, obj); err == nil {
			return fmt.Errorf("updates are not denied yet")
		}
		return nil
	}).Should(Succeed())
	return lift
}

// failingRelease is a consent ledger that counts the transitions recorded through it and whose
// releases fail as if the receiver were unreachable.
type failingRelease struct {
	controllers.ConsentLedger
	records int
}

func (l *failingRelease) Record(ctx context.Context, req consentv1.RecordRequest) (consentv1.State, error) {
	l.records++
	return l.ConsentLedger.Record(ctx, req)
}

func (l *failingRelease) Release(context.Context, consentv1.ReleaseRequest) error {
	return ledger.ErrUnavailable
}

// askingLedger stands for a receiver that never answers ("silent": every call ends as the
// client's timeout does), refuses to record ("refusing": it answers reads) or also answers
// reads with a record the operator cannot use ("garbled"), noting each call made before the
// collector was lowered.
type askingLedger struct {
	controllers.ConsentLedger
	receiver string
	lowered  func() error
	calls    []string
	early    []string
}

func (l *askingLedger) asked(call string) {
	l.calls = append(l.calls, call)
	if err := l.lowered(); err != nil {
		l.early = append(l.early, fmt.Sprintf("%s: %v", call, err))
	}
}

func (l *askingLedger) State(ctx context.Context, instance, namespace string) (consentv1.State, error) {
	l.asked("State")
	switch l.receiver {
	case "silent":
		return consentv1.State{}, fmt.Errorf("%w: context deadline exceeded (Client.Timeout exceeded while awaiting headers)", ledger.ErrUnavailable)
	case "garbled":
		s, err := l.ConsentLedger.State(ctx, instance, namespace)
		if err == nil && len(s.Timeline) > 0 {
			s.Timeline[0].Tier = "Everything" // a record the operator cannot use
		}
		return s, err
	}
	return l.ConsentLedger.State(ctx, instance, namespace)
}

func (l *askingLedger) Record(_ context.Context, req consentv1.RecordRequest) (consentv1.State, error) {
	l.asked("Record " + string(req.Transition.Tier))
	if l.receiver == "silent" {
		return consentv1.State{}, fmt.Errorf("%w: context deadline exceeded (Client.Timeout exceeded while awaiting headers)", ledger.ErrUnavailable)
	}
	return consentv1.State{}, fmt.Errorf("%w: 422 the transition is not allowed", ledger.ErrRejected)
}

// claimWithoutUID releases the policy's instance record and claims it again for the policy by
// name only, at tier, as an operator that sent no UIDs did.
func claimWithoutUID(ctx context.Context, ns, name string, tier consentv1.Tier) {
	GinkgoHelper()
	instance := instanceOf(ns, name)
	// (A release would close the record: the earlier operator's claim is the owner's row as it
	// wrote it, by name only, with the tier in force unchanged.)
	Expect(ledgerOf(ctx, instance).Timeline.Current()).To(Equal(tier))
	_, err := rcv.DB.Exec(ctx, `UPDATE consent_instances SET owner_uid = NULL, version = version + 1 WHERE instance_id = $1`, instance)
	Expect(err).NotTo(HaveOccurred())
}

// unreachableLedger is a consent ledger whose receiver does not answer (a closed loopback port).
func unreachableLedger() *ledger.Client {
	l, err := ledger.New("https://127.0.0.1:1", testCluster, pki.NewHolder(mustIssuer()), nil)
	Expect(err).NotTo(HaveOccurred())
	return l
}

// failingRecords is a consent ledger that answers reads and fails every write with err.
type failingRecords struct {
	controllers.ConsentLedger
	err error
}

func (l *failingRecords) Record(context.Context, consentv1.RecordRequest) (consentv1.State, error) {
	return consentv1.State{}, l.err
}

// racingLedger runs race once, after its first read of a record: another policy acting between
// a reconcile's read and its write.
type racingLedger struct {
	controllers.ConsentLedger
	race func()
}

func (l *racingLedger) State(ctx context.Context, instance, namespace string) (consentv1.State, error) {
	st, err := l.ConsentLedger.State(ctx, instance, namespace)
	if l.race != nil {
		l.race()
		l.race = nil
	}
	return st, err
}
