/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	clocktesting "k8s.io/utils/clock/testing"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

func batchAt(id string, times map[int]time.Time) *batchv1.Batch {
	b := &batchv1.Batch{InstanceID: "acme", BatchID: id, Kind: batchv1.KindEvents, Tier: "EventLevel"}
	for i := range len(times) + 100 {
		ts, ok := times[i]
		if !ok {
			continue
		}
		b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprint(i), Name: "SearchSubmitted", Timestamp: ts,
			UserID: fmt.Sprintf("f%031x", i), Properties: map[string]any{"patternType": "literal"}})
		b.Cursor = int64(i)
	}
	return b
}

// partitionOf returns the partition each stored event of acme is in, by event id.
func partitionOf(t *testing.T, r *receivertest.Receiver) map[int]string {
	t.Helper()
	rows, err := r.DB.Query(context.Background(), `SELECT event_id, tableoid::regclass::text FROM events WHERE instance_id = 'acme'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int]string{}
	for rows.Next() {
		var id int
		var part string
		if err := rows.Scan(&id, &part); err != nil {
			t.Fatal(err)
		}
		if _, dup := got[id]; dup {
			t.Errorf("event %d stored twice", id)
		}
		got[id] = part
	}
	return got
}

func partitionName(t time.Time) string { return "events_p" + t.UTC().Format("20060102") }

// receiverGranting starts a receiver whose consent ledger has instance at EventLevel since since.
func receiverGranting(t *testing.T, instance string, since time.Time) *receivertest.Receiver {
	t.Helper()
	r, err := receivertest.Start(context.Background(), server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	if err := r.Grant(context.Background(), instance, consentv1.TierEventLevel, since); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPartitionsFollowTheDaysAndTheRetention: every event lands in its UTC day's partition,
// created on demand; a re-sent batch spread over days is absorbed; events before the oldest day
// kept or too far ahead are refused; maintenance keeps days ahead and drops the days behind the
// retention with their events, and nothing newer.
func TestPartitionsFollowTheDaysAndTheRetention(t *testing.T) {
	ctx := context.Background()
	r := receiverGranting(t, "acme", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(now)
	open := func(retention int) *store.Store {
		st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithClock(clk), store.WithRetention(retention),
			store.WithRoles(store.RoleIngest, store.RoleRawReader))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		return st
	}
	st := open(30)

	m, err := st.MaintainPartitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	today := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	if len(m.Created) != 3 || !m.Created[0].Equal(today) || !m.Created[2].Equal(today.AddDate(0, 0, 2)) || len(m.Dropped) != 0 {
		t.Fatalf("first maintenance = %+v, want today and the two days after created", m)
	}
	if m, err = st.MaintainPartitions(ctx); err != nil || len(m.Created) != 0 || m.Partitions != 3 {
		t.Fatalf("second maintenance = %+v, %v; want nothing to do", m, err)
	}

	times := map[int]time.Time{
		1: today.AddDate(0, 0, -31).Add(23 * time.Hour), // before the oldest day kept (30 days back)
		2: today.AddDate(0, 0, -30),                     // the oldest day kept, first instant
		3: today.AddDate(0, 0, -12).Add(5 * time.Hour),  // a backfilled day: its partition on demand
		4: today.Add(-time.Microsecond),                 // yesterday's last instant
		5: today,                                        // today's first
		6: now.Add(23 * time.Hour),                      // tomorrow, within the skew
		7: now.Add(store.MaxFutureSkew + time.Second),   // too far ahead
	}
	res, err := st.InsertEvents(ctx, "acme", batchAt("spread", times))
	if err != nil {
		t.Fatal(err)
	}
	if res.Accepted != 5 || res.Refused != 2 || res.Duplicates != 0 {
		t.Fatalf("spread batch: %+v, want 5 accepted and 2 refused", res)
	}
	got := partitionOf(t, r)
	for id, ts := range times {
		want := partitionName(ts)
		if id == 1 || id == 7 {
			want = ""
		}
		if got[id] != want {
			t.Errorf("event %d (%s) is in %q, want %q", id, ts.Format(time.RFC3339Nano), got[id], want)
		}
	}

	// The same events again, under the batch id and under another: all absorbed.
	for _, id := range []string{"spread", "spread-again"} {
		if res, err := st.InsertEvents(ctx, "acme", batchAt(id, times)); err != nil || res.Accepted != 0 || res.Duplicates != 5 || res.Refused != 2 {
			t.Fatalf("re-sent as %s: %+v %v, want 5 duplicates and 2 refused", id, res, err)
		}
	}
	if n := len(partitionOf(t, r)); n != 5 {
		t.Fatalf("%d events stored after re-sends, want 5", n)
	}

	// Five days later the oldest stored day falls out of the retention: its partition goes with its
	// event, nothing newer does, and the days ahead are made.
	clk.SetTime(now.AddDate(0, 0, 5))
	m, err = st.MaintainPartitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Dropped) != 1 || !m.Dropped[0].Equal(today.AddDate(0, 0, -30)) {
		t.Errorf("dropped %v, want only %s", m.Dropped, today.AddDate(0, 0, -30).Format(time.DateOnly))
	}
	if len(m.Created) != 3 || !m.Created[0].Equal(today.AddDate(0, 0, 5)) {
		t.Errorf("created %v, want the new today and the two days after it", m.Created)
	}
	got = partitionOf(t, r)
	if _, ok := got[2]; ok || len(got) != 4 {
		t.Errorf("after retention the stored events are %v, want 3, 4, 5 and 6", got)
	}
	days, err := st.PartitionDays(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(days) != m.Partitions || days[0].Before(today.AddDate(0, 0, 5-30)) {
		t.Errorf("partitions %v (maintenance counted %d), none may be before the oldest day kept", days, m.Partitions)
	}
}

// TestPartitionDroppedUnderAStoreIsRetried: a receiver with a shorter retention drops a day
// another still believes in; the other's next write there is answered unavailable (retried, not
// a 500), and the retry recreates the partition and stores the events.
func TestPartitionDroppedUnderAStoreIsRetried(t *testing.T) {
	ctx := context.Background()
	r := receiverGranting(t, "acme", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(now)
	keeps, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithClock(clk), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		t.Fatal(err)
	}
	defer keeps.Close()
	drops, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithClock(clk), store.WithRetention(7), store.WithRoles(store.RoleIngest, store.RoleRawReader))
	if err != nil {
		t.Fatal(err)
	}
	defer drops.Close()
	old := now.AddDate(0, 0, -20)
	if res, err := keeps.InsertEvents(ctx, "acme", batchAt("a", map[int]time.Time{1: old})); err != nil || res.Accepted != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if _, err := drops.MaintainPartitions(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = keeps.InsertEvents(ctx, "acme", batchAt("b", map[int]time.Time{2: old.Add(time.Hour)}))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("write into a dropped partition: %v, want ErrUnavailable", err)
	}
	if res, err := keeps.InsertEvents(ctx, "acme", batchAt("b", map[int]time.Time{2: old.Add(time.Hour)})); err != nil || res.Accepted != 1 {
		t.Fatalf("retry: %+v %v, want the event stored", res, err)
	}
}

// TestPartitionsCreatedByManyReceiversAtOnce: receivers racing to create the same new day all
// succeed and store every event once.
func TestPartitionsCreatedByManyReceiversAtOnce(t *testing.T) {
	ctx := context.Background()
	r := receiverGranting(t, "acme", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	day := time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for k := range 6 {
		st, err := store.Open(ctx, r.PG.DSN("receiver"), store.WithRoles(store.RoleIngest, store.RoleRawReader))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		wg.Go(func() {
			times := map[int]time.Time{}
			for i := range 10 {
				times[k*10+i] = day.Add(time.Duration(k*10+i) * time.Minute)
			}
			if res, err := st.InsertEvents(ctx, "acme", batchAt(fmt.Sprint(k), times)); err != nil || res.Accepted != 10 {
				t.Errorf("receiver %d: %+v %v", k, res, err)
			}
		})
	}
	wg.Wait()
	got := partitionOf(t, r)
	if len(got) != 60 {
		t.Errorf("%d events stored, want 60", len(got))
	}
	for id, part := range got {
		if part != partitionName(day) {
			t.Errorf("event %d in %s", id, part)
		}
	}
}

// TestIngestRoleCannotManageTablesItself: the ingest role creates and drops partitions only
// through the functions, never with DDL of its own; the functions make no partition far in the
// past or ahead of the database's clock, whoever asks; and a caller's temporary table cannot
// stand in for a partition.
func TestIngestRoleCannotManageTablesItself(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ingest, err := store.OpenPool(ctx, r.PG.DSN("receiver"), store.RoleIngest)
	if err != nil {
		t.Fatal(err)
	}
	defer ingest.Close()
	day := time.Now().UTC().AddDate(0, 0, -3).Format(time.DateOnly)
	if _, err := ingest.Exec(ctx, `SELECT event_partition($1::date)`, day); err != nil {
		t.Fatalf("the ingest role cannot call event_partition: %v", err)
	}
	part := "events_p" + strings.ReplaceAll(day, "-", "")
	for sql, code := range map[string]string{
		`CREATE TABLE events_p20260506 PARTITION OF events FOR VALUES FROM ('2026-05-06') TO ('2026-05-07')`: "42501",
		`DROP TABLE ` + part:                          "42501",
		`ALTER TABLE events DETACH PARTITION ` + part: "42501",
		`SELECT event_partition(current_date + 401)`:  "22008",
		`SELECT event_partition(current_date - 3661)`: "22008",
		`SELECT event_partition('9000-01-01')`:        "22008",
	} {
		_, err := ingest.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != code {
			t.Errorf("%s: %v, want SQLSTATE %s", sql, err, code)
		}
	}

	// A temporary table named like tomorrow's partition, in the caller's session.
	conn, err := ingest.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tomorrow := time.Now().UTC().AddDate(0, 0, 1)
	if _, err := conn.Exec(ctx, `CREATE TEMP TABLE `+partitionName(tomorrow)+` (x int)`); err != nil {
		t.Fatal(err)
	}
	var created bool
	if err := conn.QueryRow(ctx, `SELECT event_partition($1::date)`, tomorrow.Format(time.DateOnly)).Scan(&created); err != nil || !created {
		t.Fatalf("event_partition with a shadowing temporary table: created %v, %v", created, err)
	}
	var parent string
	if err := r.DB.QueryRow(ctx, `SELECT i.inhparent::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = $1 AND n.nspname = 'public'`, partitionName(tomorrow)).Scan(&parent); err != nil || parent != "events" {
		t.Errorf("tomorrow's partition: parent %q, %v", parent, err)
	}
}

// TestRefusedBatchesMakeNoPartitions: a batch the ledger refuses (no record, consent Off) or
// whose events it refuses makes no partition.
func TestRefusedBatchesMakeNoPartitions(t *testing.T) {
	ctx := context.Background()
	r, err := receivertest.Start(ctx, server.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	since := time.Now().UTC().AddDate(0, 0, -10)
	if err := r.Grant(ctx, "acme", consentv1.TierEventLevel, since); err != nil {
		t.Fatal(err)
	}
	if err := r.Grant(ctx, "off", consentv1.TierOff, since); err != nil {
		t.Fatal(err)
	}
	times := map[int]time.Time{}
	for i := range 100 {
		times[i] = since.AddDate(0, 0, -i-1) // every day before consent
	}
	before, err := r.Store.PartitionDays(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"nobody", "off", "acme"} {
		b := batchAt("x", times)
		b.InstanceID = inst
		res, err := r.Store.InsertEvents(ctx, inst, b)
		if inst == "acme" && (err != nil || res.Refused != 100) {
			t.Errorf("acme: %+v %v, want all 100 refused", res, err)
		}
	}
	after, err := r.Store.PartitionDays(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("refused batches made %d partitions", len(after)-len(before))
	}
}

// TestPartitionLockTimeoutIsUnavailable: while something holds the lock attaching a partition
// needs, a batch for a new day is answered unavailable (503, retried), and readers of events do
// not hold it up at all.
func TestPartitionLockTimeoutIsUnavailable(t *testing.T) {
	ctx := context.Background()
	r := receiverGranting(t, "acme", time.Now().AddDate(0, 0, -30))
	// A long report: an open transaction that read events.
	reader, err := r.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if res, err := r.Store.InsertEvents(ctx, "acme", batchAt("a", map[int]time.Time{1: time.Now().AddDate(0, 0, -5)})); err != nil || res.Accepted != 1 {
		t.Fatalf("new day while a reader is open: %+v %v", res, err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a new day waited %s on a reader", took)
	}
	_ = reader.Rollback(ctx)

	holder, err := r.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := holder.Exec(ctx, `LOCK TABLE events IN SHARE UPDATE EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	_, err = r.Store.InsertEvents(ctx, "acme", batchAt("b", map[int]time.Time{2: time.Now().AddDate(0, 0, -6)}))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("new day while its lock is held: %v, want ErrUnavailable", err)
	}
}
