/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// MaxAdminBodyBytes bounds a consent ledger request body: the largest legitimate one is a few
// hundred bytes.
const MaxAdminBodyBytes = 64 << 10

// operator returns the cluster whose operator the verified client certificate names. The
// listener already refuses connections without a valid certificate; the 401 here guards the
// handler should it ever be served otherwise. A collector's certificate is refused: it names an
// instance, and an instance must never write its own consent.
func (s *Server) operator(w http.ResponseWriter, r *http.Request) (string, bool) {
	cert, ok := s.clientCertificate(w, r)
	if !ok {
		return "", false
	}
	cluster, err := pki.OperatorCluster(cert)
	if err != nil {
		s.reject(w, http.StatusForbidden, consentv1.ReasonNotOperator, "only an operator's client certificate may use the consent ledger API", -1)
		return "", false
	}
	return cluster, true
}

func (s *Server) handleConsent(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		s.getConsent(w, r)
	case http.MethodPost:
		s.recordConsent(w, r)
	default:
		w.Header().Set("Allow", "GET, POST")
		s.reject(w, http.StatusMethodNotAllowed, batchv1.ReasonMethodNotAllow, "use GET or POST", -1)
	}
}

func (s *Server) getConsent(w http.ResponseWriter, r *http.Request) {
	cluster, ok := s.operator(w, r)
	if !ok {
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	_, named := q["namespace"]
	if err != nil || len(q) != 1+btoi(named) || len(q["instance"]) != 1 || !pki.ValidInstanceID(q.Get("instance")) ||
		named && (len(q["namespace"]) != 1 || q.Get("namespace") == "") {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, "the query must be instance=<instance id>, and optionally namespace=<the asking policy's namespace>", -1)
		return
	}
	st, err := s.store.ConsentState(r.Context(), q.Get("instance"))
	if err != nil {
		s.adminError(w, err, "consent state", q.Get("instance"))
		return
	}
	if st.Owner.Cluster != "" && (st.Owner.Cluster != cluster || named && st.Owner.Namespace != q.Get("namespace")) {
		// Another cluster's record, or another namespace's: its timeline, owner and erasure
		// audit are not this policy's to read.
		s.adminError(w, &store.OwnedElsewhereError{Instance: st.InstanceID, Owner: st.Owner}, "consent state", q.Get("instance"))
		return
	}
	if rel := st.ReleasedBy; st.Owner.Cluster == "" && rel != nil && (rel.Cluster != cluster || !named || rel.Namespace != q.Get("namespace")) {
		// Released by a policy elsewhere: not the asker's to claim, nor to read (its
		// timeline would land in another namespace's policy status). An asker that names no
		// namespace (an older operator) cannot be told apart: refused too.
		s.adminError(w, &store.OwnedElsewhereError{Instance: st.InstanceID, Released: true}, "consent state", q.Get("instance"))
		return
	}
	if st.Owner.Cluster == "" {
		// Released: whoever claims it next needs the timeline (never to reach back over it),
		// not the previous owner's erasure audit.
		st.Erasures = nil
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) recordConsent(w http.ResponseWriter, r *http.Request) {
	cluster, ok := s.operator(w, r)
	if !ok {
		return
	}
	var req consentv1.RecordRequest
	if !s.decodeAdmin(w, r, &req) {
		return
	}
	tr := req.Transition
	var problem string
	switch {
	case !pki.ValidInstanceID(req.InstanceID):
		problem = "instanceID must be a DNS label of at most 63 characters"
	case req.Owner.Validate() != nil:
		problem = req.Owner.Validate().Error()
	case !tr.Tier.Valid():
		problem = "transition.tier must be one of EventLevel, CriticalOnly, Off"
	case tr.At.IsZero():
		problem = "transition.at is required"
	case !consentv1.KnownReason(tr.Reason):
		// A closed set, never free text: the ledger is kept for years and read centrally.
		problem = "transition.reason must be one of the consent reasons (Declared, TrialExpired, TermsOutdated, ApprovalMissing, BasisNotEligible, NotYetAccepted, PolicyDeleted, RecordReleased), or empty"
	case !consentv1.KnownBasis(tr.Basis):
		problem = "transition.basis must be one of the contract bases (SelfServeTrial, ZeroDollarOrderForm, NewContract, Renewal, CELedTrial, LegacyTerms), or empty"
	}
	if problem != "" {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, problem, -1)
		return
	}
	req.Owner.Cluster = cluster // the certificate names the cluster; the body cannot
	st, err := s.store.RecordTransition(r.Context(), cluster, req)
	var elsewhere *store.OwnedElsewhereError
	if errors.As(err, &elsewhere) && elsewhere.Unreserved {
		// Who asked, for the receiver's operators to reserve the instance if it is theirs (the
		// answer names nobody else).
		s.log.Info("claim of an instance not reserved refused", "instance", req.InstanceID, "cluster", cluster, "namespace", req.Owner.Namespace)
		s.reject(w, http.StatusConflict, consentv1.ReasonNotReserved, err.Error(), -1)
		return
	}
	if err != nil {
		s.adminError(w, err, "record transition", req.InstanceID)
		return
	}
	// Recorded by its owner (a claim too, which may append nothing): certificates refused for
	// the instance before are judged by the store again.
	s.refused.forgetInstance(req.InstanceID)
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleRelease(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		s.reject(w, http.StatusMethodNotAllowed, batchv1.ReasonMethodNotAllow, "use POST", -1)
		return
	}
	cluster, ok := s.operator(w, r)
	if !ok {
		return
	}
	var req consentv1.ReleaseRequest
	if !s.decodeAdmin(w, r, &req) {
		return
	}
	if !pki.ValidInstanceID(req.InstanceID) {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, "instanceID must be a DNS label of at most 63 characters", -1)
		return
	}
	if err := req.Owner.Validate(); err != nil {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, err.Error(), -1)
		return
	}
	req.Owner.Cluster = cluster
	if err := s.store.Release(r.Context(), cluster, req); err != nil {
		s.adminError(w, err, "release", req.InstanceID)
		return
	}
	st, err := s.store.ConsentState(r.Context(), req.InstanceID)
	if err != nil {
		s.adminError(w, err, "consent state", req.InstanceID)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleErasures(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		s.reject(w, http.StatusMethodNotAllowed, batchv1.ReasonMethodNotAllow, "use POST", -1)
		return
	}
	cluster, ok := s.operator(w, r)
	if !ok {
		return
	}
	var req consentv1.ErasureRequest
	if !s.decodeAdmin(w, r, &req) {
		return
	}
	problem := ""
	switch {
	case !pki.ValidInstanceID(req.InstanceID):
		problem = "instanceID must be a DNS label of at most 63 characters"
	case req.Owner.Validate() != nil:
		problem = req.Owner.Validate().Error()
	case req.Validate() != nil:
		problem = req.Validate().Error()
	}
	if problem != "" {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, problem, -1)
		return
	}
	req.Owner.Cluster = cluster
	res, err := s.store.Erase(r.Context(), cluster, req)
	if err != nil {
		s.adminError(w, err, "erase", req.InstanceID)
		return
	}
	s.log.Info("erasure verified", "instance", req.InstanceID, "request", res.RequestID, "scope", res.Scope,
		"eventsDeleted", res.EventsDeleted, "aggregatesDeleted", res.AggregatesDeleted)
	writeJSON(w, http.StatusOK, res)
}

