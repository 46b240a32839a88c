-- Aggregate cells are stored only for UTC days during all of which CriticalOnly was in force
-- (consentv1.AggregateDays). Earlier releases also took a day during part of which it was: the
-- day consent was first recorded on, and the days of moves to and from Off. A cell of such a day
-- may count hours that were never consented (a stale or hostile collector), and nothing can tell
-- what it counted: those cells go. Their days stay claimed in aggregate_days, so they are never
-- published again.
--
-- The tier in force follows the ledger as the receiver reads it: the last transition at or
-- before an instant (the later one of a tie), and CriticalOnly from an EventLevel transition's
-- until on when the next transition comes after it. The CriticalOnly windows are few (a handful
-- per instance), so each cell is judged against its instance's windows alone.
WITH effective AS (
  SELECT instance_id, at, tier, seq, 0 AS expiry FROM consent_transitions
  UNION ALL
  SELECT t.instance_id, t.until, 'CriticalOnly', t.seq, 1 FROM consent_transitions t
  WHERE t.until IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM consent_transitions n WHERE n.instance_id = t.instance_id AND n.seq > t.seq AND n.at <= t.until)
),
-- The tier from each instant on (of transitions at the same instant, the later).
resolved AS (
  SELECT DISTINCT ON (instance_id, at) instance_id, at, tier = 'CriticalOnly' AS critical_only
  FROM effective ORDER BY instance_id, at, seq DESC, expiry DESC
),
-- Where CriticalOnly begins or ends.
bounds AS (
  SELECT instance_id, at, critical_only, lead(at) OVER (PARTITION BY instance_id ORDER BY at) AS next
  FROM (SELECT instance_id, at, critical_only,
          coalesce(lag(critical_only) OVER (PARTITION BY instance_id ORDER BY at), false) AS before
        FROM resolved) r
  WHERE critical_only <> before
)
DELETE FROM aggregates a
WHERE NOT EXISTS (
  SELECT 1 FROM bounds w
  WHERE w.critical_only AND w.instance_id = a.instance_id
    AND w.at <= (a.day::timestamp AT TIME ZONE 'UTC')
    AND (w.next IS NULL OR w.next >= ((a.day + 1)::timestamp AT TIME ZONE 'UTC')));
