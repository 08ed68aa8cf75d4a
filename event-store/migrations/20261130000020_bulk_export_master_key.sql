-- The master key an export's own key is derived from (the active one when it was asked for),
-- so that a master key rotation during the export's life leaves its files readable while the
-- previous key is still configured.
ALTER TABLE bulk_exports ADD COLUMN master_key_id text;