// decodeAdmin reads a strict JSON request body into v: application/json, uncompressed, at most
// MaxAdminBodyBytes, valid UTF-8, one object with known fields only, each at most once, and
// nothing after it. It answers the request itself and returns false when the body is refused.
func (s *Server) decodeAdmin(w http.ResponseWriter, r *http.Request, v any) bool {
	mediaType, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if cs, ok := params["charset"]; err != nil || mediaType != "application/json" || len(params) > 1 || (len(params) == 1 && (!ok || !strings.EqualFold(cs, "utf-8"))) {
		s.reject(w, http.StatusUnsupportedMediaType, batchv1.ReasonUnsupported, "Content-Type must be application/json", -1)
		return false
	}
	if enc := r.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		s.reject(w, http.StatusUnsupportedMediaType, batchv1.ReasonUnsupported, "Content-Encoding must be absent", -1)
		return false
	}
	tooLarge := "the body exceeds " + strconv.Itoa(MaxAdminBodyBytes) + " bytes"
	if r.ContentLength > MaxAdminBodyBytes {
		s.reject(w, http.StatusRequestEntityTooLarge, batchv1.ReasonTooLarge, tooLarge, -1)
		return false
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxAdminBodyBytes+1))
	if err != nil {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, "reading the body failed", -1)
		return false
	}
	if len(data) > MaxAdminBodyBytes {
		s.reject(w, http.StatusRequestEntityTooLarge, batchv1.ReasonTooLarge, tooLarge, -1)
		return false
	}
	if !utf8.Valid(data) {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, "the body is not valid UTF-8", -1)
		return false
	}
	if err := oneObjectWithoutDuplicates(data); err != nil {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, err.Error(), -1)
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		s.reject(w, http.StatusBadRequest, consentv1.ReasonInvalid, "malformed request: "+bounded(err.Error()), -1)
		return false
	}
	return true
}

