/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/ledger"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
)

func metricValue(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func credentials(ctx context.Context, ns, policy string) *corev1.Secret {
	s := &corev1.Secret{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor(policy).Credentials}, s)).To(Succeed())
	return s
}

func serialOf(s *corev1.Secret) string {
	c, err := pki.ParseCertificatePEM(s.Data["tls.crt"])
	Expect(err).NotTo(HaveOccurred())
	return pki.SerialHex(c)
}

var _ = Describe("Collector credentials", func() {
	ctx := context.Background()

	It("rotates exactly once per new rotate-requested-at value", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "manual")
		first := serialOf(credentials(ctx, ns, "manual"))
		rotationsBefore := metricValue(metrics.Rotations.WithLabelValues(pki.IssueRequested))

		annotate(ctx, ns, "manual", v1.AnnotationRotateRequestedAt, "2026-11-28T10:00:00Z")
		Eventually(func() string { return getPolicy(ctx, ns, "manual").Status.LastHandledRotateRequest }).Should(Equal("2026-11-28T10:00:00Z"))
		second := serialOf(credentials(ctx, ns, "manual"))
		Expect(second).NotTo(Equal(first))
		p := getPolicy(ctx, ns, "manual")
		Expect(p.Status.Credentials.Revision).To(Equal(int64(2)))
		Expect(p.Status.Credentials.SerialNumber).To(Equal(second))
		Expect(p.Status.Credentials.LastIssueReason).To(Equal(pki.IssueRequested))

		By("not rotating again for the same value")
		requestReconcile(ctx, ns, "manual")
		requestReconcile(ctx, ns, "manual")
		Expect(serialOf(credentials(ctx, ns, "manual"))).To(Equal(second))
		Expect(metricValue(metrics.Rotations.WithLabelValues(pki.IssueRequested)) - rotationsBefore).To(Equal(1.0))

		By("rotating once more for a new value")
		annotate(ctx, ns, "manual", v1.AnnotationRotateRequestedAt, "2026-11-28T11:00:00Z")
		Eventually(func() int64 { return getPolicy(ctx, ns, "manual").Status.Credentials.Revision }).Should(Equal(int64(3)))
		Expect(eventReasons(ctx, ns, "manual")).To(ContainElement("CredentialsRotated"))
		Expect(conditionStatus(ctx, ns, "manual", v1.ConditionReady)()).To(Equal("Ready=True/Enforced"), "rotation does not restart the collector")
	})

	It("rotates on schedule, not before, and reports when it is next due", func() {
		ns := newNamespace(ctx)
		p := eventLevelPolicy(ns, "sched")
		p.Spec.Credentials.RotationPeriod = &metav1.Duration{Duration: 2 * time.Hour}
		p.Spec.Contract.ExpiresAt = nil
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(func() *v1.CredentialsStatus { return getPolicy(ctx, ns, "sched").Status.Credentials }).ShouldNot(BeNil())
		creds := getPolicy(ctx, ns, "sched").Status.Credentials
		Expect(creds.NotAfter.Sub(creds.NotBefore.Time)).To(BeNumerically(">=", 3*time.Hour), "lifetime is 1.5 rotation periods")
		renewal := creds.RenewalTime.Time
		Expect(renewal).To(Equal(creds.NotBefore.Add(2 * time.Hour)))
		Expect(metricValue(metrics.CertExpiry.WithLabelValues(ns, "sched"))).To(Equal(float64(creds.NotAfter.Unix())))
		Expect(metricValue(metrics.CertRenewal.WithLabelValues(ns, "sched"))).To(Equal(float64(creds.RenewalTime.Unix())))
		first := creds.SerialNumber

		fakeClock.SetTime(renewal.Add(-time.Second))
		requestReconcile(ctx, ns, "sched")
		Expect(getPolicy(ctx, ns, "sched").Status.Credentials.SerialNumber).To(Equal(first), "no rotation before it is due")

		fakeClock.SetTime(renewal)
		requestReconcile(ctx, ns, "sched")
		Eventually(func() string { return getPolicy(ctx, ns, "sched").Status.Credentials.SerialNumber }).ShouldNot(Equal(first))
		creds = getPolicy(ctx, ns, "sched").Status.Credentials
		Expect(creds.Revision).To(Equal(int64(2)))
		Expect(creds.LastIssueReason).To(Equal(pki.IssueScheduled))
		Expect(creds.RenewalTime.Time).To(BeTemporally(">", renewal))
		second := creds.SerialNumber
		requestReconcile(ctx, ns, "sched")
		Expect(getPolicy(ctx, ns, "sched").Status.Credentials.SerialNumber).To(Equal(second), "exactly one rotation when due")
	})

	DescribeTable("reissues tampered credentials, with the reason in status",
		func(tamper func(ctx context.Context, s *corev1.Secret), wantReason string) {
			ns := newNamespace(ctx)
			readyPolicy(ctx, ns, "tamper")
			s := credentials(ctx, ns, "tamper")
			before := serialOf(s)
			tamper(ctx, s)
			Eventually(func() string {
				return getPolicy(ctx, ns, "tamper").Status.Credentials.LastIssueReason
			}).Should(Equal(wantReason))
			after := credentials(ctx, ns, "tamper")
			Expect(serialOf(after)).NotTo(Equal(before))
			_, problem := mustIssuer().CheckClient(after.Data, instanceOf(ns, "tamper"), policyRefOf(ctx, ns, "tamper"), fakeClock.Now())
			Expect(problem).To(BeEmpty())
		},
		Entry("Secret deleted", func(ctx context.Context, s *corev1.Secret) {
			Expect(k8s.Delete(ctx, s)).To(Succeed())
		}, pki.IssueSecretMissing),
		Entry("key of another certificate", func(ctx context.Context, s *corev1.Secret) {
			other, err := mustIssuer().IssueClient(instanceOf(s.Namespace, "tamper"), policyRefOf(ctx, s.Namespace, "tamper"), time.Hour, fakeClock.Now(), nil)
			Expect(err).NotTo(HaveOccurred())
			s.Data["tls.key"] = other.KeyPEM
			Expect(k8s.Update(ctx, s)).To(Succeed())
		}, pki.IssueKeyMismatch),
		Entry("certificate naming another instance", func(ctx context.Context, s *corev1.Secret) {
			other, err := mustIssuer().IssueClient("someone-else", policyRefOf(ctx, s.Namespace, "tamper"), time.Hour, fakeClock.Now(), nil)
			Expect(err).NotTo(HaveOccurred())
			s.Data["tls.crt"], s.Data["tls.key"] = other.CertPEM, other.KeyPEM
			Expect(k8s.Update(ctx, s)).To(Succeed())
		}, pki.IssueWrongIdentity),
		Entry("certificate naming another policy of the instance (one deleted and created again)", func(ctx context.Context, s *corev1.Secret) {
			ref := policyRefOf(ctx, s.Namespace, "tamper")
			ref.UID = "00000000-0000-0000-0000-000000000002"
			other, err := mustIssuer().IssueClient(instanceOf(s.Namespace, "tamper"), ref, time.Hour, fakeClock.Now(), nil)
			Expect(err).NotTo(HaveOccurred())
			s.Data["tls.crt"], s.Data["tls.key"] = other.CertPEM, other.KeyPEM
			Expect(k8s.Update(ctx, s)).To(Succeed())
		}, pki.IssueWrongIdentity),
		Entry("certificate from another issuer", func(ctx context.Context, s *corev1.Secret) {
			ca, err := pkitest.NewCA("rogue", pkitest.Options{})
			Expect(err).NotTo(HaveOccurred())
			rogue, err := pki.LoadIssuer(ca.Secret(), fakeClock.Now())
			Expect(err).NotTo(HaveOccurred())
			other, err := rogue.IssueClient(instanceOf(s.Namespace, "tamper"), policyRefOf(ctx, s.Namespace, "tamper"), time.Hour, fakeClock.Now(), nil)
			Expect(err).NotTo(HaveOccurred())
			s.Data["tls.crt"], s.Data["tls.key"] = other.CertPEM, other.KeyPEM
			Expect(k8s.Update(ctx, s)).To(Succeed())
		}, pki.IssueWrongIssuer),
		Entry("expired certificate", func(ctx context.Context, s *corev1.Secret) {
			old, err := mustIssuer().IssueClient(instanceOf(s.Namespace, "tamper"), policyRefOf(ctx, s.Namespace, "tamper"), time.Hour, fakeClock.Now().Add(-48*time.Hour), nil)
			Expect(err).NotTo(HaveOccurred())
			s.Data["tls.crt"], s.Data["tls.key"] = old.CertPEM, old.KeyPEM
			Expect(k8s.Update(ctx, s)).To(Succeed())
		}, pki.IssueExpired),
		Entry("garbage in the Secret", func(ctx context.Context, s *corev1.Secret) {
			s.Data["tls.crt"] = []byte("-----BEGIN CERTIFICATE-----\n\x00\xff\n-----END CERTIFICATE-----\n")
			Expect(k8s.Update(ctx, s)).To(Succeed())
		}, pki.IssueMalformed),
	)

	It("keeps a pseudonym key whose labels were edited rather than replacing it", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "keep")
		key := &corev1.Secret{}
		keyRef := client.ObjectKey{Namespace: ns, Name: resources.NamesFor("keep").PseudonymKey}
		Expect(k8s.Get(ctx, keyRef, key)).To(Succeed())
		original := key.Data[resources.PseudonymKeyKey]
		key.Labels = nil
		Expect(k8s.Update(ctx, key)).To(Succeed())
		Eventually(func() map[string]string { _ = k8s.Get(ctx, keyRef, key); return key.Labels }).Should(HaveKeyWithValue(resources.LabelManagedBy, resources.ManagedByValue))
		Expect(key.Data[resources.PseudonymKeyKey]).To(Equal(original))
	})

	It("keeps a certificate whose Secret's labels were edited rather than issuing a new one", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "keepcert")
		ref := client.ObjectKey{Namespace: ns, Name: resources.NamesFor("keepcert").Credentials}
		s := &corev1.Secret{}
		Expect(k8s.Get(ctx, ref, s)).To(Succeed())
		original, revision := s.Data["tls.crt"], s.Annotations[resources.AnnotationRevision]
		// Unlabelled, the Secret leaves the manager's cache: its next reconcile sees none there.
		s.Labels = nil
		Expect(k8s.Update(ctx, s)).To(Succeed())
		requestReconcile(ctx, ns, "keepcert")
		Eventually(func() map[string]string { _ = k8s.Get(ctx, ref, s); return s.Labels }).Should(HaveKeyWithValue(resources.LabelManagedBy, resources.ManagedByValue))
		Expect(s.Data["tls.crt"]).To(Equal(original), "the collector's certificate is kept")
		Expect(s.Annotations[resources.AnnotationRevision]).To(Equal(revision))
		Expect(strconv.FormatInt(getPolicy(ctx, ns, "keepcert").Status.Credentials.Revision, 10)).To(Equal(revision))
	})

	DescribeTable("judges an object that has the name even when the API server refuses the create before looking for it",
		func(squat func(resources.Names, string) client.Object, quotaOn corev1.ResourceName) {
			ns := newNamespace(ctx)
			p := eventLevelPolicy(ns, "refused")
			names := resources.NamesFor(p.Name)
			theirs := squat(names, ns)
			Expect(k8s.Create(ctx, theirs)).To(Succeed())
			if theirs.GetName() != names.PseudonymKey {
				// The instance's key, as a restore would bring it back: the operator's labels, no owner.
				Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: names.PseudonymKey, Namespace: ns, Labels: resources.Labels(p, "pseudonym-key")},
					Data: map[string][]byte{resources.PseudonymKeyKey: make([]byte, resources.PseudonymKeyLen)}})).To(Succeed())
			}
			// A quota used up (its status written here, as the quota controller would): the API
			// server refuses every create of that kind in the namespace before it looks for an
			// existing object.
			quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "used-up", Namespace: ns},
				Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{quotaOn: resource.MustParse("2")}}}
			Expect(k8s.Create(ctx, quota)).To(Succeed())
			quota.Status = corev1.ResourceQuotaStatus{Hard: quota.Spec.Hard, Used: quota.Spec.Hard}
			Expect(k8s.Status().Update(ctx, quota)).To(Succeed())
			Eventually(func() error {
				again := squat(names, ns)
				return k8s.Create(ctx, again)
			}).Should(WithTransform(apierrors.IsForbidden, BeTrue()), "the premise: a create of that name is refused, not found to exist")
			Expect(k8s.Create(ctx, p)).To(Succeed())
			DeferCleanup(func() { _ = k8s.Delete(ctx, getPolicy(ctx, ns, p.Name)) })
			Eventually(conditionStatus(ctx, ns, p.Name, v1.ConditionStalled)).Should(Equal("Stalled=True/NameTaken"))
			Expect(anyConditionSays(ctx, ns, p.Name, "refusing to take it over")()).To(BeTrue())
			live := theirs.DeepCopyObject().(client.Object)
			Expect(k8s.Get(ctx, client.ObjectKeyFromObject(theirs), live)).To(Succeed())
			Expect(live.GetOwnerReferences()).To(BeEmpty())
			Expect(live.GetResourceVersion()).To(Equal(theirs.GetResourceVersion()), "left as it was")
		},
		Entry("the credentials", func(n resources.Names, ns string) client.Object {
			return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: n.Credentials, Namespace: ns}, Data: map[string][]byte{"password": []byte("theirs")}}
		}, corev1.ResourceSecrets),
		Entry("the pseudonym key", func(n resources.Names, ns string) client.Object {
			return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: n.PseudonymKey, Namespace: ns}, Data: map[string][]byte{"password": []byte("theirs")}}
		}, corev1.ResourceSecrets),
		Entry("the collector's ServiceAccount", func(n resources.Names, ns string) client.Object {
			return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: n.ServiceAccount, Namespace: ns}}
		}, corev1.ResourceName("count/serviceaccounts")),
	)

	It("writes nothing into a credentials Secret another policy controls, not even a new CA bundle", func() {
		ns := newNamespace(ctx)
		p := eventLevelPolicy(ns, "previous")
		names := resources.NamesFor(p.Name)
		// What a deleted policy of the same name leaves until the garbage collector comes: its
		// labels, its owner reference, a good certificate, and the bundle of an older issuer.
		cc, err := mustIssuer().IssueClient(instanceOf(ns, p.Name), pki.PolicyRef{Cluster: testCluster, Namespace: ns, Name: p.Name, UID: "00000000-0000-0000-0000-000000000001"}, time.Hour, fakeClock.Now(), nil)
		Expect(err).NotTo(HaveOccurred())
		old := map[string][]byte{pki.KeyCert: cc.CertPEM, pki.KeyKey: cc.KeyPEM, pki.KeyCA: []byte("an older bundle")}
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: names.Credentials, Namespace: ns, Labels: resources.Labels(p, "credentials"),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: v1.GroupVersion.String(), Kind: "TelemetryPolicy", Name: p.Name,
				UID: "00000000-0000-0000-0000-000000000001", Controller: ptr.To(true)}}},
			Type: corev1.SecretTypeTLS, Data: old})).To(Succeed())
		Expect(k8s.Create(ctx, p)).To(Succeed())
		DeferCleanup(func() { _ = k8s.Delete(ctx, getPolicy(ctx, ns, p.Name)) })
		Eventually(conditionStatus(ctx, ns, p.Name, v1.ConditionStalled)).Should(Equal("Stalled=True/NameTaken"))
		live := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Credentials}, live)).To(Succeed())
		Expect(live.Data).To(Equal(old))
	})

	It("re-issues, while suspended, a certificate an earlier operator issued naming no policy, and changes nothing else", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "upgraded")
		dep, err := deployment(ctx, ns, "upgraded")
		Expect(err).NotTo(HaveOccurred())
		updatePolicy(ctx, ns, "upgraded", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true })
		Eventually(conditionStatus(ctx, ns, "upgraded", v1.ConditionReady)).Should(HaveSuffix("/Suspended"))

		By("the certificate an earlier operator issued: the instance only, which the receiver refuses")
		legacy, err := fleetCA.ClientCertWithURIs(instanceOf(ns, "upgraded"), pki.IdentityURI(instanceOf(ns, "upgraded")))
		Expect(err).NotTo(HaveOccurred())
		s := credentials(ctx, ns, "upgraded")
		s.Data[pki.KeyCert], s.Data[pki.KeyKey] = legacy.CertPEM, legacy.KeyPEM
		Expect(k8s.Update(ctx, s)).To(Succeed())
		requestReconcile(ctx, ns, "upgraded")
		Eventually(func() string {
			return credentials(ctx, ns, "upgraded").Annotations[resources.AnnotationIssueReason]
		}).Should(Equal(pki.IssueWrongIdentity))
		_, problem := mustIssuer().CheckClient(credentials(ctx, ns, "upgraded").Data, instanceOf(ns, "upgraded"), policyRefOf(ctx, ns, "upgraded"), fakeClock.Now())
		Expect(problem).To(BeEmpty(), "the running collector's certificate names its policy again")
		Eventually(func() string { return getPolicy(ctx, ns, "upgraded").Status.Credentials.LastIssueReason }).Should(Equal(pki.IssueWrongIdentity),
			"and status describes the certificate in use")
		after, err := deployment(ctx, ns, "upgraded")
		Expect(err).NotTo(HaveOccurred())
		Expect(after.Spec.Template).To(Equal(dep.Spec.Template), "nothing else changes while suspended")
		Expect(getPolicy(ctx, ns, "upgraded").Spec.Suspend).To(BeTrue())
	})

	It("replaces its credentials Secret when it comes back with another type", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "retyped")
		ref := client.ObjectKey{Namespace: ns, Name: resources.NamesFor("retyped").Credentials}
		// A Secret's type cannot change in place: the operator's, deleted and made again as Opaque
		// with its labels and owner (a restore, a hand edit). The operator may win the race and
		// make its own first; the loop waits for the Opaque one to exist once.
		Eventually(func() error {
			s := &corev1.Secret{}
			if err := k8s.Get(ctx, ref, s); err != nil {
				return err
			}
			if s.Type == corev1.SecretTypeOpaque {
				return nil
			}
			if err := k8s.Delete(ctx, s); err != nil {
				return err
			}
			return k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: s.Labels, OwnerReferences: s.OwnerReferences},
				Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"tls.crt": []byte("not a certificate")}})
		}).Should(Succeed())
		Eventually(func() corev1.SecretType { s := &corev1.Secret{}; _ = k8s.Get(ctx, ref, s); return s.Type }).Should(Equal(corev1.SecretTypeTLS))
		s := credentials(ctx, ns, "retyped")
		_, problem := mustIssuer().CheckClient(s.Data, instanceOf(ns, "retyped"), policyRefOf(ctx, ns, "retyped"), fakeClock.Now())
		Expect(problem).To(BeEmpty())
	})
})

