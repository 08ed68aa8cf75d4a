-- When a patient was archived, for the retention policy.
ALTER TABLE projections.patient_search ADD COLUMN archived_at timestamptz;
CREATE INDEX patient_search_archived_at ON projections.patient_search (archived_at)
    WHERE status = 'archived';
