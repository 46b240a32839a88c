/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package tlsreload builds mutual-TLS client and server configurations whose key pair and trusted
// CA bundle are re-read from files on every handshake, so a certificate rotated into a mounted
// Secret is used by the next connection without restarting the process; a server can also ask,
// per request, whether a client's root is still in its bundle (Server.Trusts).
package tlsreload

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// maxFileSize bounds each PEM file read; a certificate chain or key is far smaller.
const maxFileSize = 1 << 20

// Client reloads a client key pair and a CA bundle from files.
type Client struct {
	certFile, keyFile, caFile string

	mu       sync.Mutex
	lastPair *tls.Certificate
	lastPool *x509.CertPool
	// OnReload, if set, is called with the leaf serial whenever a different key pair is loaded.
	OnReload func(serial string)
	lastSer  string
	// atHandshake is a digest of the three files when the last handshake loaded them.
	atHandshake [32]byte
}

// digest hashes the three files; ok is false when one cannot be read (mid-update, or gone).
func (c *Client) digest() (sum [32]byte, ok bool) {
	h := sha256.New()
	for _, f := range []string{c.certFile, c.keyFile, c.caFile} {
		data, err := readBounded(f)
		if err != nil {
			return sum, false
		}
		h.Write(data)
		h.Write([]byte{0})
	}
	copy(sum[:], h.Sum(nil))
	return sum, true
}

// NeedsHandshake reports whether the files changed since the last handshake loaded them (a
// renewal, an issuer rotation). A caller holding keep-alive connections then closes the one it
// uses (Request.Close), so the next request makes a new handshake with the new key pair and
// bundle: a busy connection would otherwise carry the old ones indefinitely.
func (c *Client) NeedsHandshake() bool {
	sum, ok := c.digest()
	if !ok {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.atHandshake != [32]byte{} && c.atHandshake != sum
}

// NewClient returns a reloader for the given PEM files. It loads them once to fail fast.
func NewClient(certFile, keyFile, caFile string) (*Client, error) {
	c := &Client{certFile: certFile, keyFile: keyFile, caFile: caFile}
	if _, err := c.keyPair(); err != nil {
		return nil, err
	}
	if _, err := c.pool(); err != nil {
		return nil, err
	}
	return c, nil
}

// TLSConfig returns a TLS 1.3 client configuration that presents the current key pair and
// verifies the server against the current CA bundle on every handshake.
func (c *Client) TLSConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.keyPair()
		},
		// Chain verification happens in VerifyConnection against a freshly read CA bundle;
		// the static RootCAs field could not follow a rotated bundle.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection below
		VerifyConnection:   func(cs tls.ConnectionState) error { return c.verify(cs, serverName) },
	}
}

func (c *Client) verify(cs tls.ConnectionState, serverName string) error {
	pool, err := c.pool()
	if err != nil {
		return err
	}
	return VerifyServer(cs, pool, serverName)
}

// VerifyServer verifies a server's certificate chain against roots and its name against host
// (a DNS name or an IP address), as crypto/tls would with RootCAs set; for clients whose roots
// change between connections. host is required: crypto/tls leaves cs.ServerName empty for an IP
// address, and an empty name would skip the check.
func VerifyServer(cs tls.ConnectionState, roots *x509.CertPool, host string) error {
	if host == "" {
		return errors.New("no server name to verify the receiver's certificate against")
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server presented no certificate")
	}
	pool := roots
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, DNSName: host,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("verifying the receiver's certificate: %w", err)
	}
	return nil
}

// keyPair reads the key pair. A read can straddle a Secret update (certificate new, key old), so
// a mismatch is retried briefly and then answered with the last good pair.
func (c *Client) keyPair() (*tls.Certificate, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var pair tls.Certificate
		sum, summed := c.digest()
		pair, err = loadPair(c.certFile, c.keyFile)
		if err == nil {
			c.mu.Lock()
			if summed {
				c.atHandshake = sum
			}
			c.lastPair = &pair
			serial := fmt.Sprintf("%x", pair.Leaf.SerialNumber)
			changed := serial != c.lastSer
			c.lastSer = serial
			cb := c.OnReload
			c.mu.Unlock()
			if changed && cb != nil {
				cb(serial)
			}
			return &pair, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastPair != nil {
		return c.lastPair, nil
	}
	return nil, err
}

func (c *Client) pool() (*x509.CertPool, error) {
	data, err := readBounded(c.caFile)
	if err == nil {
		p := x509.NewCertPool()
		if p.AppendCertsFromPEM(data) {
			c.mu.Lock()
			c.lastPool = p
			c.mu.Unlock()
			return p, nil
		}
		err = fmt.Errorf("%s holds no PEM certificate", c.caFile)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastPool != nil {
		return c.lastPool, nil
	}
	return nil, fmt.Errorf("loading the CA bundle: %w", err)
}

func loadPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := readBounded(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := readBounded(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading the client key pair from %s and %s: %w", certFile, keyFile, err)
	}
	return pair, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // paths come from the collector's own configuration
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxFileSize)
	}
	return data, nil
}

