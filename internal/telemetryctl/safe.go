/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"unicode"
)

// Text from the cluster is not trusted: collectors write their progress and errors, namespace
// editors write Events, annotations and pods. Everything the plugin prints or encodes passes
// through clean, so it cannot steer a terminal (C0 and C1 controls, bidirectional formatting)
// nor break a YAML encoder (which refuses C1 controls).

// clean replaces control characters (but tab and newline) and bidirectional formatting
// characters with U+FFFD; invalid UTF-8 becomes U+FFFD too.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if (unicode.IsControl(r) && r != '\t' && r != '\n') || unicode.Is(unicode.Bidi_Control, r) {
			return unicode.ReplacementChar
		}
		return r
	}, s)
}

// safeWriter cleans what it writes. Callers write whole strings (fmt, tabwriter flushes), so a
// write never splits a UTF-8 sequence.
type safeWriter struct{ w io.Writer }

func (s safeWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(s.w, clean(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// errTooMuch ends a stream that exceeded its limit.
var errTooMuch = errors.New("output limit reached")

// limitWriter passes at most n bytes, then fails.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		l.n = -1 // exhausted: tells which stream ended the copy
		return 0, errTooMuch
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

// sanitized returns v as plain JSON values with every string (keys too) cleaned.
func sanitized(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return cleanValue(out), nil
}

func cleanValue(v any) any {
	switch t := v.(type) {
	case string:
		return clean(t)
	case []any:
		for i := range t {
			t[i] = cleanValue(t[i])
		}
		return t
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[clean(k)] = cleanValue(x)
		}
		return out
	default:
		return v
	}
}
