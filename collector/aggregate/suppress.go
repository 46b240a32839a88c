/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package aggregate computes the CriticalOnly tier's anonymous daily counts from event_logs and
// suppresses small cells: a cell with fewer than 5 distinct users is never sent, and in groups
// whose cells add up to a published total a second cell is suppressed too (complementary
// suppression), so a suppressed value cannot be recovered by subtraction.
package aggregate

import (
	"sort"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

// additive metrics: within a day their cells sum to a total that can be derived elsewhere
// (event_count and instance_version both sum to the day's allow-listed events; searches_by_type
// sums to the SearchSubmitted count).
var additive = map[string]bool{
	batchv1.MetricEventCount:      true,
	batchv1.MetricInstanceVersion: true,
	batchv1.MetricSearchesByType:  true,
}

// Suppress removes cells with fewer than batchv1.MinCellUsers distinct users, then applies
// complementary suppression in additive groups. It returns the cells kept and how many were
// suppressed.
func Suppress(cells []batchv1.Aggregate) ([]batchv1.Aggregate, int) {
	type key struct{ day, metric string }
	groups := map[key][]int{}
	suppressed := make([]bool, len(cells))
	for i, c := range cells {
		if c.Users < batchv1.MinCellUsers {
			suppressed[i] = true
		}
		if additive[c.Metric] {
			k := key{c.Day, c.Metric}
			groups[k] = append(groups[k], i)
		}
	}
	for _, idx := range groups {
		n := 0
		for _, i := range idx {
			if suppressed[i] {
				n++
			}
		}
		if n != 1 {
			continue // none hidden, or already at least two unknowns
		}
		// Exactly one hidden cell would equal total minus the rest: hide the smallest other one.
		var rest []int
		for _, i := range idx {
			if !suppressed[i] {
				rest = append(rest, i)
			}
		}
		if len(rest) == 0 {
			continue
		}
		sort.Slice(rest, func(a, b int) bool {
			if cells[rest[a]].Value != cells[rest[b]].Value {
				return cells[rest[a]].Value < cells[rest[b]].Value
			}
			return cells[rest[a]].Dimension < cells[rest[b]].Dimension
		})
		suppressed[rest[0]] = true
	}
	kept := make([]batchv1.Aggregate, 0, len(cells))
	count := 0
	for i, c := range cells {
		if suppressed[i] {
			count++
			continue
		}
		kept = append(kept, c)
	}
	return kept, count
}
