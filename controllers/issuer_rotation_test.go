/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"context"
	"crypto/x509"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// credentialsOf reads a policy's credentials Secret from the API server.
func credentialsOf(ctx context.Context, ns, policy string) *corev1.Secret {
	GinkgoHelper()
	s := &corev1.Secret{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor(policy).Credentials}, s)).To(Succeed())
	return s
}

// signedBy reports whether the certificate in a credentials Secret chains to ca.
func signedBy(s *corev1.Secret, ca *pkitest.CA) bool {
	cert, err := pki.ParseCertificatePEM(s.Data[pki.KeyCert])
	if err != nil {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	_, err = cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: cert.NotBefore.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

func setIssuer(ctx context.Context, data map[string][]byte) {
	GinkgoHelper()
	s := &corev1.Secret{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: issuerNamespace, Name: "fleet-issuer"}, s)).To(Succeed())
	s.Data = data
	Expect(k8s.Update(ctx, s)).To(Succeed())
}

// validFrom is a start of validity in the past by both the suite's fake clock (the operator's
// checks) and the wall clock (the TLS peers').
func validFrom() time.Time {
	t := fakeClock.Now()
	if now := time.Now(); now.Before(t) {
		t = now
	}
	return t.Add(-time.Hour)
}

func bundle(cas ...*pkitest.CA) []byte {
	var b []byte
	for _, c := range cas {
		b = append(b, c.CertPEM...)
	}
	return b
}

var _ = Describe("Fleet issuer rotation", func() {
	ctx := context.Background()

	It("takes over without a restart: the bundle at once, certificates at their renewal, and a withdrawn root at once", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "renews")
		readyPolicy(ctx, ns, "waits")
		before := credentialsOf(ctx, ns, "renews")
		waitsBefore := credentialsOf(ctx, ns, "waits")
		Expect(signedBy(before, fleetCA)).To(BeTrue())

		next := mustCA(pkitest.Options{NotBefore: validFrom(), NotAfter: fakeClock.Now().Add(2 * 365 * 24 * time.Hour)})
		DeferCleanup(func() {
			// Back to the suite's issuer, and wait until this namespace's collectors are on it
			// again, so no re-issue spills into the next spec.
			setIssuer(ctx, fleetCA.Secret())
			for _, name := range []string{"renews", "waits"} {
				Eventually(func() bool { return signedBy(credentialsOf(ctx, ns, name), fleetCA) }).Should(BeTrue())
				Eventually(func() []byte { return credentialsOf(ctx, ns, name).Data[pki.KeyCA] }).Should(Equal(fleetCA.CertPEM))
			}
			rcv.TrustClientCAs(fleetCA.Cert)
		})
		// The receiver is told to trust both roots first, as an admin would, then the issuer
		// Secret gets the new CA with both roots in its bundle.
		rcv.TrustClientCAs(fleetCA.Cert, next.Cert)
		rotated := metricValue(metrics.IssuerReloads.WithLabelValues("rotated"))
		overlap := next.Secret()
		overlap[pki.KeyCA] = bundle(next, fleetCA)
		setIssuer(ctx, overlap)

		By("every collector gets the new bundle at once and keeps its certificate")
		Eventually(func() []byte { return credentialsOf(ctx, ns, "renews").Data[pki.KeyCA] }).Should(Equal(overlap[pki.KeyCA]))
		Eventually(func() []byte { return credentialsOf(ctx, ns, "waits").Data[pki.KeyCA] }).Should(Equal(overlap[pki.KeyCA]))
		Expect(credentialsOf(ctx, ns, "renews").Data[pki.KeyCert]).To(Equal(before.Data[pki.KeyCert]))
		Expect(credentialsOf(ctx, ns, "waits").Data[pki.KeyCert]).To(Equal(waitsBefore.Data[pki.KeyCert]))
		Expect(metricValue(metrics.IssuerReloads.WithLabelValues("rotated"))).To(Equal(rotated + 1))
		Expect(conditionStatus(ctx, ns, "renews", v1.ConditionReady)()).To(Equal("Ready=True/Enforced"))

		By("its next renewal is signed by the new issuer")
		annotate(ctx, ns, "renews", v1.AnnotationRotateRequestedAt, fakeClock.Now().Format(time.RFC3339))
		Eventually(func() bool { return signedBy(credentialsOf(ctx, ns, "renews"), next) }).Should(BeTrue())
		Eventually(conditionStatus(ctx, ns, "renews", v1.ConditionCredentialsReady)).Should(Equal("CredentialsReady=True/Valid"))

		By("an issuer inside the floor, or a bundle without its own certificate, is refused and the new issuer stays in use")
		refusedBefore := metricValue(metrics.IssuerReloads.WithLabelValues("refused"))
		dying := mustCA(pkitest.Options{NotBefore: validFrom(), NotAfter: fakeClock.Now().Add(time.Hour)})
		dyingData := dying.Secret()
		dyingData[pki.KeyCA] = bundle(dying, next)
		setIssuer(ctx, dyingData)
		Eventually(func() float64 { return metricValue(metrics.IssuerReloads.WithLabelValues("refused")) }).Should(Equal(refusedBefore + 1))
		replaced := next.Secret()
		replaced[pki.KeyCA] = dying.CertPEM // replaced instead of added to
		setIssuer(ctx, replaced)
		Eventually(func() float64 { return metricValue(metrics.IssuerReloads.WithLabelValues("refused")) }).Should(Equal(refusedBefore + 2))
		Consistently(func() []byte { return credentialsOf(ctx, ns, "waits").Data[pki.KeyCA] }, "1s").Should(Equal(overlap[pki.KeyCA]))

		By("a broken issuer Secret is refused and the new issuer stays in use")
		refused := metricValue(metrics.IssuerReloads.WithLabelValues("refused"))
		broken := next.Secret()
		broken[pki.KeyKey] = []byte("not a key")
		setIssuer(ctx, broken)
		Eventually(func() float64 { return metricValue(metrics.IssuerReloads.WithLabelValues("refused")) }).Should(Equal(refused + 1))
		annotate(ctx, ns, "renews", v1.AnnotationRotateRequestedAt, fakeClock.Now().Add(time.Second).Format(time.RFC3339))
		Eventually(func() string { return credentialsOf(ctx, ns, "renews").Annotations[resources.AnnotationRotateRequest] }).
			Should(Equal(fakeClock.Now().Add(time.Second).Format(time.RFC3339)))
		Expect(signedBy(credentialsOf(ctx, ns, "renews"), next)).To(BeTrue())

		By("ending the overlap (the old root leaves the bundle) re-issues what it signed at once")
		Expect(signedBy(credentialsOf(ctx, ns, "waits"), fleetCA)).To(BeTrue(), "not renewed yet")
		setIssuer(ctx, next.Secret())
		Eventually(func() bool { return signedBy(credentialsOf(ctx, ns, "waits"), next) }).Should(BeTrue())
		Eventually(func() []byte { return credentialsOf(ctx, ns, "waits").Data[pki.KeyCA] }).Should(Equal(next.CertPEM))
	})
})

