-- One AES-256 data key per patient, wrapped (AES-256-GCM) by the master key named by
-- master_key_id. Forgetting a patient clears the wrapped key and keeps the row, so the fact and
-- time of erasure stay without any patient data.
CREATE TABLE patient_data_keys
(
    patient_id    text PRIMARY KEY,
    master_key_id text,
    wrapped_key   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    CHECK ((wrapped_key IS NULL) = (master_key_id IS NULL)),
    CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);

-- Each event's link in its stream's hash chain: HMAC-SHA256 under a key the database never
-- sees, over the previous row's hash and this row's columns. Written by the service.
ALTER TABLE events ADD COLUMN hash bytea;
