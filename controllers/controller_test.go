/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

func configOf(ctx context.Context, ns, policy string) collectorconfig.Config {
	GinkgoHelper()
	cm := &corev1.ConfigMap{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: resources.NamesFor(policy).Config}, cm)).To(Succeed())
	c, err := collectorconfig.Parse(strings.NewReader(cm.Data[resources.ConfigKey]))
	Expect(err).NotTo(HaveOccurred())
	return *c
}

var _ = Describe("Reconciling a TelemetryPolicy", func() {
	ctx := context.Background()

	It("creates exactly the expected, hardened objects for EventLevel and reports truthfully", func() {
		ns := newNamespace(ctx)
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "acme"))).To(Succeed())
		names := resources.NamesFor("acme")

		By("writing every condition on the first visit")
		Eventually(func() []string {
			var types []string
			for _, c := range getPolicy(ctx, ns, "acme").Status.Conditions {
				types = append(types, c.Type)
			}
			return types
		}).Should(ContainElements(v1.ConditionReady, v1.ConditionConsentEligible, v1.ConditionSynced, v1.ConditionCredentialsReady, v1.ConditionExporting))

		var dep *appsv1.Deployment
		Eventually(func() error { var err error; dep, err = deployment(ctx, ns, "acme"); return err }).Should(Succeed())
		p := getPolicy(ctx, ns, "acme")

		By("owning and labelling every object")
		cm := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Config}, cm)).To(Succeed())
		state := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.State}, state)).To(Succeed())
		sa := &corev1.ServiceAccount{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.ServiceAccount}, sa)).To(Succeed())
		role := &rbacv1.Role{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Role}, role)).To(Succeed())
		rb := &rbacv1.RoleBinding{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.RoleBinding}, rb)).To(Succeed())
		tlsSecret := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Credentials}, tlsSecret)).To(Succeed())
		key := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.PseudonymKey}, key)).To(Succeed())
		for _, obj := range []client.Object{cm, state, sa, role, rb, tlsSecret, key, dep} {
			expectOwned(obj, p)
		}

		By("rendering the configuration for the effective tier")
		c := configOf(ctx, ns, "acme")
		Expect(c.Tier).To(Equal(v1.TierEventLevel))
		Expect(c.InstanceID).To(Equal(instanceOf(ns, "acme")))
		Expect(c.Endpoint).To(Equal("https://receiver.example.com:8443"))
		Expect(c.BatchSize).To(Equal(5000))
		Expect(c.Interval).To(Equal("5m0s"))
		Expect(c.State).To(Equal(collectorconfig.StateRef{Namespace: ns, ConfigMap: names.State}))
		Expect(cm.Data[resources.ConfigKey]).NotTo(ContainSubstring("secret-password"), "the DSN is mounted, never copied")

		By("letting the collector update only its own state object")
		Expect(role.Rules).To(Equal([]rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{names.State}, Verbs: []string{"get", "update"},
		}}))
		Expect(rb.RoleRef.Name).To(Equal(names.Role))
		Expect(rb.Subjects).To(ConsistOf(rbacv1.Subject{Kind: "ServiceAccount", Name: names.ServiceAccount, Namespace: ns}))

		By("hardening the collector Deployment")
		Expect(*dep.Spec.Replicas).To(Equal(int32(1)))
		Expect(dep.Spec.Strategy.Type).To(Equal(appsv1.RecreateDeploymentStrategyType))
		Expect(dep.Spec.Template.Annotations).To(HaveKeyWithValue(resources.AnnotationConfigHash, resources.ConfigHash([]byte(cm.Data[resources.ConfigKey]))))
		pod := dep.Spec.Template.Spec
		Expect(pod.ServiceAccountName).To(Equal(names.ServiceAccount))
		Expect(*pod.SecurityContext.RunAsNonRoot).To(BeTrue())
		Expect(pod.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
		Expect(pod.Containers).To(HaveLen(1))
		ctr := pod.Containers[0]
		Expect(ctr.Image).To(Equal("telemetry-collector:test"))
		Expect(*ctr.SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
		Expect(*ctr.SecurityContext.AllowPrivilegeEscalation).To(BeFalse())
		Expect(*ctr.SecurityContext.Privileged).To(BeFalse())
		Expect(*ctr.SecurityContext.RunAsNonRoot).To(BeTrue())
		Expect(ctr.SecurityContext.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))
		Expect(ctr.SecurityContext.Capabilities.Add).To(BeEmpty())
		Expect(ctr.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
		Expect(ctr.Resources.Requests).To(HaveKey(corev1.ResourceMemory))
		Expect(ctr.Resources.Limits).To(HaveKey(corev1.ResourceMemory))
		Expect(ctr.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
		Expect(ctr.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))
		Expect(ctr.Ports).To(ContainElement(HaveField("Name", "metrics")))
		mounts := map[string]string{}
		for _, m := range ctr.VolumeMounts {
			mounts[m.Name] = m.MountPath
		}
		Expect(mounts).To(Equal(map[string]string{
			"config": collectorconfig.ConfigDir, "tls": collectorconfig.TLSDir, "pseudonym-key": collectorconfig.PseudonymDir,
			"database": collectorconfig.DatabaseDir, "tmp": "/tmp",
		}))
		volumes := map[string]corev1.VolumeSource{}
		for _, v := range pod.Volumes {
			volumes[v.Name] = v.VolumeSource
		}
		Expect(volumes["config"].ConfigMap.Name).To(Equal(names.Config))
		Expect(volumes["tls"].Secret.SecretName).To(Equal(names.Credentials))
		Expect(volumes["pseudonym-key"].Secret.SecretName).To(Equal(names.PseudonymKey))
		Expect(volumes["database"].Secret.SecretName).To(Equal("frontend-db"))
		Expect(volumes["database"].Secret.Items).To(ConsistOf(corev1.KeyToPath{Key: "dsn", Path: "dsn"}))

		By("issuing a client certificate for the instance, and a 32-byte pseudonym key")
		Expect(tlsSecret.Type).To(Equal(corev1.SecretTypeTLS))
		cert, err := pki.ParseCertificatePEM(tlsSecret.Data["tls.crt"])
		Expect(err).NotTo(HaveOccurred())
		roots := x509.NewCertPool()
		roots.AddCert(fleetCA.Cert)
		_, err = cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: fakeClock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		Expect(err).NotTo(HaveOccurred())
		Expect(pki.InstanceID(cert)).To(Equal(instanceOf(ns, "acme")))
		Expect(tlsSecret.Data["ca.crt"]).To(Equal(fleetCA.CertPEM))
		Expect(key.Data[resources.PseudonymKeyKey]).To(HaveLen(32))

		By("not reporting Ready before the collector runs the configuration")
		Eventually(conditionStatus(ctx, ns, "acme", v1.ConditionSynced)).Should(Equal("Synced=False/RollingOut"))
		p = getPolicy(ctx, ns, "acme")
		Expect(condition(p, v1.ConditionReady).Status).To(Equal(metav1.ConditionFalse))
		Expect(condition(p, v1.ConditionReconciling).Status).To(Equal(metav1.ConditionTrue))
		Expect(condition(p, v1.ConditionStalled)).To(BeNil())
		Expect(p.Status.EffectiveTier).To(BeEmpty(), "nothing is in force before the collector runs it")
		Expect(condition(p, v1.ConditionConsentRecorded).Status).To(Equal(metav1.ConditionTrue), "the receiver recorded the consent before the collector was configured")
		Expect(p.Status.ObservedGeneration).To(Equal(p.Generation))
		Expect(p.Status.Credentials.Revision).To(Equal(int64(1)))
		Expect(p.Status.Credentials.SerialNumber).To(Equal(pki.SerialHex(cert)))
		Expect(kstatusOf(ctx, ns, "acme")).To(Equal(status.InProgressStatus))

		By("an available pod that is still the old template is not enough")
		setDeploymentStatus(ctx, ns, "acme", func(d *appsv1.Deployment) {
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 0, AvailableReplicas: 1, ReadyReplicas: 1}
		})
		Eventually(conditionStatus(ctx, ns, "acme", v1.ConditionSynced)).Should(Equal("Synced=False/OldCollectorRunning"))
		Expect(kstatusOf(ctx, ns, "acme")).To(Equal(status.InProgressStatus))

		By("reporting Ready once the current template runs")
		rollOutUntilReady(ctx, ns, "acme")
		p = getPolicy(ctx, ns, "acme")
		Expect(condition(p, v1.ConditionReconciling)).To(BeNil(), "Reconciling is present only while true")
		Expect(condition(p, v1.ConditionStalled)).To(BeNil())
		Expect(condition(p, v1.ConditionConsentEligible).Status).To(Equal(metav1.ConditionTrue))
		Expect(kstatusOf(ctx, ns, "acme")).To(Equal(status.CurrentStatus))
		Expect(p.Status.EffectiveTier).To(Equal(v1.TierEventLevel))
		Expect(p.Status.ConsentHistory).To(HaveLen(1))
		Expect(p.Status.ConsentHistory[0].To).To(Equal(v1.TierEventLevel))
		Expect(p.Status.ConsentHistory[0].RecordedAt).NotTo(BeNil())
		Expect(p.Finalizers).To(ContainElement(v1.FinalizerConsentLedger))
		Expect(eventReasons(ctx, ns, "acme")).To(ContainElements("TierChanged", "CredentialsIssued", "PseudonymKeyCreated"))

		By("recording the consent in the receiver's ledger, owned by this policy")
		recorded, err := rcv.Store.ConsentState(ctx, instanceOf(ns, "acme"))
		Expect(err).NotTo(HaveOccurred())
		Expect(recorded.Owner).To(And(HaveField("Cluster", testCluster), HaveField("Namespace", ns), HaveField("Name", "acme")))
		Expect(recorded.Timeline.Current()).To(BeEquivalentTo(v1.TierEventLevel))
		expires := p.Spec.Contract.ExpiresAt.Time
		Expect(recorded.Timeline[len(recorded.Timeline)-1].Until).To(HaveValue(BeTemporally("==", expires)), "recorded with the trial's expiry")
		Expect(c.Consent).To(HaveLen(2), "the collector filters by the ledger's timeline, its expiry written out")
		Expect(c.Consent.TierAt(expires.Add(-time.Second))).To(Equal(consentv1.TierEventLevel))
		Expect(c.Consent.TierAt(expires)).To(Equal(consentv1.TierCriticalOnly))
	})

	It("walks EventLevel -> CriticalOnly -> Off -> EventLevel, flipping Synced only on observed pod state", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "walk")
		names := resources.NamesFor("walk")
		key := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.PseudonymKey}, key)).To(Succeed())
		originalKey := bytes.Clone(key.Data[resources.PseudonymKeyKey])
		before, _ := deployment(ctx, ns, "walk")

		By("downgrading to CriticalOnly")
		updatePolicy(ctx, ns, "walk", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "walk").Tier }).Should(Equal(v1.TierCriticalOnly))
		Eventually(func() string {
			d, _ := deployment(ctx, ns, "walk")
			return d.Spec.Template.Annotations[resources.AnnotationConfigHash]
		}).ShouldNot(Equal(before.Spec.Template.Annotations[resources.AnnotationConfigHash]))
		Eventually(conditionStatus(ctx, ns, "walk", v1.ConditionSynced)).Should(Equal("Synced=False/RollingOut"))
		Consistently(conditionStatus(ctx, ns, "walk", v1.ConditionReady), "500ms").Should(HavePrefix("Ready=False"))
		Expect(kstatusOf(ctx, ns, "walk")).To(Equal(status.InProgressStatus))
		ledger, err := rcv.Store.ConsentState(ctx, instanceOf(ns, "walk"))
		Expect(err).NotTo(HaveOccurred())
		Expect(ledger.Timeline.Current()).To(BeEquivalentTo(v1.TierCriticalOnly), "the receiver refuses EventLevel data at once")
		p := getPolicy(ctx, ns, "walk")
		Expect(p.Status.EffectiveTier).To(Equal(v1.TierEventLevel), "not reported while an EventLevel pod may still run")

		By("the old EventLevel pod still terminating keeps the downgrade unreported")
		setDeploymentStatus(ctx, ns, "walk", func(d *appsv1.Deployment) {
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 0}
		})
		Eventually(conditionStatus(ctx, ns, "walk", v1.ConditionSynced)).Should(Equal("Synced=False/OldCollectorRunning"))
		Consistently(func() v1.ConsentTier { return getPolicy(ctx, ns, "walk").Status.EffectiveTier }, "500ms").Should(Equal(v1.TierEventLevel))
		Expect(eventReasons(ctx, ns, "walk")).NotTo(ContainElement("TierDowngraded"))
		rollOutUntilReady(ctx, ns, "walk")
		Expect(getPolicy(ctx, ns, "walk").Status.EffectiveTier).To(Equal(v1.TierCriticalOnly))
		Eventually(func() []string { return eventReasons(ctx, ns, "walk") }).Should(ContainElement("TierDowngraded"))
		Expect(kstatusOf(ctx, ns, "walk")).To(Equal(status.CurrentStatus))

		By("turning telemetry Off: the Deployment is deleted in the foreground")
		updatePolicy(ctx, ns, "walk", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		Eventually(conditionStatus(ctx, ns, "walk", v1.ConditionSynced)).Should(Equal("Synced=False/CollectorStopping"))
		Expect(getPolicy(ctx, ns, "walk").Status.EffectiveTier).To(Equal(v1.TierCriticalOnly), "Off is in force once no collector is left")
		Expect(configOf(ctx, ns, "walk").Tier).To(Equal(v1.TierOff), "a still-running collector reads Off and stops sending")
		Consistently(conditionStatus(ctx, ns, "walk", v1.ConditionReady), "500ms").Should(HavePrefix("Ready=False"))
		collectGarbage(ctx, ns, "walk")
		Eventually(conditionStatus(ctx, ns, "walk", v1.ConditionReady)).Should(Equal("Ready=True/Enforced"))
		Expect(getPolicy(ctx, ns, "walk").Status.EffectiveTier).To(Equal(v1.TierOff))
		for _, obj := range []client.Object{&corev1.Secret{}, &rbacv1.RoleBinding{}, &rbacv1.Role{}, &corev1.ServiceAccount{}, &appsv1.Deployment{}} {
			name := map[string]string{"*v1.Secret": names.Credentials, "*v1.RoleBinding": names.RoleBinding, "*v1.Role": names.Role, "*v1.ServiceAccount": names.ServiceAccount, "*v1.Deployment": names.Deployment}[typeName(obj)]
			Eventually(func() bool {
				return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj))
			}).Should(BeTrue(), "%s is removed for Off", name)
		}
		p = getPolicy(ctx, ns, "walk")
		Expect(p.Status.Credentials).To(BeNil())
		Expect(condition(p, v1.ConditionExporting).Reason).To(Equal("ExportDisabled"))
		Expect(kstatusOf(ctx, ns, "walk")).To(Equal(status.CurrentStatus))
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.PseudonymKey}, key)).To(Succeed())
		Expect(key.Data[resources.PseudonymKeyKey]).To(Equal(originalKey), "the pseudonym key survives Off")

		By("resuming EventLevel")
		updatePolicy(ctx, ns, "walk", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
		Eventually(func() error { _, err := deployment(ctx, ns, "walk"); return err }).Should(Succeed())
		Eventually(conditionStatus(ctx, ns, "walk", v1.ConditionSynced)).Should(Equal("Synced=False/RollingOut"))
		rollOutUntilReady(ctx, ns, "walk")
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.PseudonymKey}, key)).To(Succeed())
		Expect(key.Data[resources.PseudonymKeyKey]).To(Equal(originalKey), "pseudonyms stay stable across Off")

		p = getPolicy(ctx, ns, "walk")
		var tiers []v1.ConsentTier
		for _, h := range p.Status.ConsentHistory {
			tiers = append(tiers, h.To)
		}
		Expect(tiers).To(Equal([]v1.ConsentTier{v1.TierEventLevel, v1.TierCriticalOnly, v1.TierOff, v1.TierEventLevel}))
		Expect(eventReasons(ctx, ns, "walk")).To(ContainElement("TierDowngraded"))
	})

	It("downgrades an EventLevel trial when it expires, with a history entry and an Event", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "trial")
		expires := getPolicy(ctx, ns, "trial").Spec.Contract.ExpiresAt.Time

		By("staying EventLevel until the moment of expiry")
		fakeClock.SetTime(expires.Add(-time.Second))
		requestReconcile(ctx, ns, "trial")
		Expect(getPolicy(ctx, ns, "trial").Status.EffectiveTier).To(Equal(v1.TierEventLevel))

		By("running CriticalOnly from expiresAt on, even when the operator notices late")
		fakeClock.SetTime(expires.Add(90 * time.Second))
		requestReconcile(ctx, ns, "trial")
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "trial").Tier }).Should(Equal(v1.TierCriticalOnly))
		Expect(getPolicy(ctx, ns, "trial").Status.EffectiveTier).To(Equal(v1.TierEventLevel), "reported only once enforced")
		rollOut(ctx, ns, "trial")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "trial").Status.EffectiveTier }).Should(Equal(v1.TierCriticalOnly))
		p := getPolicy(ctx, ns, "trial")
		c := condition(p, v1.ConditionConsentEligible)
		Expect(c.Status).To(Equal(metav1.ConditionFalse))
		Expect(c.Reason).To(Equal(v1.ReasonTrialExpired))
		last := p.Status.ConsentHistory[len(p.Status.ConsentHistory)-1]
		Expect(last).To(And(HaveField("From", v1.TierEventLevel), HaveField("To", v1.TierCriticalOnly),
			HaveField("Reason", v1.ReasonTrialExpired), HaveField("Basis", v1.BasisSelfServeTrial)))
		Expect(last.Time.Time).To(BeTemporally("==", expires), "consent closed at the moment of expiry, not when noticed")
		Expect(p.Spec.Consent.Tier).To(Equal(v1.TierEventLevel), "the declared tier is left as declared")
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "trial").Tier }).Should(Equal(v1.TierCriticalOnly))
		Eventually(func() []string { return eventReasons(ctx, ns, "trial") }).Should(ContainElement("TierDowngraded"))
		Expect(metricValue(metrics.Downgrades.WithLabelValues(v1.ReasonTrialExpired))).To(BeNumerically(">=", 1))

		By("not raising it again from a replica whose clock is behind the recorded expiry")
		ledger, err := rcv.Store.ConsentState(ctx, instanceOf(ns, "trial"))
		Expect(err).NotTo(HaveOccurred())
		recorded := len(ledger.Timeline)
		Expect(ledger.Timeline.Current()).To(BeEquivalentTo(v1.TierCriticalOnly))
		fakeClock.SetTime(expires.Add(-10 * time.Minute))
		requestReconcile(ctx, ns, "trial")
		requestReconcile(ctx, ns, "trial")
		p = getPolicy(ctx, ns, "trial")
		Expect(p.Status.EffectiveTier).To(Equal(v1.TierCriticalOnly))
		Expect(condition(p, v1.ConditionConsentEligible).Reason).To(Equal(v1.ReasonTrialExpired))
		Expect(configOf(ctx, ns, "trial").Tier).To(Equal(v1.TierCriticalOnly))
		ledger, err = rcv.Store.ConsentState(ctx, instanceOf(ns, "trial"))
		Expect(err).NotTo(HaveOccurred())
		Expect(ledger.Timeline).To(HaveLen(recorded), "nothing recorded at the receiver: no grant re-opened the expired trial")
		fakeClock.SetTime(expires.Add(90 * time.Second))
	})

	It("runs only collector images and exports only to receivers the manager allows, creating nothing otherwise", func() {
		ns := newNamespace(ctx)
		names := resources.NamesFor("tenant")
		nothingMade := func(what string) {
			Consistently(func() bool {
				_, err := deployment(ctx, ns, "tenant")
				return apierrors.IsNotFound(err) &&
					apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Credentials}, &corev1.Secret{})) &&
					apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.PseudonymKey}, &corev1.Secret{}))
			}, "1s").Should(BeTrue(), "no collector, certificate or pseudonym key for %s", what)
		}

		By("an image from elsewhere")
		p := eventLevelPolicy(ns, "tenant")
		p.Spec.Collector.Image = "evil.example/telemetry-collector:latest"
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "tenant", v1.ConditionStalled)).Should(Equal("Stalled=True/ImageNotAllowed"))
		Expect(condition(getPolicy(ctx, ns, "tenant"), v1.ConditionStalled).Message).To(ContainSubstring("evil.example/telemetry-collector:latest"))
		nothingMade("an image that is not allowed")
		requestReconcile(ctx, ns, "tenant") // echoed for a stalled policy too (kubectl telemetry reconcile --wait)

		By("a receiver elsewhere, with an allowed image")
		updatePolicy(ctx, ns, "tenant", func(p *v1.TelemetryPolicy) {
			p.Spec.Collector.Image = "registry.example.com/fleet/telemetry-collector:v2"
			p.Spec.Export.Endpoint = "https://receiver.example.com.evil.io:8443"
		})
		Eventually(conditionStatus(ctx, ns, "tenant", v1.ConditionStalled)).Should(Equal("Stalled=True/EndpointNotAllowed"))
		nothingMade("an endpoint that is not allowed")

		By("both allowed: the collector runs the named image")
		updatePolicy(ctx, ns, "tenant", func(p *v1.TelemetryPolicy) { p.Spec.Export.Endpoint = testEndpoint })
		Eventually(func() string {
			d, err := deployment(ctx, ns, "tenant")
			if err != nil {
				return ""
			}
			return d.Spec.Template.Spec.Containers[0].Image
		}).Should(Equal("registry.example.com/fleet/telemetry-collector:v2"))
	})

	It("never lets a downgrade carry in an image or a receiver the manager does not allow", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "sly")
		By("lowering the tier and, in the same update, naming another image and receiver")
		updatePolicy(ctx, ns, "sly", func(p *v1.TelemetryPolicy) {
			p.Spec.Consent.Tier = v1.TierCriticalOnly
			p.Spec.Collector.Image = "evil.example/telemetry-collector:latest"
			p.Spec.Export.Endpoint = "https://evil.example"
		})
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "sly").Tier }).Should(Equal(v1.TierCriticalOnly))
		Expect(configOf(ctx, ns, "sly").Endpoint).To(Equal(testEndpoint), "the lowered configuration keeps the allowed receiver")
		Consistently(func() string {
			d, err := deployment(ctx, ns, "sly")
			if err != nil {
				return err.Error()
			}
			return d.Spec.Template.Spec.Containers[0].Image
		}, "2s").Should(Equal("telemetry-collector:test"))
		Expect(configOf(ctx, ns, "sly").Endpoint).To(Equal(testEndpoint))
		Eventually(conditionStatus(ctx, ns, "sly", v1.ConditionStalled)).Should(Equal("Stalled=True/ImageNotAllowed"))
	})

	It("puts back an edit anywhere in the collector's spec, keeps a rollout restart, and looks again after a restart of its own", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "anywhere")
		dep, err := deployment(ctx, ns, "anywhere")
		Expect(err).NotTo(HaveOccurred())
		want := dep.Spec.DeepCopy()
		// Fields no list of checks named: each passes a comparison of the fields the operator
		// sets, and each changes what the collector's pod does or may do.
		edit := func(d *appsv1.Deployment) {
			c := &d.Spec.Template.Spec.Containers[0]
			c.ReadinessProbe.HTTPGet.Host = "127.0.0.9"
			c.SecurityContext.SELinuxOptions = &corev1.SELinuxOptions{Type: "spc_t"}
			c.SecurityContext.AppArmorProfile = &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined}
			for i := range d.Spec.Template.Spec.Volumes {
				if cm := d.Spec.Template.Spec.Volumes[i].ConfigMap; cm != nil {
					cm.Items = []corev1.KeyToPath{{Key: resources.ConfigKey, Path: "unused.json"}}
				}
			}
		}
		putBack := func() *corev1.PodSpec {
			d, err := deployment(ctx, ns, "anywhere")
			Expect(err).NotTo(HaveOccurred())
			return &d.Spec.Template.Spec
		}
		edit(dep)
		Expect(k8s.Update(ctx, dep)).To(Succeed())
		Eventually(putBack).Should(HaveField("Containers", Equal(want.Template.Spec.Containers)))
		Expect(putBack().Volumes).To(Equal(want.Template.Spec.Volumes))

		By("kubectl rollout restart: kept")
		dep, err = deployment(ctx, ns, "anywhere")
		Expect(err).NotTo(HaveOccurred())
		dep.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] = "2026-11-30T12:00:00Z"
		Expect(k8s.Update(ctx, dep)).To(Succeed())
		restarted := dep.Generation
		requestReconcile(ctx, ns, "anywhere")
		Consistently(func() map[string]string { d, _ := deployment(ctx, ns, "anywhere"); return d.Spec.Template.Annotations }, "2s").
			Should(HaveKeyWithValue("kubectl.kubernetes.io/restartedAt", "2026-11-30T12:00:00Z"))
		d, err := deployment(ctx, ns, "anywhere")
		Expect(err).NotTo(HaveOccurred())
		Expect(d.Generation).To(Equal(restarted), "nothing written over it")

		By("an edit made while the operator was down: put back by the next process")
		stopManager()
		restartedManager := false
		DeferCleanup(func() {
			if !restartedManager {
				startManager()
			}
		})
		edit(d)
		Expect(k8s.Update(ctx, d)).To(Succeed())
		restartedManager = true
		startManager()
		Eventually(putBack).Should(HaveField("Containers", Equal(want.Template.Spec.Containers)))
		Expect(putBack().Volumes).To(Equal(want.Template.Spec.Volumes))
		Expect(putBack().Containers[0].ReadinessProbe.HTTPGet.Host).To(BeEmpty())
	})

	It("puts back owned objects that are edited or deleted by hand", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "drift")
		names := resources.NamesFor("drift")
		cmKey := client.ObjectKey{Namespace: ns, Name: names.Config}
		original := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, cmKey, original)).To(Succeed())

		By("an edited ConfigMap")
		cm := original.DeepCopy()
		cm.Data[resources.ConfigKey] = `{"tier":"EventLevel","hacked":true}`
		Expect(k8s.Update(ctx, cm)).To(Succeed())
		Eventually(func() map[string]string { _ = k8s.Get(ctx, cmKey, cm); return cm.Data }).Should(Equal(original.Data))

		By("a ConfigMap whose managed-by label was removed (invisible to the filtered cache)")
		Expect(k8s.Get(ctx, cmKey, cm)).To(Succeed())
		delete(cm.Labels, resources.LabelManagedBy)
		cm.Data[resources.ConfigKey] = "tampered"
		Expect(k8s.Update(ctx, cm)).To(Succeed())
		Eventually(func() bool {
			_ = k8s.Get(ctx, cmKey, cm)
			return cm.Labels[resources.LabelManagedBy] == resources.ManagedByValue && cm.Data[resources.ConfigKey] == original.Data[resources.ConfigKey]
		}).Should(BeTrue())

		By("a deleted ConfigMap")
		Expect(k8s.Delete(ctx, cm)).To(Succeed())
		Eventually(func() error { return k8s.Get(ctx, cmKey, cm) }).Should(Succeed())
		Expect(cm.Data).To(Equal(original.Data))

		By("an argument, a variable and a volume added to the collector (a second --config wins): put back")
		dep, err := deployment(ctx, ns, "drift")
		Expect(err).NotTo(HaveOccurred())
		want := dep.Spec.Template.Spec.DeepCopy()
		c := &dep.Spec.Template.Spec.Containers[0]
		c.Args = append(c.Args, "--config=/mine/config.json")
		c.Env = append(c.Env, corev1.EnvVar{Name: "EXTRA", Value: "1"})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "mine", MountPath: "/mine"})
		dep.Spec.Template.Spec.Volumes = append(dep.Spec.Template.Spec.Volumes, corev1.Volume{Name: "mine",
			VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "theirs"}}}})
		Expect(k8s.Update(ctx, dep)).To(Succeed())
		Eventually(func() []string { d, _ := deployment(ctx, ns, "drift"); return d.Spec.Template.Spec.Containers[0].Args }).Should(Equal(want.Containers[0].Args))
		dep, err = deployment(ctx, ns, "drift")
		Expect(err).NotTo(HaveOccurred())
		Expect(dep.Spec.Template.Spec.Volumes).To(HaveLen(len(want.Volumes)))
		Expect(dep.Spec.Template.Spec.Containers[0].Env).To(HaveLen(len(want.Containers[0].Env)))

		By("host aliases, a DNS configuration, a start hook and a pull secret added to the collector: put back")
		dep.Spec.Template.Spec.HostAliases = []corev1.HostAlias{{IP: "127.0.0.2", Hostnames: []string{"receiver.example.com"}}}
		dep.Spec.Template.Spec.DNSPolicy = corev1.DNSNone
		dep.Spec.Template.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"127.0.0.3"}}
		dep.Spec.Template.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "theirs"}}
		dep.Spec.Template.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"cp", "/etc/collector", "/tmp"}}}}
		Expect(k8s.Update(ctx, dep)).To(Succeed())
		Eventually(func() bool {
			d, _ := deployment(ctx, ns, "drift")
			spec := d.Spec.Template.Spec
			return spec.HostAliases == nil && spec.DNSConfig == nil && spec.DNSPolicy == corev1.DNSClusterFirst && spec.ImagePullSecrets == nil && spec.Containers[0].Lifecycle == nil
		}).Should(BeTrue())
		dep, err = deployment(ctx, ns, "drift")
		Expect(err).NotTo(HaveOccurred())

		By("an annotation on the pod template that has a webhook inject a container: put back")
		dep.Spec.Template.Annotations["linkerd.io/inject"] = "enabled"
		Expect(k8s.Update(ctx, dep)).To(Succeed())
		Eventually(func() map[string]string { d, _ := deployment(ctx, ns, "drift"); return d.Spec.Template.Annotations }).ShouldNot(HaveKey("linkerd.io/inject"))
		dep, err = deployment(ctx, ns, "drift")
		Expect(err).NotTo(HaveOccurred())

		By("a container added beside the collector: put back")
		dep.Spec.Template.Spec.Containers = append(dep.Spec.Template.Spec.Containers, corev1.Container{Name: "sidecar", Image: "theirs:1"})
		Expect(k8s.Update(ctx, dep)).To(Succeed())
		Eventually(func() int { d, _ := deployment(ctx, ns, "drift"); return len(d.Spec.Template.Spec.Containers) }).Should(Equal(len(want.Containers)))
		rollOutUntilReady(ctx, ns, "drift") // each write of the Deployment is a new generation to roll out

		// The collector's RBAC objects are not watched: they are checked at least every
		// --collector-rbac-resync, at once when the collector is not fully available, and on
		// every policy change or reconcile request.
		role := &rbacv1.Role{}
		roleKey := client.ObjectKey{Namespace: ns, Name: names.Role}
		Expect(k8s.Get(ctx, roleKey, role)).To(Succeed())
		wanted := role.Rules
		widen := func() {
			Expect(k8s.Get(ctx, roleKey, role)).To(Succeed())
			role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list"}})
			Expect(k8s.Update(ctx, role)).To(Succeed())
		}
		rules := func() []rbacv1.PolicyRule { _ = k8s.Get(ctx, roleKey, role); return role.Rules }
		cursor := int64(0)
		reportProgress := func() { // the collector's progress write: a reconcile that forces no check
			cursor++
			Eventually(func() error {
				st := &corev1.ConfigMap{}
				if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.State}, st); err != nil {
					return err
				}
				doc, _ := json.Marshal(map[string]any{"cursor": cursor, "lastSuccessTime": fakeClock.Now().UTC(), "tier": "EventLevel"})
				st.Data = map[string]string{resources.StateKey: string(doc)}
				return k8s.Update(ctx, st)
			}).Should(Succeed())
			Eventually(func() int64 {
				if e := getPolicy(ctx, ns, "drift").Status.Export; e != nil {
					return e.Cursor
				}
				return 0
			}).Should(Equal(cursor))
		}

		By("a widened Role: left until the check is due (steady reconciles do not read it)")
		widen()
		reportProgress()
		Expect(rules()).NotTo(Equal(wanted))
		By("... and put back at the next reconcile once --collector-rbac-resync (and its spread of up to a tenth) has passed")
		fakeClock.Step(controllers.DefaultCollectorRBACResync*11/10 + time.Second)
		reportProgress()
		Eventually(rules).Should(Equal(wanted))

		By("a widened Role: put back at once on a reconcile request")
		widen()
		requestReconcile(ctx, ns, "drift")
		Eventually(rules).Should(Equal(wanted))

		By("a deleted RoleBinding and ServiceAccount: left while the collector is not available right after a check")
		Expect(k8s.Delete(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: names.RoleBinding}})).To(Succeed())
		Expect(k8s.Delete(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: names.ServiceAccount}})).To(Succeed())
		setDeploymentStatus(ctx, ns, "drift", func(d *appsv1.Deployment) {
			d.Status.AvailableReplicas, d.Status.ReadyReplicas, d.Status.UnavailableReplicas = 0, 0, 1
		})
		// The condition is patched after the workload step: this reconcile passed the RBAC check.
		Eventually(conditionStatus(ctx, ns, "drift", v1.ConditionSynced)).Should(Equal("Synced=False/CollectorStarting"))
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.ServiceAccount}, &corev1.ServiceAccount{}))).To(BeTrue())

		By("... and put back once that check is 30 s old and the collector is still not available")
		fakeClock.Step(30 * time.Second)
		setDeploymentStatus(ctx, ns, "drift", func(d *appsv1.Deployment) { d.Status.UnavailableReplicas = 2 })
		Eventually(func() error {
			return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.RoleBinding}, &rbacv1.RoleBinding{})
		}).Should(Succeed())
		Eventually(func() error {
			return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.ServiceAccount}, &corev1.ServiceAccount{})
		}).Should(Succeed())
		rollOutUntilReady(ctx, ns, "drift")

		By("a Deployment with its hardening removed and a second replica")
		dep, _ = deployment(ctx, ns, "drift")
		dep.Spec.Replicas = ptr.To[int32](2)
		dep.Spec.Template.Spec.Containers[0].SecurityContext = nil
		dep.Spec.Template.Spec.Containers[0].Image = "evil:latest"
		Expect(k8s.Update(ctx, dep)).To(Succeed())
		Eventually(func() bool {
			d, _ := deployment(ctx, ns, "drift")
			c := d.Spec.Template.Spec.Containers[0]
			return *d.Spec.Replicas == 1 && c.SecurityContext != nil && *c.SecurityContext.ReadOnlyRootFilesystem && c.Image == "telemetry-collector:test"
		}).Should(BeTrue())

		By("a deleted Deployment")
		dep, _ = deployment(ctx, ns, "drift")
		Expect(k8s.Delete(ctx, dep)).To(Succeed())
		Eventually(func() error {
			d, err := deployment(ctx, ns, "drift")
			if err == nil && d.UID == dep.UID {
				return errorf("still the old deployment")
			}
			return err
		}).Should(Succeed())
		Eventually(conditionStatus(ctx, ns, "drift", v1.ConditionSynced)).Should(Equal("Synced=False/RollingOut"))

		By("a deleted state object")
		Expect(k8s.Delete(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: names.State}})).To(Succeed())
		Eventually(func() error {
			return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.State}, &corev1.ConfigMap{})
		}).Should(Succeed())
	})

	It("folds the collector's progress into status.export and Exporting, defensively", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "progress")
		stateKey := client.ObjectKey{Namespace: ns, Name: resources.NamesFor("progress").State}
		writeState := func(doc string) {
			Eventually(func() error {
				cm := &corev1.ConfigMap{}
				if err := k8s.Get(ctx, stateKey, cm); err != nil {
					return err
				}
				cm.Data = map[string]string{resources.StateKey: doc}
				return k8s.Update(ctx, cm)
			}).Should(Succeed())
		}
		Expect(conditionStatus(ctx, ns, "progress", v1.ConditionExporting)()).To(Equal("Exporting=False/NoProgressYet"))

		now := fakeClock.Now().UTC()
		doc, _ := json.Marshal(map[string]any{"cursor": 1234, "lastSuccessTime": now, "eventsExported": 1000, "eventsDropped": 7, "lagSeconds": 12, "tier": "EventLevel"})
		writeState(string(doc))
		Eventually(conditionStatus(ctx, ns, "progress", v1.ConditionExporting)).Should(Equal("Exporting=True/Flowing"))
		exp := getPolicy(ctx, ns, "progress").Status.Export
		Expect(exp.Cursor).To(Equal(int64(1234)))
		Expect(exp.EventsExported).To(Equal(int64(1000)))
		Expect(exp.EventsDropped).To(Equal(int64(7)))
		Expect(exp.LagSeconds).To(Equal(int64(12)))
		Expect(exp.LastSuccessTime.Time.Equal(now.Truncate(time.Second))).To(BeTrue())

		By("going stale after three intervals without success")
		fakeClock.SetTime(now.Add(3*5*time.Minute + time.Minute))
		requestReconcile(ctx, ns, "progress")
		Expect(conditionStatus(ctx, ns, "progress", v1.ConditionExporting)()).To(Equal("Exporting=False/NoRecentSuccess"))
		Expect(conditionStatus(ctx, ns, "progress", v1.ConditionReady)()).To(Equal("Ready=True/Enforced"), "Ready is about enforcement, Exporting about flow")

		By("treating malformed or oversized state as untrusted input")
		writeState(`{"cursor": "lots"`)
		Eventually(func() string { return getPolicy(ctx, ns, "progress").Status.Export.LastError }).Should(ContainSubstring("not valid JSON"))
		writeState(`{"lastError":"` + strings.Repeat("x", 20000) + `"}`)
		Eventually(func() string { return getPolicy(ctx, ns, "progress").Status.Export.LastError }).Should(ContainSubstring("larger than"))

		By("not believing a success dated ahead (the state is in the tenant's namespace)")
		writeState(`{"cursor": 1, "lastSuccessTime": "2099-01-01T00:00:00Z", "tier": "EventLevel"}`)
		Eventually(func() string { return getPolicy(ctx, ns, "progress").Status.Export.LastError }).Should(ContainSubstring("dated ahead of now"))
		Expect(getPolicy(ctx, ns, "progress").Status.Export.LastSuccessTime).To(BeNil())
		Expect(conditionStatus(ctx, ns, "progress", v1.ConditionExporting)()).To(Equal("Exporting=False/NoProgressYet"))
	})

	It("pauses on spec.suspend but still enforces downgrades", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "paused")
		updatePolicy(ctx, ns, "paused", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "paused").Tier }).Should(Equal(v1.TierCriticalOnly))
		rollOutUntilReady(ctx, ns, "paused")

		By("ignoring an upgrade while suspended")
		updatePolicy(ctx, ns, "paused", func(p *v1.TelemetryPolicy) { p.Spec.Suspend = true; p.Spec.Consent.Tier = v1.TierEventLevel })
		Eventually(conditionStatus(ctx, ns, "paused", v1.ConditionReady)).Should(Equal("Ready=False/Suspended"))
		Consistently(func() v1.ConsentTier { return configOf(ctx, ns, "paused").Tier }, "1s").Should(Equal(v1.TierCriticalOnly))
		Expect(getPolicy(ctx, ns, "paused").Status.EffectiveTier).To(Equal(v1.TierCriticalOnly))

		By("enforcing a downgrade to Off while suspended")
		updatePolicy(ctx, ns, "paused", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		Eventually(func() v1.ConsentTier { return configOf(ctx, ns, "paused").Tier }).Should(Equal(v1.TierOff))
		collectGarbage(ctx, ns, "paused")
		Eventually(func() v1.ConsentTier { return getPolicy(ctx, ns, "paused").Status.EffectiveTier }).Should(Equal(v1.TierOff))
	})
})

func typeName(obj client.Object) string {
	switch obj.(type) {
	case *corev1.Secret:
		return "*v1.Secret"
	case *rbacv1.RoleBinding:
		return "*v1.RoleBinding"
	case *rbacv1.Role:
		return "*v1.Role"
	case *corev1.ServiceAccount:
		return "*v1.ServiceAccount"
	case *appsv1.Deployment:
		return "*v1.Deployment"
	}
	return ""
}
