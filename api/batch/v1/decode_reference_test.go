/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"strings"
	"unicode/utf8"
)

// rawBatch decodes events individually so each one's size can be checked and blamed.
type rawBatch struct {
	Version          int             `json:"version"`
	InstanceID       string          `json:"instanceID"`
	BatchID          string          `json:"batchID"`
	Kind             string          `json:"kind"`
	Tier             string          `json:"tier"`
	AllowListVersion int             `json:"allowListVersion"`
	Cursor           int64           `json:"cursor,omitempty"`
	Events           json.RawMessage `json:"events,omitempty"`
	Aggregates       json.RawMessage `json:"aggregates,omitempty"`
}

// referenceDecode is the decoder Decode replaced, built on encoding/json (one quirk fixed:
// isNonEmptyArray ignores all whitespace). Tests hold Decode to it: Decode never accepts what it
// rejects, and decodes what both accept identically.
func referenceDecode(data []byte) (*Batch, error) {
	if !utf8.Valid(data) {
		return nil, fail(ReasonMalformed, -1, "body is not valid UTF-8")
	}
	var raw rawBatch
	if err := strictUnmarshal(data, &raw); err != nil {
		return nil, classify(err, -1)
	}
	b := &Batch{Version: raw.Version, InstanceID: raw.InstanceID, BatchID: raw.BatchID, Kind: raw.Kind,
		Tier: raw.Tier, AllowListVersion: raw.AllowListVersion, Cursor: raw.Cursor}
	if b.Version != Version {
		return nil, fail(ReasonMalformed, -1, "unsupported batch version %d (this receiver reads %d)", b.Version, Version)
	}
	if !instancePattern.MatchString(b.InstanceID) {
		return nil, fail(ReasonMalformed, -1, "instanceID is not a DNS label")
	}
	if !referenceBatchID(b.InstanceID, b.BatchID) {
		return nil, fail(ReasonMalformed, -1, batchIDRule)
	}
	if b.Cursor < 0 {
		return nil, fail(ReasonMalformed, -1, "cursor must not be negative")
	}
	hasEvents, hasAggregates := isNonEmptyArray(raw.Events), isNonEmptyArray(raw.Aggregates)
	switch b.Kind {
	case KindEvents:
		if b.Tier != "EventLevel" {
			return nil, fail(ReasonTierViolation, -1, "an events batch requires tier EventLevel, got %q", b.Tier)
		}
		if hasAggregates {
			return nil, fail(ReasonMalformed, -1, "an events batch must not carry aggregates")
		}
		seen := map[string]struct{}{}
		err := eachElement(raw.Events, MaxEventsPerBatch, func(dec *json.Decoder, i int, checkSize func() error) error {
			var e Event
			if err := dec.Decode(&e); err != nil {
				return classify(err, i)
			}
			if err := checkSize(); err != nil {
				return err
			}
			if err := validateEvent(&e, i); err != nil {
				return err
			}
			if _, dup := seen[e.ID]; dup {
				return fail(ReasonMalformed, i, "event id %s appears twice in the batch", e.ID)
			}
			seen[e.ID] = struct{}{}
			b.Events = append(b.Events, e)
			return nil
		})
		if err != nil {
			return nil, err
		}
	case KindAggregates:
		if b.Tier != "CriticalOnly" && b.Tier != "EventLevel" {
			return nil, fail(ReasonTierViolation, -1, "an aggregates batch requires tier CriticalOnly or EventLevel, got %q", b.Tier)
		}
		if hasEvents {
			return nil, fail(ReasonTierViolation, -1, "an aggregates batch must not carry per-user events")
		}
		err := eachElement(raw.Aggregates, MaxAggregatesPerBatch, func(dec *json.Decoder, i int, checkSize func() error) error {
			var a Aggregate
			if err := dec.Decode(&a); err != nil {
				return classify(err, i)
			}
			if err := checkSize(); err != nil {
				return err
			}
			if err := validateAggregate(&a, i); err != nil {
				return err
			}
			b.Aggregates = append(b.Aggregates, a)
			return nil
		})
		if err != nil {
			return nil, err
		}
	default:
		return nil, fail(ReasonMalformed, -1, "kind must be %q or %q", KindEvents, KindAggregates)
	}
	return b, nil
}

func isNonEmptyArray(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("null")) && !bytes.Equal(bytes.Join(bytes.Fields(t), nil), []byte("[]"))
}

// eachElement walks a JSON array with one strict decoder, calling fn for each element with its
// index and a check of the element's encoded size (measured from the decoder's offsets, so no
// per-element decoder or copy is needed) to run right after decoding it.
func eachElement(raw json.RawMessage, limit int, fn func(dec *json.Decoder, i int, checkSize func() error) error) error {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return classify(err, -1)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fail(ReasonMalformed, -1, "events and aggregates must be JSON arrays")
	}
	for i := 0; dec.More(); i++ {
		if i >= limit {
			return fail(ReasonTooManyEvents, -1, "more than %d items in one batch", limit)
		}
		start := dec.InputOffset()
		checkSize := func() error {
			item := bytes.TrimLeft(raw[start:dec.InputOffset()], ", \t\r\n")
			if len(item) > MaxEventBytes {
				return fail(ReasonEventTooLarge, i, "item is %d bytes, more than the limit of %d", len(item), MaxEventBytes)
			}
			return nil
		}
		if err := fn(dec, i, checkSize); err != nil {
			return err
		}
	}
	return nil
}

// strictUnmarshal decodes exactly one JSON value, rejecting unknown fields and keeping numbers
// exact.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// classify turns a JSON error into a batch Error; an unknown field that must never leave an
// instance is a tier violation.
func classify(err error, index int) error {
	msg := err.Error()
	if field, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		field = strings.Trim(field, `"`)
		if isForbidden(field) {
			return fail(ReasonTierViolation, index, "field %q must never leave an instance", truncate(field, 64))
		}
		return fail(ReasonMalformed, index, "unknown field %q", truncate(field, 64))
	}
	return fail(ReasonMalformed, index, "malformed JSON: %s", truncate(msg, 200))
}

// referenceBatchID is ValidBatchID written as one pattern: the whole id, or (at the length
// bound) any tail of it that keeps the stem whole.
func referenceBatchID(instance, id string) bool {
	stem := `[eca](-[0-9]{1,19}){1,3}(\.[lr])*`
	whole := regexp.MustCompile(`^` + regexp.QuoteMeta(instance+"-") + stem + `$`)
	if len(id) > MaxBatchIDLen {
		return false
	}
	if whole.MatchString(id) {
		return true
	}
	if len(id) != MaxBatchIDLen {
		return false
	}
	full := instance + "-"
	for i := 1; i <= len(full); i++ {
		if regexp.MustCompile(`^` + regexp.QuoteMeta(full[i:]) + stem + `$`).MatchString(id) {
			return true
		}
	}
	return false
}
