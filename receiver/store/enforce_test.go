/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

var nov1 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func at(days, hours int) time.Time {
	return nov1.AddDate(0, 0, days).Add(time.Duration(hours) * time.Hour)
}

func window(from, to time.Time) consentv1.Window { return consentv1.Window{Start: from, End: &to} }

// testPolicy: EventLevel from Nov 1, CriticalOnly from Nov 3 12:00, Off from Nov 5 06:00,
// CriticalOnly from Nov 8, EventLevel from Nov 9; events erased in [Nov 12, Nov 13) and
// everything in [Nov 10, Nov 11).
func testPolicy() *policy {
	tl := consentv1.Timeline{
		{At: at(0, 0), Tier: consentv1.TierEventLevel},
		{At: at(2, 12), Tier: consentv1.TierCriticalOnly},
		{At: at(4, 6), Tier: consentv1.TierOff},
		{At: at(7, 0), Tier: consentv1.TierCriticalOnly},
		{At: at(8, 0), Tier: consentv1.TierEventLevel},
	}
	all, events := window(at(9, 0), at(10, 0)), window(at(11, 0), at(12, 0))
	return &policy{instance: "x", timeline: tl, aggregateDays: tl.AggregateDays(),
		eventTombstones: []consentv1.Window{all, events}, aggregateTombstones: []consentv1.Window{all}}
}

func TestKeepEvent(t *testing.T) {
	p := testPolicy()
	for _, c := range []struct {
		ts   time.Time
		want bool
	}{
		{at(0, 0).Add(-time.Microsecond), false}, // before the first transition
		{at(0, 0), true},
		{at(2, 12).Add(-time.Microsecond), true},
		{at(2, 12), false}, // CriticalOnly
		{at(5, 0), false},  // Off
		{at(7, 12), false}, // CriticalOnly
		{at(8, 0), true},
		{at(9, 0), false}, // erased (All)
		{at(10, 0).Add(-time.Microsecond), false},
		{at(10, 0), true},
		{at(11, 5), false}, // erased (Events)
		{at(12, 0), true},
		{at(400, 0), true}, // EventLevel stays in force
	} {
		if got := p.keepEvent(c.ts, "1"); got != c.want {
			t.Errorf("keepEvent(%s) = %v, want %v", c.ts.Format(time.RFC3339Nano), got, c.want)
		}
	}
}

func TestKeepAggregate(t *testing.T) {
	// EventLevel from 11-01, CriticalOnly from 11-03 12:00, Off from 11-05 06:00, CriticalOnly
	// from 11-07, EventLevel from 11-13; everything erased on 11-10, events only on 11-12.
	tl := consentv1.Timeline{
		{At: at(0, 0), Tier: consentv1.TierEventLevel},
		{At: at(2, 12), Tier: consentv1.TierCriticalOnly},
		{At: at(4, 6), Tier: consentv1.TierOff},
		{At: at(6, 0), Tier: consentv1.TierCriticalOnly},
		{At: at(12, 0), Tier: consentv1.TierEventLevel},
	}
	p := &policy{instance: "x", timeline: tl, aggregateDays: tl.AggregateDays(),
		eventTombstones: []consentv1.Window{window(at(9, 0), at(10, 0)), window(at(11, 0), at(12, 0))}, aggregateTombstones: []consentv1.Window{window(at(9, 0), at(10, 0))}}
	for _, c := range []struct {
		day  string
		want bool
	}{
		{"2026-10-31", false}, // before consent
		{"2026-11-01", false}, // EventLevel: its events are stored one by one
		{"2026-11-03", false}, // EventLevel until noon, then CriticalOnly: cells could be differenced against the morning's events
		{"2026-11-04", true},  // CriticalOnly
		{"2026-11-05", false}, // Off from 06:00: a cell may count the hours after the withdrawal, and it was deleted when it was recorded
		{"2026-11-06", false}, // Off all day
		{"2026-11-07", true},
		{"2026-11-10", false}, // erased with scope All
		{"2026-11-11", true},  // the erased range ends at midnight
		{"2026-11-12", true},  // only events were erased that day
		{"2026-11-13", false}, // EventLevel again
		{"2027-06-01", false},
		{"2026-02-30", false}, // not a date: fail closed
	} {
		if got := p.keepAggregate(c.day, at(400, 0)); got != c.want {
			t.Errorf("keepAggregate(%s) = %v, want %v", c.day, got, c.want)
		}
	}
	// A day that has not ended is refused, however the ledger stands: CriticalOnly now, a
	// renewal may yet make it EventLevel.
	now := at(7, 12)
	for day, want := range map[string]bool{"2026-11-07": true, "2026-11-08": false, "2026-11-09": false} {
		if got := p.keepAggregate(day, now); got != want {
			t.Errorf("at %s, keepAggregate(%s) = %v, want %v", now, day, got, want)
		}
	}
	if !p.keepAggregate("2026-11-08", at(8, 0).Add(time.Minute)) || p.keepAggregate("2026-11-08", at(8, 0).Add(-time.Minute)) {
		t.Error("a day is kept from its end on, not before")
	}
}

