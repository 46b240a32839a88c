-- An erasure's audit record is kept centrally for years and outlives the data it describes, so
-- it holds no words from the customer.
--
-- Who asked is a role from a closed set (api/consent/v1 Requesters), never a person. Records
-- made before held free text there ("acme admin, support ticket 4711"), which may name one: it
-- becomes 'Unspecified'.
--
-- The request's id (a ticket reference the customer chose, up to 128 letters, digits and ._:-)
-- is kept as a digest of the instance and the id (consentv1.RequestKey: the first 32 hex digits
-- of SHA-256 of instance_id || '/' || request_id): a retry of the same request still finds its
-- record, and whoever knows the ticket can find it (receiver erasures --request), but the words
-- are not stored.
--
-- The database refuses anything else from now on, whoever writes it. The lock keeps a
-- concurrent writer from adding a row between the rewrite and the checks.
LOCK TABLE erasures IN SHARE ROW EXCLUSIVE MODE;
UPDATE erasures SET requested_by = 'Unspecified'
WHERE requested_by NOT IN ('CustomerAdmin', 'DataSubject', 'Support', 'Legal', 'ContractEnd', 'Unspecified');
UPDATE erasures SET request_id = substr(encode(sha256(convert_to(instance_id || '/' || request_id, 'UTF8')), 'hex'), 1, 32);
ALTER TABLE erasures ADD CONSTRAINT erasures_requested_by_role
  CHECK (requested_by IN ('CustomerAdmin', 'DataSubject', 'Support', 'Legal', 'ContractEnd', 'Unspecified'));
ALTER TABLE erasures ADD CONSTRAINT erasures_request_key CHECK (request_id ~ '^[0-9a-f]{32}$');
