/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

// certFor returns a client presenting a certificate for instance issued for policy.
func certFor(t *testing.T, instance string, policy pki.PolicyRef) *http.Client {
	t.Helper()
	cc, err := rcv.Issuer.IssueClient(instance, policy, 24*time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return presenting(t, cc.CertPEM, cc.KeyPEM)
}

// presenting returns a client presenting the certificate and key given.
func presenting(t *testing.T, certPEM, keyPEM []byte) *http.Client {
	t.Helper()
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return rcv.HTTPClient(&pair)
}

// served reports the status of a batch, a cursor read and a delivery listing made with c, and
// the reason of each refusal.
func served(t *testing.T, c *http.Client, instance string, n int) map[string]string {
	t.Helper()
	out := map[string]string{}
	answer := func(what string, r reply) {
		out[what] = http.StatusText(r.status)
		if r.status != http.StatusOK {
			out[what] += "/" + r.errorResponse(t).Reason
		}
	}
	r, err := post(t, c, mustEncode(t, events(instance, n*10, 3)), nil)
	if err != nil {
		t.Fatal(err)
	}
	answer("batch", r)
	answer("cursor", adminDo(t, c, http.MethodGet, batchv1.PathCursor, nil, ""))
	answer("exported", adminDo(t, c, http.MethodGet, batchv1.PathExported, nil, ""))
	return out
}

// A collector certificate is accepted only while the policy it was issued for owns the
// instance's consent record: handed over or released, the record no longer lets it send, read
// its cursor or list what was stored, whatever time the certificate has left.
func TestACertificateStopsWorkingAtAHandover(t *testing.T) {
	ctx := context.Background()
	const instance = "handed-over"
	grant(t, instance)
	theirs := certFor(t, instance, receivertest.TestPolicy(instance))
	ok := map[string]string{"batch": "OK", "cursor": "OK", "exported": "OK"}
	notOwner := map[string]string{"batch": "Forbidden/" + batchv1.ReasonNotOwner, "cursor": "Forbidden/" + batchv1.ReasonNotOwner, "exported": "Forbidden/" + batchv1.ReasonNotOwner}
	expect := func(step string, c *http.Client, n int, want map[string]string) {
		t.Helper()
		got := served(t, c, instance, n)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s answered %s, want %s", step, k, got[k], v)
			}
		}
	}
	expect("owner", theirs, 1, ok)
	stored := count(t, "events", instance)
	if stored != 3 {
		t.Fatalf("%d events stored from the owner's batch, want 3", stored)
	}

	recreated := receivertest.TestPolicy(instance)
	recreated.UID = "another-uid"
	expect("the same policy name, another UID (deleted and created again)", certFor(t, instance, recreated), 2, notOwner)
	elsewhere := receivertest.TestPolicy(instance)
	elsewhere.Namespace = "elsewhere"
	expect("a policy of another namespace", certFor(t, instance, elsewhere), 3, notOwner)

	if _, err := rcv.Admin.ForceRelease(ctx, instance, &consentv1.Owner{Cluster: receivertest.TestCluster, Namespace: "elsewhere"}); err != nil {
		t.Fatal(err)
	}
	expect("released", theirs, 4, notOwner)

	next := consentv1.Owner{Cluster: receivertest.TestCluster, Namespace: "elsewhere", Name: instance, UID: "next-uid"}
	if _, err := rcv.Store.RecordTransition(ctx, receivertest.TestCluster, consentv1.RecordRequest{InstanceID: instance, Owner: next,
		Transition: consentv1.Transition{At: time.Now(), Tier: consentv1.TierEventLevel, Reason: "Declared"}}); err != nil {
		t.Fatal(err)
	}
	expect("handed over to another policy", theirs, 5, notOwner)
	if n := count(t, "events", instance); n != stored {
		t.Fatalf("%d events stored after the handover from the old certificate, want %d", n, stored)
	}
	expect("the new owner", certFor(t, instance, pki.PolicyRef{Cluster: next.Cluster, Namespace: next.Namespace, Name: next.Name, UID: next.UID}), 6, ok)

	t.Run("a certificate naming no policy is refused", func(t *testing.T) {
		legacy := legacyCert(t, instance)
		got := served(t, legacy, instance, 7)
		for _, k := range []string{"batch", "cursor", "exported"} {
			if got[k] != "Forbidden/"+batchv1.ReasonUnauthorized {
				t.Errorf("%s answered %s to a certificate naming no policy", k, got[k])
			}
		}
	})
}

