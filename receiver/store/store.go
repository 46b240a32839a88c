/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package store keeps the receiver's data in PostgreSQL: events exactly once per
// (instance, event id), aggregates as first published per (instance, day), the
// acknowledged cursor per instance, and the consent ledger (api/consent/v1) that decides what of
// a batch may be stored at all. Every write commits before it returns, so the receiver
// acknowledges only durable data.
package store

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"k8s.io/utils/clock"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key that serializes concurrent migrators.
const migrationLock = 0x7e1e_3e7a

// uniqueViolation is PostgreSQL's SQLSTATE for a duplicate key.
const uniqueViolation = "23505"

// ErrUnavailable wraps errors that mean the database cannot be reached now; callers answer 503.
var ErrUnavailable = errors.New("storage unavailable")

// Store is the receiver's PostgreSQL storage.
type Store struct {
	pool *pgxpool.Pool
	// reader reads stored data back (Exported); it is pool unless WithRoles names another role.
	reader                 *pgxpool.Pool
	connConfig             *pgx.ConnConfig
	ingestRole, readerRole string
	statementTimeout       time.Duration
	clock                  clock.PassiveClock
	// policies caches each instance's consent timeline and tombstones by record version.
	policies policyCache
	// retentionDays is how many whole UTC days before today events are kept (0: forever).
	retentionDays int
	// applicationName names the connections (WithApplicationName).
	applicationName string
	// partitions are the days known to have an events partition.
	partitions partitionSet
	observer   atomic.Pointer[observerBox]
}

// Option configures a Store.
type Option func(*Store)

// WithClock makes the store read time from c (default: the real clock): when transitions take
// effect, when erasures run, when events were received.
func WithClock(c clock.PassiveClock) Option {
	return func(s *Store) {
		if c != nil {
			s.clock = c
		}
	}
}

// Database roles the migrations create (see migrations/0005_roles.sql).
const (
	// RoleIngest stores batches, the consent ledger and erasures; it cannot read event contents.
	RoleIngest = "telemetry_ingest"
	// RoleRawReader reads stored events and cells.
	RoleRawReader = "telemetry_raw_reader"
	// RoleReporting reads only the aggregated and normalized report views.
	RoleReporting = "telemetry_reporting"
	// RoleConsentAdmin is the receiver's administrators': RoleIngest's rights, and reserving,
	// handing over and opening consent records and the receiver-wide settings, which
	// RoleIngest may not (migrations/0016_consent_administrators.sql).
	RoleConsentAdmin = "telemetry_consent_admin"
)

// WithRoles makes the store write as ingest and read stored data (Exported) as rawReader: each
// pooled connection switches to its role when it opens, so PostgreSQL itself refuses whatever
// the role may not do. Migrations run as the login user. Without it both run as the login user.
func WithRoles(ingest, rawReader string) Option {
	return func(s *Store) { s.ingestRole, s.readerRole = ingest, rawReader }
}

// WithStatementTimeout makes PostgreSQL cancel any statement of the store's that runs longer
// than d (0: no limit): a slow query answers 503 and is retried, it does not pile up.
func WithStatementTimeout(d time.Duration) Option {
	return func(s *Store) { s.statementTimeout = d }
}

// WithApplicationName names the store's connections to PostgreSQL (application_name): the
// database records it with each ownership change (consent_ownership_changes), so the receiver's
// tools say which command and which operating-system user made one.
func WithApplicationName(name string) Option {
	return func(s *Store) { s.applicationName = name }
}

// Open connects to dsn. It does not fail when the database is down: Ping and writes report it.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("invalid database DSN") // never echo the DSN: it may hold a password
	}
	cfg.MaxConns = 16
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	s := &Store{clock: clock.RealClock{}, connConfig: cfg.ConnConfig.Copy()}
	for _, o := range opts {
		o(s)
	}
	if s.applicationName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = s.applicationName
	}
	if s.statementTimeout > 0 {
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(s.statementTimeout.Milliseconds(), 10)
	}
	if s.pool, err = poolAs(ctx, cfg, s.ingestRole); err != nil {
		return nil, err
	}
	s.reader = s.pool
	if s.readerRole != s.ingestRole {
		readerCfg := cfg.Copy()
		readerCfg.MaxConns = 4
		if s.reader, err = poolAs(ctx, readerCfg, s.readerRole); err != nil {
			s.pool.Close()
			return nil, err
		}
	}
	return s, nil
}

