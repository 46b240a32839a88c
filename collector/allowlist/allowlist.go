/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package allowlist is the built-in, versioned list of what may leave an instance at EventLevel:
// event names, and per event the properties (from public_argument) with a validator for each
// value. It is code, reviewed like code: anything not listed is dropped and counted.
//
// To add an event: add an entry to events below with the smallest set of properties that answers
// the product question, a validator per property that accepts only the expected shape, a feature
// (for the session and stickiness answers), bump Version, and add a case to allowlist_test.go.
package allowlist

import (
	"encoding/json"
	"math"
	"regexp"
	"strings"
)

// Version identifies this allow-list; it travels in every batch.
const Version = 1

// MaxStringLen caps any string value that leaves an instance.
const MaxStringLen = 64

// Features group event names for the session and stickiness answers.
const (
	FeatureSearch         = "search"
	FeatureCodeNavigation = "code_navigation"
	FeatureFileView       = "file_view"
	FeatureNotebooks      = "notebooks"
)

// Validator accepts a property value and returns the value to export, or false to drop it.
type Validator func(v any) (any, bool)

// Event is the allow-list entry of one event name.
type Event struct {
	Feature    string
	Properties map[string]Validator
}

// Properties allowed on search events.
var searchProps = map[string]Validator{
	"patternType": OneOf("literal", "regexp", "standard", "structural", "keyword", "lucky"),
	"source":      OneOf("nav", "home", "repo", "tree", "filter", "type", "scopePage", "excludedResults", "smartSearchDisabled", "codeMonitoring", "notebook"),
}

// languageIDs are the language identifiers that may be exported; anything else is dropped.
var languageIDs = []string{
	"bash", "c", "clojure", "cmake", "coffeescript", "cpp", "c++", "csharp", "css", "cuda", "dart", "dockerfile", "elixir",
	"elm", "erlang", "fsharp", "go", "graphql", "groovy", "haskell", "hcl", "html", "java", "javascript", "javascriptreact",
	"json", "jsonnet", "julia", "kotlin", "less", "lua", "makefile", "markdown", "matlab", "nix", "objective-c", "objective-cpp",
	"ocaml", "perl", "php", "plaintext", "powershell", "protobuf", "python", "r", "ruby", "rust", "scala", "scss", "shell",
	"shellscript", "sql", "starlark", "swift", "terraform", "toml", "typescript", "typescriptreact", "verilog", "vue", "xml",
	"yaml", "zig",
}

var codeIntelProps = map[string]Validator{
	"languageId": OneOf(languageIDs...),
}

var latencyProps = map[string]Validator{
	"durationMs": Number(0, 24*60*60*1000),
}

var events = map[string]Event{
	"SearchSubmitted":          {FeatureSearch, searchProps},
	"SearchResultsQueried":     {FeatureSearch, searchProps},
	"SearchResultClicked":      {FeatureSearch, map[string]Validator{"patternType": searchProps["patternType"], "resultType": OneOf("file", "repo", "symbol", "commit", "diff", "path", "content", "owner", "person", "team")}},
	"ViewSearchResults":        {FeatureSearch, nil},
	"ViewBlob":                 {FeatureFileView, codeIntelProps},
	"goToDefinition":           {FeatureCodeNavigation, codeIntelProps},
	"goToDefinition.preloaded": {FeatureCodeNavigation, codeIntelProps},
	"findReferences":           {FeatureCodeNavigation, codeIntelProps},
	"hover":                    {FeatureCodeNavigation, codeIntelProps},
	"codeintel.lsifHover":      {FeatureCodeNavigation, codeIntelProps},
	"SearchNotebookPageViewed": {FeatureNotebooks, nil},
}

// LatencyPatternTypes are the pattern types with a search.latencies.<type> event.
var LatencyPatternTypes = []string{"literal", "regexp", "structural", "file", "repo", "symbol", "diff", "commit"}

func init() {
	for _, t := range LatencyPatternTypes {
		events["search.latencies."+t] = Event{FeatureSearch, latencyProps}
	}
}

// Lookup returns the entry for an event name.
func Lookup(name string) (Event, bool) {
	e, ok := events[name]
	return e, ok
}

