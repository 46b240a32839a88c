/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package disclosure

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"
	"gonum.org/v1/gonum/optimize/convex/lp"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	"github.com/sourcegraph/telemetry-operator/collector/aggregate/aggregatetest"
)

// gonumMaximize is the reference: the same program through gonum's simplex.
func gonumMaximize(n int, c []float64, le, eq []row) (float64, error) {
	cols := n + len(le)
	a := mat.NewDense(len(le)+len(eq), cols, nil)
	b := make([]float64, len(le)+len(eq))
	for i, r := range append(append([]row{}, le...), eq...) {
		for v, coef := range r.coef {
			a.Set(i, v, coef)
		}
		if i < len(le) {
			a.Set(i, n+i, 1)
		}
		b[i] = r.rhs
	}
	obj := make([]float64, cols)
	for j := range c {
		obj[j] = -c[j]
	}
	opt, _, err := lp.Simplex(obj, a, b, 1e-10, nil)
	switch {
	case errors.Is(err, lp.ErrUnbounded):
		return 0, errUnbounded
	case errors.Is(err, lp.ErrInfeasible):
		return 0, errInfeasible
	case err != nil:
		return 0, err
	}
	return -opt, nil
}

// agree fails the test unless both solvers reach the same verdict on one program.
func agree(t *testing.T, what string, n int, c []float64, le, eq []row) (unbounded, infeasible bool) {
	t.Helper()
	got, err := maximize(n, c, le, eq)
	want, wantErr := gonumMaximize(n, c, le, eq)
	if errors.Is(wantErr, errUnbounded) && errors.Is(err, errInfeasible) {
		// gonum can call an infeasible program unbounded: ask it about feasibility alone.
		_, wantErr = gonumMaximize(n, make([]float64, n), le, eq)
	}
	if errors.Is(wantErr, lp.ErrSingular) || errors.Is(wantErr, lp.ErrZeroColumn) || errors.Is(wantErr, lp.ErrZeroRow) {
		return false, false // gonum refuses the program's form, not its content: nothing to compare
	}
	switch {
	case wantErr != nil || err != nil:
		if !errors.Is(err, wantErr) {
			t.Fatalf("%s: maximize says %v (%v), gonum %v (%v)\nc %v\nle %v\neq %v", what, got, err, want, wantErr, c, le, eq)
		}
	case math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)):
		t.Fatalf("%s: maximize says %v, gonum %v", what, got, want)
	}
	return errors.Is(err, errUnbounded), errors.Is(err, errInfeasible)
}

// TestSimplexAgreesWithGonum holds the audit's solver to gonum's on the programs the audit
// builds (random instance-days, random choices of published cells, some of them lies that make
// the program infeasible) and on random dense programs, counting each verdict so that the
// test fails if it stops exercising one.
func TestSimplexAgreesWithGonum(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 2026))
	cat := catalogv1.Current()
	var bounded, unbounded, infeasible int
	tally := func(u, inf bool) {
		switch {
		case u:
			unbounded++
		case inf:
			infeasible++
		default:
			bounded++
		}
	}
	for i := range 20 {
		truth := aggregatetest.Cells(aggregatetest.Random(rng, "2026-10-14"))
		published := map[Cell]batchv1.Aggregate{}
		for _, c := range truth {
			if c.Users >= batchv1.MinCellUsers && rng.IntN(10) < 8 {
				if rng.IntN(40) == 0 { // a lying collector
					c.Users, c.Value = c.Users+rng.Int64N(30), c.Value+rng.Int64N(30)
				}
				published[Cell{c.Metric, c.Dimension}] = c
			}
		}
		m := NewModel(cat, truth, published)
		for v := range m.names {
			n, c, le, eq := m.program(v)
			tally(agree(t, fmt.Sprintf("day %d, %v", i, m.names[v]), n, c, le, eq))
		}
	}
	if bounded == 0 || unbounded == 0 {
		t.Fatalf("the audit's programs: bounded %d, unbounded %d: a verdict was never compared", bounded, unbounded)
	}
	for i := range 3000 {
		n := 1 + rng.IntN(6)
		rows := func(k int) []row {
			out := make([]row, k)
			for r := range out {
				out[r] = row{coef: map[int]float64{}, rhs: float64(rng.IntN(21) - 6)}
				for v := range n {
					if k := rng.IntN(7) - 3; k != 0 && rng.IntN(2) == 0 {
						out[r].coef[v] = float64(k)
					}
				}
			}
			return out
		}
		c := make([]float64, n)
		for j := range c {
			c[j] = float64(rng.IntN(5) - 1)
		}
		tally(agree(t, fmt.Sprintf("random program %d", i), n, c, rows(1+rng.IntN(5)), rows(rng.IntN(2))))
	}
	t.Logf("bounded %d, unbounded %d, infeasible %d", bounded, unbounded, infeasible)
	if bounded == 0 || unbounded == 0 || infeasible == 0 {
		t.Fatal("a verdict was never reached: the comparison does not cover it")
	}
}

// TestClearingTogetherChangesNoVerdict: Narrowed clears most cells with one program; its
// verdict must be the one a program per cell gives, on the audit's own random days (published
// cells chosen at random, so that some days narrow a cell and some do not).
func TestClearingTogetherChangesNoVerdict(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 2026))
	cat := catalogv1.Current()
	narrowed := 0
	for i := range 300 {
		truth := aggregatetest.Cells(aggregatetest.Random(rng, "2026-10-14"))
		published := map[Cell]batchv1.Aggregate{}
		for _, c := range truth {
			if c.Users >= batchv1.MinCellUsers && rng.IntN(10) < 7 {
				published[Cell{c.Metric, c.Dimension}] = c
			}
		}
		m := NewModel(cat, truth, published)
		cell, bound, ok, err := m.Narrowed()
		var want Cell
		var wantBound int
		var wantOK bool
		for _, k := range m.names {
			if k.events || k.cell.Metric == listedUsers {
				continue
			}
			hi, err := m.maxUsers(k.cell)
			if err != nil {
				t.Fatalf("day %d: %v", i, err)
			}
			if n := math.Floor(hi + 1e-6); n >= 1 && n < batchv1.MinCellUsers {
				want, wantBound, wantOK = k.cell, int(n), true
				break
			}
		}
		if err != nil || ok != wantOK || cell != want || bound != wantBound {
			t.Fatalf("day %d: Narrowed = %v %d %v %v, one program per cell: %v %d %v", i, cell, bound, ok, err, want, wantBound, wantOK)
		}
		if ok {
			narrowed++
		}
	}
	t.Logf("300 days, %d narrowed", narrowed)
	if narrowed == 0 {
		t.Fatal("no day narrowed a cell: the comparison says nothing about refusals")
	}
}
