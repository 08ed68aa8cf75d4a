//! The first answer to a POST that carried an `Idempotency-Key`, per user and key.
//!
//! Only the request's hash and the resulting aggregate version are kept, never patient data: a
//! replay rebuilds the answer from the aggregate as it was at that version.

use sqlx::PgPool;

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

    /// The recorded answer of `user_id`'s `key`, if any.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn find(&self, user_id: &str, key: &str) -> Result<Option<Recorded>, sqlx::Error> {
        let row: Option<(String, String, String, i64, i32)> = sqlx::query_as(
            "SELECT request_hash, aggregate_type, aggregate_id, version, response_status
               FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user_id)
        .bind(key)
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

    /// Deletes the records that expired before `now`: none, for records do not expire yet.
    ///
    /// # Errors
    ///
    /// None yet.
    pub async fn sweep(&self, _now: chrono::DateTime<chrono::Utc>) -> Result<u64, sqlx::Error> {
        Ok(0)
    }

    /// Records the first answer; a concurrent first answer for the same key wins and is kept.
    /// Returns whether this one was recorded (false: another answer came first).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn record(
        &self,
        user_id: &str,
        key: &str,
        recorded: &Recorded,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, aggregate_type, aggregate_id, version, response_status)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (user_id, key) DO NOTHING",
        )
        .bind(user_id)
        .bind(key)
        .bind(&recorded.request_hash)
        .bind(&recorded.aggregate_type)
        .bind(&recorded.aggregate_id)
        .bind(recorded.version as i64)
        .bind(i32::from(recorded.response_status))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }
}
