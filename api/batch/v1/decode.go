/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Decode reads and validates one batch from data (already decompressed and size-limited).
//
// It is a single-pass decoder written for this format alone: the receiver spends most of its
// time here, and a reflective decoder walked each event three times. It is strict (exact field
// names, unknown fields are errors, one JSON value only) and never recurses deeper than the
// format's fixed shape, so nesting cannot exhaust the stack. A test keeps it equal to the
// standard library's decoder on every batch it accepts.
func Decode(data []byte) (*Batch, error) {
	if !utf8.Valid(data) {
		return nil, fail(ReasonMalformed, -1, "body is not valid UTF-8")
	}
	d := decoder{data: data, intern: map[string]string{}}
	b := &Batch{}
	if err := d.batch(b); err != nil {
		return nil, err
	}
	if err := validateBatch(b); err != nil {
		return nil, err
	}
	return b, nil
}

// batchIDRule is the refusal of a batch id that is not a collector's.
const batchIDRule = "batchID must be the collector's: <instanceID>-e-<first id>-<last id>-<count>, <instanceID>-c-<cursor> or " +
	"<instanceID>-a-<yyyymmdd>-<yyyymmdd>, with .l/.r marks, at most 128 characters"

// validateBatch applies the format's rules to a syntactically valid batch, top-level fields
// first, then each item.
func validateBatch(b *Batch) error {
	if b.Version != Version {
		return fail(ReasonMalformed, -1, "unsupported batch version %d (this receiver reads %d)", b.Version, Version)
	}
	if !instancePattern.MatchString(b.InstanceID) {
		return fail(ReasonMalformed, -1, "instanceID is not a DNS label")
	}
	if !ValidBatchID(b.InstanceID, b.BatchID) {
		return fail(ReasonMalformed, -1, batchIDRule)
	}
	if b.Cursor < 0 {
		return fail(ReasonMalformed, -1, "cursor must not be negative")
	}
	switch b.Kind {
	case KindEvents:
		if b.Tier != "EventLevel" {
			return fail(ReasonTierViolation, -1, "an events batch requires tier EventLevel, got %q", b.Tier)
		}
		if len(b.Aggregates) > 0 {
			return fail(ReasonMalformed, -1, "an events batch must not carry aggregates")
		}
		b.Aggregates = nil
		seen := make(map[string]struct{}, len(b.Events))
		for i := range b.Events {
			if err := validateEvent(&b.Events[i], i); err != nil {
				return err
			}
			if _, dup := seen[b.Events[i].ID]; dup {
				return fail(ReasonMalformed, i, "event id %s appears twice in the batch", b.Events[i].ID)
			}
			seen[b.Events[i].ID] = struct{}{}
		}
	case KindAggregates:
		if b.Tier != "CriticalOnly" && b.Tier != "EventLevel" {
			return fail(ReasonTierViolation, -1, "an aggregates batch requires tier CriticalOnly or EventLevel, got %q", b.Tier)
		}
		if len(b.Events) > 0 {
			return fail(ReasonTierViolation, -1, "an aggregates batch must not carry per-user events")
		}
		b.Events = nil
		days, versions := map[string]bool{}, map[string]int{}
		for i := range b.Aggregates {
			a := &b.Aggregates[i]
			if err := validateAggregate(a, i); err != nil {
				return err
			}
			if days[a.Day] = true; len(days) > MaxAggregateDaysPerBatch {
				return fail(ReasonTooManyEvents, -1, "cells of more than %d days in one batch", MaxAggregateDaysPerBatch)
			}
			if a.Metric == MetricInstanceVersion {
				if versions[a.Day]++; versions[a.Day] > MaxVersionCellsPerDay {
					return fail(ReasonTooManyEvents, i, "more than %d %s cells for day %s", MaxVersionCellsPerDay, MetricInstanceVersion, a.Day)
				}
			}
		}
	default:
		return fail(ReasonMalformed, -1, "kind must be %q or %q", KindEvents, KindAggregates)
	}
	return nil
}

// decoder walks one batch. index is the item being decoded (-1 outside the item arrays), so
// errors blame it.
type decoder struct {
	data  []byte
	pos   int
	index int
	// intern shares the strings that repeat across events (names, pseudonyms, flags) within
	// one batch, so each is allocated once.
	intern map[string]string
}

