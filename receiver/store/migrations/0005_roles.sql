-- Data access by role, enforced by PostgreSQL. Three group roles (NOLOGIN); the receiver's login
-- user, which owns the schema and runs these migrations (it needs CREATEROLE), is made a member of
-- each and switches to the one a task needs:
--
--   telemetry_ingest      storing batches, the consent ledger, erasures. It can write events but
--                         read back only what de-duplication and deletion by time need (instance,
--                         event id, timestamp, delivery): never a user, a name or a property.
--   telemetry_raw_reader  reading stored events and cells (an instance's listing of what it
--                         exported; raw-data access for the employees entitled to it).
--   telemetry_reporting   the reporting tools: only the views below, aggregated or normalized
--                         (no event id, source, version, client, flags or properties beyond the
--                         pattern type), never the tables.
--
-- Roles are cluster-wide in PostgreSQL; the grants are per database.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_ingest') THEN
    CREATE ROLE telemetry_ingest NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_raw_reader') THEN
    CREATE ROLE telemetry_raw_reader NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_reporting') THEN
    CREATE ROLE telemetry_reporting NOLOGIN;
  END IF;
  EXECUTE format('GRANT telemetry_ingest, telemetry_raw_reader, telemetry_reporting TO %I', current_user);
  EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO telemetry_ingest', current_database());
END $$;

REVOKE ALL ON events, aggregates, aggregate_days, cursors, batches, deliveries,
  consent_instances, consent_transitions, erasures, schema_migrations FROM PUBLIC;

-- Ingestion.
GRANT INSERT, DELETE ON events TO telemetry_ingest;
GRANT SELECT (instance_id, event_id, ts, delivery) ON events TO telemetry_ingest;
GRANT INSERT, DELETE ON aggregates TO telemetry_ingest;
GRANT SELECT (instance_id, day, metric, dimension) ON aggregates TO telemetry_ingest;
GRANT SELECT, INSERT ON aggregate_days TO telemetry_ingest;
GRANT SELECT, INSERT, UPDATE ON cursors, batches TO telemetry_ingest;
GRANT INSERT ON deliveries TO telemetry_ingest;
GRANT USAGE ON SEQUENCE delivery_seq TO telemetry_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON consent_instances, consent_transitions, erasures TO telemetry_ingest;

-- Raw data.
GRANT SELECT ON events, aggregates, deliveries, batches TO telemetry_raw_reader;

-- Reporting: aggregated and normalized views only. They run with their owner's rights, so the
-- reporting role reads through them without any right on the tables.
CREATE VIEW report_events AS
  SELECT instance_id, user_id, name, ts, properties->>'patternType' AS pattern_type FROM events;
CREATE VIEW report_aggregates AS
  SELECT instance_id, day, metric, dimension, value, users FROM aggregates;
GRANT SELECT ON report_events, report_aggregates TO telemetry_reporting;
