/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package server is the receiver's HTTPS API: mutual TLS with the fleet issuer; ingestion, with
// the instance identity taken from the client certificate, strict and bounded decoding,
// enforcement of the instance's consent ledger and idempotent storage; the operator-only
// consent ledger API (admin.go); and JSON errors with stable reasons.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/disclosure"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// Limits bound what one request may cost.
type Limits struct {
	// MaxBodyBytes bounds the request body as sent (compressed or not).
	MaxBodyBytes int64
	// MaxDecompressedBytes bounds the body after decompression (compression-bomb guard).
	MaxDecompressedBytes int64
	// MaxInFlightBytes bounds the memory batch requests hold at once: a request reserves its
	// declared length before reading, then its decompressed size (the zstd frame's declared size,
	// else MaxDecompressedBytes) and the working set to decode and store it (see workingSet). A request that cannot
	// reserve within InFlightWait is answered 503 with Retry-After; nothing is dropped.
	MaxInFlightBytes int64
	// InFlightWait is how long a request waits for room in MaxInFlightBytes.
	InFlightWait time.Duration
	// InstanceRate and InstanceBurst bound each instance's requests (per second, and at once),
	// counted per policy its certificates name; beyond them the instance is answered 429 with
	// Retry-After, others are not slowed (nor the instance's new owner by a former one's).
	// Zero InstanceRate disables the limit.
	InstanceRate  float64
	InstanceBurst int
}

// DefaultLimits are the documented limits.
func DefaultLimits() Limits {
	return Limits{MaxBodyBytes: 8 << 20, MaxDecompressedBytes: 64 << 20, MaxInFlightBytes: 512 << 20, InFlightWait: 2 * time.Second,
		InstanceRate: 50, InstanceBurst: 100}
}

// Storage is what the server needs from the store.
type Storage interface {
	InsertEvents(ctx context.Context, instance string, b *batchv1.Batch) (store.Result, error)
	PublishAggregates(ctx context.Context, instance string, b *batchv1.Batch) (store.Result, error)
	Cursor(ctx context.Context, instance string) (int64, bool, error)
	Exported(ctx context.Context, instance string, limit, maxItems int) ([]batchv1.Delivery, error)
	Ping(ctx context.Context) error

	RecordTransition(ctx context.Context, cluster string, req consentv1.RecordRequest) (consentv1.State, error)
	ConsentState(ctx context.Context, instance string) (consentv1.State, error)
	Release(ctx context.Context, cluster string, req consentv1.ReleaseRequest) error
	Erase(ctx context.Context, cluster string, req consentv1.ErasureRequest) (consentv1.ErasureResult, error)
}

// observable is a Storage that reports what its consent writes changed (the store does).
type observable interface {
	SetObserver(store.Observer)
}

// Server handles ingestion and the consent ledger API.
type Server struct {
	store   Storage
	limits  Limits
	log     *slog.Logger
	metrics *metrics
	clock   clock.PassiveClock
	// certClock judges certificates' expiry: the real clock, as the TLS handshake does; the
	// injected clock dates the ledger and may run elsewhere in tests.
	certClock clock.PassiveClock
	// trusted reports whether a verified chain's root is still one the receiver accepts (nil:
	// every root the handshake accepted).
	trusted func(root *x509.Certificate) bool
	// RetryAfter is sent with 503 answers.
	RetryAfter time.Duration

	zstdOnce sync.Once
	zstdDec  *zstd.Decoder

	// inFlight and inFlightSmall are the large and small lanes of MaxInFlightBytes.
	inFlight, inFlightSmall  *semaphore.Weighted
	largeBudget, smallBudget int64
	limiters                 sync.Map // caller -> *rate.Limiter
	newLimiters              atomic.Uint64
	openMu                   sync.Mutex
	open                     map[caller]int // open requests per caller
	// refused: certificates' policies the store refused as not owning the instance's record,
	// answered 403 again before they take any of the instance's slots.
	refused refusedSenders
}

type metrics struct {
	batches     *prometheus.CounterVec
	events      *prometheus.CounterVec
	rejections  *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	transitions *prometheus.CounterVec
	removed     prometheus.Counter
	erasures    *prometheus.CounterVec
	erasedRows  *prometheus.CounterVec
}

