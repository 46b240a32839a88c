-- An erasure's audit record names who asked by role, from a closed set (api/consent/v1
-- Requesters), never a person: the record is kept centrally for years and outlives the data it
-- describes. Records made before held free text there ("acme admin, support ticket 4711"), which
-- may name a person; it is replaced by 'Unspecified', and the database refuses free text from
-- now on whoever writes it. (The table is locked whole first, so that a writer that read it
-- before cannot deadlock with the constraint added below.)
LOCK TABLE erasures IN ACCESS EXCLUSIVE MODE;
UPDATE erasures SET requested_by = 'Unspecified'
WHERE requested_by NOT IN ('CustomerAdmin', 'DataSubject', 'Support', 'Legal', 'ContractEnd', 'Unspecified');
ALTER TABLE erasures ADD CONSTRAINT erasures_requested_by_role
  CHECK (requested_by IN ('CustomerAdmin', 'DataSubject', 'Support', 'Legal', 'ContractEnd', 'Unspecified'));
