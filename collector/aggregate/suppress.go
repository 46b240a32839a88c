/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package aggregate computes the CriticalOnly tier's anonymous daily counts from event_logs and
// decides which may be published. A cell with fewer than 5 distinct users is never published
// (primary suppression), and more cells are withheld until no suppressed cell can be narrowed
// below 5 users from everything published for the instance and day together (secondary
// suppression, judged by the disclosure audit, internal/disclosure, which the receiver runs
// too). Only closed days are
// published, each once: no two publications of a day can be differenced.
package aggregate

import (
	"cmp"
	"slices"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	"github.com/sourcegraph/telemetry-operator/internal/disclosure"
)

// Suppress returns the cells that may be published and how many were withheld. Per day: cells
// with fewer than MinCellUsers users are suppressed; then, while the disclosure audit shows that
// a suppressed cell with users behind it could be narrowed below MinCellUsers users, one more
// published cell in a relation with it is suppressed: among the nearest such cells (directly in
// a relation with it, else through the fewest unknowns), the one with the fewest users, ties
// broken by metric and dimension so the outcome is deterministic. If the audit cannot be solved,
// the whole day is withheld.
func Suppress(cells []batchv1.Aggregate) ([]batchv1.Aggregate, int) {
	byDay := map[string][]batchv1.Aggregate{}
	var days []string
	for _, c := range cells {
		if _, ok := byDay[c.Day]; !ok {
			days = append(days, c.Day)
		}
		byDay[c.Day] = append(byDay[c.Day], c)
	}
	slices.Sort(days)
	var kept []batchv1.Aggregate
	withheld := 0
	for _, d := range days {
		k, n := suppressDay(catalogv1.Current(), byDay[d])
		kept = append(kept, k...)
		withheld += n
	}
	return kept, withheld
}

// suppressDay decides one day's cells.
func suppressDay(cat *catalogv1.Catalog, cells []batchv1.Aggregate) ([]batchv1.Aggregate, int) {
	published := map[disclosure.Cell]batchv1.Aggregate{}
	var sensitive []disclosure.Cell // suppressed cells with users behind them
	for _, c := range cells {
		k := disclosure.Cell{Metric: c.Metric, Dimension: c.Dimension}
		switch {
		case c.Users >= batchv1.MinCellUsers:
			published[k] = c
		case c.Users > 0:
			sensitive = append(sensitive, k)
		}
	}
	for len(published) > 0 {
		m := disclosure.NewModel(cat, cells, published)
		var exposed *disclosure.Cell
		checked := map[disclosure.Cell]bool{}
		for _, k := range sensitive {
			k = m.StandIn(k) // one audit for the cells one stands for
			if checked[k] {
				continue
			}
			checked[k] = true
			if !m.Protected(k) {
				exposed = &k
				break
			}
		}
		if exposed == nil {
			// The receiver judges from the published cells alone, where a cell nobody is behind
			// looks like a suppressed one: a day it would refuse is not sent.
			k, _, narrowed, err := m.Narrowed()
			if err != nil {
				published = map[disclosure.Cell]batchv1.Aggregate{}
				break
			}
			if !narrowed {
				break
			}
			exposed = &k
		}
		levels := m.Related(*exposed)
		if len(levels) == 0 {
			// Exposed by nothing it shares a relation with (the audit failed): withhold all.
			published = map[disclosure.Cell]batchv1.Aggregate{}
			break
		}
		candidates := levels[0]
		slices.SortFunc(candidates, func(a, b disclosure.Cell) int {
			return cmp.Or(cmp.Compare(published[a].Users, published[b].Users), cmp.Compare(a.Metric, b.Metric), cmp.Compare(a.Dimension, b.Dimension))
		})
		// A complementary cell has at least MinCellUsers users: its own bound is at least that.
		delete(published, candidates[0])
	}
	out := make([]batchv1.Aggregate, 0, len(published))
	for _, c := range cells {
		if _, ok := published[disclosure.Cell{Metric: c.Metric, Dimension: c.Dimension}]; ok {
			out = append(out, c)
		}
	}
	return out, len(cells) - len(out)
}
