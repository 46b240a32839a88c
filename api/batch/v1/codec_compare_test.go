/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"
)

// The codec, decided by measurement: the hand-written decoder and encoder against a maintained
// fast JSON library (goccy/go-json, a drop-in replacement for encoding/json) and encoding/json
// itself, used as a library decoder would be: one strict Decode of the whole batch into the same
// types, then the same validation. That is the library's best case: it does not yet blame an
// oversized event or bound the nesting as Decode does.

// strictDecoder is what encoding/json's and goccy's decoders have in common.
type strictDecoder interface {
	DisallowUnknownFields()
	UseNumber()
	Decode(any) error
}

func wholeBatchDecoder(newDecoder func([]byte) strictDecoder) func([]byte) (*Batch, error) {
	return func(data []byte) (*Batch, error) {
		if !utf8.Valid(data) {
			return nil, fail(ReasonMalformed, -1, "body is not valid UTF-8")
		}
		dec := newDecoder(data)
		dec.DisallowUnknownFields()
		dec.UseNumber() // numbers stay as written (property numbers are bounded strings)
		b := &Batch{}
		if err := dec.Decode(b); err != nil {
			return nil, fail(ReasonMalformed, -1, "%v", err)
		}
		if err := validateBatch(b); err != nil {
			return nil, err
		}
		return b, nil
	}
}

// goccyEnvelope is a batch with its events left raw, so each can be measured and blamed by
// index as Decode does.
type goccyEnvelope struct {
	Version          int                 `json:"version"`
	InstanceID       string              `json:"instanceID"`
	BatchID          string              `json:"batchID"`
	Kind             string              `json:"kind"`
	Tier             string              `json:"tier"`
	AllowListVersion int                 `json:"allowListVersion"`
	Cursor           int64               `json:"cursor,omitempty"`
	Events           []gojson.RawMessage `json:"events,omitempty"`
	Aggregates       []Aggregate         `json:"aggregates,omitempty"`
}

// goccySameChecks is the library doing the checks Decode does that a whole-batch decode skips:
// one JSON value only, each event's size checked before it is decoded and every error blamed on
// its event. (Exact-case field names it cannot do: goccy, like encoding/json, matches them
// case-insensitively.)
func goccySameChecks(data []byte) (*Batch, error) {
	if !utf8.Valid(data) {
		return nil, fail(ReasonMalformed, -1, "body is not valid UTF-8")
	}
	strict := func(raw []byte, v any) (trailing bool, err error) {
		dec := gojson.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		dec.UseNumber()
		if err := dec.Decode(v); err != nil {
			return false, err
		}
		return dec.More(), nil
	}
	var env goccyEnvelope
	if trailing, err := strict(data, &env); err != nil || trailing {
		return nil, fail(ReasonMalformed, -1, "invalid batch: %v (trailing data: %v)", err, trailing)
	}
	b := &Batch{Version: env.Version, InstanceID: env.InstanceID, BatchID: env.BatchID, Kind: env.Kind, Tier: env.Tier,
		AllowListVersion: env.AllowListVersion, Cursor: env.Cursor, Aggregates: env.Aggregates}
	if len(env.Events) > 0 {
		b.Events = make([]Event, len(env.Events))
	}
	for i, raw := range env.Events {
		if len(raw) > MaxEventBytes {
			return nil, fail(ReasonEventTooLarge, i, "item is %d bytes, more than the limit of %d", len(raw), MaxEventBytes)
		}
		if _, err := strict(raw, &b.Events[i]); err != nil {
			return nil, fail(ReasonMalformed, i, "%v", err)
		}
	}
	if err := validateBatch(b); err != nil {
		return nil, err
	}
	return b, nil
}

var (
	goccyDecode    = wholeBatchDecoder(func(data []byte) strictDecoder { return gojson.NewDecoder(bytes.NewReader(data)) })
	stdWholeDecode = wholeBatchDecoder(func(data []byte) strictDecoder { return json.NewDecoder(bytes.NewReader(data)) })
)

