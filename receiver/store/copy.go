/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

// eventColumns are the events columns a COPY fills, in the order copyEvents writes them.
const eventColumns = "instance_id, event_id, name, ts, source, version, client, user_id, feature_flags, properties, received_at, delivery"

// pgEpochMicros is 2000-01-01T00:00:00Z, PostgreSQL's timestamp epoch, in Unix microseconds.
const pgEpochMicros = 946_684_800_000_000

// copyEvents renders events as a PostgreSQL binary COPY stream for eventColumns. Writing the
// format directly (text as bytes, bigint and timestamptz as 8 bytes, jsonb as a version byte
// and the JSON) keeps the receiver's insert path free of per-value reflection; the stream is
// built once and serves both the direct COPY and, when needed, the staging table.
func copyEvents(instance string, events []batchv1.Event, receivedAt time.Time, delivery int64) ([]byte, error) {
	buf := make([]byte, 0, 19+len(events)*320)
	buf = append(buf, "PGCOPY\n\xff\r\n\x00"...)
	buf = binary.BigEndian.AppendUint32(buf, 0) // flags
	buf = binary.BigEndian.AppendUint32(buf, 0) // header extension length
	text := func(s string) {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(s))) //nolint:gosec // bounded by the batch limits
		buf = append(buf, s...)
	}
	bigint := func(v int64) {
		buf = binary.BigEndian.AppendUint32(buf, 8)
		buf = binary.BigEndian.AppendUint64(buf, uint64(v)) //nolint:gosec // two's complement, as PostgreSQL reads it
	}
	timestamptz := func(t time.Time) { bigint(t.Unix()*1_000_000 + int64(t.Nanosecond()/1000) - pgEpochMicros) }
	// jsonb is written as a placeholder length, the version byte 1, the JSON, then the length.
	jsonb := func(appendJSON func([]byte) ([]byte, error)) error {
		at := len(buf)
		buf = append(buf, 0, 0, 0, 0, 1)
		var err error
		if buf, err = appendJSON(buf); err != nil {
			return err
		}
		binary.BigEndian.PutUint32(buf[at:], uint32(len(buf)-at-4)) //nolint:gosec // bounded by the batch limits
		return nil
	}
	for i := range events {
		e := &events[i]
		id, err := strconv.ParseInt(e.ID, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("event %d: id %q is not a bigint", i, e.ID)
		}
		buf = binary.BigEndian.AppendUint16(buf, 12)
		text(instance)
		bigint(id)
		text(e.Name)
		timestamptz(e.Timestamp)
		text(e.Source)
		text(e.ProductVersion)
		text(e.Client)
		text(e.UserID)
		if err := jsonb(func(b []byte) ([]byte, error) { return batchv1.AppendFeatureFlags(b, e.FeatureFlags), nil }); err != nil {
			return nil, err
		}
		if err := jsonb(func(b []byte) ([]byte, error) { return batchv1.AppendProperties(b, e.Properties) }); err != nil {
			return nil, err
		}
		timestamptz(receivedAt)
		bigint(delivery)
	}
	return binary.BigEndian.AppendUint16(buf, 0xffff), nil // trailer: -1
}
