-- The receiver's administrators apart from the receiver. Reserving a record for a namespace,
-- handing one over to another namespace or opening it to anyone, and the receiver-wide settings
-- (reservations required) are acts of the receiver's operators (`receiver consent release`,
-- `reserve`, `reservations --required`), never of `receiver serve`, which only records what
-- policies ask: a claim, a release by the record's owner to its own namespace, transitions and
-- erasures. A fourth group role, telemetry_consent_admin, holds them; it is a member of
-- telemetry_ingest (it does what the ledger's writes need) and the schema owner a member of it.
-- A receiver whose login is a member of telemetry_ingest and telemetry_raw_reader only can
-- then neither reserve nor hand over a record, nor turn reservations off, whatever SQL it runs;
-- nor rewrite or delete the consent timeline or an erasure's audit record.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_consent_admin') THEN
    CREATE ROLE telemetry_consent_admin NOLOGIN;
  END IF;
  EXECUTE format('GRANT telemetry_consent_admin TO %I', current_user);
END $$;
GRANT telemetry_ingest TO telemetry_consent_admin;

-- A receiver whose login may not migrate checks that its schema is current (version numbers
-- only).
GRANT SELECT ON schema_migrations TO telemetry_ingest;

REVOKE INSERT, UPDATE, DELETE ON receiver_settings FROM telemetry_ingest;
GRANT INSERT, UPDATE ON receiver_settings TO telemetry_consent_admin;

-- The timeline is appended to, never rewritten; an erasure's record only gains its counts and
-- its verification (the triggers below hold both to what the store writes).
REVOKE UPDATE, DELETE ON consent_transitions FROM telemetry_ingest;
REVOKE UPDATE, DELETE ON erasures FROM telemetry_ingest;
GRANT UPDATE (events_deleted, aggregates_deleted, verified_at) ON erasures TO telemetry_ingest;

-- Where a record may be claimed from next is the administrators' to set, except that an owner
-- releases its record to its own namespace (the receiver's release, asked by the owning policy)
-- and a claim clears it. Checked by the role the statement runs as (current_user: the role a
-- connection switched to, or its login), whatever writes the row.
CREATE FUNCTION consent_instances_administrators_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_has_role(current_user, 'telemetry_consent_admin', 'USAGE') THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'INSERT' THEN
    IF NEW.released_cluster IS NOT NULL OR NEW.released_namespace IS NOT NULL THEN
      RAISE EXCEPTION 'reserving the record of instance % is for the receiver''s administrators (role telemetry_consent_admin)', NEW.instance_id
        USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
  END IF;
  IF (NEW.released_cluster IS DISTINCT FROM OLD.released_cluster OR NEW.released_namespace IS DISTINCT FROM OLD.released_namespace)
     AND NOT (NEW.released_cluster IS NULL AND NEW.released_namespace IS NULL AND NEW.owner_cluster IS NOT NULL)
     AND NOT (OLD.owner_cluster IS NOT NULL AND NEW.released_cluster = OLD.owner_cluster AND NEW.released_namespace = OLD.owner_namespace) THEN
    RAISE EXCEPTION 'handing over the record of instance % is for the receiver''s administrators (role telemetry_consent_admin): its owner releases it to its own namespace only', NEW.instance_id
      USING ERRCODE = '42501';
  END IF;
  IF OLD.owner_cluster IS NOT NULL AND NEW.owner_cluster IS NULL
     AND (NEW.released_cluster IS DISTINCT FROM OLD.owner_cluster OR NEW.released_namespace IS DISTINCT FROM OLD.owner_namespace) THEN
    RAISE EXCEPTION 'clearing the owner of the record of instance % without releasing it to the owner''s namespace is for the receiver''s administrators (role telemetry_consent_admin)', NEW.instance_id
      USING ERRCODE = '42501';
  END IF;
  -- An owner stays who it is (a policy of another name, or another object of the same name,
  -- would lock the owner out of its record); it only gains its UID once.
  IF OLD.owner_cluster IS NOT NULL AND NEW.owner_cluster IS NOT NULL
     AND (NEW.owner_name IS DISTINCT FROM OLD.owner_name
          OR (coalesce(OLD.owner_uid, '') <> '' AND NEW.owner_uid IS DISTINCT FROM OLD.owner_uid)) THEN
    RAISE EXCEPTION 'renaming the owner of the record of instance % is for the receiver''s administrators (role telemetry_consent_admin)', NEW.instance_id
      USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER consent_instances_administrators_only BEFORE INSERT OR UPDATE ON consent_instances
  FOR EACH ROW EXECUTE FUNCTION consent_instances_administrators_only();

-- Appending is all the receiver's role may do to the timeline, and only as the store appends:
-- the next number, never dated before the last transition, by the record's owner (recorded_at
-- is not held in order: replicas' clocks differ). So no row slipped in before the head (a
-- period of consent that never was), no gap that would block the owner's next transition (a
-- withdrawal), no transition in another namespace's name, none dated never (infinity). Times
-- themselves are the receiver's to state, as the events it stores are: a receiver's login may
-- still date a transition anywhere from the last one on. An erasure's record names the
-- record's owner, its counts only grow and its verification is stamped once, after it was
-- recorded.
-- (FOR SHARE: a handover waits for the owner's write in flight, and the write for it.)
CREATE FUNCTION consent_owned_by(instance text, cluster text, namespace text, name text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
  SELECT EXISTS (SELECT FROM consent_instances WHERE instance_id = instance
                 AND owner_cluster = cluster AND owner_namespace = namespace AND owner_name = name FOR SHARE)
$$;
CREATE FUNCTION consent_transitions_appended_only() RETURNS trigger LANGUAGE plpgsql AS $$
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
  IF NEW.seq <> coalesce(head.seq, 0) + 1 OR NEW.at < date_trunc('second', head.at) OR NEW.tier = head.tier
     OR NOT isfinite(NEW.at) THEN
    RAISE EXCEPTION 'the timeline of instance % is appended to in order only (the next number, another tier, never dated before the last transition)', NEW.instance_id
      USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;
CREATE FUNCTION erasures_recorded_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_has_role(current_user, 'telemetry_consent_admin', 'USAGE') THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'INSERT' THEN
    IF NOT consent_owned_by(NEW.instance_id, NEW.owner_cluster, NEW.owner_namespace, NEW.owner_name)
       OR NEW.verified_at IS NOT NULL THEN
      RAISE EXCEPTION 'an erasure of instance % is recorded for the record''s owner only, and verified after it was carried out', NEW.instance_id
        USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
  END IF;
  IF NEW.events_deleted < OLD.events_deleted OR NEW.aggregates_deleted < OLD.aggregates_deleted
     OR (OLD.verified_at IS NOT NULL AND NEW.verified_at IS DISTINCT FROM OLD.verified_at) THEN
    RAISE EXCEPTION 'an erasure''s record of instance % only gains its counts and its verification, once', NEW.instance_id
      USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION consent_instances_administrators_only() SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION consent_owned_by(text, text, text, text) SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION consent_transitions_appended_only() SET search_path = %I, pg_temp', current_schema());
  EXECUTE format('ALTER FUNCTION erasures_recorded_once() SET search_path = %I, pg_temp', current_schema());
END $$;
CREATE TRIGGER consent_transitions_appended_only BEFORE INSERT ON consent_transitions
  FOR EACH ROW EXECUTE FUNCTION consent_transitions_appended_only();
CREATE TRIGGER erasures_recorded_once BEFORE INSERT OR UPDATE ON erasures
  FOR EACH ROW EXECUTE FUNCTION erasures_recorded_once();
