/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func validEventsBatch() map[string]any {
	return map[string]any{
		"version": 1, "instanceID": "acme", "batchID": "acme-e-101-101-1", "kind": "events", "tier": "EventLevel",
		"allowListVersion": 1, "cursor": 200,
		"events": []any{map[string]any{
			"id": "101", "name": "SearchSubmitted", "timestamp": "2026-11-27T10:00:00Z", "source": "WEB",
			"version": "5.3.0", "userID": "0123456789abcdef0123456789abcdef",
			"featureFlags": map[string]any{"search-new": true}, "properties": map[string]any{"patternType": "regexp", "durationMs": 12},
		}},
	}
}

func validAggregatesBatch() map[string]any {
	return map[string]any{
		"version": 1, "instanceID": "acme", "batchID": "acme-a-20261127-20261127", "kind": "aggregates", "tier": "CriticalOnly",
		"aggregates": []any{map[string]any{"day": "2026-11-27", "metric": "event_count", "dimension": "SearchSubmitted", "value": 40, "users": 6, "final": true}},
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestDecodeAcceptsValidBatches(t *testing.T) {
	b, err := Decode(mustJSON(validEventsBatch()))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Events) != 1 || b.Events[0].Properties["patternType"] != "regexp" || !b.Events[0].Timestamp.Equal(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)) {
		t.Fatalf("decoded %+v", b.Events)
	}
	if _, err := Decode(mustJSON(validAggregatesBatch())); err != nil {
		t.Fatal(err)
	}
	// Every id a collector makes, including one cut at the front to the bound.
	for _, id := range []string{"acme-c-0", "acme-c-200", "acme-a-20261101-20261127", "acme-e-1-9-9.l.r",
		("acme-e-101-101-1" + strings.Repeat(".l", 57))[16+114-MaxBatchIDLen:]} {
		m := validEventsBatch()
		m["batchID"] = id
		if _, err := Decode(mustJSON(m)); err != nil {
			t.Errorf("batch id %q (%d characters): %v", id, len(id), err)
		}
	}
}

