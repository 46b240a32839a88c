/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package scrub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

var key = []byte("0123456789abcdef0123456789abcdef")

// PersonalData is the corpus of values that must never leave an instance. Tests place them in
// every field the scrubber reads and assert that none appears in its output.
var PersonalData = []string{
	"alice@acme-corp.com", "Alice Liddell", "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
	"sk-live-51H8xJ2eZvKYlo2C8XqTm0aB", "https://sourcegraph.acme-corp.com/github.com/acme/secret-repo/-/blob/main.go",
	"github.com/acme/secret-repo", "cmd/frontend/internal/auth/session.go", "repo:acme/secret password=hunter2",
	"10.20.30.40", "www.acme-corp.com", "C:\\Users\\alice\\secrets.txt", "/home/alice/.ssh/id_rsa",
	"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0", "hunter2-password-AKIAIOSFODNN7EXAMPLE",
}

func row(name string, publicArg map[string]any) *Row {
	pa, _ := json.Marshal(publicArg)
	return &Row{ID: 42, Name: name, UserID: 7, Source: "WEB", PublicArgument: pa, Version: "5.3.0",
		Timestamp: time.Date(2026, 11, 27, 10, 0, 0, 0, time.FixedZone("CET", 3600)), Client: "VSCODE_CODY_EXTENSION",
		FeatureFlags: []byte(`{"search-ranking": true, "cody": false, "rollout": "50%"}`)}
}

func TestPseudonymIsKeyedAndStable(t *testing.T) {
	s, _ := New(key)
	got := s.Pseudonym(7, "")
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("u:7"))
	if want := hex.EncodeToString(mac.Sum(nil)[:16]); got != want {
		t.Fatalf("pseudonym %s, want HMAC-SHA256(key, user) truncated to 128 bits %s", got, want)
	}
	if s.Pseudonym(7, "") != got {
		t.Fatal("pseudonym is not stable")
	}
	other, _ := New([]byte("another-key-another-key-another!"))
	if other.Pseudonym(7, "") == got {
		t.Fatal("pseudonyms do not depend on the key")
	}
	// A plain hash of the id would be reversible by enumeration; the keyed one is not.
	plain := sha256.Sum256([]byte("7"))
	if strings.HasPrefix(hex.EncodeToString(plain[:]), got) {
		t.Fatal("pseudonym is an unkeyed hash")
	}
	if s.Pseudonym(0, "7") == got {
		t.Fatal("anonymous and signed-in id spaces collide")
	}
	if _, err := New([]byte("short")); err == nil {
		t.Fatal("a short key is accepted")
	}
}

func TestEventKeepsOnlyWhatTheAllowListAllows(t *testing.T) {
	s, _ := New(key)
	e, drop := s.Event(row("SearchSubmitted", map[string]any{
		"patternType": "regexp", "query": "repo:acme/secret password=hunter2", "source": "nav", "mode": "x",
	}))
	if drop != "" {
		t.Fatal(drop)
	}
	if e.ID != "42" || e.Name != "SearchSubmitted" || e.Source != "WEB" || e.ProductVersion != "5.3.0" || e.Client != "VSCODE_CODY_EXTENSION" {
		t.Fatalf("event %+v", e)
	}
	if !e.Timestamp.Equal(time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)) || e.Timestamp.Location() != time.UTC {
		t.Fatalf("timestamp not UTC: %v", e.Timestamp)
	}
	if len(e.Properties) != 2 || e.Properties["patternType"] != "regexp" || e.Properties["source"] != "nav" {
		t.Fatalf("properties %v", e.Properties)
	}
	if s.PropertiesDropped != 2 {
		t.Fatalf("dropped %d properties, want 2 (query, mode)", s.PropertiesDropped)
	}
	if len(e.FeatureFlags) != 2 || !e.FeatureFlags["search-ranking"] || e.FeatureFlags["cody"] {
		t.Fatalf("feature flags %v (non-boolean values are dropped)", e.FeatureFlags)
	}

	lat, _ := s.Event(row("search.latencies.regexp", map[string]any{"durationMs": 135, "query": "x"}))
	if lat.Properties["durationMs"] != int64(140) || len(lat.Properties) != 1 { // two significant digits
		t.Fatalf("latency properties %v", lat.Properties)
	}
	for _, bad := range []any{-1, 1e12, "135", map[string]any{"a": 1}, []any{1}, true} {
		lat, _ = s.Event(row("search.latencies.literal", map[string]any{"durationMs": bad}))
		if _, ok := lat.Properties["durationMs"]; ok {
			t.Fatalf("durationMs %v accepted", bad)
		}
	}
	hover, _ := s.Event(row("hover", map[string]any{"languageId": "go"}))
	if hover.Properties["languageId"] != "go" {
		t.Fatalf("languageId %v", hover.Properties)
	}
	hover, _ = s.Event(row("hover", map[string]any{"languageId": "alice@acme-corp.com"}))
	if len(hover.Properties) != 0 {
		t.Fatalf("a personal value under an allowed key leaked: %v", hover.Properties)
	}

	if _, drop := s.Event(row("UserSignedUp", nil)); drop != DropNotAllowListed {
		t.Fatalf("unlisted event: drop %q", drop)
	}
	r := row("ViewBlob", nil)
	r.UserID, r.AnonymousUserID = 0, ""
	if _, drop := s.Event(r); drop != DropNoUser {
		t.Fatalf("event without any user: drop %q", drop)
	}
}