// The library decoders decode what Decode decodes, to the same batch: the comparison is of
// equals.
func TestLibraryDecodersAgreeOnValidBatches(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 50 {
		data, err := json.Marshal(randomBatch(rng, 1+rng.IntN(50)))
		if err != nil {
			t.Fatal(err)
		}
		want, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		for name, dec := range map[string]func([]byte) (*Batch, error){"goccy": goccyDecode, "goccy, same checks": goccySameChecks, "encoding/json": stdWholeDecode} {
			got, err := dec(data)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			a, _ := json.Marshal(got)
			b, _ := json.Marshal(want)
			if !bytes.Equal(a, b) {
				t.Fatalf("%s decoded differently", name)
			}
		}
	}
}

// BenchmarkCodecs decodes and encodes a 5,000-event batch with each codec (and decodes it with
// the encoding/json reference the hand-written decoder replaced, which checks what it checks).
func BenchmarkCodecs(b *testing.B) {
	batch := randomBatch(rand.New(rand.NewPCG(3, 4)), 5000)
	data, _ := json.Marshal(batch)
	for _, d := range []struct {
		name string
		fn   func([]byte) (*Batch, error)
	}{{"decode/hand-written", Decode}, {"decode/goccy-go-json", goccyDecode}, {"decode/goccy-go-json-same-checks", goccySameChecks},
		{"decode/encoding-json", stdWholeDecode},
		{"decode/encoding-json-reference", referenceDecode}} {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := d.fn(data); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*5000)/b.Elapsed().Seconds(), "events/s")
		})
	}
	for _, d := range []struct {
		name string
		fn   func(*Batch) ([]byte, error)
	}{{"encode/hand-written", Encode}, {"encode/goccy-go-json", func(b *Batch) ([]byte, error) { return gojson.Marshal(b) }},
		{"encode/encoding-json", func(b *Batch) ([]byte, error) { return json.Marshal(b) }}} {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.fn(batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*5000)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// TestGoccySameChecksChecksWhatDecodeChecks: the library path the benchmark credits with
// Decode's checks refuses what Decode refuses, blaming the same event.
func TestGoccySameChecksChecksWhatDecodeChecks(t *testing.T) {
	b := randomBatch(rand.New(rand.NewPCG(7, 8)), 5)
	b.Events[3].Properties = map[string]any{"patternType": strings.Repeat("x", MaxEventBytes)}
	oversized, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	valid, err := json.Marshal(randomBatch(rand.New(rand.NewPCG(7, 8)), 5))
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		data   []byte
		reason string
		index  int
	}{
		"oversized event": {oversized, ReasonEventTooLarge, 3},
		"trailing value":  {append(append([]byte{}, valid...), []byte(` {}`)...), ReasonMalformed, -1},
		"unknown field":   {bytes.Replace(valid, []byte(`"name":`), []byte(`"nom":1,"name":`), 1), ReasonMalformed, 0},
		"not UTF-8":       {append(append([]byte{}, valid[:len(valid)-1]...), 0xff, '}'), ReasonMalformed, -1},
	} {
		for decName, dec := range map[string]func([]byte) (*Batch, error){"Decode": Decode, "goccySameChecks": goccySameChecks} {
			_, err := dec(tc.data)
			var e *Error
			if !errors.As(err, &e) || e.Reason != tc.reason || e.Index != tc.index {
				t.Errorf("%s, %s: %v, want %s at item %d", name, decName, err, tc.reason, tc.index)
			}
		}
	}
}

// BenchmarkPropertyObjects renders each event's properties and feature flags as the JSON the
// receiver writes into its jsonb columns (its COPY stream), one object at a time: the appenders
// against the library's Marshal of the same maps.
func BenchmarkPropertyObjects(b *testing.B) {
	batch := randomBatch(rand.New(rand.NewPCG(3, 4)), 5000)
	b.Run("hand-written", func(b *testing.B) {
		buf := make([]byte, 0, 4096)
		for b.Loop() {
			for i := range batch.Events {
				var err error
				buf = AppendFeatureFlags(buf[:0], batch.Events[i].FeatureFlags)
				if buf, err = AppendProperties(buf, batch.Events[i].Properties); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N*5000)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("goccy-go-json", func(b *testing.B) {
		for b.Loop() {
			for i := range batch.Events {
				if _, err := gojson.Marshal(batch.Events[i].FeatureFlags); err != nil {
					b.Fatal(err)
				}
				if _, err := gojson.Marshal(batch.Events[i].Properties); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N*5000)/b.Elapsed().Seconds(), "events/s")
	})
}