func TestRefusal(t *testing.T) {
	since := at(3, 0)
	timeline := func(tiers ...consentv1.Tier) consentv1.Timeline {
		var tl consentv1.Timeline
		for i, tier := range tiers {
			tl = append(tl, consentv1.Transition{At: since.Add(time.Duration(i-len(tiers)+1) * time.Hour), Tier: tier})
		}
		return tl
	}
	trial := func(until time.Time) consentv1.Timeline {
		return consentv1.Timeline{{At: since.Add(-time.Hour), Tier: consentv1.TierEventLevel, Until: &until}}
	}
	now := since.Add(2 * time.Hour)
	for _, c := range []struct {
		name                 string
		timeline             consentv1.Timeline
		events, aggregatesOK bool
		tier                 consentv1.Tier
		since                time.Time
	}{
		{"empty timeline", nil, false, false, consentv1.TierOff, time.Time{}},
		{"Off", timeline(consentv1.TierEventLevel, consentv1.TierOff), false, false, consentv1.TierOff, since},
		{"CriticalOnly", timeline(consentv1.TierEventLevel, consentv1.TierCriticalOnly), false, true, consentv1.TierCriticalOnly, since},
		{"EventLevel", timeline(consentv1.TierOff, consentv1.TierEventLevel), true, true, consentv1.TierEventLevel, since},
		{"a trial before its Until", trial(now.Add(time.Second)), true, true, consentv1.TierEventLevel, since.Add(-time.Hour)},
		{"a trial at its Until, with nothing recorded since", trial(now), false, true, consentv1.TierCriticalOnly, now},
		{"a trial after its Until", trial(since), false, true, consentv1.TierCriticalOnly, since},
	} {
		p := &policy{instance: "x", timeline: c.timeline}
		for kind, want := range map[string]bool{batchv1.KindEvents: c.events, batchv1.KindAggregates: c.aggregatesOK} {
			err := p.refusal(kind, now)
			if (err == nil) != want {
				t.Errorf("%s, %s batch: refusal %v, want allowed=%v", c.name, kind, err, want)
			}
			var re *RefusedError
			if err != nil && (!errors.Is(err, ErrConsentRefused) || !errors.As(err, &re) || re.Tier != c.tier ||
				(len(c.timeline) > 0 && !re.Since.Equal(c.since))) {
				t.Errorf("%s, %s batch: %#v does not describe the state", c.name, kind, err)
			}
		}
	}
}

func TestPolicyCache(t *testing.T) {
	var c policyCache
	p1, p2 := &policy{instance: "a"}, &policy{instance: "a"}
	c.put("a", 1, p1)
	if c.get("a", 1) != p1 || c.get("a", 2) != nil || c.get("b", 1) != nil {
		t.Fatal("lookup by (instance, version) is wrong")
	}
	c.put("a", 2, p2)
	c.put("a", 1, p1) // a slower batch that loaded the older version
	if c.get("a", 2) != p2 || c.get("a", 1) != nil {
		t.Fatal("an older version replaced a newer one")
	}
	for i := range maxCachedPolicies + 10 {
		c.put(fmt.Sprint("i", i), 1, p1)
	}
	if n := len(c.entries); n > maxCachedPolicies {
		t.Fatalf("%d entries, bound %d", n, maxCachedPolicies)
	}
}

func TestRoundingGrantsLess(t *testing.T) {
	ts := time.Date(2026, 11, 1, 0, 0, 0, 1500, time.UTC) // 1.5 µs
	if f, c := floorMicro(ts), ceilMicro(ts); !f.Equal(ts.Add(-500)) || !c.Equal(ts.Add(500)) {
		t.Fatalf("floor %s ceil %s", f.Format(time.RFC3339Nano), c.Format(time.RFC3339Nano))
	}
	if whole := ts.Add(-500); !ceilMicro(whole).Equal(whole) || !floorMicro(whole).Equal(whole) {
		t.Fatal("a whole microsecond must stay as it is")
	}
}
