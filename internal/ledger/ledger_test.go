/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/sourcegraph/telemetry-operator/internal/ledger"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

// The receiver refuses an expired certificate on every request, also over a connection opened
// while it was valid; a connection lives as long as it is busy. These tests check that the
// operator's ledger client still reaches the ledger (a withdrawal recorded then must not be
// refused for a certificate the operator no longer means to use), by the receiver's answer
// for an instance it has no record of.

// ledgerAt is a ledger client for r whose clock reads what at holds.
func ledgerAt(t *testing.T, r *receivertest.Receiver, issuer *pki.Issuer) (*ledger.Client, func(time.Time)) {
	t.Helper()
	l, err := ledger.New(r.URL, receivertest.TestCluster, pki.NewHolder(issuer), nil)
	if err != nil {
		t.Fatal(err)
	}
	var now atomic.Pointer[time.Time]
	at := func(when time.Time) { now.Store(&when) }
	at(time.Now())
	l.Now = func() time.Time { return *now.Load() }
	return l, at
}

// read asks for an unknown instance's record; it reports whether the request reused a
// connection.
func read(ctx context.Context, t *testing.T, l *ledger.Client, what string) bool {
	t.Helper()
	var reused atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused.Store(i.Reused) }})
	if _, err := l.State(ctx, "nobody-here", "ns"); !errors.Is(err, ledger.ErrUnknownInstance) {
		t.Fatalf("%s: reading an unknown instance's record: %v, want the receiver's answer that it has none", what, err)
	}
	return reused.Load()
}

func start(t *testing.T, o receivertest.Options) *receivertest.Receiver {
	t.Helper()
	o.Limits = server.DefaultLimits()
	r, err := receivertest.StartWith(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// withCertificateClock starts a receiver judging certificates' expiry by a clock of the test's
// (HTTP/2 offered or not), and a ledger client for it: the wall-clock time it started at, that
// clock, the receiver, the client and the setter of the client's clock.
func withCertificateClock(t *testing.T, http2 bool) (time.Time, *clocktesting.FakePassiveClock, *receivertest.Receiver, *ledger.Client, func(time.Time)) {
	t.Helper()
	began := time.Now()
	certClock := clocktesting.NewFakePassiveClock(began)
	r := start(t, receivertest.Options{CertificateClock: certClock, HTTP2: http2})
	l, at := ledgerAt(t, r, r.Issuer)
	return began, certClock, r, l, at
}

// A certificate due for renewal is replaced on the connection that was busy when it fell due,
// not only on idle ones. Over HTTP/2 (the receiver binary's) a busy connection takes new
// requests; over HTTP/1.1 it goes back to the pool when its request ends. Either way a request
// in flight across the renewal time must not keep the old certificate in use: neither for
// requests made while it is in flight and the old certificate expires, nor for requests made
// after it ended.
func TestTheLedgerClientMovesOffABusyConnectionWhenItsCertificateIsDue(t *testing.T) {
	for _, http2 := range []bool{true, false} {
		for _, expiresWhileBusy := range []bool{true, false} {
			t.Run(fmt.Sprintf("http2=%v,expiresWhileBusy=%v", http2, expiresWhileBusy), func(t *testing.T) {
				busyAcrossRenewal(t, http2, expiresWhileBusy)
			})
		}
	}
}

func busyAcrossRenewal(t *testing.T, http2, expiresWhileBusy bool) {
	ctx := context.Background()
	began, certClock, r, l, at := withCertificateClock(t, http2)
	// The first certificate is signed 20 hours back: valid for four more hours by the wall
	// clock (the handshake's), due for renewal once the operator's clock reads now.
	at(began.Add(-20 * time.Hour))
	read(ctx, t, l, "first certificate")
	if !read(ctx, t, l, "first certificate, again") {
		t.Fatal("the second request did not reuse the first one's connection: the test would show nothing")
	}

	// A request held in flight on that connection.
	release, held := make(chan struct{}), make(chan struct{})
	var proto atomic.Int32
	r.SetIntercept(func(_ http.ResponseWriter, req *http.Request, _ []byte) bool {
		if strings.Contains(req.URL.RawQuery, "held") {
			proto.Store(int32(req.ProtoMajor))
			close(held)
			<-release
		}
		return false
	})
	done := make(chan error, 1)
	go func() {
		_, err := l.State(ctx, "held", "ns")
		done <- err
	}()
	<-held
	if want := map[bool]int32{true: 2, false: 1}[http2]; proto.Load() != want {
		t.Fatalf("the request in flight was HTTP/%d, want HTTP/%d", proto.Load(), want)
	}

	// Meanwhile the first certificate falls due (and, in one case, expires by the receiver's
	// clock); then the request in flight ends and its connection is free again.
	at(began)
	if expiresWhileBusy {
		certClock.SetTime(began.Add(5 * time.Hour))
	}
	read(ctx, t, l, "while a request is in flight on the old connection")
	close(release)
	err := <-done
	// The receiver's answer; or, its certificate expired while it was held, a refusal the
	// client retries.
	if ok := errors.Is(err, ledger.ErrUnknownInstance) || expiresWhileBusy && errors.Is(err, ledger.ErrUnavailable); !ok {
		t.Fatalf("the request in flight: %v", err)
	}
	r.SetIntercept(nil)
	certClock.SetTime(began.Add(5 * time.Hour))
	for i := range 3 {
		read(ctx, t, l, fmt.Sprintf("after the request in flight ended, read %d", i+1))
	}
}

// A certificate the receiver calls expired before the operator thinks it due (the receiver's
// clock ahead) costs one request, retried as unavailability, never a refusal.
func TestTheLedgerClientRecoversFromACertificateTheReceiverCallsExpired(t *testing.T) {
	ctx := context.Background()
	began, certClock, _, l, at := withCertificateClock(t, true)
	at(began.Add(-20 * time.Hour)) // valid until began+4h, due at began-4h
	read(ctx, t, l, "first certificate")
	at(began.Add(-10 * time.Hour)) // not due by the operator's clock
	certClock.SetTime(began.Add(4*time.Hour + time.Second))
	_, err := l.State(ctx, "nobody-here", "ns")
	if !errors.Is(err, ledger.ErrUnavailable) || errors.Is(err, ledger.ErrRejected) {
		t.Fatalf("the request the receiver refused for an expired certificate: %v, want it retried as unavailability", err)
	}
	read(ctx, t, l, "the next request, with a new certificate")
}

// Near the issuer's end every certificate is cut short at it, so it is due sooner than a full
// one: judged by the full lifetime it would be due as soon as signed, and every request would
// make a new connection and sign a new certificate.
func TestTheLedgerClientKeepsItsConnectionNearTheIssuersEnd(t *testing.T) {
	ctx := context.Background()
	ca, err := pkitest.NewCA("issuer near its end", pkitest.Options{NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(4 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, receivertest.Options{CA: ca})
	issuer, err := pki.LoadIssuer(ca.Secret(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	l, _ := ledgerAt(t, r, issuer)
	read(ctx, t, l, "first request")
	for i := range 3 {
		if !read(ctx, t, l, "a later request") {
			t.Errorf("request %d made a new connection with a certificate four hours from its issuer's end", i+2)
		}
	}
}
