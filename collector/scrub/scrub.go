/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package scrub turns an event_logs row into an exportable event: a name, properties, source,
// client, product version and feature flags each listed in the event catalog (api/catalog/v1),
// a keyed pseudonym instead of the user, and nothing else. A value the catalog does not list is
// dropped and counted. The source query never even selects url, argument, referrers, device or
// billing ids, nor any member of public_argument or feature_flags the catalog does not name;
// this package is the second line.
package scrub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"strconv"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// KeyLen is the pseudonym key length the operator generates.
const KeyLen = 32

// Row is the subset of an event_logs row the collector reads.
type Row struct {
	ID              int64
	Name            string
	UserID          int64
	AnonymousUserID string
	Source          string
	PublicArgument  []byte
	Version         string
	Timestamp       time.Time
	FeatureFlags    []byte
	Client          string
	// Oversized is set when the row's public_argument was too large to be read whole (only its
	// listed members within the size bound were selected).
	Oversized bool
}

// Drop reasons, for metrics and progress.
const (
	DropNotAllowListed = "not_allow_listed"
	DropNoUser         = "no_user"
	DropMalformed      = "malformed"
)

// Scrubber pseudonymizes and filters rows. It is not safe for concurrent use.
type Scrubber struct {
	mac hash.Hash
	buf []byte
	// PropertiesDropped counts properties removed from exported events.
	PropertiesDropped int64
	// ValuesDropped counts other values the catalog does not list, by field (source, client,
	// version, feature_flag), removed from exported events.
	ValuesDropped map[string]int64
	catalog       *catalogv1.Catalog
	// Verdicts on values that repeat across events (sources, versions, clients, flag names)
	// and pseudonyms of recent users are memoized: the regular expressions and the HMAC dominate
	// the cost otherwise. The caches are bounded and simply reset when full.
	verdicts   map[verdictKey]bool
	pseudonyms map[pseudonymKey]string
	flagSets   map[string]flagSet
}

type verdictKey struct {
	kind  byte
	value string
}

type pseudonymKey struct {
	user int64
	anon string
}

const maxCacheEntries = 1 << 14

func (s *Scrubber) allowed(kind byte, value string, check func(string) bool) bool {
	k := verdictKey{kind, value}
	if v, ok := s.verdicts[k]; ok {
		return v
	}
	v := check(value)
	if len(s.verdicts) >= maxCacheEntries {
		clear(s.verdicts)
	}
	s.verdicts[k] = v
	return v
}

// New returns a scrubber keyed with the instance's pseudonym key.
func New(key []byte) (*Scrubber, error) {
	if len(key) != KeyLen {
		return nil, errors.New("the pseudonym key must be exactly 32 bytes")
	}
	return &Scrubber{mac: hmac.New(sha256.New, key), verdicts: map[verdictKey]bool{}, pseudonyms: map[pseudonymKey]string{},
		flagSets: map[string]flagSet{}, catalog: catalogv1.Current(), ValuesDropped: map[string]int64{}}, nil
}

// Pseudonym returns hex(HMAC-SHA256(key, user))[:32] for a signed-in user id, or for an
// anonymous id when userID is 0. The prefixes keep the two id spaces apart.
func (s *Scrubber) Pseudonym(userID int64, anonymousID string) string {
	k := pseudonymKey{userID, anonymousID}
	if userID != 0 {
		k.anon = ""
	}
	if p, ok := s.pseudonyms[k]; ok {
		return p
	}
	p := s.pseudonym(userID, anonymousID)
	if len(s.pseudonyms) >= maxCacheEntries {
		clear(s.pseudonyms)
	}
	s.pseudonyms[k] = p
	return p
}

func (s *Scrubber) pseudonym(userID int64, anonymousID string) string {
	s.mac.Reset()
	s.buf = s.buf[:0]
	if userID != 0 {
		s.buf = append(s.buf, "u:"...)
		s.buf = strconv.AppendInt(s.buf, userID, 10)
	} else {
		s.buf = append(s.buf, "a:"...)
		s.buf = append(s.buf, anonymousID...)
	}
	s.mac.Write(s.buf)
	sum := s.mac.Sum(nil)
	return hex.EncodeToString(sum[:16])
}

