-- Document contents, when documents are stored in PostgreSQL (the default): sealed with the
-- patient's data key, addressed by the SHA-256 of the plain bytes, so the same bytes uploaded
-- twice for one patient are stored once. Forgetting the patient destroys the key.
CREATE TABLE document_blobs (
    patient_id text NOT NULL,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- 12-byte nonce, then the AES-256-GCM ciphertext and tag.
    sealed bytea NOT NULL,
    size bigint NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, sha256)
);
