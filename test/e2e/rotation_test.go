/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

func credentials(t *testing.T, name string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := stack.Client.Get(context.Background(), client.ObjectKey{Namespace: name, Name: resources.NamesFor(name).Credentials}, s); err != nil {
		t.Fatal(err)
	}
	return s
}

func collectorKey(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: name, Name: name + "-collector"}
}

// collectorLog is what the instance's collector process has logged.
func collectorLog(name string) string {
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(stack.Runner.Root(collectorKey(name))), "collector.log"))
	return string(b)
}

func serialOf(t *testing.T, s *corev1.Secret) string {
	t.Helper()
	cert, err := pki.ParseCertificatePEM(s.Data[pki.KeyCert])
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", cert.SerialNumber)
}

func issuedBy(s *corev1.Secret, ca *pkitest.CA) bool {
	cert, err := pki.ParseCertificatePEM(s.Data[pki.KeyCert])
	if err != nil {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	_, err = cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

// TestIssuerRotationWhileEventsFlow rotates the fleet issuer under a running fleet, the way the
// README tells an admin to: trust both roots, switch the issuer, let collectors renew, re-issue
// the receiver's certificate, drop the old root. Nothing is lost, nothing restarts, and every
// collector is on the new issuer after one renewal.
func TestIssuerRotationWhileEventsFlow(t *testing.T) {
	ctx := context.Background()
	names := []string{"rot-a", "rot-b"}
	var stops []func() int
	var ins []*localstack.Instance
	for _, n := range names {
		in := apply(t, n, v1.TierEventLevel, 4, nil)
		waitReady(t, n)
		ins = append(ins, in)
		stops = append(stops, trickle(in, 50*time.Millisecond))
	}
	managerPID, receiverPID := stack.ManagerPID(), stack.ReceiverPID()
	collectorPIDs := map[string]int{}
	retries := map[string]float64{}
	for _, n := range names {
		collectorPIDs[n] = stack.Runner.PID(collectorKey(n))
		retries[n] = collectorMetric(n, "collector_retries_total")
	}
	old := stack.CA
	next, err := pkitest.NewCA("telemetry local fleet issuer 2", pkitest.Options{NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(2 * 365 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, n := range names {
		before[n] = credentials(t, n).Data[pki.KeyCert]
	}
	// A copy of the first collector's credentials from the old issuer, kept (as a stale or stolen
	// copy would be) to hold a connection open across the end of the overlap.
	stalePair, staleRoots := instanceCert(t, names[0])

	if err := stack.BeginIssuerRotation(ctx, next); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		eventually(t, 30*time.Second, n+"'s collector to get the new bundle", func() bool {
			return bytes.Contains(credentials(t, n).Data[pki.KeyCA], next.CertPEM) && bytes.Contains(credentials(t, n).Data[pki.KeyCA], old.CertPEM)
		})
		if !bytes.Equal(credentials(t, n).Data[pki.KeyCert], before[n]) {
			t.Errorf("%s was re-issued when the issuer changed: certificates move at their renewal", n)
		}
	}
	time.Sleep(5 * time.Second) // batches keep flowing on old certificates, trusted through the overlap

	// Each collector's next renewal (requested here; scheduled renewals take the same path).
	for _, n := range names {
		kubectl(t, "annotate", "tp", "-n", n, n, "--overwrite", v1.AnnotationRotateRequestedAt+"="+time.Now().UTC().Format(time.RFC3339Nano))
	}
	for _, n := range names {
		eventually(t, 30*time.Second, n+" to renew from the new issuer", func() bool { return issuedBy(credentials(t, n), next) })
		serial := serialOf(t, credentials(t, n))
		// Not merely stored: the collector made a handshake with it (the receiver accepted it).
		eventually(t, 60*time.Second, n+"'s collector to present the new certificate", func() bool {
			return strings.Contains(collectorLog(n), `"serial":"`+serial+`"`)
		})
	}

	stale := keptAliveCursor(t, stalePair, staleRoots, names[0])
	if code, body, _ := stale(); code != http.StatusOK {
		t.Fatalf("the old issuer's certificate during the overlap: %d %s", code, body)
	}
	if err := stack.FinishIssuerRotation(ctx, next); err != nil {
		t.Fatal(err)
	}
	// The old root has left the receiver's client CA file: a certificate from it is refused
	// also over the connection it opened while it was trusted.
	if code, body, reused := stale(); code != http.StatusUnauthorized || !strings.Contains(body, batchv1.ReasonUnauthorized) || !reused {
		t.Errorf("the old issuer's certificate over its connection from the overlap, once the old root was dropped: %d %s (connection reused: %v), want 401 %s over the same connection",
			code, body, reused, batchv1.ReasonUnauthorized)
	}
	for _, n := range names {
		eventually(t, 30*time.Second, n+"'s bundle to lose the old root", func() bool {
			return bytes.Equal(credentials(t, n).Data[pki.KeyCA], next.CertPEM)
		})
	}
	time.Sleep(12 * time.Second) // batches flow with only the new root trusted anywhere

	for i, n := range names {
		stops[i]()
		if pid := stack.Runner.PID(collectorKey(n)); pid != collectorPIDs[n] {
			t.Errorf("%s's collector restarted during the rotation (pid %d, was %d)", n, pid, collectorPIDs[n])
		}
		want := allowListed(t, ins[i])
		eventually(t, 90*time.Second, n+" to deliver every event", func() bool {
			return count(t, "SELECT count(*) FROM events WHERE instance_id = $1", n) == want
		})
		if failed := collectorMetric(n, `collector_batches_total{outcome="failed"}`); failed > 0 {
			t.Errorf("%s: %v batches failed across the rotation", n, failed)
		}
		if r := collectorMetric(n, "collector_retries_total") - retries[n]; r != 0 {
			t.Errorf("%s: %v deliveries were retried across the rotation: a connection was refused", n, r)
		}
		if acked := collectorMetric(n, `collector_batches_total{outcome="acknowledged"}`); acked <= 0 {
			t.Fatalf("cannot read %s's batch counts (%v): the check above would pass vacuously", n, acked)
		}
	}
	if stack.ManagerPID() != managerPID || stack.ManagerExited() {
		t.Error("the operator restarted during the rotation")
	}
	if stack.ReceiverPID() != receiverPID {
		t.Error("the receiver restarted during the rotation")
	}
	// The operator's own ledger calls moved too: a policy change is recorded with only the new
	// root trusted by the receiver.
	patch(t, names[0], `{"spec":{"consent":{"tier":"CriticalOnly"}}}`)
	waitEnforced(t, names[0], v1.TierCriticalOnly)
}

// keptAliveCursor returns a function asking the receiver for instance's cursor with pair, over one
// HTTP/2 connection it keeps open between calls: the status, the body, and whether the request
// reused the connection.
func keptAliveCursor(t *testing.T, pair tls.Certificate, roots *x509.CertPool, instance string) func() (int, string, bool) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{pair}}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	return func() (int, string, bool) {
		t.Helper()
		var reused bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, stack.ReceiverURL+batchv1.PathCursor, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("asking for %s's cursor: %v", instance, err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			t.Errorf("the receiver answered over %s: the receiver binary serves HTTP/2", resp.Proto)
		}
		return resp.StatusCode, string(body), reused
	}
}
