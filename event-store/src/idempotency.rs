//! The first answer to a request that carried an `Idempotency-Key`, per user and key: the one
//! idempotency mechanism of every creating or changing request.
//!
//! A command's key is reserved in the command's own transaction, before its events
//! ([`Reservation`], taken by [`crate::repository::SealedRepository`]): the record commits
//! with the events or not at all, and a concurrent repeat waits on the first one's row and then
//! fails with [`KeyTaken`], to answer as the first did. A refusal (a 4xx the command itself
//! gave) is recorded after the fact ([`IdempotencyKeys::record_refusal`]), so a repeat gets the
//! same refusal.
//!
//! Only a keyed hash of the request and the resulting aggregate version are kept, never patient
//! data: a replay rebuilds the answer from the aggregate as it was at that version (a refusal's
//! problem document names fields and ids, never values). The hash is
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

/// Deletes the idempotency records of requests on `aggregate_id`, inside `tx` (the erasure's),
/// except the erasure's own (`keeping`: its user and key), which a repeat of it must still
/// find. That record holds an id and a keyed hash, nothing of the patient.
///
/// # Errors
///
/// The database error.
pub async fn forget(
    tx: &mut sqlx::PgConnection,
    aggregate_id: &str,
    keeping: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    let (user_id, key) = keeping.unwrap_or_default();
    sqlx::query(
        "DELETE FROM idempotency_keys
          WHERE aggregate_id = $1 AND NOT (user_id = $2 AND key = $3)",
    )
    .bind(aggregate_id)
    .bind(user_id)
    .bind(key)
    .execute(tx)
    .await?;
    Ok(())
}

/// What the first request with a key produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub request_hash: String,
    /// The HTTP status of the first answer.
    pub response_status: u16,
    pub answer: Answer,
}

/// The first answer to a key: what a command stored, or a refusal.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The aggregate as the command left it, and the item the answer was about (a medical
    /// record's item), if any.
    Stored {
        aggregate_type: String,
        aggregate_id: String,
        version: u64,
        item_id: Option<String>,
    },
    /// The problem document of a refusal.
    Refused(serde_json::Value),
}

/// A key to reserve in a command's transaction, with what its answer will be: taken by the
/// sealing repository before it inserts the command's events (the aggregate and version come
/// from them).
#[derive(Debug, Clone)]
pub struct Reservation {
    pub user_id: String,
    pub key: String,
    pub request_hash: String,
    /// The HTTP status the command answers with when it succeeds.
    pub response_status: u16,
    /// The item the answer is about, for commands on one item of an aggregate.
    pub item_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// Another request holds the key: it committed first (or its record is still alive).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the idempotency key is taken by an earlier request")]
pub struct KeyTaken;

/// Reserves `reservation`'s key in `tx` for the events of `aggregate_type`/`aggregate_id` that
/// leave it at `version`. Waits while a concurrent transaction holds the key; an expired record
/// of the key gives way. Returns whether the key was reserved (false: it is [`KeyTaken`]).
///
/// # Errors
///
/// The database error.
pub async fn reserve(
    tx: &mut sqlx::PgConnection,
    reservation: &Reservation,
    (aggregate_type, aggregate_id, version): (&str, &str, u64),
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, aggregate_type, aggregate_id,
                                       version, item_id, response_status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (user_id, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, aggregate_type = EXCLUDED.aggregate_type,
                aggregate_id = EXCLUDED.aggregate_id, version = EXCLUDED.version,
                item_id = EXCLUDED.item_id, problem = NULL,
                response_status = EXCLUDED.response_status, created_at = EXCLUDED.created_at
          WHERE idempotency_keys.created_at <= $9 - $10::interval",
    )
    .bind(&reservation.user_id)
    .bind(&reservation.key)
    .bind(&reservation.request_hash)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(version as i64)
    .bind(&reservation.item_id)
    .bind(i32::from(reservation.response_status))
    .bind(reservation.at)
    .bind(interval(KEY_LIFETIME))
    .execute(tx)
    .await?;
    Ok(result.rows_affected() == 1)
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
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<serde_json::Value>,
            i32,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT request_hash, aggregate_type, aggregate_id, version, item_id, problem,
                    response_status
               FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND created_at > $3",
        )
        .bind(user_id)
        .bind(key)
        .bind(now - KEY_LIFETIME)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(request_hash, aggregate_type, aggregate_id, version, item_id, problem, status)| {
                let answer = match (problem, aggregate_type, aggregate_id, version) {
                    (None, Some(aggregate_type), Some(aggregate_id), Some(version)) => {
                        Answer::Stored {
                            aggregate_type,
                            aggregate_id,
                            version: version as u64,
                            item_id,
                        }
                    }
                    (problem, ..) => Answer::Refused(problem.unwrap_or_default()),
                };
                Recorded {
                    request_hash,
                    response_status: u16::try_from(status).unwrap_or(200),
                    answer,
                }
            },
        ))
    }

    /// Records a refusal as the first answer of `user_id`'s `key` at `now`: its status and
    /// problem document. A live record of the key stays (a concurrent first answer wins).
    /// Returns whether this one was recorded.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn record_refusal(
        &self,
        (user_id, key): (&str, &str),
        request_hash: &str,
        (status, problem): (u16, &serde_json::Value),
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, problem, response_status,
                                           created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (user_id, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, aggregate_type = NULL,
                    aggregate_id = NULL, version = NULL, item_id = NULL,
                    problem = EXCLUDED.problem, response_status = EXCLUDED.response_status,
                    created_at = EXCLUDED.created_at
              WHERE idempotency_keys.created_at <= $6 - $7::interval",
        )
        .bind(user_id)
        .bind(key)
        .bind(request_hash)
        .bind(problem)
        .bind(i32::from(status))
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
