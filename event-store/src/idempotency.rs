//! The first answer to a POST that carried an `Idempotency-Key`, per user and key.
//!
//! Only a keyed hash of the request and the resulting aggregate version are kept, never patient
//! data: a replay rebuilds the answer from the aggregate as it was at that version. The hash is
//! an HMAC under a key derived from the master key ([`request_hash`],
//! [`crate::keys::KeyStore::request_hash_key`]), so a copy of the table does not let anyone
//! confirm a guessed request (an identifier, say) by hashing it. Records expire after
//! [`KEY_LIFETIME`], and erasing a patient deletes theirs in the erasure's transaction
//! ([`forget`]).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::chain::ChainKey;

/// How long a key's first answer is kept: long past any client's retries.
pub const KEY_LIFETIME: chrono::Duration = chrono::Duration::hours(24);

/// The keyed hash (hex) of a request: its method, path and body, under `key`
/// ([`crate::keys::KeyStore::request_hash_key`]).
pub fn request_hash(key: &ChainKey, method: &str, path: &str, body: &[u8]) -> String {
    hex::encode(key.link(
        b"idempotency request",
        &[method.as_bytes(), path.as_bytes(), body],
    ))
}

/// Deletes the idempotency records of requests on `aggregate_id`, inside `tx` (the erasure's).
///
/// # Errors
///
/// The database error.
pub async fn forget(tx: &mut sqlx::PgConnection, aggregate_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE aggregate_id = $1")
        .bind(aggregate_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// What the first request with a key produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub request_hash: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: u64,
    /// The HTTP status of the first answer.
    pub response_status: u16,
}

#[derive(Debug, Clone)]
pub struct IdempotencyKeys {
    pool: PgPool,
}

impl IdempotencyKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The recorded answer of `user_id`'s `key`, if any was recorded within [`KEY_LIFETIME`]
    /// before `now`.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn find(
        &self,
        user_id: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Recorded>, sqlx::Error> {
        let row: Option<(String, String, String, i64, i32)> = sqlx::query_as(
            "SELECT request_hash, aggregate_type, aggregate_id, version, response_status
               FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND created_at > $3",
        )
        .bind(user_id)
        .bind(key)
        .bind(now - KEY_LIFETIME)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(request_hash, aggregate_type, aggregate_id, version, status)| Recorded {
                request_hash,
                aggregate_type,
                aggregate_id,
                version: version as u64,
                response_status: u16::try_from(status).unwrap_or(200),
            },
        ))
    }

    /// Records the first answer at `now`; a concurrent first answer for the same key wins and
    /// is kept. An expired record of the same key gives way. Returns whether this one was
    /// recorded (false: another answer came first).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn record(
        &self,
        user_id: &str,
        key: &str,
        recorded: &Recorded,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, aggregate_type, aggregate_id, version, response_status, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (user_id, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, aggregate_type = EXCLUDED.aggregate_type,
                    aggregate_id = EXCLUDED.aggregate_id, version = EXCLUDED.version,
                    response_status = EXCLUDED.response_status, created_at = EXCLUDED.created_at
              WHERE idempotency_keys.created_at <= $8 - $9::interval",
        )
        .bind(user_id)
        .bind(key)
        .bind(&recorded.request_hash)
        .bind(&recorded.aggregate_type)
        .bind(&recorded.aggregate_id)
        .bind(recorded.version as i64)
        .bind(i32::from(recorded.response_status))
        .bind(now)
        .bind(interval(KEY_LIFETIME))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes the records that expired before `now`; returns how many. The background role
    /// calls it now and then.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= $1")
            .bind(now - KEY_LIFETIME)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

/// A duration as a PostgreSQL interval literal.
fn interval(duration: chrono::Duration) -> String {
    format!("{} seconds", duration.num_seconds())
}