var _ = Describe("Fleet issuer on a standby replica", func() {
	It("is followed while another replica leads, so a takeover signs with the current issuer", func() {
		ctx, cancel := context.WithCancel(context.Background())
		DeferCleanup(cancel)
		const leNS = "standby-election"
		Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leNS}})).To(Succeed())
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "standby-issuer", Namespace: issuerNamespace}, Data: fleetCA.Secret()})).To(Succeed())
		// Another replica holds the lease, renewed just now, for an hour.
		holder, now := "the-leader", metav1.NewMicroTime(time.Now())
		Expect(k8s.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "telemetry-operator.telemetry.sourcegraph.com", Namespace: leNS},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: ptr.To[int32](3600), AcquireTime: &now, RenewTime: &now}})).To(Succeed())

		m := controllers.NewMetrics(nil)
		standby, err := operator.New(ctx, cfg, operator.Config{
			MetricsAddr: "0", ProbeAddr: "0", LeaderElect: true, LeaderElectionNS: leNS,
			IssuerSecret: issuerNamespace + "/standby-issuer", CollectorImage: "telemetry-collector:test",
			ReceiverURL: rcv.URL, AllowedEndpoints: []string{testEndpoint}, ClusterName: "standby",
		}, operator.Deps{Clock: fakeClock, Metrics: m, Restartable: true})
		Expect(err).NotTo(HaveOccurred())
		done := make(chan error, 1)
		go func() { done <- standby.Start(ctx) }()

		next := mustCA(pkitest.Options{NotBefore: validFrom(), NotAfter: fakeClock.Now().Add(2 * 365 * 24 * time.Hour)})
		data := next.Secret()
		data[pki.KeyCA] = bundle(next, fleetCA)
		s := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: issuerNamespace, Name: "standby-issuer"}, s)).To(Succeed())
		s.Data = data
		Expect(k8s.Update(ctx, s)).To(Succeed())
		Eventually(func() float64 { return metricValue(m.IssuerReloads.WithLabelValues("rotated")) }, "20s").Should(Equal(1.0))
		Expect(standby.Elected()).NotTo(BeClosed(), "it followed the issuer as a standby")
		Consistently(done, "3s").ShouldNot(Receive(), "and keeps running as one")
	})
})