// Option configures a Server.
type Option func(*Server)

// WithCertificateClock makes the server judge client certificates' expiry on each request by c
// (default: the real clock, the one the TLS handshake judges them by; tests move it).
func WithCertificateClock(c clock.PassiveClock) Option {
	return func(s *Server) {
		if c != nil {
			s.certClock = c
		}
	}
}

// WithTrustedRoots makes the server ask, on each request, whether the root its client
// certificate's chain was verified to at the handshake is still trusted (tlsreload.Server's
// Trusts, which reads the --client-ca bundle). A root dropped from the bundle is then refused
// over connections opened before, not only at the next handshake. Without it, the handshake's
// judgement stands for the connection's life.
func WithTrustedRoots(trusted func(root *x509.Certificate) bool) Option {
	return func(s *Server) { s.trusted = trusted }
}

// WithClock makes the server read time from c (default: the real clock). The ledger's own
// timestamps come from the store's clock; give both the same one.
func WithClock(c clock.PassiveClock) Option {
	return func(s *Server) {
		if c != nil {
			s.clock = c
		}
	}
}

// New returns a server storing into st. Metrics are registered with reg (nil: not registered).
// When st reports its consent writes (the store does), the server counts and logs them.
func New(st Storage, limits Limits, log *slog.Logger, reg prometheus.Registerer, opts ...Option) *Server {
	m := &metrics{
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "receiver_batches_total", Help: "Batches received, by kind and outcome (stored, refused, unavailable).",
		}, []string{"kind", "outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "receiver_events_total", Help: "Events and aggregate cells, by outcome (accepted, duplicate, refused by the consent ledger).",
		}, []string{"outcome"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "receiver_consent_transitions_total", Help: "Consent transitions recorded, by the tier they move to.",
		}, []string{"tier"}),
		removed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "receiver_consent_events_removed_total", Help: "Stored events deleted because a withdrawal took effect before they were recorded.",
		}),
		erasures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "receiver_erasures_total", Help: "Erasures carried out (first attempts and retries of unverified ones), by scope.",
		}, []string{"scope"}),
		erasedRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "receiver_erased_rows_total", Help: "Rows deleted by erasures, by table.",
		}, []string{"table"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "receiver_rejections_total", Help: "Rejected requests, by reason.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "receiver_request_duration_seconds", Help: "Request latency, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"endpoint"}),
	}
	if reg != nil {
		reg.MustRegister(m.batches, m.events, m.rejections, m.latency, m.transitions, m.removed, m.erasures, m.erasedRows)
	}
	s := &Server{store: st, limits: limits, log: log, metrics: m, clock: clock.RealClock{}, certClock: clock.RealClock{}, RetryAfter: 5 * time.Second}
	if limits.MaxInFlightBytes > 0 {
		s.smallBudget = max(1, min(limits.MaxInFlightBytes/4, 4*smallRequest))
		s.largeBudget = max(1, limits.MaxInFlightBytes-s.smallBudget)
		s.inFlight, s.inFlightSmall = semaphore.NewWeighted(s.largeBudget), semaphore.NewWeighted(s.smallBudget)
	}
	for _, o := range opts {
		o(s)
	}
	if o, ok := st.(observable); ok {
		o.SetObserver(ledgerObserver{s})
	}
	return s
}

// Handler returns the mutual-TLS API: POST /v1/batches, GET /v1/cursor and GET /v1/exported
// with an instance's certificate, and
// the consent ledger (consentv1.PathConsent, PathRelease, PathErasures) for operators.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(batchv1.PathBatches, s.timed("batches", s.handleBatch))
	mux.HandleFunc(batchv1.PathCursor, s.timed("cursor", s.handleCursor))
	mux.HandleFunc(batchv1.PathExported, s.timed("exported", s.handleExported))
	mux.HandleFunc(consentv1.PathConsent, s.timed("consent", s.handleConsent))
	mux.HandleFunc(consentv1.PathRelease, s.timed("release", s.handleRelease))
	mux.HandleFunc(consentv1.PathErasures, s.timed("erasures", s.handleErasures))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.reject(w, http.StatusNotFound, batchv1.ReasonNotFound, "no such endpoint", -1)
	})
	return mux
}

