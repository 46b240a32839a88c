-- The event_logs table as Sourcegraph defines it (the columns the collector must handle,
-- including the ones that must never leave an instance).
CREATE TABLE IF NOT EXISTS event_logs (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    url text NOT NULL DEFAULT '',
    user_id integer NOT NULL DEFAULT 0,
    anonymous_user_id text NOT NULL DEFAULT '',
    source text NOT NULL DEFAULT 'WEB',
    argument jsonb,
    version text,
    "timestamp" timestamp with time zone NOT NULL DEFAULT now(),
    feature_flags jsonb,
    cohort_id date,
    public_argument jsonb DEFAULT '{}'::jsonb NOT NULL,
    first_source_url text,
    last_source_url text,
    referrer text,
    device_id text,
    insert_id text,
    billing_product_category text,
    billing_event_id text,
    client text,
    CONSTRAINT event_logs_check_has_user CHECK (user_id = 0 AND anonymous_user_id <> '' OR user_id <> 0 AND anonymous_user_id = '' OR user_id <> 0 AND anonymous_user_id <> ''),
    CONSTRAINT event_logs_check_name_not_empty CHECK (name <> ''),
    CONSTRAINT event_logs_check_source_not_empty CHECK (source <> ''),
    CONSTRAINT event_logs_check_version_not_empty CHECK (version <> '')
);
CREATE INDEX IF NOT EXISTS event_logs_timestamp ON event_logs USING btree ("timestamp");
CREATE INDEX IF NOT EXISTS event_logs_name_timestamp ON event_logs USING btree (name, "timestamp" DESC);

-- A read-only role, as the collector needs no more.
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_reader') THEN
    CREATE ROLE telemetry_reader LOGIN;
  END IF;
END $$;
GRANT SELECT ON event_logs TO telemetry_reader;
