-- Search by phone, e-mail, identifier and postal code, and by names with typos.
ALTER TABLE projections.patient_search
    ADD COLUMN phones       text[] NOT NULL DEFAULT '{}',
    ADD COLUMN emails       text[] NOT NULL DEFAULT '{}',
    ADD COLUMN identifiers  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN postal_codes text[] NOT NULL DEFAULT '{}';

CREATE INDEX patient_search_phones ON projections.patient_search USING gin (phones);
CREATE INDEX patient_search_emails ON projections.patient_search USING gin (emails);
CREATE INDEX patient_search_identifiers ON projections.patient_search USING gin (identifiers);
CREATE INDEX patient_search_postal_codes ON projections.patient_search USING gin (postal_codes);

-- Trigram similarity for fuzzy names (pg_trgm is a trusted extension: no superuser needed).
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
CREATE INDEX patient_search_family_trgm ON projections.patient_search
    USING gin (family_search public.gin_trgm_ops);