// oneObjectWithoutDuplicates checks that data is exactly one JSON object, with no key repeated
// in any object. encoding/json keeps the last of repeated keys and matches keys without regard
// to case, so {"tier":"Off","Tier":"EventLevel"} would otherwise mean whatever comes last.
func oneObjectWithoutDuplicates(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	first, err := dec.Token()
	if err != nil {
		return errors.New("malformed request: the body is not JSON")
	}
	if d, ok := first.(json.Delim); !ok || d != '{' {
		return errors.New("malformed request: the body must be a JSON object")
	}
	// One set of keys per open object or array (nil for arrays).
	stack := []map[string]bool{{}}
	expectKey := true
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return errors.New("malformed request: the body is not JSON")
		}
		top := stack[len(stack)-1]
		if top != nil && expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				expectKey = len(stack) > 0 && stack[len(stack)-1] != nil
				continue
			}
			key, _ := tok.(string)
			folded := strings.ToLower(key)
			if top[folded] {
				return fmt.Errorf("malformed request: key %q appears more than once", bounded(key))
			}
			top[folded] = true
			expectKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, map[string]bool{})
			expectKey = true
			continue
		case json.Delim('['):
			stack = append(stack, nil)
			continue
		case json.Delim(']'), json.Delim('}'):
			stack = stack[:len(stack)-1]
		}
		// After a value: in an object the next token is a key, in an array another value.
		expectKey = len(stack) > 0 && stack[len(stack)-1] != nil
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("malformed request: data after the JSON object")
	}
	return nil
}

// bounded shortens a message that may quote the request.
func bounded(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.ToValidUTF8(s, "?")
}

// adminError answers a failed ledger request with its status and consentv1 reason.
func (s *Server) adminError(w http.ResponseWriter, err error, op, instance string) {
	var status int
	reason := consentv1.ReasonInvalid
	switch {
	case errors.Is(err, store.ErrOwnedElsewhere):
		status, reason = http.StatusConflict, consentv1.ReasonOwnedElsewhere
	case errors.Is(err, store.ErrUnknownInstance):
		status, reason = http.StatusNotFound, consentv1.ReasonUnknownInstance
	case errors.Is(err, store.ErrRequestConflict):
		status = http.StatusConflict
	case errors.Is(err, store.ErrStale):
		status, reason = http.StatusConflict, consentv1.ReasonStale
	case errors.Is(err, store.ErrInvalid), errors.Is(err, consentv1.ErrFuture):
		status = http.StatusBadRequest
	case errors.Is(err, store.ErrUnverified):
		s.log.Warn("erasure not verified; the operator retries", "instance", instance, "err", err)
		w.Header().Set("Retry-After", strconv.Itoa(int(s.RetryAfter.Seconds())))
		s.reject(w, http.StatusServiceUnavailable, batchv1.ReasonUnavailable, "the erasure was carried out but not verified yet; retry the same request", -1)
		return
	default:
		s.storageError(w, err, op)
		return
	}
	s.log.Info("consent ledger request refused", "op", op, "instance", instance, "reason", reason)
	s.reject(w, status, reason, err.Error(), -1)
}

// ledgerObserver counts and logs what the ledger's writes changed (after they committed, and
// only when they changed something), with stable keys and never any event data.
type ledgerObserver struct{ s *Server }

func (o ledgerObserver) TransitionRecorded(instance string, owner consentv1.Owner, tr consentv1.Transition, eventsRemoved, aggregatesRemoved int64) {
	o.s.metrics.transitions.WithLabelValues(string(tr.Tier)).Inc()
	o.s.metrics.removed.Add(float64(eventsRemoved))
	o.s.log.Info("consent transition recorded", "instance", instance, "tier", string(tr.Tier), "at", tr.At,
		"reason", tr.Reason, "basis", tr.Basis, "owner", owner.String(), "eventsRemoved", eventsRemoved, "aggregatesRemoved", aggregatesRemoved)
}

func (o ledgerObserver) Erased(instance string, owner consentv1.Owner, requestID, scope string, events, aggregates int64) {
	o.s.metrics.erasures.WithLabelValues(scope).Inc()
	o.s.metrics.erasedRows.WithLabelValues("events").Add(float64(events))
	o.s.metrics.erasedRows.WithLabelValues("aggregates").Add(float64(aggregates))
	o.s.log.Info("erasure carried out", "instance", instance, "request", requestID, "scope", scope,
		"owner", owner.String(), "eventsDeleted", events, "aggregatesDeleted", aggregates)
}

func (o ledgerObserver) Released(instance string, owner consentv1.Owner) {
	o.s.log.Info("consent record released", "instance", instance, "owner", owner.String())
}

// btoi is 1 for true.
func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