// OpsHandler serves /healthz, /readyz (database reachable) and /metrics on a plain listener.
func (s *Server) OpsHandler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.store.Ping(ctx); err != nil {
			http.Error(w, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return mux
}

// TLSConfig requires TLS 1.3 and a client certificate signed by one of clientCAs. crypto/tls
// verifies client certificates for the client-auth extended key usage, so a server or CA
// certificate from the same issuer cannot be used to send data.
func TLSConfig(serverCert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
	}
}

func (s *Server) timed(endpoint string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := s.clock.Now()
		h(w, r)
		s.metrics.latency.WithLabelValues(endpoint).Observe(s.clock.Since(start).Seconds())
	}
}

// caller is who sends a request: the instance and the policy its certificate was issued for.
// An instance's rate and open requests are counted per caller, so a former owner's certificate,
// still valid, spends only its own, never the owner's.
type caller struct {
	instance string
	policy   consentv1.Owner
}

// callerOf returns the caller named by the verified client certificate, and the request's
// context carrying the policy the certificate was issued for (store.WithSender): the store
// serves the instance only while that policy owns its consent record.
func (s *Server) callerOf(w http.ResponseWriter, r *http.Request) (caller, context.Context, bool) {
	cert, ok := s.clientCertificate(w, r)
	if !ok {
		return caller{}, nil, false
	}
	id, err := pki.InstanceID(cert)
	if err != nil {
		s.reject(w, http.StatusForbidden, batchv1.ReasonUnauthorized, "the client certificate names no instance", -1)
		return caller{}, nil, false
	}
	policy, err := pki.PolicyOf(cert)
	if err != nil {
		s.reject(w, http.StatusForbidden, batchv1.ReasonUnauthorized,
			"the client certificate names no TelemetryPolicy (issued by an operator older than this receiver); its operator issues a new one once upgraded", -1)
		return caller{}, nil, false
	}
	c := caller{instance: id, policy: consentv1.Owner{Cluster: policy.Cluster, Namespace: policy.Namespace, Name: policy.Name, UID: policy.UID}}
	if s.refused.refused(c, s.clock.Now()) {
		s.rejectNotOwner(w, id)
		return caller{}, nil, false
	}
	ctx := context.WithValue(store.WithSender(r.Context(), c.policy), forgetsSeenKey{}, s.refused.forgets(c.instance))
	return c, ctx, true
}

// clientCertificate returns the request's verified client certificate, or answers 401 when
// there is none, when its chain's root has left the trusted bundle, or when it has expired. The
// handshake checked all three, but a kept-alive connection outlives it: a collector whose
// renewal failed would go on sending (and, idle, confirming that the receiver answers), an
// operator's certificate taken with its key would go on recording consent, and a certificate
// from an issuer dropped from --client-ca (a compromised one) would go on being served, over a
// connection opened while they were good. Renewed certificates are used at once: a collector
// closes its connection when its key pair changes, the operator's ledger client replaces its
// connections when its certificate is due for renewal or its issuer changed (internal/ledger).
func (s *Server) clientCertificate(w http.ResponseWriter, r *http.Request) (*x509.Certificate, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		s.reject(w, http.StatusUnauthorized, batchv1.ReasonUnauthorized, "a client certificate from the fleet issuer is required", -1)
		return nil, false
	}
	cert := r.TLS.VerifiedChains[0][0]
	if !s.rootTrusted(r.TLS.VerifiedChains) {
		s.reject(w, http.StatusUnauthorized, batchv1.ReasonUnauthorized,
			"the client certificate's issuer is no longer trusted by the receiver; a certificate from the current fleet issuer is required", -1)
		return nil, false
	}
	if s.certClock.Now().After(cert.NotAfter) {
		s.reject(w, http.StatusUnauthorized, batchv1.ReasonUnauthorized,
			fmt.Sprintf("the client certificate expired at %s; a new one must be issued", cert.NotAfter.UTC().Format(time.RFC3339)), -1)
		return nil, false
	}
	return cert, true
}

