/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package aggregatetest is test support for the CriticalOnly aggregates, kept apart from the
// code that ships: random instance-days of events, the cells their definitions give (computed
// here in Go, independently of the SQL in aggregate.Compute), and an attacker who bounds what a
// suppressed cell can hold from every cell published for the day (a linear program written
// independently of the collector's own disclosure audit).
package aggregatetest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"gonum.org/v1/gonum/mat"
	"gonum.org/v1/gonum/optimize/convex/lp"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// Event is one event_logs row of a day, as far as the aggregates see it.
type Event struct {
	User        int
	Name        string // listed or not
	Version     string // a release version or anything else
	PatternType string // SearchSubmitted only; "" when absent
}

// Day is one instance-day: its events, and how many users were active in the 6 and 27 days
// before it who were not active on it (for the 7- and 28-day counts).
type Day struct {
	Date                    string
	Events                  []Event
	EarlierIn7, EarlierIn28 int
}

// unlisted are event names an instance records that the catalog does not list.
var unlisted = []string{"UserSignedUp", "PasswordChanged", "ViewRepository"}

// junkPatternTypes are pattern types outside the catalog's list (they count as "other").
var junkPatternTypes = []string{"", "keywords", "Literal", "alice"}

// Random returns a day with few users, names drawn with a heavy skew (a handful of names carry
// most events, as in real instances), and many versions, some outside the release format.
func Random(rng *rand.Rand, date string) Day {
	cat := catalogv1.Current()
	names := append(cat.Names(), unlisted...)
	slices.Sort(names)
	rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	zipf := rand.NewZipf(rng, 1.3, 1, uint64(len(names)-1))
	versions := []string{"5.3.0"}
	for range rng.IntN(12) {
		switch rng.IntN(4) {
		case 0:
			versions = append(versions, fmt.Sprintf("5.%d.%d-rc.%d", rng.IntN(4), rng.IntN(3), rng.IntN(3)))
		case 1:
			versions = append(versions, fmt.Sprintf("5.%d.%d-beta.%d", rng.IntN(4), rng.IntN(3), rng.IntN(3)))
		case 2:
			versions = append(versions, []string{"dev", "5.3.0-alice", "0.0.0+dirty", ""}[rng.IntN(4)])
		default:
			versions = append(versions, fmt.Sprintf("%d.%d.%d", 4+rng.IntN(2), rng.IntN(6), rng.IntN(4)))
		}
	}
	// Pattern types are skewed too: most searches are literal, a few use the rest.
	patterns := append(slices.Clone(catalogv1.PatternTypes), junkPatternTypes...)
	patternZipf := rand.NewZipf(rng, 1.5, 1, uint64(len(patterns)-1))
	d := Day{Date: date, EarlierIn7: rng.IntN(4), EarlierIn28: rng.IntN(6)}
	users := 1 + rng.IntN(15)
	if rng.IntN(2) == 0 {
		users = 1 + rng.IntN(40) // still few, but enough for some cells to be published
	}
	for u := 1; u <= users; u++ {
		version := versions[rng.IntN(len(versions))]
		for range rng.IntN(25) {
			e := Event{User: u, Name: names[zipf.Uint64()], Version: version}
			if rng.IntN(10) == 0 {
				e.Version = versions[rng.IntN(len(versions))] // upgraded during the day
			}
			if e.Name == catalogv1.SearchEvent {
				e.PatternType = patterns[patternZipf.Uint64()]
			}
			d.Events = append(d.Events, e)
		}
	}
	return d
}

// Cells computes the day's cells from their definitions (the collector README's table): every
// cell with at least one event or user, unsuppressed.
func Cells(d Day) []batchv1.Aggregate {
	cat := catalogv1.Current()
	type acc struct {
		events int64
		users  map[int]bool
	}
	cells := map[[2]string]*acc{}
	add := func(metric, dim string, user int) {
		k := [2]string{metric, dim}
		if cells[k] == nil {
			cells[k] = &acc{users: map[int]bool{}}
		}
		cells[k].events++
		cells[k].users[user] = true
	}
	active := map[int]bool{}
	for _, e := range d.Events {
		active[e.User] = true
		if _, listed := cat.Lookup(e.Name); !listed {
			continue
		}
		add(batchv1.MetricEventCount, e.Name, e.User)
		add(batchv1.MetricFeatureUsers, cat.FeatureOf(e.Name), e.User)
		if cat.ProductVersion(e.Version) {
			add(batchv1.MetricInstanceVersion, e.Version, e.User)
		}
		if e.Name == catalogv1.SearchEvent {
			pt := e.PatternType
			if !slices.Contains(catalogv1.PatternTypes, pt) {
				pt = catalogv1.OtherPatternType
			}
			add(batchv1.MetricSearchesByType, pt, e.User)
		}
	}
	var out []batchv1.Aggregate
	for k, a := range cells {
		c := batchv1.Aggregate{Day: d.Date, Metric: k[0], Dimension: k[1], Value: a.events, Users: int64(len(a.users)), Final: true}
		if !batchv1.CountsEvents(c.Metric) {
			c.Value = c.Users
		}
		out = append(out, c)
	}
	n := int64(len(active))
	if n > 0 {
		for _, c := range []struct {
			metric string
			users  int64
		}{
			{batchv1.MetricActiveUsers1d, n},
			{batchv1.MetricActiveUsers7d, n + int64(d.EarlierIn7)},
			{batchv1.MetricActiveUsers28d, n + int64(d.EarlierIn7+d.EarlierIn28)},
		} {
			out = append(out, batchv1.Aggregate{Day: d.Date, Metric: c.metric, Value: c.users, Users: c.users, Final: true})
		}
	}
	Sort(out)
	return out
}

