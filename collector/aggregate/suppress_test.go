/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package aggregate_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	"github.com/sourcegraph/telemetry-operator/collector/aggregate"
	"github.com/sourcegraph/telemetry-operator/collector/aggregate/aggregatetest"
	"github.com/sourcegraph/telemetry-operator/internal/disclosure"
)

const day = "2026-11-20"

// primaryOnly is what a collector that suppressed each small cell on its own would publish.
func primaryOnly(cells []batchv1.Aggregate) []batchv1.Aggregate {
	var out []batchv1.Aggregate
	for _, c := range cells {
		if c.Users >= batchv1.MinCellUsers {
			out = append(out, c)
		}
	}
	return out
}

func published(cells []batchv1.Aggregate, metric, dim string) bool {
	for _, c := range cells {
		if c.Metric == metric && c.Dimension == dim {
			return true
		}
	}
	return false
}

// events returns n events of name by users first..first+n-1 (one each), version 5.3.0.
func events(name, pattern string, first, n int) []aggregatetest.Event {
	var out []aggregatetest.Event
	for u := first; u < first+n; u++ {
		out = append(out, aggregatetest.Event{User: u, Name: name, Version: "5.3.0", PatternType: pattern})
	}
	return out
}

// TestTheHandWorkedExample is the issue's: 10 users search and 2 hover. Published as before
// (events per feature and per version, cells suppressed one metric at a time), the hover cell
// was the version total minus the search cell. Now feature and version cells count users, and
// nothing published narrows the hover cell below 5 users.
func TestTheHandWorkedExample(t *testing.T) {
	d := aggregatetest.Day{Date: day, Events: append(events(catalogv1.SearchEvent, "literal", 1, 10), events("hover", "", 11, 2)...)}
	truth := aggregatetest.Cells(d)
	kept, withheld := aggregate.Suppress(truth)
	if published(kept, batchv1.MetricEventCount, "hover") || published(kept, batchv1.MetricFeatureUsers, catalogv1.FeatureCodeNavigation) {
		t.Fatalf("a 2-user cell was published: %v", kept)
	}
	if withheld < 2 {
		t.Fatalf("withheld %d cells, want at least the two 2-user cells", withheld)
	}
	isolated, err := aggregatetest.Isolated(truth, kept)
	if err != nil {
		t.Fatal(err)
	}
	if len(isolated) > 0 {
		t.Fatalf("cells narrowed below %d users: %v", batchv1.MinCellUsers, isolated)
	}
	a := &aggregatetest.Attacker{Published: kept, Versions: []string{"5.3.0"}}
	if hi, err := a.MaxUsers(aggregatetest.Cell{Metric: batchv1.MetricEventCount, Dimension: "hover"}); err != nil || hi < batchv1.MinCellUsers {
		t.Fatalf("hover bounded by %v users (%v)", hi, err)
	}
}

// TestASubtractionIsClosed: searches_by_type adds up to the day's searches, so with the total
// and all other types published a small type is a subtraction away. The attacker finds it when
// cells are suppressed one at a time; Suppress withholds a complement.
func TestASubtractionIsClosed(t *testing.T) {
	d := aggregatetest.Day{Date: day, Events: append(events(catalogv1.SearchEvent, "literal", 1, 10), events(catalogv1.SearchEvent, "regexp", 11, 2)...)}
	truth := aggregatetest.Cells(d)
	naive, err := aggregatetest.Isolated(truth, primaryOnly(truth))
	if err != nil {
		t.Fatal(err)
	}
	regexp := aggregatetest.Cell{Metric: batchv1.MetricSearchesByType, Dimension: "regexp"}
	if hi, ok := naive[regexp]; !ok || hi != 2 {
		t.Fatalf("the attacker must isolate the regexp cell under primary suppression alone, got %v", naive)
	}
	kept, _ := aggregate.Suppress(truth)
	isolated, err := aggregatetest.Isolated(truth, kept)
	if err != nil {
		t.Fatal(err)
	}
	if len(isolated) > 0 {
		t.Fatalf("cells narrowed below %d users: %v", batchv1.MinCellUsers, isolated)
	}
	if !published(kept, batchv1.MetricEventCount, catalogv1.SearchEvent) || published(kept, batchv1.MetricSearchesByType, "literal") {
		t.Fatalf("want the search total published and its smallest complement (literal, 10 users) withheld: %v", kept)
	}
}

