/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

var _ = Describe("The manager's metrics endpoint", func() {
	It("serves metrics over TLS only to callers the API server authorizes for /metrics, as the shipped role grants", func(ctx SpecContext) {
		addr, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		opts := (&operator.Config{MetricsAddr: addr, MetricsCertDir: GinkgoT().TempDir()}).MetricsServerOptions()
		httpClient, err := rest.HTTPClientFor(cfg)
		Expect(err).NotTo(HaveOccurred())
		srv, err := metricsserver.NewServer(opts, cfg, httpClient)
		Expect(err).NotTo(HaveOccurred())
		srvCtx, stop := context.WithCancel(context.Background())
		DeferCleanup(stop)
		go func() { _ = srv.Start(srvCtx) }()

		By("the shipped metrics-reader role, bound to one ServiceAccount")
		data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "metrics_reader_role.yaml"))
		Expect(err).NotTo(HaveOccurred())
		role := &rbacv1.ClusterRole{}
		Expect(yaml.Unmarshal(data, role)).To(Succeed())
		role.Name = "metrics-reader-under-test"
		Expect(k8s.Create(ctx, role)).To(Succeed())
		ns := newNamespace(ctx)
		for _, sa := range []string{"prometheus", "nosy"} {
			Expect(k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}})).To(Succeed())
		}
		Expect(k8s.Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "metrics-reader-under-test"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "prometheus"}},
		})).To(Succeed())
		cs := kubernetes.NewForConfigOrDie(cfg)
		token := func(sa string) string {
			tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
			return tr.Status.Token
		}
		scrape := func(bearer string) int {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the endpoint's self-signed certificate
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
			if bearer != "" {
				req.Header.Set("Authorization", "Bearer "+bearer)
			}
			resp, err := c.Do(req)
			if err != nil {
				return -1
			}
			_ = resp.Body.Close()
			return resp.StatusCode
		}
		Eventually(func() int { return scrape("") }).Should(Equal(http.StatusUnauthorized), "no token")
		Expect(scrape("not-a-token")).To(BeNumerically(">=", 400), "a token the API server does not know")
		Expect(scrape(token("nosy"))).To(Equal(http.StatusForbidden), "a ServiceAccount without the role")
		prom := token("prometheus")
		Eventually(func() int { return scrape(prom) }).Should(Equal(http.StatusOK), "the ServiceAccount bound to the shipped role")

		By("plain HTTP is not served")
		resp, err := http.Get("http://" + addr + "/metrics") //nolint:gosec,noctx // loopback test endpoint
		if err == nil {
			_ = resp.Body.Close()
			Expect(resp.StatusCode).NotTo(Equal(http.StatusOK))
		}
	})
})
