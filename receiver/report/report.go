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
	"errors"
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
	// Took is how long the answer took to compute.
	Took time.Duration `json:"-"`
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

// RefreshRollups records the catalog's feature map (queueing every day to be summarized again
// when it changed) and then summarizes every queued day, one short transaction at a time. It
// returns how many instance-days it summarized. The receiver runs it hourly, as the ingest role:
// the reporting role may only refresh with the map the receiver recorded.
func RefreshRollups(ctx context.Context, db *pgxpool.Pool) (int64, error) {
	names, features := featureArrays()
	if _, err := db.Exec(ctx, `SELECT set_report_feature_map($1, $2, $3)`, catalogv1.SearchEvent, names, features); err != nil {
		return 0, fmt.Errorf("recording the report's feature map: %w", err)
	}
	return refreshQueued(ctx, db)
}

// refreshQueued summarizes every queued day, one transaction per day.
func refreshQueued(ctx context.Context, db *pgxpool.Pool) (int64, error) {
	var total int64
	for {
		var n int64
		if err := db.QueryRow(ctx, `SELECT refresh_report_rollups()`).Scan(&n); err != nil {
			return total, fmt.Errorf("refreshing the report's rollups: %w", err)
		}
		if n == 0 {
			return total, nil
		}
		total += n
	}
}

// ErrRollupsNotReady: the rollups were not built with this report's catalog.
var ErrRollupsNotReady = errors.New("the receiver has not summarized its events for this report's event catalog yet " +
	"(its hourly maintenance does, at start and every hour): run the report from the receiver's release, or wait for its maintenance")

// checkFeatureMap makes sure the rollups were computed with this report's feature map.
func checkFeatureMap(ctx context.Context, db *pgxpool.Pool) error {
	names, features := featureArrays()
	var same bool
	err := db.QueryRow(ctx, `SELECT search_event = $1 AND names = $2 AND features = $3 FROM report_feature_map`,
		catalogv1.SearchEvent, names, features).Scan(&same)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !same) {
		return ErrRollupsNotReady
	}
	return err
}

// window is the time range (from, to] an answer covers, split into the whole UTC days it holds,
// [first, end), read from the rollups, and the partial days at its edges, read from the events
// themselves (when first >= end, the window holds no whole day and is read from events alone).
type window struct{ from, to, first, end time.Time }

const day = 24 * time.Hour

func newWindow(from, to time.Time) window {
	from, to = from.UTC(), to.UTC()
	return window{from: from, to: to, first: from.Truncate(day).Add(day), end: to.Truncate(day)}
}

// edges is the SQL condition on ts (column of alias) selecting the window's partial days, with
// the window as parameters from, to, first, end. Each side is a plain range, so PostgreSQL reads
// only the partitions of those days.
func edges(alias string, from, to, first, end int) string {
	ts := alias + "ts"
	return fmt.Sprintf(`((%[1]s > $%[2]d AND %[1]s < $%[4]d AND %[1]s <= $%[3]d) OR (%[1]s >= GREATEST($%[5]d, $%[4]d) AND %[1]s > $%[2]d AND %[1]s <= $%[3]d))`,
		ts, from, to, first, end)
}

// Build computes the report.
func Build(ctx context.Context, db *pgxpool.Pool, o Options) (*Report, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	o.Now = o.Now.UTC()
	if o.PowerUserDays <= 0 {
		o.PowerUserDays = 10
	}
	if err := checkFeatureMap(ctx, db); err != nil {
		return nil, err
	}
	if _, err := refreshQueued(ctx, db); err != nil {
		return nil, err
	}
	r := &Report{GeneratedAt: o.Now, Scope: "fleet"}
	if o.Instance != "" {
		r.Scope = "instance " + o.Instance
	}
	var err error
	if r.EventLevel, err = eventLevelInstances(ctx, db, o.Instance); err != nil {
		return nil, err
	}
	aggOnly, err := aggregateInstances(ctx, db, o.Instance)
	if err != nil {
		return nil, err
	}
	for _, i := range aggOnly {
		if !contains(r.EventLevel, i) {
			r.CriticalOnly = append(r.CriticalOnly, i)
		}
	}
	names, features := featureArrays()
	steps := []func(context.Context, *pgxpool.Pool, Options, answerArgs) (Section, error){
		searches, powerUsers, sessions, intervene, sticky,
	}
	args := answerArgs{names: names, features: features, eventLevel: r.EventLevel}
	if args.eventLevel == nil {
		args.eventLevel = []string{}
	}
	for _, step := range steps {
		start := time.Now()
		s, err := step(ctx, db, o, args)
		if err != nil {
			return nil, err
		}
		s.Took = time.Since(start)
		r.Sections = append(r.Sections, s)
	}
	for i := range r.Sections {
		if r.Sections[i].Title != "Searches per user per month by pattern type" && r.Sections[i].Title != "Where to intervene" {
			r.Sections[i].NeedsEventLevel = r.CriticalOnly
		}
	}
	return r, nil
}

