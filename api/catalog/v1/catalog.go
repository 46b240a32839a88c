/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package v1 is the event catalog: which events may leave an instance at EventLevel and, per
// event, which properties in which shapes; and every other string that may leave at all
// (sources, clients, feature flags, product versions, aggregate dimensions). It is one of the
// project's public contracts, versioned like the batch format: the collector filters by the
// version it was built with and declares it in every batch, the receiver refuses anything the
// declared version does not list, and the report reads its features from it.
//
// Every exported string is either from a closed set listed here or of a strict format (a
// release version with an enumerated pre-release part): there is no free-text channel. A value
// that is not listed is dropped and counted, never passed through, never hashed into something
// that looks analysable.
//
// To add an event, a property or a value: add it to the current catalog with the smallest set
// of properties that answers the product question (prefer an enumeration), give the event a
// feature, bump CurrentVersion when existing collectors must not send it yet, and extend
// catalog_test.go. The personal-data tests then plant words in it automatically.
package v1

import (
	"encoding/json"
	"math"
	"regexp"
	"slices"
	"strconv"
)

// CurrentVersion is the catalog this code writes with. Version 1, the allow-list that let
// shape-checked free text through (sources, clients, flags, version suffixes), is retired.
const CurrentVersion = 2

// Features group event names for the session and stickiness answers.
const (
	FeatureSearch         = "search"
	FeatureCodeNavigation = "code_navigation"
	FeatureFileView       = "file_view"
	FeatureNotebooks      = "notebooks"
)

// SearchEvent is the event counted as one search by a user.
const SearchEvent = "SearchSubmitted"

// OtherPatternType is the searches_by_type bucket of searches whose pattern type is not listed.
const OtherPatternType = "other"

// Property is the shape a property value must have: one of Values, or a number in [Min, Max].
type Property struct {
	// Values, when set, is the closed set of strings allowed.
	Values []string `json:"values,omitempty"`
	// Min and Max bound a number (used when Values is empty).
	Min float64 `json:"min,omitempty"`
	Max float64 `json:"max,omitempty"`
}

// Accept returns the value to export when v has the property's shape. A number leaves as an
// integer rounded to two significant digits (1234.5 -> 1200): enough for latency percentiles,
// too few digits to carry an identifier such as a phone or card number.
func (p Property) Accept(v any) (any, bool) {
	if len(p.Values) > 0 {
		s, ok := v.(string)
		return s, ok && slices.Contains(p.Values, s)
	}
	f, ok := number(v)
	if !ok || math.IsNaN(f) || math.IsInf(f, 0) || f < p.Min || f > p.Max {
		return nil, false
	}
	r := coarse(f)
	if float64(r) < p.Min || float64(r) > p.Max {
		return nil, false
	}
	return r, true
}

// Admits reports whether v is a value as it leaves an instance: one of the listed strings, or a
// number in range that is already coarse (what Accept returns). The receiver checks with it, so a
// collector that does not coarsen cannot pass finer numbers. A number as sent (json.Number, which
// the receiver stores as written) must be the coarse integer's own decimal text: "1200.0000000000000415"
// parses to 1200 as a float64, but its digits would be kept, and carry whatever they spell.
func (p Property) Admits(v any) bool {
	out, ok := p.Accept(v)
	if !ok || len(p.Values) > 0 {
		return ok
	}
	if n, isText := v.(json.Number); isText {
		return string(n) == strconv.FormatInt(out.(int64), 10)
	}
	f, _ := number(v)
	return float64(out.(int64)) == f
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	}
	return 0, false
}

// coarse rounds f to an integer with at most two significant digits.
func coarse(f float64) int64 {
	if math.Abs(f) < 100 {
		return int64(math.Round(f))
	}
	mag := math.Pow(10, math.Floor(math.Log10(math.Abs(f)))-1)
	return int64(math.Round(f/mag) * mag)
}

// Event is the catalog entry of one event name.
type Event struct {
	// Feature groups the event for the report.
	Feature string `json:"feature"`
	// Properties are the members of public_argument that may leave, with their shapes.
	Properties map[string]Property `json:"properties,omitempty"`
}

