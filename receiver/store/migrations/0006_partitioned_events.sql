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
-- created it. Creating one briefly locks the parent table (ACCESS EXCLUSIVE): it is waited for at
-- most 10 s, then the caller's batch fails and is retried.
CREATE FUNCTION event_partition(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '10s' AS $$
DECLARE
  part text := 'events_p' || to_char(day, 'YYYYMMDD');
BEGIN
  IF day IS NULL OR day < date '2000-01-01' OR day > date '9999-12-30' THEN
    RAISE EXCEPTION 'event partition day % out of range', day USING ERRCODE = '22008';
  END IF;
  IF to_regclass(quote_ident(part)) IS NOT NULL THEN
    RETURN false;
  END IF;
  -- Creators queue here (the mode conflicts with itself, not with inserts), and taking a table
  -- lock makes the check below see a partition that the one before committed.
  LOCK TABLE events IN SHARE UPDATE EXCLUSIVE MODE;
  IF to_regclass(quote_ident(part)) IS NOT NULL THEN
    RETURN false;
  END IF;
  EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)', part,
    day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
  RETURN true;
EXCEPTION WHEN duplicate_table THEN
  RETURN false;
END $$;

-- drop_event_partitions drops the partitions of every UTC day before the given one and returns
-- their days. Only partitions named by event_partition are touched.
CREATE FUNCTION drop_event_partitions(before date) RETURNS SETOF date
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '10s' AS $$
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
      EXECUTE format('DROP TABLE %I', part.relname);
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

-- Events stored before this release move into their days' partitions.
SELECT event_partition(d::date)
FROM (SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS d FROM events_unpartitioned) days;
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
