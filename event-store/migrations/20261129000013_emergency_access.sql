-- Break-the-glass grants, one row per user, patient and grant, so the per-user limit holds
-- across API instances. Ids only; the access entries in `events` remain the record.
CREATE TABLE emergency_access (
    user_id    text        NOT NULL,
    patient_id uuid        NOT NULL,
    granted_at timestamptz NOT NULL
);
CREATE INDEX emergency_access_user_time ON emergency_access (user_id, granted_at);
