-- Aggregate cells are stored only for UTC days during all of which CriticalOnly was in force
-- (consentv1.AggregateDays). Earlier releases also took a day during part of which it was: the
-- day consent was first recorded on, and the days of moves to and from Off. A cell of such a day
-- may count hours that were never consented (a stale or hostile collector), and nothing can tell
-- what it counted: those cells go. Their days stay claimed in aggregate_days, so they are never
-- published again.
--
-- An instance's CriticalOnly windows are computed as the receiver computes them
-- (consentv1.Timeline.Effective, then windows, over the transitions in seq order), by a function
-- that lives only as long as this session.
CREATE FUNCTION pg_temp.critical_only_windows(instance text, OUT starts timestamptz[], OUT ends timestamptz[])
LANGUAGE plpgsql AS $$
DECLARE
  trs consent_transitions[];
  tr consent_transitions;
  i int;
  ats timestamptz[] := '{}';
  tiers text[] := '{}';
  open_start timestamptz;
  n int;
BEGIN
  starts := '{}';
  ends := '{}';
  SELECT coalesce(array_agg(t ORDER BY t.seq), '{}') INTO trs FROM consent_transitions t WHERE t.instance_id = instance;
  -- Effective: a trial's until is a CriticalOnly transition when the next one comes after it.
  FOR i IN 1 .. coalesce(array_length(trs, 1), 0) LOOP
    tr := trs[i];
    ats := ats || tr.at;
    tiers := tiers || tr.tier;
    IF tr.until IS NOT NULL AND tr.tier = 'EventLevel' AND (i = array_length(trs, 1) OR trs[i + 1].at > tr.until) THEN
      ats := ats || tr.until;
      tiers := tiers || 'CriticalOnly'::text;
    END IF;
  END LOOP;
  -- The maximal windows in which the tier in force is CriticalOnly.
  FOR i IN 1 .. coalesce(array_length(ats, 1), 0) LOOP
    IF tiers[i] = 'CriticalOnly' AND open_start IS NULL THEN
      open_start := ats[i];
      n := coalesce(array_length(ends, 1), 0);
      IF n > 0 AND ends[n] = ats[i] THEN -- left and entered again at the same instant
        open_start := starts[n];
        starts := starts[1 : n - 1];
        ends := ends[1 : n - 1];
      END IF;
    ELSIF tiers[i] <> 'CriticalOnly' AND open_start IS NOT NULL THEN
      IF ats[i] > open_start THEN
        starts := starts || open_start;
        ends := ends || ats[i];
      END IF;
      open_start := NULL;
    END IF;
  END LOOP;
  IF open_start IS NOT NULL THEN
    starts := starts || open_start;
    ends := ends || NULL::timestamptz;
  END IF;
END $$;

WITH windows AS MATERIALIZED (
  SELECT i.instance_id, w.start, w.stop
  FROM (SELECT DISTINCT instance_id FROM consent_transitions) i,
    LATERAL pg_temp.critical_only_windows(i.instance_id) c,
    LATERAL unnest(c.starts, c.ends) AS w(start, stop)
)
DELETE FROM aggregates a
WHERE NOT EXISTS (
  SELECT 1 FROM windows w
  WHERE w.instance_id = a.instance_id
    AND w.start <= (a.day::timestamp AT TIME ZONE 'UTC')
    AND (w.stop IS NULL OR w.stop >= ((a.day + 1)::timestamp AT TIME ZONE 'UTC')));

DROP FUNCTION pg_temp.critical_only_windows(text);
