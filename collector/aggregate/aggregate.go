/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package aggregate

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// personExpr identifies a person inside the database only; no identifier ever leaves it. A
// signed-in row names its user; an anonymous row names the user a counted row links its
// anonymous id to (a person who browsed before signing in is one person, not two: counted as
// two, three people could fill a cell of five), else the anonymous id itself. Every cell of a
// day D takes its links from the counted rows of the 28 days ending with D, the widest window
// any of its cells counts: a browser signed in from on one day is that person in the day's own
// cells and in the 7- and 28-day cells of the days after, and each day's cells depend on its
// own 28 days only (never on which days were computed with it), so the 1-, 7- and 28-day counts
// of a day stay ordered. An anonymous id signed in from by several users (a shared browser,
// Sourcegraph's constant "backend" id) links to the one of its latest day of sign-in (the
// lowest-numbered on that day). All of the id's rows in a cell then become one user, whom the
// cell counts anyway or who takes the id's place, so a link never makes a count larger; and as
// that user signed in on the latest day, inside every window that also holds an earlier link,
// no cell counts more people than with links taken from each row's own day. (A link that
// appears only after D cannot be known when D closes: the anonymous rows count as their ids
// there.)
const personExpr = `CASE WHEN r.user_id <> 0 THEN 'u:' || r.user_id::text
  WHEN r.anonymous_user_id IN ('', '` + systemAnonymousID + `') THEN NULL
  WHEN l.user_id IS NOT NULL THEN 'u:' || l.user_id::text ELSE 'a:' || r.anonymous_user_id END`

// systemAnonymousID is the anonymous id Sourcegraph records its own (server-side) events under.
// A row with it and no user, or with neither id, is no person: it is counted in a cell's events
// and never among its users (counted as one, four people and a cron job would fill a cell of
// five; linked to whoever last signed in under the id, someone not there would).
const systemAnonymousID = "backend"

// MaxVersionCells bounds the instance_version cells of a day (the receiver refuses more).
const MaxVersionCells = batchv1.MaxVersionCellsPerDay