// Names returns every allow-listed event name.
func Names() []string {
	out := make([]string, 0, len(events))
	for n := range events {
		out = append(out, n)
	}
	return out
}

// FeatureOf returns the feature of an allow-listed event name ("" if not listed).
func FeatureOf(name string) string { return events[name].Feature }

// SearchEvent is the event counted as one search by a user (the report's definition).
const SearchEvent = "SearchSubmitted"

// Filter keeps the allowed properties of public_argument for event name, each validated. It
// returns the kept properties and how many were dropped.
func (e Event) Filter(publicArgument map[string]any) (map[string]any, int) {
	var kept map[string]any
	dropped := 0
	for k, v := range publicArgument {
		validate, ok := e.Properties[k]
		if !ok {
			dropped++
			continue
		}
		out, ok := validate(v)
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

// OneOf accepts exactly one of the given strings.
func OneOf(values ...string) Validator {
	set := make(map[string]bool, len(values))
	for _, v := range values {
		set[v] = true
	}
	return func(v any) (any, bool) {
		s, ok := v.(string)
		return s, ok && set[s]
	}
}

// Matches accepts a string matching pattern that does not look like personal data.
func Matches(pattern string) Validator {
	re := regexp.MustCompile(pattern)
	return func(v any) (any, bool) {
		s, ok := v.(string)
		if !ok || len(s) > MaxStringLen || !re.MatchString(s) || LooksPersonal(s) {
			return nil, false
		}
		return s, true
	}
}

// Number accepts a finite number within [lo, hi] (JSON numbers, or numeric strings are refused).
func Number(lo, hi float64) Validator {
	return func(v any) (any, bool) {
		var f float64
		switch n := v.(type) {
		case float64:
			f = n
		case json.Number:
			var err error
			if f, err = n.Float64(); err != nil {
				return nil, false
			}
		case int64:
			f = float64(n)
		case int:
			f = float64(n)
		default:
			return nil, false
		}
		if math.IsNaN(f) || math.IsInf(f, 0) || f < lo || f > hi {
			return nil, false
		}
		if f == math.Trunc(f) {
			return int64(f), true
		}
		return f, true
	}
}

var (
	emailRe = regexp.MustCompile(`[^\s@]+@[^\s@]+\.[^\s@]+`)
	urlRe   = regexp.MustCompile(`(?i)([a-z][a-z0-9+.-]*:(//)?[^\s]|www\.|[a-z][a-z0-9-]*\.[a-z]{2,})`)
	ipRe    = regexp.MustCompile(`(?i)\d{1,3}(\.\d{1,3}){3}|([0-9a-f]{0,4}:){2,}[0-9a-f]{0,4}`)
	tokenRe = regexp.MustCompile(`[A-Za-z0-9_\-+/=]{24,}`)
)

var versionRe = regexp.MustCompile(`^[0-9][0-9A-Za-z.+_-]{0,63}$`)

// ValidVersion reports whether a product version may leave an instance: version-shaped and not
// looking like personal data. Events and the instance_version aggregate both use it.
func ValidVersion(v string) bool { return versionRe.MatchString(v) && !LooksPersonal(v) }

// LooksLikeIdentifier reports whether a name contains a segment that looks like a generated
// identifier (letters and digits mixed, six or more characters, or four or more digits), such as a device or user id
// embedded in a feature-flag name.
func LooksLikeIdentifier(name string) bool {
	for _, seg := range strings.FieldsFunc(name, func(r rune) bool { return r == '-' || r == '_' || r == '.' || r == ':' }) {
		if len(seg) >= 6 && strings.ContainsAny(seg, "0123456789") && strings.ContainsAny(seg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
			return true
		}
		if len(seg) >= 4 && strings.Trim(seg, "0123456789") == "" {
			return true
		}
	}
	return false
}

// LooksPersonal reports whether s looks like an email, URL, IP address, path or secret token.
// It backs up the per-key validators: even an allowed key never exports such a value.
func LooksPersonal(s string) bool {
	switch {
	case emailRe.MatchString(s), urlRe.MatchString(s), ipRe.MatchString(s), tokenRe.MatchString(s):
		return true
	case strings.ContainsAny(s, `/\@`), strings.ContainsRune(s, 0):
		return true
	}
	return false
}
