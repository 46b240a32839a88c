-- The database enforces reservations_required (0010) too, whatever the process: a receiver of
-- an earlier release still running during a rollout, or a claim that read the setting just
-- before it was turned on, fails instead of claiming a record open to any namespace (a new one,
-- or one released so), or opening a record to the next policy anywhere. The store maps the
-- error (SQLSTATE TL001) to its own refusal.
CREATE FUNCTION consent_instances_reservations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT coalesce((SELECT value FROM receiver_settings WHERE name = 'reservations_required'), false) THEN
    RETURN NEW;
  END IF;
  IF NEW.owner_cluster IS NOT NULL
     AND (TG_OP = 'INSERT' OR (OLD.owner_cluster IS NULL AND OLD.released_cluster IS NULL)) THEN
    RAISE EXCEPTION 'instance % is not reserved: reservations are required', NEW.instance_id
      USING ERRCODE = 'TL001';
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.owner_cluster IS NULL AND NEW.released_cluster IS NULL
     AND (OLD.owner_cluster IS NOT NULL OR OLD.released_cluster IS NOT NULL) THEN
    RAISE EXCEPTION 'the record of instance % cannot be opened to any namespace: reservations are required', NEW.instance_id
      USING ERRCODE = 'TL001';
  END IF;
  RETURN NEW;
END $$;
-- Names resolve in this schema, never first in a session's temporary one.
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION consent_instances_reservations() SET search_path = %I, pg_temp', current_schema());
END $$;
CREATE TRIGGER consent_instances_reservations BEFORE INSERT OR UPDATE ON consent_instances
  FOR EACH ROW EXECUTE FUNCTION consent_instances_reservations();