// rootTrusted reports whether one of the chains verified at the handshake still ends at a
// trusted root.
func (s *Server) rootTrusted(chains [][]*x509.Certificate) bool {
	if s.trusted == nil {
		return true
	}
	for _, chain := range chains {
		if len(chain) > 0 && s.trusted(chain[len(chain)-1]) {
			return true
		}
	}
	return false
}

// forgetsSeenKey holds, in a request's context, the refused senders' forget count when the
// request began: a refusal the store returned is remembered only if no consent write forgot
// refusals meanwhile (the write may have made the caller's policy the owner after the store
// read the record).
type forgetsSeenKey struct{}

// notOwner answers a request whose certificate's policy the store found not to own the
// instance's record, and remembers the pair (see refusedFor).
func (s *Server) notOwner(ctx context.Context, w http.ResponseWriter, c caller) {
	if seen, ok := ctx.Value(forgetsSeenKey{}).(uint64); ok {
		s.refused.remember(c, seen, s.clock.Now())
	}
	s.log.Info("certificate of a policy that does not own the instance's consent record", "instance", c.instance)
	s.rejectNotOwner(w, c.instance)
}

func (s *Server) rejectNotOwner(w http.ResponseWriter, instance string) {
	s.reject(w, http.StatusForbidden, batchv1.ReasonNotOwner,
		fmt.Sprintf("the client certificate was issued for a TelemetryPolicy that does not own instance %q's consent record (handed over or released): nothing is accepted from it; its operator issues a new certificate or stops the collector", instance), -1)
}

func (s *Server) handleCursor(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		s.reject(w, http.StatusMethodNotAllowed, batchv1.ReasonMethodNotAllow, "use GET", -1)
		return
	}
	c, ctx, ok := s.callerOf(w, r)
	if !ok {
		return
	}
	instance := c.instance
	if !s.hold(w, c) {
		return
	}
	defer s.leave(c)
	cursor, known, err := s.store.Cursor(ctx, instance)
	if errors.Is(err, store.ErrNotOwner) {
		s.notOwner(ctx, w, c)
		return
	}
	if err != nil {
		s.storageError(w, err, "cursor")
		return
	}
	writeJSON(w, http.StatusOK, batchv1.CursorResponse{InstanceID: instance, Known: known, Cursor: cursor})
}

