/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
)

// The suite runs the real manager wiring (label-filtered cache, controller, issuer loading)
// against a real kube-apiserver and etcd. There is no kubelet, Deployment controller or garbage
// collector: tests play their part where a behaviour depends on them.

const issuerNamespace = "telemetry-system"

// testCluster is the cluster name the suite's operator records consent as.
const testCluster = "envtest"

var (
	env       *envtest.Environment
	cfg       *rest.Config
	k8s       client.Client // the test's own, uncached client
	fakeClock *clocktesting.FakeClock
	metrics   *controllers.Metrics
	fleetCA   *pkitest.CA
	writes    = &writeCounter{}
	mgrCancel context.CancelFunc
	mgrDone   chan struct{}
	mgr       ctrl.Manager
	tenantSet *tenants.Set
	// rcv is a real receiver (PostgreSQL, mutual TLS) sharing the fleet issuer and the fake
	// clock: the operator records consent in its ledger.
	rcv *receivertest.Receiver
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "TelemetryPolicy controller")
}

// writeCounter counts the manager's mutating API requests, by method and path.
type writeCounter struct {
	mu    sync.Mutex
	total atomic.Int64
	log   []string
	hold  atomic.Pointer[writeHold]
}

// writeHold holds the manager's status writes of one policy until released.
type writeHold struct {
	path     string
	reached  chan struct{}
	once     sync.Once
	released chan struct{}
	release  sync.Once
}

// Release lets the held write, and every later one, through.
func (h *writeHold) Release() { h.release.Do(func() { close(h.released) }) }

// holdStatus holds the manager's next status writes of the policy (a reconcile under way at
// its last step) until the hold is released.
func (w *writeCounter) holdStatus(ns, name string) *writeHold {
	h := &writeHold{path: fmt.Sprintf("/apis/%s/namespaces/%s/telemetrypolicies/%s/status", v1.GroupVersion.String(), ns, name),
		reached: make(chan struct{}), released: make(chan struct{})}
	w.hold.Store(h)
	return h
}

func (w *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if h := w.hold.Load(); h != nil && req.Method == http.MethodPatch && req.URL.Path == h.path {
			h.once.Do(func() { close(h.reached) })
			<-h.released
		}
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			entry := req.Method + " " + req.URL.Path
			if ns := reviewedNamespace(req); ns != "" {
				entry += " (namespace " + ns + ")"
			}
			w.total.Add(1)
			w.mu.Lock()
			w.log = append(w.log, entry)
			w.mu.Unlock()
		}
		return rt.RoundTrip(req)
	})
}

// reviewedNamespace is the namespace a SelfSubjectRulesReview asks about (in its body, not its
// path), "" for other requests.
func reviewedNamespace(req *http.Request) string {
	if !strings.HasSuffix(req.URL.Path, "/selfsubjectrulesreviews") {
		return ""
	}
	var raw []byte
	switch {
	case req.GetBody != nil:
		body, err := req.GetBody()
		if err != nil {
			return "?" // unknown: counted for every namespace
		}
		raw, err = io.ReadAll(body)
		_ = body.Close()
		if err != nil {
			return "?"
		}
	case req.Body != nil:
		var err error
		if raw, err = io.ReadAll(req.Body); err != nil {
			return "?"
		}
		_ = req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(raw))
	default:
		return "?"
	}
	// JSON or protobuf, as the client sent it.
	obj, _, err := clientgoscheme.Codecs.UniversalDeserializer().Decode(raw, nil, nil)
	if review, ok := obj.(*authorizationv1.SelfSubjectRulesReview); err == nil && ok {
		return review.Spec.Namespace
	}
	return "?"
}

