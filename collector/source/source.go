/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package source reads the instance's event_logs table incrementally and gap-safely.
//
// Ids in event_logs come from a sequence when a row is inserted, but a row becomes visible when
// its transaction commits, so a row with a lower id can appear after a higher one was read.
// The collector uses the transaction horizon: every read happens in one REPEATABLE READ snapshot
// whose in-flight transactions are recorded (see Tracker); the cursor never passes an id that an
// in-flight transaction could still commit, and ids in (cursor, high] are re-scanned once such a
// transaction finishes. Only the columns that may contribute to an export are ever selected:
// url, argument, referrers, device and billing ids are not read at all.
//
// Only what the event catalog names is selected, and every value within a byte bound the
// database enforces: of public_argument the listed members whose value is at most
// MaxValueBytes (never a query, never a whole document), of feature_flags the listed flags,
// and at most MaxTextBytes of each text column. A huge row never reaches the collector's memory;
// one whose public_argument is stored larger than OversizedDocument is counted.
//
// Only rows recorded inside a consent window are read (the windows are a condition of the
// query), so events from before consent, or from an Off or CriticalOnly period, never reach the
// collector's memory; rows outside every window are passed over and never come back.
package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/collector/scrub"
)

// inWindows returns the condition that a row's timestamp lies in one of the windows, with its
// arguments numbered from first: a disjunction of plain range tests, which costs the database
// next to nothing per row (an array lookup per row cost a third of the read rate).
func inWindows(ws []consentv1.Window, first int) (string, []any) {
	if len(ws) == 0 {
		return "FALSE", nil
	}
	var b strings.Builder
	args := make([]any, 0, 2*len(ws))
	b.WriteString("(")
	for i, w := range ws {
		if i > 0 {
			b.WriteString(" OR ")
		}
		args = append(args, w.Start)
		fmt.Fprintf(&b, "(timestamp >= $%d", first+len(args)-1)
		if w.End != nil {
			args = append(args, *w.End)
			fmt.Fprintf(&b, " AND timestamp < $%d", first+len(args)-1)
		}
		b.WriteString(")")
	}
	b.WriteString(")")
	return b.String(), args
}

// Bounds the database enforces on what it returns.
const (
	// MaxValueBytes bounds one selected member of public_argument, as JSON text.
	MaxValueBytes = 256
	// MaxTextBytes bounds the text columns (name, source, version, client) in bytes: a longer
	// value is replaced here and then refused by the catalog, which lists nothing so long.
	MaxTextBytes = 129
	// MaxIDBytes bounds anonymous_user_id; a longer one counts as missing.
	MaxIDBytes = 256
	// OversizedDocument is the stored size of a public_argument counted as oversized.
	OversizedDocument = 64 << 10
)

// columns are the only things the collector reads of a row; $first is the list of event names
// the catalog names. Of public_argument only the members the catalog names are selected, each
// at most MaxValueBytes as JSON text, and of feature_flags only the listed flags with a boolean
// value: each is looked up by its key and the found ones are merged into a small document (a
// lookup per listed key costs the database a quarter of what expanding every member did on
// realistic rows, where documents carry many members nobody lists). The lookups read the
// documents as listedDocuments hands them over, once per row. Text is bounded in bytes (a longer
// value becomes "~", which no closed set lists, so it is dropped and counted), and a row of an
// event the catalog does not list brings neither its document nor its flags: most rows of a real
// instance are such, and only their ids and times are needed.
func columns(first int) string {
	return fmt.Sprintf(`id, %[4]s, COALESCE(user_id, 0)::bigint,
	CASE WHEN octet_length(anonymous_user_id) <= %[2]d THEN anonymous_user_id ELSE '' END, %[5]s,
	CASE WHEN jsonb_typeof(listed.public_argument) = 'object' THEN %[8]s ELSE '{}' END,
	%[6]s, timestamp,
	CASE WHEN jsonb_typeof(listed.feature_flags) = 'object' THEN %[9]s ELSE '{}' END,
	%[7]s, COALESCE(pg_column_size(event_logs.public_argument), 0) > %[3]d`,
		first, MaxIDBytes, OversizedDocument,
		boundedText("name"), boundedText("source"), boundedText("version"), boundedText("client"),
		members("listed.public_argument", selectedProperties, fmt.Sprintf("octet_length((%%[1]s)::text) <= %d", MaxValueBytes)),
		members("listed.feature_flags", catalogv1.Current().FeatureFlags, "jsonb_typeof(%[1]s) = 'boolean'"))
}