// TestPersonalDataNeverLeaves places every personal-data value in every field the scrubber
// reads, for every allow-listed event, and checks the serialized output.
func TestPersonalDataNeverLeaves(t *testing.T) {
	s, _ := New(key)
	for _, name := range catalogv1.Current().Names() {
		for _, pii := range PersonalData {
			args := map[string]any{pii: pii, "nested": map[string]any{"query": pii}}
			for prop := range mustEntry(name).Properties {
				args[prop] = pii
			}
			r := row(name, args)
			r.Source, r.Version, r.Client = pii, pii, pii
			r.AnonymousUserID = pii
			r.FeatureFlags, _ = json.Marshal(map[string]any{pii: true, "flag": pii})
			for _, uid := range []int64{0, 7} {
				r.UserID = uid
				e, _ := s.Event(r)
				out, _ := json.Marshal(e)
				assertClean(t, name, string(out))
			}
		}
	}
}

func assertClean(t *testing.T, where, out string) {
	t.Helper()
	for _, pii := range PersonalData {
		if strings.Contains(out, pii) {
			t.Fatalf("%s: personal data %q left the instance in %s", where, pii, out)
		}
		escaped, _ := json.Marshal(pii)
		if strings.Contains(out, strings.Trim(string(escaped), `"`)) {
			t.Fatalf("%s: personal data %q left the instance (escaped) in %s", where, pii, out)
		}
	}
}

func mustEntry(name string) catalogv1.Event {
	e, _ := catalogv1.Current().Lookup(name)
	return e
}

func FuzzScrub(f *testing.F) {
	f.Add("SearchSubmitted", `{"patternType":"literal","query":"alice@acme-corp.com"}`, "WEB", "5.3.0", "WEB", `{"x":true}`, int64(1), "")
	f.Add("hover", `{"languageId":"github.com/acme/secret-repo"}`, "https://x", "1", "C", `{}`, int64(0), "anon")
	f.Add("search.latencies.regexp", `{"durationMs":12}`, "", "", "", `null`, int64(3), "")
	f.Fuzz(func(t *testing.T, name, publicArg, source, version, client, flags string, uid int64, anon string) {
		s, _ := New(key)
		// Plant a personal-data value (chosen by the input) in every free-text slot.
		pii := PersonalData[int(uint64(uid)%uint64(len(PersonalData)))]
		r := &Row{ID: 1, Name: name, UserID: uid, AnonymousUserID: anon + pii, Source: source + pii, Version: version + pii,
			Client: client + pii, Timestamp: time.Unix(1_700_000_000, 0), FeatureFlags: []byte(strings.ReplaceAll(flags, "X", strconv.Quote(pii)))}
		r.PublicArgument = []byte(strings.ReplaceAll(publicArg, "X", pii))
		e, _ := s.Event(r)
		out, _ := json.Marshal(e)
		for _, p := range PersonalData {
			if strings.Contains(string(out), p) {
				t.Fatalf("personal data %q leaked: %s", p, out)
			}
		}
	})
}
