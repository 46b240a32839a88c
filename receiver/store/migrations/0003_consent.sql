-- The consent ledger (api/consent/v1): the receiver decides what it stores from this record,
-- written by the owning operator, never from the tier a batch declares.

-- One row per instance the ledger knows. The owner is the one policy (of one cluster's operator)
-- that may write the record; all owner columns are NULL once it is released. version changes on
-- every transition, erasure and release: ingestion caches the timeline and the erasure
-- tombstones under (instance_id, version), and its FOR SHARE lock on this row serializes it
-- against those writes.
CREATE TABLE consent_instances (
    instance_id     text        PRIMARY KEY,
    owner_cluster   text,
    owner_namespace text,
    owner_name      text,
    owner_uid       text,
    claimed_at      timestamptz,
    version         bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((owner_cluster IS NULL) = (owner_namespace IS NULL) AND (owner_cluster IS NULL) = (owner_name IS NULL))
);

-- The timeline, append-only: from at on, tier is in force. seq orders the transitions; the
-- ledger never dates one before the previous, so seq order is also the order of at.
CREATE TABLE consent_transitions (
    instance_id     text        NOT NULL REFERENCES consent_instances (instance_id),
    seq             integer     NOT NULL,
    at              timestamptz NOT NULL,
    tier            text        NOT NULL CHECK (tier IN ('EventLevel', 'CriticalOnly', 'Off')),
    reason          text        NOT NULL DEFAULT '',
    basis           text        NOT NULL DEFAULT '',
    owner_cluster   text        NOT NULL,
    owner_namespace text        NOT NULL,
    owner_name      text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- Stored events the transition deleted because they were recorded after consent was withdrawn.
    events_removed  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, seq)
);

-- The erasure audit trail. It holds no payload: who asked, the scope and range, the counts, and
-- when a re-query found nothing left. The rows outlive the data they describe, and each range
-- stays a tombstone: data in it that arrives later is refused.
CREATE TABLE erasures (
    instance_id        text        NOT NULL REFERENCES consent_instances (instance_id),
    request_id         text        NOT NULL,
    scope              text        NOT NULL CHECK (scope IN ('Events', 'All')),
    range_from         timestamptz,
    range_to           timestamptz NOT NULL,
    -- The request named no end: range_to is when the receiver carried it out. Kept to tell a
    -- retry of the same request from a reuse of its id with another range.
    range_to_defaulted boolean     NOT NULL DEFAULT false,
    requested_by       text        NOT NULL,
    owner_cluster      text        NOT NULL,
    owner_namespace    text        NOT NULL,
    owner_name         text        NOT NULL,
    requested_at       timestamptz NOT NULL,
    events_deleted     bigint      NOT NULL DEFAULT 0,
    aggregates_deleted bigint      NOT NULL DEFAULT 0,
    verified_at        timestamptz,
    PRIMARY KEY (instance_id, request_id),
    CHECK (range_from IS NULL OR range_from < range_to)
);

-- Items of a batch the ledger refused (recorded outside a consented window or inside an erased
-- range): not stored, counted.
ALTER TABLE batches ADD COLUMN refused integer NOT NULL DEFAULT 0;
