/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Encode renders a batch as JSON, byte for byte as encoding/json would (a test holds it to
// that), without reflection: the collector encodes every event it sends.
func Encode(b *Batch) ([]byte, error) {
	b.Version = Version
	return AppendBatch(make([]byte, 0, 256+len(b.Events)*256+len(b.Aggregates)*96), b)
}

// AppendBatch appends the JSON encoding of b to dst.
func AppendBatch(dst []byte, b *Batch) ([]byte, error) {
	dst = append(dst, `{"version":`...)
	dst = strconv.AppendInt(dst, int64(b.Version), 10)
	dst = appendField(dst, `,"instanceID":`, b.InstanceID)
	dst = appendField(dst, `,"batchID":`, b.BatchID)
	dst = appendField(dst, `,"kind":`, b.Kind)
	dst = appendField(dst, `,"tier":`, b.Tier)
	dst = append(dst, `,"allowListVersion":`...)
	dst = strconv.AppendInt(dst, int64(b.AllowListVersion), 10)
	if b.Cursor != 0 {
		dst = append(dst, `,"cursor":`...)
		dst = strconv.AppendInt(dst, b.Cursor, 10)
	}
	var err error
	if len(b.Events) > 0 {
		dst = append(dst, `,"events":[`...)
		for i := range b.Events {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = appendEvent(dst, &b.Events[i]); err != nil {
				return nil, err
			}
		}
		dst = append(dst, ']')
	}
	if len(b.Aggregates) > 0 {
		dst = append(dst, `,"aggregates":[`...)
		for i := range b.Aggregates {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendAggregate(dst, &b.Aggregates[i])
		}
		dst = append(dst, ']')
	}
	return append(dst, '}'), nil
}

func appendField(dst []byte, name, value string) []byte {
	return appendString(append(dst, name...), value)
}

func appendEvent(dst []byte, e *Event) ([]byte, error) {
	dst = appendField(dst, `{"id":`, e.ID)
	dst = appendField(dst, `,"name":`, e.Name)
	dst = append(dst, `,"timestamp":`...)
	var err error
	if dst, err = appendTime(dst, e.Timestamp); err != nil {
		return nil, err
	}
	if e.Source != "" {
		dst = appendField(dst, `,"source":`, e.Source)
	}
	if e.ProductVersion != "" {
		dst = appendField(dst, `,"version":`, e.ProductVersion)
	}
	if e.Client != "" {
		dst = appendField(dst, `,"client":`, e.Client)
	}
	dst = appendField(dst, `,"userID":`, e.UserID)
	if len(e.FeatureFlags) > 0 {
		dst = AppendFeatureFlags(append(dst, `,"featureFlags":`...), e.FeatureFlags)
	}
	if len(e.Properties) > 0 {
		if dst, err = AppendProperties(append(dst, `,"properties":`...), e.Properties); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

func appendAggregate(dst []byte, a *Aggregate) []byte {
	dst = appendField(dst, `{"day":`, a.Day)
	dst = appendField(dst, `,"metric":`, a.Metric)
	dst = appendField(dst, `,"dimension":`, a.Dimension)
	dst = append(dst, `,"value":`...)
	dst = strconv.AppendInt(dst, a.Value, 10)
	dst = append(dst, `,"users":`...)
	dst = strconv.AppendInt(dst, a.Users, 10)
	dst = append(dst, `,"final":`...)
	dst = strconv.AppendBool(dst, a.Final)
	return append(dst, '}')
}

// appendTime renders t as time.Time's JSON encoding does, with its range checks.
func appendTime(dst []byte, t time.Time) ([]byte, error) {
	n0 := len(dst) + 1
	dst = t.AppendFormat(append(dst, '"'), time.RFC3339Nano)
	switch {
	case len(dst) < n0+5 || dst[n0+4] != '-':
		return nil, errors.New("json: error calling MarshalJSON for type time.Time: year outside of range [0,9999]")
	case dst[len(dst)-1] != 'Z':
		c := dst[len(dst)-6]
		h := dst[len(dst)-5:]
		if ('0' <= c && c <= '9') || (h[0]-'0')*10+(h[1]-'0') >= 24 {
			return nil, errors.New("json: error calling MarshalJSON for type time.Time: timezone hour outside of range [0,23]")
		}
	}
	return append(dst, '"'), nil
}

// AppendFeatureFlags appends flags as a JSON object with sorted keys ({} when empty), as
// encoding/json renders it.
func AppendFeatureFlags(dst []byte, flags map[string]bool) []byte {
	var buf [MaxFeatureFlags]string
	keys := sortedKeys(buf[:], flags)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(appendString(dst, k), ':')
		dst = strconv.AppendBool(dst, flags[k])
	}
	return append(dst, '}')
}

// AppendProperties appends properties as a JSON object with sorted keys ({} when empty), as
// encoding/json renders it.
func AppendProperties(dst []byte, props map[string]any) ([]byte, error) {
	var buf [MaxProperties]string
	keys := sortedKeys(buf[:], props)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(appendString(dst, k), ':')
		switch v := props[k].(type) {
		case string:
			dst = appendString(dst, v)
		case bool:
			dst = strconv.AppendBool(dst, v)
		case int64:
			dst = strconv.AppendInt(dst, v, 10)
		case int:
			dst = strconv.AppendInt(dst, int64(v), 10)
		case nil:
			dst = append(dst, "null"...)
		case json.Number:
			if v == "" {
				v = "0"
			}
			if d := (decoder{data: []byte(v)}); d.peek() != '-' && (d.peek() < '0' || d.peek() > '9') || d.pos != 0 {
				return nil, errors.New("json: invalid number literal " + strconv.Quote(string(v)))
			} else if _, err := d.number(); err != nil || d.pos != len(v) {
				return nil, errors.New("json: invalid number literal " + strconv.Quote(string(v)))
			}
			dst = append(dst, v...)
		default:
			// Types the collector does not produce: let encoding/json render them.
			raw, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			dst = append(dst, raw...)
		}
	}
	return append(dst, '}'), nil
}

// sortedKeys returns m's keys in order, in buf when they fit (maps here are small: at most
// MaxProperties or MaxFeatureFlags entries on the wire), so most calls allocate nothing.
func sortedKeys[V any](buf []string, m map[string]V) []string {
	keys := buf[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

const hexDigits = "0123456789abcdef"

// appendString quotes s as encoding/json does: HTML-sensitive characters, control characters,
// U+2028 and U+2029 escaped, invalid UTF-8 replaced by U+FFFD.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '\\', '"':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
