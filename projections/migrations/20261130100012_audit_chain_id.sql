-- The audit chain's id: a new one each time the log is built afresh (the head's row is
-- inserted again then), so a head published to the audit head topic is compared only with the
-- chain it was read from.
ALTER TABLE projections.audit_chain_head
    ADD COLUMN chain_id uuid NOT NULL DEFAULT gen_random_uuid();