func TestDecodeRejectsHostileInput(t *testing.T) {
	mutate := func(base func() map[string]any, f func(m map[string]any)) []byte {
		m := base()
		f(m)
		return mustJSON(m)
	}
	ev := func(f func(e map[string]any)) []byte {
		return mutate(validEventsBatch, func(m map[string]any) { f(m["events"].([]any)[0].(map[string]any)) })
	}
	agg := func(f func(a map[string]any)) []byte {
		return mutate(validAggregatesBatch, func(m map[string]any) { f(m["aggregates"].([]any)[0].(map[string]any)) })
	}
	manyEvents := mutate(validEventsBatch, func(m map[string]any) {
		var evs []any
		for i := range MaxEventsPerBatch + 1 {
			evs = append(evs, map[string]any{"id": strconv.Itoa(i + 1), "name": "ViewBlob", "timestamp": "2026-11-27T10:00:00Z", "userID": "0123456789abcdef0123456789abcdef"})
		}
		m["events"] = evs
	})
	// An aggregates batch's disclosure audit runs per day: the days and the version cells of a
	// day a batch may carry are bounded (each cell here valid on its own).
	manyDays := mutate(validAggregatesBatch, func(m map[string]any) {
		var cells []any
		for d := range MaxAggregateDaysPerBatch + 1 {
			cells = append(cells, map[string]any{"day": time.Date(2026, 9, 1+d, 0, 0, 0, 0, time.UTC).Format(time.DateOnly),
				"metric": "active_users_28d", "value": 5, "users": 5, "final": true})
		}
		m["aggregates"] = cells
	})
	manyVersions := mutate(validAggregatesBatch, func(m map[string]any) {
		var cells []any
		for i := range MaxVersionCellsPerDay + 1 {
			cells = append(cells, map[string]any{"day": "2026-11-27", "metric": "instance_version", "dimension": fmt.Sprintf("5.%d.%d", i/10, i%10),
				"value": 5, "users": 5, "final": true})
		}
		m["aggregates"] = cells
	})
	cases := []struct {
		name   string
		data   []byte
		reason string
		index  int
	}{
		{"aggregates of too many days", manyDays, ReasonTooManyEvents, -1},
		{"a word in the batch id", mutate(validEventsBatch, func(m map[string]any) { m["batchID"] = "acme-e-101-101-1.secret" }), ReasonMalformed, -1},
		{"a batch id of words", mutate(validEventsBatch, func(m map[string]any) { m["batchID"] = "acme-hello-world" }), ReasonMalformed, -1},
		{"another instance's batch id", mutate(validEventsBatch, func(m map[string]any) { m["batchID"] = "acm-e-101-101-1" }), ReasonMalformed, -1},
		{"a short batch id cut at the front", mutate(validEventsBatch, func(m map[string]any) { m["batchID"] = "me-e-101-101-1" }), ReasonMalformed, -1},
		{"a batch id over the bound", mutate(validEventsBatch, func(m map[string]any) {
			m["batchID"] = "acme-e-101-101-1" + strings.Repeat(".l", 60)
		}), ReasonMalformed, -1},
		{"too many versions in a day", manyVersions, ReasonTooManyEvents, MaxVersionCellsPerDay},
		{"empty", nil, ReasonMalformed, -1},
		{"not JSON", []byte("hello"), ReasonMalformed, -1},
		{"array", []byte("[]"), ReasonMalformed, -1},
		{"trailing garbage", append(mustJSON(validEventsBatch()), []byte(" {}")...), ReasonMalformed, -1},
		{"invalid UTF-8", []byte("{\"instanceID\":\"\xff\"}"), ReasonMalformed, -1},
		{"NUL in instance", mutate(validEventsBatch, func(m map[string]any) { m["instanceID"] = "acme\x00" }), ReasonMalformed, -1},
		{"future version", mutate(validEventsBatch, func(m map[string]any) { m["version"] = 2 }), ReasonMalformed, -1},
		{"huge version number", []byte(`{"version": 1e999}`), ReasonMalformed, -1},
		{"deep nesting", []byte(strings.Repeat(`{"events":[`, 5000)), ReasonMalformed, 0},
		{"deep nesting in a property", []byte(`{"version":1,"events":[{"properties":{"a":` + strings.Repeat(`[`, 100000) + `]}}]}`), ReasonMalformed, 0},
		{"deep nesting in flags", []byte(`{"version":1,"events":[{"featureFlags":{"a":` + strings.Repeat(`{"a":`, 100000) + `}}]}`), ReasonMalformed, 0},
		{"null byte escape in a name", ev(func(e map[string]any) { e["name"] = "Search\u0000" }), ReasonMalformed, 0},
		{"lone surrogate in a name", []byte(strings.Replace(string(mustJSON(validEventsBatch())), `"SearchSubmitted"`, `"Search\ud800"`, 1)), ReasonMalformed, 0},
		{"unterminated string", []byte(`{"version":1,"instanceID":"acme`), ReasonMalformed, -1},
		{"control character in a string", []byte("{\"instanceID\":\"a\u0001b\"}"), ReasonMalformed, -1},
		{"bad escape", []byte(`{"instanceID":"a\qb"}`), ReasonMalformed, -1},
		{"number with leading zero", []byte(`{"version":01}`), ReasonMalformed, -1},
		{"fractional version", []byte(`{"version":1.0}`), ReasonMalformed, -1},
		{"huge cursor", []byte(`{"version":1,"cursor":99999999999999999999}`), ReasonMalformed, -1},
		{"two values", []byte(`{"version":1}{"version":1}`), ReasonMalformed, -1},
		{"events not an array", mutate(validEventsBatch, func(m map[string]any) { m["events"] = "all of them" }), ReasonMalformed, -1},
		{"event not an object", mutate(validEventsBatch, func(m map[string]any) { m["events"] = []any{42} }), ReasonMalformed, 0},
		{"flag not a boolean", ev(func(e map[string]any) { e["featureFlags"] = map[string]any{"f": "yes"} }), ReasonMalformed, 0},
		{"unknown kind", mutate(validEventsBatch, func(m map[string]any) { m["kind"] = "raw" }), ReasonMalformed, -1},
		{"events under CriticalOnly", mutate(validEventsBatch, func(m map[string]any) { m["tier"] = "CriticalOnly" }), ReasonTierViolation, -1},
		{"events in an aggregate batch", mutate(validAggregatesBatch, func(m map[string]any) { m["events"] = validEventsBatch()["events"] }), ReasonTierViolation, -1},
		{"url field on an event", ev(func(e map[string]any) { e["url"] = "https://sourcegraph.acme.com/github.com/acme/secret-repo" }), ReasonTierViolation, 0},
		{"argument field on an event", ev(func(e map[string]any) { e["argument"] = map[string]any{"query": "password"} }), ReasonTierViolation, 0},
		{"device id", ev(func(e map[string]any) { e["device_id"] = "d-1" }), ReasonTierViolation, 0},
		{"query property", ev(func(e map[string]any) { e["properties"] = map[string]any{"query": "repo:secret"} }), ReasonTierViolation, 0},
		{"raw user id", ev(func(e map[string]any) { e["userID"] = "42" }), ReasonTierViolation, 0},
		{"unknown field", ev(func(e map[string]any) { e["colour"] = "red" }), ReasonMalformed, 0},
		{"nested property", ev(func(e map[string]any) { e["properties"] = map[string]any{"patternType": map[string]any{"a": 1}} }), ReasonMalformed, 0},
		{"long property", ev(func(e map[string]any) { e["properties"] = map[string]any{"patternType": strings.Repeat("x", 300)} }), ReasonMalformed, 0},
		{"oversized event", ev(func(e map[string]any) { e["source"] = strings.Repeat("x", MaxEventBytes) }), ReasonEventTooLarge, 0},
		{"bad id", ev(func(e map[string]any) { e["id"] = "-1" }), ReasonMalformed, 0},
		{"huge id", ev(func(e map[string]any) { e["id"] = strings.Repeat("9", 30) }), ReasonMalformed, 0},
		{"no timestamp", ev(func(e map[string]any) { delete(e, "timestamp") }), ReasonMalformed, 0},
		{"bad timestamp", ev(func(e map[string]any) { e["timestamp"] = "yesterday" }), ReasonMalformed, 0},
		{"timestamp before 2000 in UTC", ev(func(e map[string]any) { e["timestamp"] = "2000-01-01T00:30:00+01:00" }), ReasonMalformed, 0},
		{"timestamp after 9999 in UTC", ev(func(e map[string]any) { e["timestamp"] = "9999-12-31T23:30:00-01:00" }), ReasonMalformed, 0},
		{"too many events", manyEvents, ReasonTooManyEvents, -1},
		{"small aggregate cell", agg(func(a map[string]any) { a["users"] = 3 }), ReasonTierViolation, 0},
		{"unknown metric", agg(func(a map[string]any) { a["metric"] = "emails" }), ReasonMalformed, 0},
		{"bad day", agg(func(a map[string]any) { a["day"] = "2026-13-45" }), ReasonMalformed, 0},
		{"negative value", agg(func(a map[string]any) { a["value"] = -5 }), ReasonMalformed, 0},
		{"partial day", agg(func(a map[string]any) { a["final"] = false }), ReasonTierViolation, 0},
		{"more users than events", agg(func(a map[string]any) { a["users"] = 41 }), ReasonMalformed, 0},
		{"users cell with events", agg(func(a map[string]any) { a["metric"], a["dimension"] = "feature_users", "search" }), ReasonMalformed, 0},
		{"user id in an aggregate", agg(func(a map[string]any) { a["userID"] = "0123456789abcdef0123456789abcdef" }), ReasonMalformed, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.data)
			var be *Error
			if !errors.As(err, &be) {
				t.Fatalf("error = %v, want a batch Error", err)
			}
			if be.Reason != tc.reason || be.Index != tc.index {
				t.Fatalf("reason/index = %s/%d (%v), want %s/%d", be.Reason, be.Index, err, tc.reason, tc.index)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(mustJSON(validEventsBatch()))
	f.Add(mustJSON(validAggregatesBatch()))
	f.Add([]byte(`{"version":1,"kind":"events","events":[{"url":"x"}]}`))
	f.Add([]byte("\x00\xff{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data)
		if err != nil {
			var be *Error
			if !errors.As(err, &be) || be.Reason == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		// Never looser than the encoding/json decoder it replaced, and equal where both accept.
		ref, refErr := referenceDecode(data)
		if refErr != nil {
			t.Fatalf("accepted what the reference decoder rejects: %v", refErr)
		}
		if !reflect.DeepEqual(b, ref) {
			t.Fatalf("decoded differently from the reference:\n got %+v\nwant %+v", b, ref)
		}
		// Whatever is accepted is within the documented limits and carries no raw user id.
		if len(b.Events) > MaxEventsPerBatch || len(b.Aggregates) > MaxAggregatesPerBatch {
			t.Fatal("accepted a batch over the limits")
		}
		for _, e := range b.Events {
			if !isPseudonym(e.UserID) {
				t.Fatalf("accepted a non-pseudonymous user id %q", e.UserID)
			}
			for k := range e.Properties {
				if isForbidden(k) {
					t.Fatalf("accepted forbidden property %q", k)
				}
			}
		}
		if b.Kind == KindAggregates && len(b.Events) > 0 {
			t.Fatal("accepted events in an aggregates batch")
		}
	})
}

// TestHandWrittenChecksMatchThePatterns keeps the hot-path checks equal to the documented patterns.
func TestHandWrittenChecksMatchThePatterns(t *testing.T) {
	idPattern := regexp.MustCompile(`^(0|[1-9][0-9]{0,18})$`)
	id := func(s string) bool {
		_, err := strconv.ParseInt(s, 10, 64)
		return idPattern.MatchString(s) && err == nil
	}
	hex := regexp.MustCompile(`^[0-9a-f]{32}$`)
	ps := func(s string) bool { return hex.MatchString(s) && !strings.HasPrefix(s, strings.Repeat("0", 16)) }
	inputs := []string{"", "0", "123", "0123", "00", strings.Repeat("9", 19), "9223372036854775807", "9223372036854775808", strings.Repeat("9", 20), strings.Repeat("9", 21), "-1", "1a", "0123456789abcdef0123456789abcdef",
		"0000000000000000000000000000002a", "00000000000000010000000000000000", strings.Repeat("0", 32),
		"0123456789ABCDEF0123456789abcdef", "0123456789abcdef0123456789abcde", "SearchSubmitted", "search.latencies.regexp", "9abc",
		"a", "a b", "a\x00", "é", strings.Repeat("a", 128), strings.Repeat("a", 129), "goToDefinition.preloaded", "x:y-z_1"}
	for _, in := range inputs {
		if isDecimalID(in) != id(in) || isPseudonym(in) != ps(in) || isName(in) != namePattern.MatchString(in) {
			t.Errorf("%q: id %v/%v pseudonym %v/%v name %v/%v", in, isDecimalID(in), id(in), isPseudonym(in), ps(in), isName(in), namePattern.MatchString(in))
		}
	}
}

// TestIsForbiddenMatchesCaseFolding keeps the fast lookup equal to case-insensitive matching,
// including non-ASCII letters that fold to ASCII (the Kelvin sign folds to k).
func TestIsForbiddenMatchesCaseFolding(t *testing.T) {
	slow := func(field string) bool {
		for _, f := range ForbiddenFields {
			if strings.EqualFold(field, f) {
				return true
			}
		}
		return false
	}
	inputs := []string{"", "url", "URL", "Url", "uRl", "urls", "ur", "userID", "USER_ID", "user_id", "Email", "e-mail", "query", "QUERY ",
		"public_argument", "Public_Argument", "deviceID", "DEVICEID", "\u212aey", "ip", "IP", "İp", "ıp", strings.Repeat("x", 40), "anonymousUserID"}
	inputs = append(inputs, ForbiddenFields...)
	for _, in := range inputs {
		if isForbidden(in) != slow(in) {
			t.Errorf("isForbidden(%q) = %v, case folding says %v", in, isForbidden(in), slow(in))
		}
	}
}
