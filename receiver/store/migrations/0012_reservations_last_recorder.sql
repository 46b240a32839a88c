-- With reservations required, a record nobody owns that is open to any namespace (released so
-- before the setting) stays the namespace's that last recorded a transition, as migration 0009
-- tied records released before it: that namespace's policy may still record a withdrawal, or
-- close the record when it is deleted. Any other namespace needs a reservation (0011).
CREATE OR REPLACE FUNCTION consent_instances_reservations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT coalesce((SELECT value FROM receiver_settings WHERE name = 'reservations_required'), false) THEN
    RETURN NEW;
  END IF;
  IF NEW.owner_cluster IS NOT NULL
     AND (TG_OP = 'INSERT' OR (OLD.owner_cluster IS NULL AND OLD.released_cluster IS NULL))
     AND NOT EXISTS (
       SELECT FROM (SELECT owner_cluster, owner_namespace FROM consent_transitions
                    WHERE instance_id = NEW.instance_id ORDER BY seq DESC LIMIT 1) last
       WHERE last.owner_cluster = NEW.owner_cluster AND last.owner_namespace = NEW.owner_namespace) THEN
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
-- (CREATE OR REPLACE resets the function's settings: names resolve in this schema again.)
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION consent_instances_reservations() SET search_path = %I, pg_temp', current_schema());
END $$;
