/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package tlsreload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
)

// secretVolume mimics how the kubelet updates a mounted Secret: files are symlinks into a
// timestamped directory, and an update swaps the ..data symlink atomically.
type secretVolume struct {
	t   *testing.T
	dir string
	gen int
}

func newSecretVolume(t *testing.T) *secretVolume {
	return &secretVolume{t: t, dir: t.TempDir()}
}

func (v *secretVolume) write(files map[string][]byte) {
	v.gen++
	ts := filepath.Join(v.dir, fmt.Sprintf("..%d", v.gen))
	if err := os.Mkdir(ts, 0o700); err != nil {
		v.t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o600); err != nil {
			v.t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				v.t.Fatal(err)
			}
		}
	}
}

func (v *secretVolume) path(name string) string { return filepath.Join(v.dir, name) }

func TestClientPicksUpRotatedCertificateWithoutRestart(t *testing.T) {
	ca, err := pkitest.NewCA("fleet", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := pki.LoadIssuer(ca.Secret(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.ServerCert("receiver", []string{"127.0.0.1", "localhost"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	serverPair, err := tls.X509KeyPair(server.CertPEM, server.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(ca.Cert)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := pki.InstanceID(r.TLS.PeerCertificates[0])
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		_, _ = fmt.Fprintf(w, "%s %x", id, r.TLS.PeerCertificates[0].SerialNumber)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverPair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()

	vol := newSecretVolume(t)
	first, _ := issuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	vol.write(map[string][]byte{"tls.crt": first.CertPEM, "tls.key": first.KeyPEM, "ca.crt": ca.CertPEM})

	c, err := NewClient(vol.path("tls.crt"), vol.path("tls.key"), vol.path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	var reloads []string
	c.OnReload = func(serial string) { reloads = append(reloads, serial) }
	transport := &http.Transport{TLSClientConfig: c.TLSConfig("localhost")}
	httpClient := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	get := func() string {
		t.Helper()
		resp, err := httpClient.Get(strings.Replace(srv.URL, "127.0.0.1", "localhost", 1))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		return string(body)
	}
	if got, want := get(), fmt.Sprintf("acme %x", first.Cert.SerialNumber); got != want {
		t.Fatalf("first connection presented %q, want %q", got, want)
	}

	// Rotate: the operator writes a new key pair into the Secret; the kubelet swaps the files.
	second, _ := issuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	vol.write(map[string][]byte{"tls.crt": second.CertPEM, "tls.key": second.KeyPEM, "ca.crt": ca.CertPEM})
	// An open keep-alive connection may keep the old certificate; the next connection must not.
	transport.CloseIdleConnections()
	if got, want := get(), fmt.Sprintf("acme %x", second.Cert.SerialNumber); got != want {
		t.Fatalf("after rotation the next connection presented %q, want %q", got, want)
	}
	if len(reloads) != 1 || reloads[0] != fmt.Sprintf("%x", second.Cert.SerialNumber) {
		t.Fatalf("reload callback saw %v", reloads)
	}

	// A torn or broken update never takes the client down: it keeps the last good pair.
	vol.write(map[string][]byte{"tls.crt": second.CertPEM, "tls.key": first.KeyPEM, "ca.crt": ca.CertPEM})
	transport.CloseIdleConnections()
	if got, want := get(), fmt.Sprintf("acme %x", second.Cert.SerialNumber); got != want {
		t.Fatalf("with a mismatched pair on disk the client presented %q, want the last good %q", got, want)
	}
}

func TestClientRejectsAnUntrustedReceiver(t *testing.T) {
	ca, _ := pkitest.NewCA("fleet", pkitest.Options{})
	rogueCA, _ := pkitest.NewCA("rogue", pkitest.Options{})
	issuer, _ := pki.LoadIssuer(ca.Secret(), time.Now())
	rogue, _ := rogueCA.ServerCert("receiver", []string{"localhost"}, time.Time{})
	pair, _ := tls.X509KeyPair(rogue.CertPEM, rogue.KeyPEM)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()

	vol := newSecretVolume(t)
	cc, _ := issuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	vol.write(map[string][]byte{"tls.crt": cc.CertPEM, "tls.key": cc.KeyPEM, "ca.crt": ca.CertPEM})
	c, err := NewClient(vol.path("tls.crt"), vol.path("tls.key"), vol.path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c.TLSConfig("localhost")}}
	_, err = hc.Get(strings.Replace(srv.URL, "127.0.0.1", "localhost", 1))
	if err == nil || !strings.Contains(err.Error(), "verifying the receiver's certificate") {
		t.Fatalf("a receiver signed by another CA must be rejected, got %v", err)
	}
}

func TestNewClientFailsClearlyOnBadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca, _ := pkitest.NewCA("fleet", pkitest.Options{})
	caFile := write("ca.crt", ca.CertPEM)
	cases := map[string]struct {
		cert, key, ca string
		want          string
	}{
		"missing files": {filepath.Join(dir, "nope.crt"), filepath.Join(dir, "nope.key"), caFile, "no such file"},
		"garbage pair":  {write("g.crt", []byte("garbage")), write("g.key", []byte("garbage")), caFile, "loading the client key pair"},
		"oversized":     {write("big.crt", make([]byte, maxFileSize+10)), write("big.key", []byte("x")), caFile, "larger than"},
		"CA key as pair": {write("ca-as.crt", ca.CertPEM), write("ca-as.key", []byte("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n")), caFile,
			"loading the client key pair"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := NewClient(tc.cert, tc.key, tc.ca)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestServerFollowsARotatedIssuerAndCertificateWithoutRestart: the receiver's side of an issuer
// rotation. The client CA bundle gains the new issuer next to the old one (the overlap), so
// certificates of both are accepted; once the old one is dropped from the bundle, its
// certificates are refused. A renewed server certificate is presented by the next handshake.
func TestServerFollowsARotatedIssuerAndCertificateWithoutRestart(t *testing.T) {
	oldCA, err := pkitest.NewCA("fleet 2026", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := pkitest.NewCA("fleet 2027", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	oldIssuer, _ := pki.LoadIssuer(oldCA.Secret(), time.Now())
	newIssuer, _ := pki.LoadIssuer(newCA.Secret(), time.Now())
	serverCert := func() *pkitest.CA {
		c, err := oldCA.ServerCert("receiver", []string{"127.0.0.1", "localhost"}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := serverCert()
	vol := newSecretVolume(t)
	vol.write(map[string][]byte{"tls.crt": first.CertPEM, "tls.key": first.KeyPEM, "ca.crt": oldCA.CertPEM})
	rs, err := NewServer(vol.path("tls.crt"), vol.path("tls.key"), vol.path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, "%s", r.Proto)
	}))
	srv.TLS = rs.TLSConfig()
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	url := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)

	roots := x509.NewCertPool()
	roots.AddCert(oldCA.Cert)
	connect := func(issuer *pki.Issuer) (string, *x509.Certificate, error) {
		t.Helper()
		cc, err := issuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		pair, _ := tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
		if err != nil {
			return "", nil, err
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return string(body), resp.TLS.PeerCertificates[0], nil
	}
	proto, presented, err := connect(oldIssuer)
	if err != nil {
		t.Fatal(err)
	}
	if proto != "HTTP/2.0" {
		t.Errorf("served %s: the reloading configuration lost HTTP/2", proto)
	}
	if !presented.Equal(first.Cert) {
		t.Fatal("the server did not present its certificate")
	}
	if _, _, err := connect(newIssuer); err == nil {
		t.Fatal("a certificate of an issuer not yet in the bundle was accepted")
	}

	// The overlap: both issuers in the bundle, and a renewed server certificate.
	second := serverCert()
	vol.write(map[string][]byte{"tls.crt": second.CertPEM, "tls.key": second.KeyPEM, "ca.crt": append(append([]byte{}, oldCA.CertPEM...), newCA.CertPEM...)})
	for _, iss := range []*pki.Issuer{oldIssuer, newIssuer} {
		_, presented, err := connect(iss)
		if err != nil {
			t.Fatalf("during the overlap: %v", err)
		}
		if !presented.Equal(second.Cert) {
			t.Fatal("the renewed server certificate was not presented by the next handshake")
		}
	}

	// The old issuer retired from the bundle.
	vol.write(map[string][]byte{"tls.crt": second.CertPEM, "tls.key": second.KeyPEM, "ca.crt": newCA.CertPEM})
	if _, _, err := connect(oldIssuer); err == nil {
		t.Fatal("a certificate of the retired issuer was still accepted")
	}
	if _, _, err := connect(newIssuer); err != nil {
		t.Fatalf("the new issuer after the overlap: %v", err)
	}

	// A broken bundle on disk keeps the last good one.
	vol.write(map[string][]byte{"tls.crt": second.CertPEM, "tls.key": second.KeyPEM, "ca.crt": []byte("not PEM")})
	if _, _, err := connect(newIssuer); err != nil {
		t.Fatalf("with a broken bundle on disk: %v", err)
	}
}

// newFleetClient is a client reloading a certificate for "acme" from a fleet CA, and the CA
// bundle holding that CA, from a fresh Secret volume.
func newFleetClient(t *testing.T) (*pkitest.CA, *Client, *pki.Issuer, *secretVolume) {
	t.Helper()
	ca, _ := pkitest.NewCA("fleet", pkitest.Options{})
	issuer, _ := pki.LoadIssuer(ca.Secret(), time.Now())
	vol := newSecretVolume(t)
	cc, _ := issuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	vol.write(map[string][]byte{"tls.crt": cc.CertPEM, "tls.key": cc.KeyPEM, "ca.crt": ca.CertPEM})
	c, err := NewClient(vol.path("tls.crt"), vol.path("tls.key"), vol.path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return ca, c, issuer, vol
}

// TestClientChecksAReceiverAddressedByIP: crypto/tls sends no server name for an IP address, so
// the address must be checked against the certificate's IP SANs explicitly: a certificate from
// the trusted CA for another address is refused.
func TestClientChecksAReceiverAddressedByIP(t *testing.T) {
	ca, c, _, _ := newFleetClient(t)
	for _, tc := range []struct {
		sans []string
		ok   bool
	}{{[]string{"127.0.0.1"}, true}, {[]string{"127.0.0.2", "elsewhere.example"}, false}} {
		server, _ := ca.ServerCert("receiver", tc.sans, time.Time{})
		pair, _ := tls.X509KeyPair(server.CertPEM, server.KeyPEM)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}
		srv.StartTLS()
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c.TLSConfig("127.0.0.1")}}
		resp, err := hc.Get(srv.URL)
		if err == nil {
			_ = resp.Body.Close()
		}
		srv.Close()
		if (err == nil) != tc.ok {
			t.Errorf("receiver certificate for %v at 127.0.0.1: err = %v, want ok=%v", tc.sans, err, tc.ok)
		}
	}
}

func TestNeedsHandshakeUntilOneLoadsTheNewFiles(t *testing.T) {
	ca, c, issuer, vol := newFleetClient(t)
	other, _ := pkitest.NewCA("next", pkitest.Options{})
	cc, _ := issuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	if c.NeedsHandshake() {
		t.Fatal("nothing changed since the files were loaded")
	}
	vol.write(map[string][]byte{"tls.crt": cc.CertPEM, "tls.key": cc.KeyPEM, "ca.crt": append(append([]byte{}, ca.CertPEM...), other.CertPEM...)})
	for look := range 2 {
		if !c.NeedsHandshake() {
			t.Fatalf("look %d: a new CA bundle needs a handshake, and goes on needing one until it happens", look)
		}
	}
	if _, err := c.keyPair(); err != nil { // what a handshake does
		t.Fatal(err)
	}
	if c.NeedsHandshake() {
		t.Fatal("the handshake loaded the new files")
	}
	renewed, _ := issuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	vol.write(map[string][]byte{"tls.crt": renewed.CertPEM, "tls.key": renewed.KeyPEM, "ca.crt": ca.CertPEM})
	if !c.NeedsHandshake() {
		t.Fatal("a renewed key pair needs a handshake")
	}
}

// acmePolicy is the policy the test certificates name.
var acmePolicy = pki.PolicyRef{Cluster: "test", Namespace: "acme", Name: "acme", UID: "acme-uid"}

// TestTrustsFollowsTheBundleOnAKeptAliveConnection: a root dropped from the client CA bundle is
// no longer trusted over a connection its certificate opened before (the handshake cannot see
// the change); a bundle that breaks keeps the last good one, as the handshake does.
func TestTrustsFollowsTheBundleOnAKeptAliveConnection(t *testing.T) {
	oldCA, err := pkitest.NewCA("fleet 2026", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := pkitest.NewCA("fleet 2027", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := pkitest.NewCA("not the fleet", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	server, err := oldCA.ServerCert("receiver", []string{"127.0.0.1", "localhost"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	both := append(append([]byte{}, oldCA.CertPEM...), newCA.CertPEM...)
	vol := newSecretVolume(t)
	files := func(bundle []byte) map[string][]byte {
		return map[string][]byte{"tls.crt": server.CertPEM, "tls.key": server.KeyPEM, "ca.crt": bundle}
	}
	vol.write(files(both))
	rs, err := NewServer(vol.path("tls.crt"), vol.path("tls.key"), vol.path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*pkitest.CA{oldCA, newCA} {
		if !rs.Trusts(ca.Cert) {
			t.Errorf("%s, in the bundle, is not trusted", ca.Cert.Subject.CommonName)
		}
	}
	if rs.Trusts(stranger.Cert) || rs.Trusts(nil) {
		t.Error("a CA that was never in the bundle, or none, is trusted")
	}

	// A stand-in for the receiver's per-request check.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chain := r.TLS.VerifiedChains[0]
		if !rs.Trusts(chain[len(chain)-1]) {
			http.Error(w, "untrusted", http.StatusUnauthorized)
			return
		}
		_, _ = fmt.Fprint(w, r.Proto)
	}))
	srv.TLS = rs.TLSConfig()
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	url := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	oldIssuer, _ := pki.LoadIssuer(oldCA.Secret(), time.Now())
	cc, err := oldIssuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
	roots := x509.NewCertPool()
	roots.AddCert(oldCA.Cert)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	handshakes := 0
	tr.TLSClientConfig.VerifyConnection = func(tls.ConnectionState) error { handshakes++; return nil }
	get := func() (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(body))
	}
	if code, body := get(); code != http.StatusOK || body != "HTTP/2.0" {
		t.Fatalf("during the overlap: %d %s", code, body)
	}

	// The old root dropped (a compromised issuer), then the file broken before any request came:
	// a handshake in between read the new bundle, and the per-request check falls back on that
	// one too (one last good bundle, not one for handshakes and another for requests). The open
	// connection is refused.
	vol.write(files(newCA.CertPEM))
	newIssuer, _ := pki.LoadIssuer(newCA.Secret(), time.Now())
	ncc, err := newIssuer.IssueClient("acme", acmePolicy, time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	npair, _ := tls.X509KeyPair(ncc.CertPEM, ncc.KeyPEM)
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{npair}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	// TLS 1.3 reports a refused client certificate after the handshake: a read shows it.
	_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a handshake with the new issuer's certificate: %v", err)
	}
	_ = conn.Close()
	vol.write(files([]byte("not PEM")))
	if code, _ := get(); code != http.StatusUnauthorized {
		t.Errorf("with the old root dropped, a request over the connection opened before answered %d, want 401", code)
	}
	if handshakes != 1 {
		t.Fatalf("%d handshakes: the second request did not reuse the first one's connection, the test shows nothing", handshakes)
	}
	if !rs.Trusts(newCA.Cert) || rs.Trusts(oldCA.Cert) {
		t.Error("after the old root was dropped: want the new one trusted, the old one not")
	}

	// A bundle that breaks, or goes, keeps the last good one.
	for what, bundle := range map[string][]byte{"not PEM": []byte("not PEM"), "a key, no certificate": []byte("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"),
		"oversized": make([]byte, maxFileSize+1)} {
		vol.write(files(bundle))
		if !rs.Trusts(newCA.Cert) || rs.Trusts(oldCA.Cert) {
			t.Errorf("with a bundle that is %s: the last good bundle is not kept", what)
		}
	}
	if err := os.Remove(vol.path("ca.crt")); err != nil {
		t.Fatal(err)
	}
	if !rs.Trusts(newCA.Cert) || rs.Trusts(oldCA.Cert) {
		t.Error("with the bundle gone: the last good bundle is not kept")
	}
}