// Filter keeps the listed properties of a decoded public_argument, each with its shape, and
// returns how many members were dropped.
func (e Event) Filter(publicArgument map[string]any) (map[string]any, int) {
	var kept map[string]any
	dropped := 0
	for k, v := range publicArgument {
		p, ok := e.Properties[k]
		if !ok {
			dropped++
			continue
		}
		out, ok := p.Accept(v)
		if !ok {
			dropped++
			continue
		}
		if kept == nil {
			kept = make(map[string]any, len(e.Properties))
		}
		kept[k] = out
	}
	return kept, dropped
}

// Catalog is one version of the event catalog.
type Catalog struct {
	Version int              `json:"version"`
	Events  map[string]Event `json:"events"`
	// Sources, Clients and FeatureFlags are the closed sets of the event fields of those names.
	Sources      []string `json:"sources"`
	Clients      []string `json:"clients"`
	FeatureFlags []string `json:"featureFlags"`
	// PreReleases are the pre-release labels a product version may carry (5.3.0-rc.1).
	PreReleases []string `json:"preReleases"`

	set map[string]map[string]bool
}

// PatternTypes are the search pattern types the catalog lists.
var PatternTypes = []string{"literal", "regexp", "standard", "structural", "keyword", "lucky"}

var searchProps = map[string]Property{
	"patternType": {Values: PatternTypes},
	"source":      {Values: []string{"nav", "home", "repo", "tree", "filter", "type", "scopePage", "excludedResults", "smartSearchDisabled", "codeMonitoring", "notebook"}},
}

// LanguageIDs are the language identifiers that may leave.
var LanguageIDs = []string{
	"bash", "c", "clojure", "cmake", "coffeescript", "cpp", "c++", "csharp", "css", "cuda", "dart", "dockerfile", "elixir",
	"elm", "erlang", "fsharp", "go", "graphql", "groovy", "haskell", "hcl", "html", "java", "javascript", "javascriptreact",
	"json", "jsonnet", "julia", "kotlin", "less", "lua", "makefile", "markdown", "matlab", "nix", "objective-c", "objective-cpp",
	"ocaml", "perl", "php", "plaintext", "powershell", "protobuf", "python", "r", "ruby", "rust", "scala", "scss", "shell",
	"shellscript", "sql", "starlark", "swift", "terraform", "toml", "typescript", "typescriptreact", "verilog", "vue", "xml",
	"yaml", "zig",
}

// LatencyPatternTypes are the pattern types with a search.latencies.<type> event.
var LatencyPatternTypes = []string{"literal", "regexp", "structural", "file", "repo", "symbol", "diff", "commit"}

func v2() *Catalog {
	codeIntel := map[string]Property{"languageId": {Values: LanguageIDs}}
	c := &Catalog{
		Version: 2,
		Events: map[string]Event{
			"SearchSubmitted":      {FeatureSearch, searchProps},
			"SearchResultsQueried": {FeatureSearch, searchProps},
			"SearchResultClicked": {FeatureSearch, map[string]Property{"patternType": searchProps["patternType"],
				"resultType": {Values: []string{"file", "repo", "symbol", "commit", "diff", "path", "content", "owner", "person", "team"}}}},
			"ViewSearchResults":        {FeatureSearch, nil},
			"ViewBlob":                 {FeatureFileView, codeIntel},
			"goToDefinition":           {FeatureCodeNavigation, codeIntel},
			"goToDefinition.preloaded": {FeatureCodeNavigation, codeIntel},
			"findReferences":           {FeatureCodeNavigation, codeIntel},
			"hover":                    {FeatureCodeNavigation, codeIntel},
			"codeintel.lsifHover":      {FeatureCodeNavigation, codeIntel},
			"SearchNotebookPageViewed": {FeatureNotebooks, nil},
		},
		// event_logs.source values Sourcegraph writes.
		Sources: []string{"WEB", "BACKEND", "CODEHOSTINTEGRATION", "IDEEXTENSION", "STATICWEB", "CODY"},
		// event_logs.client values of Sourcegraph's own clients.
		Clients: []string{"WEB", "SERVER", "VSCODE_CODY_EXTENSION", "JETBRAINS_CODY_EXTENSION", "NEOVIM_CODY_EXTENSION",
			"EMACS_CODY_EXTENSION", "VISUAL_STUDIO_CODY_EXTENSION", "CODY_CLI", "BROWSER_EXTENSION", "SRC_CLI"},
		// Feature flags whose state may leave; any other flag is dropped and counted.
		FeatureFlags: []string{"cody", "search-ranking", "search-content-based-lang-detection", "search-new-keyword",
			"enable-ownership", "code-insights", "search-debug", "cody-autocomplete"},
		PreReleases: []string{"rc", "beta", "alpha"},
	}
	for _, t := range LatencyPatternTypes {
		c.Events["search.latencies."+t] = Event{FeatureSearch, map[string]Property{"durationMs": {Min: 0, Max: 24 * 60 * 60 * 1000}}}
	}
	return c.index()
}

