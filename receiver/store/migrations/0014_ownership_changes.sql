-- Every change of who owns a consent record, or of where it may be claimed from next, with when
-- and who made it: a claim (by a policy, through a receiver), a release (by its policy, or by
-- the receiver's operators), a reservation or handover, an opening to anyone, a deletion. Written
-- by the database itself after each change, whatever wrote the row, so that a receiver of an
-- earlier release or an administrator's SQL leaves a trace too. No reference to the record: the
-- trail outlives a record deleted.
CREATE TABLE consent_ownership_changes (
    instance_id     text        NOT NULL,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    at              timestamptz NOT NULL DEFAULT now(),
    -- claim: owner_* is the new owner. release: owner_* was the owner, to_* is where the record
    -- may be claimed from next (NULL: anywhere; the new owner when another took it over in one
    -- write). reserve: nobody owned it before or after, to_* is where it may be claimed from
    -- next (NULL: opened to anywhere). delete: the record was deleted; owner_* and to_* are what
    -- it held.
    change          text        NOT NULL CHECK (change IN ('claim', 'release', 'reserve', 'delete')),
    owner_cluster   text,
    owner_namespace text,
    owner_name      text,
    owner_uid       text,
    to_cluster      text,
    to_namespace    text,
    -- Who wrote it: the database login, and the client's application_name (the receiver's
    -- tools put the operating-system user and their command there; it is what the client says).
    db_user         text        NOT NULL DEFAULT session_user,
    application     text        NOT NULL DEFAULT coalesce(current_setting('application_name', true), ''),
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX consent_ownership_changes_seq ON consent_ownership_changes (seq);
-- The receiver's role reads the trail; only the trigger below (running as this schema's owner)
-- writes it. The receiver never deletes a record either.
GRANT SELECT ON consent_ownership_changes TO telemetry_ingest;
REVOKE DELETE ON consent_instances FROM telemetry_ingest;

CREATE FUNCTION consent_ownership_changes() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO consent_ownership_changes (instance_id, change, owner_cluster, owner_namespace, owner_name, owner_uid, to_cluster, to_namespace)
    VALUES (OLD.instance_id, 'delete', OLD.owner_cluster, OLD.owner_namespace, OLD.owner_name, OLD.owner_uid, OLD.released_cluster, OLD.released_namespace);
    RETURN NULL;
  END IF;
  IF TG_OP = 'UPDATE' AND OLD.owner_cluster IS NOT NULL
     AND (NEW.owner_cluster IS NULL OR OLD.owner_cluster IS DISTINCT FROM NEW.owner_cluster
          OR OLD.owner_namespace IS DISTINCT FROM NEW.owner_namespace OR OLD.owner_name IS DISTINCT FROM NEW.owner_name) THEN
    INSERT INTO consent_ownership_changes (instance_id, change, owner_cluster, owner_namespace, owner_name, owner_uid, to_cluster, to_namespace)
    VALUES (NEW.instance_id, 'release', OLD.owner_cluster, OLD.owner_namespace, OLD.owner_name, OLD.owner_uid,
            coalesce(NEW.owner_cluster, NEW.released_cluster),
            CASE WHEN NEW.owner_cluster IS NOT NULL THEN NEW.owner_namespace ELSE NEW.released_namespace END);
  END IF;
  IF NEW.owner_cluster IS NOT NULL THEN
    -- (A UID added to the same owner is a claim too: the certificates of a deleted policy of
    -- the same name stop working from here.)
    IF TG_OP = 'INSERT' OR OLD.owner_cluster IS DISTINCT FROM NEW.owner_cluster OR OLD.owner_namespace IS DISTINCT FROM NEW.owner_namespace
       OR OLD.owner_name IS DISTINCT FROM NEW.owner_name OR OLD.owner_uid IS DISTINCT FROM NEW.owner_uid THEN
      INSERT INTO consent_ownership_changes (instance_id, change, owner_cluster, owner_namespace, owner_name, owner_uid)
      VALUES (NEW.instance_id, 'claim', NEW.owner_cluster, NEW.owner_namespace, NEW.owner_name, NEW.owner_uid);
    END IF;
  ELSIF (TG_OP = 'INSERT' AND NEW.released_cluster IS NOT NULL)
        OR (TG_OP = 'UPDATE' AND OLD.owner_cluster IS NULL
            AND (OLD.released_cluster IS DISTINCT FROM NEW.released_cluster OR OLD.released_namespace IS DISTINCT FROM NEW.released_namespace)) THEN
    INSERT INTO consent_ownership_changes (instance_id, change, to_cluster, to_namespace)
    VALUES (NEW.instance_id, 'reserve', NEW.released_cluster, NEW.released_namespace);
  END IF;
  RETURN NULL;
END $$;
-- Names resolve in this schema, never first in a session's temporary one.
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION consent_ownership_changes() SET search_path = %I, pg_temp', current_schema());
END $$;
REVOKE ALL ON FUNCTION consent_ownership_changes() FROM PUBLIC;
CREATE TRIGGER consent_ownership_changes AFTER INSERT OR UPDATE OR DELETE ON consent_instances
  FOR EACH ROW EXECUTE FUNCTION consent_ownership_changes();
