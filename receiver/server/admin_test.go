/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// adminDo sends a consent ledger request. body is JSON-encoded unless it is already []byte.
func adminDo(t *testing.T, c *http.Client, method, path string, body any, contentType string) reply {
	t.Helper()
	var data []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		data = b
	default:
		var err error
		if data, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, rcv.URL+path, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, out, resp.Header}
}

func adminPost(t *testing.T, c *http.Client, path string, body any) reply {
	t.Helper()
	return adminDo(t, c, http.MethodPost, path, body, "application/json")
}

// record posts a transition for instance by policy ns/name (uid) with the operator client c.
func record(t *testing.T, c *http.Client, instance, ns, name, uid string, tier consentv1.Tier, at time.Time) reply {
	t.Helper()
	return adminPost(t, c, consentv1.PathConsent, consentv1.RecordRequest{
		InstanceID: instance, Owner: consentv1.Owner{Namespace: ns, Name: name, UID: uid},
		Transition: consentv1.Transition{At: at, Tier: tier, Reason: "Declared", Basis: "NewContract"},
	})
}

// mustRecord records a transition and returns the state, failing the test on any other answer.
func mustRecord(t *testing.T, c *http.Client, instance, ns, name string, tier consentv1.Tier, at time.Time) consentv1.State {
	t.Helper()
	r := record(t, c, instance, ns, name, "uid-"+name, tier, at)
	if r.status != http.StatusOK {
		t.Fatalf("recording %s for %s: %d %s", tier, instance, r.status, r.body)
	}
	var st consentv1.State
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// state reads an instance's record through the API; the status is 404 for an unknown instance.
// state reads an instance's record through the store (the API lets only its owner's cluster
// read it), with the status the owner's GET would get.
func state(t *testing.T, instance string) (consentv1.State, int) {
	t.Helper()
	st, err := rcv.Store.ConsentState(context.Background(), instance)
	switch {
	case errors.Is(err, store.ErrUnknownInstance):
		return consentv1.State{}, http.StatusNotFound
	case err != nil:
		t.Fatal(err)
	}
	return st, http.StatusOK
}

func wantStatus(t *testing.T, r reply, status int, reason string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("got %d %s, want %d %s", r.status, r.body, status, reason)
	}
	if reason != "" {
		if got := r.errorResponse(t); got.Reason != reason || got.Error == "" {
			t.Fatalf("got %+v, want reason %s with a message", got, reason)
		}
	}
}

