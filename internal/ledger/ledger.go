/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package ledger is the operator's client for the receiver's consent ledger (api/consent/v1):
// it records consent transitions, reads an instance's record, releases ownership and requests
// erasures, over mutual TLS with the operator's own identity. That identity is a short-lived
// client certificate the operator signs with the fleet issuer for its cluster, kept in memory
// only and renewed well before it expires.
package ledger

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/tlsreload"
)

// CertLifetime is how long the operator's own certificate is valid (less when the issuer ends
// sooner); it is renewed once a third of its own lifetime is left (renewalTime).
const CertLifetime = 24 * time.Hour

// maxResponse bounds what is read of an answer.
const maxResponse = 4 << 20

// Errors callers distinguish.
var (
	// ErrOwnedElsewhere: another policy or cluster owns the instance's record.
	ErrOwnedElsewhere = errors.New("the instance's consent record is owned by another policy")
	// ErrNotReserved: the instance has no record and the receiver requires it to be reserved
	// for the policy's namespace first. It is also an ErrOwnedElsewhere (not this policy's to
	// claim): errors.Is matches both.
	ErrNotReserved = fmt.Errorf("%w: the instance is not reserved for this namespace", ErrOwnedElsewhere)
	// ErrUnknownInstance: the receiver has no record of the instance.
	ErrUnknownInstance = errors.New("the receiver has no consent record of the instance")
	// ErrUnavailable: the receiver could not be reached or answered with a transient failure;
	// retrying later may succeed.
	ErrUnavailable = errors.New("the receiver is unavailable")
	// ErrStale: the request was computed from an outdated copy of the record; read it again.
	ErrStale = errors.New("the receiver's consent record has moved on")
	// ErrRejected: the receiver refused the request as invalid; retrying will not help.
	ErrRejected = errors.New("the receiver refused the request")
)

// Client talks to one receiver's consent ledger.
type Client struct {
	base    string
	cluster string
	issuers *pki.Holder
	// newHTTP builds an HTTP client with a transport of its own: replacing it replaces every
	// connection, busy or idle (see httpClient).
	newHTTP func() *http.Client
	// Now is the time used for the operator's certificate (the TLS peers judge validity by the
	// wall clock, whatever clock the reconciler runs on).
	Now func() time.Time

	mu sync.Mutex
	// http is the client for new requests (see httpClient).
	http *http.Client
	cert *tls.Certificate
	// certIssuer signed cert: a rotated issuer makes the operator sign a new one at once.
	certIssuer *pki.Issuer
}

// New returns a client for the receiver at base (https://host:port), identifying as the operator
// of cluster with certificates signed by the current issuer in issuers, and trusting roots for
// the receiver's server certificate (nil: the current issuer's CA bundle, read per connection so
// an issuer rotation needs no restart).
func New(base, cluster string, issuers *pki.Holder, roots *x509.CertPool) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("receiver URL %q must be https://host[:port] without credentials", base)
	}
	if !pki.ValidClusterName(cluster) {
		return nil, fmt.Errorf("cluster name %q must be a DNS label", cluster)
	}
	if issuers == nil || issuers.Current() == nil {
		return nil, errors.New("the fleet issuer is required to sign the operator's certificate")
	}
	currentRoots := func() (*x509.CertPool, error) {
		if roots != nil {
			return roots, nil
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(issuers.Current().BundlePEM) {
			return nil, errors.New("the fleet issuer's CA bundle holds no certificate")
		}
		return pool, nil
	}
	if _, err := currentRoots(); err != nil {
		return nil, err
	}
	c := &Client{base: strings.TrimRight(base, "/"), cluster: cluster, issuers: issuers, Now: time.Now}
	c.newHTTP = func() *http.Client {
		return &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				TLSClientConfig: &tls.Config{
					MinVersion:           tls.VersionTLS13,
					GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c.certificate() },
					// Verified in VerifyConnection against the current roots: a static RootCAs could
					// not follow an issuer rotation.
					InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
					VerifyConnection: func(cs tls.ConnectionState) error {
						pool, err := currentRoots()
						if err != nil {
							return err
						}
						return tlsreload.VerifyServer(cs, pool, u.Hostname())
					},
				},
				ForceAttemptHTTP2:   true,
				MaxIdleConnsPerHost: 4,
				IdleConnTimeout:     90 * time.Second,
			},
		}
	}
	c.http = c.newHTTP()
	return c, nil
}

// certCurrent says whether the held certificate (not nil) is signed by iss and not yet due for
// renewal at now (c.mu held).
func (c *Client) certCurrent(iss *pki.Issuer, now time.Time) bool {
	return c.certIssuer == iss && now.Before(renewalTime(c.cert))
}

// renewalTime is when a certificate of the operator's is replaced: when a third of its own
// lifetime is left. (A certificate signed near the issuer's end is cut short at it: judged by
// CertLifetime, it would be due as soon as signed, and every request would make a new
// connection with a new one.)
func renewalTime(cert *tls.Certificate) time.Time {
	return cert.Leaf.NotAfter.Add(-cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore) / 3)
}

