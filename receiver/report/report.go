/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package report answers the product questions the telemetry exists for, from the receiver's
// stored data. Every answer carries its definition. Instances that sent only CriticalOnly
// aggregates get what aggregates allow, and the report says which answers need EventLevel.
package report

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// Options scope and tune the report.
type Options struct {
	// Instance limits the report to one instance; empty means fleet-wide.
	Instance string
	// Now is the end of every window (default: the current time).
	Now time.Time
	// PowerUserDays: a power user is active on at least this many of the last 28 days.
	PowerUserDays int
	// Limit bounds rows per table in text output (JSON always has every row).
	Limit int
}

// Section is one answer.
type Section struct {
	Title      string     `json:"title"`
	Definition string     `json:"definition"`
	Columns    []string   `json:"columns"`
	Rows       [][]string `json:"rows"`
	// NeedsEventLevel lists CriticalOnly instances this answer cannot cover.
	NeedsEventLevel []string `json:"needsEventLevel,omitempty"`
}

// Report is every answer.
type Report struct {
	GeneratedAt time.Time `json:"generatedAt"`
	Scope       string    `json:"scope"`
	// EventLevel and CriticalOnly list the instances by the kind of data they sent.
	EventLevel   []string  `json:"eventLevelInstances"`
	CriticalOnly []string  `json:"criticalOnlyInstances"`
	Sections     []Section `json:"sections"`
}

// Definitions, written next to the answers they define.
const (
	DefSearches = "Searches are SearchSubmitted events; pattern type from the event's patternType property: " +
		"regexp, literal, and others (standard, structural, keyword, lucky, or none). Counted per pseudonymous user per UTC month. " +
		"CriticalOnly instances: the same counts per instance from the daily searches_by_type aggregates (no per-user rows)."
	DefPowerUsers = "A power user is active (sent any allow-listed event) on at least %d distinct UTC days of the 28 days ending at the report time."
	DefSessions   = "A session is a user's run of events with no gap longer than 30 minutes. Features by event name: " +
		"search (Search*, search.latencies.*), code_navigation (goToDefinition, findReferences, hover, codeintel.*), " +
		"file_view (ViewBlob), notebooks (SearchNotebook*). Window: the last 28 days."
	DefIntervene = "Activity is the number of allow-listed events. Flagged when activity in the last 7 days is at most half " +
		"the weekly average of the 4 weeks before (days 8-35 back), and that average is above zero. Users need EventLevel; " +
		"instances use events (EventLevel) or the daily event_count aggregates (CriticalOnly)."
	DefSticky = "For each feature and each complete ISO week of the last 8, the share of the feature's users in that week who " +
		"use it again the next week; summed over weeks (retained users / users)."
)

// Build computes the report.
func Build(ctx context.Context, db *pgxpool.Pool, o Options) (*Report, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	o.Now = o.Now.UTC()
	if o.PowerUserDays <= 0 {
		o.PowerUserDays = 10
	}
	r := &Report{GeneratedAt: o.Now, Scope: "fleet"}
	if o.Instance != "" {
		r.Scope = "instance " + o.Instance
	}
	var err error
	if r.EventLevel, err = instances(ctx, db, "report_events", o.Instance); err != nil {
		return nil, err
	}
	aggOnly, err := instances(ctx, db, "report_aggregates", o.Instance)
	if err != nil {
		return nil, err
	}
	for _, i := range aggOnly {
		if !contains(r.EventLevel, i) {
			r.CriticalOnly = append(r.CriticalOnly, i)
		}
	}
	names, features := featureArrays()
	steps := []func(context.Context, *pgxpool.Pool, Options, []string, []string) (Section, error){
		searches, powerUsers, sessions, intervene, sticky,
	}
	for _, step := range steps {
		s, err := step(ctx, db, o, names, features)
		if err != nil {
			return nil, err
		}
		r.Sections = append(r.Sections, s)
	}
	for i := range r.Sections {
		if r.Sections[i].Title != "Searches per user per month by pattern type" && r.Sections[i].Title != "Where to intervene" {
			r.Sections[i].NeedsEventLevel = r.CriticalOnly
		}
	}
	return r, nil
}

