/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package receivertest runs a real receiver for tests: a throw-away PostgreSQL cluster, the
// migrated store, and the API behind real mutual TLS with a fleet issuer made for the test (or
// given by it). Collectors and operators get certificates from the same issuer. The receiver
// enforces consent: an instance's data is stored only once its ledger allows it (see Grant).
package receivertest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/jackc/pgx/v5/pgxpool"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pgtest"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// Receiver is a running receiver with its database and PKI.
type Receiver struct {
	PG    *pgtest.Server
	Store *store.Store
	// Admin is the store as the receiver's administrators' tools open it (receiver consent
	// release, reserve, reservations --required): working as store.RoleConsentAdmin.
	Admin *store.Store
	// DB is the receiver's database as its owner (no role): for tests that read or rearrange
	// what was stored.
	DB       *pgxpool.Pool
	Server   *server.Server
	Registry *prometheus.Registry
	CA       *pkitest.CA
	Issuer   *pki.Issuer
	// URL is the https:// base URL (host localhost, matching the server certificate).
	URL string
	// CAFile holds the fleet CA in PEM, as mounted into collectors.
	CAFile string
	Dir    string
	// Clock is the receiver's clock (the store's and the server's).
	Clock clock.PassiveClock
	// Logs holds everything the receiver logged, for leak checks.
	Logs LogBuffer

	limits server.Limits
	// unrecorded: serve without the recording wrapper (Options.Unrecorded).
	unrecorded bool
	// certClock judges certificates' expiry (Options.CertificateClock).
	certClock clock.PassiveClock

	// Bodies records every request body the receiver got (decompressed), for leak checks.
	bodiesMu sync.Mutex
	bodies   [][]byte
	// Intercept, when set, may answer a request instead of the receiver (fault injection).
	Intercept func(w http.ResponseWriter, r *http.Request, body []byte) bool

	// replicaOf is the receiver whose database a replica shares (nil for the first).
	replicaOf *Receiver

	httpServer *http.Server
	listener   net.Listener
	addr       string
	tlsConfig  *tls.Config
	clientCAs  atomic.Pointer[x509.CertPool]
	// clientRoots are the certificates in clientCAs, which the server asks about per request.
	clientRoots atomic.Pointer[[]*x509.Certificate]
}

// LogBuffer is a log sink safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends to the buffer.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Options configure StartWith.
type Options struct {
	// Limits of the API (zero: server.DefaultLimits).
	Limits server.Limits
	// CA is the fleet issuer to use (nil: a new one). Pass the CA that also issues a test's
	// operator and collector certificates so that the receiver trusts them.
	CA *pkitest.CA
	// Clock is the receiver's clock (nil: the real clock). It dates transitions and erasures;
	// certificates are still checked against CertificateClock.
	Clock clock.PassiveClock
	// CertificateClock judges client certificates' expiry on each request (nil: the real
	// clock; the TLS handshake always uses the real one).
	CertificateClock clock.PassiveClock
	// HTTP2 offers HTTP/2 as the receiver binary does (default: HTTP/1.1 only, whose
	// connections tests can count).
	HTTP2 bool
	// Unrecorded serves the API as it is, without keeping every request body for Bodies and
	// Intercept (which decompress and hold each body): benchmarks measure the receiver, not
	// the test double around it.
	Unrecorded bool
}

// Start starts PostgreSQL, migrates the store and serves the API with the given limits.
func Start(ctx context.Context, limits server.Limits) (*Receiver, error) {
	return StartWith(ctx, Options{Limits: limits})
}

