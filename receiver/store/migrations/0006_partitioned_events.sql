-- Events are partitioned by time, one partition per UTC day, so a year of a fleet's data costs
-- no more to ingest into than an empty table (each day's rows and index pages are its own),
-- and retention drops whole days instead of deleting rows.
--
-- A partitioned table's unique keys must hold its partition key, so an event's key becomes
-- (instance, event id, timestamp). A collector re-sends an event_logs row with its timestamp
-- unchanged, so re-sends are still absorbed; the same id under another timestamp is another row
-- (only the instance's own collector can send it, and it could as well invent events).
--
-- Partitions are created ahead by the receiver's maintenance and on demand for a day a batch
-- needs, and dropped behind by its retention setting, through the two functions below: they run
-- with the schema owner's rights, so the ingest role itself never gets to create or drop tables.

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER INDEX events_ts_brin RENAME TO events_unpartitioned_ts_brin;
ALTER INDEX events_delivery_brin RENAME TO events_unpartitioned_delivery_brin;
DROP VIEW report_events;

CREATE TABLE events (
    instance_id   text        NOT NULL,
    event_id      bigint      NOT NULL,
    name          text        NOT NULL,
    ts            timestamptz NOT NULL,
    source        text        NOT NULL DEFAULT '',
    version       text        NOT NULL DEFAULT '',
    client        text        NOT NULL DEFAULT '',
    user_id       text        NOT NULL,
    feature_flags jsonb       NOT NULL DEFAULT '{}',
    properties    jsonb       NOT NULL DEFAULT '{}',
    received_at   timestamptz NOT NULL DEFAULT now(),
    delivery      bigint,
    PRIMARY KEY (instance_id, event_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX events_ts_brin ON events USING brin (ts);
CREATE INDEX events_delivery_brin ON events USING brin (delivery);

-- event_partition makes sure the partition holding the UTC day exists, and returns whether it
-- created it. The partition is made as a table of its own and then attached, which locks the
-- events table only against other attaches (SHARE UPDATE EXCLUSIVE): readers and writers go on.
-- It makes no partition for a day more than ten years back or more than 400 days ahead of the
-- database's clock, whoever asks (the receiver itself asks only within its retention and a
-- day's skew).
CREATE FUNCTION event_partition(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '3s' AS $$
DECLARE
  part text := 'events_p' || to_char(day, 'YYYYMMDD');
BEGIN
  IF day IS NULL OR day < current_date - 3660 OR day > current_date + 400 THEN
    RAISE EXCEPTION 'no events partition for day %: more than ten years back or 400 days ahead', day USING ERRCODE = '22008';
  END IF;
  IF to_regclass(format('%I.%I', current_schema(), part)) IS NOT NULL THEN
    RETURN false;
  END IF;
  -- Creators queue here (the mode conflicts with itself, not with inserts or reads), and taking
  -- a table lock makes the check below see a partition the one before committed.
  LOCK TABLE events IN SHARE UPDATE EXCLUSIVE MODE;
  IF to_regclass(format('%I.%I', current_schema(), part)) IS NOT NULL THEN
    RETURN false;
  END IF;
  EXECUTE format('CREATE TABLE %I.%I (LIKE events INCLUDING DEFAULTS)', current_schema(), part);
  EXECUTE format('ALTER TABLE events ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)', current_schema(), part,
    day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
  RETURN true;
EXCEPTION WHEN duplicate_table THEN
  RETURN false;
END $$;

-- drop_event_partitions drops the partitions of every UTC day before the given one and returns
-- their days. Only partitions named by event_partition are touched. Dropping one locks the
-- events table (ACCESS EXCLUSIVE) for a moment; it waits at most 3 s and the maintenance run
-- tries again an hour later. (The ingest role may already delete any event, as withdrawals and
-- erasures must: this gives it no more than that.)
CREATE FUNCTION drop_event_partitions(before date) RETURNS SETOF date
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '3s' AS $$
DECLARE
  part record;
BEGIN
  FOR part IN
    SELECT c.relname, to_date(substr(c.relname, 9), 'YYYYMMDD') AS day
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{8}$'
    ORDER BY 2
  LOOP
    IF part.day < before THEN
      EXECUTE format('DROP TABLE %I.%I', current_schema(), part.relname);
      RETURN NEXT part.day;
    END IF;
  END LOOP;
END $$;

-- event_partitions lists the days that have a partition, for the receiver's metrics and tests.
CREATE FUNCTION event_partitions() RETURNS SETOF date
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
  SELECT to_date(substr(c.relname, 9), 'YYYYMMDD')
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{8}$'
  ORDER BY 1
$$;

-- Events stored before this release move into their days' partitions, whatever their days.
DO $$
DECLARE
  d date;
BEGIN
  FOR d IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM events_unpartitioned LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)', 'events_p' || to_char(d, 'YYYYMMDD'),
      d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
  END LOOP;
END $$;
INSERT INTO events SELECT instance_id, event_id, name, ts, source, version, client, user_id,
  feature_flags, properties, received_at, delivery FROM events_unpartitioned;
DROP TABLE events_unpartitioned;

REVOKE ALL ON events FROM PUBLIC;
REVOKE ALL ON FUNCTION event_partition(date), drop_event_partitions(date), event_partitions() FROM PUBLIC;
GRANT INSERT, DELETE ON events TO telemetry_ingest;
GRANT SELECT (instance_id, event_id, ts, delivery) ON events TO telemetry_ingest;
GRANT EXECUTE ON FUNCTION event_partition(date), drop_event_partitions(date), event_partitions() TO telemetry_ingest;
GRANT SELECT ON events TO telemetry_raw_reader;

CREATE VIEW report_events AS
  SELECT instance_id, user_id, name, ts, properties->>'patternType' AS pattern_type FROM events;
GRANT SELECT ON report_events TO telemetry_reporting;

-- The functions that run with the owner's rights look in this schema, and in the caller's
-- temporary schema last: a caller's temporary table cannot stand in for events or a partition.
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION event_partition(date) SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION drop_event_partitions(date) SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION event_partitions() SET search_path = %I, pg_temp', current_schema());
END $$;
