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
	"time"
)

// TestEncodeMatchesEncodingJSON holds Encode to encoding/json byte for byte, including the
// strings and values the collector should never produce (invalid UTF-8, control and HTML
// characters, odd numbers, zones, out-of-range years) and the errors.
func TestEncodeMatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	odd := []string{"", "\x00", "\x1f\x7f", "<>&", "\xff\xfe", "a\xc3", "\u2028x\u2029", "\"\\/\b\f\n\r\t", "😀é", "\xed\xa0\x80"}
	values := []any{"", "x", true, false, int64(-7), 42, nil, json.Number("1e9"), json.Number("-0.5"), json.Number(""), 3.25, []string{"a"}}
	for round := range 400 {
		b := randomBatch(rng, rng.IntN(8))
		for i := range b.Events {
			e := &b.Events[i]
			switch rng.IntN(4) {
			case 0:
				e.Name, e.Client = odd[rng.IntN(len(odd))], odd[rng.IntN(len(odd))]
			case 1:
				e.Timestamp = e.Timestamp.In(time.FixedZone("", (rng.IntN(48)-24)*1800))
			case 2:
				if e.Properties == nil {
					e.Properties = map[string]any{}
				}
				e.Properties[odd[rng.IntN(len(odd))]] = values[rng.IntN(len(values))]
			}
		}
		if round%7 == 0 {
			b.Cursor = -rng.Int64N(3)
		}
		if round%5 == 0 {
			b.Events, b.Kind = nil, KindAggregates
			for range rng.IntN(5) {
				b.Aggregates = append(b.Aggregates, Aggregate{Day: "2026-11-27", Metric: odd[rng.IntN(len(odd))], Dimension: "<&>", Value: rng.Int64(), Users: -rng.Int64N(9), Final: rng.IntN(2) == 0})
			}
		}
		checkEncode(t, b)
	}
	for _, ts := range []time.Time{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600)), time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 90))} {
		b := randomBatch(rng, 1)
		b.Events[0].Timestamp = ts
		checkEncode(t, b)
	}
	for _, n := range []json.Number{"01", "1.", " 1", "1 ", "+1", "0x10", "NaN", `"1"`, "true", "1e", "-"} {
		b := randomBatch(rng, 1)
		b.Events[0].Properties = map[string]any{"n": n}
		checkEncode(t, b)
	}
}

func checkEncode(t *testing.T, b *Batch) {
	t.Helper()
	got, err := Encode(b)
	want, wantErr := json.Marshal(b)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("Encode error %v, encoding/json error %v", err, wantErr)
	}
	if err == nil && !bytes.Equal(got, want) {
		t.Fatalf("Encode differs from encoding/json:\n got %s\nwant %s", got, want)
	}
}

// TestAppendMapsMatchEncodingJSON covers the helpers the receiver stores with, empty maps
// included.
func TestAppendMapsMatchEncodingJSON(t *testing.T) {
	for _, flags := range []map[string]bool{nil, {}, {"b": true, "a": false, "<": true}} {
		want, _ := json.Marshal(nonNilFlags(flags))
		if got := AppendFeatureFlags(nil, flags); !bytes.Equal(got, want) {
			t.Errorf("flags %v: got %s want %s", flags, got, want)
		}
	}
	for _, props := range []map[string]any{nil, {}, {"z": "1", "a": int64(2), "m": json.Number("3.5")}} {
		want, _ := json.Marshal(nonNilProps(props))
		if got, err := AppendProperties(nil, props); err != nil || !bytes.Equal(got, want) {
			t.Errorf("props %v: got %s (%v) want %s", props, got, err, want)
		}
	}
}

func nonNilFlags(m map[string]bool) map[string]bool {
	if m == nil {
		return map[string]bool{}
	}
	return m
}

func nonNilProps(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}