// handleExported lists what the receiver stored from the caller's instance recently. Only the
// instance's own certificate reads it: whoever holds the instance's credentials administers
// what the instance exports.
func (s *Server) handleExported(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		s.reject(w, http.StatusMethodNotAllowed, batchv1.ReasonMethodNotAllow, "use GET", -1)
		return
	}
	c, ctx, ok := s.callerOf(w, r)
	if !ok {
		return
	}
	instance := c.instance
	// A listing costs the database more than a batch: it counts against the same rate and the
	// same open requests as the instance's batches.
	if !s.hold(w, c) {
		return
	}
	defer s.leave(c)
	limit := batchv1.DefaultExportedDeliveries
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err == nil && len(q) == 1 && len(q["limit"]) == 1 {
		limit, err = strconv.Atoi(q.Get("limit"))
	} else if err == nil && len(q) > 0 {
		err = errors.New("unknown parameter")
	}
	if err != nil || limit < 1 || limit > batchv1.MaxExportedDeliveries {
		s.reject(w, http.StatusBadRequest, batchv1.ReasonMalformed,
			fmt.Sprintf("the only parameter is limit, a number of deliveries from 1 to %d", batchv1.MaxExportedDeliveries), -1)
		return
	}
	list, err := s.store.Exported(ctx, instance, limit, batchv1.MaxExportedItems)
	if errors.Is(err, store.ErrNotOwner) {
		s.notOwner(ctx, w, c)
		return
	}
	if err != nil {
		s.storageError(w, err, "exported")
		return
	}
	if list == nil {
		list = []batchv1.Delivery{}
	}
	writeJSON(w, http.StatusOK, batchv1.ExportedResponse{InstanceID: instance, Deliveries: list})
}

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		s.reject(w, http.StatusMethodNotAllowed, batchv1.ReasonMethodNotAllow, "use POST", -1)
		return
	}
	c, ctx, ok := s.callerOf(w, r)
	if !ok {
		return
	}
	instance := c.instance
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mediaType != batchv1.ContentType && mediaType != "application/json") {
		s.reject(w, http.StatusUnsupportedMediaType, batchv1.ReasonUnsupported, "Content-Type must be "+batchv1.ContentType, -1)
		return
	}
	if !s.hold(w, c) {
		return
	}
	defer s.leave(c)
	held := &reservation{s: s}
	defer held.release()
	data, status, reason, msg := s.readBody(r, held)
	if status != 0 {
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", strconv.Itoa(int(s.RetryAfter.Seconds())))
		}
		s.reject(w, status, reason, msg, -1)
		return
	}
	b, err := batchv1.Decode(data)
	if err != nil {
		var be *batchv1.Error
		if errors.As(err, &be) {
			code := http.StatusBadRequest
			if be.Reason == batchv1.ReasonTooManyEvents || be.Reason == batchv1.ReasonEventTooLarge {
				code = http.StatusRequestEntityTooLarge
			}
			s.reject(w, code, be.Reason, be.Msg, be.Index)
			return
		}
		s.reject(w, http.StatusBadRequest, batchv1.ReasonMalformed, "malformed batch", -1)
		return
	}
	if b.InstanceID != instance {
		s.reject(w, http.StatusForbidden, batchv1.ReasonWrongInstance,
			fmt.Sprintf("the client certificate is for instance %q; it may not send instance %q's data", instance, b.InstanceID), -1)
		return
	}
	if key := r.Header.Get(batchv1.HeaderIdempotencyKey); key != "" && key != b.BatchID {
		s.reject(w, http.StatusBadRequest, batchv1.ReasonMalformed, "Idempotency-Key does not match batchID", -1)
		return
	}
	// A collector is not trusted to have filtered: everything must be in the catalog it declares.
	cat, ok := catalogv1.Get(b.AllowListVersion)
	if !ok {
		s.reject(w, http.StatusBadRequest, batchv1.ReasonUnsupportedCatalog,
			fmt.Sprintf("event catalog version %d is not supported (this receiver knows version %d)", b.AllowListVersion, catalogv1.CurrentVersion), -1)
		return
	}
	for i := range b.Events {
		if field := cat.CheckEvent(&b.Events[i]); field != "" {
			s.reject(w, http.StatusBadRequest, batchv1.ReasonNotInCatalog,
				fmt.Sprintf("the event's %s is not in event catalog version %d", field, cat.Version), i)
			return
		}
	}
	for i := range b.Aggregates {
		if field := cat.CheckAggregate(&b.Aggregates[i]); field != "" {
			s.reject(w, http.StatusBadRequest, batchv1.ReasonNotInCatalog,
				fmt.Sprintf("the cell's %s is not in event catalog version %d", field, cat.Version), i)
			return
		}
	}
	// A day is published once, after it ends: a partial day re-sent as it grows could be
	// differenced. A collector whose clock runs ahead sends the batch again later.
	today := s.clock.Now().UTC().Format(time.DateOnly)
	for i := range b.Aggregates {
		if b.Aggregates[i].Day >= today {
			s.reject(w, http.StatusBadRequest, batchv1.ReasonDayNotClosed,
				fmt.Sprintf("day %s has not ended by the receiver's clock (UTC); only closed days are published", b.Aggregates[i].Day), -1)
			return
		}
	}
	// A day's cells must not let a reader narrow a withheld one below the minimum: the
	// collector withholds until they do not, and the receiver, trusting no collector, checks.
	if err := disclosure.Audit(ctx, cat, b.Aggregates); err != nil {
		msg := err.Error()
		var narrowed *disclosure.NarrowedError
		if !errors.As(err, &narrowed) {
			msg += ": the cells contradict one another or cannot be judged"
		}
		// The first cell of the day names it: a collector isolates the day and delivers the rest.
		day, _ := disclosure.RefusedDay(err)
		s.reject(w, http.StatusBadRequest, batchv1.ReasonTierViolation, msg,
			slices.IndexFunc(b.Aggregates, func(a batchv1.Aggregate) bool { return a.Day == day }))
		return
	}
	var res store.Result
	if b.Kind == batchv1.KindEvents {
		res, err = s.store.InsertEvents(ctx, instance, b)
	} else {
		res, err = s.store.PublishAggregates(ctx, instance, b)
	}
	if errors.Is(err, store.ErrNotOwner) {
		s.metrics.batches.WithLabelValues(b.Kind, "refused").Inc()
		s.notOwner(ctx, w, c)
		return
	}
	var refused *store.RefusedError
	if errors.As(err, &refused) {
		// The ledger, not the batch's declared tier, decided: nothing of the batch is stored.
		s.metrics.batches.WithLabelValues(b.Kind, "refused").Inc()
		s.metrics.events.WithLabelValues("refused").Add(float64(len(b.Events) + len(b.Aggregates)))
		s.log.Info("batch refused by consent", "instance", instance, "kind", b.Kind, "batch", b.BatchID,
			"tier", string(refused.Tier), "known", refused.Known)
		s.reject(w, http.StatusForbidden, consentv1.ReasonConsentRefused, refused.Error(), -1)
		return
	}
	if err != nil {
		s.metrics.batches.WithLabelValues(b.Kind, "unavailable").Inc()
		s.storageError(w, err, "batch")
		return
	}
	s.metrics.batches.WithLabelValues(b.Kind, "stored").Inc()
	s.metrics.events.WithLabelValues("accepted").Add(float64(res.Accepted))
	s.metrics.events.WithLabelValues("duplicate").Add(float64(res.Duplicates))
	s.metrics.events.WithLabelValues("refused").Add(float64(res.Refused))
	s.log.Info("stored batch", "instance", instance, "kind", b.Kind, "batch", b.BatchID, "accepted", res.Accepted,
		"duplicates", res.Duplicates, "refused", res.Refused)
	writeJSON(w, http.StatusOK, batchv1.Response{Accepted: res.Accepted, Duplicates: res.Duplicates, Refused: res.Refused, Cursor: res.Cursor})
}

