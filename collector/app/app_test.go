/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package app

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/tlsreload"
)

// A 401 judges the credentials a connection was opened with (expired, or from an issuer the
// receiver dropped): the collector does not send its next request over that connection, which
// would be refused however often it is retried, but makes a new handshake.
func TestARefusedConnectionIsNotReused(t *testing.T) {
	ca, err := pkitest.NewCA("fleet", pkitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := pki.LoadIssuer(ca.Secret(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := issuer.IssueClient("acme", pki.PolicyRef{Cluster: "test", Namespace: "acme", Name: "acme", UID: "acme-uid"}, time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, caFile := writeFile(t, dir, "tls.crt", cc.CertPEM), writeFile(t, dir, "tls.key", cc.KeyPEM), writeFile(t, dir, "ca.crt", ca.CertPEM)
	serverCert, err := ca.ServerCert("receiver", []string{"localhost", "127.0.0.1"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := tlsreload.NewServer(writeFile(t, dir, "server.crt", serverCert.CertPEM), writeFile(t, dir, "server.key", serverCert.KeyPEM), caFile)
	if err != nil {
		t.Fatal(err)
	}
	var refuse atomic.Bool
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			http.Error(w, `{"error":"expired","reason":"Unauthenticated"}`, http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	srv.TLS = rs.TLSConfig()
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()

	tc, err := tlsreload.NewClient(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{TLSClientConfig: tc.TLSConfig("localhost"), MaxIdleConnsPerHost: 2}
	defer transport.CloseIdleConnections()
	c := &http.Client{Transport: freshTLS{next: transport, tls: tc, log: slog.New(slog.DiscardHandler)}, Timeout: 10 * time.Second}
	get := func() int {
		t.Helper()
		resp, err := c.Get(strings.Replace(srv.URL, "127.0.0.1", "localhost", 1))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for range 2 {
		if code := get(); code != http.StatusOK {
			t.Fatalf("answered %d", code)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for two requests: the connection is not kept alive, the test shows nothing", n)
	}
	refuse.Store(true)
	if code := get(); code != http.StatusUnauthorized {
		t.Fatalf("answered %d, want 401", code)
	}
	refuse.Store(false)
	if code := get(); code != http.StatusOK {
		t.Fatalf("answered %d after the refusal", code)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections: the request after a 401 did not make a new handshake", n)
	}
	if code := get(); code != http.StatusOK || conns.Load() != 2 {
		t.Errorf("a request after an accepted one made a new connection (%d connections) or failed (%d)", conns.Load(), code)
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
