-- Rollups for the report (receiver/report), so its answers read a row per user and day, not every
-- event. Each UTC day of an instance is summarized once its events are stored and again whenever
-- they change; the report reads the rollups of the whole days in a window and the raw events of
-- the partial days at its edges, so its answers equal those computed from raw events.
--
-- What changed is queued in rollup_dirty: ingestion appends (instance, day) for the days a batch
-- stored events in, and withdrawals, erasures and retention delete the affected rollup rows at
-- once and queue the days for recomputation from the events left. refresh_report_rollups() takes
-- the queue (only rows it can see: a batch still being stored keeps its entry for the next run)
-- and recomputes those days.

CREATE TABLE rollup_dirty (
    instance_id text NOT NULL,
    day         date NOT NULL
);

-- One row per instance, pseudonymous user and UTC day with events.
CREATE TABLE rollup_user_days (
    instance_id      text    NOT NULL,
    day              date    NOT NULL,
    user_id          text    NOT NULL,
    -- events: every stored event; searches_*: the catalog's search event by pattern type.
    events           bigint  NOT NULL,
    searches_regexp  bigint  NOT NULL,
    searches_literal bigint  NOT NULL,
    searches_other   bigint  NOT NULL,
    -- The features the user's events that day belong to (per the feature map), sorted.
    features         text[]  NOT NULL,
    PRIMARY KEY (instance_id, day, user_id)
);
CREATE INDEX rollup_user_days_day ON rollup_user_days (day);

-- Searches per user and month: the months before the current one are read from here, not from
-- every day of them. Kept in step with rollup_user_days by the refresh.
CREATE TABLE rollup_user_months (
    instance_id      text   NOT NULL,
    month            date   NOT NULL,
    user_id          text   NOT NULL,
    searches_regexp  bigint NOT NULL,
    searches_literal bigint NOT NULL,
    searches_other   bigint NOT NULL,
    PRIMARY KEY (instance_id, month, user_id)
);

-- A user's day split into runs of feature events with no gap over 30 minutes. Runs of
-- neighbouring days join into one session when the gap between them is 30 minutes or less.
CREATE TABLE rollup_day_sessions (
    instance_id text        NOT NULL,
    day         date        NOT NULL,
    user_id     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    features    text[]      NOT NULL,
    PRIMARY KEY (instance_id, day, user_id, started_at)
);
CREATE INDEX rollup_day_sessions_day ON rollup_day_sessions (day);

-- The feature map and search event the rollups were computed with. A refresh with another map
-- recomputes every day.
CREATE TABLE rollup_feature_map (
    search_event text   NOT NULL,
    names        text[] NOT NULL,
    features     text[] NOT NULL
);

