//! Access tracking: every read of patient data, granted or denied, is appended to the event
//! store as an `Access` event before the data is answered.
//!
//! Access entries live in the `events` table like every other fact: append-only, hash-chained
//! with the audit key (each entry is a stream of one), published by the relay to
//! [`schemas::topics::ACCESS`] in commit order and folded into the audit log by its projector.
//! They hold ids and codes only.

use schemas::access::v1::AccessEntry;
use sqlx::{PgPool, QueryBuilder};

use crate::chain::{ChainKey, EventFields};

/// The aggregate type of access entries.
pub const ACCESS_TYPE: &str = "Access";

/// The event version of access entries.
const VERSION: &str = "1.0";

/// Appends `entries` (of one request, whose W3C trace context is `traceparent`) in one
/// statement.
///
/// # Errors
///
/// The database error; the caller must then not answer the data.
pub async fn record(
    pool: &PgPool,
    chain: &ChainKey,
    (entries, traceparent): (&[AccessEntry], Option<&str>),
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        let payload = serde_json::to_value(entry).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let mut metadata = serde_json::json!({ "user_id": entry.user_id });
        if let Some(request_id) = &entry.request_id {
            metadata["request_id"] = request_id.clone().into();
        }
        if let Some(traceparent) = traceparent {
            metadata["traceparent"] = traceparent.into();
        }
        let aggregate_id = entry.entry_id.to_string();
        let hash = chain.event_hash(
            &[],
            EventFields {
                aggregate_type: ACCESS_TYPE,
                aggregate_id: &aggregate_id,
                sequence: 1,
                event_type: entry.event_type(),
                event_version: VERSION,
                payload: &payload,
                metadata: &metadata,
            },
        );
        rows.push((aggregate_id, entry.event_type(), payload, metadata, hash));
    }
    let mut insert = QueryBuilder::new(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, hash) ",
    );
    insert.push_values(
        rows,
        |mut row, (id, event_type, payload, metadata, hash)| {
            row.push_bind(ACCESS_TYPE)
                .push_bind(id)
                .push_bind(1_i64)
                .push_bind(event_type)
                .push_bind(VERSION)
                .push_bind(payload)
                .push_bind(metadata)
                .push_bind(hash);
        },
    );
    insert.build().execute(pool).await?;
    crate::bell::ring();
    Ok(())
}

/// How far back the break-the-glass limit looks.
pub const EMERGENCY_WINDOW: chrono::Duration = chrono::Duration::hours(1);

/// Whether `user_id` may open `patient_id` under break-the-glass at `at` without going past
/// `limit` patients in the last [`EMERGENCY_WINDOW`] (a patient opened so within it counts
/// once); when `grant`, and it may, the opening is recorded. Asked without `grant` (the request
/// carried break-the-glass but the patient is unknown or refused anyway), it answers the same
/// for a patient who exists and one who does not. Serialized per user, so concurrent requests
/// of one user cannot each take the last place.
///
/// # Errors
///
/// The database error.
pub async fn allow_emergency(
    pool: &PgPool,
    user_id: &str,
    patient_id: uuid::Uuid,
    at: chrono::DateTime<chrono::Utc>,
    limit: u32,
    grant: bool,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('emergency access ' || $1, 0))")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM emergency_access WHERE user_id = $1 AND granted_at <= $2")
        .bind(user_id)
        .bind(at - EMERGENCY_WINDOW)
        .execute(&mut *tx)
        .await?;
    let (opened, this_one): (i64, bool) = sqlx::query_as(
        "SELECT count(*), coalesce(bool_or(patient_id = $2), false)
           FROM emergency_access WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(patient_id)
    .fetch_one(&mut *tx)
    .await?;
    if !this_one && opened >= i64::from(limit) {
        tx.commit().await?;
        return Ok(false);
    }
    if grant {
        sqlx::query(
            "INSERT INTO emergency_access (user_id, patient_id, granted_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, patient_id) DO UPDATE SET granted_at = EXCLUDED.granted_at",
        )
        .bind(user_id)
        .bind(patient_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}
