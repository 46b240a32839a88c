/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package v1 is version 1 of the batch format: what a collector sends to the receiver. It is one
// of the project's two public contracts (the other is the TelemetryPolicy CRD). Decoding is
// strict and bounded: unknown fields, fields that must never leave an instance, oversized input
// and per-user data in aggregate batches are all errors with a stable reason.
//
// The codec is hand-written (decode.go, encode.go), kept by measurement against a maintained fast
// JSON library, goccy/go-json (`go test -run - -bench 'Codecs|PropertyObjects' -count 3
// ./api/batch/v1/`, a 5,000-event batch, 2 cores, 2026-11-29; ranges of three runs):
//
//   - Decoding with the checks the format requires (one JSON value, each event's size checked
//     before it is decoded, every error blamed on its event): 352,000–391,000 events/s
//     hand-written, 222,000–240,000 with goccy (1.5–1.7x slower), 173,000–180,000 with
//     encoding/json. goccy decoding the whole batch at once without those checks keeps up
//     (365,000–380,000) but accepts what the format refuses, and neither library can match field
//     names exactly (both fold case). The hand-written decoder is clearly faster doing the same job.
//   - The JSON objects the receiver writes into its jsonb columns, one per event (properties and
//     feature flags, AppendProperties and AppendFeatureFlags, in its COPY stream): 4.65–4.72 M
//     events/s hand-written, 2.82–2.90 M with goccy's Marshal (1.6x).
//   - A whole batch, encoded by the collector: 1.48–1.96 M events/s hand-written, 1.86–2.01 M with
//     goccy, 0.60–0.63 M with encoding/json: no faster than the library. It is kept because it is
//     the appenders above plus the envelope (about 60 lines): taking the library for it alone would
//     add a dependency to the collector for no measured gain.
//
// Protobuf was not measured: version 1 of the format is JSON, and a binary format would be a
// version 2 of this contract, not a codec change. The differential tests (against encoding/json)
// and the fuzz targets hold the hand-written code to the standard library's answers.
package v1

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Wire constants.
const (
	Version = 1
	// ContentType of a batch body (JSON, optionally zstd-compressed per Content-Encoding).
	ContentType = "application/vnd.sourcegraph.telemetry.batch.v1+json"
	// EncodingZstd is the only compressed Content-Encoding accepted.
	EncodingZstd = "zstd"
	// PathBatches accepts batches (POST).
	PathBatches = "/v1/batches"
	// PathCursor returns the acknowledged cursor of the caller's instance (GET).
	PathCursor = "/v1/cursor"
	// PathExported lists what the receiver stored from the caller's instance recently (GET,
	// ?limit=N deliveries): what left the instance, as the receiver keeps it.
	PathExported = "/v1/exported"
	// HeaderIdempotencyKey carries the batch id; a resend with the same key is absorbed.
	HeaderIdempotencyKey = "Idempotency-Key"
)

// Kinds of batch.
const (
	KindEvents     = "events"
	KindAggregates = "aggregates"
)

// Limits of the format. The receiver enforces them; the collector stays within them.
const (
	MaxEventsPerBatch     = 10000
	MaxAggregatesPerBatch = 10000
	// MaxAggregateDaysPerBatch bounds the distinct days of an aggregates batch: every day is
	// audited for disclosure (internal/disclosure) before anything is stored, so the days a
	// batch may carry bound its cost. A collector publishes at most this many days at once.
	MaxAggregateDaysPerBatch = 35
	// MaxVersionCellsPerDay bounds a day's instance_version cells (the most used versions).
	MaxVersionCellsPerDay = 100
	MaxEventBytes         = 16 << 10
	MaxProperties         = 16
	MaxFeatureFlags       = 64
	MaxStringLen          = 256
	MaxNumberLen          = 32
	MaxNameLen            = 128
	// MinCellUsers is the smallest distinct-user count an aggregate cell may report.
	MinCellUsers = 5
)

