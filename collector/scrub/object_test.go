/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package scrub

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// referenceProperties is what properties replaced: decode the whole document with
// encoding/json, then filter.
func referenceProperties(entry catalogv1.Event, raw []byte) (map[string]any, int) {
	var args map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&args); err != nil {
		return nil, 0
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, 0
	}
	return entry.Filter(args)
}

var propertyDocs = []string{
	`{"patternType": "literal", "query": "repo:acme/secret alice@acme-corp.com", "source": "nav"}`,
	`{"patternType":"regexp"}`, `{}`, `null`, `[]`, `"x"`, `42`, ``, `{`, `{"patternType":}`, `{"patternType":"literal"} x`,
	`{"patt\u0065rnType": "literal"}`, `{"patternType": "lit\u0065ral"}`, `{"patternType": "literal", "patternType": "regexp"}`,
	`{"query": 1, "query": 2, "other": 3}`, `{"patternType": {"nested": ["literal"]}}`, `{"patternType": ["literal"]}`,
	`{"patternType": null}`, `{"patternType": true}`, `{"patternType": 12.5e3}`, `{"durationMs": -0}`,
	"{\"patternType\": \"li\xffteral\"}", "{\"q\xff\": 1, \"q\xfe\": 2}", ` { "patternType" : "literal" , "x" : [ 1 , { "y" : "}" } ] } `,
	`{"a": "\"}{\\", "patternType": "structural"}`, `{"a": {"b": {"c": [[[["deep"]]]]}}, "patternType": "keyword"}`,
	"{\"patternType\":\t\"literal\"\n,\r\"q\":\"x\"}",
	`{"patternType": "literal", "patternType": "bogus"}`, `{"patternType": "bogus", "patternType": "literal"}`,
	`{"patternType": "bogus", "source": "nav", "patternType": 1, "q": 1, "q": 2}`,
}

// TestPropertiesMatchEncodingJSON holds the selective decoder to the full encoding/json decode
// on awkward documents, for every allow-listed event that has properties.
func TestPropertiesMatchEncodingJSON(t *testing.T) {
	for _, name := range catalogv1.Current().Names() {
		entry, _ := catalogv1.Current().Lookup(name)
		if len(entry.Properties) == 0 {
			continue
		}
		docs := append([]string(nil), propertyDocs...)
		for prop := range entry.Properties {
			docs = append(docs, `{"`+prop+`": "literal", "q": "x"}`, `{"`+prop+`": 12}`, `{"`+prop+`": "`+strings.Repeat("a", 300)+`"}`)
		}
		for _, doc := range docs {
			gotProps, gotDropped := properties(entry, []byte(doc))
			wantProps, wantDropped := referenceProperties(entry, []byte(doc))
			if !reflect.DeepEqual(gotProps, wantProps) || gotDropped != wantDropped {
				t.Errorf("%s %q: got %v/%d, want %v/%d", name, doc, gotProps, gotDropped, wantProps, wantDropped)
			}
		}
	}
}

func FuzzProperties(f *testing.F) {
	for _, doc := range propertyDocs {
		f.Add(doc)
	}
	entry, _ := catalogv1.Current().Lookup("SearchSubmitted")
	f.Fuzz(func(t *testing.T, doc string) {
		gotProps, gotDropped := properties(entry, []byte(doc))
		wantProps, wantDropped := referenceProperties(entry, []byte(doc))
		if !reflect.DeepEqual(gotProps, wantProps) || gotDropped != wantDropped {
			t.Fatalf("%q: got %v/%d, want %v/%d", doc, gotProps, gotDropped, wantProps, wantDropped)
		}
	})
}
