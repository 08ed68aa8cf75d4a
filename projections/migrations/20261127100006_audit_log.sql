-- The audit log: every event and every access entry, in the order the projector appended them,
-- each committing to the one before (hash = HMAC(audit key, previous hash, entry)). Ids and
-- codes only: nothing here is patient data, so erasure leaves the log intact.
CREATE TABLE projections.audit_log
(
    seq            bigint PRIMARY KEY CHECK (seq > 0),
    entry_id       uuid        NOT NULL UNIQUE,
    kind           text        NOT NULL CHECK (kind IN ('event', 'access')),
    recorded_at    timestamptz NOT NULL,
    patient_id     uuid,
    user_id        text,
    action         text        NOT NULL,
    -- For events: aggregate type, sequence, request id. For access entries: the whole entry.
    detail         jsonb       NOT NULL,
    -- The stored row's own hash-chain link, to cross-check the event store.
    event_hash     bytea,
    hash           bytea       NOT NULL
);

CREATE INDEX audit_log_patient ON projections.audit_log (patient_id, recorded_at);
CREATE INDEX audit_log_user ON projections.audit_log (user_id, recorded_at);
CREATE INDEX audit_log_time ON projections.audit_log (recorded_at);

-- The end of the chain: the last seq and hash. Appenders lock this row, so the chain has one
-- writer at a time whatever the number of projector processes.
CREATE TABLE projections.audit_chain_head
(
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint NOT NULL,
    hash     bytea  NOT NULL
);

INSERT INTO projections.audit_chain_head (seq, hash) VALUES (0, ''::bytea);