// TestNoSuppressedCellCanBeNarrowed is the attacker test over randomized instance-days: few
// users, heavily skewed names, many versions. For every cell not published with users behind
// it, the attacker's linear program over everything published that day must allow at least
// MinCellUsers users. The same attacker must find cells to narrow when suppression is one cell
// at a time, or it would prove nothing.
//
// The receiver's audit (disclosure.Audit, which sees only what a collector publishes) is held
// to the same attacker on the same days: it accepts every day Suppress publishes (a collector
// that does its part is never refused) and refuses every day one-at-a-time suppression leaves
// narrowable.
func TestNoSuppressedCellCanBeNarrowed(t *testing.T) {
	days := 400
	if testing.Short() {
		days = 60
	}
	rng := rand.New(rand.NewPCG(13, 2026))
	var naiveExposed, refused, cells, small, withheld int
	for i := range days {
		d := aggregatetest.Random(rng, fmt.Sprintf("2026-%02d-%02d", 1+i%12, 1+i%28))
		truth := aggregatetest.Cells(d)
		kept, n := aggregate.Suppress(truth)
		cells, withheld = cells+len(truth), withheld+n
		small += len(truth) - len(primaryOnly(truth))
		for _, c := range kept {
			if c.Users < batchv1.MinCellUsers {
				t.Fatalf("day %d: published a cell of %d users: %+v", i, c.Users, c)
			}
		}
		isolated, err := aggregatetest.Isolated(truth, kept)
		if err != nil {
			t.Fatalf("day %d: %v", i, err)
		}
		if len(isolated) > 0 {
			t.Fatalf("day %d: cells narrowed below %d users %v\ntruth %v\npublished %v", i, batchv1.MinCellUsers, isolated, truth, kept)
		}
		if err := disclosure.Audit(context.Background(), catalogv1.Current(), kept); err != nil {
			t.Fatalf("day %d: the receiver refuses what Suppress published: %v\n%v", i, err, kept)
		}
		oneAtATime := primaryOnly(truth)
		naive, err := aggregatetest.Isolated(truth, oneAtATime)
		if err != nil {
			t.Fatalf("day %d: %v", i, err)
		}
		audit := disclosure.Audit(context.Background(), catalogv1.Current(), oneAtATime)
		if len(naive) > 0 {
			naiveExposed++
			if audit == nil {
				t.Fatalf("day %d: the attacker narrows %v, the receiver's audit accepts %v", i, naive, oneAtATime)
			}
		}
		if audit != nil {
			refused++
		}
	}
	t.Logf("%d days, %d cells: %d under %d users, %d more withheld to protect them; suppression one cell at a time would have exposed %d days, and the receiver refuses %d of them",
		days, cells, small, batchv1.MinCellUsers, withheld-small, naiveExposed, refused)
	if naiveExposed == 0 {
		t.Fatal("the attacker narrowed nothing even under one-at-a-time suppression: it is toothless on this data")
	}
}

// TestSuppressIsDeterministic: the same cells give the same publication (a day's cells are sent
// once, but a resend after a lost acknowledgement must carry the same cells).
func TestSuppressIsDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for range 20 {
		truth := aggregatetest.Cells(aggregatetest.Random(rng, day))
		a, _ := aggregate.Suppress(truth)
		for range 3 {
			b, _ := aggregate.Suppress(truth)
			if fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("two publications of the same cells:\n%v\n%v", a, b)
			}
		}
	}
}

// TestDaysAreJudgedApart: cells of different days never protect each other.
func TestDaysAreJudgedApart(t *testing.T) {
	a := aggregatetest.Cells(aggregatetest.Day{Date: "2026-11-20", Events: events(catalogv1.SearchEvent, "literal", 1, 12)})
	b := aggregatetest.Cells(aggregatetest.Day{Date: "2026-11-21", Events: append(events(catalogv1.SearchEvent, "literal", 1, 10), events(catalogv1.SearchEvent, "regexp", 11, 2)...)})
	kept, _ := aggregate.Suppress(append(a, b...))
	var dayB []batchv1.Aggregate
	for _, c := range kept {
		if c.Day == "2026-11-21" {
			dayB = append(dayB, c)
		}
	}
	if isolated, err := aggregatetest.Isolated(b, dayB); err != nil || len(isolated) > 0 {
		t.Fatalf("day 2: %v %v", isolated, err)
	}
	if !published(kept, batchv1.MetricSearchesByType, "literal") {
		t.Fatal("day 1's literal cell (12 users, no small cell that day) must be published")
	}
}

// TestManyVersionsAreWithheld: a day with thousands of small versions (a hostile or odd instance
// database) is audited as quickly as a day with a few, and none of them is published.
func TestManyVersionsAreWithheld(t *testing.T) {
	cells := []batchv1.Aggregate{
		{Day: day, Metric: batchv1.MetricEventCount, Dimension: "hover", Value: 40, Users: 6},
		{Day: day, Metric: batchv1.MetricFeatureUsers, Dimension: catalogv1.FeatureCodeNavigation, Value: 6, Users: 6},
		{Day: day, Metric: batchv1.MetricActiveUsers1d, Value: 6, Users: 6},
		{Day: day, Metric: batchv1.MetricInstanceVersion, Dimension: "5.3.0", Value: 5, Users: 5},
	}
	for i := range 5000 {
		cells = append(cells, batchv1.Aggregate{Day: day, Metric: batchv1.MetricInstanceVersion, Dimension: fmt.Sprintf("6.%d.%d", i/1000, i%1000), Value: 1, Users: 1})
	}
	kept, withheld := aggregate.Suppress(cells)
	for _, c := range kept {
		if c.Users < batchv1.MinCellUsers {
			t.Fatalf("published %+v", c)
		}
	}
	if withheld < 5000 {
		t.Fatalf("withheld %d cells, want at least the 5000 small versions", withheld)
	}
}

// BenchmarkAudit is the receiver's cost of auditing one published day (a random instance-day).
func BenchmarkAudit(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 5))
	var days [][]batchv1.Aggregate
	for range 50 {
		kept, _ := aggregate.Suppress(aggregatetest.Cells(aggregatetest.Random(rng, day)))
		days = append(days, kept)
	}
	b.ResetTimer()
	for i := range b.N {
		if err := disclosure.Audit(context.Background(), catalogv1.Current(), days[i%len(days)]); err != nil {
			b.Fatal(err)
		}
	}
}
