-- Events, one row per (instance, event id): re-sent events are absorbed by the primary key.
CREATE TABLE events (
    instance_id   text        NOT NULL,
    event_id      text        NOT NULL,
    name          text        NOT NULL,
    ts            timestamptz NOT NULL,
    source        text        NOT NULL DEFAULT '',
    version       text        NOT NULL DEFAULT '',
    client        text        NOT NULL DEFAULT '',
    user_id       text        NOT NULL,
    feature_flags jsonb       NOT NULL DEFAULT '{}',
    properties    jsonb       NOT NULL DEFAULT '{}',
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, event_id)
);
CREATE INDEX events_instance_ts ON events (instance_id, ts);

-- Anonymous daily aggregates, replaced (never added to) on resend.
CREATE TABLE aggregates (
    instance_id text    NOT NULL,
    day         date    NOT NULL,
    metric      text    NOT NULL,
    dimension   text    NOT NULL,
    value       bigint  NOT NULL,
    users       bigint  NOT NULL,
    final       boolean NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, day, metric, dimension)
);

-- The acknowledged cursor per instance, served to collectors that start without saved progress.
CREATE TABLE cursors (
    instance_id text        PRIMARY KEY,
    cursor      bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Batches seen, by idempotency key, for auditing and duplicate accounting.
CREATE TABLE batches (
    instance_id text        NOT NULL,
    batch_id    text        NOT NULL,
    kind        text        NOT NULL,
    accepted    integer     NOT NULL,
    duplicates  integer     NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, batch_id)
);