// Batch is one delivery from a collector.
type Batch struct {
	// Version must be 1.
	Version int `json:"version"`
	// InstanceID must equal the instance named in the client certificate.
	InstanceID string `json:"instanceID"`
	// BatchID identifies the batch for idempotency (also sent as Idempotency-Key).
	BatchID string `json:"batchID"`
	// Kind is "events" (EventLevel) or "aggregates" (CriticalOnly).
	Kind string `json:"kind"`
	// Tier is the consent tier the collector ran under.
	Tier string `json:"tier"`
	// AllowListVersion is the version of the event catalog (api/catalog/v1) that filtered the
	// batch; the receiver checks every item against it.
	AllowListVersion int `json:"allowListVersion"`
	// Cursor is the collector's acknowledged position after this batch (events only): every
	// source id at or below it has been delivered.
	Cursor int64 `json:"cursor,omitempty"`
	// Events, for kind "events".
	Events []Event `json:"events,omitempty"`
	// Aggregates, for kind "aggregates".
	Aggregates []Aggregate `json:"aggregates,omitempty"`
}

// Event is one allow-listed, pseudonymized event.
type Event struct {
	// ID is stable and instance-scoped (the event_logs id, in decimal).
	ID string `json:"id"`
	// Name is an allow-listed event name.
	Name string `json:"name"`
	// Timestamp in UTC.
	Timestamp time.Time `json:"timestamp"`
	// Source, e.g. WEB, BACKEND, CODEHOSTINTEGRATION.
	Source string `json:"source,omitempty"`
	// ProductVersion of the instance that recorded the event.
	ProductVersion string `json:"version,omitempty"`
	// Client, e.g. the editor extension that sent it.
	Client string `json:"client,omitempty"`
	// UserID is the keyed pseudonym: hex of HMAC-SHA256(instance key, user id), 128 bits.
	UserID string `json:"userID"`
	// FeatureFlags are flag names and their boolean values.
	FeatureFlags map[string]bool `json:"featureFlags,omitempty"`
	// Properties are allow-listed scalar properties.
	Properties map[string]any `json:"properties,omitempty"`
}

// Aggregate is one anonymous count for one UTC day.
type Aggregate struct {
	// Day is the UTC date, YYYY-MM-DD.
	Day string `json:"day"`
	// Metric names what is counted (see the Metric* constants).
	Metric string `json:"metric"`
	// Dimension qualifies the metric (an event name, a feature, a version); "" for none.
	Dimension string `json:"dimension"`
	// Value is the count.
	Value int64 `json:"value"`
	// Users is the number of distinct users behind the cell (for suppression checks).
	Users int64 `json:"users"`
	// Final must be true: only closed days are published, each once (a partial day re-sent as
	// it grows could be differenced). Earlier collectors sent false for today's partial day;
	// the receiver refuses such cells.
	Final bool `json:"final"`
}

// Aggregate metrics.
const (
	MetricEventCount      = "event_count"      // events per allow-listed name
	MetricActiveUsers1d   = "active_users_1d"  // distinct users that day
	MetricActiveUsers7d   = "active_users_7d"  // distinct users in the 7 days ending that day
	MetricActiveUsers28d  = "active_users_28d" // distinct users in the 28 days ending that day
	MetricFeatureUsers    = "feature_users"    // distinct users per feature that day
	MetricSearchesByType  = "searches_by_type" // searches per pattern type that day
	MetricInstanceVersion = "instance_version" // distinct users per product version that day
)

// CountsEvents reports whether a metric's value counts events (and Users the distinct users
// behind them); every other metric's value is a number of distinct users, equal to Users.
func CountsEvents(metric string) bool {
	return metric == MetricEventCount || metric == MetricSearchesByType
}

var knownMetrics = map[string]bool{
	MetricEventCount: true, MetricActiveUsers1d: true, MetricActiveUsers7d: true, MetricActiveUsers28d: true,
	MetricFeatureUsers: true, MetricSearchesByType: true, MetricInstanceVersion: true,
}

// Response acknowledges a stored batch.
type Response struct {
	// Accepted items were stored by this batch.
	Accepted int `json:"accepted"`
	// Duplicates were stored before (a re-send) or, for aggregates, not replaced (a final cell).
	Duplicates int `json:"duplicates"`
	// Refused items are not stored because the receiver's consent ledger does not allow them:
	// an event recorded outside an EventLevel period, a cell for a day outside any period of at
	// least CriticalOnly, or either inside an erased range. They are acknowledged all the same
	// (the cursor moves past them) because they may never leave: a collector must not retry
	// them. Absent when zero.
	Refused int `json:"refused,omitempty"`
	// Cursor is the instance's acknowledged cursor after the batch.
	Cursor int64 `json:"cursor"`
}

