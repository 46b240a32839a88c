/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package scrub

import (
	"bytes"
	"encoding/json"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// properties returns public_argument's allow-listed properties for entry, validated, and how
// many members were dropped. It decodes only the values of allow-listed members: the rest
// (queries, paths, whatever else an event carries) are skipped without being copied. When the
// document is not one valid JSON object nothing is kept, as when encoding/json fails on it.
// A test holds it to decoding the whole document with encoding/json.
func properties(entry catalogv1.Event, raw []byte) (map[string]any, int) {
	if !json.Valid(raw) {
		return nil, 0
	}
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, 0 // null (no properties), or not an object
	}
	// Each allow-listed member is validated where it stands; a later duplicate replaces an
	// earlier one, as in a decoded map. Members dropped (unknown, or invalid at their last
	// occurrence) are counted once each.
	var kept map[string]any
	var unknown, invalid [][]byte
	i = skipSpace(raw, i+1)
	for i < len(raw) && raw[i] == '"' {
		keyEnd := skipValue(raw, i)
		key := raw[i:keyEnd]
		i = skipSpace(raw, keyEnd)
		i = skipSpace(raw, i+1) // the colon
		valueEnd := skipValue(raw, i)
		value := raw[i:valueEnd]
		i = skipSpace(raw, valueEnd)
		if i < len(raw) && raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
		name, ok := plainString(key)
		if !ok {
			// Escapes or non-ASCII in a key: let encoding/json say what the key is.
			var k string
			_ = json.Unmarshal(key, &k)
			name = k
		}
		shape, listed := entry.Properties[name]
		if !listed {
			unknown = addKey(unknown, name)
			continue
		}
		out, valid := shape.Accept(scalar(value))
		if !valid {
			delete(kept, name)
			invalid = addKey(invalid, name)
			continue
		}
		if kept == nil {
			kept = make(map[string]any, len(entry.Properties))
		}
		kept[name] = out
		invalid = removeKey(invalid, name)
	}
	if len(kept) == 0 {
		kept = nil // as Filter returns when nothing is kept
	}
	return kept, len(unknown) + len(invalid)
}

func addKey(keys [][]byte, name string) [][]byte {
	if containsKey(keys, name) {
		return keys
	}
	return append(keys, []byte(name))
}

func removeKey(keys [][]byte, name string) [][]byte {
	for i, k := range keys {
		if string(k) == name {
			return append(keys[:i], keys[i+1:]...)
		}
	}
	return keys
}

func containsKey(keys [][]byte, name string) bool {
	for _, k := range keys {
		if string(k) == name {
			return true
		}
	}
	return false
}

// plainString returns the contents of a quoted JSON string without escapes or non-ASCII bytes
// (which need no decoding).
func plainString(quoted []byte) (string, bool) {
	inner := quoted[1 : len(quoted)-1]
	for _, c := range inner {
		if c == '\\' || c >= 0x80 {
			return "", false
		}
	}
	return string(inner), true
}

// scalar decodes one valid JSON value as encoding/json decodes into any with UseNumber.
func scalar(value []byte) any {
	switch value[0] {
	case '"':
		if s, ok := plainString(value); ok {
			return s
		}
		var s string
		_ = json.Unmarshal(value, &s)
		return s
	case 't':
		return true
	case 'f':
		return false
	case 'n':
		return nil
	case '{', '[':
		var v any
		dec := json.NewDecoder(bytes.NewReader(value))
		dec.UseNumber()
		_ = dec.Decode(&v)
		return v
	}
	return json.Number(value)
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at i in a document known to be valid.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
		i++
	}
	return i
}

func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}
