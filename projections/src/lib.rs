//! Read models and the runtime that keeps them current.
//!
//! Events arrive only in their published form ([`schemas::PublishedEvent`]), exactly as an
//! outside consumer receives them: from a Kafka consumer group ([`kafka`]) or, when the service
//! runs without Kafka or rebuilds a read model, from the event store's ordered stream, fed in by
//! the caller ([`Projector::apply_from_stream`]).
//!
//! # Layout
//!
//! - [`migrate`]: this crate's migrations, in the `projections` schema.
//! - [`runtime`]: [`Projector`], which applies each event at most once per aggregate and in
//!   sequence order, in one transaction with its bookkeeping.
//! - [`kafka`]: the consumer-group loop (offsets stored only after the transaction commits).
//! - [`patient_search`]: the search read model and its queries.
//! - [`patient_match`]: the matcher's view of every patient, for duplicate detection.
//! - [`medical_records`]: every version of every medical record item, and their search.
//! - [`audit_log`]: every event and access entry, hash-chained, with its verification.
//! - [`audit_head`]: the audit chain's head published to a topic of its own, and checked against
//!   it.
//! - [`appointments`]: each appointment's patient, resources, time and status, for search.
//! - [`rebuild`]: fresh tables a rebuild fills, swapped in whole.

pub mod appointments;
pub mod audit_head;
pub mod audit_log;
pub mod kafka;
pub mod medical_records;
pub mod patient_match;
pub mod patient_search;
pub mod rebuild;
pub mod runtime;

pub use runtime::{
    Applied, ProjectionError, Projector, ReadModel, StreamLock, StreamPosition, Tables,
};

/// The migrations of the read-model tables.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs this crate's migrations inside the `projections` schema, with their own
/// `_sqlx_migrations` table there, so they never collide with the event store's.
///
/// # Errors
///
/// The database or migration error.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS projections")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET search_path TO projections")
        .execute(&mut *conn)
        .await?;
    let result = MIGRATOR.run(&mut *conn).await;
    // The connection goes back to the pool: leave it as we found it.
    sqlx::query("RESET search_path").execute(&mut *conn).await?;
    result
}

/// `at` cut to the microsecond, as PostgreSQL keeps it and as sqlx binds it (by truncation):
/// what a row written through JSON must hold too, since PostgreSQL would round the nanoseconds
/// it parses from text (half the time a microsecond later than the same time bound directly).
pub(crate) fn in_microseconds(at: chrono::DateTime<chrono::Utc>) -> String {
    let cut = chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
    cut.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Serializes a time for a row written through JSON ([`in_microseconds`]).
pub(crate) fn microseconds<S: serde::Serializer>(
    at: &chrono::DateTime<chrono::Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&in_microseconds(*at))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_time_written_through_json_is_cut_to_the_microsecond_not_rounded() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(super::in_microseconds(at), "2023-11-14T22:13:20.123456Z");
    }
}
