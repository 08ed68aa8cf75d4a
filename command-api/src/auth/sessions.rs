//! Sessions: a token's session can be revoked (logout, or an admin cutting it off), and a
//! session unused for `auth.idle_timeout_secs` ends (HIPAA automatic logoff). Tokens name their
//! session with `sid` (or `jti`); a token without either is a session of its own.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// The session of a token: its `sid`, else its `jti`, else a digest of what the token signs
/// (header and claims, not the signature: an ECDSA signature can be altered and still verify,
/// which must not make a new session of a revoked one).
pub fn session_of(claimed: Option<&str>, token: &str) -> String {
    match claimed {
        Some(id) => id.to_owned(),
        None => {
            let signed = token.rsplit_once('.').map_or(token, |(signed, _)| signed);
            let digest = Sha256::digest(signed.as_bytes());
            format!("token:{}", hex::encode(&digest[..16]))
        }
    }
}

/// Marks `session_id` used at `now`, unless it was revoked or left idle longer than
/// `idle_timeout`: then it stays ended and this returns false.
///
/// Revocation and idleness are read on every call; the last use is written only when the one
/// recorded is older than a tenth of `idle_timeout` (at most a minute), so a busy session
/// costs a read, not a flushed commit, per request. A session may thus end up to that much
/// before its idle timeout, never after it.
///
/// # Errors
///
/// The database error.
pub async fn touch(
    pool: &PgPool,
    session_id: &str,
    user_id: &str,
    now: DateTime<Utc>,
    idle_timeout: chrono::Duration,
) -> Result<bool, sqlx::Error> {
    let throttle = (idle_timeout / 10).min(chrono::Duration::minutes(1));
    let seen: Option<(bool, bool)> = sqlx::query_as(
        "SELECT revoked_at IS NULL AND user_id = $2 AND last_seen_at >= $3 - $4::interval,
                last_seen_at >= $3 - $5::interval
           FROM auth_sessions WHERE session_id = $1",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(now)
    .bind(idle_timeout)
    .bind(throttle)
    .fetch_optional(pool)
    .await?;
    match seen {
        Some((false, _)) => return Ok(false),
        Some((true, true)) => return Ok(true),
        _ => {}
    }
    let alive: Option<bool> = sqlx::query_scalar(
        "INSERT INTO auth_sessions (session_id, user_id, last_seen_at) VALUES ($1, $2, $3)
         ON CONFLICT (session_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at
          WHERE auth_sessions.revoked_at IS NULL
            AND auth_sessions.user_id = EXCLUDED.user_id
            AND auth_sessions.last_seen_at >= EXCLUDED.last_seen_at - $4::interval
         RETURNING true",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(now)
    .bind(idle_timeout)
    .fetch_optional(pool)
    .await?;
    Ok(alive.unwrap_or(false))
}

/// Revokes `session_id` (recording it if it was never seen): no token of it is accepted again.
///
/// # Errors
///
/// The database error.
pub async fn revoke(
    pool: &PgPool,
    session_id: &str,
    revoked_by: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_sessions (session_id, user_id, last_seen_at, revoked_at, revoked_by)
         VALUES ($1, '', $2, $2, $3)
         ON CONFLICT (session_id) DO UPDATE
            SET revoked_at = coalesce(auth_sessions.revoked_at, EXCLUDED.revoked_at),
                revoked_by = coalesce(auth_sessions.revoked_by, EXCLUDED.revoked_by)",
    )
    .bind(session_id)
    .bind(now)
    .bind(revoked_by)
    .execute(pool)
    .await?;
    Ok(())
}