// StartWith starts PostgreSQL, migrates the store and serves the API as o says.
func StartWith(ctx context.Context, o Options) (*Receiver, error) {
	if o.Limits == (server.Limits{}) {
		o.Limits = server.DefaultLimits()
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	pg, err := pgtest.Start(ctx)
	if err != nil {
		return nil, err
	}
	if err := pg.CreateDatabase(ctx, "receiver"); err != nil {
		pg.Close()
		return nil, err
	}
	// The receiver under test works as the production one does: ingesting as the ingest role,
	// listing as the raw reader.
	st, err := store.Open(ctx, pg.DSN("receiver"), store.WithClock(o.Clock), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		pg.Close()
		return nil, err
	}
	if err := st.Migrate(ctx); err != nil {
		pg.Close()
		return nil, err
	}
	db, err := store.OpenPool(ctx, pg.DSN("receiver"), "")
	if err != nil {
		pg.Close()
		return nil, err
	}
	admin, err := store.Open(ctx, pg.DSN("receiver"), store.WithClock(o.Clock), store.WithRoles(store.RoleConsentAdmin, store.RoleRawReader))
	if err != nil {
		pg.Close()
		return nil, err
	}
	ca := o.CA
	if ca == nil {
		if ca, err = pkitest.NewCA("test fleet issuer", pkitest.Options{NotBefore: time.Now().Add(-365 * 24 * time.Hour)}); err != nil {
			return nil, err
		}
	}
	issuer, err := pki.LoadIssuer(ca.Secret(), time.Now())
	if err != nil {
		return nil, err
	}
	serverCert, err := ca.ServerCert("receiver", []string{"localhost", "127.0.0.1"}, time.Time{})
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(serverCert.CertPEM, serverCert.KeyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	dir, err := os.MkdirTemp("", "receivertest-")
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		return nil, err
	}
	r := &Receiver{PG: pg, Store: st, Admin: admin, DB: db, CA: ca, Issuer: issuer, CAFile: caFile, Dir: dir, Clock: o.Clock, certClock: o.CertificateClock, limits: o.Limits, unrecorded: o.Unrecorded,
		tlsConfig: server.TLSConfig(pair, pool)}
	r.TrustClientCAs(ca.Cert)
	if o.HTTP2 {
		r.tlsConfig.NextProtos = []string{"h2", "http/1.1"}
	}
	base := r.tlsConfig
	r.tlsConfig = base.Clone()
	r.tlsConfig.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.ClientCAs = r.clientCAs.Load()
		return c, nil
	}
	r.newServer()
	if err := r.Listen(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Receiver) newServer() {
	r.Registry = prometheus.NewRegistry()
	r.Server = server.New(r.Store, r.limits, slog.New(slog.NewJSONHandler(&r.Logs, nil)), r.Registry, server.WithClock(r.Clock), server.WithCertificateClock(r.certClock),
		server.WithTrustedRoots(r.trusts))
	r.Server.RetryAfter = time.Second
}

// Restart stops serving, closes the store, and serves again on the same address from a new
// store and server on the same database, as a restarted receiver process would: nothing held
// in memory survives.
func (r *Receiver) Restart(ctx context.Context) error {
	r.Stop()
	r.Store.Close()
	st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithClock(r.Clock), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		return err
	}
	if err := st.Migrate(ctx); err != nil {
		return err
	}
	r.Store = st
	r.newServer()
	return r.Listen()
}

// TestCluster is the cluster Grant records transitions as.
// TrustClientCAs replaces the CAs whose client certificates the receiver accepts (from the next
// connection on), as the real receiver does when its client CA file changes.
func (r *Receiver) TrustClientCAs(cas ...*x509.Certificate) {
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	r.clientCAs.Store(pool)
	r.clientRoots.Store(&cas)
}

// trusts reports whether root is one of the CAs the receiver accepts now, as the real
// receiver asks its --client-ca bundle on each request. A replica follows its original's.
func (r *Receiver) trusts(root *x509.Certificate) bool {
	from := r
	for from.replicaOf != nil {
		from = from.replicaOf
	}
	for _, ca := range *from.clientRoots.Load() {
		if ca.Equal(root) {
			return true
		}
	}
	return false
}

const TestCluster = "test"

// Grant records, through the store, that tier is in force for instance from at on, on behalf of
// a test owner (cluster TestCluster, namespace and name the instance), for tests that need an
// instance to have consent. The ledger's rules apply: at is clamped to the last transition, and
// a raise may not be dated in the future.
func (r *Receiver) Grant(ctx context.Context, instance string, tier consentv1.Tier, at time.Time) error {
	return r.Record(ctx, instance, consentv1.Transition{At: at, Tier: tier, Reason: "Declared"})
}

