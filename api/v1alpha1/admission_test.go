/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

const ns = "admission"

// validPolicy returns a fresh, valid EventLevel policy as a user would write it.
func validPolicy(name string) map[string]any {
	return map[string]any{
		"apiVersion": "telemetry.sourcegraph.com/v1alpha1",
		"kind":       "TelemetryPolicy",
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"instanceID": name,
			"consent":    map[string]any{"tier": "EventLevel"},
			"contract": map[string]any{
				"basis":                      "SelfServeTrial",
				"reference":                  "0065e00000AbCdEf",
				"cloudTermsVersion":          "2024-06-01",
				"acceptedAt":                 "2026-11-01T09:30:00Z",
				"expiresAt":                  "2026-12-01T09:30:00Z",
				"userLevelEventDataApproved": true,
			},
			"source": map[string]any{"databaseSecretRef": map[string]any{"name": "db", "key": "dsn"}},
			"export": map[string]any{"endpoint": "https://receiver.example.com:8443"},
		},
	}
}

// set assigns value at a dotted path under obj, creating maps on the way; a nil value deletes.
func set(obj map[string]any, path string, value any) {
	parts := strings.Split(path, ".")
	m := obj
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	if value == nil {
		delete(m, parts[len(parts)-1])
		return
	}
	m[parts[len(parts)-1]] = value
}

func create(ctx context.Context, obj map[string]any) (*unstructured.Unstructured, error) {
	return dyn.Resource(testenv.PolicyGVR).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
}

