-- A record remembers the namespace that last owned it (claimed it, whether or not the claim
-- appended a transition). With reservations required, a record nobody owns that is open to any
-- namespace (released so before the setting) may be claimed again only from there, as a record
-- its policy released may (0009); 0012 asked the namespace that recorded its last transition,
-- which is not the last owner when that owner claimed it at the tier already in force.
ALTER TABLE consent_instances
    ADD COLUMN last_owner_cluster   text,
    ADD COLUMN last_owner_namespace text,
    ADD CONSTRAINT consent_instances_last_owner CHECK ((last_owner_cluster IS NULL) = (last_owner_namespace IS NULL));

-- Owned records: their owner. Released ones: where they were released to (the namespace of the
-- policy that released them, or the one the receiver's operators handed them over to). Records
-- open to anyone: the owner named by the latest write only an owner makes, a transition or an
-- erasure request (earlier releases kept nothing closer; a claim at the tier in force left no
-- trace, and a record claimed so and never written after counts its earlier owner).
UPDATE consent_instances SET last_owner_cluster = owner_cluster, last_owner_namespace = owner_namespace
WHERE owner_cluster IS NOT NULL;
UPDATE consent_instances SET last_owner_cluster = released_cluster, last_owner_namespace = released_namespace
WHERE owner_cluster IS NULL AND released_cluster IS NOT NULL;
UPDATE consent_instances ci
SET last_owner_cluster = last.owner_cluster, last_owner_namespace = last.owner_namespace
FROM (SELECT DISTINCT ON (instance_id) instance_id, owner_cluster, owner_namespace
      FROM (SELECT instance_id, owner_cluster, owner_namespace, recorded_at AS at, seq FROM consent_transitions
            UNION ALL
            SELECT instance_id, owner_cluster, owner_namespace, requested_at, 0 FROM erasures) w
      ORDER BY instance_id, at DESC, seq DESC) last
WHERE ci.instance_id = last.instance_id AND ci.owner_cluster IS NULL AND ci.released_cluster IS NULL;

-- The trigger keeps the last owner, whoever writes the row (a receiver of an earlier release
-- that knows nothing of the columns, an administrator's SQL): a claim sets it, nothing else
-- changes it (a later migration that must correct it backfills before it replaces this
-- function, as this one does; an administrator reserves the record or hands it over instead).
-- It refuses a claim of a record released or reserved for another namespace (TL002), whatever
-- the setting, as receivers since 0009 do themselves. Then it enforces reservations.
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
  IF TG_OP = 'UPDATE' AND NEW.owner_cluster IS NOT NULL AND OLD.owner_cluster IS NULL AND OLD.released_cluster IS NOT NULL
     AND (OLD.released_cluster IS DISTINCT FROM NEW.owner_cluster OR OLD.released_namespace IS DISTINCT FROM NEW.owner_namespace) THEN
    RAISE EXCEPTION 'the record of instance % is released or reserved for another namespace', NEW.instance_id
      USING ERRCODE = 'TL002';
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