// Limits of GET /v1/exported.
const (
	// DefaultExportedDeliveries is how many deliveries a listing holds when ?limit is not given.
	DefaultExportedDeliveries = 10
	// MaxExportedDeliveries is the largest ?limit.
	MaxExportedDeliveries = 100
	// MaxExportedItems bounds the events and cells of one listing together; a delivery with more
	// is listed in part and marked truncated.
	MaxExportedItems = 10000
)

// ExportedResponse answers GET /v1/exported: the instance's most recent deliveries, newest first.
type ExportedResponse struct {
	InstanceID string     `json:"instanceID"`
	Deliveries []Delivery `json:"deliveries"`
}

// Delivery is one accepted call that stored something, with the items of it still stored (an
// erasure or a withdrawal of consent removes items, not the record of the delivery).
type Delivery struct {
	// Seq numbers deliveries across the receiver; a later delivery has a larger number. It is
	// never sent to an instance: its gaps would count other instances' deliveries.
	Seq        int64     `json:"-"`
	BatchID    string    `json:"batchID"`
	Kind       string    `json:"kind"`
	ReceivedAt time.Time `json:"receivedAt"`
	// Accepted, Duplicates and Refused are the counts the receiver answered the call with.
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Refused    int `json:"refused"`
	// Events are the events stored by the delivery, in id order (kind events).
	Events []Event `json:"events,omitempty"`
	// Aggregates are the cells stored by the delivery (kind aggregates).
	Aggregates []Aggregate `json:"aggregates,omitempty"`
	// Truncated is true when more of the delivery's items are stored than the listing holds.
	Truncated bool `json:"truncated,omitempty"`
}

// CursorResponse answers GET /v1/cursor.
type CursorResponse struct {
	InstanceID string `json:"instanceID"`
	Known      bool   `json:"known"`
	Cursor     int64  `json:"cursor"`
}

// ErrorResponse is every non-2xx body.
type ErrorResponse struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
	// EventIndex points at the offending event or aggregate, when one is to blame.
	EventIndex *int `json:"eventIndex,omitempty"`
}

// Reasons in ErrorResponse.
const (
	ReasonMalformed      = "Malformed"
	ReasonTierViolation  = "TierViolation"
	ReasonTooLarge       = "TooLarge"
	ReasonWrongInstance  = "WrongInstance"
	ReasonUnsupported    = "UnsupportedMediaType"
	ReasonUnavailable    = "StorageUnavailable"
	ReasonUnauthorized   = "Unauthenticated"
	ReasonTooManyEvents  = "TooManyEvents"
	ReasonEventTooLarge  = "EventTooLarge"
	ReasonInternal       = "Internal"
	ReasonNotFound       = "NotFound"
	ReasonMethodNotAllow = "MethodNotAllowed"
	// ReasonNotOwner: the client certificate was issued for a policy that does not own the
	// instance's consent record (it was handed over or released); retried, never dropped.
	ReasonNotOwner = "PolicyNotOwner"
	// ReasonNotInCatalog: an event, a property, a value or an aggregate dimension is not in the
	// event catalog version the batch declares (eventIndex names the item).
	ReasonNotInCatalog = "NotInCatalog"
	// ReasonUnsupportedCatalog: the receiver does not know the catalog version the batch declares.
	ReasonUnsupportedCatalog = "UnsupportedCatalogVersion"
	// ReasonDayNotClosed: an aggregates batch holds a day that has not ended by the receiver's
	// clock. Nothing of the batch is stored; the collector sends it again later.
	ReasonDayNotClosed = "DayNotClosed"
	// ReasonRateLimited: the instance sent more batches than its rate allows (429, Retry-After).
	ReasonRateLimited = "RateLimited"
	// ReasonBusy: the receiver holds as many bodies as it may (503, Retry-After).
	ReasonBusy = "ReceiverBusy"
)

// Error is a decoding or validation failure with a stable reason and, when one item is to
// blame, its index.
type Error struct {
	Reason string
	Index  int // -1 when no single item is to blame
	Msg    string
}

func (e *Error) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("%s (item %d)", e.Msg, e.Index)
	}
	return e.Msg
}

func fail(reason string, index int, format string, args ...any) error {
	return &Error{Reason: reason, Index: index, Msg: fmt.Sprintf(format, args...)}
}