const maxInterned = 64

func (d *decoder) syntax(format string, args ...any) error {
	return fail(ReasonMalformed, d.index, "malformed JSON: %s at offset %d", fmt.Sprintf(format, args...), d.pos)
}

// unknownField reports a field the format does not have; one that must never leave an
// instance is a tier violation.
func (d *decoder) unknownField(key []byte) error {
	field := string(key)
	if isForbidden(field) {
		return fail(ReasonTierViolation, d.index, "field %q must never leave an instance", truncate(field, 64))
	}
	return fail(ReasonMalformed, d.index, "unknown field %q", truncate(field, 64))
}

func (d *decoder) ws() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (d *decoder) peek() byte {
	d.ws()
	if d.pos >= len(d.data) {
		return 0
	}
	return d.data[d.pos]
}

func (d *decoder) expect(c byte) error {
	if d.peek() != c {
		if d.pos >= len(d.data) {
			return d.syntax("unexpected end of input, want %q", c)
		}
		return d.syntax("unexpected %q, want %q", d.data[d.pos], c)
	}
	d.pos++
	return nil
}

// null consumes a null literal if one is next (JSON null leaves a field at its zero value).
func (d *decoder) null() (bool, error) {
	if d.peek() != 'n' {
		return false, nil
	}
	return true, d.literal("null")
}

func (d *decoder) literal(word string) error {
	if !bytes.HasPrefix(d.data[d.pos:], []byte(word)) {
		return d.syntax("invalid literal")
	}
	d.pos += len(word)
	return nil
}

// object calls fn for each key, with the decoder at the key's value; fn must consume it.
func (d *decoder) object(fn func(key []byte) error) error {
	if err := d.expect('{'); err != nil {
		return err
	}
	if d.peek() == '}' {
		d.pos++
		return nil
	}
	for {
		if d.peek() != '"' {
			return d.syntax("want a quoted field name")
		}
		key, err := d.stringBytes()
		if err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		d.ws()
		if err := fn(key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return nil
		default:
			return d.syntax("want ',' or '}' after a field")
		}
	}
}

// array calls fn for each element, with the decoder at the element; fn must consume it.
func (d *decoder) array(fn func(i int) error) error {
	if err := d.expect('['); err != nil {
		return err
	}
	if d.peek() == ']' {
		d.pos++
		return nil
	}
	for i := 0; ; i++ {
		d.ws()
		if err := fn(i); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return nil
		default:
			return d.syntax("want ',' or ']' after an element")
		}
	}
}

// stringBytes decodes a JSON string. Without escapes it returns a slice of the input (no copy).
func (d *decoder) stringBytes() ([]byte, error) {
	if d.peek() != '"' {
		return nil, d.syntax("want a string")
	}
	d.pos++
	start := d.pos
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			d.pos++
			return d.data[start : d.pos-1], nil
		case c == '\\':
			return d.escapedString(start)
		case c < 0x20:
			return nil, d.syntax("control character in a string")
		}
		d.pos++
	}
	return nil, d.syntax("unterminated string")
}

// escapedString continues a string from its first backslash, unescaping as encoding/json does
// (a lone or broken surrogate becomes U+FFFD).
func (d *decoder) escapedString(start int) ([]byte, error) {
	out := append([]byte(nil), d.data[start:d.pos]...)
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			d.pos++
			return out, nil
		case c < 0x20:
			return nil, d.syntax("control character in a string")
		case c != '\\':
			out = append(out, c)
			d.pos++
			continue
		}
		if d.pos+1 >= len(d.data) {
			break
		}
		d.pos++
		switch e := d.data[d.pos]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := d.hex4(d.pos + 1)
			if !ok {
				return nil, d.syntax("invalid \\u escape")
			}
			d.pos += 4
			if utf16.IsSurrogate(r) {
				r2, ok2 := rune(-1), false
				if d.pos+6 < len(d.data) && d.data[d.pos+1] == '\\' && d.data[d.pos+2] == 'u' {
					r2, ok2 = d.hex4(d.pos + 3)
				}
				if dec := utf16.DecodeRune(r, r2); ok2 && dec != utf8.RuneError {
					d.pos += 6
					r = dec
				} else {
					r = utf8.RuneError
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, d.syntax("invalid escape")
		}
		d.pos++
	}
	return nil, d.syntax("unterminated string")
}