// httpClient returns the HTTP client for the next request. A connection presents the
// certificate of its handshake for as long as it lives, and a busy one lives on: once that
// certificate is due for renewal, or its issuer was rotated, the client and its transport are
// replaced, so the next request makes a new connection with a new certificate (the receiver
// refuses an expired one on every request). The old connections close once their requests
// are done and they have been idle for the transport's idle timeout (90 s).
func (c *Client) httpClient() *http.Client {
	c.mu.Lock()
	hc := c.http
	due := c.cert != nil && !c.certCurrent(c.issuers.Current(), c.Now())
	c.mu.Unlock()
	if due {
		return c.replaceHTTP(hc)
	}
	return hc
}

// replaceHTTP replaces old, if it is still the client in use, and forgets the certificate, so
// the next handshake signs a new one. It returns the client in use.
func (c *Client) replaceHTTP(old *http.Client) *http.Client {
	c.mu.Lock()
	if c.http != old {
		hc := c.http
		c.mu.Unlock()
		return hc
	}
	c.http, c.cert, c.certIssuer = c.newHTTP(), nil, nil
	hc := c.http
	c.mu.Unlock()
	old.CloseIdleConnections() // outside the lock: closing a TLS connection can wait on the peer
	return hc
}

// Cluster is the cluster name the client identifies as.
func (c *Client) Cluster() string { return c.cluster }

// certificate returns the operator's certificate, signing a new one when none is held, its
// issuer was rotated, or a third of its lifetime is left.
func (c *Client) certificate() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.Now()
	iss := c.issuers.Current()
	if c.cert != nil && c.certCurrent(iss, now) {
		return c.cert, nil
	}
	issued, err := iss.IssueOperator(c.cluster, CertLifetime, now, nil)
	if err != nil {
		return nil, fmt.Errorf("signing the operator's certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(issued.CertPEM, issued.KeyPEM)
	if err != nil {
		return nil, err
	}
	pair.Leaf = issued.Cert
	c.cert, c.certIssuer = &pair, iss
	return c.cert, nil
}

// Record records a transition; the answer is the instance's record after it.
func (c *Client) Record(ctx context.Context, req consentv1.RecordRequest) (consentv1.State, error) {
	var out consentv1.State
	err := c.do(ctx, http.MethodPost, consentv1.PathConsent, req, &out)
	return out, err
}

// State reads an instance's record (ErrUnknownInstance when there is none) for a policy of
// namespace: a record released by a policy of another namespace is not its to read
// (ErrOwnedElsewhere).
func (c *Client) State(ctx context.Context, instanceID, namespace string) (consentv1.State, error) {
	var out consentv1.State
	q := url.Values{"instance": {instanceID}, "namespace": {namespace}}
	err := c.do(ctx, http.MethodGet, consentv1.PathConsent+"?"+q.Encode(), nil, &out)
	return out, err
}

// Release gives up ownership of an instance's record.
func (c *Client) Release(ctx context.Context, req consentv1.ReleaseRequest) error {
	return c.do(ctx, http.MethodPost, consentv1.PathRelease, req, nil)
}

// Erase requests an erasure; the answer is its verified result.
func (c *Client) Erase(ctx context.Context, req consentv1.ErasureRequest) (consentv1.ErasureResult, error) {
	var out consentv1.ErasureResult
	err := c.do(ctx, http.MethodPost, consentv1.PathErasures, req, &out)
	return out, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	// Connections made with a certificate from the previous issuer, verified against its
	// bundle, are not reused after a rotation (the next request proves the new issuer works end
	// to end), nor ones whose certificate is due for renewal.
	hc := c.httpClient()
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("%w: reading the answer: %w", ErrUnavailable, err)
	}
	if resp.StatusCode == http.StatusOK {
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%w: the receiver's answer is not valid JSON: %w", ErrUnavailable, err)
		}
		return nil
	}
	var er batchv1.ErrorResponse
	_ = json.Unmarshal(data, &er)
	msg := fmt.Sprintf("%d %s: %s", resp.StatusCode, er.Reason, truncate(er.Error, 300))
	switch {
	case resp.StatusCode == http.StatusConflict && er.Reason == consentv1.ReasonOwnedElsewhere:
		return fmt.Errorf("%w (%s)", ErrOwnedElsewhere, truncate(er.Error, 300))
	case resp.StatusCode == http.StatusConflict && er.Reason == consentv1.ReasonNotReserved:
		return fmt.Errorf("%w (%s)", ErrNotReserved, truncate(er.Error, 300))
	case resp.StatusCode == http.StatusConflict && er.Reason == consentv1.ReasonStale:
		return ErrStale
	case resp.StatusCode == http.StatusNotFound && er.Reason == consentv1.ReasonUnknownInstance:
		return ErrUnknownInstance
	case resp.StatusCode == http.StatusUnauthorized && er.Reason == batchv1.ReasonUnauthorized:
		// The certificate was refused after the handshake (expired by the receiver's clock,
		// which may run ahead of this one): the next request makes a new connection with a new
		// certificate. Retried as unavailability: a withdrawal stays enforced here meanwhile,
		// an erasure pending.
		c.replaceHTTP(hc)
		return fmt.Errorf("%w: %s", ErrUnavailable, msg)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("%w: %s", ErrUnavailable, msg)
	default:
		return fmt.Errorf("%w: %s", ErrRejected, msg)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