// policyRefOf is how the operator names the policy in its collector's certificate.
func policyRefOf(ctx context.Context, ns, name string) pki.PolicyRef {
	return pki.PolicyRef{Cluster: testCluster, Namespace: ns, Name: name, UID: string(getPolicy(ctx, ns, name).UID)}
}

// noWatch lets the manager's cached client be intercepted; the reconciler never watches.
type noWatch struct{ client.Client }

func (noWatch) Watch(context.Context, client.ObjectList, ...client.ListOption) (watch.Interface, error) {
	return nil, errorf("watch is not supported here")
}

// testLedger is a consent ledger client for reconcilers a test builds by hand.
func testLedger() *ledger.Client {
	l, err := ledger.New(rcv.URL, testCluster, pki.NewHolder(mustIssuer()), nil)
	Expect(err).NotTo(HaveOccurred())
	return l
}

func mustIssuer() *pki.Issuer {
	iss, err := pki.LoadIssuer(fleetCA.Secret(), fakeClock.Now())
	Expect(err).NotTo(HaveOccurred())
	return iss
}

var _ = Describe("Operational guarantees", func() {
	ctx := context.Background()

	It("times each reconcile step, for telling the API server's share from the receiver's", func() {
		count := func(step string) uint64 {
			m := &dto.Metric{}
			Expect(metrics.StepDuration.WithLabelValues(step).(prometheus.Metric).Write(m)).To(Succeed())
			return m.GetHistogram().GetSampleCount()
		}
		before := map[string]uint64{}
		for _, step := range []string{"consent", "consent-ledger", "workload", "status"} {
			before[step] = count(step)
		}
		readyPolicy(ctx, newNamespace(ctx), "timed")
		for step, n := range before {
			Expect(count(step)).To(BeNumerically(">", n), step)
		}
	})

	It("makes zero writes when reconciling an unchanged policy", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "quiet")

		By("calling Reconcile directly through a client that counts writes")
		var counted []string
		count := func(verb string) func(obj client.Object) {
			return func(obj client.Object) { counted = append(counted, fmt.Sprintf("%s %T %s", verb, obj, obj.GetName())) }
		}
		c := interceptor.NewClient(noWatch{mgr.GetClient()}, interceptor.Funcs{
			Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				count("create")(obj)
				return cl.Create(ctx, obj, opts...)
			},
			Update: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				count("update")(obj)
				return cl.Update(ctx, obj, opts...)
			},
			Patch: func(ctx context.Context, cl client.WithWatch, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
				count("patch")(obj)
				return cl.Patch(ctx, obj, p, opts...)
			},
			Delete: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				count("delete")(obj)
				return cl.Delete(ctx, obj, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, cl client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
				count("update/" + sub)(obj)
				return cl.SubResource(sub).Update(ctx, obj, opts...)
			},
			SubResourcePatch: func(ctx context.Context, cl client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				count("patch/" + sub)(obj)
				return cl.SubResource(sub).Patch(ctx, obj, p, opts...)
			},
		})
		events := &countingRecorder{}
		r := &controllers.TelemetryPolicyReconciler{
			Client: c, APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(), Recorder: events,
			Clock: fakeClock, Issuer: mustIssuer(), Metrics: controllers.NewMetrics(nil), Ledger: testLedger(),
			Options: controllers.Options{CollectorImage: "telemetry-collector:test", MinCloudTermsVersion: "2024-01-01", Endpoints: testEndpoints()},
		}
		req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "quiet"}}
		before, err := deployment(ctx, ns, "quiet")
		Expect(err).NotTo(HaveOccurred())
		for i := range 3 {
			res, err := r.Reconcile(ctx, req)
			Expect(err).NotTo(HaveOccurred())
			Expect(res.RequeueAfter).To(BeNumerically(">", 0), "requeued for the trial expiry or renewal, not polled")
			if i == 0 {
				// A process that never wrote the collector writes its spec once (an edit made
				// anywhere in it while no process watched is put back); unchanged, the API server
				// stores nothing.
				Expect(counted).To(Equal([]string{"update *v1.Deployment " + resources.NamesFor("quiet").Deployment}))
				counted = nil
			}
		}
		Expect(counted).To(BeEmpty())
		Expect(events.n).To(BeZero())
		after, err := deployment(ctx, ns, "quiet")
		Expect(err).NotTo(HaveOccurred())
		Expect(after.ResourceVersion).To(Equal(before.ResourceVersion), "nothing stored")

		By("and the running manager stays quiet too")
		n := writes.total.Load()
		Consistently(func() []string { return writes.sinceIn(n, ns) }, "2s").Should(BeEmpty())
	})

	It("issues nothing from an issuer about to expire, and stalls once instead of re-issuing in a loop", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "dying")
		names := resources.NamesFor("dying")
		before := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Credentials}, before)).To(Succeed())

		By("a reconciler whose issuer has 12 hours left, for a certificate it did not sign (due at once)")
		ca := mustCA(pkitest.Options{NotBefore: fakeClock.Now().Add(-24 * time.Hour), NotAfter: fakeClock.Now().Add(12 * time.Hour)})
		dying, err := pki.LoadIssuer(ca.Secret(), fakeClock.Now())
		Expect(err).NotTo(HaveOccurred())
		var secretWrites []string
		c := interceptor.NewClient(noWatch{mgr.GetClient()}, interceptor.Funcs{
			Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				if _, ok := obj.(*corev1.Secret); ok {
					secretWrites = append(secretWrites, "create "+obj.GetName())
				}
				return cl.Create(ctx, obj, opts...)
			},
			Update: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if _, ok := obj.(*corev1.Secret); ok {
					secretWrites = append(secretWrites, "update "+obj.GetName())
				}
				return cl.Update(ctx, obj, opts...)
			},
		})
		r := &controllers.TelemetryPolicyReconciler{
			Client: c, APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(), Recorder: &countingRecorder{},
			Clock: fakeClock, Issuer: dying, Metrics: controllers.NewMetrics(nil), Ledger: testLedger(),
			Options: controllers.Options{CollectorImage: "telemetry-collector:test", MinCloudTermsVersion: "2024-01-01", Endpoints: testEndpoints(),
				IssuerMinRemaining: 24 * time.Hour},
		}
		req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "dying"}}
		for range 3 {
			_, err := r.Reconcile(ctx, req)
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(secretWrites).To(BeEmpty(), "no certificate may be issued from an issuer within its floor")
		p := getPolicy(ctx, ns, "dying")
		Expect(condition(p, v1.ConditionCredentialsReady)).To(And(HaveField("Reason", "IssuerExpiring"), HaveField("Message", ContainSubstring("rotate the issuer"))))
		after := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Credentials}, after)).To(Succeed())
		Expect(after.Data["tls.crt"]).To(Equal(before.Data["tls.crt"]), "the certificate the collector has is kept")

		By("with the floor below the issuer's remaining life, it issues")
		r.Options.IssuerMinRemaining = time.Hour
		_, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(secretWrites).NotTo(BeEmpty())
	})

	It("requeues for the trial's expiry (or the ledger's verification), not the next resync", func() {
		ns := newNamespace(ctx)
		p := eventLevelPolicy(ns, "requeue")
		expires := metav1.NewTime(fakeClock.Now().Add(90 * time.Minute))
		p.Spec.Contract.ExpiresAt = &expires
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "requeue", v1.ConditionCredentialsReady)).Should(Equal("CredentialsReady=True/Valid"))
		// A collector not running yet has its RBAC objects checked again soon: it runs here.
		rollOutUntilReady(ctx, ns, "requeue")
		r := &controllers.TelemetryPolicyReconciler{
			Client: k8s, APIReader: k8s, Scheme: mgr.GetScheme(), Clock: fakeClock, Issuer: mustIssuer(), Ledger: testLedger(),
			Metrics: controllers.NewMetrics(nil), Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
		}
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "requeue"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(res.RequeueAfter).To(Equal(expires.Sub(fakeClock.Now())))

		By("reading the consent record back every --ledger-resync when that comes first")
		r.Options.LedgerResync = 10 * time.Minute
		res, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "requeue"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(res.RequeueAfter).To(Equal(10 * time.Minute))

		By("checking the collector's RBAC (not watched) every --collector-rbac-resync when that comes first")
		r.Options.LedgerResync, r.Options.CollectorRBACResync = 24*time.Hour, 5*time.Minute
		res, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "requeue"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(res.RequeueAfter).To(And(BeNumerically(">=", 5*time.Minute), BeNumerically("<", 5*time.Minute+30*time.Second)),
			"due after the resync plus a fixed spread of up to a tenth of it")
	})

	It("reads a starting collector's RBAC objects again once their last check is 30 s old, or at a shorter resync", func() {
		ns := newNamespace(ctx)
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "starting"))).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "starting", v1.ConditionCredentialsReady)).Should(Equal("CredentialsReady=True/Valid"))
		// No Deployment controller runs here: the collector is never available.
		r := &controllers.TelemetryPolicyReconciler{
			Client: k8s, APIReader: k8s, Scheme: mgr.GetScheme(), Clock: fakeClock, Issuer: mustIssuer(), Ledger: testLedger(),
			Metrics: controllers.NewMetrics(nil), Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
		}
		req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "starting"}}
		sa := client.ObjectKey{Namespace: ns, Name: resources.NamesFor("starting").ServiceAccount}
		saExists := func() bool { return !apierrors.IsNotFound(k8s.Get(ctx, sa, &corev1.ServiceAccount{})) }
		_, err := r.Reconcile(ctx, req) // this reconciler has no record of a check: it checks
		Expect(err).NotTo(HaveOccurred())

		By("a reconcile right after the check, the collector still starting: no read, requeued for when the check is 30 s old")
		Expect(k8s.Delete(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa.Name}})).To(Succeed())
		res, err := r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.RequeueAfter).To(Equal(30 * time.Second))
		Expect(saExists()).To(BeFalse())

		By("30 s later, the collector still not running: read and put back")
		fakeClock.Step(30 * time.Second)
		_, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(saExists()).To(BeTrue())

		By("a resync shorter than 30 s comes first")
		r.Options.CollectorRBACResync = 10 * time.Second
		res, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.RequeueAfter).To(And(BeNumerically(">=", 10*time.Second), BeNumerically("<=", 11*time.Second)))
	})

	It("rolls the collector out only in a reconcile that decided on the same read of it whether to check its RBAC objects", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "oneread")
		rollOutUntilReady(ctx, ns, "oneread")
		// Deployment reads from the third of a reconcile on see an edit that landed meanwhile
		// (a copy: the API server's object, which the suite's manager also reconciles, is left
		// alone). The first is the downgrade guard's; the second the workload step's.
		var deploymentReads, rbacReads, deploymentWrites int
		editFrom := 0
		metaEdit := false // every read shows a label removed and a field the operator leaves unset
		c := interceptor.NewClient(noWatch{k8s}, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if err := c.Get(ctx, key, obj, opts...); err != nil {
					return err
				}
				switch o := obj.(type) {
				case *appsv1.Deployment:
					if deploymentReads++; editFrom > 0 && deploymentReads >= editFrom {
						o.Spec.Replicas = ptr.To(int32(2))
					}
					if metaEdit {
						delete(o.Labels, resources.LabelPartOf)
						o.Spec.Template.Spec.NodeSelector = map[string]string{"pool": "tenant"}
					}
				case *corev1.ServiceAccount, *rbacv1.Role, *rbacv1.RoleBinding:
					rbacReads++
				}
				return nil
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if _, ok := obj.(*appsv1.Deployment); ok {
					deploymentWrites++
					return nil // as if written: the API server's object stays as it is
				}
				return c.Update(ctx, obj, opts...)
			},
		})
		r := &controllers.TelemetryPolicyReconciler{
			Client: c, APIReader: c, Scheme: mgr.GetScheme(), Clock: fakeClock, Issuer: mustIssuer(), Ledger: testLedger(),
			Metrics: controllers.NewMetrics(nil), Options: controllers.Options{CollectorImage: "telemetry-collector:test", LedgerResync: 24 * time.Hour, CollectorRBACResync: 24 * time.Hour, Endpoints: testEndpoints()},
		}
		req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "oneread"}}
		_, err := r.Reconcile(ctx, req) // this reconciler has no record of a check: it checks
		Expect(err).NotTo(HaveOccurred())
		Expect(rbacReads).To(BeNumerically(">", 0))

		By("an edit seen by a later read of the same reconcile is not rolled out past the RBAC decision")
		deploymentReads, rbacReads, deploymentWrites, editFrom = 0, 0, 0, 3
		_, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		if deploymentWrites > 0 {
			Expect(rbacReads).To(BeNumerically(">", 0), "the collector was rolled out (%d Deployment writes) without its RBAC objects being read", deploymentWrites)
		}

		By("an edit of its labels and of a field the operator leaves unset is rolled back only with the RBAC objects checked")
		deploymentReads, rbacReads, deploymentWrites, editFrom, metaEdit = 0, 0, 0, 0, true
		_, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(deploymentWrites).To(BeNumerically(">", 0))
		Expect(rbacReads).To(BeNumerically(">", 0), "the collector was rolled back (%d Deployment writes) without its RBAC objects being read", deploymentWrites)
		metaEdit = false

		By("the next reconcile sees the edit from its first workload read: it checks the RBAC objects and rolls out")
		deploymentReads, rbacReads, deploymentWrites, editFrom = 0, 0, 0, 1
		_, err = r.Reconcile(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(deploymentWrites).To(BeNumerically(">", 0))
		Expect(rbacReads).To(BeNumerically(">", 0))
	})

	It("never caches or reads Secrets and ConfigMaps it does not manage", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "private")
		err := tenantSet.Get(ctx, client.ObjectKey{Namespace: ns, Name: "frontend-db"}, &corev1.Secret{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "the customer's database Secret is not in the manager's cache: %v", err)
		Expect(tenantSet.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor("private").Credentials}, &corev1.Secret{})).To(Succeed())
		By("reads of Secrets are routed to the namespace caches: outside them they are refused, never served cluster-wide")
		Expect(tenantSet.Get(ctx, client.ObjectKey{Namespace: "default", Name: "x"}, &corev1.Secret{})).To(MatchError(tenants.ErrNotOnboarded))
		By("reads of the kinds it never watches are refused by the routed client, not served from a cluster-wide cache")
		routed := tenantSet.Client(mgr.GetClient())
		for _, obj := range controllers.UncachedKinds() {
			Expect(routed.Get(ctx, client.ObjectKey{Namespace: ns, Name: "x"}, obj)).To(MatchError(ContainSubstring("read from the API server, not a cache")))
		}
		Expect(routed.List(ctx, &rbacv1.RoleList{}, client.InNamespace(ns))).To(MatchError(ContainSubstring("read from the API server, not a cache")))
	})

	It("gives the collector's ServiceAccount access to its own state object only", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "rbac")
		names := resources.NamesFor("rbac")
		asCollector := rest.CopyConfig(cfg)
		asCollector.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + names.ServiceAccount}
		c, err := client.New(asCollector, client.Options{Scheme: operator.NewScheme()})
		Expect(err).NotTo(HaveOccurred())

		state := &corev1.ConfigMap{}
		Expect(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.State}, state)).To(Succeed())
		state.Data = map[string]string{resources.StateKey: `{"cursor":1}`}
		Expect(c.Update(ctx, state)).To(Succeed())

		forbidden := func(err error) bool { return err != nil && strings.Contains(err.Error(), "forbidden") }
		Expect(forbidden(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Config}, &corev1.ConfigMap{}))).To(BeTrue())
		Expect(forbidden(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "frontend-db"}, &corev1.Secret{}))).To(BeTrue())
		Expect(forbidden(c.List(ctx, &corev1.ConfigMapList{}, client.InNamespace(ns)))).To(BeTrue())
		Expect(forbidden(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "rbac"}, &v1.TelemetryPolicy{}))).To(BeTrue())
	})
})

