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