func featureArrays() ([]string, []string) {
	names := catalogv1.Current().Names()
	sort.Strings(names)
	features := make([]string, len(names))
	for i, n := range names {
		features[i] = catalogv1.Current().FeatureOf(n)
	}
	return names, features
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func instances(ctx context.Context, db *pgxpool.Pool, table, only string) ([]string, error) {
	rows, err := db.Query(ctx, "SELECT DISTINCT instance_id FROM "+pgx.Identifier{table}.Sanitize()+" WHERE $1 = '' OR instance_id = $1 ORDER BY 1", only)
	if err != nil {
		return nil, fmt.Errorf("listing instances: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// query runs sql and renders every column as text.
func query(ctx context.Context, db *pgxpool.Pool, sql string, args ...any) ([][]string, error) {
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

func searches(ctx context.Context, db *pgxpool.Pool, o Options, _, _ []string) (Section, error) {
	s := Section{Title: "Searches per user per month by pattern type", Definition: DefSearches,
		Columns: []string{"instance", "user", "month", "regexp", "literal", "other", "total"}}
	rows, err := query(ctx, db, `
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

func powerUsers(ctx context.Context, db *pgxpool.Pool, o Options, _, _ []string) (Section, error) {
	s := Section{Title: "Power users", Definition: fmt.Sprintf(DefPowerUsers, o.PowerUserDays),
		Columns: []string{"instance", "user", "active days (of 28)"}}
	rows, err := query(ctx, db, `
SELECT instance_id, user_id, count(DISTINCT (ts AT TIME ZONE 'UTC')::date) AS days
FROM report_events WHERE ts > $1::timestamptz - interval '28 days' AND ts <= $1 AND ($2 = '' OR instance_id = $2)
GROUP BY 1, 2 HAVING count(DISTINCT (ts AT TIME ZONE 'UTC')::date) >= $3
ORDER BY 1, 3 DESC, 2`, o.Now, o.Instance, o.PowerUserDays)
	s.Rows = rows
	return s, err
}

func sessions(ctx context.Context, db *pgxpool.Pool, o Options, names, features []string) (Section, error) {
	s := Section{Title: "Sessions using more than one feature", Definition: DefSessions,
		Columns: []string{"instance", "sessions", "multi-feature sessions", "share", "users with a multi-feature session"}}
	rows, err := query(ctx, db, `
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

func intervene(ctx context.Context, db *pgxpool.Pool, o Options, _, _ []string) (Section, error) {
	s := Section{Title: "Where to intervene", Definition: DefIntervene,
		Columns: []string{"instance", "user", "last 7 days", "weekly average, previous 4 weeks", "change"}}
	rows, err := query(ctx, db, `
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

func sticky(ctx context.Context, db *pgxpool.Pool, o Options, names, features []string) (Section, error) {
	s := Section{Title: "Stickiest features", Definition: DefSticky,
		Columns: []string{"feature", "users (week n)", "of whom used it again in week n+1", "share"}}
	rows, err := query(ctx, db, `
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

// WriteJSON writes the whole report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes readable tables, each under its definition, at most limit rows each.
func (r *Report) WriteText(w io.Writer, limit int) error {
	if limit <= 0 {
		limit = 20
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Telemetry report (%s), generated %s\n", r.Scope, r.GeneratedAt.Format(time.RFC3339))
	fmt.Fprintf(&b, "EventLevel instances: %s\nCriticalOnly instances: %s\n", list(r.EventLevel), list(r.CriticalOnly))
	for _, s := range r.Sections {
		fmt.Fprintf(&b, "\n== %s ==\n%s\n\n", s.Title, wrap(s.Definition, 100))
		tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, strings.Join(s.Columns, "\t"))
		for i, row := range s.Rows {
			if i == limit {
				fmt.Fprintf(tw, "… %d more rows (use --format json for all)\n", len(s.Rows)-limit)
				break
			}
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		if len(s.Rows) == 0 {
			fmt.Fprintln(tw, "(none)")
		}
		_ = tw.Flush()
		if len(s.NeedsEventLevel) > 0 {
			fmt.Fprintf(&b, "Needs EventLevel, not answerable from aggregates for: %s\n", list(s.NeedsEventLevel))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func list(s []string) string {
	if len(s) == 0 {
		return "(none)"
	}
	return strings.Join(s, ", ")
}

func wrap(s string, width int) string {
	var b strings.Builder
	line := 0
	for _, word := range strings.Fields(s) {
		if line > 0 && line+len(word)+1 > width {
			b.WriteString("\n")
			line = 0
		} else if line > 0 {
			b.WriteString(" ")
			line++
		}
		b.WriteString(word)
		line += len(word)
	}
	return b.String()
}
