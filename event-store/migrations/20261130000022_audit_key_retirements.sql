-- Previous audit keys retired by `patient-service keys rotate-audit`: each vouches only for the
-- event rows up to last_position and the audit log entries of chain audit_chain_id up to
-- last_audit_seq. mac: HMAC with the successor (the key active at the retirement) over the
-- other columns, so whoever holds a retired key cannot widen its retirement.
CREATE TABLE audit_key_retirements
(
    kid            text PRIMARY KEY,
    successor      text        NOT NULL CHECK (successor <> kid),
    last_position  bigint      NOT NULL,
    audit_chain_id uuid        NOT NULL,
    last_audit_seq bigint      NOT NULL,
    mac            bytea       NOT NULL,
    retired_at     timestamptz NOT NULL DEFAULT now()
);
