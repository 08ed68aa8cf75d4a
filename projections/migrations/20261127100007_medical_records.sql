-- Every version of every medical record item: who changed it, when and why, and the item as
-- it then stood. Disposable like every read model: rebuilt from the medical record topic.
CREATE TABLE projections.medical_record_versions
(
    item_id    uuid        NOT NULL,
    version    integer     NOT NULL,
    patient_id uuid        NOT NULL,
    kind       text        NOT NULL,
    event_type text        NOT NULL,
    -- The item as it stood after this version's event.
    state      jsonb       NOT NULL,
    reason     text,
    changed_by text,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (item_id, version)
);
CREATE INDEX medical_record_versions_patient ON projections.medical_record_versions (patient_id);

-- Each item as it stands, with what search needs: its concept's code and text for structured
-- search across patients, and its text (documents: the extracted text) for full-text search.
CREATE TABLE projections.medical_record_items
(
    item_id          uuid        PRIMARY KEY,
    patient_id       uuid        NOT NULL,
    kind             text        NOT NULL,
    version          integer     NOT NULL,
    status           text        NOT NULL,
    active           boolean     NOT NULL,
    entered_in_error boolean     NOT NULL DEFAULT false,
    code_system      text,
    code             text,
    -- The concept's text, lowercased and with single spaces.
    concept_text     text        NOT NULL,
    title            text        NOT NULL,
    body             text        NOT NULL,
    search           tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', body), 'B')
    ) STORED,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX medical_record_items_patient ON projections.medical_record_items (patient_id);
CREATE INDEX medical_record_items_search ON projections.medical_record_items USING gin (search);
CREATE INDEX medical_record_items_code ON projections.medical_record_items (kind, code_system, code)
    WHERE NOT entered_in_error;
CREATE INDEX medical_record_items_concept ON projections.medical_record_items (kind, concept_text)
    WHERE NOT entered_in_error;