// Record records tr for instance as Grant does, with all it carries (a trial's Until), as an
// operator that has read the record back asks: naming the head it read, so that EventLevel
// without Until over a trial is a contract that ends the trial's expiry (a requester that names
// no head is taken to know nothing of Until, and keeps it).
func (r *Receiver) Record(ctx context.Context, instance string, tr consentv1.Transition) error {
	req := consentv1.RecordRequest{
		InstanceID: instance,
		Owner:      consentv1.Owner{Namespace: instance, Name: instance, UID: TestPolicyUID},
		Transition: tr,
	}
	st, err := r.Store.ConsentState(ctx, instance)
	if err != nil && !errors.Is(err, store.ErrUnknownInstance) {
		return err
	}
	if n := len(st.Timeline); n > 0 {
		head := st.Timeline[n-1]
		req.ExpectedHead = &head
	}
	_, err = r.Store.RecordTransition(ctx, TestCluster, req)
	return err
}

// TestPolicyUID is the UID of the policy Grant records as owner and the test certificates name.
const TestPolicyUID = "receivertest-policy"

// TestPolicy is the policy Grant records as owner of instance, as ClientFiles and ClientCert name
// it: their certificates are accepted while Grant's owner owns the record.
func TestPolicy(instance string) pki.PolicyRef {
	return pki.PolicyRef{Cluster: TestCluster, Namespace: instance, Name: instance, UID: TestPolicyUID}
}

// ownerPolicy names the policy that owns instance's record now, as the certificate its operator
// issued would (TestPolicy when the record has no owner, or no UID stands in for the UID).
func (r *Receiver) ownerPolicy(instance string) pki.PolicyRef {
	ref := TestPolicy(instance)
	st, err := r.Store.ConsentState(context.Background(), instance)
	if err != nil || st.Owner.Cluster == "" {
		return ref
	}
	ref.Cluster, ref.Namespace, ref.Name = st.Owner.Cluster, st.Owner.Namespace, st.Owner.Name
	if st.Owner.UID != "" {
		ref.UID = st.Owner.UID
	}
	return ref
}

// OperatorCert issues an in-memory client certificate for the operator of cluster.
func (r *Receiver) OperatorCert(cluster string) (tls.Certificate, error) {
	cc, err := r.Issuer.IssueOperator(cluster, 24*time.Hour, time.Now(), nil)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
}

// OperatorClient returns a client presenting an operator certificate for cluster. It panics if
// the certificate cannot be issued (an invalid cluster name is a bug in the test).
func (r *Receiver) OperatorClient(cluster string) *http.Client {
	cert, err := r.OperatorCert(cluster)
	if err != nil {
		panic(fmt.Sprintf("receivertest: issuing an operator certificate for %q: %v", cluster, err))
	}
	return r.HTTPClient(&cert)
}

// Listen starts serving (again, on the same address after Stop).
func (r *Receiver) Listen() error {
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port may linger briefly after a stop
		l, err = net.Listen("tcp", addr)
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	r.addr = l.Addr().String()
	_, port, _ := net.SplitHostPort(r.addr)
	r.URL = "https://localhost:" + port
	r.listener = tls.NewListener(l, r.tlsConfig)
	handler := r.Server.Handler()
	if !r.unrecorded {
		handler = r.recording(handler)
	}
	r.httpServer = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	go func() { _ = r.httpServer.Serve(r.listener) }()
	return nil
}

func (r *Receiver) recording(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		raw, _ := io.ReadAll(io.LimitReader(req.Body, 64<<20))
		body := raw
		if req.Header.Get("Content-Encoding") == "zstd" {
			if dec, err := zstd.NewReader(bytes.NewReader(raw)); err == nil {
				if out, err := io.ReadAll(io.LimitReader(dec, 64<<20)); err == nil {
					body = out
				}
				dec.Close()
			}
		}
		r.bodiesMu.Lock()
		r.bodies = append(r.bodies, body)
		intercept := r.Intercept
		r.bodiesMu.Unlock()
		if intercept != nil && intercept(w, req, body) {
			return
		}
		req.Body = io.NopCloser(bytes.NewReader(raw))
		next.ServeHTTP(w, req)
	})
}

