-- Aggregates are published once per closed day, and every stored item names the delivery that
-- stored it, so an instance's admin can see what left (GET /v1/exported, receiver exported).

-- One row per call that stored something: what an instance's recent exports were.
CREATE SEQUENCE delivery_seq;
CREATE TABLE deliveries (
    seq         bigint      PRIMARY KEY,
    instance_id text        NOT NULL,
    batch_id    text        NOT NULL,
    kind        text        NOT NULL,
    accepted    integer     NOT NULL,
    duplicates  integer     NOT NULL,
    refused     integer     NOT NULL,
    received_at timestamptz NOT NULL
);
CREATE INDEX deliveries_instance_seq ON deliveries (instance_id, seq DESC);

-- NULL for rows stored before deliveries were recorded.
ALTER TABLE events ADD COLUMN delivery bigint;
CREATE INDEX events_delivery_brin ON events USING brin (delivery);
ALTER TABLE aggregates ADD COLUMN delivery bigint;

-- The first publication of an instance's day wins: later ones are absorbed whole, so no two
-- publications of a day can be differenced. A day stays claimed after an erasure deletes its
-- cells, so it is never published again.
CREATE TABLE aggregate_days (
    instance_id  text        NOT NULL,
    day          date        NOT NULL,
    delivery     bigint      NOT NULL,
    published_at timestamptz NOT NULL,
    PRIMARY KEY (instance_id, day)
);

-- Cells stored before this release were published under rules that let them be differenced:
-- today's partial cells were replaced on every send, feature_users counted events, and
-- suppression looked at one metric at a time. None of them is kept; collectors publish their
-- closed days again under the present rules.
DELETE FROM aggregates;
