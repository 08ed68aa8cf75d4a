-- Patients forgotten, as far as the medical record read model knows: an event of theirs that
-- was opened just before the erasure committed must not put rows back after the purge.
CREATE TABLE projections.medical_record_forgotten
(
    patient_id   uuid PRIMARY KEY,
    forgotten_at timestamptz NOT NULL DEFAULT now()
);
