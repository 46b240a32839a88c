/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
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

	if _, err := rcv.Store.ForceRelease(ctx, instance, &consentv1.Owner{Cluster: receivertest.TestCluster, Namespace: "elsewhere"}); err != nil {
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
