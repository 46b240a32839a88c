/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package aggregate

import (
	"errors"
	"math"
	"slices"

	"gonum.org/v1/gonum/mat"
	"gonum.org/v1/gonum/optimize/convex/lp"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// The disclosure audit: what someone who reads every cell published for an instance and day,
// and knows how the cells are defined, can infer about a suppressed cell. The definitions imply
// linear relations among the cells' values (events) and users (distinct users):
//
//   - a cell's users never exceed its events;
//   - searches_by_type partitions the day's SearchSubmitted events (with an "other" bucket), so
//     its events add up to event_count[SearchSubmitted]'s, and its users are each at most, and
//     together at least, that cell's users;
//   - a feature's users are at least the users of each of its events' cells, and at most their
//     sum; the users of listed events (every listed event belongs to a feature) are at least each
//     feature's, at most their sum and at most the day's active users, and at least each
//     version's;
//   - active users over 1 day are at most those over 7 days, which are at most those over 28.
//
// Published cells are fixed; every other cell of a dimension the catalog lists (suppressed, or
// absent because nobody did it: a reader cannot tell) is an unknown, non-negative quantity. The
// largest number of users a suppressed cell can have under these relations is found by linear
// programming (gonum's simplex). A cell is protected when that bound is at least MinCellUsers:
// nobody can conclude that fewer than five users are behind it. Integer reasoning cannot do
// better than this bound once it is an integer, and it is rounded down before the comparison.

// listedUsers is the model's name for the distinct users of listed events that day: no cell
// publishes it, but every feature and version cell is bounded by it.
const listedUsers = "(listed users)"

// cellKey names a cell within one day.
type cellKey struct{ metric, dim string }

// model is the linear system over one day's cells.
type model struct {
	// vars indexes the unknowns: a cell's users ("u") and, for event metrics, its events ("v").
	vars  map[varKey]int
	names []varKey
	// le rows are sum(coef*var) <= rhs; eq rows are sum(coef*var) == rhs.
	le, eq []row
	// unknownVersion is the unpublished version cell that stands for every unpublished one.
	unknownVersion *cellKey
}

type varKey struct {
	cell   cellKey
	events bool
}

type row struct {
	coef map[int]float64
	rhs  float64
	// published are the published cells whose values were moved to the right-hand side.
	published []cellKey
}

func (m *model) v(k varKey) int {
	if i, ok := m.vars[k]; ok {
		return i
	}
	m.vars[k] = len(m.names)
	m.names = append(m.names, k)
	return len(m.names) - 1
}

// term is a coefficient on a variable, or a constant when the cell is published.
type term struct {
	coef float64
	key  varKey
}

// add records sum(terms) <= rhs (or == when eq), moving published cells' values to the right.
func (m *model) add(published map[cellKey]batchv1.Aggregate, eq bool, rhs float64, terms ...term) {
	r := row{coef: map[int]float64{}, rhs: rhs}
	for _, t := range terms {
		if a, ok := published[t.key.cell]; ok {
			val := float64(a.Users)
			if t.key.events {
				val = float64(a.Value)
			}
			r.rhs -= t.coef * val
			r.published = append(r.published, t.key.cell)
			continue
		}
		r.coef[m.v(t.key)] += t.coef
	}
	if len(r.coef) == 0 {
		return // only published cells: nothing to learn
	}
	if eq {
		m.eq = append(m.eq, r)
	} else {
		m.le = append(m.le, r)
	}
}

// buildModel writes the relations among the cells of one day. cells are every cell computed
// for the day (published or not); published are those that will be published.
func buildModel(cat *catalogv1.Catalog, cells []batchv1.Aggregate, published map[cellKey]batchv1.Aggregate) *model {
	m := &model{vars: map[varKey]int{}}
	u := func(metric, dim string) varKey { return varKey{cellKey{metric, dim}, false} }
	e := func(metric, dim string) varKey { return varKey{cellKey{metric, dim}, true} }
	pts := append(slices.Clone(catalogv1.PatternTypes), catalogv1.OtherPatternType)
	names := cat.Names()
	// Users never exceed events.
	for _, n := range names {
		m.add(published, false, 0, term{1, u(batchv1.MetricEventCount, n)}, term{-1, e(batchv1.MetricEventCount, n)})
	}
	for _, pt := range pts {
		m.add(published, false, 0, term{1, u(batchv1.MetricSearchesByType, pt)}, term{-1, e(batchv1.MetricSearchesByType, pt)})
	}
	// searches_by_type partitions the SearchSubmitted events.
	partition := []term{{-1, e(batchv1.MetricEventCount, catalogv1.SearchEvent)}}
	cover := []term{{1, u(batchv1.MetricEventCount, catalogv1.SearchEvent)}}
	for _, pt := range pts {
		partition = append(partition, term{1, e(batchv1.MetricSearchesByType, pt)})
		cover = append(cover, term{-1, u(batchv1.MetricSearchesByType, pt)})
		m.add(published, false, 0, term{1, u(batchv1.MetricSearchesByType, pt)}, term{-1, u(batchv1.MetricEventCount, catalogv1.SearchEvent)})
	}
	m.add(published, true, 0, partition...)
	m.add(published, false, 0, cover...)
	// Features: at least each event's users and at most their sum. Every listed event belongs to
	// a feature, so the users of listed events (L, never published) are at least each feature's,
	// at most their sum, and at most the day's active users.
	listed := u(listedUsers, "")
	features := []term{{1, listed}}
	for _, f := range cat.Features() {
		sum := []term{{1, u(batchv1.MetricFeatureUsers, f)}}
		for _, n := range names {
			if cat.FeatureOf(n) != f {
				continue
			}
			m.add(published, false, 0, term{1, u(batchv1.MetricEventCount, n)}, term{-1, u(batchv1.MetricFeatureUsers, f)})
			sum = append(sum, term{-1, u(batchv1.MetricEventCount, n)})
		}
		m.add(published, false, 0, sum...)
		m.add(published, false, 0, term{1, u(batchv1.MetricFeatureUsers, f)}, term{-1, listed})
		features = append(features, term{-1, u(batchv1.MetricFeatureUsers, f)})
	}
	m.add(published, false, 0, features...)
	m.add(published, false, 0, term{1, listed}, term{-1, u(batchv1.MetricActiveUsers1d, "")})
	// Versions: at most L. (Their sum is not at least L: a version outside the release format
	// has no cell, nor has one with few users.) That is an unknown version's only relation, so
	// every unknown version has the same bound, and one of them stands for all: the program stays
	// small however many versions a day has.
	for _, c := range cells {
		if c.Metric != batchv1.MetricInstanceVersion {
			continue
		}
		k := cellKey{c.Metric, c.Dimension}
		if _, ok := published[k]; !ok {
			if m.unknownVersion != nil {
				continue
			}
			m.unknownVersion = &k
		}
		m.add(published, false, 0, term{1, u(c.Metric, c.Dimension)}, term{-1, listed})
	}
	m.add(published, false, 0, term{1, u(batchv1.MetricActiveUsers1d, "")}, term{-1, u(batchv1.MetricActiveUsers7d, "")})
	m.add(published, false, 0, term{1, u(batchv1.MetricActiveUsers7d, "")}, term{-1, u(batchv1.MetricActiveUsers28d, "")})
	return m
}

// errUndecided is returned when the linear program could not be solved; callers fail closed.
var errUndecided = errors.New("the disclosure audit could not be solved")

// maxUsers is the largest number of users the cell k can have under the model (+Inf when
// nothing bounds it). Only the relations connected to k through unknowns matter, so the program
// is solved over that part of the model alone, in standard form (one slack per inequality).
func (m *model) maxUsers(k cellKey) (float64, error) {
	target, ok := m.vars[varKey{k, false}]
	if !ok {
		return math.Inf(1), nil // in no relation with anything published
	}
	vars, le, eq := m.component(target)
	col := make(map[int]int, len(vars))
	for j, v := range vars {
		col[v] = j
	}
	n := len(vars) + len(le)
	a := mat.NewDense(len(le)+len(eq), n, nil)
	b := make([]float64, len(le)+len(eq))
	for i, r := range append(le, eq...) {
		for v, coef := range r.coef {
			a.Set(i, col[v], coef)
		}
		if i < len(le) {
			a.Set(i, len(vars)+i, 1) // slack
		}
		b[i] = r.rhs
	}
	c := make([]float64, n)
	c[col[target]] = -1 // maximize
	opt, _, err := lp.Simplex(c, a, b, 1e-10, nil)
	switch {
	case errors.Is(err, lp.ErrUnbounded):
		return math.Inf(1), nil
	case err != nil:
		return 0, errUndecided
	}
	return -opt, nil
}

// component returns the unknowns connected to v through relations, and those relations.
func (m *model) component(v int) (vars []int, le, eq []row) {
	seen := map[int]bool{v: true}
	vars = []int{v}
	usedLE, usedEQ := make([]bool, len(m.le)), make([]bool, len(m.eq))
	for i := 0; i < len(vars); i++ {
		for _, rs := range []struct {
			rows []row
			used []bool
		}{{m.le, usedLE}, {m.eq, usedEQ}} {
			for ri, r := range rs.rows {
				if _, in := r.coef[vars[i]]; !in || rs.used[ri] {
					continue
				}
				rs.used[ri] = true
				for w := range r.coef {
					if !seen[w] {
						seen[w] = true
						vars = append(vars, w)
					}
				}
			}
		}
	}
	slices.Sort(vars) // the same program every time, so the same outcome
	for ri, r := range m.le {
		if usedLE[ri] {
			le = append(le, r)
		}
	}
	for ri, r := range m.eq {
		if usedEQ[ri] {
			eq = append(eq, r)
		}
	}
	return vars, le, eq
}

// protected reports whether nobody can conclude from published that fewer than MinCellUsers
// users are behind cell k.
func protected(m *model, k cellKey) bool {
	hi, err := m.maxUsers(m.standIn(k))
	if err != nil {
		return false
	}
	return math.Floor(hi+1e-6) >= batchv1.MinCellUsers
}

// standIn is the cell of the model that stands for k: an unpublished version's is the one
// version standing for all.
func (m *model) standIn(k cellKey) cellKey {
	if k.metric == batchv1.MetricInstanceVersion && m.unknownVersion != nil {
		return *m.unknownVersion
	}
	return k
}

// related returns the published cells in a relation with cell k, directly or through unknowns,
// by distance: level 0 holds the cells in a relation with k itself, level 1 those in a relation
// with an unknown that is in one with k, and so on.
func (m *model) related(k cellKey) [][]cellKey {
	var levels [][]cellKey
	seenCell := map[cellKey]bool{}
	seenVar := map[int]bool{}
	var frontier []int
	for _, key := range []varKey{{k, false}, {k, true}} {
		if i, ok := m.vars[key]; ok {
			frontier = append(frontier, i)
			seenVar[i] = true
		}
	}
	seenRow := map[*row]bool{}
	for len(frontier) > 0 {
		var next []int
		var level []cellKey
		for _, rows := range [][]row{m.le, m.eq} {
			for ri := range rows {
				r := &rows[ri]
				if seenRow[r] || !slices.ContainsFunc(frontier, func(i int) bool { _, in := r.coef[i]; return in }) {
					continue
				}
				seenRow[r] = true
				for _, p := range r.published {
					if !seenCell[p] {
						seenCell[p] = true
						level = append(level, p)
					}
				}
				for j := range r.coef {
					if !seenVar[j] {
						seenVar[j] = true
						next = append(next, j)
					}
				}
			}
		}
		if len(level) > 0 {
			levels = append(levels, level)
		}
		frontier = next
	}
	return levels
}