// zstd returns the server's decoder, made on first use. One decoder serves every request
// (DecodeAll is safe for concurrent use and reuses its buffers); its memory limit is the
// compression-bomb guard.
func (s *Server) zstd() *zstd.Decoder {
	s.zstdOnce.Do(func() {
		var err error
		s.zstdDec, err = zstd.NewReader(nil,
			zstd.WithDecoderMaxMemory(uint64(s.limits.MaxDecompressedBytes)), //nolint:gosec // positive by construction
			zstd.WithDecoderMaxWindow(8<<20), zstd.WithDecoderConcurrency(0),
			// DecodeAll may not grow past the capacity it is given: the reservation is sized from
			// the first frame's declared size, and later frames could otherwise add up to the
			// whole limit beyond it.
			zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			panic(fmt.Sprintf("zstd decoder options are fixed and valid: %v", err))
		}
	})
	return s.zstdDec
}

// readBody reads the body within the limits, decompressing zstd. It returns a status and reason
// when the body is refused.
func (s *Server) readBody(r *http.Request, held *reservation) ([]byte, int, string, string) {
	if r.ContentLength > s.limits.MaxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, batchv1.ReasonTooLarge, fmt.Sprintf("body exceeds %d bytes", s.limits.MaxBodyBytes)
	}
	sent := s.limits.MaxBodyBytes
	if r.ContentLength > 0 {
		sent = r.ContentLength
	}
	if !held.take(r.Context(), sent) {
		return nil, http.StatusServiceUnavailable, batchv1.ReasonBusy, "the receiver is busy; retry later"
	}
	var raw []byte
	var err error
	if r.ContentLength > 0 {
		// The size is declared (and within the limit): read into a buffer of exactly that size,
		// plus one byte to notice a body longer than declared.
		raw = make([]byte, r.ContentLength+1)
		var n int
		n, err = io.ReadFull(r.Body, raw)
		switch {
		case int64(n) != r.ContentLength:
			err = errors.New("body length differs from its Content-Length")
		case errors.Is(err, io.ErrUnexpectedEOF):
			err = nil
		}
		raw = raw[:n]
	} else {
		raw, err = io.ReadAll(io.LimitReader(r.Body, s.limits.MaxBodyBytes+1))
	}
	if err != nil {
		return nil, http.StatusBadRequest, batchv1.ReasonMalformed, "reading the body failed"
	}
	if int64(len(raw)) > s.limits.MaxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, batchv1.ReasonTooLarge, fmt.Sprintf("body exceeds %d bytes", s.limits.MaxBodyBytes)
	}
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "", "identity":
		if int64(len(raw)) > s.limits.MaxDecompressedBytes {
			return nil, http.StatusRequestEntityTooLarge, batchv1.ReasonTooLarge, "body too large"
		}
		if !held.take(r.Context(), workingSet*int64(len(raw))) {
			return nil, http.StatusServiceUnavailable, batchv1.ReasonBusy, "the receiver is busy; retry later"
		}
		return raw, 0, "", ""
	case batchv1.EncodingZstd:
		size := s.limits.MaxDecompressedBytes
		var h zstd.Header
		if h.Decode(raw) == nil && h.HasFCS && int64(h.FrameContentSize) < size { //nolint:gosec // compared, never converted back
			size = int64(h.FrameContentSize) + 1 // a frame that lies about its size fails the bound below
		}
		if !held.take(r.Context(), size) {
			return nil, http.StatusServiceUnavailable, batchv1.ReasonBusy, "the receiver is busy; retry later"
		}
		out, err := s.zstd().DecodeAll(raw, make([]byte, 0, size))
		if err != nil {
			if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
				return nil, http.StatusRequestEntityTooLarge, batchv1.ReasonTooLarge, fmt.Sprintf("decompressed body exceeds %d bytes", s.limits.MaxDecompressedBytes)
			}
			return nil, http.StatusBadRequest, batchv1.ReasonMalformed, "invalid zstd stream"
		}
		if int64(len(out)) > s.limits.MaxDecompressedBytes {
			return nil, http.StatusRequestEntityTooLarge, batchv1.ReasonTooLarge, fmt.Sprintf("decompressed body exceeds %d bytes", s.limits.MaxDecompressedBytes)
		}
		// The working set follows what was decoded, not what was feared: a frame that does not
		// declare its size held the whole limit only while it was decoded.
		if !held.take(r.Context(), workingSet*int64(len(out))) {
			return nil, http.StatusServiceUnavailable, batchv1.ReasonBusy, "the receiver is busy; retry later"
		}
		return out, 0, "", ""
	default:
		return nil, http.StatusUnsupportedMediaType, batchv1.ReasonUnsupported, "Content-Encoding must be zstd or absent"
	}
}

