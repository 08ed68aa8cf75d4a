-- Break-the-glass: when each user last opened each patient so, so the per-user hourly limit
-- holds across API instances. Ids only; the access entries in `events` remain the record.
-- Rows older than the window are deleted as the user's next emergency access is decided.
CREATE TABLE emergency_access (
    user_id    text        NOT NULL,
    patient_id uuid        NOT NULL,
    granted_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, patient_id)
);
CREATE INDEX emergency_access_user_time ON emergency_access (user_id, granted_at);
