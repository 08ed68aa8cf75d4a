-- Registrations that the matcher would grade certain or probable against each other must not
-- both pass, however close together they arrive (the match read model lags the store). Each
-- registration leaves a row per blocking key: the key as an HMAC (never in the clear), and the
-- matcher's record sealed with the patient's data key. A registration locks its keys' hashes
-- in its transaction and compares itself with the rows under them. Rows go after a day (the
-- read model knows the patient by then) and with an erased patient.
CREATE TABLE registration_guard
(
    key_hash      bytea       NOT NULL,
    patient_id    text        NOT NULL,
    sealed_record jsonb       NOT NULL,
    registered_at timestamptz NOT NULL,
    PRIMARY KEY (key_hash, patient_id)
);
CREATE INDEX registration_guard_patient ON registration_guard (patient_id);
CREATE INDEX registration_guard_registered_at ON registration_guard (registered_at);
