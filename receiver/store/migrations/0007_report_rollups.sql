-- Rollups for the report (receiver/report), so its answers read a row per user and day, not every
-- event. Each UTC day of an instance is summarized once its events are stored and again whenever
-- they change; the report reads the rollups of the whole days in a window and the raw events of
-- the partial days at its edges, so its answers equal those computed from raw events.
--
-- What changed is queued in rollup_dirty: ingestion appends (instance, day) for the days a batch
-- stored events in, and withdrawals, erasures and retention delete the affected rollup rows at
-- once and queue the days for recomputation from the events left. refresh_report_rollups() takes
-- a queued day (only entries it can see: a batch still being stored keeps its entry for a later
-- call) and recomputes it; the months and weeks of recomputed days follow once no day is queued.

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
    -- The run is its day's first and starts at most 30 minutes after the previous day's last run
    -- ended (joins_prev), or its day's last and the next day's first run starts at most 30
    -- minutes after it ends (joins_next): only such runs need ordering to join sessions across
    -- midnight. Kept by the refresh of either day.
    joins_prev  boolean     NOT NULL DEFAULT false,
    joins_next  boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (instance_id, day, user_id, started_at)
);
CREATE INDEX rollup_day_sessions_day ON rollup_day_sessions (day);

-- Who used which feature in an ISO week (Monday to Sunday, UTC), for the stickiness answer.
CREATE TABLE rollup_user_weeks (
    instance_id text   NOT NULL,
    week        date   NOT NULL,
    user_id     text   NOT NULL,
    features    text[] NOT NULL,
    PRIMARY KEY (instance_id, week, user_id)
);

-- Months and weeks whose rollups are recomputed from their days once no day is queued.
CREATE TABLE rollup_dirty_periods (
    instance_id text NOT NULL,
    month       date,
    week        date
);

-- The feature map and search event the rollups are computed with. Only the receiver sets it
-- (set_report_feature_map, from its catalog); the report checks that it matches its own.
CREATE TABLE rollup_feature_map (
    search_event text   NOT NULL,
    names        text[] NOT NULL,
    features     text[] NOT NULL
);

-- A refresh's working set: one day's events of the instances queued for it. Owned by the schema
-- owner and used only inside refresh_report_rollups, one refresh at a time (a temporary table
-- there could be one the caller made).
CREATE UNLOGGED TABLE rollup_refresh_events (
    instance_id  text,
    user_id      text,
    ts           timestamptz,
    name         text,
    pattern_type text,
    feature      text
);

CREATE UNLOGGED TABLE rollup_refresh_periods (
    instance_id text,
    month       date,
    week        date
);

-- Refreshers, the feature map and forgetting serialize on this advisory lock, so a summary is
-- never computed from events that an erasure or withdrawal is deleting.
-- (pg_advisory_xact_lock(2121261691))