// workingSet is the memory a batch takes beyond its JSON while it is decoded and stored, as a
// multiple of the JSON's size: the decoded events (strings, property and flag maps) and the COPY
// stream. Measured: batchv1.Decode keeps up to 7x the JSON live for events carrying many
// properties (before the catalog refuses them), and the abuse benchmark's resident memory reached
// 8x its in-flight budget with a factor of 1.
const workingSet = 8

// maxInstanceRequests bounds the requests one instance's certificate (one caller) may have open
// at once: a collector has at most two in flight, and slow or stalled bodies from one
// certificate cannot hold the receiver's in-flight budget.
const maxInstanceRequests = 4

// hold admits a request of c under its rate and its open-request bound, or answers 429 with
// Retry-After. The caller leaves when it has answered.
func (s *Server) hold(w http.ResponseWriter, c caller) bool {
	// Open requests first: a request refused for those does not spend a token of the rate.
	if !s.enter(c) {
		w.Header().Set("Retry-After", "1")
		s.reject(w, http.StatusTooManyRequests, batchv1.ReasonRateLimited, "too many requests from this instance at once; retry later", -1)
		return false
	}
	if wait, ok := s.admit(c); !ok {
		s.leave(c)
		w.Header().Set("Retry-After", strconv.Itoa(int(max(1, wait.Round(time.Second)/time.Second))))
		s.reject(w, http.StatusTooManyRequests, batchv1.ReasonRateLimited, "too many requests from this instance; retry later", -1)
		return false
	}
	return true
}

// enter counts an open request of c, refusing one beyond maxInstanceRequests.
func (s *Server) enter(c caller) bool {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if s.open == nil {
		s.open = map[caller]int{}
	}
	if s.open[c] >= maxInstanceRequests {
		return false
	}
	s.open[c]++
	return true
}