var _ = Describe("The fleet issuer", func() {
	ctx := context.Background()

	DescribeTable("refuses to start the manager with a message that says what is wrong",
		func(data map[string][]byte, want string) {
			name := fmt.Sprintf("issuer-%d", nsCounter.Add(1))
			if data != nil {
				Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: issuerNamespace}, Data: data})).To(Succeed())
			}
			_, err := operator.New(ctx, cfg, operator.Config{
				MetricsAddr: "0", ProbeAddr: "0", IssuerSecret: issuerNamespace + "/" + name, CollectorImage: "x",
				ReceiverURL: rcv.URL, ClusterName: testCluster,
			}, operator.Deps{Clock: fakeClock, Metrics: controllers.NewMetrics(nil)})
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring(want))
		},
		Entry("missing", nil, "not found: create it from the fleet CA"),
		Entry("malformed", map[string][]byte{"tls.crt": []byte("nope"), "tls.key": []byte("nope")}, "tls.crt: no PEM CERTIFICATE block found"),
		Entry("not a CA", mustCA(pkitest.Options{NotCA: true}).Secret(), "is not a CA"),
		Entry("expired", mustCA(pkitest.Options{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}).Secret(), "expired at"),
	)

	It("rejects a malformed --issuer-secret flag", func() {
		_, err := operator.New(ctx, cfg, operator.Config{IssuerSecret: "just-a-name", CollectorImage: "x"}, operator.Deps{Metrics: controllers.NewMetrics(nil)})
		Expect(err).To(MatchError(ContainSubstring("must be namespace/name")))
	})

	It("warns with an Event and a metric when the issuer nears expiry", func() {
		ca := mustCA(pkitest.Options{NotBefore: fakeClock.Now().Add(-time.Hour), NotAfter: fakeClock.Now().Add(10 * 24 * time.Hour)})
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "short-issuer", Namespace: issuerNamespace}, Data: ca.Secret()})).To(Succeed())
		iss, err := pki.LoadIssuer(ca.Secret(), fakeClock.Now())
		Expect(err).NotTo(HaveOccurred())
		m := controllers.NewMetrics(nil)
		rec := &countingRecorder{}
		mon := &controllers.IssuerMonitor{
			Issuers: pki.NewHolder(iss), SecretRef: types.NamespacedName{Namespace: issuerNamespace, Name: "short-issuer"}, Reader: k8s,
			Recorder: rec, Clock: fakeClock, Metrics: m, Warning: 30 * 24 * time.Hour,
		}
		Expect(mon.Check(ctx)).To(BeTrue())
		Expect(metricValue(m.IssuerNearExpiry)).To(Equal(1.0))
		Expect(metricValue(m.IssuerExpiry)).To(Equal(float64(ca.Cert.NotAfter.Unix())))
		Expect(rec.reasons).To(ConsistOf("IssuerNearExpiry"))
		mon.Warning = 24 * time.Hour
		Expect(mon.Check(ctx)).To(BeFalse())
		Expect(metricValue(m.IssuerNearExpiry)).To(Equal(0.0))
	})
})

func mustCA(o pkitest.Options) *pkitest.CA {
	ca, err := pkitest.NewCA("issuer under test", o)
	if err != nil {
		panic(err)
	}
	return ca
}
