/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package report_test

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/report"
)

// The report as it was before rollups: every answer computed from the raw events alone. The
// differential test holds the rollup-based answers to these.

// referenceReport computes every answer from raw events.
func referenceReport(ctx context.Context, db *pgxpool.Pool, o report.Options) ([]string, []report.Section, error) {
	o.Now = o.Now.UTC()
	if o.PowerUserDays <= 0 {
		o.PowerUserDays = 10
	}
	eventLevel, err := refInstances(ctx, db, "report_events", o.Instance)
	if err != nil {
		return nil, nil, err
	}
	names := catalogv1.Current().Names()
	sort.Strings(names)
	features := make([]string, len(names))
	for i, n := range names {
		features[i] = catalogv1.Current().FeatureOf(n)
	}
	var out []report.Section
	for _, step := range []func(context.Context, *pgxpool.Pool, report.Options, []string, []string) (report.Section, error){
		refSearches, refPowerUsers, refSessions, refIntervene, refSticky,
	} {
		s, err := step(ctx, db, o, names, features)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, s)
	}
	return eventLevel, out, nil
}

func refInstances(ctx context.Context, db *pgxpool.Pool, table, only string) ([]string, error) {
	rows, err := db.Query(ctx, "SELECT DISTINCT instance_id FROM "+pgx.Identifier{table}.Sanitize()+" WHERE $1 = '' OR instance_id = $1 ORDER BY 1", only)
	if err != nil {
		return nil, fmt.Errorf("listing instances: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// query runs sql and renders every column as text.
func refQuery(ctx context.Context, db *pgxpool.Pool, sql string, args ...any) ([][]string, error) {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, err
		}
		row := make([]string, len(vals))
		for i, v := range vals {
			switch x := v.(type) {
			case float64:
				row[i] = fmt.Sprintf("%.2f", x)
			case time.Time:
				row[i] = x.UTC().Format(time.DateOnly)
			case nil:
				row[i] = ""
			default:
				row[i] = fmt.Sprint(x)
			}
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

func refSearches(ctx context.Context, db *pgxpool.Pool, o report.Options, _, _ []string) (report.Section, error) {
	s := report.Section{Title: "Searches per user per month by pattern type", Definition: report.DefSearches,
		Columns: []string{"instance", "user", "month", "regexp", "literal", "other", "total"}}
	rows, err := refQuery(ctx, db, `
SELECT instance_id, user_id, to_char(date_trunc('month', ts AT TIME ZONE 'UTC'), 'YYYY-MM') AS month,
       count(*) FILTER (WHERE pattern_type = 'regexp'),
       count(*) FILTER (WHERE pattern_type = 'literal'),
       count(*) FILTER (WHERE coalesce(pattern_type, '') NOT IN ('regexp', 'literal')),
       count(*)
FROM report_events WHERE name = $1 AND ts <= $2 AND ($3 = '' OR instance_id = $3)
GROUP BY 1, 2, 3
UNION ALL
SELECT instance_id, '(all users, aggregate)', to_char(date_trunc('month', day), 'YYYY-MM'),
       coalesce(sum(value) FILTER (WHERE dimension = 'regexp'), 0)::bigint,
       coalesce(sum(value) FILTER (WHERE dimension = 'literal'), 0)::bigint,
       coalesce(sum(value) FILTER (WHERE dimension NOT IN ('regexp', 'literal')), 0)::bigint,
       coalesce(sum(value), 0)::bigint
FROM report_aggregates WHERE metric = 'searches_by_type' AND day <= $2::date AND ($3 = '' OR instance_id = $3)
  AND instance_id NOT IN (SELECT DISTINCT instance_id FROM report_events)
GROUP BY 1, 2, 3
ORDER BY 1, 3, 7 DESC, 2`, catalogv1.SearchEvent, o.Now, o.Instance)
	s.Rows = rows
	return s, err
}

func refPowerUsers(ctx context.Context, db *pgxpool.Pool, o report.Options, _, _ []string) (report.Section, error) {
	s := report.Section{Title: "Power users", Definition: fmt.Sprintf(report.DefPowerUsers, o.PowerUserDays),
		Columns: []string{"instance", "user", "active days (of 28)"}}
	rows, err := refQuery(ctx, db, `
SELECT instance_id, user_id, count(DISTINCT (ts AT TIME ZONE 'UTC')::date) AS days
FROM report_events WHERE ts > $1::timestamptz - interval '28 days' AND ts <= $1 AND ($2 = '' OR instance_id = $2)
GROUP BY 1, 2 HAVING count(DISTINCT (ts AT TIME ZONE 'UTC')::date) >= $3
ORDER BY 1, 3 DESC, 2`, o.Now, o.Instance, o.PowerUserDays)
	s.Rows = rows
	return s, err
}

func refSessions(ctx context.Context, db *pgxpool.Pool, o report.Options, names, features []string) (report.Section, error) {
	s := report.Section{Title: "Sessions using more than one feature", Definition: report.DefSessions,
		Columns: []string{"instance", "sessions", "multi-feature sessions", "share", "users with a multi-feature session"}}
	rows, err := refQuery(ctx, db, `
WITH f AS (
  SELECT e.instance_id, e.user_id, e.ts, fm.feature
  FROM report_events e JOIN unnest($1::text[], $2::text[]) AS fm(name, feature) ON fm.name = e.name
  WHERE e.ts > $3::timestamptz - interval '28 days' AND e.ts <= $3 AND ($4 = '' OR e.instance_id = $4)
), marked AS (
  SELECT *, CASE WHEN lag(ts) OVER w IS NULL OR ts - lag(ts) OVER w > interval '30 minutes' THEN 1 ELSE 0 END AS starts
  FROM f WINDOW w AS (PARTITION BY instance_id, user_id ORDER BY ts)
), numbered AS (
  SELECT *, sum(starts) OVER (PARTITION BY instance_id, user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS session FROM marked
), per_session AS (
  SELECT instance_id, user_id, session, count(DISTINCT feature) AS features FROM numbered GROUP BY 1, 2, 3
)
SELECT instance_id, count(*), count(*) FILTER (WHERE features > 1),
       round(count(*) FILTER (WHERE features > 1)::numeric / count(*), 3)::float8,
       count(DISTINCT user_id) FILTER (WHERE features > 1)
FROM per_session GROUP BY 1 ORDER BY 1`, names, features, o.Now, o.Instance)
	s.Rows = rows
	return s, err
}

func refIntervene(ctx context.Context, db *pgxpool.Pool, o report.Options, _, _ []string) (report.Section, error) {
	s := report.Section{Title: "Where to intervene", Definition: report.DefIntervene,
		Columns: []string{"instance", "user", "last 7 days", "weekly average, previous 4 weeks", "change"}}
	rows, err := refQuery(ctx, db, `
WITH activity AS (
  SELECT instance_id, user_id,
         count(*) FILTER (WHERE ts > $1::timestamptz - interval '7 days') AS last7,
         count(*) FILTER (WHERE ts <= $1::timestamptz - interval '7 days') / 4.0 AS prev_avg
  FROM report_events WHERE ts > $1::timestamptz - interval '35 days' AND ts <= $1 AND ($2 = '' OR instance_id = $2)
  GROUP BY GROUPING SETS ((instance_id, user_id), (instance_id))
), instance_aggregates AS (
  SELECT instance_id, NULL::text AS user_id,
         coalesce(sum(value) FILTER (WHERE day > ($1::timestamptz - interval '7 days')::date), 0) AS last7,
         coalesce(sum(value) FILTER (WHERE day <= ($1::timestamptz - interval '7 days')::date), 0) / 4.0 AS prev_avg
  FROM report_aggregates WHERE metric = 'event_count' AND day > ($1::timestamptz - interval '35 days')::date AND day <= $1::date
    AND ($2 = '' OR instance_id = $2) AND instance_id NOT IN (SELECT DISTINCT instance_id FROM report_events)
  GROUP BY 1
)
SELECT instance_id, coalesce(user_id, '(whole instance)'), last7::bigint, round(prev_avg, 2)::float8,
       round((last7 - prev_avg) / prev_avg * 100, 1)::float8 || '%'
FROM (SELECT * FROM activity UNION ALL SELECT * FROM instance_aggregates) a
WHERE prev_avg > 0 AND last7 <= prev_avg / 2
ORDER BY 1, user_id NULLS FIRST`, o.Now, o.Instance)
	s.Rows = rows
	return s, err
}

func refSticky(ctx context.Context, db *pgxpool.Pool, o report.Options, names, features []string) (report.Section, error) {
	s := report.Section{Title: "Stickiest features", Definition: report.DefSticky,
		Columns: []string{"feature", "users (week n)", "of whom used it again in week n+1", "share"}}
	rows, err := refQuery(ctx, db, `
WITH uw AS (
  SELECT DISTINCT e.instance_id, e.user_id, fm.feature, date_trunc('week', e.ts AT TIME ZONE 'UTC') AS wk
  FROM report_events e JOIN unnest($1::text[], $2::text[]) AS fm(name, feature) ON fm.name = e.name
  WHERE e.ts >= date_trunc('week', $3::timestamptz AT TIME ZONE 'UTC') - interval '8 weeks'
    AND e.ts < date_trunc('week', $3::timestamptz AT TIME ZONE 'UTC') AND ($4 = '' OR e.instance_id = $4)
)
SELECT a.feature, count(*), count(n.user_id), round(count(n.user_id)::numeric / count(*), 3)::float8
FROM uw a LEFT JOIN uw n ON n.instance_id = a.instance_id AND n.user_id = a.user_id AND n.feature = a.feature AND n.wk = a.wk + interval '1 week'
WHERE a.wk < date_trunc('week', $3::timestamptz AT TIME ZONE 'UTC') - interval '1 week'
GROUP BY 1 ORDER BY 4 DESC, 1`, names, features, o.Now, o.Instance)
	s.Rows = rows
	return s, err
}
