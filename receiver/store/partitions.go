/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

// Events live in one partition per UTC day (migrations/0006_partitioned_events.sql). The store
// makes sure a batch's days have partitions before it writes, keeps partitions ahead of time,
// and drops the days behind its retention.

const (
	// MaxFutureSkew is how far past the receiver's clock an event may be dated: later events are
	// refused (counted, never stored), so no partition is made for a day that has not come.
	MaxFutureSkew = 24 * time.Hour
	// PartitionsAhead is how many days after today keep a partition ready.
	PartitionsAhead = 2
	// MaxRetentionDays is the oldest an event may be to be stored, in whole UTC days before
	// today, whatever the retention (the database makes no partition older than that either).
	MaxRetentionDays = 3650
)

// checkViolation is PostgreSQL's SQLSTATE for a row no partition accepts (among others).
const checkViolation = "23514"

// WithRetention keeps events for days whole UTC days before today (0, the default: nothing is
// dropped): maintenance drops older days' partitions, and ingestion refuses events dated before
// the oldest day kept (and, whatever the retention, before MaxRetentionDays).
func WithRetention(days int) Option {
	return func(s *Store) { s.retentionDays = max(days, 0) }
}

// partitionSet remembers the days known to have a partition, so a batch asks the database only
// for a day it has not seen.
type partitionSet struct {
	mu   sync.Mutex
	days map[int64]struct{}
}

func (p *partitionSet) has(day int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.days[day]
	return ok
}

func (p *partitionSet) add(day int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.days == nil {
		p.days = map[int64]struct{}{}
	}
	p.days[day] = struct{}{}
}

func (p *partitionSet) forget() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.days = nil
}

// utcDay is t's UTC day as days since the Unix epoch.
func utcDay(t time.Time) int64 {
	d := t.Unix() / 86400
	if t.Unix()%86400 < 0 {
		d--
	}
	return d
}

// eventDays lists the UTC days of events, each once, as dates.
func eventDays(events []batchv1.Event) []string {
	var days []string
	last := int64(-1 << 62)
	for i := range events {
		day := utcDay(events[i].Timestamp)
		if day == last {
			continue
		}
		last = day
		if d := dayDate(day).Format(time.DateOnly); !slices.Contains(days, d) {
			days = append(days, d)
		}
	}
	return days
}

// dayDate is the UTC midnight starting day.
func dayDate(day int64) time.Time { return time.Unix(day*86400, 0).UTC() }

// inRetention reports whether an event dated ts may be stored now: not before the oldest day
// kept (MaxRetentionDays back at most, also without a retention), not more than MaxFutureSkew
// ahead.
func (s *Store) inRetention(ts, now time.Time) bool {
	if ts.After(now.Add(MaxFutureSkew)) {
		return false
	}
	days := s.retentionDays
	if days == 0 || days > MaxRetentionDays {
		days = MaxRetentionDays
	}
	return utcDay(ts) >= utcDay(now)-int64(days)
}

// ensurePartitions makes sure every day of events that will be stored has a partition. It runs
// outside the batch's transaction, so a partition attached for one batch is not held locked while
// that batch is stored. Days already known cost nothing; otherwise the instance's consent is
// looked at first, so a batch that will be refused (or its refused events) makes no partition.
// If consent changes before the batch's transaction, a missing day makes that transaction fail
// as unavailable, and the retry gets here again.
func (s *Store) ensurePartitions(ctx context.Context, instance, kind string, events []batchv1.Event, now time.Time) error {
	var missing []int64
	last := int64(-1 << 62) // batches are in time order: most events share the previous one's day
	for i := range events {
		if !s.inRetention(events[i].Timestamp, now) {
			continue
		}
		day := utcDay(events[i].Timestamp)
		if day == last {
			continue
		}
		last = day
		if !s.partitions.has(day) && !slices.Contains(missing, day) {
			missing = append(missing, day)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var p *policy
	if err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		p, err = s.loadPolicy(ctx, tx, instance)
		return err
	}); err != nil || p.refusal(kind, now) != nil {
		return nil // refused whole: the batch's own transaction says so
	}
	for _, day := range missing {
		kept := slices.ContainsFunc(events, func(e batchv1.Event) bool {
			return utcDay(e.Timestamp) == day && p.keepEvent(e.Timestamp, e.ID)
		})
		if !kept {
			continue
		}
		if _, err := s.ensureDay(ctx, day); err != nil {
			return err
		}
	}
	return nil
}

// ensureDay makes sure day has a partition and reports whether it created it.
func (s *Store) ensureDay(ctx context.Context, day int64) (bool, error) {
	var created bool
	if err := s.pool.QueryRow(ctx, `SELECT event_partition($1::date)`, dayDate(day).Format(time.DateOnly)).Scan(&created); err != nil {
		return false, unavailable(fmt.Errorf("creating the events partition of %s: %w", dayDate(day).Format(time.DateOnly), err))
	}
	s.partitions.add(day)
	return created, nil
}

// partitionGone reports whether err is a write that found no partition for a row: a partition
// this store believed in was dropped (by a receiver with a shorter retention). The known days
// are forgotten and the write is answered as unavailable, so it is retried and recreates them.
func (s *Store) partitionGone(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == checkViolation {
		s.partitions.forget()
		return fmt.Errorf("%w: an events partition was dropped while the batch was stored: %w", ErrUnavailable, err)
	}
	return err
}

// Maintenance is what one MaintainPartitions run changed.
type Maintenance struct {
	// Created and Dropped are the UTC days whose partitions were created and dropped.
	Created, Dropped []time.Time
	// Partitions is how many days have a partition afterwards.
	Partitions int
}

// MaintainPartitions creates the partitions of today and the PartitionsAhead days after it, and
// with a retention drops those of every day before the oldest kept. Receivers run it at start
// and hourly; several running it at once is safe.
func (s *Store) MaintainPartitions(ctx context.Context) (Maintenance, error) {
	var m Maintenance
	today := utcDay(s.clock.Now())
	for day := today; day <= today+PartitionsAhead; day++ {
		created, err := s.ensureDay(ctx, day)
		if err != nil {
			return m, err
		}
		if created {
			m.Created = append(m.Created, dayDate(day))
		}
	}
	if s.retentionDays > 0 {
		rows, err := s.pool.Query(ctx, `SELECT drop_event_partitions($1::date)`, dayDate(today-int64(s.retentionDays)).Format(time.DateOnly))
		if err != nil {
			return m, unavailable(fmt.Errorf("dropping events partitions: %w", err))
		}
		for rows.Next() {
			var d time.Time
			if err := rows.Scan(&d); err != nil {
				rows.Close()
				return m, unavailable(err)
			}
			m.Dropped = append(m.Dropped, d)
		}
		if err := rows.Err(); err != nil {
			return m, unavailable(fmt.Errorf("dropping events partitions: %w", err))
		}
		if len(m.Dropped) > 0 {
			s.partitions.forget()
		}
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM event_partitions()`).Scan(&m.Partitions); err != nil {
		return m, unavailable(err)
	}
	return m, nil
}

// PartitionDays lists the UTC days that have an events partition, oldest first.
func (s *Store) PartitionDays(ctx context.Context) ([]time.Time, error) {
	rows, err := s.pool.Query(ctx, `SELECT d FROM event_partitions() d`)
	if err != nil {
		return nil, unavailable(err)
	}
	defer rows.Close()
	var days []time.Time
	for rows.Next() {
		var d time.Time
		if err := rows.Scan(&d); err != nil {
			return nil, unavailable(err)
		}
		days = append(days, d)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable(err)
	}
	return days, nil
}
