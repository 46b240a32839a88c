-- An erasure's audit record keeps a key computed from the request's id, never the id: the id is
-- a ticket reference the customer chose (up to 128 letters, digits and ._:-) and may hold words,
-- and the record is kept centrally for years. The key (consentv1.RequestKey) is the first 32 hex
-- digits of SHA-256 of instance_id || '/' || request_id: a retry of the same request still finds
-- its record, and whoever knows the ticket can find it (receiver erasures --request).
--
-- The table is locked whole first: a writer that read it before would otherwise deadlock with
-- the constraint added below. The rewrite goes through a form the old ids could not take ('#'
-- first), so an id that happened to equal another request's key never collides with it on the
-- way. From now on the database refuses anything but a key, whoever writes it.
-- (A database a development build of this release migrated already holds keys and the check:
-- it is left as it is.)
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'erasures_request_key' AND conrelid = 'erasures'::regclass) THEN
    RETURN;
  END IF;
  LOCK TABLE erasures IN ACCESS EXCLUSIVE MODE;
  UPDATE erasures SET request_id = '#' || substr(encode(sha256(convert_to(instance_id || '/' || request_id, 'UTF8')), 'hex'), 1, 32);
  UPDATE erasures SET request_id = substr(request_id, 2);
  ALTER TABLE erasures ADD CONSTRAINT erasures_request_key CHECK (request_id ~ '^[0-9a-f]{32}$');
END $$;
