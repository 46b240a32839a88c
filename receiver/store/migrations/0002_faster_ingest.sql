-- Ingestion is the receiver's hot path. Two changes make each stored event cheaper:
--
-- * event_id becomes bigint (it is an event_logs id, validated as one): the primary-key B-tree
--   compares integers instead of text and is smaller.
-- * the (instance_id, ts) B-tree becomes a BRIN index on ts: events arrive roughly in time order,
--   so block ranges summarize well, cost almost nothing to maintain, and still serve the
--   reports' time-range scans (the primary key serves per-instance lookups).
ALTER TABLE events ALTER COLUMN event_id TYPE bigint USING event_id::bigint;
DROP INDEX IF EXISTS events_instance_ts;
CREATE INDEX events_ts_brin ON events USING brin (ts);
