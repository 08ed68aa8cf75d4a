-- Sessions of bearer tokens: when each was last used (idle timeout) and whether it was revoked
-- (the revocation list). Ids only.
CREATE TABLE auth_sessions
(
    session_id   text PRIMARY KEY,
    user_id      text        NOT NULL,
    last_seen_at timestamptz NOT NULL,
    revoked_at   timestamptz,
    revoked_by   text
);