// Bodies returns every request body received so far, decompressed.
func (r *Receiver) Bodies() [][]byte {
	r.bodiesMu.Lock()
	defer r.bodiesMu.Unlock()
	return append([][]byte(nil), r.bodies...)
}

// SetIntercept installs (or, with nil, removes) a fault-injection hook.
func (r *Receiver) SetIntercept(f func(w http.ResponseWriter, r *http.Request, body []byte) bool) {
	r.bodiesMu.Lock()
	r.Intercept = f
	r.bodiesMu.Unlock()
}

// Stop stops serving (the database keeps running).
func (r *Receiver) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.httpServer.Shutdown(ctx)
}

// Replica starts another receiver on r's database, as another replica of the Deployment would
// run: its own store (connection pool, policy cache), server (rate limits, in-flight budget),
// registry and address; it shares nothing in memory with r, only PostgreSQL and the PKI. Close
// it before r.
func (r *Receiver) Replica(ctx context.Context) (*Receiver, error) {
	st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithClock(r.Clock), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		return nil, err
	}
	if err := st.Migrate(ctx); err != nil { // as every replica does at start: serialized, then a no-op
		st.Close()
		return nil, err
	}
	rep := &Receiver{PG: r.PG, Store: st, Admin: r.Admin, DB: r.DB, CA: r.CA, Issuer: r.Issuer, CAFile: r.CAFile, Dir: r.Dir, Clock: r.Clock,
		certClock: r.certClock, limits: r.limits, unrecorded: r.unrecorded, tlsConfig: r.tlsConfig, replicaOf: r}
	rep.clientCAs.Store(r.clientCAs.Load())
	rep.newServer()
	if err := rep.Listen(); err != nil {
		st.Close()
		return nil, err
	}
	return rep, nil
}

// Close stops everything and removes its files (a replica: only its server and store).
func (r *Receiver) Close() {
	if r.replicaOf != nil {
		r.Stop()
		r.Store.Close()
		return
	}
	r.Stop()
	r.Store.Close()
	r.Admin.Close()
	r.DB.Close()
	r.PG.Close()
	_ = os.RemoveAll(r.Dir)
}

// ClientFiles issues a client certificate for instance, naming the policy that owns its record
// now (TestPolicy when none does), and writes tls.crt, tls.key and ca.crt to
// a new directory, as the operator's Secret would be mounted. It returns the directory.
func (r *Receiver) ClientFiles(instance string, lifetime time.Duration) (string, error) {
	cc, err := r.Issuer.IssueClient(instance, r.ownerPolicy(instance), lifetime*2/3, time.Now(), nil)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(r.Dir, "client-"+instance+"-")
	if err != nil {
		return "", err
	}
	for name, data := range map[string][]byte{"tls.crt": cc.CertPEM, "tls.key": cc.KeyPEM, "ca.crt": r.CA.CertPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// HTTPClient returns a client presenting cert (nil: none) and trusting the fleet CA.
func (r *Receiver) HTTPClient(cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(r.CA.Cert)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
}

// ClientCert issues an in-memory client certificate for instance, naming the policy that owns
// its record now (TestPolicy when none does), valid from notBefore for lifetime.
func (r *Receiver) ClientCert(instance string, notBefore time.Time, lifetime time.Duration) (tls.Certificate, error) {
	cc, err := r.Issuer.IssueClient(instance, r.ownerPolicy(instance), lifetime*2/3, notBefore.Add(5*time.Minute), nil)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
}

// Count returns the number of rows in table for instance.
func (r *Receiver) Count(ctx context.Context, table, instance string) (int, error) {
	var n int
	err := r.DB.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE instance_id = $1", table), instance).Scan(&n)
	return n, err
}
