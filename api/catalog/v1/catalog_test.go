/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

func TestEveryListedEventHasAFeature(t *testing.T) {
	c := Current()
	for _, n := range c.Names() {
		if c.FeatureOf(n) == "" {
			t.Errorf("%s has no feature", n)
		}
	}
	for _, required := range []string{"SearchSubmitted", "SearchResultsQueried", "SearchResultClicked", "ViewBlob", "ViewSearchResults",
		"goToDefinition", "findReferences", "hover", "codeintel.lsifHover", "SearchNotebookPageViewed", "search.latencies.regexp", "search.latencies.commit"} {
		if _, ok := c.Lookup(required); !ok {
			t.Errorf("%s is not in the catalog", required)
		}
	}
	if _, ok := c.Lookup("UserSignedUp"); ok {
		t.Error("an unlisted event is found")
	}
	if _, ok := Get(1); ok {
		t.Error("version 1, the allow-list with free-text channels, must be retired")
	}
}

// TestClosedChannelsRefuseWordsThatPassShapes: words shaped like the values each channel carries
// (upper-case words as sources and clients, lower-case words as flag names, words as version
// suffixes) are not in the catalog, so they never leave.
func TestClosedChannelsRefuseWordsThatPassShapes(t *testing.T) {
	c := Current()
	for _, w := range []string{"QX7CANARY", "ALICE", "ACME_PAYMENTS", "WEBX", "web"} {
		if c.Source(w) || c.Client(w) {
			t.Errorf("%q passes as a source or client", w)
		}
	}
	for _, w := range []string{"beta-alice-liddell", "acme-payments", "project-x", "alice", "cody2"} {
		if c.Flag(w) {
			t.Errorf("%q passes as a feature flag", w)
		}
	}
	versions := map[string]bool{
		"5.3.0": true, "0.0.0": true, "10.12.1": true, "5.3.0-rc.1": true, "5.3.0-beta.12": true, "5.3.0-alpha.0": true,
		"5.1.0-alice": false, "5.1.0-rc.alice": false, "5.1.0-liddell.1": false, "5.3.0+dev": false, "5.3": false, "05.3.0": false,
		"5.3.0-rc.100": false, "5.3.0-rc.01": false, "5.3.0 ": false, "v5.3.0": false, "12345.0.0": false, "5.3.0-rc.1-alice": false,
		"0.0.281234_2024-05-06_5.3-5a7e0a1c12f3": false, "": false,
		// Sourcegraph's patch numbers run long; numbers that carry personal data do not fit.
		"5.3.9104": true, "5.11.12303": true, "5.11.12303-rc.1": true, "99.99.99999-rc.99": false, "41.55.55267-rc.1": false, "99.99.99999": true,
		"555.867.5309": false, "1987.6.14": false, "4111.1111.1111": false, "212.555.1234-rc.42": false, "5.3.123456": false,
	}
	for v, want := range versions {
		if got := c.ProductVersion(v); got != want {
			t.Errorf("ProductVersion(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestPropertyShapes(t *testing.T) {
	enum := Property{Values: []string{"literal", "regexp"}}
	num := Property{Min: 0, Max: 100}
	wide := Property{Min: 0, Max: 1e16}
	cases := []struct {
		p    Property
		v    any
		want any
		ok   bool
	}{
		{enum, "literal", "literal", true}, {enum, "Literal", nil, false}, {enum, "alice", nil, false}, {enum, 1.0, nil, false},
		{num, 12.0, int64(12), true}, {num, json.Number("12.5"), int64(13), true}, {num, json.Number("1e400"), nil, false},
		{num, -1.0, nil, false}, {num, 101.0, nil, false}, {num, "12", nil, false}, {num, true, nil, false},
		// Numbers leave with two significant digits: no identifier fits.
		{wide, 135.0, int64(140), true}, {wide, 5558675.309, int64(5600000), true}, {wide, json.Number("4111111111111111"), int64(4100000000000000), true},
		{wide, 99.4, int64(99), true}, {wide, 0.4, int64(0), true},
	}
	for _, tc := range cases {
		got, ok := tc.p.Accept(tc.v)
		if ok != tc.ok || ok && got != tc.want {
			t.Errorf("Accept(%v) = %v, %v; want %v, %v", tc.v, got, ok, tc.want, tc.ok)
		}
	}
	// The receiver admits only values as they leave: a collector that did not coarsen is refused.
	for v, want := range map[any]bool{int64(140): true, 140.0: true, int64(135): false, 12.5: false, 5558675.309: false, int64(5600000): true, "literal": false} {
		if got := wide.Admits(v); got != want {
			t.Errorf("Admits(%v) = %v, want %v", v, got, want)
		}
	}
	// As the receiver reads them (json.Number, stored as written): only the coarse integer's own
	// text. Digits a float64 cannot tell apart from it would be stored, and carry a phone number.
	for v, want := range map[json.Number]bool{"1200": true, "0": true, "5600000": true,
		"1200.000000000000041555526719999": false, "1200.0": false, "1.2e3": false, "01200": false, "-0": false, "1200 ": false} {
		if got := wide.Admits(v); got != want {
			t.Errorf("Admits(json.Number %q) = %v, want %v", string(v), got, want)
		}
	}
	if !enum.Admits("literal") || enum.Admits("alice") {
		t.Error("Admits on an enumeration")
	}
}

func TestCheckEvent(t *testing.T) {
	c := Current()
	ok := func() batchv1.Event {
		return batchv1.Event{ID: "1", Name: "SearchSubmitted", Timestamp: time.Unix(1_800_000_000, 0), Source: "WEB", ProductVersion: "5.3.0",
			Client: "VSCODE_CODY_EXTENSION", UserID: "00112233445566778899aabbccddeeff", FeatureFlags: map[string]bool{"cody": true},
			Properties: map[string]any{"patternType": "literal", "source": "nav"}}
	}
	base := ok()
	if got := c.CheckEvent(&base); got != "" {
		t.Fatalf("a listed event is refused: %s", got)
	}
	cases := map[string]func(*batchv1.Event){
		"event name": func(e *batchv1.Event) { e.Name = "UserSignedUp" },
		"source":     func(e *batchv1.Event) { e.Source = "QX7CANARY" },
		"client":     func(e *batchv1.Event) { e.Client = "QX7CANARY" },
		"version":    func(e *batchv1.Event) { e.ProductVersion = "5.1.0-alice" },
		"version ":   func(e *batchv1.Event) { e.ProductVersion = "555.867.5309" },
		"value of property \"durationMs\"": func(e *batchv1.Event) {
			e.Name, e.Properties = "search.latencies.regexp", map[string]any{"durationMs": 5558675.309}
		},
		"feature flag":               func(e *batchv1.Event) { e.FeatureFlags = map[string]bool{"beta-alice-liddell": true} },
		`property "query"`:           func(e *batchv1.Event) { e.Properties["query"] = "repo:acme/secret" },
		`value of property "source"`: func(e *batchv1.Event) { e.Properties["source"] = "alice" },
	}
	for want, mutate := range cases {
		e := ok()
		mutate(&e)
		if got := c.CheckEvent(&e); got != strings.TrimSpace(want) { // a trailing space keeps keys apart
			t.Errorf("CheckEvent = %q, want %q", got, want)
		}
	}
	for _, a := range []batchv1.Aggregate{
		{Metric: batchv1.MetricEventCount, Dimension: "hover"}, {Metric: batchv1.MetricSearchesByType, Dimension: "other"},
		{Metric: batchv1.MetricFeatureUsers, Dimension: FeatureSearch}, {Metric: batchv1.MetricInstanceVersion, Dimension: "5.3.0"},
		{Metric: batchv1.MetricActiveUsers28d},
	} {
		if got := c.CheckAggregate(&a); got != "" {
			t.Errorf("%+v refused: %s", a, got)
		}
	}
	for _, a := range []batchv1.Aggregate{
		{Metric: batchv1.MetricEventCount, Dimension: "UserSignedUp"}, {Metric: batchv1.MetricSearchesByType, Dimension: "alice"},
		{Metric: batchv1.MetricFeatureUsers, Dimension: "alice"}, {Metric: batchv1.MetricInstanceVersion, Dimension: "5.1.0-alice"},
		{Metric: batchv1.MetricActiveUsers1d, Dimension: "x"},
	} {
		if got := c.CheckAggregate(&a); got == "" {
			t.Errorf("%+v accepted", a)
		}
	}
}