var _ = Describe("TelemetryPolicy CRD", Ordered, func() {
	ctx := context.Background()
	var counter int
	name := func() string { counter++; return fmt.Sprintf("tp-%d", counter) }

	BeforeAll(func() {
		cs, err := kubernetes.NewForConfig(cfg)
		Expect(err).NotTo(HaveOccurred())
		_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		for _, sampleNS := range []string{"acme", "globex", "initech"} {
			_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: sampleNS}}, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
		}
	})

	It("accepts every sample in config/samples", func() {
		samples, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "samples", "telemetry_*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(samples).To(HaveLen(3), "one sample per tier")
		tiers := map[string]bool{}
		for _, path := range samples {
			raw, err := os.ReadFile(path)
			Expect(err).NotTo(HaveOccurred())
			obj := map[string]any{}
			Expect(yaml.Unmarshal(raw, &obj)).To(Succeed())
			u := &unstructured.Unstructured{Object: obj}
			_, err = dyn.Resource(testenv.PolicyGVR).Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred(), "sample %s", filepath.Base(path))
			tier, _, _ := unstructured.NestedString(obj, "spec", "consent", "tier")
			tiers[tier] = true
		}
		Expect(tiers).To(Equal(map[string]bool{"EventLevel": true, "CriticalOnly": true, "Off": true}))
	})

	It("accepts the minimal valid policy of each tier", func() {
		p := validPolicy(name())
		_, err := create(ctx, p)
		Expect(err).NotTo(HaveOccurred())

		critical := validPolicy(name())
		set(critical, "spec.consent.tier", "CriticalOnly")
		set(critical, "spec.contract", map[string]any{"basis": "LegacyTerms"})
		_, err = create(ctx, critical)
		Expect(err).NotTo(HaveOccurred())

		off := validPolicy(name())
		set(off, "spec.consent.tier", "Off")
		set(off, "spec.contract", nil)
		set(off, "spec.source", nil)
		set(off, "spec.export", nil)
		_, err = create(ctx, off)
		Expect(err).NotTo(HaveOccurred())
	})

	It("accepts an erasure requested by each role", func() {
		for _, who := range []string{"CustomerAdmin", "DataSubject", "Support", "Legal", "ContractEnd"} {
			p := validPolicy(name())
			set(p, "spec.erasure", map[string]any{"requestID": "DSR-2026-0042", "requestedBy": who})
			_, err := create(ctx, p)
			Expect(err).NotTo(HaveOccurred(), who)
		}
	})

	DescribeTable("rejects an invalid policy with a message that names the problem",
		func(mutate func(map[string]any), wantMessage string) {
			p := validPolicy(name())
			mutate(p)
			_, err := create(ctx, p)
			Expect(err).To(HaveOccurred())
			Expect(apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)).To(BeTrue(), "got %v", err)
			Expect(err.Error()).To(ContainSubstring(wantMessage))
		},
		Entry("EventLevel on legacy terms",
			func(p map[string]any) { set(p, "spec.contract.basis", "LegacyTerms") },
			"consent.tier EventLevel requires contract.basis to be one of"),
		Entry("EventLevel without a contract",
			func(p map[string]any) { set(p, "spec.contract", nil) },
			"consent.tier EventLevel requires contract.basis"),
		Entry("EventLevel without a CRM reference",
			func(p map[string]any) { set(p, "spec.contract.reference", nil) },
			"consent.tier EventLevel requires contract.reference"),
		Entry("EventLevel with an empty CRM reference",
			func(p map[string]any) { set(p, "spec.contract.reference", "") },
			"consent.tier EventLevel requires contract.reference"),
		Entry("EventLevel without CRM approval",
			func(p map[string]any) { set(p, "spec.contract.userLevelEventDataApproved", false) },
			"requires contract.userLevelEventDataApproved=true"),
		Entry("EventLevel with approval omitted",
			func(p map[string]any) { set(p, "spec.contract.userLevelEventDataApproved", nil) },
			"requires contract.userLevelEventDataApproved=true"),
		Entry("CriticalOnly without a database secret",
			func(p map[string]any) { set(p, "spec.consent.tier", "CriticalOnly"); set(p, "spec.source", nil) },
			"require source.databaseSecretRef"),
		Entry("EventLevel without an endpoint",
			func(p map[string]any) { set(p, "spec.export.endpoint", nil) },
			"require export.endpoint"),
		Entry("CriticalOnly without an export section",
			func(p map[string]any) { set(p, "spec.consent.tier", "CriticalOnly"); set(p, "spec.export", nil) },
			"require export.endpoint"),
		Entry("plain-http endpoint",
			func(p map[string]any) { set(p, "spec.export.endpoint", "http://receiver.example.com") },
			"export.endpoint must be an https:// URL"),
		Entry("endpoint that is not a URL",
			func(p map[string]any) { set(p, "spec.export.endpoint", "https://exa mple.com/%zz") },
			"export.endpoint must be an https:// URL"),
		Entry("expiry before acceptance",
			func(p map[string]any) { set(p, "spec.contract.expiresAt", "2026-10-01T00:00:00Z") },
			"contract.expiresAt must be after contract.acceptedAt"),
		Entry("unknown tier",
			func(p map[string]any) { set(p, "spec.consent.tier", "Everything") },
			`spec.consent.tier: Unsupported value: "Everything"`),
		Entry("unknown basis",
			func(p map[string]any) { set(p, "spec.contract.basis", "Handshake") },
			`spec.contract.basis: Unsupported value: "Handshake"`),
		Entry("missing tier",
			func(p map[string]any) { set(p, "spec.consent", map[string]any{}) },
			"spec.consent.tier: Required value"),
		Entry("missing instanceID",
			func(p map[string]any) { set(p, "spec.instanceID", nil) },
			"spec.instanceID: Required value"),
		Entry("instanceID with upper case",
			func(p map[string]any) { set(p, "spec.instanceID", "Acme") },
			"spec.instanceID: Invalid value"),
		Entry("instanceID longer than a DNS label",
			func(p map[string]any) { set(p, "spec.instanceID", strings.Repeat("a", 64)) },
			"spec.instanceID: Too long"),
		Entry("instanceID with a NUL byte",
			func(p map[string]any) { set(p, "spec.instanceID", "acme\x00evil") },
			"spec.instanceID"),
		Entry("batch size over 10000",
			func(p map[string]any) { set(p, "spec.export.batchSize", 20000) },
			"spec.export.batchSize: Invalid value: 20000: spec.export.batchSize in body should be less than or equal to 10000"),
		Entry("batch size of zero",
			func(p map[string]any) { set(p, "spec.export.batchSize", 0) },
			"spec.export.batchSize"),
		Entry("huge batch size",
			func(p map[string]any) { set(p, "spec.export.batchSize", int64(1)<<62) },
			"spec.export.batchSize"),
		Entry("interval too short",
			func(p map[string]any) { set(p, "spec.export.interval", "1s") },
			"export.interval must be between 10s and 24h"),
		Entry("interval that is not a duration",
			func(p map[string]any) { set(p, "spec.export.interval", "five minutes") },
			"spec.export.interval"),
		Entry("unknown start point",
			func(p map[string]any) { set(p, "spec.export.startFrom", "Yesterday") },
			`spec.export.startFrom: Unsupported value: "Yesterday"`),
		Entry("rotation period under an hour",
			func(p map[string]any) { set(p, "spec.credentials.rotationPeriod", "30m") },
			"credentials.rotationPeriod must be between 1h and 2160h"),
		Entry("rotation period over 90 days (a certificate valid for years)",
			func(p map[string]any) { set(p, "spec.credentials.rotationPeriod", "100000h") },
			"credentials.rotationPeriod must be between 1h and 2160h"),
		Entry("terms version that is not a date",
			func(p map[string]any) { set(p, "spec.contract.cloudTermsVersion", "latest") },
			"spec.contract.cloudTermsVersion"),
		Entry("terms version with no such month or day (it would pass any minimum)",
			func(p map[string]any) { set(p, "spec.contract.cloudTermsVersion", "9999-99-99") },
			"spec.contract.cloudTermsVersion"),
		Entry("acceptance time that is not RFC 3339",
			func(p map[string]any) { set(p, "spec.contract.acceptedAt", "yesterday") },
			"acceptedAt"),
		Entry("CRM reference with a NUL byte",
			func(p map[string]any) { set(p, "spec.contract.reference", "0065\x00e") },
			"spec.contract.reference"),
		Entry("oversized CRM reference",
			func(p map[string]any) { set(p, "spec.contract.reference", strings.Repeat("x", 10_000)) },
			"spec.contract.reference: Too long"),
		Entry("policy name too long to prefix owned objects",
			func(p map[string]any) { set(p, "metadata.name", strings.Repeat("n", 41)) },
			"metadata.name must be at most 40 characters"),
		// The audit record of an erasure is kept centrally for years: a role, never a person.
		Entry("erasure naming a person as the requester",
			func(p map[string]any) {
				set(p, "spec.erasure", map[string]any{"requestID": "DSR-1", "requestedBy": "Jane Doe <jane.doe@acme.example>"})
			},
			`spec.erasure.requestedBy: Unsupported value: "Jane Doe <jane.doe@acme.example>"`),
		Entry("erasure with free text as the requester",
			func(p map[string]any) {
				set(p, "spec.erasure", map[string]any{"requestID": "DSR-1", "requestedBy": "acme admin, support ticket 4711"})
			},
			"spec.erasure.requestedBy: Unsupported value"),
		Entry("collector resources with claims (ignored otherwise)",
			func(p map[string]any) {
				set(p, "spec.collector", map[string]any{"resources": map[string]any{"claims": []any{map[string]any{"name": "gpu"}}}})
			},
			"collector.resources.claims is not supported"),
		Entry("database secret name with a path",
			func(p map[string]any) { set(p, "spec.source.databaseSecretRef.name", "../etc/passwd") },
			"spec.source.databaseSecretRef.name"),
	)

	It("keeps instanceID immutable", func() {
		n := name()
		_, err := create(ctx, validPolicy(n))
		Expect(err).NotTo(HaveOccurred())
		got, err := dyn.Resource(testenv.PolicyGVR).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(unstructured.SetNestedField(got.Object, "another-instance", "spec", "instanceID")).To(Succeed())
		_, err = dyn.Resource(testenv.PolicyGVR).Namespace(ns).Update(ctx, got, metav1.UpdateOptions{})
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("instanceID is immutable"))

		// Other fields remain editable: a downgrade is an ordinary update.
		got, err = dyn.Resource(testenv.PolicyGVR).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(unstructured.SetNestedField(got.Object, "CriticalOnly", "spec", "consent", "tier")).To(Succeed())
		_, err = dyn.Resource(testenv.PolicyGVR).Namespace(ns).Update(ctx, got, metav1.UpdateOptions{})
		Expect(err).NotTo(HaveOccurred())
	})

	It("applies defaults", func() {
		n := name()
		_, err := create(ctx, validPolicy(n))
		Expect(err).NotTo(HaveOccurred())
		got, err := dyn.Resource(testenv.PolicyGVR).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(got.Object).To(HaveKeyWithValue("spec", And(
			HaveKeyWithValue("export", And(
				HaveKeyWithValue("interval", "5m"),
				HaveKeyWithValue("batchSize", BeNumerically("==", 5000)),
				HaveKeyWithValue("startFrom", "Now"),
			)),
			HaveKeyWithValue("credentials", HaveKeyWithValue("rotationPeriod", "720h")),
		)))
		og, found, err := unstructured.NestedInt64(got.Object, "status", "observedGeneration")
		Expect(err).NotTo(HaveOccurred())
		Expect(found).To(BeTrue(), "status.observedGeneration is defaulted")
		Expect(og).To(Equal(int64(-1)))
	})

	It("reads like documentation in kubectl explain", func() {
		kubectl := os.Getenv("TELEMETRY_TEST_KUBECTL")
		if kubectl == "" {
			Skip("TELEMETRY_TEST_KUBECTL is not set (make test sets it)")
		}
		user, err := env.AddUser(envtest.User{Name: "explainer", Groups: []string{"system:masters"}}, nil)
		Expect(err).NotTo(HaveOccurred())
		kubeconfig, err := user.KubeConfig()
		Expect(err).NotTo(HaveOccurred())
		path := filepath.Join(GinkgoT().TempDir(), "kubeconfig")
		Expect(os.WriteFile(path, kubeconfig, 0o600)).To(Succeed())

		explain := func(field string) string {
			out, err := exec.Command(kubectl, "--kubeconfig", path, "explain", field).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), string(out))
			return string(out)
		}
		Expect(explain("tp.spec.consent")).To(And(
			ContainSubstring("KIND:       TelemetryPolicy"),
			ContainSubstring("tier"),
			ContainSubstring("EventLevel (individual allow-listed events"),
			ContainSubstring("never a higher one"),
		))
		Expect(explain("tp.spec.contract.basis")).To(ContainSubstring("LegacyTerms"))
		Expect(explain("tp.status.effectiveTier")).To(ContainSubstring("never higher than"))

		get := exec.Command(kubectl, "--kubeconfig", path, "get", "tp", "-n", "acme")
		out, err := get.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(out))
		header := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
		Expect(header).To(Equal([]string{"NAME", "INSTANCE", "TIER", "EFFECTIVE", "BASIS", "READY", "SYNCED", "LAST", "EXPORT", "AGE"}))
	})
})
