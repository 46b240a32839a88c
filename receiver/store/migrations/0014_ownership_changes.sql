-- Every change of who owns a consent record, or of where it may be claimed from next, with when
-- and who made it: a claim (by a policy, through a receiver), a release (by its policy, or by
-- the receiver's operators), a reservation or handover, an opening to anyone. Written by the
-- database itself after each change, whatever wrote the row, so that a receiver of an earlier
-- release or an administrator's SQL leaves a trace too. Append-only for the receiver's role.
CREATE TABLE consent_ownership_changes (
    instance_id     text        NOT NULL REFERENCES consent_instances (instance_id),
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    at              timestamptz NOT NULL DEFAULT now(),
    -- claim: owner_* is the new owner. release: owner_* was the owner, to_* is where the record
    -- may be claimed from next (NULL: anywhere). reserve: nobody owned it before or after, to_*
    -- is where it may be claimed from next (NULL: opened to anywhere).
    change          text        NOT NULL CHECK (change IN ('claim', 'release', 'reserve')),
    owner_cluster   text,
    owner_namespace text,
    owner_name      text,
    owner_uid       text,
    to_cluster      text,
    to_namespace    text,
    -- Who wrote it: the database login, and the client's application_name (the receiver's
    -- tools put their command and the operating-system user there).
    db_user         text        NOT NULL DEFAULT session_user,
    application     text        NOT NULL DEFAULT coalesce(current_setting('application_name', true), ''),
    PRIMARY KEY (instance_id, seq)
);
GRANT SELECT, INSERT ON consent_ownership_changes TO telemetry_ingest;

CREATE FUNCTION consent_ownership_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.owner_cluster IS NOT NULL THEN
    IF TG_OP = 'INSERT' OR OLD.owner_cluster IS DISTINCT FROM NEW.owner_cluster OR OLD.owner_namespace IS DISTINCT FROM NEW.owner_namespace
       OR OLD.owner_name IS DISTINCT FROM NEW.owner_name OR OLD.owner_uid IS DISTINCT FROM NEW.owner_uid THEN
      INSERT INTO consent_ownership_changes (instance_id, change, owner_cluster, owner_namespace, owner_name, owner_uid)
      VALUES (NEW.instance_id, 'claim', NEW.owner_cluster, NEW.owner_namespace, NEW.owner_name, NEW.owner_uid);
    END IF;
  ELSIF TG_OP = 'UPDATE' AND OLD.owner_cluster IS NOT NULL THEN
    INSERT INTO consent_ownership_changes (instance_id, change, owner_cluster, owner_namespace, owner_name, owner_uid, to_cluster, to_namespace)
    VALUES (NEW.instance_id, 'release', OLD.owner_cluster, OLD.owner_namespace, OLD.owner_name, OLD.owner_uid, NEW.released_cluster, NEW.released_namespace);
  ELSIF (TG_OP = 'INSERT' AND NEW.released_cluster IS NOT NULL)
        OR (TG_OP = 'UPDATE' AND (OLD.released_cluster IS DISTINCT FROM NEW.released_cluster OR OLD.released_namespace IS DISTINCT FROM NEW.released_namespace)) THEN
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
CREATE TRIGGER consent_ownership_changes AFTER INSERT OR UPDATE ON consent_instances
  FOR EACH ROW EXECUTE FUNCTION consent_ownership_changes();