// listedDocuments joins each row read with its two documents, only for a listed event, read out
// of storage once ($first being the listed event names). A document stored out of line (TOAST:
// anything over about 2 KB) is otherwise fetched and decompressed again for every listed key
// looked up in it, 17 times for the flags: BenchmarkReadLargeDocuments read rows of 400 KB in
// 11.0 ms each that way, 2.5 ms with one read. Concatenating the empty object makes the copy (an
// array or scalar stays one, and is not an object); OFFSET 0 keeps the planner from folding the
// subquery back into the lookups.
func listedDocuments(first int) string {
	return fmt.Sprintf(` CROSS JOIN LATERAL (SELECT
	CASE WHEN name = ANY($%[1]d::text[]) THEN public_argument || '{}'::jsonb END AS public_argument,
	CASE WHEN name = ANY($%[1]d::text[]) THEN feature_flags || '{}'::jsonb END AS feature_flags OFFSET 0) AS listed`, first)
}

// readColumns and readDocuments are the parts of every read that depend only on the catalog,
// built once (so a catalog key that is not a plain word stops the program at its start, never in
// the middle of a read).
var readColumns, readDocuments = columns(3), listedDocuments(3)

// readRows selects the rows of event_logs that match where (which may end in ORDER BY id LIMIT):
// the rows are chosen first and only then joined with their documents, so that the documents of
// rows a LIMIT leaves out are never copied (a plan that sorts the matching rows by id would
// otherwise carry every one of them through the sort).
func readRows(where string) string {
	return "SELECT " + readColumns + ` FROM (SELECT id, name, user_id, anonymous_user_id, source, version, timestamp, client,
	public_argument, feature_flags FROM event_logs WHERE ` + where + ") AS event_logs" + readDocuments + " ORDER BY id"
}

// members selects the members of the jsonb object column named keys whose value passes check
// (a format with the value as %[1]s), merged into one object rendered as text.
func members(column string, keys []string, check string) string {
	var b strings.Builder
	b.WriteString("('{}'::jsonb")
	for _, k := range keys {
		v := column + "->" + sqlString(k)
		fmt.Fprintf(&b, " || CASE WHEN "+check+" THEN jsonb_build_object(%[2]s, %[1]s) ELSE '{}' END", v, sqlString(k))
	}
	b.WriteString(")::text")
	return b.String()
}

// plainWord are the characters a catalog key may hold.
const plainWord = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."

// sqlString renders a catalog key as an SQL string literal. The catalog is code, and its keys
// are plain words; anything else is a programming error, which panics when the package loads.
func sqlString(k string) string {
	if k == "" || strings.TrimLeft(k, plainWord) != "" {
		panic(fmt.Sprintf("catalog key %q is not a plain word", k))
	}
	return "'" + k + "'"
}

// selectedProperties are the public_argument members the catalog names, for any event.
var selectedProperties = func() []string {
	c := catalogv1.Current()
	var keys []string
	for _, name := range c.Names() {
		e, _ := c.Lookup(name)
		for k := range e.Properties {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}()

// boundedText selects a text column as at most MaxTextBytes bytes: as it is, or "~" when longer.
func boundedText(column string) string {
	return fmt.Sprintf(`CASE WHEN octet_length(COALESCE(%[1]s, '')) <= %[2]d THEN COALESCE(%[1]s, '') ELSE '~' END`, column, MaxTextBytes)
}

// Reader reads event_logs.
type Reader struct {
	pool *pgxpool.Pool
}

// Open connects with dsn (a read-only role suffices). The DSN is never logged or echoed.
func Open(ctx context.Context, dsn string) (*Reader, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("the instance database DSN is not valid")
	}
	cfg.MaxConns = 2
	cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the instance database: %w", err)
	}
	return &Reader{pool: pool}, nil
}

// Close releases the connections.
func (r *Reader) Close() { r.pool.Close() }

// Ping checks the database answers.
func (r *Reader) Ping(ctx context.Context) error { return r.pool.Ping(ctx) }