// Sort orders cells by day, metric and dimension.
func Sort(cells []batchv1.Aggregate) {
	slices.SortFunc(cells, func(a, b batchv1.Aggregate) int {
		if a.Day != b.Day {
			return compare(a.Day, b.Day)
		}
		if a.Metric != b.Metric {
			return compare(a.Metric, b.Metric)
		}
		return compare(a.Dimension, b.Dimension)
	})
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Cell names a cell of one day.
type Cell struct{ Metric, Dimension string }

// Attacker knows how the cells are defined, the catalog, which versions the instance ran that
// day, and every cell published for the day. It bounds each unpublished cell by linear
// programming over the relations the definitions imply.
type Attacker struct {
	Published []batchv1.Aggregate
	// Versions are the release versions with a cell that day, published or not.
	Versions []string
}

// The attacker's unknowns: a value and a users count per event-counting cell, a users count per
// user-counting cell, and L, the day's users of listed events.
type lpVar struct {
	cell   Cell
	events bool
}

// ErrInfeasible means the relations admit no values at all: the published cells contradict the
// definitions (a wrong relation in the attacker, or a wrong cell).
var ErrInfeasible = errors.New("the published cells contradict the definitions")

// MaxUsers returns the largest number of users the cell can have given everything published
// (+Inf when nothing bounds it).
func (a *Attacker) MaxUsers(target Cell) (float64, error) {
	cat := catalogv1.Current()
	names := cat.Names()
	slices.Sort(names)
	pts := append(slices.Clone(catalogv1.PatternTypes), catalogv1.OtherPatternType)
	index := map[lpVar]int{}
	v := func(metric, dim string, events bool) int {
		k := lpVar{Cell{metric, dim}, events}
		if i, ok := index[k]; ok {
			return i
		}
		index[k] = len(index)
		return index[k]
	}
	type constraint struct {
		coef map[int]float64
		rhs  float64
	}
	var le, eq []constraint
	// lessEq: sum(coef*var) <= 0, written as pairs.
	lessEq := func(terms ...any) {
		c := constraint{coef: map[int]float64{}}
		for i := 0; i < len(terms); i += 2 {
			c.coef[terms[i+1].(int)] += terms[i].(float64)
		}
		le = append(le, c)
	}
	ec := func(n string, events bool) int { return v(batchv1.MetricEventCount, n, events) }
	sbt := func(pt string, events bool) int { return v(batchv1.MetricSearchesByType, pt, events) }
	fu := func(f string) int { return v(batchv1.MetricFeatureUsers, f, false) }
	a1, a7, a28 := v(batchv1.MetricActiveUsers1d, "", false), v(batchv1.MetricActiveUsers7d, "", false), v(batchv1.MetricActiveUsers28d, "", false)
	listed := v("(listed users)", "", false)

	for _, n := range names {
		lessEq(1.0, ec(n, false), -1.0, ec(n, true)) // users <= events
	}
	partition := constraint{coef: map[int]float64{ec(catalogv1.SearchEvent, true): -1}}
	atLeast := []any{1.0, ec(catalogv1.SearchEvent, false)}
	for _, pt := range pts {
		lessEq(1.0, sbt(pt, false), -1.0, sbt(pt, true))
		lessEq(1.0, sbt(pt, false), -1.0, ec(catalogv1.SearchEvent, false)) // a subset of the searchers
		partition.coef[sbt(pt, true)] = 1
		atLeast = append(atLeast, -1.0, sbt(pt, false)) // together, every searcher
	}
	eq = append(eq, partition)
	lessEq(atLeast...)
	sumFeatures := []any{1.0, listed}
	for _, f := range cat.Features() {
		sum := []any{1.0, fu(f)}
		for _, n := range names {
			if cat.FeatureOf(n) == f {
				lessEq(1.0, ec(n, false), -1.0, fu(f))
				sum = append(sum, -1.0, ec(n, false))
			}
		}
		lessEq(sum...)
		lessEq(1.0, fu(f), -1.0, listed)
		sumFeatures = append(sumFeatures, -1.0, fu(f))
	}
	lessEq(sumFeatures...)
	lessEq(1.0, listed, -1.0, a1)
	for _, ver := range a.Versions {
		lessEq(1.0, v(batchv1.MetricInstanceVersion, ver, false), -1.0, listed)
	}
	lessEq(1.0, a1, -1.0, a7)
	lessEq(1.0, a7, -1.0, a28)
	// What is published is known exactly: substitute it.
	known := map[int]float64{}
	for _, c := range a.Published {
		known[v(c.Metric, c.Dimension, false)] = float64(c.Users)
		if batchv1.CountsEvents(c.Metric) {
			known[v(c.Metric, c.Dimension, true)] = float64(c.Value)
		}
	}
	t, ok := index[lpVar{target, false}]
	if !ok || len(a.Published) == 0 {
		return math.Inf(1), nil
	}
	if x, ok := known[t]; ok {
		return x, nil
	}
	substitute := func(cs []constraint) []constraint {
		var out []constraint
		for _, c := range cs {
			r := constraint{coef: map[int]float64{}, rhs: c.rhs}
			for j, x := range c.coef {
				if val, ok := known[j]; ok {
					r.rhs -= x * val
				} else {
					r.coef[j] = x
				}
			}
			out = append(out, r)
		}
		return out
	}
	le, eq = substitute(le), substitute(eq)
	// Relations among published cells only must hold, or the cells contradict the definitions.
	for _, c := range le {
		if len(c.coef) == 0 && c.rhs < -1e-9 {
			return 0, ErrInfeasible
		}
	}
	for _, c := range eq {
		if len(c.coef) == 0 && math.Abs(c.rhs) > 1e-9 {
			return 0, ErrInfeasible
		}
	}
	// Only what is connected to the target through unknowns bounds it.
	inComponent := map[int]bool{t: true}
	used := map[*constraint]bool{}
	for grew := true; grew; {
		grew = false
		for _, cs := range [][]constraint{le, eq} {
			for i := range cs {
				c := &cs[i]
				if used[c] {
					continue
				}
				touches := false
				for j := range c.coef {
					touches = touches || inComponent[j]
				}
				if !touches {
					continue
				}
				used[c], grew = true, true
				for j := range c.coef {
					inComponent[j] = true
				}
			}
		}
	}
	var cols []int
	for j := range inComponent {
		cols = append(cols, j)
	}
	slices.Sort(cols)
	colOf := map[int]int{}
	for i, j := range cols {
		colOf[j] = i
	}
	var rowsLE, rowsEQ []constraint
	for i := range le {
		if used[&le[i]] {
			rowsLE = append(rowsLE, le[i])
		}
	}
	for i := range eq {
		if used[&eq[i]] {
			rowsEQ = append(rowsEQ, eq[i])
		}
	}
	if len(rowsLE)+len(rowsEQ) == 0 {
		return math.Inf(1), nil
	}
	// Standard form: one slack per inequality; every count is at least 0.
	n := len(cols) + len(rowsLE)
	A := mat.NewDense(len(rowsLE)+len(rowsEQ), n, nil)
	b := make([]float64, len(rowsLE)+len(rowsEQ))
	for i, c := range append(rowsLE, rowsEQ...) {
		for j, x := range c.coef {
			A.Set(i, colOf[j], x)
		}
		if i < len(rowsLE) {
			A.Set(i, len(cols)+i, 1)
		}
		b[i] = c.rhs
	}
	obj := make([]float64, n)
	obj[colOf[t]] = -1
	opt, _, err := lp.Simplex(obj, A, b, 1e-10, nil)
	switch {
	case errors.Is(err, lp.ErrUnbounded):
		return math.Inf(1), nil
	case errors.Is(err, lp.ErrInfeasible):
		return 0, ErrInfeasible
	case err != nil:
		return 0, err
	}
	return -opt, nil
}

// Isolated reports the cells of truth (a day's cells, unsuppressed) that were not published and
// that the attacker can bound below MinCellUsers users although users are behind them, with the
// bound; and an error if the attacker's relations are contradicted by the truth itself (then
// the attacker is wrong, not the suppression).
func Isolated(truth, published []batchv1.Aggregate) (map[Cell]float64, error) {
	a := &Attacker{Published: published}
	isPublished := map[Cell]bool{}
	for _, c := range published {
		isPublished[Cell{c.Metric, c.Dimension}] = true
	}
	for _, c := range truth {
		if c.Metric == batchv1.MetricInstanceVersion {
			a.Versions = append(a.Versions, c.Dimension)
		}
	}
	out := map[Cell]float64{}
	for _, c := range truth {
		k := Cell{c.Metric, c.Dimension}
		if isPublished[k] || c.Users == 0 {
			continue
		}
		hi, err := a.MaxUsers(k)
		if err != nil {
			return nil, fmt.Errorf("bounding %s/%s: %w", k.Metric, k.Dimension, err)
		}
		if hi+1e-6 < float64(c.Users) {
			return nil, fmt.Errorf("the attacker bounds %s/%s by %.2f users but it has %d: a relation is wrong", k.Metric, k.Dimension, hi, c.Users)
		}
		if math.Floor(hi+1e-6) < batchv1.MinCellUsers {
			out[k] = hi
		}
	}
	return out, nil
}