// Compute returns the cells of every closed UTC day in [from, to], unsuppressed, counting only
// events recorded inside periods (the windows in which the tier in force allowed aggregates).
// The cells of a day:
//
//   - event_count per listed event name: events, and the distinct users behind them;
//   - searches_by_type per pattern type, and "other" for the rest: SearchSubmitted events (they
//     add up to event_count[SearchSubmitted]), and their distinct users;
//   - feature_users per feature: distinct users of the feature's events;
//   - instance_version per release version: distinct users of listed events on it, only for
//     versions with at least MinCellUsers users, the MaxVersionCells most used. A smaller
//     version cell is never computed: its only relation is to the day's users of listed events,
//     which published cells always leave at least MinCellUsers wide, so it needs no audit, and
//     a database holding a million distinct versions costs neither memory nor audit time;
//   - active_users_1d/7d/28d: distinct users with any event that day or in the 7 or 28 days
//     ending with it.
//
// A user is a person as personExpr tells them apart, from the counted rows only. Every cell is
// final: only closed days are computed.
func Compute(ctx context.Context, db *pgxpool.Pool, from, to time.Time, periods []consentv1.Window) ([]batchv1.Aggregate, error) {
	names := catalogv1.Current().Names()
	sort.Strings(names)
	var featureCase strings.Builder
	featureCase.WriteString("CASE name")
	args := []any{from.Format(time.DateOnly), to.Format(time.DateOnly), names}
	for _, n := range names {
		args = append(args, n, catalogv1.Current().FeatureOf(n))
		fmt.Fprintf(&featureCase, " WHEN $%d THEN $%d", len(args)-1, len(args))
	}
	featureCase.WriteString(" END")
	args = append(args, catalogv1.PatternTypes)
	ptArg := len(args)
	starts, ends := make([]time.Time, len(periods)), make([]time.Time, len(periods))
	for i, w := range periods {
		starts[i], ends[i] = w.Start, time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
		if w.End != nil {
			ends[i] = *w.End
		}
	}
	args = append(args, starts, ends)
	periodArgs := fmt.Sprintf("$%d::timestamptz[], $%d::timestamptz[]", len(args)-1, len(args))

	query := `
WITH counted AS (
  SELECT (timestamp AT TIME ZONE 'UTC')::date AS day, name, user_id, anonymous_user_id,
         public_argument->>'patternType' AS pt, left(version, 64) AS version
  FROM event_logs
  WHERE timestamp >= (($1::date - 27)::timestamp AT TIME ZONE 'UTC') AND timestamp < (($2::date + 1)::timestamp AT TIME ZONE 'UTC')
    AND EXISTS (SELECT 1 FROM unnest(` + periodArgs + `) AS w(s, e) WHERE timestamp >= w.s AND timestamp < w.e)
),
ids AS (SELECT DISTINCT day, user_id, anonymous_user_id FROM counted),
days AS (SELECT d::date AS day FROM generate_series($1::date, $2::date, '1 day') d),
links AS (
  SELECT DISTINCT ON (d.day, i.anonymous_user_id) d.day, i.anonymous_user_id, i.user_id
  FROM days d JOIN ids i ON i.day > d.day - 28 AND i.day <= d.day
  WHERE i.user_id <> 0 AND i.anonymous_user_id <> ''
  ORDER BY d.day, i.anonymous_user_id, i.day DESC, i.user_id
),
ev AS (
  SELECT r.day, r.name, ` + personExpr + ` AS u, r.pt, r.version
  FROM counted r LEFT JOIN links l ON r.user_id = 0 AND l.day = r.day AND l.anonymous_user_id = r.anonymous_user_id
  WHERE r.day >= $1::date
),
ud AS (
  SELECT DISTINCT d.day AS d, r.day, ` + personExpr + ` AS u
  FROM days d JOIN ids r ON r.day > d.day - 28 AND r.day <= d.day
  LEFT JOIN links l ON r.user_id = 0 AND l.day = d.day AND l.anonymous_user_id = r.anonymous_user_id
)
SELECT day::text, metric, dim, value, users FROM (
  SELECT day, 'event_count' AS metric, name AS dim, count(*) AS value, count(DISTINCT u) AS users
    FROM ev WHERE day >= $1::date AND name = ANY($3) GROUP BY day, name
  UNION ALL
  SELECT day, 'instance_version', version, users, users FROM (
    SELECT day, version, count(DISTINCT u) AS users,
           row_number() OVER (PARTITION BY day ORDER BY count(DISTINCT u) DESC, version) AS rank
    FROM ev WHERE day >= $1::date AND name = ANY($3) AND version ~ '^[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,5}(-[a-z]+\.[0-9]{1,2})?$' GROUP BY day, version
  ) v WHERE users >= ` + fmt.Sprint(batchv1.MinCellUsers) + ` AND rank <= ` + fmt.Sprint(MaxVersionCells) + `
  UNION ALL
  SELECT day, 'searches_by_type', CASE WHEN pt = ANY($` + fmt.Sprint(ptArg) + `) THEN pt ELSE '` + catalogv1.OtherPatternType + `' END, count(*), count(DISTINCT u)
    FROM ev WHERE day >= $1::date AND name = '` + catalogv1.SearchEvent + `' GROUP BY day, 3
  UNION ALL
  SELECT day, 'feature_users', ` + featureCase.String() + `, count(DISTINCT u), count(DISTINCT u)
    FROM ev WHERE day >= $1::date AND name = ANY($3) GROUP BY day, 2, 3
  UNION ALL
  SELECT days.day, 'active_users_1d', '', count(DISTINCT ud.u) FILTER (WHERE ud.day = days.day), count(DISTINCT ud.u) FILTER (WHERE ud.day = days.day)
    FROM days LEFT JOIN ud ON ud.d = days.day GROUP BY days.day
  UNION ALL
  SELECT days.day, 'active_users_7d', '', count(DISTINCT ud.u) FILTER (WHERE ud.day > days.day - 7), count(DISTINCT ud.u) FILTER (WHERE ud.day > days.day - 7)
    FROM days LEFT JOIN ud ON ud.d = days.day GROUP BY days.day
  UNION ALL
  SELECT days.day, 'active_users_28d', '', count(DISTINCT ud.u), count(DISTINCT ud.u)
    FROM days LEFT JOIN ud ON ud.d = days.day GROUP BY days.day
) cells ORDER BY 1, 3, 4`
	rows, err := db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("computing aggregates: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchv1.Aggregate, error) {
		a := batchv1.Aggregate{Final: true}
		err := row.Scan(&a.Day, &a.Metric, &a.Dimension, &a.Value, &a.Users)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("computing aggregates: %w", err)
	}
	// The SQL pre-filters versions by format; the catalog's check decides what leaves.
	kept := out[:0]
	for _, a := range out {
		if a.Metric == batchv1.MetricInstanceVersion && !catalogv1.Current().ProductVersion(a.Dimension) {
			continue
		}
		kept = append(kept, a)
	}
	return kept, nil
}