-- refresh_report_rollups recomputes the queued days (all days when the map differs from the one
-- the rollups were built with) and returns how many (instance, day) it recomputed. Refreshers
-- run one at a time.
CREATE FUNCTION refresh_report_rollups(p_search_event text, p_names text[], p_features text[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  d date;
  done bigint := 0;
BEGIN
  IF p_search_event IS NULL OR p_names IS NULL OR p_features IS NULL OR cardinality(p_names) <> cardinality(p_features) THEN
    RAISE EXCEPTION 'refresh_report_rollups: a search event and feature map of equal lengths are required' USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(2121261691);
  IF NOT EXISTS (SELECT FROM rollup_feature_map m WHERE m.search_event = p_search_event
                 AND m.names = p_names AND m.features = p_features) THEN
    DELETE FROM rollup_feature_map;
    INSERT INTO rollup_feature_map VALUES (p_search_event, p_names, p_features);
    TRUNCATE rollup_user_days, rollup_day_sessions, rollup_user_months;
    INSERT INTO rollup_dirty SELECT DISTINCT instance_id, (ts AT TIME ZONE 'UTC')::date FROM events;
  END IF;
  CREATE TEMP TABLE IF NOT EXISTS rollup_todo (instance_id text, day date) ON COMMIT DROP;
  WITH taken AS (DELETE FROM rollup_dirty RETURNING instance_id, day)
  INSERT INTO rollup_todo SELECT DISTINCT instance_id, day FROM taken;
  -- Day by day, so each pass reads one partition of events.
  FOR d IN SELECT DISTINCT t.day FROM rollup_todo t ORDER BY 1 LOOP
    DELETE FROM rollup_user_days r USING rollup_todo t WHERE t.day = d AND r.day = d AND r.instance_id = t.instance_id;
    DELETE FROM rollup_day_sessions r USING rollup_todo t WHERE t.day = d AND r.day = d AND r.instance_id = t.instance_id;
    CREATE TEMP TABLE IF NOT EXISTS rollup_day_events (instance_id text, user_id text, ts timestamptz, name text,
      pattern_type text, feature text) ON COMMIT DROP;
    TRUNCATE rollup_day_events;
    INSERT INTO rollup_day_events
    SELECT e.instance_id, e.user_id, e.ts, e.name, e.properties->>'patternType', fm.feature
    FROM events e LEFT JOIN unnest(p_names, p_features) AS fm(name, feature) ON fm.name = e.name
    WHERE e.ts >= d::timestamp AT TIME ZONE 'UTC' AND e.ts < (d + 1)::timestamp AT TIME ZONE 'UTC'
      AND e.instance_id IN (SELECT t.instance_id FROM rollup_todo t WHERE t.day = d);
    INSERT INTO rollup_user_days
    SELECT instance_id, d, user_id, count(*),
           count(*) FILTER (WHERE name = p_search_event AND pattern_type = 'regexp'),
           count(*) FILTER (WHERE name = p_search_event AND pattern_type = 'literal'),
           count(*) FILTER (WHERE name = p_search_event AND coalesce(pattern_type, '') NOT IN ('regexp', 'literal')),
           coalesce(array_agg(DISTINCT feature ORDER BY feature) FILTER (WHERE feature IS NOT NULL), '{}')
    FROM rollup_day_events GROUP BY instance_id, user_id;
    INSERT INTO rollup_day_sessions
    SELECT instance_id, d, user_id, min(ts), max(ts), array_agg(DISTINCT feature ORDER BY feature)
    FROM (
      SELECT *, sum(starts) OVER (PARTITION BY instance_id, user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS run
      FROM (
        SELECT instance_id, user_id, ts, feature,
               CASE WHEN lag(ts) OVER w IS NULL OR ts - lag(ts) OVER w > interval '30 minutes' THEN 1 ELSE 0 END AS starts
        FROM rollup_day_events WHERE feature IS NOT NULL WINDOW w AS (PARTITION BY instance_id, user_id ORDER BY ts)
      ) marked
    ) runs
    GROUP BY instance_id, user_id, run;
    done := done + (SELECT count(*) FROM rollup_todo t WHERE t.day = d);
  END LOOP;
  -- The months of the recomputed days, from their days.
  DELETE FROM rollup_user_months r USING (SELECT DISTINCT instance_id, date_trunc('month', day::timestamp)::date AS month FROM rollup_todo) t
  WHERE r.instance_id = t.instance_id AND r.month = t.month;
  INSERT INTO rollup_user_months
  SELECT d.instance_id, t.month, d.user_id, sum(d.searches_regexp), sum(d.searches_literal), sum(d.searches_other)
  FROM (SELECT DISTINCT instance_id, date_trunc('month', day::timestamp)::date AS month FROM rollup_todo) t
  JOIN rollup_user_days d ON d.instance_id = t.instance_id AND d.day >= t.month AND d.day < (t.month + interval '1 month')::date
  GROUP BY d.instance_id, t.month, d.user_id
  HAVING sum(d.searches_regexp + d.searches_literal + d.searches_other) > 0;
  DROP TABLE IF EXISTS rollup_todo;
  DROP TABLE IF EXISTS rollup_day_events;
  RETURN done;
END $$;

-- forget_report_rollups deletes the rollups of an instance's days that [from, to) touches
-- (from NULL: from the start) and queues them, so a withdrawal or an erasure leaves no summary of
-- what it deleted, and the next refresh summarizes what is left of those days.
CREATE FUNCTION forget_report_rollups(instance text, range_from timestamptz, range_to timestamptz) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
  WITH touched AS (
    SELECT DISTINCT day FROM rollup_user_days
    WHERE instance_id = instance AND (range_from IS NULL OR day >= (range_from AT TIME ZONE 'UTC')::date)
      AND (range_to IS NULL OR day <= (range_to AT TIME ZONE 'UTC')::date)
  ), queued AS (
    INSERT INTO rollup_dirty SELECT instance, day FROM touched
  )
  -- The months of those days are summarized again from their days at the next refresh.
  DELETE FROM rollup_user_months
  WHERE instance_id = instance AND month IN (SELECT date_trunc('month', day::timestamp)::date FROM touched);
  DELETE FROM rollup_user_days
  WHERE instance_id = instance AND (range_from IS NULL OR day >= (range_from AT TIME ZONE 'UTC')::date)
    AND (range_to IS NULL OR day <= (range_to AT TIME ZONE 'UTC')::date);
  DELETE FROM rollup_day_sessions
  WHERE instance_id = instance AND (range_from IS NULL OR day >= (range_from AT TIME ZONE 'UTC')::date)
    AND (range_to IS NULL OR day <= (range_to AT TIME ZONE 'UTC')::date);
$$;

-- Retention drops the rollups of the days it drops.
CREATE OR REPLACE FUNCTION drop_event_partitions(before date) RETURNS SETOF date
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
  DELETE FROM rollup_user_days WHERE day < before;
  DELETE FROM rollup_day_sessions WHERE day < before;
  DELETE FROM rollup_dirty WHERE day < before;
  -- The month cut in two keeps only what its remaining days summarize.
  DELETE FROM rollup_user_months WHERE month <= date_trunc('month', before::timestamp)::date;
  INSERT INTO rollup_user_months
  SELECT instance_id, date_trunc('month', before::timestamp)::date, user_id, sum(searches_regexp), sum(searches_literal), sum(searches_other)
  FROM rollup_user_days WHERE day >= before AND day < (date_trunc('month', before::timestamp) + interval '1 month')::date
  GROUP BY instance_id, user_id
  HAVING sum(searches_regexp + searches_literal + searches_other) > 0;
END $$;

REVOKE ALL ON rollup_dirty, rollup_user_days, rollup_day_sessions, rollup_user_months, rollup_feature_map FROM PUBLIC;
REVOKE ALL ON FUNCTION refresh_report_rollups(text, text[], text[]), forget_report_rollups(text, timestamptz, timestamptz) FROM PUBLIC;
GRANT INSERT ON rollup_dirty TO telemetry_ingest;
GRANT EXECUTE ON FUNCTION refresh_report_rollups(text, text[], text[]), forget_report_rollups(text, timestamptz, timestamptz) TO telemetry_ingest;
GRANT EXECUTE ON FUNCTION refresh_report_rollups(text, text[], text[]) TO telemetry_reporting;

-- The reporting role reads the rollups as it reads report_events: pseudonymous users, no
-- event ids or properties beyond the pattern-type counts.
CREATE VIEW report_user_days AS
  SELECT instance_id, day, user_id, events, searches_regexp, searches_literal, searches_other, features FROM rollup_user_days;
CREATE VIEW report_user_months AS
  SELECT instance_id, month, user_id, searches_regexp, searches_literal, searches_other FROM rollup_user_months;
CREATE VIEW report_day_sessions AS
  SELECT instance_id, day, user_id, started_at, ended_at, features FROM rollup_day_sessions;
GRANT SELECT ON report_user_days, report_user_months, report_day_sessions TO telemetry_reporting;
GRANT SELECT ON rollup_user_days, rollup_user_months, rollup_day_sessions TO telemetry_raw_reader;

-- As in 0006: the functions that run with the owner's rights look in the caller's temporary
-- schema last (CREATE OR REPLACE above reset drop_event_partitions' setting).
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION drop_event_partitions(date) SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION refresh_report_rollups(text, text[], text[]) SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION forget_report_rollups(text, timestamptz, timestamptz) SET search_path = %I, pg_temp', current_schema());
END $$;