// Round is the result of one consistent read.
type Round struct {
	Snapshot Snapshot
	// Rows: late rows (ids in (cursor, high] not yet sent) first, then new rows above high.
	Rows []scrub.Row
	// NewHigh is the highest id such that every id up to it visible in Snapshot was read.
	NewHigh int64
	// Late counts the late rows.
	Late int
	// Complete is false when the late scan stopped at the row limit: the cursor must not advance
	// until a later round has delivered the rest.
	Complete bool
	// MaxID is the highest id in the table at Snapshot (for lag).
	MaxID int64
	// NewestTimestamp is the timestamp of the row with MaxID.
	NewestTimestamp time.Time
}

// Read performs one round against the delivery state t (a Tracker, or an Ahead when reading
// while the previous round is still being sent), reading at most limit rows recorded inside
// windows.
func (r *Reader) Read(ctx context.Context, t View, limit int, windows []consentv1.Window) (*Round, error) {
	names := catalogv1.Current().Names()
	inLate, lateArgs := inWindows(windows, 4)
	inFresh, freshArgs := inWindows(windows, 4)
	tx, err := r.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("reading event_logs: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var snapText string
	if err := tx.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&snapText); err != nil {
		return nil, fmt.Errorf("reading the snapshot: %w", err)
	}
	snap, err := ParseSnapshot(snapText)
	if err != nil {
		return nil, err
	}
	round := &Round{Snapshot: snap, NewHigh: t.High(), Complete: true}
	if t.NeedLateScan(snap) && t.High() > t.Cursor() {
		rows, err := tx.Query(ctx, readRows("id > $1 AND id <= $2 AND "+inLate),
			append([]any{t.Cursor(), t.High(), names}, lateArgs...)...)
		if err != nil {
			return nil, fmt.Errorf("late scan: %w", err)
		}
		late, err := collect(rows, func(id int64) bool { return !t.Sent(id) }, limit+1)
		if err != nil {
			return nil, err
		}
		if len(late) > limit {
			late, round.Complete = late[:limit], false
		}
		round.Rows = late
		round.Late = len(late)
	}
	exhausted := false
	if remaining := limit - len(round.Rows); remaining > 0 {
		rows, err := tx.Query(ctx, readRows("id > $1 AND "+inFresh+" ORDER BY id LIMIT $2"),
			append([]any{t.High(), remaining, names}, freshArgs...)...)
		if err != nil {
			return nil, fmt.Errorf("reading new events: %w", err)
		}
		fresh, err := collect(rows, nil, remaining)
		if err != nil {
			return nil, err
		}
		if n := len(fresh); n > 0 {
			round.NewHigh = fresh[n-1].ID
		}
		round.Rows = append(round.Rows, fresh...)
		exhausted = len(fresh) < remaining
	}
	err = tx.QueryRow(ctx, "SELECT id, timestamp FROM event_logs ORDER BY id DESC LIMIT 1").Scan(&round.MaxID, &round.NewestTimestamp)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("reading the newest id: %w", err)
	}
	if exhausted && round.MaxID > round.NewHigh {
		// Every visible row above high was examined and the rest lie outside every window:
		// they can never leave, so the position moves past them.
		round.NewHigh = round.MaxID
	}
	return round, tx.Commit(ctx)
}

func collect(rows pgx.Rows, keep func(int64) bool, limit int) ([]scrub.Row, error) {
	defer rows.Close()
	out := make([]scrub.Row, 0, min(limit, 10_000))
	for rows.Next() {
		var r scrub.Row
		var pa, ff string
		if err := rows.Scan(&r.ID, &r.Name, &r.UserID, &r.AnonymousUserID, &r.Source, &pa, &r.Version, &r.Timestamp, &ff, &r.Client, &r.Oversized); err != nil {
			return nil, fmt.Errorf("reading a row: %w", err)
		}
		if keep != nil && !keep(r.ID) {
			continue
		}
		r.PublicArgument, r.FeatureFlags = []byte(pa), []byte(ff)
		out = append(out, r)
		if len(out) >= limit {
			break
		}
	}
	return out, rows.Err()
}

// MaxID returns the current highest id (for startFrom: Now).
func (r *Reader) MaxID(ctx context.Context) (int64, error) {
	var id int64
	err := r.pool.QueryRow(ctx, "SELECT COALESCE(max(id), 0) FROM event_logs").Scan(&id)
	return id, err
}

// Pool exposes the connection pool for the aggregate queries.
func (r *Reader) Pool() *pgxpool.Pool { return r.pool }