// Catalog is the event catalog the scrubber filters by.
func (s *Scrubber) Catalog() *catalogv1.Catalog { return s.catalog }

// Event returns the exportable event for r, or a drop reason.
func (s *Scrubber) Event(r *Row) (batchv1.Event, string) {
	entry, ok := s.catalog.Lookup(r.Name)
	if !ok {
		return batchv1.Event{}, DropNotAllowListed
	}
	if r.UserID == 0 && r.AnonymousUserID == "" {
		return batchv1.Event{}, DropNoUser
	}
	if r.UserID < 0 || r.Timestamp.IsZero() {
		return batchv1.Event{}, DropMalformed
	}
	e := batchv1.Event{
		ID:        strconv.FormatInt(r.ID, 10),
		Name:      r.Name,
		Timestamp: r.Timestamp.UTC(),
		UserID:    s.Pseudonym(r.UserID, r.AnonymousUserID),
	}
	if r.Source != "" {
		if s.allowed('s', r.Source, s.catalog.Source) {
			e.Source = r.Source
		} else {
			s.ValuesDropped[catalogv1.NotListedSource]++
		}
	}
	if r.Version != "" {
		if s.allowed('v', r.Version, s.catalog.ProductVersion) {
			e.ProductVersion = r.Version
		} else {
			s.ValuesDropped[catalogv1.NotListedVersion]++
		}
	}
	if r.Client != "" {
		if s.allowed('c', r.Client, s.catalog.Client) {
			e.Client = r.Client
		} else {
			s.ValuesDropped[catalogv1.NotListedClient]++
		}
	}
	if r.Oversized {
		s.ValuesDropped[catalogv1.OversizedDocument]++
	}
	flags := s.flags(r.FeatureFlags)
	e.FeatureFlags = flags.kept
	if flags.dropped > 0 {
		s.ValuesDropped[catalogv1.NotListedFlag] += int64(flags.dropped)
	}
	if len(entry.Properties) > 0 && len(r.PublicArgument) > 0 {
		props, dropped := properties(entry, r.PublicArgument)
		e.Properties = props
		s.PropertiesDropped += int64(dropped)
	}
	return e, ""
}

// flagSet is a feature_flags document filtered: the listed flags kept, and how many were not.
type flagSet struct {
	kept    map[string]bool
	dropped int
}

// flags returns the exportable feature flags of a feature_flags document. The same document
// repeats across a user's events, so results for short documents are remembered; the map
// returned may be shared between events and must not be modified.
func (s *Scrubber) flags(raw []byte) flagSet {
	if len(raw) == 0 || len(raw) > 64<<10 {
		return flagSet{}
	}
	if len(raw) > maxCachedFlagsLen {
		return s.parseFlags(raw)
	}
	if m, ok := s.flagSets[string(raw)]; ok {
		return m
	}
	m := s.parseFlags(raw)
	if len(s.flagSets) >= maxCacheEntries {
		clear(s.flagSets)
	}
	s.flagSets[string(raw)] = m
	return m
}

// maxCachedFlagsLen bounds the feature_flags documents remembered (and so the cache's memory).
const maxCachedFlagsLen = 1024

func (s *Scrubber) parseFlags(raw []byte) flagSet {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return flagSet{}
	}
	var out map[string]bool
	dropped := 0
	for k, v := range m {
		b, ok := v.(bool)
		if !ok || !s.allowed('f', k, s.catalog.Flag) {
			dropped++
			continue
		}
		if out == nil {
			out = map[string]bool{}
		}
		out[k] = b
		if len(out) == batchv1.MaxFeatureFlags {
			break
		}
	}
	return flagSet{kept: out, dropped: dropped}
}