func (s *Server) leave(c caller) {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if s.open[c]--; s.open[c] <= 0 {
		delete(s.open, c)
	}
}

// admit reports whether c may send a request now, and otherwise how long to wait.
func (s *Server) admit(c caller) (time.Duration, bool) {
	if s.limits.InstanceRate <= 0 {
		return 0, true
	}
	now := time.Now() // load is wall-clock time, whatever clock dates consent
	l, ok := s.limiters.Load(c)
	if !ok {
		if s.newLimiters.Add(1)%limiterSweepEvery == 0 {
			s.sweepLimiters(now)
		}
		l, _ = s.limiters.LoadOrStore(c, rate.NewLimiter(rate.Limit(s.limits.InstanceRate), max(1, s.limits.InstanceBurst)))
	}
	limiter := l.(*rate.Limiter)
	res := limiter.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d, false
	}
	return 0, true
}

// limiterSweepEvery is how many new callers' limiters are made between sweeps of the idle ones:
// every certificate policy an instance ever had gets one (re-created policies, handovers), and a
// limiter whose bucket is full is no different from a new one.
const limiterSweepEvery = 1024

// sweepLimiters drops the limiters whose bucket is full.
func (s *Server) sweepLimiters(now time.Time) {
	burst := float64(max(1, s.limits.InstanceBurst))
	s.limiters.Range(func(k, v any) bool {
		if v.(*rate.Limiter).TokensAt(now) >= burst {
			s.limiters.Delete(k)
		}
		return true
	})
}

// smallRequest is the most a request may hold in the small lane: a quarter of the in-flight
// budget is kept for requests this small, so a flood of large bodies never starves the small
// batches other instances send every interval.
const smallRequest = 4 << 20

// reservation is the in-flight bytes a request holds, released when it is answered. It holds
// them in one lane: the small one while its total fits smallRequest, else the large one.
type reservation struct {
	s     *Server
	held  int64
	small bool // held is in the small lane
}

func (h *reservation) take(ctx context.Context, n int64) bool {
	s := h.s
	if s.inFlight == nil {
		return true
	}
	total := h.held + n
	ctx, cancel := context.WithTimeout(ctx, s.limits.InFlightWait)
	defer cancel()
	if total <= smallRequest && (h.small || h.held == 0) {
		if s.inFlightSmall.TryAcquire(min(n, s.smallBudget-h.held)) {
			h.held, h.small = min(total, s.smallBudget), true
			return true
		}
		// The small lane is full (slow clients can hold it): wait in the large lane as well.
	}
	// Into (or further into) the large lane: never more than the lane, so a request alone
	// always fits.
	want := min(total, s.largeBudget)
	have := h.held
	if h.small {
		have = 0
	}
	if err := s.inFlight.Acquire(ctx, want-have); err != nil {
		return false
	}
	if h.small {
		s.inFlightSmall.Release(h.held)
	}
	h.held, h.small = want, false
	return true
}

func (h *reservation) release() {
	if h.held == 0 {
		return
	}
	if h.small {
		h.s.inFlightSmall.Release(h.held)
	} else {
		h.s.inFlight.Release(h.held)
	}
	h.held = 0
}

func (s *Server) storageError(w http.ResponseWriter, err error, what string) {
	if errors.Is(err, store.ErrUnavailable) {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.RetryAfter.Seconds())))
		s.reject(w, http.StatusServiceUnavailable, batchv1.ReasonUnavailable, "storage is unavailable; retry later", -1)
		s.log.Warn("storage unavailable", "op", what, "err", err)
		return
	}
	s.log.Error("storage failure", "op", what, "err", err)
	s.reject(w, http.StatusInternalServerError, batchv1.ReasonInternal, "internal error", -1)
}

func (s *Server) reject(w http.ResponseWriter, status int, reason, msg string, index int) {
	s.metrics.rejections.WithLabelValues(reason).Inc()
	resp := batchv1.ErrorResponse{Error: msg, Reason: reason}
	if index >= 0 {
		resp.EventIndex = &index
	}
	writeJSON(w, status, resp)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