// legacyCert is a client presenting a certificate as operators issued them before certificates
// named their policy: the instance only.
func legacyCert(t *testing.T, instance string) *http.Client {
	t.Helper()
	cc, err := rcv.CA.ClientCertWithURIs(instance, pki.IdentityURI(instance))
	if err != nil {
		t.Fatal(err)
	}
	return presenting(t, cc.CertPEM, cc.KeyPEM)
}

// answer sends a request with c and returns its status and, when refused, its reason.
func answer(t *testing.T, c *http.Client, method, url string, body []byte) string {
	t.Helper()
	return answerCtx(context.Background(), t, c, method, url, body)
}

// answerCtx is answer with a request context (a trace of the connection used); an answer it
// reads whole, so the connection can be reused.
func answerCtx(ctx context.Context, t *testing.T, c *http.Client, method, url string, body []byte) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", batchv1.ContentType)
	if method == http.MethodPost && !strings.HasSuffix(url, batchv1.PathBatches) {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return "OK"
	}
	var e batchv1.ErrorResponse
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return http.StatusText(resp.StatusCode) + "/" + e.Reason
}

// A former owner's certificate takes none of the owner's slots: however often its collector
// retries, and whatever it sends (batches the store refuses, or ones refused before it is
// asked), the owner's batches are served. Refused by the store once, it is refused again
// without asking it; a claim recorded through this receiver lets the certificate's policy in
// at once, one recorded elsewhere (another replica) after refusedFor.
func TestARefusedCertificateTakesNoneOfTheOwnersSlots(t *testing.T) {
	ctx := context.Background()
	limits := server.DefaultLimits()
	limits.InstanceRate, limits.InstanceBurst = 0.001, 4 // four requests per instance, no refill within the test
	clk := clocktesting.NewFakePassiveClock(time.Now())
	r, err := receivertest.StartWith(ctx, receivertest.Options{Limits: limits, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	certOf := func(instance, uid string) (*http.Client, consentv1.Owner) {
		t.Helper()
		ref := receivertest.TestPolicy(instance)
		ref.UID = uid
		cc, err := r.Issuer.IssueClient(instance, ref, 24*time.Hour, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return r.HTTPClient(&pair), consentv1.Owner{Namespace: ref.Namespace, Name: ref.Name, UID: ref.UID}
	}
	former := func(instance string) (*http.Client, consentv1.Owner) {
		t.Helper()
		if err := r.Grant(ctx, instance, consentv1.TierEventLevel, consentSince); err != nil {
			t.Fatal(err)
		}
		return certOf(instance, "deleted-uid")
	}
	batch := func(instance string, n int) []byte { return mustEncode(t, events(instance, n*10, 2)) }
	notOwner := "Forbidden/" + batchv1.ReasonNotOwner

	t.Run("retries of a refused certificate leave the owner its slots", func(t *testing.T) {
		const instance = "retried"
		c, _ := former(instance)
		if got := answer(t, c, http.MethodPost, r.URL+batchv1.PathBatches, batch(instance, 1)); got != notOwner {
			t.Fatalf("the former owner's batch answered %s, want %s", got, notOwner)
		}
		for i := range 10 {
			for _, req := range []struct{ method, path string }{{http.MethodPost, batchv1.PathBatches}, {http.MethodGet, batchv1.PathCursor}, {http.MethodGet, batchv1.PathExported}} {
				if got := answer(t, c, req.method, r.URL+req.path, batch(instance, 2+i)); got != notOwner {
					t.Fatalf("retry %d of %s %s answered %s, want %s", i, req.method, req.path, got, notOwner)
				}
			}
		}
		earlier, _ := certOf(instance, "deleted-before-uid") // an earlier owner's, refused before the store is asked: never remembered
		for i := range 10 {
			if got := answer(t, earlier, http.MethodPost, r.URL+batchv1.PathBatches, batch("another-instance", 40+i)); got != "Forbidden/"+batchv1.ReasonWrongInstance && got != "Too Many Requests/"+batchv1.ReasonRateLimited {
				t.Fatalf("a batch naming another instance answered %s", got)
			}
		}
		owner, err := r.ClientCert(instance, time.Now().Add(-time.Hour), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		oc := r.HTTPClient(&owner)
		for i := range 3 {
			if got := answer(t, oc, http.MethodPost, r.URL+batchv1.PathBatches, batch(instance, 20+i)); got != "OK" {
				t.Fatalf("the owner's batch %d answered %s: the former owner's retries took its slots", i, got)
			}
		}
	})

	t.Run("a claim through this receiver lets the policy in at once", func(t *testing.T) {
		const instance = "reclaimed-here"
		c, policy := former(instance)
		if got := answer(t, c, http.MethodPost, r.URL+batchv1.PathBatches, batch(instance, 1)); got != notOwner {
			t.Fatalf("answered %s, want %s", got, notOwner)
		}
		if _, err := r.Admin.ForceRelease(ctx, instance, nil); err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(consentv1.RecordRequest{InstanceID: instance, Owner: policy,
			Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel, Reason: "Declared"}})
		if got := answer(t, r.OperatorClient(receivertest.TestCluster), http.MethodPost, r.URL+consentv1.PathConsent, body); got != "OK" {
			t.Fatalf("the claim answered %s", got)
		}
		if got := answer(t, c, http.MethodPost, r.URL+batchv1.PathBatches, batch(instance, 2)); got != "OK" {
			t.Fatalf("the new owner's certificate answered %s right after its claim, want OK", got)
		}
	})

	t.Run("a claim recorded elsewhere lets the policy in after refusedFor", func(t *testing.T) {
		const instance = "reclaimed-elsewhere"
		c, policy := former(instance)
		if got := answer(t, c, http.MethodPost, r.URL+batchv1.PathBatches, batch(instance, 1)); got != notOwner {
			t.Fatalf("answered %s, want %s", got, notOwner)
		}
		if _, err := r.Admin.ForceRelease(ctx, instance, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Store.RecordTransition(ctx, receivertest.TestCluster, consentv1.RecordRequest{InstanceID: instance, Owner: policy,
			Transition: consentv1.Transition{At: clk.Now(), Tier: consentv1.TierEventLevel, Reason: "Declared"}}); err != nil {
			t.Fatal(err)
		}
		if got := answer(t, c, http.MethodPost, r.URL+batchv1.PathBatches, batch(instance, 2)); got != notOwner {
			t.Fatalf("answered %s within refusedFor of the refusal, want %s (remembered)", got, notOwner)
		}
		clk.SetTime(clk.Now().Add(time.Minute))
		if got := answer(t, c, http.MethodPost, r.URL+batchv1.PathBatches, batch(instance, 3)); got != "OK" {
			t.Fatalf("answered %s a minute after the refusal, want OK", got)
		}
	})
}

// A collector's certificate is refused once it has expired, also over a connection opened while
// it was valid (a kept-alive connection outlives the handshake that checked it): a collector
// whose renewal failed neither sends nor confirms that the receiver answers.
// Over HTTP/1.1 and over HTTP/2 (the receiver binary's protocol, where one connection carries
// every request).
func TestAnExpiredCertificateIsRefusedOnAConnectionOpenedBefore(t *testing.T) {
	for _, http2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", http2), func(t *testing.T) { expiredOnAKeptAliveConnection(t, http2) })
	}
}

// keptAlive is a receiver with a collector of instance and an operator, each holding one
// connection it reuses, over HTTP/2 or HTTP/1.1 as asked (checked at each connection).
type keptAlive struct {
	r        *receivertest.Receiver
	instance string
	// collector and operator present their certificates (cert, opCert).
	collector, operator *http.Client
	cert                *x509.Certificate
	opCert              *x509.Certificate
	// reused records, for each request since it was last cleared, whether it reused a connection.
	reused []bool
	traced context.Context
}

func startKeptAlive(t *testing.T, o receivertest.Options, http2 bool, instance string) *keptAlive {
	t.Helper()
	ctx := context.Background()
	o.Limits, o.HTTP2 = server.DefaultLimits(), http2
	r, err := receivertest.StartWith(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	if err := r.Grant(ctx, instance, consentv1.TierEventLevel, consentSince); err != nil {
		t.Fatal(err)
	}
	cc, err := r.Issuer.IssueClient(instance, receivertest.TestPolicy(instance), time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	client := func(cert *tls.Certificate) *http.Client {
		c := r.HTTPClient(cert)
		c.Transport.(*http.Transport).ForceAttemptHTTP2 = http2
		return c
	}
	opCert, err := r.OperatorCert(receivertest.TestCluster)
	if err != nil {
		t.Fatal(err)
	}
	k := &keptAlive{r: r, instance: instance, collector: client(&pair), operator: client(&opCert), cert: cc.Cert, opCert: opCert.Leaf}
	wantProto := map[bool]string{false: "", true: "h2"}[http2]
	k.traced = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		k.reused = append(k.reused, i.Reused)
		if tc, ok := i.Conn.(*tls.Conn); !ok {
			t.Errorf("a connection of type %T, want TLS", i.Conn)
		} else if got := tc.ConnectionState().NegotiatedProtocol; got != wantProto {
			t.Errorf("negotiated protocol %q, want %q: the test is not over the protocol it names", got, wantProto)
		}
	}})
	return k
}

// send makes a request with c and answers as answerCtx does.
func (k *keptAlive) send(t *testing.T, c *http.Client, method, path string, body []byte) string {
	t.Helper()
	return answerCtx(k.traced, t, c, method, k.r.URL+path, body)
}

// ledgerPath reads the instance's consent record.
func (k *keptAlive) ledgerPath() string { return consentv1.PathConsent + "?instance=" + k.instance }

// collectorRequests are the requests a collector makes.
var collectorRequests = []struct{ method, path string }{{http.MethodPost, batchv1.PathBatches}, {http.MethodGet, batchv1.PathCursor}, {http.MethodGet, batchv1.PathExported}}

func expiredOnAKeptAliveConnection(t *testing.T, http2 bool) {
	certClock := clocktesting.NewFakePassiveClock(time.Now())
	k := startKeptAlive(t, receivertest.Options{CertificateClock: certClock}, http2, "expiring")
	for i, req := range collectorRequests {
		if got := k.send(t, k.collector, req.method, req.path, mustEncode(t, events(k.instance, 10*i, 2))); got != "OK" {
			t.Fatalf("%s %s with a valid certificate answered %s", req.method, req.path, got)
		}
	}
	if got := k.send(t, k.operator, http.MethodGet, k.ledgerPath(), nil); got != "OK" {
		t.Fatalf("the consent ledger read with a valid operator certificate answered %s", got)
	}
	if stored := counted(t, k.r, k.instance); stored != 2 {
		t.Fatalf("%d events stored, want 2", stored)
	}
	certClock.SetTime(k.cert.NotAfter.Add(time.Second))
	k.reused = nil
	for i, req := range collectorRequests {
		if got, want := k.send(t, k.collector, req.method, req.path, mustEncode(t, events(k.instance, 100+10*i, 2))), "Unauthorized/"+batchv1.ReasonUnauthorized; got != want {
			t.Errorf("%s %s after the certificate expired answered %s, want %s", req.method, req.path, got, want)
		}
	}
	if len(k.reused) == 0 || !k.reused[0] {
		t.Errorf("the first request after the certificate expired did not reuse the connection opened before (%v): the test shows nothing about kept-alive connections", k.reused)
	}
	if stored := counted(t, k.r, k.instance); stored != 2 {
		t.Errorf("%d events stored after the certificate expired, want the 2 from before", stored)
	}

	// The operator's certificate (24 hours), on its kept-alive connection: valid until its end,
	// refused after it.
	certClock.SetTime(k.opCert.NotAfter.Add(-time.Second))
	if got := k.send(t, k.operator, http.MethodGet, k.ledgerPath(), nil); got != "OK" {
		t.Errorf("the consent ledger read with an operator certificate in its last second answered %s", got)
	}
	certClock.SetTime(k.opCert.NotAfter.Add(time.Second))
	k.reused = nil
	if got, want := k.send(t, k.operator, http.MethodGet, k.ledgerPath(), nil), "Unauthorized/"+batchv1.ReasonUnauthorized; got != want {
		t.Errorf("the consent ledger read after the operator's certificate expired answered %s, want %s", got, want)
	}
	if len(k.reused) != 1 || !k.reused[0] {
		t.Errorf("the ledger read after the operator's certificate expired did not reuse its connection (%v)", k.reused)
	}
}

// A certificate whose issuer has been dropped from the receiver's client CA bundle (the
// emergency path for a compromised issuer) is refused at once, also over a connection opened
// while the issuer was trusted: the handshake cannot see the bundle change, and a busy
// collector's or operator's connection may never close.
func TestACertificateOfADroppedIssuerIsRefusedOnAConnectionOpenedBefore(t *testing.T) {
	for _, http2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", http2), func(t *testing.T) { droppedIssuerOnAKeptAliveConnection(t, http2) })
	}
}

func droppedIssuerOnAKeptAliveConnection(t *testing.T, http2 bool) {
	k := startKeptAlive(t, receivertest.Options{}, http2, "compromised")
	for i, req := range collectorRequests {
		if got := k.send(t, k.collector, req.method, req.path, mustEncode(t, events(k.instance, 10*i, 2))); got != "OK" {
			t.Fatalf("%s %s with a trusted issuer answered %s", req.method, req.path, got)
		}
	}
	if got := k.send(t, k.operator, http.MethodGet, k.ledgerPath(), nil); got != "OK" {
		t.Fatalf("the consent ledger read with a trusted issuer answered %s", got)
	}
	next, err := pkitest.NewCA("the next fleet issuer", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k.r.TrustClientCAs(next.Cert)
	k.reused = nil
	for i, req := range collectorRequests {
		if got, want := k.send(t, k.collector, req.method, req.path, mustEncode(t, events(k.instance, 100+10*i, 2))), "Unauthorized/"+batchv1.ReasonUnauthorized; got != want {
			t.Errorf("%s %s after its issuer was dropped answered %s, want %s", req.method, req.path, got, want)
		}
	}
	if got, want := k.send(t, k.operator, http.MethodGet, k.ledgerPath(), nil), "Unauthorized/"+batchv1.ReasonUnauthorized; got != want {
		t.Errorf("the consent ledger read after the operator's issuer was dropped answered %s, want %s", got, want)
	}
	if len(k.reused) != len(collectorRequests)+1 || slices.Contains(k.reused, false) {
		t.Errorf("requests after the issuer was dropped did not all reuse the connections opened before (%v): the test shows nothing about kept-alive connections", k.reused)
	}
	if stored := counted(t, k.r, k.instance); stored != 2 {
		t.Errorf("%d events stored after the issuer was dropped, want the 2 from before", stored)
	}

	// Trusted again (a dropped issuer put back): the same connections are served again; the
	// check follows the bundle, it does not condemn the connection.
	k.r.TrustClientCAs(k.r.CA.Cert, next.Cert)
	if got := k.send(t, k.collector, http.MethodGet, batchv1.PathCursor, nil); got != "OK" {
		t.Errorf("the cursor with the issuer trusted again answered %s", got)
	}
}

// counted is how many events r stored for instance.
func counted(t *testing.T, r *receivertest.Receiver, instance string) int {
	t.Helper()
	n, err := r.Count(context.Background(), "events", instance)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The root a chain was verified to is its last certificate, whatever the chain's length, and a
// connection verified along several chains is served while any of them still ends at a trusted
// root. Here the collector's certificate comes from an intermediate of the fleet's root and the
// collector presents both; with the root alone in the bundle, crypto/tls verifies one chain
// (leaf, intermediate, root); with the intermediate there too, two.
func TestADroppedIssuerIsJudgedByTheRootEachVerifiedChainEndsAt(t *testing.T) {
	ctx := context.Background()
	root, err := pkitest.NewCA("fleet root", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pkitest.NewCA("fleet intermediate", pkitest.Options{Parent: root})
	if err != nil {
		t.Fatal(err)
	}
	other, err := pkitest.NewCA("another fleet", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := receivertest.StartWith(ctx, receivertest.Options{Limits: server.DefaultLimits(), CA: root, HTTP2: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const instance = "chained"
	if err := r.Grant(ctx, instance, consentv1.TierEventLevel, consentSince); err != nil {
		t.Fatal(err)
	}
	secret := inter.Secret()
	secret[pki.KeyCA] = append(append([]byte{}, inter.CertPEM...), root.CertPEM...)
	issuer, err := pki.LoadIssuer(secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := issuer.IssueClient(instance, receivertest.TestPolicy(instance), time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pair.Certificate = append(pair.Certificate[:1], inter.Cert.Raw)
	var chains [][]*x509.Certificate
	connect := func() func() string {
		c := r.HTTPClient(&pair)
		c.Transport.(*http.Transport).ForceAttemptHTTP2 = true
		first := true
		traced := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if !first && !i.Reused {
				t.Error("a request after the first made a new connection: the test shows nothing about connections opened before")
			}
			first = false
		}})
		r.SetIntercept(func(_ http.ResponseWriter, req *http.Request, _ []byte) bool {
			chains = req.TLS.VerifiedChains
			return false
		})
		return func() string {
			t.Helper()
			return answerCtx(traced, t, c, http.MethodGet, r.URL+batchv1.PathCursor, nil)
		}
	}
	lengths := func() []int {
		var n []int
		for _, c := range chains {
			n = append(n, len(c))
		}
		slices.Sort(n)
		return n
	}
	unauthorized := "Unauthorized/" + batchv1.ReasonUnauthorized

	// The root alone: one chain of three.
	cursor := connect()
	if got := cursor(); got != "OK" {
		t.Fatalf("with the root in the bundle, a certificate of its intermediate answered %s", got)
	}
	if got := lengths(); !slices.Equal(got, []int{3}) {
		t.Fatalf("verified chains of lengths %v, want one of 3: the test is not about what it names", got)
	}
	r.TrustClientCAs(other.Cert)
	if got := cursor(); got != unauthorized {
		t.Errorf("with the root dropped, a certificate of its intermediate over its connection answered %s, want %s", got, unauthorized)
	}

	// The root and the intermediate: two chains, served while either one's end is trusted.
	r.TrustClientCAs(root.Cert, inter.Cert)
	cursor = connect()
	if got := cursor(); got != "OK" {
		t.Fatalf("with the root and the intermediate in the bundle: %s", got)
	}
	if got := lengths(); !slices.Equal(got, []int{2, 3}) {
		t.Fatalf("verified chains of lengths %v, want two, of 2 and 3", got)
	}
	for _, kept := range []*pkitest.CA{root, inter} {
		r.TrustClientCAs(kept.Cert, other.Cert)
		if got := cursor(); got != "OK" {
			t.Errorf("with %q still in the bundle, the connection verified to it answered %s", kept.Cert.Subject.CommonName, got)
		}
	}
	r.TrustClientCAs(other.Cert)
	if got := cursor(); got != unauthorized {
		t.Errorf("with both dropped, the connection answered %s, want %s", got, unauthorized)
	}
}
