/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package disclosure is the disclosure audit of the CriticalOnly tier's aggregate cells: what
// someone who reads every cell published for an instance and day, and knows how the cells are
// defined, can infer about the cells that were not published. The collector withholds cells
// until a day passes it (collector/aggregate); the receiver, which trusts no collector to have
// done so, refuses a day that does not (Audit).
package disclosure

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// What someone who reads every cell published for an instance and day, and knows how the cells
// are defined, can infer about a suppressed cell. The definitions imply
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
// programming (simplex.go). A cell is protected when that bound is at least MinCellUsers:
// nobody can conclude that fewer than five users are behind it. Integer reasoning cannot do
// better than this bound once it is an integer, and it is rounded down before the comparison.

// listedUsers is the model's name for the distinct users of listed events that day: no cell
// publishes it, but every feature and version cell is bounded by it.
const listedUsers = "(listed users)"

// Cell names a cell within one day.
type Cell struct{ Metric, Dimension string }

// Model is the linear system over one day's cells.
type Model struct {
	// vars indexes the unknowns: a cell's users ("u") and, for event metrics, its events ("v").
	vars  map[varKey]int
	names []varKey
	// le rows are sum(coef*var) <= rhs; eq rows are sum(coef*var) == rhs.
	le, eq []row
	// unknownVersion is the unpublished version cell that stands for every unpublished one.
	unknownVersion *Cell
	// tooLarge is set when a published count exceeds maxAudited.
	tooLarge bool
	// contradiction is set when published cells break a relation among themselves.
	contradiction bool
}

// maxAudited is the largest count the audit judges. The programs are solved in floating
// point, exact for integers far beyond any instance-day's counts; a count near 2^53 would
// lose the units a differencing reader needs, and a verdict on it could be wrong.
const maxAudited = 1 << 32

type varKey struct {
	cell   Cell
	events bool
}

type row struct {
	coef map[int]float64
	rhs  float64
	// published are the published cells whose values were moved to the right-hand side.
	published []Cell
}

