-- A record passes from one namespace to another only through a release: its owner is cleared
-- first (by its policy, or by the receiver's operators), and the claim that follows is checked
-- against where it may be claimed from (0009, 0013) and, with reservations required, against
-- its reservation or last owner; both writes are in the ownership trail (0014). No receiver of
-- any release writes an owner over another, or renames a record (an instance's record, its
-- reservation and its trail are found by its id).
CREATE FUNCTION consent_instances_owner_released_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.owner_cluster IS NOT NULL AND NEW.owner_cluster IS NOT NULL
     AND (OLD.owner_cluster IS DISTINCT FROM NEW.owner_cluster OR OLD.owner_namespace IS DISTINCT FROM NEW.owner_namespace) THEN
    RAISE EXCEPTION 'the record of instance % is owned by another namespace: it is released before it is claimed', NEW.instance_id
      USING ERRCODE = 'TL002';
  END IF;
  IF OLD.instance_id IS DISTINCT FROM NEW.instance_id THEN
    RAISE EXCEPTION 'the record of instance % keeps its instance id', OLD.instance_id
      USING ERRCODE = 'TL002';
  END IF;
  RETURN NEW;
END $$;
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION consent_instances_owner_released_first() SET search_path = %I, pg_temp', current_schema());
END $$;
CREATE TRIGGER consent_instances_owner_released_first BEFORE UPDATE ON consent_instances
  FOR EACH ROW EXECUTE FUNCTION consent_instances_owner_released_first();