func (d *decoder) hex4(at int) (rune, bool) {
	if at+4 > len(d.data) {
		return 0, false
	}
	var r rune
	for _, c := range d.data[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// str decodes a string field; null leaves it empty.
func (d *decoder) str(dst *string, intern bool) error {
	if isNull, err := d.null(); isNull || err != nil {
		return err
	}
	b, err := d.stringBytes()
	if err != nil {
		return err
	}
	*dst = d.toString(b, intern)
	return nil
}

func (d *decoder) toString(b []byte, intern bool) string {
	if !intern || len(b) > maxInterned {
		return string(b)
	}
	if s, ok := d.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	d.intern[s] = s
	return s
}

// number consumes a JSON number and returns its literal.
func (d *decoder) number() ([]byte, error) {
	d.ws()
	start := d.pos
	digits := func() int {
		n := 0
		for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
			d.pos++
			n++
		}
		return n
	}
	if d.pos < len(d.data) && d.data[d.pos] == '-' {
		d.pos++
	}
	switch {
	case d.pos < len(d.data) && d.data[d.pos] == '0':
		d.pos++
	case digits() == 0:
		return nil, d.syntax("invalid number")
	}
	if d.pos < len(d.data) && d.data[d.pos] == '.' {
		d.pos++
		if digits() == 0 {
			return nil, d.syntax("invalid number")
		}
	}
	if d.pos < len(d.data) && (d.data[d.pos] == 'e' || d.data[d.pos] == 'E') {
		d.pos++
		if d.pos < len(d.data) && (d.data[d.pos] == '+' || d.data[d.pos] == '-') {
			d.pos++
		}
		if digits() == 0 {
			return nil, d.syntax("invalid number")
		}
	}
	return d.data[start:d.pos], nil
}

// int64 decodes an integer field; null leaves it zero.
func (d *decoder) int64(dst *int64) error {
	if isNull, err := d.null(); isNull || err != nil {
		return err
	}
	if c := d.peek(); c != '-' && (c < '0' || c > '9') {
		return d.syntax("want a number")
	}
	lit, err := d.number()
	if err != nil {
		return err
	}
	v, err := strconv.ParseInt(string(lit), 10, 64)
	if err != nil {
		return fail(ReasonMalformed, d.index, "number %s is not an integer in range", truncate(string(lit), 32))
	}
	*dst = v
	return nil
}

func (d *decoder) int(dst *int) error {
	var v int64
	if err := d.int64(&v); err != nil {
		return err
	}
	*dst = int(v)
	return nil
}

// bool decodes a boolean; null leaves it false.
func (d *decoder) bool(dst *bool) error {
	switch d.peek() {
	case 't':
		*dst = true
		return d.literal("true")
	case 'f':
		*dst = false
		return d.literal("false")
	case 'n':
		return d.literal("null")
	}
	return d.syntax("want true or false")
}

func (d *decoder) batch(b *Batch) error {
	d.index = -1
	if d.peek() != '{' {
		return d.syntax("a batch must be a JSON object")
	}
	err := d.object(func(key []byte) error {
		switch string(key) {
		case "version":
			return d.int(&b.Version)
		case "instanceID":
			return d.str(&b.InstanceID, false)
		case "batchID":
			return d.str(&b.BatchID, false)
		case "kind":
			return d.str(&b.Kind, false)
		case "tier":
			return d.str(&b.Tier, false)
		case "allowListVersion":
			return d.int(&b.AllowListVersion)
		case "cursor":
			return d.int64(&b.Cursor)
		case "events":
			b.Events = nil
			return d.items(MaxEventsPerBatch, func(i int) error {
				b.Events = append(b.Events, Event{})
				return d.event(&b.Events[i])
			})
		case "aggregates":
			b.Aggregates = nil
			return d.items(MaxAggregatesPerBatch, func(i int) error {
				b.Aggregates = append(b.Aggregates, Aggregate{})
				return d.aggregate(&b.Aggregates[i])
			})
		}
		return d.unknownField(key)
	})
	if err != nil {
		return err
	}
	if d.peek() != 0 {
		return d.syntax("trailing data after the JSON value")
	}
	return nil
}

// items decodes an array of at most limit items (null is none), checking each item's encoded
// size against MaxEventBytes right after it is decoded.
func (d *decoder) items(limit int, item func(i int) error) error {
	if isNull, err := d.null(); isNull || err != nil {
		return err
	}
	if d.peek() != '[' {
		return d.syntax("events and aggregates must be JSON arrays")
	}
	err := d.array(func(i int) error {
		if i >= limit {
			d.index = -1
			return fail(ReasonTooManyEvents, -1, "more than %d items in one batch", limit)
		}
		d.index = i
		start := d.pos
		if err := item(i); err != nil {
			return err
		}
		if size := d.pos - start; size > MaxEventBytes {
			return fail(ReasonEventTooLarge, i, "item is %d bytes, more than the limit of %d", size, MaxEventBytes)
		}
		return nil
	})
	d.index = -1
	return err
}

func (d *decoder) event(e *Event) error {
	if d.peek() != '{' {
		return d.syntax("an event must be a JSON object")
	}
	return d.object(func(key []byte) error {
		switch string(key) {
		case "id":
			return d.str(&e.ID, false)
		case "name":
			return d.str(&e.Name, true)
		case "timestamp":
			return d.timestamp(&e.Timestamp)
		case "source":
			return d.str(&e.Source, true)
		case "version":
			return d.str(&e.ProductVersion, true)
		case "client":
			return d.str(&e.Client, true)
		case "userID":
			return d.str(&e.UserID, true)
		case "featureFlags":
			return d.flags(e)
		case "properties":
			return d.properties(e)
		}
		return d.unknownField(key)
	})
}

// timestamp decodes an RFC 3339 string exactly as time.Time's JSON decoding does.
func (d *decoder) timestamp(t *time.Time) error {
	if isNull, err := d.null(); isNull || err != nil {
		return err
	}
	start := d.pos
	if _, err := d.stringBytes(); err != nil {
		return err
	}
	if err := t.UnmarshalJSON(d.data[start:d.pos]); err != nil {
		return fail(ReasonMalformed, d.index, "timestamp is not RFC 3339")
	}
	return nil
}

func (d *decoder) flags(e *Event) error {
	if isNull, err := d.null(); isNull || err != nil {
		e.FeatureFlags = nil
		return err
	}
	if d.peek() != '{' {
		return d.syntax("featureFlags must be an object")
	}
	if e.FeatureFlags == nil {
		e.FeatureFlags = map[string]bool{}
	}
	return d.object(func(key []byte) error {
		var v bool
		if err := d.bool(&v); err != nil {
			return err
		}
		e.FeatureFlags[d.toString(key, true)] = v
		return nil
	})
}

func (d *decoder) properties(e *Event) error {
	if isNull, err := d.null(); isNull || err != nil {
		e.Properties = nil
		return err
	}
	if d.peek() != '{' {
		return d.syntax("properties must be an object")
	}
	if e.Properties == nil {
		e.Properties = map[string]any{}
	}
	return d.object(func(key []byte) error {
		var v any
		switch c := d.peek(); {
		case c == '"':
			b, err := d.stringBytes()
			if err != nil {
				return err
			}
			v = d.toString(b, true)
		case c == 't' || c == 'f':
			var bv bool
			if err := d.bool(&bv); err != nil {
				return err
			}
			v = bv
		case c == 'n':
			if err := d.literal("null"); err != nil {
				return err
			}
		case c == '-' || (c >= '0' && c <= '9'):
			lit, err := d.number()
			if err != nil {
				return err
			}
			v = json.Number(string(lit))
		default:
			// Objects and arrays are never valid here; failing now also bounds nesting.
			return fail(ReasonMalformed, d.index, "property %q is not a scalar", truncate(string(key), 64))
		}
		e.Properties[d.toString(key, true)] = v
		return nil
	})
}

func (d *decoder) aggregate(a *Aggregate) error {
	if d.peek() != '{' {
		return d.syntax("an aggregate must be a JSON object")
	}
	return d.object(func(key []byte) error {
		switch string(key) {
		case "day":
			return d.str(&a.Day, true)
		case "metric":
			return d.str(&a.Metric, true)
		case "dimension":
			return d.str(&a.Dimension, true)
		case "value":
			return d.int64(&a.Value)
		case "users":
			return d.int64(&a.Users)
		case "final":
			return d.bool(&a.Final)
		}
		return d.unknownField(key)
	})
}
