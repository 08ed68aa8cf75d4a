-- A birth date may be unknown.
ALTER TABLE projections.patient_search ALTER COLUMN birth_date DROP NOT NULL;

-- The matcher's view of every patient (domain::matching::MatchRecord as JSON), and the
-- blocking keys that lead to it: a candidate is compared only with patients sharing a key.
CREATE TABLE projections.patient_match
(
    patient_id uuid PRIMARY KEY,
    record     jsonb       NOT NULL,
    status     text        NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE projections.patient_match_keys
(
    key        text NOT NULL,
    patient_id uuid NOT NULL,
    PRIMARY KEY (key, patient_id)
);

CREATE INDEX patient_match_keys_patient ON projections.patient_match_keys (patient_id);