// sinceIn returns the writes made after the first n about namespace ns: to it, to objects in
// it, and reviews of the manager's permissions in it. Writes about other specs' policies (which
// the manager keeps reconciling, and whose namespaces' reviews come due as specs step the
// shared clock) are left out.
func (w *writeCounter) sinceIn(n int64, ns string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var in []string
	for _, l := range w.log[n:] {
		if strings.Contains(l, "/namespaces/"+ns+"/") || strings.HasSuffix(l, "/namespaces/"+ns) || strings.HasSuffix(l, "(namespace "+ns+")") || strings.HasSuffix(l, "(namespace ?)") {
			in = append(in, l)
		}
	}
	return in
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(15 * time.Second)
	SetDefaultEventuallyPollingInterval(50 * time.Millisecond)
	var err error
	env, cfg, err = testenv.Start()
	Expect(err).NotTo(HaveOccurred())
	k8s, err = client.New(cfg, client.Options{Scheme: operator.NewScheme()})
	Expect(err).NotTo(HaveOccurred())

	fleetCA, err = pkitest.NewCA("test fleet issuer", pkitest.Options{NotBefore: time.Now().Add(-365 * 24 * time.Hour)})
	Expect(err).NotTo(HaveOccurred())
	Expect(k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: issuerNamespace}})).To(Succeed())
	Expect(k8s.Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "fleet-issuer", Namespace: issuerNamespace},
		Type:       corev1.SecretTypeTLS,
		Data:       fleetCA.Secret(),
	})).To(Succeed())

	fakeClock = clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	rcv, err = receivertest.StartWith(context.Background(), receivertest.Options{CA: fleetCA, Clock: fakeClock})
	Expect(err).NotTo(HaveOccurred())
	startManager()
})

// tenantResync is the manager's --tenant-resync when TELEMETRY_TEST_TENANT_RESYNC sets it
// (and watches nothing in the tenant namespaces, as by default); zero: it watches them
// (--watch-tenant-namespaces).
var tenantResync = func() time.Duration {
	d, err := time.ParseDuration(os.Getenv("TELEMETRY_TEST_TENANT_RESYNC"))
	if err != nil {
		return 0
	}
	return d
}()

// startManager starts the manager exactly as main.go does, with a fake clock and a write counter.
func startManager() {
	mgrCfg := rest.CopyConfig(cfg)
	mgrCfg.Wrap(writes.wrap)
	if metrics == nil {
		metrics = controllers.NewMetrics(prometheus.NewRegistry())
	}
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	mgr, err = operator.New(ctx, mgrCfg, operator.Config{
		MetricsAddr: "0", ProbeAddr: "0",
		IssuerSecret:         issuerNamespace + "/fleet-issuer",
		CollectorImage:       "telemetry-collector:test",
		MinCloudTermsVersion: "2024-01-01",
		IssuerExpiryWarning:  24 * time.Hour,
		ReceiverURL:          rcv.URL,
		AllowedEndpoints:     []string{testEndpoint},
		AllowedImages:        []string{"telemetry-collector", "registry.example.com/fleet/"},
		ClusterName:          testCluster,
		LedgerRetry:          200 * time.Millisecond,
		// TELEMETRY_TEST_TENANT_RESYNC runs every spec with the manager watching nothing in the
		// tenant namespaces (the default), resyncing each policy this often; unset, it watches.
		WatchTenantNamespaces: tenantResync == 0,
		TenantResync:          tenantResync,
	}, operator.Deps{Clock: fakeClock, Metrics: metrics, Restartable: true, Tenants: func(s *tenants.Set) { tenantSet = s }})
	Expect(err).NotTo(HaveOccurred())
	mgrCancel = cancel
	mgrDone = make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(mgrDone)
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
}

func stopManager() {
	mgrCancel()
	Eventually(mgrDone, 30*time.Second).Should(BeClosed())
}

var _ = AfterSuite(func() {
	if mgrCancel != nil {
		stopManager()
	}
	if env != nil {
		Expect(testenv.Stop(env)).To(Succeed())
	}
	if rcv != nil {
		rcv.Close()
	}
})
