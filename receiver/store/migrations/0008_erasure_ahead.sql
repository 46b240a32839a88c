-- An erasure carried out without an end also deletes the events an instance whose clock runs
-- fast recorded before it but dated after the receiver's clock. They are told by event id rather
-- than by stretching the range ahead, which would refuse the events the instance records next:
-- from then on an event dated in [range_to, ahead_to) (ahead_to is range_to plus the 24 hours
-- ingestion accepts ahead) is refused when its id is at most ahead_max_id, the highest id the
-- receiver had seen of the instance, stored or acknowledged as read.
ALTER TABLE erasures
    ADD COLUMN ahead_to     timestamptz,
    ADD COLUMN ahead_max_id bigint,
    ADD CONSTRAINT erasures_ahead CHECK ((ahead_to IS NULL) = (ahead_max_id IS NULL) AND (ahead_to IS NULL OR ahead_to > range_to));