// OpenPool connects to dsn with every connection switched to role ("" keeps the login user's).
func OpenPool(ctx context.Context, dsn, role string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("invalid database DSN")
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	return poolAs(ctx, cfg, role)
}

func poolAs(ctx context.Context, cfg *pgxpool.Config, role string) (*pgxpool.Pool, error) {
	if role != "" {
		set := "SET ROLE " + pgx.Identifier{role}.Sanitize()
		cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
			if _, err := c.Exec(ctx, set); err != nil {
				return fmt.Errorf("switching to database role %s (the login must be a member of it; the migrations, run as a user with CREATEROLE, make the migrating login a member of every role): %w", role, err)
			}
			return nil
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the connection pool: %w", err)
	}
	return pool, nil
}

// Close releases the connections.
func (s *Store) Close() {
	s.pool.Close()
	if s.reader != s.pool {
		s.reader.Close()
	}
}

// Pool is the pool the store writes with (as the ingest role when WithRoles is given).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// Migrate applies the embedded migrations that are not applied yet, in order, holding an
// advisory lock so receivers starting together do not race.
func (s *Store) Migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	// Migrations need the schema owner's rights, not a pooled connection's role.
	conn, err := pgx.ConnectConfig(ctx, s.connConfig.Copy())
	if err != nil {
		return unavailable(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return unavailable(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
		return unavailable(err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	for _, name := range names {
		base := strings.TrimPrefix(name, "migrations/")
		version, err := migrationVersion(name)
		if err != nil {
			return err
		}
		var applied bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", version).Scan(&applied); err != nil {
			return err
		}
		if applied {
			continue
		}
		sql, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, string(sql)); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", version); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// GrantReceiverRoles makes login a member of the roles `receiver serve` works as (RoleIngest and
// RoleRawReader): for a login of the receiver's own, apart from the schema owner that migrates,
// so that what the receiver can do is what its roles may, not what the owner's credentials
// could. It runs as the store's login (the schema owner, with CREATEROLE), under the migrations'
// lock (replicas starting together), and is idempotent. It refuses, granting nothing, a login
// that could hand consent records over or rewrite the ledger whatever its roles: a superuser, one
// with CREATEROLE, a member (even without inheriting) of RoleConsentAdmin, of the schema owner or
// of pg_write_all_data, or the owner of the database, the schema or any of its tables. login the
// store's own login is accepted as it is (one login for everything; isOwner reports it).
func (s *Store) GrantReceiverRoles(ctx context.Context, login string) (isOwner bool, err error) {
	if login == "" {
		return false, errors.New("the receiver's login has no user name")
	}
	conn, err := pgx.ConnectConfig(ctx, s.connConfig.Copy())
	if err != nil {
		return false, unavailable(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, unavailable(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
		return false, unavailable(err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1), current_user = $1`, login).Scan(&exists, &isOwner); err != nil {
		return false, err
	}
	switch {
	case isOwner:
		return true, nil
	case !exists:
		return false, fmt.Errorf("no database role %s: create the receiver's login first (CREATE ROLE %s LOGIN PASSWORD ...)", pgx.Identifier{login}.Sanitize(), pgx.Identifier{login}.Sanitize())
	}
	var why string
	if err := tx.QueryRow(ctx, `
SELECT concat_ws(', ',
  CASE WHEN r.rolsuper THEN 'a superuser' END,
  CASE WHEN r.rolcreaterole THEN 'may create roles' END,
  CASE WHEN pg_has_role($1, $2, 'MEMBER') THEN 'a member of ' || $2 END,
  CASE WHEN pg_has_role($1, 'pg_write_all_data', 'MEMBER') THEN 'a member of pg_write_all_data' END,
  CASE WHEN pg_has_role($1, current_user, 'MEMBER') THEN 'a member of the schema owner ' || current_user END,
  CASE WHEN pg_has_role($1, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'MEMBER') THEN 'owns the database' END,
  CASE WHEN pg_has_role($1, (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), 'MEMBER') THEN 'owns the schema' END,
  CASE WHEN EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND pg_has_role($1, c.relowner, 'MEMBER'))
       THEN 'owns tables of the schema' END)
FROM pg_roles r WHERE r.rolname = $1`, login, RoleConsentAdmin).Scan(&why); err != nil {
		return false, err
	}
	if why != "" {
		return false, fmt.Errorf("the receiver's login %s is %s: it could hand consent records over or rewrite the ledger; give the receiver a plain login of its own", pgx.Identifier{login}.Sanitize(), why)
	}
	if _, err := tx.Exec(ctx, "GRANT "+RoleIngest+", "+RoleRawReader+" TO "+pgx.Identifier{login}.Sanitize()); err != nil {
		return false, fmt.Errorf("granting the receiver's roles to its login: %w", err)
	}
	return false, tx.Commit(ctx)
}

// migrationVersion is the number a migration's file name starts with.
func migrationVersion(name string) (int, error) {
	base := strings.TrimPrefix(name, "migrations/")
	version, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
	if err != nil {
		return 0, fmt.Errorf("migration %s: name must start with a number", base)
	}
	return version, nil
}

// PendingMigrations lists the versions of the embedded migrations the database has not applied,
// read as the store's role (no schema rights needed): a receiver whose login may not migrate
// (`receiver serve --migrate=false`) checks with it that someone did. A database that has not
// applied migration 0016, or has none, answers an error.
func (s *Store) PendingMigrations(ctx context.Context) ([]int, error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("reading the schema's applied migrations: %w", unavailable(err))
	}
	applied, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("reading the schema's applied migrations: %w", unavailable(err))
	}
	var pending []int
	for _, name := range names {
		version, err := migrationVersion(name)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(applied, int32(version)) {
			pending = append(pending, version)
		}
	}
	sort.Ints(pending)
	return pending, nil
}

// Result counts what a write stored.
type Result struct {
	// Accepted items were stored now; Duplicates were stored before (or, for aggregates, their
	// day was published before); Refused items fall outside the instance's consent (a period that was not
	// EventLevel, or for aggregates a day not wholly under CriticalOnly), inside an erased range,
	// or (events) outside the retention, and are not stored.
	Accepted, Duplicates, Refused int
	Cursor                        int64
}

// InsertEvents stores a batch's events once each and advances the instance's cursor (never
// backwards), in one transaction. The instance's consent ledger decides first: the whole batch
// is refused (ErrConsentRefused, a *RefusedError) unless EventLevel is in force now, and then
// each event is stored only if its timestamp falls in an EventLevel period, in no erased range,
// and within the store's retention (not before its oldest day kept, not more than MaxFutureSkew
// ahead). Events are the same event when instance, id and timestamp match. Refused events are counted, and the cursor still advances past them: they may never
// leave, so the collector must not send them again.
func (s *Store) InsertEvents(ctx context.Context, instance string, b *batchv1.Batch) (Result, error) {
	n := len(b.Events)
	receivedAt := s.clock.Now()
	delivery, err := s.nextDelivery(ctx)
	if err != nil {
		return Result{}, err
	}
	// Build the stream before the transaction (and its consent lock): nearly every batch is
	// kept whole.
	stream, err := copyEvents(instance, b.Events, receivedAt, delivery)
	if err != nil {
		return Result{}, err
	}
	if err := s.ensurePartitions(ctx, instance, b.Kind, b.Events, receivedAt); err != nil {
		return Result{}, err
	}
	var res Result
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		p, err := s.loadPolicy(ctx, tx, instance)
		if err != nil {
			return err
		}
		if err := p.refusal(b.Kind, receivedAt); err != nil {
			return err
		}
		keep := func(e *batchv1.Event) bool {
			return s.inRetention(e.Timestamp, receivedAt) && p.keepEvent(e.Timestamp, e.ID)
		}
		kept := b.Events
		if slices.ContainsFunc(b.Events, func(e batchv1.Event) bool { return !keep(&e) }) {
			// The COPY stream is rebuilt from the kept events only: a refused event never
			// reaches the database, not even a staging table.
			kept = make([]batchv1.Event, 0, n)
			for i := range b.Events {
				if keep(&b.Events[i]) {
					kept = append(kept, b.Events[i])
				}
			}
			if stream, err = copyEvents(instance, kept, receivedAt, delivery); err != nil {
				return err
			}
		}
		res.Refused = n - len(kept)
		accepted := 0
		if len(kept) > 0 {
			if accepted, err = s.insertStream(ctx, tx, instance, b.BatchID, stream); err != nil {
				return s.partitionGone(err)
			}
		}
		res.Accepted = accepted
		res.Duplicates = len(kept) - res.Accepted
		if accepted > 0 {
			// The report's rollups of these days are recomputed at the next refresh.
			if _, err := tx.Exec(ctx, `INSERT INTO rollup_dirty (instance_id, day) SELECT $1, unnest($2::date[])`, instance, eventDays(kept)); err != nil {
				return err
			}
		}
		if err := tx.QueryRow(ctx, `
INSERT INTO cursors (instance_id, cursor) VALUES ($1, $2)
ON CONFLICT (instance_id) DO UPDATE SET cursor = GREATEST(cursors.cursor, EXCLUDED.cursor), updated_at = now()
RETURNING cursor`, instance, b.Cursor).Scan(&res.Cursor); err != nil {
			return err
		}
		return recordBatch(ctx, tx, instance, b, res, delivery, receivedAt)
	})
	return res, err
}

// recordBatch notes the batch by its idempotency key. A batch seen before counts all its items
// again as duplicates, and its refusals again as refused. A call that stored something is also
// recorded as a delivery: the items it stored carry its number.
func recordBatch(ctx context.Context, tx pgx.Tx, instance string, b *batchv1.Batch, res Result, delivery int64, receivedAt time.Time) error {
	_, err := tx.Exec(ctx, `
WITH d AS (
  INSERT INTO deliveries (seq, instance_id, batch_id, kind, accepted, duplicates, refused, received_at)
  SELECT $7, $1, $2, $3, $4, $5, $6, $8 WHERE $4 > 0
)
INSERT INTO batches (instance_id, batch_id, kind, accepted, duplicates, refused) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (instance_id, batch_id) DO UPDATE SET duplicates = batches.duplicates + EXCLUDED.accepted + EXCLUDED.duplicates,
  refused = batches.refused + EXCLUDED.refused`,
		instance, b.BatchID, b.Kind, res.Accepted, res.Duplicates, res.Refused, delivery, receivedAt)
	return err
}

// nextDelivery numbers a call that may store items. Numbers are never reused; a call that
// stores nothing leaves a gap.
func (s *Store) nextDelivery(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.pool.QueryRow(ctx, `SELECT nextval('delivery_seq')`).Scan(&seq); err != nil {
		return 0, unavailable(err)
	}
	return seq, nil
}

// insertStream stores the events of stream (from copyEvents) that are not stored yet and
// returns how many it stored.
func (s *Store) insertStream(ctx context.Context, tx pgx.Tx, instance, batchID string, stream []byte) (int, error) {
	accepted, err := s.copyNew(ctx, tx, instance, batchID, stream)
	if err != nil {
		return 0, err
	}
	if accepted < 0 {
		// Some events are stored already: load into a per-session staging table with COPY,
		// then move the new rows over in one statement; ON CONFLICT absorbs the rest.
		if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS incoming_events (
			instance_id text, event_id bigint, name text, ts timestamptz, source text, version text, client text, user_id text,
			feature_flags jsonb, properties jsonb, received_at timestamptz, delivery bigint) ON COMMIT DELETE ROWS`); err != nil {
			return 0, err
		}
		if _, err := copyIn(ctx, tx, "incoming_events", stream); err != nil {
			return 0, err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO events (`+eventColumns+`) SELECT `+eventColumns+` FROM incoming_events ON CONFLICT (instance_id, event_id, ts) DO NOTHING`)
		if err != nil {
			return 0, err
		}
		accepted = int(tag.RowsAffected())
	}
	return accepted, nil
}

// copyNew is the fast path for a batch none of whose events is stored yet (nearly every batch:
// re-sends follow only lost acknowledgements and restarts): COPY straight into events, which
// costs about half of the staging-table path. A batch id seen before goes to the staging path at
// once; an event stored by an earlier or concurrent batch makes the COPY fail on the primary key,
// and the savepoint undoes it. It returns the rows stored, or -1 when the caller must take the
// staging path.
func (s *Store) copyNew(ctx context.Context, tx pgx.Tx, instance, batchID string, stream []byte) (int, error) {
	var seen bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM batches WHERE instance_id = $1 AND batch_id = $2)`, instance, batchID).Scan(&seen); err != nil {
		return 0, err
	}
	if seen {
		return -1, nil
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return 0, err
	}
	n, err := copyIn(ctx, sp, "events", stream)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == uniqueViolation {
		if err := sp.Rollback(ctx); err != nil {
			return 0, err
		}
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	return int(n), sp.Commit(ctx)
}

// copyIn runs a binary COPY of stream (from copyEvents) into table within tx.
func copyIn(ctx context.Context, tx pgx.Tx, table string, stream []byte) (int64, error) {
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(stream),
		"COPY "+table+" ("+eventColumns+") FROM STDIN (FORMAT binary)")
	return tag.RowsAffected(), err
}

// PublishAggregates stores a batch's cells, keeping the first publication of each (instance,
// day): the cells of a day already published are absorbed whole (counted as duplicates), so no
// two publications of a day can be differenced, nor a day republished after an erasure. The
// instance's consent ledger decides first: the whole batch is refused (ErrConsentRefused) while
// Off is in force or without a record, and then a cell is stored only if CriticalOnly was in
// force during all of its UTC day (consentv1.AggregateDays) and no range erased with scope All
// overlaps it.
func (s *Store) PublishAggregates(ctx context.Context, instance string, b *batchv1.Batch) (Result, error) {
	receivedAt := s.clock.Now()
	delivery, err := s.nextDelivery(ctx)
	if err != nil {
		return Result{}, err
	}
	var res Result
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		p, err := s.loadPolicy(ctx, tx, instance)
		if err != nil {
			return err
		}
		if err := p.refusal(b.Kind, receivedAt); err != nil {
			return err
		}
		n := len(b.Aggregates)
		days, metrics, dims := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
		values, users := make([]int64, 0, n), make([]int64, 0, n)
		for _, a := range b.Aggregates {
			if !p.keepAggregate(a.Day, receivedAt) {
				res.Refused++
				continue
			}
			days, metrics, dims = append(days, a.Day), append(metrics, a.Metric), append(dims, a.Dimension)
			values, users = append(values, a.Value), append(users, a.Users)
		}
		// A cell appearing twice in one batch would make the insert fail: the first one wins.
		tag, err := tx.Exec(ctx, `
WITH cells AS (
  SELECT DISTINCT ON (day, metric, dim) day::date AS day, metric, dim, value, users
  FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) WITH ORDINALITY
    AS u(day, metric, dim, value, users, ord)
  ORDER BY day, metric, dim, ord
), claimed AS (
  INSERT INTO aggregate_days (instance_id, day, delivery, published_at)
  SELECT DISTINCT $1, day, $7::bigint, $8::timestamptz FROM cells
  ON CONFLICT (instance_id, day) DO NOTHING
  RETURNING day
)
INSERT INTO aggregates (instance_id, day, metric, dimension, value, users, final, delivery)
SELECT $1, day, metric, dim, value, users, true, $7 FROM cells WHERE day IN (SELECT day FROM claimed)
ON CONFLICT (instance_id, day, metric, dimension) DO NOTHING`,
			instance, days, metrics, dims, values, users, delivery, receivedAt)
		if err != nil {
			return err
		}
		res.Accepted = int(tag.RowsAffected())
		res.Duplicates = len(days) - res.Accepted
		return recordBatch(ctx, tx, instance, b, res, delivery, receivedAt)
	})
	return res, err
}

// Cursor returns the instance's acknowledged cursor, and whether one is known.
func (s *Store) Cursor(ctx context.Context, instance string) (int64, bool, error) {
	if err := s.checkSenderNow(ctx, instance); err != nil {
		return 0, false, err
	}
	var c int64
	err := s.pool.QueryRow(ctx, "SELECT cursor FROM cursors WHERE instance_id = $1", instance).Scan(&c)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, unavailable(err)
	}
	return c, true, nil
}

func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.runTx(ctx, pgx.TxOptions{}, fn)
}