func TestOwnershipOfTheConsentRecord(t *testing.T) {
	east, west := rcv.OperatorClient("east"), rcv.OperatorClient("west")
	at := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)

	// The first policy to record claims the record.
	st := mustRecord(t, east, "own", "ns1", "p1", consentv1.TierEventLevel, at)
	if want := (consentv1.Owner{Cluster: "east", Namespace: "ns1", Name: "p1", UID: "uid-p1"}); st.Owner != want {
		t.Fatalf("owner %+v, want %+v", st.Owner, want)
	}
	// The same policy keeps it; one of the same name with another UID (created again without its
	// predecessor releasing the record) does not.
	r := record(t, east, "own", "ns1", "p1", "uid-p1", consentv1.TierCriticalOnly, at.Add(time.Minute))
	wantStatus(t, r, http.StatusOK, "")
	wantStatus(t, record(t, east, "own", "ns1", "p1", "uid-new", consentv1.TierEventLevel, at.Add(time.Minute)), http.StatusConflict, consentv1.ReasonOwnedElsewhere)
	before, _ := state(t, "own")
	if before.Owner.UID != "uid-p1" || before.Timeline.Current() != consentv1.TierCriticalOnly {
		t.Fatalf("after the owner re-recorded: %+v", before)
	}

	t.Run("only the owner's cluster reads the record, and a refusal names nobody", func(t *testing.T) {
		get := func(c *http.Client) reply {
			return adminDo(t, c, http.MethodGet, consentv1.PathConsent+"?instance=own", nil, "")
		}
		wantStatus(t, get(east), http.StatusOK, "")
		r := get(west)
		wantStatus(t, r, http.StatusConflict, consentv1.ReasonOwnedElsewhere)
		claim := record(t, west, "own", "ns1", "p1", "uid-p1", consentv1.TierOff, at.Add(time.Minute))
		for _, body := range []string{string(r.body), string(claim.body)} {
			for _, secret := range []string{"ns1", "p1", "east", "uid-p1"} {
				if strings.Contains(body, `"`+secret+`"`) || strings.Contains(body, "/"+secret) || strings.Contains(body, secret+"/") {
					t.Fatalf("a refusal names the owner (%q): %s", secret, body)
				}
			}
		}
	})

	// Anyone else is refused and changes nothing.
	for name, c := range map[string]struct {
		client   *http.Client
		ns, name string
	}{
		"another policy in the same namespace": {east, "ns1", "p2"},
		"the same name in another namespace":   {east, "ns2", "p1"},
		"the same policy in another cluster":   {west, "ns1", "p1"},
	} {
		t.Run(name, func(t *testing.T) {
			wantStatus(t, record(t, c.client, "own", c.ns, c.name, "x", consentv1.TierEventLevel, at.Add(2*time.Minute)), http.StatusConflict, consentv1.ReasonOwnedElsewhere)
			wantStatus(t, record(t, c.client, "own", c.ns, c.name, "x", consentv1.TierOff, at.Add(2*time.Minute)), http.StatusConflict, consentv1.ReasonOwnedElsewhere)
			wantStatus(t, adminPost(t, c.client, consentv1.PathRelease, consentv1.ReleaseRequest{InstanceID: "own", Owner: consentv1.Owner{Namespace: c.ns, Name: c.name}}),
				http.StatusConflict, consentv1.ReasonOwnedElsewhere)
			if after, _ := state(t, "own"); !reflect.DeepEqual(after, before) {
				t.Fatalf("the record changed:\n%+v\n%+v", before, after)
			}
		})
	}

	t.Run("the owner's cluster comes from the certificate, not the body", func(t *testing.T) {
		body := []byte(`{"instanceID":"own-cert","owner":{"cluster":"west","namespace":"ns1","name":"p1"},` +
			`"transition":{"at":"` + at.Format(time.RFC3339) + `","tier":"EventLevel"}}`)
		wantStatus(t, adminPost(t, east, consentv1.PathConsent, body), http.StatusOK, "")
		if st, _ := state(t, "own-cert"); st.Owner.Cluster != "east" {
			t.Fatalf("owner %+v, want cluster east", st.Owner)
		}
		// And west cannot pass as east by naming it in the body.
		spoof := []byte(`{"instanceID":"own-cert","owner":{"cluster":"east","namespace":"ns1","name":"p1"},` +
			`"transition":{"at":"` + at.Format(time.RFC3339) + `","tier":"Off"}}`)
		wantStatus(t, adminPost(t, west, consentv1.PathConsent, spoof), http.StatusConflict, consentv1.ReasonOwnedElsewhere)
		if st, _ := state(t, "own-cert"); st.Timeline.Current() != consentv1.TierEventLevel {
			t.Fatalf("a spoofed owner changed the record: %+v", st)
		}
	})

	t.Run("release, then another cluster claims once the receiver's operators hand it over", func(t *testing.T) {
		wantStatus(t, adminPost(t, east, consentv1.PathRelease, consentv1.ReleaseRequest{InstanceID: "own", Owner: consentv1.Owner{Namespace: "ns1", Name: "p1", UID: "uid-p1"}}), http.StatusOK, "")
		released, _ := state(t, "own")
		if released.Owner != (consentv1.Owner{}) || !reflect.DeepEqual(released.Timeline, before.Timeline) {
			t.Fatalf("after release: %+v (the timeline must stay: released to its own namespace)", released)
		}
		// A retried release succeeds and changes nothing.
		wantStatus(t, adminPost(t, east, consentv1.PathRelease, consentv1.ReleaseRequest{InstanceID: "own", Owner: consentv1.Owner{Namespace: "ns1", Name: "p1"}}), http.StatusOK, "")
		// Released by a policy of east's ns1: nobody elsewhere may claim it on their own, nor
		// read it (its timeline would land in another namespace's policy status).
		wantStatus(t, record(t, west, "own", "ns9", "p9", "", consentv1.TierOff, time.Now()), http.StatusConflict, consentv1.ReasonOwnedElsewhere)
		for asker, c := range map[string]struct {
			client *http.Client
			query  string
			want   int
		}{
			"another cluster":                   {west, "?instance=own&namespace=ns1", http.StatusConflict},
			"another namespace":                 {east, "?instance=own&namespace=ns9", http.StatusConflict},
			"its namespace":                     {east, "?instance=own&namespace=ns1", http.StatusOK},
			"its cluster, no namespace (older)": {east, "?instance=own", http.StatusConflict},
			"another cluster, no namespace":     {west, "?instance=own", http.StatusConflict},
		} {
			if resp := adminDo(t, c.client, http.MethodGet, consentv1.PathConsent+c.query, nil, ""); resp.status != c.want {
				t.Errorf("%s reading the released record: %d, want %d (%s)", asker, resp.status, c.want, resp.body)
			}
		}
		if _, err := rcv.Admin.ForceRelease(context.Background(), "own", nil); err != nil {
			t.Fatal(err)
		}
		st := mustRecord(t, west, "own", "ns9", "p9", consentv1.TierOff, time.Now())
		if st.Owner.Cluster != "west" || st.Owner.Namespace != "ns9" || st.Timeline.Current() != consentv1.TierOff {
			t.Fatalf("after the claim: %+v", st)
		}
		wantStatus(t, record(t, east, "own", "ns1", "p1", "", consentv1.TierEventLevel, time.Now()), http.StatusConflict, consentv1.ReasonOwnedElsewhere)
	})

	t.Run("a collector certificate may not use the ledger", func(t *testing.T) {
		collector := client(t, "own")
		wantStatus(t, record(t, collector, "own", "ns9", "p9", "", consentv1.TierEventLevel, time.Now()), http.StatusForbidden, consentv1.ReasonNotOperator)
		wantStatus(t, adminDo(t, collector, http.MethodGet, consentv1.PathConsent+"?instance=own", nil, ""), http.StatusForbidden, consentv1.ReasonNotOperator)
		wantStatus(t, adminPost(t, collector, consentv1.PathRelease, consentv1.ReleaseRequest{InstanceID: "own", Owner: consentv1.Owner{Namespace: "ns9", Name: "p9"}}),
			http.StatusForbidden, consentv1.ReasonNotOperator)
		wantStatus(t, adminPost(t, collector, consentv1.PathErasures, consentv1.ErasureRequest{InstanceID: "own", Owner: consentv1.Owner{Namespace: "ns9", Name: "p9"},
			RequestID: "r1", Scope: consentv1.ScopeAll, RequestedBy: consentv1.RequesterSupport}), http.StatusForbidden, consentv1.ReasonNotOperator)
		if st, _ := state(t, "own"); st.Owner.Cluster != "west" || st.Timeline.Current() != consentv1.TierOff || len(st.Erasures) != 0 {
			t.Fatalf("a collector changed the record: %+v", st)
		}
	})

	t.Run("an operator certificate may not send data", func(t *testing.T) {
		r, err := post(t, east, mustEncode(t, events("own-cert", 1, 1)), nil)
		if err != nil {
			t.Fatal(err)
		}
		wantStatus(t, r, http.StatusForbidden, batchv1.ReasonUnauthorized)
		if n := count(t, "events", "own-cert"); n != 0 {
			t.Fatalf("%d events stored", n)
		}
	})

	t.Run("without a client certificate", func(t *testing.T) {
		// The listener refuses the handshake outright...
		if _, err := rcv.HTTPClient(nil).Get(rcv.URL + consentv1.PathConsent + "?instance=own"); err == nil {
			t.Fatal("a connection without a client certificate was accepted")
		}
		// ...and the handler answers 401 should it ever be served without verified TLS.
		for _, req := range []*http.Request{
			httptest.NewRequest(http.MethodGet, consentv1.PathConsent+"?instance=own", nil),
			httptest.NewRequest(http.MethodPost, consentv1.PathConsent, strings.NewReader(`{}`)),
			httptest.NewRequest(http.MethodPost, consentv1.PathRelease, strings.NewReader(`{}`)),
			httptest.NewRequest(http.MethodPost, consentv1.PathErasures, strings.NewReader(`{}`)),
		} {
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			rcv.Server.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("%s %s without TLS: %d %s", req.Method, req.URL, rec.Code, rec.Body)
			}
		}
	})
}

