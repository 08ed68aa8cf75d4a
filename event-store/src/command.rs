//! Executes commands on any aggregate through cqrs-es, over the sealing repository.
//!
//! This is cqrs-es's `CqrsFramework::execute_with_metadata` without the query hooks (nothing
//! that must not be lost may hang off them: they run after the commit and are never retried),
//! plus the two things the API needs from it: the expected version of an `If-Match` and the new
//! version for the `ETag`. Each aggregate's store ([`crate::store`], [`crate::records`],
//! [`crate::schedule`]) builds on it.

use std::collections::HashMap;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use domain::patient::PatientError;
use sqlx::PgPool;

use crate::chain::ChainKey;
use crate::keys::KeyStore;
use crate::repository::SealedRepository;

/// How many times a command that lost a race for the same aggregate is retried.
const CONFLICT_RETRIES: usize = 3;

/// Who issued a command and in answer to what: stored as the events' metadata.
#[derive(Debug, Clone, Default)]
pub struct CommandMetadata {
    pub user_id: String,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    /// The `Idempotency-Key` the command came with, so a retry after a crash between the
    /// commit and the key's record still finds what its first attempt wrote.
    pub idempotency_key: Option<String>,
    /// Whose data key seals the events, when the aggregate is about a patient but is not the
    /// patient (see [`crate::repository::DATA_KEY_OWNER`]).
    pub data_key_owner: Option<String>,
}

impl CommandMetadata {
    fn into_map(self) -> HashMap<String, String> {
        let mut map = HashMap::from([("user_id".to_owned(), self.user_id)]);
        if let Some(id) = self.request_id {
            map.insert("request_id".to_owned(), id);
        }
        if let Some(tp) = self.traceparent {
            map.insert("traceparent".to_owned(), tp);
        }
        if let Some(key) = self.idempotency_key {
            map.insert("idempotency_key".to_owned(), key);
        }
        if let Some(owner) = self.data_key_owner {
            map.insert(crate::repository::DATA_KEY_OWNER.to_owned(), owner);
        }
        map
    }
}

/// Why a command was not carried out; `E` is the aggregate's rule error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E = PatientError> {
    #[error(transparent)]
    Rule(E),
    #[error("the record is at version {current}, not the expected {expected}")]
    VersionMismatch { expected: u64, current: u64 },
    #[error("the command lost {CONFLICT_RETRIES} races for the same record")]
    Conflict,
    #[error("the event store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the event store failed")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<PatientError> for CommandError {
    fn from(rule: PatientError) -> Self {
        Self::Rule(rule)
    }
}

/// The cqrs-es event store of aggregate `A` over the sealing repository, with no transaction
/// effect. The patient store adds [`crate::store::Erasure`] to its own: patient events go
/// through it, never through this.
pub(crate) fn event_store<A: Aggregate>(
    pool: &PgPool,
    keys: &KeyStore,
    chain: &ChainKey,
) -> PersistedEventStore<SealedRepository, A> {
    PersistedEventStore::new_event_store(SealedRepository::new(
        pool.clone(),
        keys.clone(),
        chain.clone(),
    ))
}

/// Loads aggregate `aggregate_id`, lets `precheck` refuse the command on what it finds (before
/// the version is compared, so "nobody here" wins over "stale version"), compares the version
/// with `expected_version`, decides, and commits; a lost race is retried from the load.
/// Returns the aggregate and its version after the command.
pub(crate) async fn execute_on<A, D>(
    store: &PersistedEventStore<SealedRepository, A>,
    aggregate_id: &str,
    expected_version: Option<u64>,
    precheck: impl Fn(&A, u64) -> Result<(), A::Error>,
    decide: D,
    metadata: CommandMetadata,
) -> Result<(A, u64), CommandError<A::Error>>
where
    A: Aggregate + Clone,
    D: Fn(&A) -> Result<Vec<A::Event>, A::Error>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut context = store.load_aggregate(aggregate_id).await.map_err(classify)?;
        let current = context.current_sequence as u64;
        precheck(context.aggregate(), current).map_err(CommandError::Rule)?;
        if let Some(expected) = expected_version {
            if expected != current {
                return Err(CommandError::VersionMismatch { expected, current });
            }
        }
        let events = decide(context.aggregate()).map_err(CommandError::Rule)?;
        let count = events.len() as u64;
        let mut after = context.aggregate.clone();
        for event in &events {
            after.apply(event.clone());
        }
        match store
            .commit(events, context, metadata.clone().into_map())
            .await
        {
            Ok(_) => return Ok((after, current + count)),
            Err(AggregateError::AggregateConflict) if attempt <= CONFLICT_RETRIES => {
                tracing::debug!(attempt, "lost a race for the aggregate, retrying");
            }
            Err(AggregateError::AggregateConflict) => return Err(CommandError::Conflict),
            Err(other) => return Err(classify(other)),
        }
    }
}

/// Maps a sqlx error to unavailable (the database could not be reached) or internal.
pub fn sqlx_error<E>(error: sqlx::Error) -> CommandError<E> {
    if crate::is_unavailable(&error) {
        CommandError::Unavailable(Box::new(error))
    } else {
        CommandError::Internal(Box::new(error))
    }
}

pub(crate) fn classify<E: std::error::Error>(error: AggregateError<E>) -> CommandError<E> {
    match error {
        AggregateError::UserError(rule) => CommandError::Rule(rule),
        AggregateError::AggregateConflict => CommandError::Conflict,
        AggregateError::DatabaseConnectionError(e) => CommandError::Unavailable(e),
        // serde's message would quote the stored value, which is patient data.
        AggregateError::DeserializationError(_) => {
            CommandError::Internal("a stored event does not deserialize".into())
        }
        AggregateError::UnexpectedError(e) => match e.downcast::<sqlx::Error>() {
            Ok(sqlx) => sqlx_error(*sqlx),
            Err(e) => CommandError::Internal(e),
        },
    }
}