func (m *Model) v(k varKey) int {
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
func (m *Model) add(published map[Cell]batchv1.Aggregate, eq bool, rhs float64, terms ...term) {
	r := row{coef: map[int]float64{}, rhs: rhs}
	for _, t := range terms {
		if a, ok := published[t.key.cell]; ok {
			val := float64(a.Users)
			if t.key.events {
				val = float64(a.Value)
			}
			if val > maxAudited {
				m.tooLarge = true
			}
			r.rhs -= t.coef * val
			r.published = append(r.published, t.key.cell)
			continue
		}
		r.coef[m.v(t.key)] += t.coef
	}
	if len(r.coef) == 0 {
		// Only published cells: nothing to learn, but the relation must hold. Cells that
		// break one were not computed by their definitions, and nothing can be judged of them.
		if r.rhs < -1e-6 || eq && r.rhs > 1e-6 {
			m.contradiction = true
		}
		return
	}
	if eq {
		m.eq = append(m.eq, r)
	} else {
		m.le = append(m.le, r)
	}
}

// NewModel writes the relations among the cells of one day. cells are every cell computed
// for the day (published or not); published are those that will be published.
func NewModel(cat *catalogv1.Catalog, cells []batchv1.Aggregate, published map[Cell]batchv1.Aggregate) *Model {
	m := &Model{vars: map[varKey]int{}}
	u := func(metric, dim string) varKey { return varKey{Cell{metric, dim}, false} }
	e := func(metric, dim string) varKey { return varKey{Cell{metric, dim}, true} }
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
	// Of the published versions only the one with the most users bounds L (from below): the
	// others' relations follow from it, and leaving them out keeps the program's size
	// independent of how many versions a day publishes.
	var top *Cell
	for _, c := range cells {
		if c.Metric != batchv1.MetricInstanceVersion {
			continue
		}
		k := Cell{c.Metric, c.Dimension}
		if a, ok := published[k]; ok {
			if top == nil || a.Users > published[*top].Users {
				top = &k
			}
			continue
		}
		if m.unknownVersion != nil {
			continue
		}
		m.unknownVersion = &k
		m.add(published, false, 0, term{1, u(c.Metric, c.Dimension)}, term{-1, listed})
	}
	if top != nil {
		m.add(published, false, 0, term{1, u(top.Metric, top.Dimension)}, term{-1, listed})
	}
	m.add(published, false, 0, term{1, u(batchv1.MetricActiveUsers1d, "")}, term{-1, u(batchv1.MetricActiveUsers7d, "")})
	m.add(published, false, 0, term{1, u(batchv1.MetricActiveUsers7d, "")}, term{-1, u(batchv1.MetricActiveUsers28d, "")})
	return m
}

// errUndecided is returned when the linear program could not be solved (the published cells
// contradict one another); callers fail closed.
var errUndecided = errors.New("the disclosure audit could not be solved")

// errContradiction is returned for a day whose published cells break a relation among
// themselves; callers fail closed.
var errContradiction = errors.New("the published cells contradict their definitions")

// errTooLarge is returned for a day with a count above maxAudited; callers fail closed.
var errTooLarge = fmt.Errorf("a count above %d cannot be audited exactly", maxAudited)

// maxUsers is the largest number of users the cell k can have under the model (+Inf when
// nothing bounds it). Only the relations connected to k through unknowns matter, so the program
// is solved over that part of the model alone, in standard form (one slack per inequality).
func (m *Model) maxUsers(k Cell) (float64, error) {
	switch {
	case m.tooLarge:
		return 0, errTooLarge
	case m.contradiction:
		return 0, errContradiction
	}
	target, ok := m.vars[varKey{k, false}]
	if !ok {
		return math.Inf(1), nil // in no relation with anything published
	}
	opt, err := maximize(m.program(target))
	switch {
	case errors.Is(err, errUnbounded):
		return math.Inf(1), nil
	case err != nil:
		return 0, errUndecided
	}
	return opt, nil
}

// program is the linear program maximizing unknown v over the relations connected to it,
// with that component's unknowns numbered from 0: maximize's arguments.
func (m *Model) program(v int) (n int, c []float64, le, eq []row) {
	vars, le, eq := m.component(v)
	col := make(map[int]int, len(vars))
	for j, w := range vars {
		col[w] = j
	}
	renumber := func(rs []row) []row {
		out := make([]row, len(rs))
		for i, r := range rs {
			out[i] = row{coef: make(map[int]float64, len(r.coef)), rhs: r.rhs}
			for w, coef := range r.coef {
				out[i].coef[col[w]] = coef
			}
		}
		return out
	}
	c = make([]float64, len(vars))
	c[col[v]] = 1
	return len(vars), c, renumber(le), renumber(eq)
}

// component returns the unknowns connected to v through relations, and those relations.
func (m *Model) component(v int) (vars []int, le, eq []row) {
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

// Protected reports whether nobody can conclude from published that fewer than MinCellUsers
// users are behind cell k.
func (m *Model) Protected(k Cell) bool {
	hi, err := m.maxUsers(m.StandIn(k))
	if err != nil {
		return false
	}
	return math.Floor(hi+1e-6) >= batchv1.MinCellUsers
}

// StandIn is the cell of the model that stands for k: an unpublished version's is the one
// version standing for all.
func (m *Model) StandIn(k Cell) Cell {
	if k.Metric == batchv1.MetricInstanceVersion && m.unknownVersion != nil {
		return *m.unknownVersion
	}
	return k
}

// Related returns the published cells in a relation with cell k, directly or through unknowns,
// by distance: level 0 holds the cells in a relation with k itself, level 1 those in a relation
// with an unknown that is in one with k, and so on.
func (m *Model) Related(k Cell) [][]Cell {
	var levels [][]Cell
	seenCell := map[Cell]bool{}
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
		var level []Cell
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

// unpublishedVersion stands, in a model built from published cells alone, for every version
// that has no published cell: a reader cannot tell which versions were suppressed.
const unpublishedVersion = "(unpublished version)"

// Narrowed returns the first unpublished cell of the model (in the order the model names them)
// that a reader can narrow to between 1 and MinCellUsers-1 users, with that bound; ok is false
// when there is none. A reader cannot tell a suppressed cell from one nobody is behind, so
// every unpublished cell counts, not only those known to be suppressed; a bound of zero says
// that nobody is behind a cell, which discloses nobody. An error means the audit could not be
// solved: callers fail closed.
func (m *Model) Narrowed() (cell Cell, bound int, ok bool, err error) {
	var open []int
	for i, k := range m.names {
		if !k.events && k.cell.Metric != listedUsers {
			open = append(open, i)
		}
	}
	if !m.tooLarge && !m.contradiction {
		// Most cells are cleared by one program: an assignment under which they all reach
		// MinCellUsers at once proves each of them protected. The rest get one program each.
		// (A day with one published cell: 8 ms to 1.5 ms, BenchmarkAuditOfTheLargestBatch.)
		if x, err := m.reachTogether(open); err == nil {
			open = slices.DeleteFunc(open, func(v int) bool { return x[v] >= batchv1.MinCellUsers-1e-6 })
		}
	}
	for _, v := range open {
		k := m.names[v]
		hi, err := m.maxUsers(k.cell)
		if err != nil {
			return Cell{}, 0, false, err
		}
		if n := math.Floor(hi + 1e-6); n >= 1 && n < batchv1.MinCellUsers {
			return k.cell, int(n), true, nil
		}
	}
	return Cell{}, 0, false, nil
}

// reachTogether maximizes, over the whole model, the sum over cells of min(users,
// MinCellUsers) (each min an extra unknown y <= users, y <= MinCellUsers), and returns the
// assignment of the model's unknowns it found. An error (the model is infeasible somewhere, or
// the solver gave up) clears nothing: the cells are then judged one by one.
func (m *Model) reachTogether(cells []int) ([]float64, error) {
	n := len(m.names) + len(cells)
	c := make([]float64, n)
	le := slices.Clone(m.le)
	for j, v := range cells {
		y := len(m.names) + j
		c[y] = 1
		le = append(le, row{coef: map[int]float64{y: 1, v: -1}}, row{coef: map[int]float64{y: 1}, rhs: batchv1.MinCellUsers})
	}
	x, err := maximizeAt(n, c, le, m.eq)
	if err != nil {
		return nil, err
	}
	return x[:len(m.names)], nil
}

// NarrowedError is Audit's refusal: the cells published for Day let a reader conclude that
// between 1 and Bound users are behind Cell.
type NarrowedError struct {
	Day   string
	Cell  Cell
	Bound int
}

func (e *NarrowedError) Error() string {
	name := e.Cell.Metric
	if e.Cell.Dimension != "" {
		name += "/" + e.Cell.Dimension
	}
	return fmt.Sprintf("the cells of %s narrow %s to at most %d users (minimum %d): more cells must be withheld",
		e.Day, name, e.Bound, batchv1.MinCellUsers)
}

// UndecidedError is Audit's refusal of a day it could not judge: its cells contradict one
// another, or a count is beyond what the audit judges exactly.
type UndecidedError struct {
	Day string
	Err error
}

func (e *UndecidedError) Error() string { return fmt.Sprintf("the cells of %s: %v", e.Day, e.Err) }

func (e *UndecidedError) Unwrap() error { return e.Err }

// RefusedDay returns the day an error of Audit refuses, if it refuses one.
func RefusedDay(err error) (string, bool) {
	var narrowed *NarrowedError
	var undecided *UndecidedError
	switch {
	case errors.As(err, &narrowed):
		return narrowed.Day, true
	case errors.As(err, &undecided):
		return undecided.Day, true
	}
	return "", false
}

// Audit judges what a reader of cells learns, day by day, knowing nothing else: it refuses
// (with a *NarrowedError) a day whose cells narrow an unpublished cell below MinCellUsers
// users, and fails closed (with an *UndecidedError) when the audit cannot be solved. A day is published
// once and whole, so its cells are judged together; the first of two cells with the same
// metric and dimension counts, as it is the one stored.
func Audit(ctx context.Context, cat *catalogv1.Catalog, cells []batchv1.Aggregate) error {
	byDay := map[string]map[Cell]batchv1.Aggregate{}
	var days []string
	for _, c := range cells {
		day, ok := byDay[c.Day]
		if !ok {
			day = map[Cell]batchv1.Aggregate{}
			byDay[c.Day] = day
			days = append(days, c.Day)
		}
		if _, dup := day[Cell{c.Metric, c.Dimension}]; !dup {
			day[Cell{c.Metric, c.Dimension}] = c
		}
	}
	slices.Sort(days)
	for _, d := range days {
		if err := ctx.Err(); err != nil {
			return err // the client went away: judging the rest is wasted work
		}
		published := byDay[d]
		all := make([]batchv1.Aggregate, 0, len(published)+1)
		for _, c := range published {
			all = append(all, c)
		}
		slices.SortFunc(all, func(a, b batchv1.Aggregate) int {
			return cmp.Or(cmp.Compare(a.Metric, b.Metric), cmp.Compare(a.Dimension, b.Dimension))
		})
		all = append(all, batchv1.Aggregate{Day: d, Metric: batchv1.MetricInstanceVersion, Dimension: unpublishedVersion})
		cell, bound, ok, err := NewModel(cat, all, published).Narrowed()
		if err != nil {
			return &UndecidedError{Day: d, Err: err}
		}
		if ok {
			return &NarrowedError{Day: d, Cell: cell, Bound: bound}
		}
	}
	return nil
}
