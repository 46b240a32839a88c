/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// randomBatch builds a valid batch with the variety the wire allows: escapes, non-ASCII text,
// every number form, empty and absent maps.
func randomBatch(rng *rand.Rand, n int) *Batch {
	b := &Batch{Version: 1, InstanceID: "acme-1", BatchID: fmt.Sprintf("acme-1-c-%d", rng.Int64()), Kind: KindEvents, Tier: "EventLevel",
		AllowListVersion: rng.IntN(5), Cursor: rng.Int64N(1 << 62)}
	texts := []string{"literal", "Go", "é ü 中文", "a\"b\\c/d", "tab\there\nnewline", "<script>&amp;", "emoji 😀", "\u2028\u2029", "", strings.Repeat("z", MaxStringLen)}
	numbers := []string{"0", "-0", "12", "-3.25", "1e9", "6.02E+23", "1.5e-7", "123456789012345678901234567890"}
	for i := range n {
		e := Event{Name: []string{"SearchSubmitted", "ViewBlob", "x:y-z_1.a"}[rng.IntN(3)],
			Timestamp: time.Date(2000+rng.IntN(100), time.Month(1+rng.IntN(12)), 1+rng.IntN(28), rng.IntN(24), rng.IntN(60), rng.IntN(60), rng.IntN(1e9), time.UTC),
			UserID:    fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())}
		e.ID = fmt.Sprint(int64(i)*1000 + rng.Int64N(1000))
		if rng.IntN(2) == 0 {
			e.Source, e.ProductVersion, e.Client = "WEB", "5.3.0+build", texts[rng.IntN(len(texts)-1)]
		}
		if k := rng.IntN(4); k > 0 {
			e.FeatureFlags = map[string]bool{}
			for j := range k - 1 {
				e.FeatureFlags[fmt.Sprintf("flag-%d", j)] = rng.IntN(2) == 0
			}
		}
		if k := rng.IntN(6); k > 0 {
			e.Properties = map[string]any{}
			for j := range k - 1 {
				switch rng.IntN(3) {
				case 0:
					e.Properties[fmt.Sprintf("p%d", j)] = texts[rng.IntN(len(texts))]
				case 1:
					e.Properties[fmt.Sprintf("p%d", j)] = rng.IntN(2) == 0
				default:
					e.Properties[fmt.Sprintf("p%d", j)] = json.Number(numbers[rng.IntN(len(numbers))])
				}
			}
		}
		b.Events = append(b.Events, e)
	}
	return b
}

// reformat re-spaces and re-escapes a JSON document without changing its meaning, so the
// decoder sees encodings the collector never produces.
func reformat(rng *rand.Rand, data []byte) []byte {
	var out []byte
	inString := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case inString && c == '\\' && data[i+1] == 'u':
			out = append(out, data[i:i+6]...)
			i += 5
			continue
		case inString && c == '\\':
			out = append(out, c, data[i+1])
			i++
			continue
		case c == '"':
			inString = !inString
		case inString && c >= 'a' && c <= 'z' && rng.IntN(8) == 0:
			out = fmt.Appendf(out, `\u%04x`, c)
			continue
		case !inString && (c == ',' || c == ':' || c == '{' || c == '[') && rng.IntN(3) == 0:
			out = append(out, c)
			out = append(out, []string{" ", "\n", "\t ", "\r\n  "}[rng.IntN(4)]...)
			continue
		}
		out = append(out, c)
	}
	return out
}

// TestDecodeMatchesReference holds the single-pass decoder to encoding/json: on valid batches,
// re-spaced and re-escaped, both decode the same thing.
func TestDecodeMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		want := randomBatch(rng, rng.IntN(20))
		data, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		if round%2 == 1 {
			data = reformat(rng, data)
		}
		got, err := Decode(data)
		if err != nil {
			t.Fatalf("round %d: Decode: %v\n%s", round, err, data)
		}
		ref, err := referenceDecode(data)
		if err != nil {
			t.Fatalf("round %d: reference: %v\n%s", round, err, data)
		}
		if !reflect.DeepEqual(got, ref) {
			t.Fatalf("round %d: Decode and the reference differ\n got %+v\nwant %+v\n%s", round, got, ref, data)
		}
	}
}

// TestDecodeNeverLooserThanReference runs the hostile cases and edge encodings through both
// decoders: whatever the reference rejects, Decode rejects too.
func TestDecodeNeverLooserThanReference(t *testing.T) {
	valid := string(mustJSON(validEventsBatch()))
	inputs := []string{
		valid,
		strings.Replace(valid, `"SearchSubmitted"`, `"Search\ud800Submitted"`, 1),
		strings.Replace(valid, `"SearchSubmitted"`, `"\u0053earch\ud83d\ude00"`, 1),
		strings.Replace(valid, `"regexp"`, `"\ud83d\ude00 \ud800\udc00 \udc00 \ud800x"`, 1),
		strings.Replace(valid, `"regexp"`, `null`, 1),
		strings.Replace(valid, `true`, `null`, 1),
		strings.Replace(valid, `"events":[`, `"events":null,"events":[`, 1),
		strings.Replace(valid, `"cursor":200`, `"cursor":200,"cursor":-1`, 1),
		strings.Replace(valid, `"id":"101"`, `"ID":"101"`, 1),
		strings.Replace(valid, `"kind":"events"`, `"kind":"events","aggregates":[ ]`, 1),
		strings.Replace(valid, `"kind":"events"`, `"kind":"events","aggregates":[{}]`, 1),
		strings.Replace(valid, `12`, `1.`, 1),
		strings.Replace(valid, `12`, `.5`, 1),
		strings.Replace(valid, `12`, `+1`, 1),
		strings.Replace(valid, `12`, `1e`, 1),
		strings.Replace(valid, `12`, `0x1F`, 1),
		strings.Replace(valid, `12`, `NaN`, 1),
		strings.Replace(valid, `"2026-11-27T10:00:00Z"`, `"2026-11-27T10:00:00+25:00"`, 1),
		strings.Replace(valid, `"2026-11-27T10:00:00Z"`, `"2026-11-27 10:00:00Z"`, 1),
		strings.Replace(valid, `"2026-11-27T10:00:00Z"`, `"2026-11-27T10:00:00\u005a"`, 1),
		strings.Replace(valid, `"2026-11-27T10:00:00Z"`, `1795000000`, 1),
		valid + " ", " \n" + valid, valid + "x", valid[:len(valid)-1], `{}`, `null`, `[]`, `""`, `{"version":1,}`, `{,}`,
	}
	for _, in := range inputs {
		got, err := Decode([]byte(in))
		ref, refErr := referenceDecode([]byte(in))
		if err != nil {
			var be *Error
			if !errors.As(err, &be) || be.Reason == "" {
				t.Errorf("%s: error without a reason: %v", in, err)
			}
			continue
		}
		if refErr != nil {
			t.Errorf("Decode accepted what the reference rejects (%v):\n%s", refErr, in)
			continue
		}
		if !reflect.DeepEqual(got, ref) {
			t.Errorf("decoded differently:\n got %+v\nwant %+v\n%s", got, ref, in)
		}
	}
}
