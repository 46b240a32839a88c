-- Receiver-wide settings every replica reads from here, not from its own flags, so that all
-- enforce the same. reservations_required: a policy may claim an instance nobody has recorded
-- only once the receiver's operators reserved it for the policy's namespace (`receiver consent
-- reserve`); off (absent) by default, the first policy to name an instance claims it.
CREATE TABLE receiver_settings (
    name       text PRIMARY KEY,
    value      boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON receiver_settings TO telemetry_ingest;

-- The database enforces the setting too, whatever the process: a receiver of an earlier release
-- still running during a rollout, or a claim that read the setting just before it was turned on,
-- fails (and is retried) instead of claiming an instance nobody reserved, or opening a record to
-- the next policy anywhere.
CREATE FUNCTION consent_instances_reservations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT coalesce((SELECT value FROM receiver_settings WHERE name = 'reservations_required'), false) THEN
    RETURN NEW;
  END IF;
  IF NEW.owner_cluster IS NOT NULL
     AND (TG_OP = 'INSERT' OR (OLD.owner_cluster IS NULL AND OLD.released_cluster IS NULL)) THEN
    RAISE EXCEPTION 'instance % is not reserved: reservations are required', NEW.instance_id
      USING ERRCODE = 'check_violation';
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.owner_cluster IS NULL AND NEW.released_cluster IS NULL
     AND (OLD.owner_cluster IS NOT NULL OR OLD.released_cluster IS NOT NULL) THEN
    RAISE EXCEPTION 'the record of instance % cannot be opened to any namespace: reservations are required', NEW.instance_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER consent_instances_reservations BEFORE INSERT OR UPDATE ON consent_instances
  FOR EACH ROW EXECUTE FUNCTION consent_instances_reservations();
