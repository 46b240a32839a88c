/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package aggregate

import (
	"sort"
	"testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

func cell(metric, dim string, value, users int64) batchv1.Aggregate {
	return batchv1.Aggregate{Day: "2026-11-27", Metric: metric, Dimension: dim, Value: value, Users: users, Final: true}
}

func dims(cells []batchv1.Aggregate) []string {
	var out []string
	for _, c := range cells {
		out = append(out, c.Metric+"/"+c.Dimension)
	}
	sort.Strings(out)
	return out
}

func TestSuppress(t *testing.T) {
	cases := []struct {
		name           string
		in             []batchv1.Aggregate
		want           []string
		wantSuppressed int
	}{
		{"nothing small", []batchv1.Aggregate{cell("event_count", "a", 50, 10), cell("event_count", "b", 40, 8)},
			[]string{"event_count/a", "event_count/b"}, 0},
		{"one small cell takes the smallest other cell with it",
			[]batchv1.Aggregate{cell("event_count", "a", 50, 10), cell("event_count", "b", 40, 8), cell("event_count", "c", 7, 2), cell("event_count", "d", 90, 20)},
			[]string{"event_count/a", "event_count/d"}, 2},
		{"two small cells are enough on their own",
			[]batchv1.Aggregate{cell("searches_by_type", "literal", 50, 10), cell("searches_by_type", "regexp", 3, 1), cell("searches_by_type", "structural", 2, 1)},
			[]string{"searches_by_type/literal"}, 2},
		{"distinct-user metrics are not additive: no complementary suppression",
			[]batchv1.Aggregate{cell("feature_users", "search", 12, 12), cell("feature_users", "notebooks", 2, 2), cell("feature_users", "file_view", 9, 9)},
			[]string{"feature_users/file_view", "feature_users/search"}, 1},
		{"groups are per day and metric",
			[]batchv1.Aggregate{cell("event_count", "a", 3, 3), cell("event_count", "b", 30, 9), cell("instance_version", "5.3.0", 33, 10)},
			[]string{"instance_version/5.3.0"}, 2},
		{"a lone small cell", []batchv1.Aggregate{cell("active_users_1d", "", 4, 4)}, nil, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kept, n := Suppress(tc.in)
			if got := dims(kept); len(got) != len(tc.want) || (len(got) > 0 && !equal(got, tc.want)) || n != tc.wantSuppressed {
				t.Fatalf("kept %v (%d suppressed), want %v (%d)", got, n, tc.want, tc.wantSuppressed)
			}
			for _, c := range kept {
				if c.Users < batchv1.MinCellUsers {
					t.Fatalf("kept a cell of %d users", c.Users)
				}
			}
		})
	}
}

// TestSuppressedCellCannotBeRecovered: for every additive group with a hidden cell, the
// published total minus the published cells covers at least two hidden cells.
func TestSuppressedCellCannotBeRecovered(t *testing.T) {
	in := []batchv1.Aggregate{cell("event_count", "a", 100, 20), cell("event_count", "b", 60, 15), cell("event_count", "secret", 2, 1), cell("event_count", "c", 70, 12)}
	kept, _ := Suppress(in)
	hidden := map[string]bool{"a": true, "b": true, "secret": true, "c": true}
	for _, c := range kept {
		delete(hidden, c.Dimension)
	}
	if !hidden["secret"] || len(hidden) < 2 {
		t.Fatalf("hidden cells %v: the small cell could be derived by subtraction", hidden)
	}
}

func equal(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