// Server reloads a server key pair and the client CA bundle from files: a server certificate
// renewed into its Secret, or an issuer rotated into the bundle (old and new roots side by side
// while old client certificates live), is used by the next handshake without a restart.
type Server struct {
	files *Client

	mu sync.Mutex
	// last is the last client CA bundle read that held a certificate: what the handshake and
	// Trusts both fall back on while the file cannot be read or holds none, so the two never
	// disagree about which bundle is the last good one.
	last *clientBundle
}

// clientBundle is one reading of the client CA file: the pool the handshake verifies against,
// and the digests of the same certificates, which Trusts looks roots up in.
type clientBundle struct {
	data  []byte
	pool  *x509.CertPool
	roots map[[32]byte]bool
}

// NewServer returns a reloader for the server's key pair and the bundle of CAs whose client
// certificates it accepts. It loads them once to fail fast.
func NewServer(certFile, keyFile, clientCAFile string) (*Server, error) {
	c, err := NewClient(certFile, keyFile, clientCAFile)
	if err != nil {
		return nil, err
	}
	s := &Server{files: c}
	if _, err := s.clientCAs(); err != nil {
		return nil, err
	}
	return s, nil
}

// Trusts reports whether root, the certificate a client's chain was verified to at its
// handshake, is still in the client CA bundle. The handshake reads the bundle, but a kept-alive
// connection outlives it: without asking again, a root dropped from the bundle (the emergency
// path for a compromised issuer) would go on being served over every connection opened before.
// The file is read on each call (a small bounded read; parsed only when it changed) and the
// answer comes from what this call read; a file that cannot be read, or holds no certificate,
// keeps the last good bundle, the same one the handshake keeps.
func (s *Server) Trusts(root *x509.Certificate) bool {
	if root == nil {
		return false
	}
	b, err := s.clientCAs()
	if err != nil {
		return false
	}
	return b.roots[sha256.Sum256(root.Raw)]
}

// clientCAs reads the client CA file and returns it parsed (the last good bundle when it cannot
// be read or holds no certificate). Parsing is skipped when the file is unchanged.
func (s *Server) clientCAs() (*clientBundle, error) {
	data, err := readBounded(s.files.caFile)
	if err == nil {
		s.mu.Lock()
		last := s.last
		s.mu.Unlock()
		if last != nil && bytes.Equal(data, last.data) {
			return last, nil
		}
		if b := parseClientCAs(data); b != nil {
			s.mu.Lock()
			s.last = b
			s.mu.Unlock()
			return b, nil
		}
		err = fmt.Errorf("%s holds no PEM certificate", s.files.caFile)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last != nil {
		return s.last, nil
	}
	return nil, fmt.Errorf("loading the client CA bundle: %w", err)
}

// parseClientCAs parses a PEM bundle as x509.CertPool.AppendCertsFromPEM does (blocks that are
// not certificates, carry headers or do not parse are skipped); nil when none is left.
func parseClientCAs(data []byte) *clientBundle {
	b := &clientBundle{data: data, pool: x509.NewCertPool(), roots: map[[32]byte]bool{}}
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		b.pool.AddCert(cert)
		b.roots[sha256.Sum256(cert.Raw)] = true
	}
	if len(b.roots) == 0 {
		return nil
	}
	return b
}

// OnReload, if set, is called with the server certificate's serial whenever a different one is
// loaded.
func (s *Server) OnReload(f func(serial string)) {
	s.files.mu.Lock()
	s.files.OnReload = f
	s.files.mu.Unlock()
}

// TLSConfig returns a TLS 1.3 server configuration requiring a client certificate from the
// current bundle, presenting the current key pair; both are read for each handshake (a file that
// cannot be read or parsed keeps the last good one).
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pair, err := s.files.keyPair()
			if err != nil {
				return nil, err
			}
			bundle, err := s.clientCAs()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*pair},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    bundle.pool,
				// The configuration returned here replaces the server's own, ALPN included.
				NextProtos: []string{"h2", "http/1.1"},
			}, nil
		},
	}
}
