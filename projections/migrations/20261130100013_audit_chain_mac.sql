-- The audit chain's id signed with the audit key when the log is built afresh, so that whoever
-- can write to the database cannot start a chain of their own (a new id) to escape the heads
-- published for the real one. Null for a chain started before this column (the migration's).
ALTER TABLE projections.audit_chain_head
    ADD COLUMN chain_mac bytea;
