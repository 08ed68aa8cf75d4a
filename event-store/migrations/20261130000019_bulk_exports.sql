-- FHIR Bulk Data exports: one row per export asked for, and its files' contents in parts.
--
-- A part is the lines of one resource type of one patient (or of no patient: reference data),
-- sealed with the patient's data key when they have one, else with a key derived for the
-- export from the master key; it is bound by its associated data to the export, the file and
-- its place. Erasing a patient destroys their key and deletes their parts; an export's rows go
-- when it expires or is cancelled.
CREATE TABLE bulk_exports
(
    export_id        uuid        PRIMARY KEY,
    -- The caller who asked (a user or a backend client): only they may poll and download.
    requested_by     text        NOT NULL,
    -- The caller's roles, organization, purpose and request context, for the access
    -- decisions and the disclosures the export is recorded as. Ids and codes only.
    requester        jsonb       NOT NULL,
    level            text        NOT NULL CHECK (level IN ('system', 'patient')),
    request_url      text        NOT NULL,
    types            text[]      NOT NULL,
    since            timestamptz,
    status           text        NOT NULL
        CHECK (status IN ('accepted', 'running', 'completed', 'failed')),
    requested_at     timestamptz NOT NULL,
    -- Which run of the export holds it (a run that lost its lease stops writing).
    attempt          integer     NOT NULL DEFAULT 0,
    lease_until      timestamptz,
    transaction_time timestamptz,
    patients_done    integer     NOT NULL DEFAULT 0,
    patients_total   integer,
    completed_at     timestamptz,
    expires_at       timestamptz,
    error            text
);
CREATE INDEX bulk_exports_pending ON bulk_exports (requested_at)
    WHERE status IN ('accepted', 'running');

CREATE TABLE bulk_export_parts
(
    export_id     uuid    NOT NULL REFERENCES bulk_exports ON DELETE CASCADE,
    resource_type text    NOT NULL,
    file_no       integer NOT NULL,
    part_no       integer NOT NULL,
    -- Whose lines these are (NULL for reference data such as practitioners).
    patient_id    text,
    -- Sealed with the patient's data key (else with the export's key).
    patient_key   boolean NOT NULL,
    lines         integer NOT NULL,
    nonce         bytea   NOT NULL,
    sealed        bytea   NOT NULL,
    PRIMARY KEY (export_id, resource_type, file_no, part_no)
);
CREATE INDEX bulk_export_parts_patient ON bulk_export_parts (patient_id)
    WHERE patient_id IS NOT NULL;

-- SMART Backend Services: access tokens this service issued (by the SHA-256 of the token, never
-- the token itself), and the client assertions already used (a `jti` is accepted once).
CREATE TABLE backend_access_tokens
(
    token_hash bytea       PRIMARY KEY,
    client_id  text        NOT NULL,
    scope      text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX backend_access_tokens_expiry ON backend_access_tokens (expires_at);

CREATE TABLE backend_assertions
(
    client_id  text        NOT NULL,
    jti        text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX backend_assertions_expiry ON backend_assertions (expires_at);