// ForbiddenFields never leave an instance, whatever the tier. A batch naming any of them is a tier
// violation, not merely malformed.
var ForbiddenFields = []string{
	"url", "argument", "referrer", "first_source_url", "last_source_url", "firstSourceURL", "lastSourceURL",
	"device_id", "deviceID", "billing_event_id", "billingEventID", "billing_product_category", "insert_id",
	"anonymous_user_id", "anonymousUserID", "user_id", "query", "email", "ip", "public_argument", "cohort_id",
}

var (
	namePattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.:-]{0,127}$`)
	// batchIDStem is what follows "<instance>-" in a collector's batch id: e (events: first
	// id, last id, count), c (a cursor) or a (aggregates: first and last day as yyyymmdd),
	// then one mark per split (.l or .r). No letters: a tampered collector can still choose
	// the digits (they are not checked against the batch's items), as it chooses its counts.
	batchIDStem      = regexp.MustCompile(`^[eca](-[0-9]{1,19}){1,3}(\.[lr])*$`)
	dayPattern       = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`)
	dimensionPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$`)
	instancePattern  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// MaxBatchIDLen bounds a batch id; a collector keeps the last MaxBatchIDLen characters of a
// longer one (split marks accumulate at its end).
const MaxBatchIDLen = 128

// ValidBatchID reports whether id has the shape of the ids a collector of instance makes:
// "<instance>-" then the stem (batchIDStem), possibly cut at the front to MaxBatchIDLen. A
// batch id is stored and shown with the batch: a free-form one would be a channel for words.
func ValidBatchID(instance, id string) bool {
	if len(id) == 0 || len(id) > MaxBatchIDLen {
		return false
	}
	prefix := instance + "-"
	for cut := 0; cut <= len(prefix); cut++ {
		if cut > 0 && len(id) != MaxBatchIDLen {
			return false // only an id at the bound was cut
		}
		if strings.HasPrefix(id, prefix[cut:]) && batchIDStem.MatchString(id[len(prefix)-cut:]) {
			return true
		}
	}
	return false
}

func validateEvent(e *Event, i int) error {
	switch {
	case !isDecimalID(e.ID):
		return fail(ReasonMalformed, i, "event id must be a decimal event_logs id")
	case !isName(e.Name):
		return fail(ReasonMalformed, i, "event name is missing or not a plain identifier")
	case e.Timestamp.IsZero() || e.Timestamp.UTC().Year() < 2000 || e.Timestamp.UTC().Year() > 9999: // the receiver stores UTC days
		return fail(ReasonMalformed, i, "event timestamp is missing or out of range")
	case !isPseudonym(e.UserID):
		return fail(ReasonTierViolation, i, "userID must be a 128-bit hex pseudonym, never a raw id")
	case len(e.Source) > MaxNameLen || len(e.ProductVersion) > MaxNameLen || len(e.Client) > MaxNameLen:
		return fail(ReasonMalformed, i, "source, version or client is longer than %d characters", MaxNameLen)
	case strings.IndexByte(e.Source, 0) >= 0 || strings.IndexByte(e.ProductVersion, 0) >= 0 || strings.IndexByte(e.Client, 0) >= 0:
		// PostgreSQL text cannot hold NUL; refusing it here keeps it a client error, not a 500.
		return fail(ReasonMalformed, i, "source, version or client contains a NUL character")
	case len(e.Properties) > MaxProperties:
		return fail(ReasonMalformed, i, "more than %d properties", MaxProperties)
	case len(e.FeatureFlags) > MaxFeatureFlags:
		return fail(ReasonMalformed, i, "more than %d feature flags", MaxFeatureFlags)
	}
	for k := range e.FeatureFlags {
		if !isName(k) {
			return fail(ReasonMalformed, i, "feature flag name is not a plain identifier")
		}
	}
	for k, v := range e.Properties {
		if !isName(k) {
			return fail(ReasonMalformed, i, "property name is not a plain identifier")
		}
		if isForbidden(k) {
			return fail(ReasonTierViolation, i, "property %q must never leave an instance", k)
		}
		switch val := v.(type) {
		case string:
			if len(val) > MaxStringLen {
				return fail(ReasonMalformed, i, "property %q is longer than %d characters", k, MaxStringLen)
			}
			if strings.IndexByte(val, 0) >= 0 {
				return fail(ReasonMalformed, i, "property %q contains a NUL character", k)
			}
		case json.Number:
			if !boundedNumber(val) {
				return fail(ReasonMalformed, i, "property %q is not a number of at most %d characters within float64 range", k, MaxNumberLen)
			}
		case bool:
		default:
			return fail(ReasonMalformed, i, "property %q is not a scalar", k)
		}
	}
	e.Timestamp = e.Timestamp.UTC()
	return nil
}

// The checks below are the hot path of every batch; they spell out the patterns
// ^(0|[1-9][0-9]{0,18})$ (at most the largest bigint, as event_logs ids are), ^[0-9a-f]{32}$ and ^[A-Za-z][A-Za-z0-9_.:-]{0,127}$ without regular expressions.

// boundedNumber reports whether a property number is short and finite as a float64, which every
// number the collector sends is and which the store can hold.
func boundedNumber(n json.Number) bool {
	if len(n) > MaxNumberLen {
		return false
	}
	f, err := strconv.ParseFloat(string(n), 64)
	return err == nil && !math.IsInf(f, 0)
}

func isDecimalID(s string) bool {
	if len(s) == 0 || len(s) > 19 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

// isPseudonym checks the shape of a collector's pseudonym: 128 bits of a keyed hash, in lower
// case hex. A raw numeric id written as hex and zero-padded has that shape too, so the high 64
// bits must not all be zero (a hash leaves them so once in 2^64). A shape check refuses the
// obvious leak, not every one: the key that makes pseudonyms is the collector's.
func isPseudonym(s string) bool {
	if len(s) != 32 || strings.Count(s[:16], "0") == 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func isName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		letter := (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
		if i == 0 && !letter {
			return false
		}
		if !letter && (c < '0' || c > '9') && c != '_' && c != '.' && c != ':' && c != '-' {
			return false
		}
	}
	return true
}

func validateAggregate(a *Aggregate, i int) error {
	if !dayPattern.MatchString(a.Day) {
		return fail(ReasonMalformed, i, "day must be YYYY-MM-DD")
	}
	if _, err := time.Parse(time.DateOnly, a.Day); err != nil {
		return fail(ReasonMalformed, i, "day is not a date")
	}
	if !knownMetrics[a.Metric] {
		return fail(ReasonMalformed, i, "unknown metric %q", truncate(a.Metric, 64))
	}
	if len(a.Dimension) > MaxNameLen || (a.Dimension != "" && !dimensionPattern.MatchString(a.Dimension)) {
		return fail(ReasonMalformed, i, "dimension is not a plain identifier of at most %d characters", MaxNameLen)
	}
	if a.Value < 0 || a.Users < 0 {
		return fail(ReasonMalformed, i, "counts must not be negative")
	}
	if a.Users < MinCellUsers {
		// A cell nobody is behind is not published either: published zeros would tell a
		// reader which withheld cells are empty, and narrow the others.
		return fail(ReasonTierViolation, i, "a cell with %d distinct users must be suppressed (minimum %d)", a.Users, MinCellUsers)
	}
	if CountsEvents(a.Metric) && a.Users > a.Value {
		return fail(ReasonMalformed, i, "a cell of %s cannot have more distinct users than events", a.Metric)
	}
	if !CountsEvents(a.Metric) && a.Users != a.Value {
		return fail(ReasonMalformed, i, "a cell of %s counts distinct users: value and users must be equal", a.Metric)
	}
	if !a.Final {
		return fail(ReasonTierViolation, i, "only closed days are published: final must be true")
	}
	return nil
}

// forbidden holds ForbiddenFields lower-cased, for isForbidden's lookup.
var forbidden = func() map[string]bool {
	m := make(map[string]bool, len(ForbiddenFields))
	for _, f := range ForbiddenFields {
		m[strings.ToLower(f)] = true
	}
	return m
}()

// isForbidden reports whether field names a field that must never leave an instance, in any
// letter case. It runs for every property of every event, so ASCII names are lower-cased on the
// stack; anything else falls back to Unicode case folding.
func isForbidden(field string) bool {
	var lower [32]byte
	if len(field) <= len(lower) {
		ascii := true
		for i := 0; i < len(field); i++ {
			c := field[i]
			if c >= utf8.RuneSelf {
				ascii = false
				break
			}
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			lower[i] = c
		}
		if ascii {
			return forbidden[string(lower[:len(field)])]
		}
	}
	for _, f := range ForbiddenFields {
		if strings.EqualFold(field, f) {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "?")
}
