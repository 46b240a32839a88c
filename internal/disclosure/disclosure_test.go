/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package disclosure

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// TestManyVersionsKeepTheAuditSmall: an instance database can hold any number of distinct
// versions; the audit's program must not grow with them (every unknown version has the same
// single relation), or a hostile database could stall publication (the collector withholds
// them all: collector/aggregate's TestManyVersionsAreWithheld).
func TestManyVersionsKeepTheAuditSmall(t *testing.T) {
	day := func(versions int) []batchv1.Aggregate {
		cells := []batchv1.Aggregate{
			{Day: "2026-10-14", Metric: batchv1.MetricEventCount, Dimension: "hover", Value: 40, Users: 6},
			{Day: "2026-10-14", Metric: batchv1.MetricFeatureUsers, Dimension: catalogv1.FeatureCodeNavigation, Value: 6, Users: 6},
			{Day: "2026-10-14", Metric: batchv1.MetricActiveUsers1d, Value: 6, Users: 6},
			{Day: "2026-10-14", Metric: batchv1.MetricInstanceVersion, Dimension: "5.3.0", Value: 5, Users: 5},
		}
		for i := range versions {
			cells = append(cells, batchv1.Aggregate{Day: "2026-10-14", Metric: batchv1.MetricInstanceVersion, Dimension: fmt.Sprintf("6.%d.%d", i/1000, i%1000), Value: 1, Users: 1})
		}
		return cells
	}
	size := func(cells []batchv1.Aggregate) int {
		published := map[Cell]batchv1.Aggregate{}
		for _, c := range cells {
			if c.Users >= batchv1.MinCellUsers {
				published[Cell{c.Metric, c.Dimension}] = c
			}
		}
		m := NewModel(catalogv1.Current(), cells, published)
		return len(m.names)
	}
	if few, many := size(day(3)), size(day(5000)); few != many {
		t.Fatalf("the program has %d unknowns with 3 small versions and %d with 5000", few, many)
	}
	// Published versions neither: each adds no relation beyond the largest one's.
	rows := func(published int) int {
		cells := day(0)
		for i := range published {
			cells = append(cells, batchv1.Aggregate{Day: "2026-10-14", Metric: batchv1.MetricInstanceVersion, Dimension: fmt.Sprintf("7.%d.%d", i/1000, i%1000), Value: 5, Users: 5 + int64(i%3)})
		}
		pub := map[Cell]batchv1.Aggregate{}
		for _, c := range cells {
			pub[Cell{c.Metric, c.Dimension}] = c
		}
		m := NewModel(catalogv1.Current(), cells, pub)
		return len(m.le) + len(m.eq)
	}
	if few, many := rows(3), rows(5000); few != many {
		t.Fatalf("the program has %d relations with 3 published versions and %d with 5000", few, many)
	}
}

// TestAuditRefusesContradictions: cells that break their definitions among themselves were
// not computed as defined, and nothing can be judged of them; the day is refused.
func TestAuditRefusesContradictions(t *testing.T) {
	cell := func(metric, dim string, value, users int64) batchv1.Aggregate {
		return batchv1.Aggregate{Day: "2026-11-27", Metric: metric, Dimension: dim, Value: value, Users: users, Final: true}
	}
	cat := catalogv1.Current()
	var allTypes []batchv1.Aggregate
	for _, pt := range append(slices.Clone(catalogv1.PatternTypes), catalogv1.OtherPatternType) {
		allTypes = append(allTypes, cell(batchv1.MetricSearchesByType, pt, 10, 5))
	}
	feature := cat.FeatureOf(catalogv1.SearchEvent)
	for name, day := range map[string][]batchv1.Aggregate{
		"fewer 28-day than 1-day users":             {cell(batchv1.MetricActiveUsers1d, "", 50, 50), cell(batchv1.MetricActiveUsers7d, "", 10, 10), cell(batchv1.MetricActiveUsers28d, "", 5, 5)},
		"pattern types that do not add up":          append([]batchv1.Aggregate{cell(batchv1.MetricEventCount, catalogv1.SearchEvent, 20, 10)}, allTypes...),
		"an event with more users than its feature": {cell(batchv1.MetricEventCount, catalogv1.SearchEvent, 100, 100), cell(batchv1.MetricFeatureUsers, feature, 5, 5)},
	} {
		var undecided *UndecidedError
		if err := Audit(context.Background(), cat, day); !errors.As(err, &undecided) || !errors.Is(err, errContradiction) {
			t.Errorf("%s: Audit = %v, want a contradiction", name, err)
		}
	}
	// The same shapes, consistent, pass.
	consistent := append([]batchv1.Aggregate{cell(batchv1.MetricEventCount, catalogv1.SearchEvent, 70, 10)}, allTypes...)
	if err := Audit(context.Background(), cat, consistent); err != nil {
		t.Fatalf("consistent pattern types: %v", err)
	}
}