// answerArgs is what every answer may need besides the options.
type answerArgs struct {
	names, features []string
	// eventLevel are the instances with stored events.
	eventLevel []string
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

// eventLevelInstances lists the instances with stored events: after a refresh every stored
// event's instance has a rollup row. The rollups' key leads with the instance, so this walks
// the index once per instance instead of reading every row.
func eventLevelInstances(ctx context.Context, db *pgxpool.Pool, only string) ([]string, error) {
	rows, err := db.Query(ctx, `
WITH RECURSIVE i AS (
  (SELECT instance_id FROM report_user_days WHERE $1 = '' OR instance_id = $1 ORDER BY instance_id LIMIT 1)
  UNION ALL
  SELECT (SELECT instance_id FROM report_user_days WHERE instance_id > i.instance_id AND ($1 = '' OR instance_id = $1) ORDER BY instance_id LIMIT 1)
  FROM i WHERE i.instance_id IS NOT NULL
)
SELECT instance_id FROM i WHERE instance_id IS NOT NULL ORDER BY 1`, only)
	if err != nil {
		return nil, fmt.Errorf("listing instances: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func aggregateInstances(ctx context.Context, db *pgxpool.Pool, only string) ([]string, error) {
	rows, err := db.Query(ctx, "SELECT DISTINCT instance_id FROM report_aggregates WHERE $1 = '' OR instance_id = $1 ORDER BY 1", only)
	if err != nil {
		return nil, fmt.Errorf("listing instances: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// query runs sql and renders every column as text, in a read-only transaction without JIT
// compilation: on these queries compiling cost more than it saved (2.6 s instead of 3.3 s for the
// sessions answer over 10 M events, psql EXPLAIN ANALYZE).
func query(ctx context.Context, db *pgxpool.Pool, sql string, args ...any) ([][]string, error) {
	tx, err := db.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SET LOCAL jit = off`); err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, sql, args...)
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

// allTime is the start of the searches' window: every event up to the report time.
var allTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)

func searches(ctx context.Context, db *pgxpool.Pool, o Options, a answerArgs) (Section, error) {
	s := Section{Title: "Searches per user per month by pattern type", Definition: DefSearches,
		Columns: []string{"instance", "user", "month", "regexp", "literal", "other", "total"}}
	w := newWindow(allTime, o.Now)
	// Months before the one of the last whole day: one rollup row per user. That month: its whole
	// days' rollups. After them: the events.
	month := time.Date(w.end.Year(), w.end.Month(), 1, 0, 0, 0, 0, time.UTC)
	rows, err := query(ctx, db, `
WITH current AS (
  SELECT instance_id, user_id, to_char(day, 'YYYY-MM') AS month, searches_regexp AS re, searches_literal AS lit, searches_other AS other
  FROM report_user_days
  WHERE day >= ($8::timestamptz AT TIME ZONE 'UTC')::date AND day < ($4::timestamptz AT TIME ZONE 'UTC')::date
    AND (searches_regexp + searches_literal + searches_other) > 0 AND ($6 = '' OR instance_id = $6)
  UNION ALL
  SELECT instance_id, user_id, to_char(date_trunc('month', ts AT TIME ZONE 'UTC'), 'YYYY-MM'),
         coalesce(pattern_type = 'regexp', false)::int, coalesce(pattern_type = 'literal', false)::int,
         (coalesce(pattern_type, '') NOT IN ('regexp', 'literal'))::int
  FROM report_events WHERE name = $5 AND `+edges("", 1, 2, 3, 4)+` AND ($6 = '' OR instance_id = $6)
)
SELECT instance_id, user_id, to_char(month, 'YYYY-MM'), searches_regexp, searches_literal, searches_other,
       searches_regexp + searches_literal + searches_other
FROM report_user_months WHERE month < ($8::timestamptz AT TIME ZONE 'UTC')::date AND ($6 = '' OR instance_id = $6)
UNION ALL
SELECT instance_id, user_id, month, sum(re)::bigint, sum(lit)::bigint, sum(other)::bigint, sum(re + lit + other)::bigint
FROM current GROUP BY 1, 2, 3
UNION ALL
SELECT instance_id, '(all users, aggregate)', to_char(date_trunc('month', day), 'YYYY-MM'),
       coalesce(sum(value) FILTER (WHERE dimension = 'regexp'), 0)::bigint,
       coalesce(sum(value) FILTER (WHERE dimension = 'literal'), 0)::bigint,
       coalesce(sum(value) FILTER (WHERE dimension NOT IN ('regexp', 'literal')), 0)::bigint,
       coalesce(sum(value), 0)::bigint
FROM report_aggregates WHERE metric = 'searches_by_type' AND day <= $2::date AND ($6 = '' OR instance_id = $6)
  AND NOT (instance_id = ANY($7))
GROUP BY 1, 2, 3
ORDER BY 1, 3, 7 DESC, 2`, w.from, w.to, w.first, w.end, catalogv1.SearchEvent, o.Instance, a.eventLevel, month)
	s.Rows = rows
	return s, err
}

func powerUsers(ctx context.Context, db *pgxpool.Pool, o Options, _ answerArgs) (Section, error) {
	s := Section{Title: "Power users", Definition: fmt.Sprintf(DefPowerUsers, o.PowerUserDays),
		Columns: []string{"instance", "user", "active days (of 28)"}}
	w := newWindow(o.Now.Add(-28*day), o.Now)
	rows, err := query(ctx, db, `
WITH active AS (
  SELECT instance_id, user_id, day FROM report_user_days
  WHERE day >= ($3::timestamptz AT TIME ZONE 'UTC')::date AND day < ($4::timestamptz AT TIME ZONE 'UTC')::date AND ($5 = '' OR instance_id = $5)
  UNION
  SELECT instance_id, user_id, (ts AT TIME ZONE 'UTC')::date FROM report_events
  WHERE `+edges("", 1, 2, 3, 4)+` AND ($5 = '' OR instance_id = $5)
)
SELECT instance_id, user_id, count(*) AS days FROM active
GROUP BY 1, 2 HAVING count(*) >= $6
ORDER BY 1, 3 DESC, 2`, w.from, w.to, w.first, w.end, o.Instance, o.PowerUserDays)
	s.Rows = rows
	return s, err
}

func sessions(ctx context.Context, db *pgxpool.Pool, o Options, a answerArgs) (Section, error) {
	s := Section{Title: "Sessions using more than one feature", Definition: DefSessions,
		Columns: []string{"instance", "sessions", "multi-feature sessions", "share", "users with a multi-feature session"}}
	w := newWindow(o.Now.Add(-28*day), o.Now)
	// Runs of whole days come from the rollups; the edge days' events are split into runs the
	// same way (per UTC day, a gap over 30 minutes starts a run). Only runs that may join a run
	// of another day need ordering: the edge days' runs, runs the rollups mark as joining across
	// a midnight, and the first runs of the first whole day and last runs of the last (their
	// neighbours are edge days). Every other run is a session by itself.
	rows, err := query(ctx, db, `
WITH edge AS (
  SELECT e.instance_id, e.user_id, e.ts, fm.feature, (e.ts AT TIME ZONE 'UTC')::date AS day
  FROM report_events e JOIN unnest($6::text[], $7::text[]) AS fm(name, feature) ON fm.name = e.name
  WHERE `+edges("e.", 1, 2, 3, 4)+` AND ($5 = '' OR e.instance_id = $5)
), edge_marked AS (
  SELECT *, CASE WHEN lag(ts) OVER w IS NULL OR ts - lag(ts) OVER w > interval '30 minutes' THEN 1 ELSE 0 END AS starts
  FROM edge WINDOW w AS (PARTITION BY instance_id, user_id, day ORDER BY ts)
), edge_runs AS (
  SELECT instance_id, user_id, min(ts) AS started_at, max(ts) AS ended_at, array_agg(DISTINCT feature) AS features
  FROM (SELECT *, sum(starts) OVER (PARTITION BY instance_id, user_id, day ORDER BY ts ROWS UNBOUNDED PRECEDING) AS run FROM edge_marked) r
  GROUP BY instance_id, user_id, day, run
), whole AS (
  SELECT instance_id, user_id, day, started_at, ended_at, features, joins_prev OR joins_next AS joins FROM report_day_sessions
  WHERE day >= ($3::timestamptz AT TIME ZONE 'UTC')::date AND day < ($4::timestamptz AT TIME ZONE 'UTC')::date AND ($5 = '' OR instance_id = $5)
), boundary AS (
  (SELECT DISTINCT ON (instance_id, user_id) instance_id, user_id, started_at FROM whole
   WHERE day = ($3::timestamptz AT TIME ZONE 'UTC')::date ORDER BY instance_id, user_id, started_at)
  UNION
  (SELECT DISTINCT ON (instance_id, user_id) instance_id, user_id, started_at FROM whole
   WHERE day = ($4::timestamptz AT TIME ZONE 'UTC')::date - 1 ORDER BY instance_id, user_id, started_at DESC)
), alone AS (
  SELECT w.instance_id, w.user_id, cardinality(w.features) AS features FROM whole w
  WHERE NOT w.joins AND NOT EXISTS (SELECT 1 FROM boundary b WHERE b.instance_id = w.instance_id AND b.user_id = w.user_id AND b.started_at = w.started_at)
), ordered AS (
  SELECT instance_id, user_id, started_at, ended_at, features FROM edge_runs
  UNION ALL
  SELECT w.instance_id, w.user_id, w.started_at, w.ended_at, w.features FROM whole w
  WHERE w.joins OR EXISTS (SELECT 1 FROM boundary b WHERE b.instance_id = w.instance_id AND b.user_id = w.user_id AND b.started_at = w.started_at)
), joined AS (
  SELECT *, sum(CASE WHEN prev_end IS NULL OR started_at - prev_end > interval '30 minutes' THEN 1 ELSE 0 END)
              OVER (PARTITION BY instance_id, user_id ORDER BY started_at ROWS UNBOUNDED PRECEDING) AS session
  FROM (SELECT *, lag(ended_at) OVER (PARTITION BY instance_id, user_id ORDER BY started_at) AS prev_end FROM ordered) r
), per_session AS (
  SELECT instance_id, user_id, count(DISTINCT f) AS features
  FROM joined, unnest(features) AS f GROUP BY instance_id, user_id, session
  UNION ALL
  SELECT instance_id, user_id, features FROM alone
), per_user AS (
  SELECT instance_id, user_id, count(*) AS sessions, count(*) FILTER (WHERE features > 1) AS multi FROM per_session GROUP BY 1, 2
)
SELECT instance_id, sum(sessions)::bigint, sum(multi)::bigint, round(sum(multi)::numeric / sum(sessions), 3)::float8,
       count(*) FILTER (WHERE multi > 0)
FROM per_user GROUP BY 1 ORDER BY 1`, w.from, w.to, w.first, w.end, o.Instance, a.names, a.features)
	s.Rows = rows
	return s, err
}

func intervene(ctx context.Context, db *pgxpool.Pool, o Options, a answerArgs) (Section, error) {
	s := Section{Title: "Where to intervene", Definition: DefIntervene,
		Columns: []string{"instance", "user", "last 7 days", "weekly average, previous 4 weeks", "change"}}
	last, prev := newWindow(o.Now.Add(-7*day), o.Now), newWindow(o.Now.Add(-35*day), o.Now.Add(-7*day))
	rows, err := query(ctx, db, `
WITH counted AS (
  SELECT instance_id, user_id, events AS last7, 0 AS prev FROM report_user_days
  WHERE day >= ($3::timestamptz AT TIME ZONE 'UTC')::date AND day < ($4::timestamptz AT TIME ZONE 'UTC')::date AND ($9 = '' OR instance_id = $9)
  UNION ALL
  SELECT instance_id, user_id, 1, 0 FROM report_events WHERE `+edges("", 1, 2, 3, 4)+` AND ($9 = '' OR instance_id = $9)
  UNION ALL
  SELECT instance_id, user_id, 0, events FROM report_user_days
  WHERE day >= ($7::timestamptz AT TIME ZONE 'UTC')::date AND day < ($8::timestamptz AT TIME ZONE 'UTC')::date AND ($9 = '' OR instance_id = $9)
  UNION ALL
  SELECT instance_id, user_id, 0, 1 FROM report_events WHERE `+edges("", 5, 6, 7, 8)+` AND ($9 = '' OR instance_id = $9)
), activity AS (
  SELECT instance_id, user_id, sum(last7) AS last7, sum(prev) / 4.0 AS prev_avg
  FROM counted GROUP BY GROUPING SETS ((instance_id, user_id), (instance_id))
), instance_aggregates AS (
  SELECT instance_id, NULL::text AS user_id,
         coalesce(sum(value) FILTER (WHERE day > ($2::timestamptz - interval '7 days')::date), 0) AS last7,
         coalesce(sum(value) FILTER (WHERE day <= ($2::timestamptz - interval '7 days')::date), 0) / 4.0 AS prev_avg
  FROM report_aggregates WHERE metric = 'event_count' AND day > ($2::timestamptz - interval '35 days')::date AND day <= $2::date
    AND ($9 = '' OR instance_id = $9) AND NOT (instance_id = ANY($10))
  GROUP BY 1
)
SELECT instance_id, coalesce(user_id, '(whole instance)'), last7::bigint, round(prev_avg, 2)::float8,
       round((last7 - prev_avg) / prev_avg * 100, 1)::float8 || '%'
FROM (SELECT * FROM activity UNION ALL SELECT * FROM instance_aggregates) a
WHERE prev_avg > 0 AND last7 <= prev_avg / 2
ORDER BY 1, user_id NULLS FIRST`, last.from, last.to, last.first, last.end, prev.from, prev.to, prev.first, prev.end, o.Instance, a.eventLevel)
	s.Rows = rows
	return s, err
}

func sticky(ctx context.Context, db *pgxpool.Pool, o Options, _ answerArgs) (Section, error) {
	s := Section{Title: "Stickiest features", Definition: DefSticky,
		Columns: []string{"feature", "users (week n)", "of whom used it again in week n+1", "share"}}
	// Whole ISO weeks: the weekly rollups alone answer.
	rows, err := query(ctx, db, `
WITH uw AS (
  SELECT instance_id, user_id, f AS feature, week AS wk
  FROM report_user_weeks, unnest(features) AS f
  WHERE week >= (date_trunc('week', $1::timestamptz AT TIME ZONE 'UTC') - interval '8 weeks')::date
    AND week < date_trunc('week', $1::timestamptz AT TIME ZONE 'UTC')::date AND ($2 = '' OR instance_id = $2)
)
SELECT a.feature, count(*), count(n.user_id), round(count(n.user_id)::numeric / count(*), 3)::float8
FROM uw a LEFT JOIN uw n ON n.instance_id = a.instance_id AND n.user_id = a.user_id AND n.feature = a.feature AND n.wk = a.wk + 7
WHERE a.wk < (date_trunc('week', $1::timestamptz AT TIME ZONE 'UTC') - interval '1 week')::date
GROUP BY 1 ORDER BY 4 DESC, 1`, o.Now, o.Instance)
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
