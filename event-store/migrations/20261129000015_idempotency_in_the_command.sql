-- One idempotency mechanism: a key is reserved in its command's transaction (with the
-- aggregate, version and, for an item of a medical record, the item), or records the refusal
-- the command gave (its problem document: field names and ids, never values).
ALTER TABLE idempotency_keys
    ALTER COLUMN aggregate_type DROP NOT NULL,
    ALTER COLUMN aggregate_id DROP NOT NULL,
    ALTER COLUMN version DROP NOT NULL,
    ADD COLUMN item_id text,
    ADD COLUMN problem jsonb;