// TestAuditRefusesADifferencedDay: what a reader subtracts is what the audit finds. Two
// published pattern types leave 2 of the day's 20 searches to the other types, so each of them
// has at most 2 users; withholding one of the two leaves 10, and nothing can be narrowed.
func TestAuditRefusesADifferencedDay(t *testing.T) {
	cell := func(metric, dim string, value, users int64) batchv1.Aggregate {
		return batchv1.Aggregate{Day: "2026-11-27", Metric: metric, Dimension: dim, Value: value, Users: users, Final: true}
	}
	day := []batchv1.Aggregate{
		cell(batchv1.MetricEventCount, catalogv1.SearchEvent, 20, 10),
		cell(batchv1.MetricSearchesByType, "literal", 10, 5),
		cell(batchv1.MetricSearchesByType, "standard", 8, 5),
	}
	var narrowed *NarrowedError
	if err := Audit(context.Background(), catalogv1.Current(), day); !errors.As(err, &narrowed) {
		t.Fatalf("Audit = %v, want a NarrowedError", err)
	}
	if narrowed.Cell.Metric != batchv1.MetricSearchesByType || narrowed.Bound != 2 || narrowed.Day != "2026-11-27" {
		t.Fatalf("narrowed %+v, want a pattern type narrowed to 2 users on 2026-11-27", narrowed)
	}
	if err := Audit(context.Background(), catalogv1.Current(), day[:2]); err != nil {
		t.Fatalf("with one pattern type withheld: %v", err)
	}
	// The first of two cells for the same metric and dimension is the one stored and judged.
	if err := Audit(context.Background(), catalogv1.Current(), append(day[:2:2], cell(batchv1.MetricSearchesByType, "literal", 19, 5))); err != nil {
		t.Fatalf("a later duplicate was judged: %v", err)
	}
	huge := []batchv1.Aggregate{cell(batchv1.MetricEventCount, catalogv1.SearchEvent, maxAudited+1, 10)}
	if err := Audit(context.Background(), catalogv1.Current(), huge); !errors.Is(err, errTooLarge) {
		t.Fatalf("a count beyond exact arithmetic: Audit = %v, want %v", err, errTooLarge)
	}
}

// BenchmarkAuditOfTheLargestBatch is the receiver's cost of the costliest aggregates batch it
// takes: the most days, each with one published count (every other cell an unknown) and the
// most version cells.
func BenchmarkAuditOfTheLargestBatch(b *testing.B) {
	var cells []batchv1.Aggregate
	for d := range batchv1.MaxAggregateDaysPerBatch {
		day := fmt.Sprintf("2026-10-%02d", 1+d)
		cells = append(cells, batchv1.Aggregate{Day: day, Metric: batchv1.MetricActiveUsers28d, Value: 1000, Users: 1000, Final: true})
		for v := range batchv1.MaxVersionCellsPerDay {
			cells = append(cells, batchv1.Aggregate{Day: day, Metric: batchv1.MetricInstanceVersion, Dimension: fmt.Sprintf("5.%d.%d", v/10, v%10),
				Value: 5 + int64(v), Users: 5 + int64(v), Final: true})
		}
	}
	for b.Loop() {
		if err := Audit(context.Background(), catalogv1.Current(), cells); err != nil {
			b.Fatal(err)
		}
	}
}