// readTx runs fn in a read-only snapshot, so a record read in several queries is consistent.
func (s *Store) readTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.runTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// runTx runs fn in a transaction and commits. The ledger's own answers (refusals, ownership,
// invalid requests) pass through as they are; anything else is classified by unavailable.
func (s *Store) runTx(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	return runTxOn(ctx, s.pool, opts, fn)
}

// rawReadTx is readTx as the raw-data reader.
func (s *Store) rawReadTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return runTxOn(ctx, s.reader, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

func runTxOn(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	tx, err := pool.BeginTx(ctx, opts)
	if err != nil {
		return unavailable(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := fn(tx); err != nil {
		if domain(err) {
			return err
		}
		return unavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return unavailable(err)
	}
	return nil
}

// unavailable marks connection-level failures, and transactions the database rolled back
// (deadlock, serialization: class 40), so the server answers 503 with Retry-After and the
// collector retries; any other error the database itself returned is left as is (a bug,
// answered 500).
func unavailable(err error) error {
	var pgErr *pgconn.PgError
	// 55P03: a lock not granted within lock_timeout (attaching or dropping a partition).
	if errors.As(err, &pgErr) && pgErr.Code != "55P03" && !slices.Contains([]string{"08", "40", "53", "57"}, pgErr.Code[:min(2, len(pgErr.Code))]) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
