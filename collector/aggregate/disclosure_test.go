/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package aggregate

import (
	"fmt"
	"testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// TestManyVersionsKeepTheAuditSmall: an instance database can hold any number of distinct
// versions; the audit's program must not grow with them (every unknown version has the same
// single relation), or a hostile database could stall publication.
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
		published := map[cellKey]batchv1.Aggregate{}
		for _, c := range cells {
			if c.Users >= batchv1.MinCellUsers {
				published[cellKey{c.Metric, c.Dimension}] = c
			}
		}
		m := buildModel(catalogv1.Current(), cells, published)
		return len(m.names)
	}
	if few, many := size(day(3)), size(day(5000)); few != many {
		t.Fatalf("the program has %d unknowns with 3 small versions and %d with 5000", few, many)
	}
	kept, withheld := Suppress(day(5000))
	for _, c := range kept {
		if c.Users < batchv1.MinCellUsers {
			t.Fatalf("published %+v", c)
		}
	}
	if withheld < 5000 {
		t.Fatalf("withheld %d cells, want at least the 5000 small versions", withheld)
	}
}
