/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package disclosure

import (
	"errors"
	"math"
)

// The audit's programs are small (tens of rows and unknowns) and many (one per unpublished
// cell, every day of every batch a receiver takes). gonum's simplex refactorizes its basis at
// every pivot: ~136 ms to audit one random instance-day, which would let a collector keep a
// receiver busy. This dense two-phase tableau with Bland's rule solves the same programs in a
// fraction of that: ~2.4 ms a day one program per cell, ~0.8 ms with Narrowed's joint clearing
// (BenchmarkAudit in collector/aggregate); TestSimplexAgreesWithGonum holds it to gonum on
// random programs of the audit's shape.

var (
	errInfeasible = errors.New("infeasible")
	errUnbounded  = errors.New("unbounded")
	errUnsolved   = errors.New("no optimum within the pivot bound")
)

// eps is the tolerance below which a tableau entry counts as zero.
const eps = 1e-9

// maximize returns max c·x subject to le rows (coef·x <= rhs), eq rows (coef·x == rhs) and
// x >= 0, over n unknowns. It returns errUnbounded or errInfeasible when there is no maximum.
func maximize(n int, c []float64, le, eq []row) (float64, error) {
	opt, _, err := simplex(n, c, le, eq)
	return opt, err
}

// maximizeAt is maximize, returning where the maximum is reached instead.
func maximizeAt(n int, c []float64, le, eq []row) ([]float64, error) {
	_, x, err := simplex(n, c, le, eq)
	return x, err
}

func simplex(n int, c []float64, le, eq []row) (float64, []float64, error) {
	m := len(le) + len(eq)
	// Columns: the n unknowns, one slack or surplus per inequality, one artificial per row
	// that has no slack to start the basis with; then the right-hand side.
	nSlack := len(le)
	nArt := 0
	type prepared struct {
		coef  map[int]float64
		rhs   float64
		sign  float64 // -1 when the row was negated to make its right-hand side non-negative
		slack int     // slack column, or -1 for equalities
	}
	rows := make([]prepared, 0, m)
	for i, r := range le {
		p := prepared{coef: r.coef, rhs: r.rhs, sign: 1, slack: n + i}
		if r.rhs < 0 {
			p.sign, p.rhs = -1, -r.rhs
			nArt++ // its slack enters with -1: a surplus cannot start the basis
		}
		rows = append(rows, p)
	}
	for _, r := range eq {
		p := prepared{coef: r.coef, rhs: r.rhs, sign: 1, slack: -1}
		if r.rhs < 0 {
			p.sign, p.rhs = -1, -r.rhs
		}
		nArt++
		rows = append(rows, p)
	}
	artStart := n + nSlack
	width := artStart + nArt + 1
	rhs := width - 1
	t := make([][]float64, m)
	basis := make([]int, m)
	art := artStart
	for i, p := range rows {
		t[i] = make([]float64, width)
		for v, coef := range p.coef {
			t[i][v] = p.sign * coef
		}
		t[i][rhs] = p.rhs
		if p.slack >= 0 {
			t[i][p.slack] = p.sign
		}
		if p.slack >= 0 && p.sign > 0 {
			basis[i] = p.slack
			continue
		}
		t[i][art] = 1
		basis[i] = art
		art++
	}
	// Phase 1: minimize the artificials (maximize their negated sum).
	if nArt > 0 {
		obj := make([]float64, width)
		for j := artStart; j < artStart+nArt; j++ {
			obj[j] = -1
		}
		val, err := solve(t, basis, obj, width-1)
		if err != nil {
			return 0, nil, err
		}
		if val < -1e-7 {
			return 0, nil, errInfeasible
		}
		// Pivot out artificials left in the basis at zero, or drop their rows: redundant.
		for i := 0; i < len(t); i++ {
			if basis[i] < artStart {
				continue
			}
			col := -1
			for j := range artStart {
				if math.Abs(t[i][j]) > eps {
					col = j
					break
				}
			}
			if col < 0 {
				t = append(t[:i], t[i+1:]...)
				basis = append(basis[:i], basis[i+1:]...)
				i--
				continue
			}
			pivot(t, i, col)
			basis[i] = col
		}
	}
	obj := make([]float64, width)
	copy(obj, c)
	opt, err := solve(t, basis, obj, artStart)
	if err != nil {
		return 0, nil, err
	}
	x := make([]float64, n)
	for i, b := range basis {
		if b < n {
			x[b] = t[i][width-1]
		}
	}
	return opt, x, nil
}

// solve runs the simplex from a feasible basis, maximizing obj·x with entering columns below
// limit, and returns the optimum.
func solve(t [][]float64, basis []int, obj []float64, limit int) (float64, error) {
	rhs := len(obj) - 1
	// Reduced costs: obj minus the basic variables' objective times their rows.
	red := make([]float64, len(obj))
	copy(red, obj)
	for i, b := range basis {
		if cb := obj[b]; cb != 0 {
			for j := range red {
				red[j] -= cb * t[i][j]
			}
		}
	}
	// Bland's rule cannot cycle; the bound guards against a numerical pathology all the same.
	for pivots := 0; ; pivots++ {
		if pivots > 50*(len(t)+len(obj)) {
			return 0, errUnsolved
		}
		enter := -1
		for j := range limit { // Bland: the lowest improving column
			if red[j] > eps {
				enter = j
				break
			}
		}
		if enter < 0 {
			return -red[rhs], nil
		}
		leave := -1
		best := math.Inf(1)
		for i := range t {
			if a := t[i][enter]; a > eps {
				r := t[i][rhs] / a
				if r < best-eps || (r <= best+eps && leave >= 0 && basis[i] < basis[leave]) {
					best, leave = r, i
				}
			}
		}
		if leave < 0 {
			return 0, errUnbounded
		}
		pivot(t, leave, enter)
		basis[leave] = enter
		if f := red[enter]; f != 0 {
			for j := range red {
				red[j] -= f * t[leave][j]
			}
		}
	}
}

// pivot makes column col a unit column with its one in row r.
func pivot(t [][]float64, r, col int) {
	p := t[r][col]
	for j := range t[r] {
		t[r][j] /= p
	}
	for i := range t {
		if i == r {
			continue
		}
		if f := t[i][col]; f != 0 {
			for j := range t[i] {
				t[i][j] -= f * t[r][j]
			}
		}
	}
}
