//! The write side's storage: the PostgreSQL event store behind cqrs-es, and everything that reads
//! it in commit order.
//!
//! # Layout
//!
//! - [`MIGRATOR`]: this crate's tables (`events`, `snapshots`, relay checkpoints, MRN serials,
//!   idempotency keys, data keys, document contents). Run it before anything else touches the database.
//! - [`access`]: appends access entries (who read which patient's data) to the store.
//! - [`bell`]: wakes the store's readers when events commit, in process and (by one
//!   notification outside the writing transactions) in other processes.
//! - [`keys`]: one data key per patient, wrapped by the master key; rotation and destruction.
//! - [`repository`]: the cqrs-es repository that seals payloads and hash-chains rows on the
//!   way in and opens them on the way out.
//! - [`chain`]: the hash chains that make tampering with stored events evident, and their
//!   verification.
//! - [`records`]: executes medical record commands (one record per patient).
//! - [`snapshots`]: sealed snapshots of medical records, so a command's cost does not grow
//!   with the length of the chart.
//! - [`documents`]: document contents, sealed, in PostgreSQL or a directory.
//! - [`schedule`]: resources, service types, appointments and the time they claim.
//! - [`command`]: executes commands on any aggregate through cqrs-es with optimistic
//!   concurrency (bounded retries of lost races), and the errors and metadata of a command;
//!   a unit of work across aggregates of any type (a FHIR transaction), stored in one
//!   transaction.
//! - [`store`]: the patient store: executes patient commands and loads patients.
//! - [`stream`]: reads committed events in a gap-free global order; the relay and every replay
//!   use it.
//! - [`wire`]: maps stored domain events to the published contract in `schemas`.
//! - [`relay`]: publishes the stream to Kafka, at least once, in order per aggregate.
//! - [`idempotency`]: remembers the first answer to a request with an `Idempotency-Key`,
//!   reserved in the command's transaction.
//! - [`registration_guard`]: likely duplicates registered at once do not both pass.

pub mod access;
pub mod bell;
pub mod chain;
pub mod command;
pub mod documents;
pub mod exports;
pub mod idempotency;
pub mod keys;
pub mod metrics;
pub mod records;
pub mod registration_guard;
pub mod relay;
pub mod repository;
pub mod schedule;
pub mod snapshots;
pub mod states;
pub mod store;
pub mod stream;
pub mod wire;

/// The migrations of this crate's tables.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Whether an error means the database could not be reached (as opposed to a bad query).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|c| {
        // 57P01..57P03: admin shutdown, crash shutdown, cannot connect now; 53300: too many
        // connections. All of them pass when the server is back.
        c.starts_with("57P") || c == "53300"
    }))
}
