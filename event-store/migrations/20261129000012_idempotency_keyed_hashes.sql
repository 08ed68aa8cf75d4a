-- Idempotency records now keep an HMAC of the request under a key derived from the master key,
-- not a plain SHA-256 (which let anyone with a copy of the table confirm a guessed request body,
-- such as a social security number, by hashing guesses). The plain hashes recorded before are
-- deleted: a client retrying across the upgrade is still answered once, because registrations
-- derive their id from the key and changes are found by the key in their events' metadata.
DELETE FROM idempotency_keys;

-- Records expire (see event_store::idempotency::KEY_LIFETIME); the sweep finds them by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
