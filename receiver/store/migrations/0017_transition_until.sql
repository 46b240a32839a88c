-- A trial ends at its expiry at the receiver itself. An EventLevel transition may carry until:
-- from then on CriticalOnly is in force (until a later transition), whether or not anyone
-- records the expiry, so a window never outlives its basis with the operator down, behind, or
-- its memory of the expiry lost. Until is on EventLevel only, after the transition's own time,
-- and never infinite (an EventLevel that ends never is one without until).
ALTER TABLE consent_transitions ADD COLUMN until timestamptz;
ALTER TABLE consent_transitions ADD CONSTRAINT consent_transitions_until_valid
  CHECK (until IS NULL OR (tier = 'EventLevel' AND until > at AND isfinite(until)));

-- The receiver's role appends as 0016 allows, and now also EventLevel over EventLevel with
-- another until: a trial extended, shortened, renewed after it lapsed, or made a contract
-- without expiry.
CREATE OR REPLACE FUNCTION consent_transitions_appended_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  head consent_transitions%ROWTYPE;
BEGIN
  IF pg_has_role(current_user, 'telemetry_consent_admin', 'USAGE') THEN
    RETURN NEW;
  END IF;
  IF NOT consent_owned_by(NEW.instance_id, NEW.owner_cluster, NEW.owner_namespace, NEW.owner_name) THEN
    RAISE EXCEPTION 'a transition of instance % is recorded by the record''s owner only', NEW.instance_id
      USING ERRCODE = '42501';
  END IF;
  SELECT * INTO head FROM consent_transitions WHERE instance_id = NEW.instance_id ORDER BY seq DESC LIMIT 1;
  -- (Whole seconds: a withdrawal after a transition of a fraction of a second is rounded down
  -- to the second, and must never be refused.)
  IF NEW.seq <> coalesce(head.seq, 0) + 1 OR NEW.at < date_trunc('second', head.at)
     OR (NEW.tier = head.tier AND NOT (NEW.tier = 'EventLevel' AND NEW.until IS DISTINCT FROM head.until))
     OR NOT isfinite(NEW.at)
     OR (NEW.until IS NOT NULL AND (NEW.tier <> 'EventLevel' OR NEW.until <= NEW.at OR NOT isfinite(NEW.until))) THEN
    RAISE EXCEPTION 'the timeline of instance % is appended to in order only (the next number, another tier or another until, never dated before the last transition, until on EventLevel only and after it)', NEW.instance_id
      USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION consent_transitions_appended_only() SET search_path = %I, pg_temp', current_schema());
END $$;