func (c *Catalog) index() *Catalog {
	c.set = map[string]map[string]bool{}
	for name, list := range map[string][]string{"source": c.Sources, "client": c.Clients, "flag": c.FeatureFlags} {
		c.set[name] = map[string]bool{}
		for _, v := range list {
			c.set[name][v] = true
		}
	}
	return c
}

var catalogs = map[int]*Catalog{2: v2()}

// Get returns the catalog of version, if this code supports it.
func Get(version int) (*Catalog, bool) {
	c, ok := catalogs[version]
	return c, ok
}

// Current returns the catalog this code writes with.
func Current() *Catalog { return catalogs[CurrentVersion] }

// Lookup returns the entry of an event name.
func (c *Catalog) Lookup(name string) (Event, bool) {
	e, ok := c.Events[name]
	return e, ok
}

// Names returns every listed event name, sorted.
func (c *Catalog) Names() []string {
	out := make([]string, 0, len(c.Events))
	for n := range c.Events {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// FeatureOf returns the feature of a listed event name ("" if not listed).
func (c *Catalog) FeatureOf(name string) string { return c.Events[name].Feature }

// Features returns every feature, sorted.
func (c *Catalog) Features() []string {
	var out []string
	for _, e := range c.Events {
		if !slices.Contains(out, e.Feature) {
			out = append(out, e.Feature)
		}
	}
	slices.Sort(out)
	return out
}

// Source reports whether v is a listed source.
func (c *Catalog) Source(v string) bool { return c.set["source"][v] }

// Client reports whether v is a listed client.
func (c *Catalog) Client(v string) bool { return c.set["client"][v] }

// Flag reports whether v is a listed feature flag.
func (c *Catalog) Flag(v string) bool { return c.set["flag"][v] }

var versionPattern = regexp.MustCompile(`^(0|[1-9][0-9]?)\.(0|[1-9][0-9]?)\.(0|[1-9][0-9]{0,4})(?:-([a-z]+)\.(0|[1-9][0-9]?))?$`)

// ProductVersion reports whether v is a product release version that may leave:
// MAJOR.MINOR.PATCH (major and minor at most two digits, patch at most five, as Sourcegraph's
// releases are numbered: 5.3.9104), optionally followed by -<label>.<n> with a listed
// pre-release label and n below 100, and at most nine digits in all. Nothing else: no suffix
// can carry a word, and a number longer than nine digits (a phone or card number) does not fit,
// split across the parts or not (41.55.55267-rc.1 is refused).
func (c *Catalog) ProductVersion(v string) bool {
	m := versionPattern.FindStringSubmatch(v)
	if m == nil || m[4] != "" && !slices.Contains(c.PreReleases, m[4]) {
		return false
	}
	digits := 0
	for i := range len(v) {
		if v[i] >= '0' && v[i] <= '9' {
			digits++
		}
	}
	return digits <= 9
}

// Reasons a value is not in the catalog (the receiver's answers, and the collector's drop
// counters).
const (
	NotListedEvent    = "event"
	NotListedSource   = "source"
	NotListedClient   = "client"
	NotListedVersion  = "version"
	NotListedFlag     = "feature_flag"
	NotListedProperty = "property"
	// OversizedDocument counts rows whose public_argument was too large to be read whole.
	OversizedDocument = "oversized_document"
)