func TestHostileAdminBodiesChangeNothing(t *testing.T) {
	op := rcv.OperatorClient("east")
	at := time.Now().Add(-time.Hour).UTC().Truncate(time.Second).Format(time.RFC3339)
	mustRecord(t, op, "adm", "ns", "adm", consentv1.TierCriticalOnly, time.Now().Add(-2*time.Hour))
	before, _ := state(t, "adm")

	valid := `{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"transition":{"at":"` + at + `","tier":"EventLevel"}}`
	// Each body is valid but for one thing; the plain valid one is accepted at the end.
	withTier := func(tier string) string { return strings.Replace(valid, `"EventLevel"`, tier, 1) }
	cases := []struct {
		name, method, path, contentType string
		body                            []byte
		status                          int
		reason                          string
	}{
		{"oversized", "POST", consentv1.PathConsent, "application/json",
			[]byte(strings.Replace(valid, `"tier"`, `"reason":"`+strings.Repeat("A", 70<<10)+`","tier"`, 1)), 413, batchv1.ReasonTooLarge},
		{"unknown field", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `{"instanceID"`, `{"force":true,"instanceID"`, 1)), 400, consentv1.ReasonInvalid},
		{"unknown nested field", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier":`, `"forever":true,"tier":`, 1)), 400, consentv1.ReasonInvalid},
		// A trial's expiry that is none: not a time, not after the grant, on a lower tier.
		{"until not a time", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier":`, `"until":"never","tier":`, 1)), 400, consentv1.ReasonInvalid},
		{"until before the grant", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier":`, `"until":"2001-01-01T00:00:00Z","tier":`, 1)), 400, consentv1.ReasonInvalid},
		{"until on a lowering", "POST", consentv1.PathConsent, "application/json",
			[]byte(strings.Replace(withTier(`"Off"`), `"tier":`, `"until":"2030-01-01T00:00:00Z","tier":`, 1)), 400, consentv1.ReasonInvalid},
		{"invalid tier", "POST", consentv1.PathConsent, "application/json", []byte(withTier(`"Everything"`)), 400, consentv1.ReasonInvalid},
		{"tier in another case", "POST", consentv1.PathConsent, "application/json", []byte(withTier(`"eventlevel"`)), 400, consentv1.ReasonInvalid},
		{"tier not a string", "POST", consentv1.PathConsent, "application/json", []byte(withTier(`2`)), 400, consentv1.ReasonInvalid},
		{"invalid instance id", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"adm"`, `"ADM/../x"`, 1)), 400, consentv1.ReasonInvalid},
		{"instance id too long", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"adm"`, `"`+strings.Repeat("a", 64)+`"`, 1)), 400, consentv1.ReasonInvalid},
		{"raw NUL byte", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"adm"`, "\"adm\x00\"", 1)), 400, consentv1.ReasonInvalid},
		{"escaped NUL in the instance", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"adm"`, `"adm\u0000"`, 1)), 400, consentv1.ReasonInvalid},
		{"escaped NUL in the reason", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier"`, `"reason":"Declared\u0000","tier"`, 1)), 400, consentv1.ReasonInvalid},
		{"free text as reason", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier"`, `"reason":"customer said so","tier"`, 1)), 400, consentv1.ReasonInvalid},
		// Words that pass a CamelCase shape check: only the closed sets are taken.
		{"a CamelCase word that is no reason", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier"`, `"reason":"ProjectFalconMovesToGitLab","tier"`, 1)), 400, consentv1.ReasonInvalid},
		{"a CamelCase word that is no basis", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier"`, `"basis":"AcmeCorpJaneDoe","tier"`, 1)), 400, consentv1.ReasonInvalid},
		{"a reason in another case", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"tier"`, `"reason":"declared","tier"`, 1)), 400, consentv1.ReasonInvalid},
		{"invalid owner name", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"name":"adm"`, `"name":"Adm_1"`, 1)), 400, consentv1.ReasonInvalid},
		{"invalid UTF-8", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"ns"`, "\"n\xffs\"", 1)), 400, consentv1.ReasonInvalid},
		{"wrong content type", "POST", consentv1.PathConsent, "text/plain", []byte(valid), 415, batchv1.ReasonUnsupported},
		{"batch content type", "POST", consentv1.PathConsent, batchv1.ContentType, []byte(valid), 415, batchv1.ReasonUnsupported},
		{"no content type", "POST", consentv1.PathConsent, "", []byte(valid), 415, batchv1.ReasonUnsupported},
		{"trailing data", "POST", consentv1.PathConsent, "application/json", []byte(valid + `{"instanceID":"adm"}`), 400, consentv1.ReasonInvalid},
		{"trailing garbage", "POST", consentv1.PathConsent, "application/json", []byte(valid + `x`), 400, consentv1.ReasonInvalid},
		{"repeated key", "POST", consentv1.PathConsent, "application/json", []byte(withTier(`"EventLevel","Tier":"Off"`)), 400, consentv1.ReasonInvalid},
		{"top-level array", "POST", consentv1.PathConsent, "application/json", []byte(`[` + valid + `]`), 400, consentv1.ReasonInvalid},
		{"null", "POST", consentv1.PathConsent, "application/json", []byte(`null`), 400, consentv1.ReasonInvalid},
		{"empty", "POST", consentv1.PathConsent, "application/json", nil, 400, consentv1.ReasonInvalid},
		{"truncated", "POST", consentv1.PathConsent, "application/json", []byte(valid[:len(valid)-2]), 400, consentv1.ReasonInvalid},
		{"missing at", "POST", consentv1.PathConsent, "application/json", []byte(strings.Replace(valid, `"at":"`+at+`",`, ``, 1)), 400, consentv1.ReasonInvalid},
		{"raise far in the future", "POST", consentv1.PathConsent, "application/json",
			[]byte(strings.Replace(valid, at, time.Now().Add(time.Hour).UTC().Format(time.RFC3339), 1)), 400, consentv1.ReasonInvalid},
		{"wrong method", "PUT", consentv1.PathConsent, "application/json", []byte(valid), 405, batchv1.ReasonMethodNotAllow},
		{"GET with another parameter", "GET", consentv1.PathConsent + "?instance=adm&all=1", "", nil, 400, consentv1.ReasonInvalid},
		{"GET with an invalid instance", "GET", consentv1.PathConsent + "?instance=%00", "", nil, 400, consentv1.ReasonInvalid},
		{"GET of an unknown instance", "GET", consentv1.PathConsent + "?instance=never-seen", "", nil, 404, consentv1.ReasonUnknownInstance},
		{"release by GET", "GET", consentv1.PathRelease, "", nil, 405, batchv1.ReasonMethodNotAllow},
		{"release with an unknown field", "POST", consentv1.PathRelease, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"all":true}`), 400, consentv1.ReasonInvalid},
		{"release of an unknown instance", "POST", consentv1.PathRelease, "application/json",
			[]byte(`{"instanceID":"never-seen","owner":{"namespace":"ns","name":"adm"}}`), 404, consentv1.ReasonUnknownInstance},
		{"erasure with an invalid scope", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"requestID":"r1","scope":"Everything","requestedBy":"Support"}`), 400, consentv1.ReasonInvalid},
		{"erasure with to before from", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"requestID":"r1","scope":"All","requestedBy":"Support","from":"2026-02-01T00:00:00Z","to":"2026-01-01T00:00:00Z"}`), 400, consentv1.ReasonInvalid},
		{"erasure without requester", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"requestID":"r1","scope":"All"}`), 400, consentv1.ReasonInvalid},
		{"erasure with a control character in the requester", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"requestID":"r1","scope":"All","requestedBy":"a\nb"}`), 400, consentv1.ReasonInvalid},
		{"erasure naming a person as the requester", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"requestID":"r1","scope":"All","requestedBy":"Jane Doe <jane.doe@acme.example>"}`), 400, consentv1.ReasonInvalid},
		{"erasure with a requester that is no role", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"requestID":"r1","scope":"All","requestedBy":"support"}`), 400, consentv1.ReasonInvalid},
		{"erasure with an invalid request id", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"adm","owner":{"namespace":"ns","name":"adm"},"requestID":"../r1","scope":"All","requestedBy":"Support"}`), 400, consentv1.ReasonInvalid},
		{"erasure of an unknown instance", "POST", consentv1.PathErasures, "application/json",
			[]byte(`{"instanceID":"never-seen","owner":{"namespace":"ns","name":"adm"},"requestID":"r1","scope":"All","requestedBy":"Support"}`), 404, consentv1.ReasonUnknownInstance},
		{"unknown admin path", "POST", "/v1/admin/consent/all", "application/json", []byte(valid), 404, batchv1.ReasonNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, adminDo(t, op, tc.method, tc.path, tc.body, tc.contentType), tc.status, tc.reason)
		})
	}
	if after, _ := state(t, "adm"); !reflect.DeepEqual(after, before) {
		t.Fatalf("hostile bodies changed the record:\n%+v\n%+v", before, after)
	}
	if _, status := state(t, "never-seen"); status != http.StatusNotFound {
		t.Fatalf("a refused request created a record: %d", status)
	}
	// The valid body is accepted, so each case above was refused for its one defect.
	wantStatus(t, adminPost(t, op, consentv1.PathConsent, []byte(valid)), http.StatusOK, "")
	if after, _ := state(t, "adm"); after.Timeline.Current() != consentv1.TierEventLevel {
		t.Fatalf("the valid request did not apply: %+v", after)
	}
}

// TestAClaimOfAnInstanceNotReservedIsRefused: with reservations required, an operator's first
// record of an instance nobody reserved is answered 409 NotReserved (naming nobody) and leaves
// no record; reserved for the operator's namespace, it is claimed.
func TestAClaimOfAnInstanceNotReservedIsRefused(t *testing.T) {
	ctx := context.Background()
	if err := rcv.Admin.SetReservationsRequired(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rcv.Admin.SetReservationsRequired(context.Background(), false) })
	op := rcv.OperatorClient("c1")
	claim := consentv1.RecordRequest{InstanceID: "unreserved", Owner: consentv1.Owner{Namespace: "acme", Name: "p", UID: "u1"},
		Transition: consentv1.Transition{At: time.Now(), Tier: consentv1.TierCriticalOnly, Reason: "Declared"}}
	got := adminPost(t, op, consentv1.PathConsent, claim)
	if got.status != http.StatusConflict || got.errorResponse(t).Reason != consentv1.ReasonNotReserved || !strings.Contains(got.errorResponse(t).Error, "receiver consent reserve") {
		t.Fatalf("claim of an instance not reserved: %d %s", got.status, got.body)
	}
	if _, err := rcv.Store.ConsentState(ctx, "unreserved"); !errors.Is(err, store.ErrUnknownInstance) {
		t.Fatalf("the refused claim left a record: %v", err)
	}
	if err := rcv.Admin.Reserve(ctx, "unreserved", consentv1.Owner{Cluster: "c1", Namespace: "acme"}); err != nil {
		t.Fatal(err)
	}
	if got := adminPost(t, op, consentv1.PathConsent, claim); got.status != http.StatusOK {
		t.Fatalf("claim once reserved: %d %s", got.status, got.body)
	}
}
