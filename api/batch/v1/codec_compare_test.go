/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
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
		for name, dec := range map[string]func([]byte) (*Batch, error){"goccy": goccyDecode, "encoding/json": stdWholeDecode} {
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
	}{{"decode/hand-written", Decode}, {"decode/goccy-go-json", goccyDecode}, {"decode/encoding-json", stdWholeDecode},
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
