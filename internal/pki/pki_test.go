/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
)

var now = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func newIssuer(t *testing.T) (*Issuer, *pkitest.CA) {
	t.Helper()
	ca, err := pkitest.NewCA("fleet issuer", pkitest.Options{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := LoadIssuer(ca.Secret(), now)
	if err != nil {
		t.Fatal(err)
	}
	return iss, ca
}

func TestLoadIssuerRejectsUnusableIssuers(t *testing.T) {
	good, err := pkitest.NewCA("good", pkitest.Options{NotBefore: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pkitest.NewCA("other", pkitest.Options{NotBefore: now.Add(-time.Hour)})
	leaf, _ := pkitest.NewCA("leaf", pkitest.Options{NotBefore: now.Add(-time.Hour), NotCA: true})
	expired, _ := pkitest.NewCA("expired", pkitest.Options{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	future, _ := pkitest.NewCA("future", pkitest.Options{NotBefore: now.Add(time.Hour)})

	cases := []struct {
		name string
		data map[string][]byte
		want string
	}{
		{"missing", nil, `must hold a PEM certificate in "tls.crt"`},
		{"no key", map[string][]byte{"tls.crt": good.CertPEM}, `its private key in "tls.key"`},
		{"garbage certificate", map[string][]byte{"tls.crt": []byte("not pem"), "tls.key": good.KeyPEM}, "tls.crt: no PEM CERTIFICATE block"},
		{"key in the certificate slot", map[string][]byte{"tls.crt": good.KeyPEM, "tls.key": good.KeyPEM}, `unexpected PEM block "PRIVATE KEY"`},
		{"garbage key", map[string][]byte{"tls.crt": good.CertPEM, "tls.key": []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}, "tls.key: malformed private key"},
		{"mismatched key", map[string][]byte{"tls.crt": good.CertPEM, "tls.key": other.KeyPEM}, "does not belong to the certificate"},
		{"not a CA", leaf.Secret(), "is not a CA"},
		{"expired", expired.Secret(), "expired at"},
		{"not yet valid", future.Secret(), "is not valid before"},
		{"bad ca bundle", map[string][]byte{"tls.crt": good.CertPEM, "tls.key": good.KeyPEM, "ca.crt": []byte("junk")}, "ca.crt:"},
		// A rotation that replaced the bundle with another root instead of adding to it.
		{"bundle without the issuer", map[string][]byte{"tls.crt": good.CertPEM, "tls.key": good.KeyPEM, "ca.crt": other.CertPEM}, "does not hold the issuer certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadIssuer(tc.data, now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := LoadIssuer(good.Secret(), now); err != nil {
		t.Fatalf("a good issuer is rejected: %v", err)
	}
}

func TestIssuedCertificateVerifies(t *testing.T) {
	iss, ca := newIssuer(t)
	period := 720 * time.Hour
	cc, err := iss.IssueClient("acme", testPolicy, period, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cc.Cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate does not verify for client auth: %v", err)
	}
	if _, err := cc.Cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("client certificate must not be usable for server auth")
	}
	if id, err := InstanceID(cc.Cert); err != nil || id != "acme" {
		t.Fatalf("identity = %q, %v", id, err)
	}
	if got := cc.Cert.NotAfter.Sub(now); got != Lifetime(period) {
		t.Fatalf("lifetime from now = %v, want %v", got, Lifetime(period))
	}
	if cc.Cert.IsCA {
		t.Fatal("client certificate is a CA")
	}
	cc2, _ := iss.IssueClient("acme", testPolicy, period, now, nil)
	if cc2.Cert.SerialNumber.Cmp(cc.Cert.SerialNumber) == 0 {
		t.Fatal("serial numbers repeat")
	}
	if cc.Cert.SerialNumber.BitLen() < 64 {
		t.Fatalf("serial number has only %d bits", cc.Cert.SerialNumber.BitLen())
	}

	// The openssl command line agrees, with client-auth purpose.
	dir := t.TempDir()
	caFile, leafFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "leaf.pem")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(leafFile, cc.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is required for this test")
	}
	attime := []string{"-attime", "1795867200"} // 2026-11-28T12:00:00Z, inside the validity window
	out, err := exec.Command(openssl, append([]string{"verify", "-CAfile", caFile, "-purpose", "sslclient"}, append(attime, leafFile)...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("openssl verify failed: %v\n%s", err, out)
	}
	out, err = exec.Command(openssl, append([]string{"verify", "-CAfile", caFile, "-purpose", "sslserver"}, append(attime, leafFile)...)...).CombinedOutput()
	if err == nil {
		t.Fatalf("openssl accepts the client certificate for server auth:\n%s", out)
	}
	text, err := exec.Command(openssl, "x509", "-in", leafFile, "-noout", "-text").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"URI:spiffe://telemetry.sourcegraph.com/instance/acme", "TLS Web Client Authentication", "CA:FALSE"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("openssl x509 -text lacks %q", want)
		}
	}
}

func TestCheckClientFindsEveryTampering(t *testing.T) {
	iss, _ := newIssuer(t)
	other, _ := newIssuer(t)
	period := 24 * time.Hour
	good, _ := iss.IssueClient("acme", testPolicy, period, now, nil)
	another, _ := iss.IssueClient("acme", testPolicy, period, now, nil)
	wrongID, _ := iss.IssueClient("globex", testPolicy, period, now, nil)
	recreated := testPolicy
	recreated.UID = "acme-uid-2"
	wrongPolicy, _ := iss.IssueClient("acme", recreated, period, now, nil)
	noPolicy, _ := iss.issue(pkix.Name{CommonName: "acme"}, []*url.URL{IdentityURI("acme")}, Lifetime(period), now, nil)
	foreign, _ := other.IssueClient("acme", testPolicy, period, now, nil)
	secret := func(c *ClientCert, key []byte) map[string][]byte {
		if key == nil {
			key = c.KeyPEM
		}
		return map[string][]byte{KeyCert: c.CertPEM, KeyKey: key, KeyCA: iss.BundlePEM}
	}
	cases := []struct {
		name string
		data map[string][]byte
		at   time.Time
		want string
	}{
		{"valid", secret(good, nil), now, ""},
		{"secret missing", nil, now, IssueSecretMissing},
		{"garbage", map[string][]byte{KeyCert: []byte("x"), KeyKey: []byte("y")}, now, IssueMalformed},
		{"key of another certificate", secret(good, another.KeyPEM), now, IssueKeyMismatch},
		{"certificate for another instance", secret(wrongID, nil), now, IssueWrongIdentity},
		{"certificate for another policy of the instance", secret(wrongPolicy, nil), now, IssueWrongIdentity},
		{"certificate naming no policy (an older operator's)", secret(noPolicy, nil), now, IssueWrongIdentity},
		{"signed by another issuer", secret(foreign, nil), now, IssueWrongIssuer},
		{"stale CA bundle", map[string][]byte{KeyCert: good.CertPEM, KeyKey: good.KeyPEM, KeyCA: other.BundlePEM}, now, IssueStaleBundle},
		{"expired", secret(good, nil), good.Cert.NotAfter, IssueExpired},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, got := iss.CheckClient(tc.data, "acme", testPolicy, tc.at); got != tc.want {
				t.Fatalf("CheckClient = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRenewalTime(t *testing.T) {
	period := 720 * time.Hour
	nb := now
	// Normal case: one period after notBefore, which leaves a third of a 1.5-period lifetime.
	if got := RenewalTime(nb, nb.Add(Lifetime(period)), period); !got.Equal(nb.Add(period)) {
		t.Fatalf("renewal = %v, want %v", got, nb.Add(period))
	}
	// A certificate capped short by the issuer's expiry renews when a third of its life remains.
	short := nb.Add(90 * time.Hour)
	if got := RenewalTime(nb, short, period); !got.Equal(nb.Add(60 * time.Hour)) {
		t.Fatalf("capped renewal = %v, want %v", got, nb.Add(60*time.Hour))
	}
	// Shortening the period in the spec brings renewal forward.
	if got := RenewalTime(nb, nb.Add(Lifetime(period)), 24*time.Hour); !got.Equal(nb.Add(24 * time.Hour)) {
		t.Fatalf("renewal after shortening = %v", got)
	}
}

func TestInstanceIDRejectsAmbiguousCertificates(t *testing.T) {
	two := &x509.Certificate{URIs: []*url.URL{IdentityURI("a"), IdentityURI("b")}}
	if _, err := InstanceID(two); err == nil {
		t.Fatal("a certificate naming two instances is accepted")
	}
	none := &x509.Certificate{URIs: []*url.URL{{Scheme: "https", Host: "example.com"}}}
	if _, err := InstanceID(none); err == nil {
		t.Fatal("a certificate without identity is accepted")
	}
	bad := &x509.Certificate{URIs: []*url.URL{IdentityURI("../../etc")}}
	if _, err := InstanceID(bad); err == nil {
		t.Fatal("an invalid instance id is accepted")
	}
}

func TestPolicyOfRefusesMalformedOrAmbiguousCertificates(t *testing.T) {
	iss, _ := newIssuer(t)
	cc, err := iss.IssueClient("acme", testPolicy, time.Hour, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := PolicyOf(cc.Cert); err != nil || got != testPolicy {
		t.Fatalf("PolicyOf(issued) = %+v, %v; want %+v", got, err, testPolicy)
	}
	policyURI := func(path string) *url.URL {
		return &url.URL{Scheme: IdentityScheme, Host: IdentityHost, Path: policyPrefix + path}
	}
	for name, uris := range map[string][]*url.URL{
		"none":               {IdentityURI("acme")},
		"two":                {PolicyURI(testPolicy), PolicyURI(PolicyRef{Cluster: "test", Namespace: "b", Name: "b", UID: "b"})},
		"three parts":        {policyURI("test/acme/acme")},
		"five parts":         {policyURI("test/acme/acme/uid/more")},
		"empty uid":          {policyURI("test/acme/acme/")},
		"traversal":          {policyURI("test/../acme/uid")},
		"upper-case cluster": {policyURI("Test/acme/acme/uid")},
		"long name":          {policyURI("test/acme/" + strings.Repeat("a", 254) + "/uid")},
		"other host":         {{Scheme: IdentityScheme, Host: "example.com", Path: policyPrefix + "test/acme/acme/uid"}},
	} {
		if got, err := PolicyOf(&x509.Certificate{URIs: uris}); err == nil {
			t.Errorf("%s: PolicyOf = %+v, want an error", name, got)
		}
	}
	for _, bad := range []PolicyRef{{}, {Cluster: "c", Namespace: "n", Name: "p"}, {Cluster: "c", Namespace: "n/x", Name: "p", UID: "u"}} {
		if _, err := iss.IssueClient("acme", bad, time.Hour, now, nil); err == nil {
			t.Errorf("IssueClient(%+v) issued a certificate", bad)
		}
	}
}

func TestIssuerCapsLifetime(t *testing.T) {
	ca, _ := pkitest.NewCA("short", pkitest.Options{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour)})
	iss, err := LoadIssuer(ca.Secret(), now)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := iss.IssueClient("acme", testPolicy, 720*time.Hour, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("client outlives issuer: %v > %v", cc.Cert.NotAfter, ca.Cert.NotAfter)
	}
	if !iss.ExpiresWithin(now, 72*time.Hour) || iss.ExpiresWithin(now, 24*time.Hour) {
		t.Fatal("ExpiresWithin is wrong")
	}
}

// TestRotationKeepsCertificatesOfARootStillInTheBundle: after a rotation the new issuer's
// bundle holds the previous root too: certificates it signed stay usable (their CA bundle is
// refreshed, not the certificate) until renewal; once the old root leaves the bundle they are
// due at once.
func TestRotationKeepsCertificatesOfARootStillInTheBundle(t *testing.T) {
	oldIss, oldCA := newIssuer(t)
	_, newCA := newIssuer(t)
	issued, err := oldIss.IssueClient("acme", testPolicy, 24*time.Hour, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	overlap := newCA.Secret()
	overlap[KeyCA] = append(append([]byte{}, newCA.CertPEM...), oldCA.CertPEM...)
	during, err := LoadIssuer(overlap, now)
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{KeyCert: issued.CertPEM, KeyKey: issued.KeyPEM, KeyCA: oldIss.BundlePEM}
	if _, got := during.CheckClient(data, "acme", testPolicy, now); got != IssueStaleBundle {
		t.Fatalf("during the overlap, a certificate of the previous root = %q, want %q (keep it, refresh the bundle)", got, IssueStaleBundle)
	}
	data[KeyCA] = during.BundlePEM
	if _, got := during.CheckClient(data, "acme", testPolicy, now); got != "" {
		t.Fatalf("with the bundle refreshed = %q, want usable", got)
	}
	after, err := LoadIssuer(newCA.Secret(), now)
	if err != nil {
		t.Fatal(err)
	}
	data[KeyCA] = after.BundlePEM
	if _, got := after.CheckClient(data, "acme", testPolicy, now); got != IssueWrongIssuer {
		t.Fatalf("after the old root left the bundle = %q, want %q", got, IssueWrongIssuer)
	}
	fresh, err := during.IssueClient("acme", testPolicy, 24*time.Hour, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, got := after.CheckClient(map[string][]byte{KeyCert: fresh.CertPEM, KeyKey: fresh.KeyPEM, KeyCA: after.BundlePEM}, "acme", testPolicy, now); got != "" {
		t.Fatalf("a certificate signed during the overlap, after it = %q, want usable", got)
	}
	if !during.Same(during) || during.Same(after) || during.Same(nil) {
		t.Error("Same does not tell issuers apart")
	}
}

// testPolicy is the policy the test certificates name.
var testPolicy = PolicyRef{Cluster: "test", Namespace: "acme", Name: "acme", UID: "acme-uid"}
