-- How far each relay has published, in the (transaction_id, position) order. Advanced only
-- after the broker acknowledged every event up to it.
CREATE TABLE relay_checkpoints
(
    relay          text PRIMARY KEY,
    transaction_id xid8        NOT NULL,
    position       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Serial numbers of medical record numbers; the MRN adds a check digit.
CREATE SEQUENCE patient_mrn_serial AS bigint MINVALUE 1 MAXVALUE 999999999 NO CYCLE;

-- The first answer to a POST carrying an Idempotency-Key. No patient data is kept here: a
-- replay rebuilds the body from the aggregate at the recorded version.
CREATE TABLE idempotency_keys
(
    user_id        text        NOT NULL,
    key            text        NOT NULL,
    request_hash   text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        bigint      NOT NULL,
    response_status integer    NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