-- set_report_feature_map records the feature map, and when it differs from the one recorded
-- (or none was) queues every stored day to be summarized again; it returns whether it did.
CREATE FUNCTION set_report_feature_map(p_search_event text, p_names text[], p_features text[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF p_search_event IS NULL OR p_names IS NULL OR p_features IS NULL OR cardinality(p_names) <> cardinality(p_features)
     OR cardinality(p_names) > 10000 OR (SELECT count(DISTINCT n) FROM unnest(p_names) n) <> cardinality(p_names)
     OR array_position(p_names, NULL) IS NOT NULL OR array_position(p_features, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'set_report_feature_map: a search event and a map of distinct names to features, of equal lengths, are required' USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(2121261691);
  IF EXISTS (SELECT FROM rollup_feature_map m WHERE m.search_event = p_search_event AND m.names = p_names AND m.features = p_features) THEN
    RETURN false;
  END IF;
  DELETE FROM rollup_feature_map;
  INSERT INTO rollup_feature_map VALUES (p_search_event, p_names, p_features);
  TRUNCATE rollup_user_days, rollup_day_sessions, rollup_user_months, rollup_user_weeks, rollup_dirty, rollup_dirty_periods;
  INSERT INTO rollup_dirty SELECT DISTINCT instance_id, (ts AT TIME ZONE 'UTC')::date FROM events;
  RETURN true;
END $$;

-- refresh_report_rollups summarizes again the earliest queued day (all its queued instances) and
-- returns how many instance-days that was; once no day is queued, it recomputes the queued months
-- and weeks from their days and returns 0. Callers repeat it until it returns 0: each call is
-- its own short transaction, so erasures and withdrawals wait for one day at most. Without a
-- recorded feature map it does nothing.
CREATE FUNCTION refresh_report_rollups() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  d date;
  m rollup_feature_map;
  todo text[];
  side int;
BEGIN
  PERFORM pg_advisory_xact_lock(2121261691);
  SELECT * INTO m FROM rollup_feature_map LIMIT 1;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  SELECT min(q.day) INTO d FROM rollup_dirty q;
  IF d IS NULL THEN
    -- Months and weeks, from their days.
    TRUNCATE rollup_refresh_periods;
    WITH taken AS (DELETE FROM rollup_dirty_periods RETURNING instance_id, month, week)
    INSERT INTO rollup_refresh_periods SELECT DISTINCT instance_id, month, week FROM taken;
    DELETE FROM rollup_user_months r USING rollup_refresh_periods t WHERE r.instance_id = t.instance_id AND r.month = t.month;
    INSERT INTO rollup_user_months
    SELECT u.instance_id, t.month, u.user_id, sum(u.searches_regexp), sum(u.searches_literal), sum(u.searches_other)
    FROM (SELECT DISTINCT instance_id, month FROM rollup_refresh_periods WHERE month IS NOT NULL) t
    JOIN rollup_user_days u ON u.instance_id = t.instance_id AND u.day >= t.month AND u.day < (t.month + interval '1 month')::date
    GROUP BY u.instance_id, t.month, u.user_id
    HAVING sum(u.searches_regexp + u.searches_literal + u.searches_other) > 0;
    DELETE FROM rollup_user_weeks r USING rollup_refresh_periods t WHERE r.instance_id = t.instance_id AND r.week = t.week;
    INSERT INTO rollup_user_weeks
    SELECT u.instance_id, t.week, u.user_id, array_agg(DISTINCT f ORDER BY f)
    FROM (SELECT DISTINCT instance_id, week FROM rollup_refresh_periods WHERE week IS NOT NULL) t
    JOIN rollup_user_days u ON u.instance_id = t.instance_id AND u.day >= t.week AND u.day < t.week + 7
    CROSS JOIN unnest(u.features) AS f
    GROUP BY u.instance_id, t.week, u.user_id;
    TRUNCATE rollup_refresh_periods;
    RETURN 0;
  END IF;
  WITH taken AS (DELETE FROM rollup_dirty q WHERE q.day = d RETURNING q.instance_id)
  SELECT array_agg(DISTINCT instance_id) INTO todo FROM taken;
  DELETE FROM rollup_user_days r WHERE r.day = d AND r.instance_id = ANY(todo);
  DELETE FROM rollup_day_sessions r WHERE r.day = d AND r.instance_id = ANY(todo);
  TRUNCATE rollup_refresh_events;
  INSERT INTO rollup_refresh_events
  SELECT e.instance_id, e.user_id, e.ts, e.name, e.properties->>'patternType', fm.feature
  FROM events e LEFT JOIN unnest(m.names, m.features) AS fm(name, feature) ON fm.name = e.name
  WHERE e.ts >= d::timestamp AT TIME ZONE 'UTC' AND e.ts < (d + 1)::timestamp AT TIME ZONE 'UTC' AND e.instance_id = ANY(todo);
  INSERT INTO rollup_user_days
  SELECT instance_id, d, user_id, count(*),
         count(*) FILTER (WHERE name = m.search_event AND pattern_type = 'regexp'),
         count(*) FILTER (WHERE name = m.search_event AND pattern_type = 'literal'),
         count(*) FILTER (WHERE name = m.search_event AND coalesce(pattern_type, '') NOT IN ('regexp', 'literal')),
         coalesce(array_agg(DISTINCT feature ORDER BY feature) FILTER (WHERE feature IS NOT NULL), '{}')
  FROM rollup_refresh_events GROUP BY instance_id, user_id;
  INSERT INTO rollup_day_sessions
  SELECT instance_id, d, user_id, min(ts), max(ts), array_agg(DISTINCT feature ORDER BY feature)
  FROM (
    SELECT *, sum(starts) OVER (PARTITION BY instance_id, user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS run
    FROM (
      SELECT instance_id, user_id, ts, feature,
             CASE WHEN lag(ts) OVER w IS NULL OR ts - lag(ts) OVER w > interval '30 minutes' THEN 1 ELSE 0 END AS starts
      FROM rollup_refresh_events WHERE feature IS NOT NULL WINDOW w AS (PARTITION BY instance_id, user_id ORDER BY ts)
    ) marked
  ) runs
  GROUP BY instance_id, user_id, run;
  TRUNCATE rollup_refresh_events;
  -- Joins across the two midnights of the day, for the day's instances.
  UPDATE rollup_day_sessions r SET joins_prev = false, joins_next = false
  WHERE r.day = d AND r.instance_id = ANY(todo) AND (r.joins_prev OR r.joins_next);
  UPDATE rollup_day_sessions r SET joins_next = false WHERE r.day = d - 1 AND r.instance_id = ANY(todo) AND r.joins_next;
  UPDATE rollup_day_sessions r SET joins_prev = false WHERE r.day = d + 1 AND r.instance_id = ANY(todo) AND r.joins_prev;
  FOR side IN 0..1 LOOP
    WITH ends AS (
      SELECT instance_id, user_id, day, min(started_at) AS first_start, max(started_at) AS last_start
      FROM rollup_day_sessions WHERE day BETWEEN d - 1 AND d + 1 AND instance_id = ANY(todo)
      GROUP BY instance_id, user_id, day
    ), joins AS (
      SELECT a.instance_id, a.user_id, a.day AS a_day, a.last_start, b.day AS b_day, b.first_start
      FROM ends a JOIN ends b ON b.instance_id = a.instance_id AND b.user_id = a.user_id AND b.day = a.day + 1
      JOIN rollup_day_sessions la ON la.instance_id = a.instance_id AND la.day = a.day AND la.user_id = a.user_id AND la.started_at = a.last_start
      WHERE b.first_start - la.ended_at <= interval '30 minutes'
    )
    UPDATE rollup_day_sessions r SET joins_next = joins_next OR side = 0, joins_prev = joins_prev OR side = 1 FROM joins j
    WHERE r.instance_id = j.instance_id AND r.user_id = j.user_id
      AND ((side = 0 AND r.day = j.a_day AND r.started_at = j.last_start) OR (side = 1 AND r.day = j.b_day AND r.started_at = j.first_start));
  END LOOP;
  INSERT INTO rollup_dirty_periods
  SELECT i, date_trunc('month', d::timestamp)::date, date_trunc('week', d::timestamp)::date FROM unnest(todo) i;
  RETURN cardinality(todo);
END $$;

-- forget_report_rollups deletes the rollups of an instance's days that [from, to) touches
-- (from NULL: from the start), with the months and weeks they belong to, and queues them, so a
-- withdrawal or an erasure leaves no summary of what it deleted, and the next refresh summarizes
-- what is left. It waits for a refresh in progress, which may be summarizing those very events.
CREATE FUNCTION forget_report_rollups(instance text, range_from timestamptz, range_to timestamptz) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  lo date := (range_from AT TIME ZONE 'UTC')::date;
  hi date := (range_to AT TIME ZONE 'UTC')::date;
BEGIN
  PERFORM pg_advisory_xact_lock(2121261691);
  WITH touched AS (
    SELECT DISTINCT day FROM rollup_user_days
    WHERE instance_id = instance AND (lo IS NULL OR day >= lo) AND (hi IS NULL OR day <= hi)
  ), queued AS (
    INSERT INTO rollup_dirty SELECT instance, day FROM touched
  ), months AS (
    DELETE FROM rollup_user_months WHERE instance_id = instance AND month IN (SELECT date_trunc('month', day::timestamp)::date FROM touched)
  )
  DELETE FROM rollup_user_weeks WHERE instance_id = instance AND week IN (SELECT date_trunc('week', day::timestamp)::date FROM touched);
  DELETE FROM rollup_user_days WHERE instance_id = instance AND (lo IS NULL OR day >= lo) AND (hi IS NULL OR day <= hi);
  DELETE FROM rollup_day_sessions WHERE instance_id = instance AND (lo IS NULL OR day >= lo) AND (hi IS NULL OR day <= hi);
END $$;

-- Retention drops the rollups of the days it drops, and recomputes the month and week it cuts.
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
  PERFORM pg_advisory_xact_lock(2121261691);
  DELETE FROM rollup_user_days WHERE day < before;
  DELETE FROM rollup_day_sessions WHERE day < before;
  DELETE FROM rollup_dirty WHERE day < before;
  DELETE FROM rollup_user_months WHERE month <= date_trunc('month', before::timestamp)::date;
  DELETE FROM rollup_user_weeks WHERE week <= date_trunc('week', before::timestamp)::date;
  INSERT INTO rollup_dirty_periods
  SELECT DISTINCT instance_id, date_trunc('month', before::timestamp)::date, date_trunc('week', before::timestamp)::date
  FROM rollup_user_days WHERE day >= before AND day < before + 40;
END $$;

REVOKE ALL ON rollup_dirty, rollup_dirty_periods, rollup_user_days, rollup_day_sessions, rollup_user_months, rollup_user_weeks,
  rollup_feature_map, rollup_refresh_events, rollup_refresh_periods FROM PUBLIC;
REVOKE ALL ON FUNCTION set_report_feature_map(text, text[], text[]), refresh_report_rollups(),
  forget_report_rollups(text, timestamptz, timestamptz) FROM PUBLIC;
GRANT INSERT ON rollup_dirty TO telemetry_ingest;
GRANT EXECUTE ON FUNCTION set_report_feature_map(text, text[], text[]), refresh_report_rollups(),
  forget_report_rollups(text, timestamptz, timestamptz) TO telemetry_ingest;
GRANT EXECUTE ON FUNCTION refresh_report_rollups() TO telemetry_reporting;

-- The reporting role reads the rollups as it reads report_events: pseudonymous users, no
-- event ids or properties beyond the pattern-type counts.
CREATE VIEW report_user_days AS
  SELECT instance_id, day, user_id, events, searches_regexp, searches_literal, searches_other, features FROM rollup_user_days;
CREATE VIEW report_user_months AS
  SELECT instance_id, month, user_id, searches_regexp, searches_literal, searches_other FROM rollup_user_months;
CREATE VIEW report_user_weeks AS
  SELECT instance_id, week, user_id, features FROM rollup_user_weeks;
CREATE VIEW report_day_sessions AS
  SELECT instance_id, day, user_id, started_at, ended_at, features, joins_prev, joins_next FROM rollup_day_sessions;
CREATE VIEW report_feature_map AS
  SELECT search_event, names, features FROM rollup_feature_map;
GRANT SELECT ON report_user_days, report_user_months, report_user_weeks, report_day_sessions, report_feature_map TO telemetry_reporting;
GRANT SELECT ON rollup_user_days, rollup_user_months, rollup_user_weeks, rollup_day_sessions TO telemetry_raw_reader;

-- As in 0006: the functions that run with the owner's rights look in the caller's temporary
-- schema last (CREATE OR REPLACE above reset drop_event_partitions' setting), and use no
-- temporary table of their own.
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION drop_event_partitions(date) SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION set_report_feature_map(text, text[], text[]) SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION refresh_report_rollups() SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION forget_report_rollups(text, timestamptz, timestamptz) SET search_path = %I, pg_temp', current_schema());
END $$;
