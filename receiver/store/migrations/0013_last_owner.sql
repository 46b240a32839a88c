-- A record remembers the namespace that last owned it (claimed it, whether or not the claim
-- appended a transition). With reservations required, a record nobody owns that is open to any
-- namespace (released so before the setting) may be claimed again only from there, as a record
-- its policy released may (0009); 0012 asked the namespace that recorded its last transition,
-- which is not the last owner when that owner claimed it at the tier already in force.
ALTER TABLE consent_instances
    ADD COLUMN last_owner_cluster   text,
    ADD COLUMN last_owner_namespace text,
    ADD CONSTRAINT consent_instances_last_owner CHECK ((last_owner_cluster IS NULL) = (last_owner_namespace IS NULL));

-- Owned records: their owner. Records nobody owns: earlier releases did not keep who owned them
-- last, so the namespace that recorded their last transition (0012's rule) stands in.
UPDATE consent_instances SET last_owner_cluster = owner_cluster, last_owner_namespace = owner_namespace
WHERE owner_cluster IS NOT NULL;
UPDATE consent_instances ci
SET last_owner_cluster = last.owner_cluster, last_owner_namespace = last.owner_namespace
FROM (SELECT DISTINCT ON (instance_id) instance_id, owner_cluster, owner_namespace
      FROM consent_transitions ORDER BY instance_id, seq DESC) last
WHERE ci.instance_id = last.instance_id AND ci.owner_cluster IS NULL;

-- The trigger keeps the last owner, whoever writes the row (a receiver of an earlier release
-- that knows nothing of the columns, an administrator's SQL): a claim sets it, nothing else
-- changes it. Then it enforces reservations against it.
CREATE OR REPLACE FUNCTION consent_instances_reservations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.owner_cluster IS NOT NULL THEN
    NEW.last_owner_cluster := NEW.owner_cluster;
    NEW.last_owner_namespace := NEW.owner_namespace;
  ELSIF TG_OP = 'UPDATE' THEN
    NEW.last_owner_cluster := OLD.last_owner_cluster;
    NEW.last_owner_namespace := OLD.last_owner_namespace;
  ELSE
    NEW.last_owner_cluster := NULL;
    NEW.last_owner_namespace := NULL;
  END IF;
  IF NOT coalesce((SELECT value FROM receiver_settings WHERE name = 'reservations_required'), false) THEN
    RETURN NEW;
  END IF;
  IF NEW.owner_cluster IS NOT NULL
     AND (TG_OP = 'INSERT'
          OR (OLD.owner_cluster IS NULL AND OLD.released_cluster IS NULL
              AND (OLD.last_owner_cluster IS DISTINCT FROM NEW.owner_cluster
                   OR OLD.last_owner_namespace IS DISTINCT FROM NEW.owner_namespace))) THEN
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
