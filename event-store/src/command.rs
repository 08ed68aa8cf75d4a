//! Executes commands on any aggregate through cqrs-es, over the sealing repository.
//!
//! This is cqrs-es's `CqrsFramework::execute_with_metadata` without the query hooks (nothing
//! that must not be lost may hang off them: they run after the commit and are never retried),
//! plus the two things the API needs from it: the expected version of an `If-Match` and the new
//! version for the `ETag`. Each aggregate's store ([`crate::store`], [`crate::records`],
//! [`crate::schedule`]) builds on it.

use std::collections::HashMap;
use std::sync::Arc;

use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use domain::patient::PatientError;
use sqlx::PgPool;

use crate::chain::ChainKey;
use crate::keys::KeyStore;
use crate::repository::{SealedRepository, TransactionEffect};

/// How many times a command that lost a race for the same aggregate to another process is
/// retried (writers in this process wait their turn instead, see [`turn`]).
const CONFLICT_RETRIES: usize = 5;

/// The longest a writer waits for its turn at one aggregate before giving up with
/// [`CommandError::Busy`].
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// One writer at a time per aggregate in this process: concurrent commands on one aggregate
/// (ten allergies recorded at once on one chart) take turns instead of racing for its next
/// sequence, so none fails for another's sake. Entries go once nobody holds or waits for them.
static WRITERS: std::sync::LazyLock<
    std::sync::Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
> = std::sync::LazyLock::new(Default::default);

/// Waits (at most [`TURN_WAIT`]) for this process's turn to write aggregate `key`.
pub(crate) async fn turn(key: String) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    let lock = {
        // The map holds no invariant a panic elsewhere could break: recover it.
        let mut writers = WRITERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if writers.len() > 1024 {
            writers.retain(|_, lock| lock.strong_count() > 0);
        }
        match writers.get(&key).and_then(std::sync::Weak::upgrade) {
            Some(lock) => lock,
            None => {
                let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                writers.insert(key, std::sync::Arc::downgrade(&lock));
                lock
            }
        }
    };
    tokio::time::timeout(TURN_WAIT, lock.lock_owned())
        .await
        .ok()
}

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
    /// The key to reserve in the command's transaction, with its answer (not stored in the
    /// events' metadata: the table keeps it).
    pub reservation: Option<crate::idempotency::Reservation>,
}

impl CommandMetadata {
    pub(crate) fn into_map(self) -> HashMap<String, String> {
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
    /// The command's `Idempotency-Key` is taken by an earlier request: answer as it did.
    #[error("the idempotency key is taken by an earlier request")]
    KeyTaken,
    /// Registered patients the matcher grades `certain` or `probable` against a registration
    /// that came without an override: id, grade and score, best first.
    #[error("the patient may be registered already")]
    LikelyDuplicates(Vec<(uuid::Uuid, domain::matching::Grade, f64)>),
    /// Other writers of the record in this process kept it longer than a writer waits.
    #[error("the record was busy with other writers for longer than a writer waits")]
    Busy,
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

/// The sealing repository, with no transaction effect.
pub(crate) fn repository(pool: &PgPool, keys: &KeyStore, chain: &ChainKey) -> SealedRepository {
    SealedRepository::new(pool.clone(), keys.clone(), chain.clone())
}

/// Whether the aggregate a command acts on is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fresh {
    /// It may hold events: they are read first.
    Unknown,
    /// Its id was just made for it (a registration, a booking): its first load is skipped,
    /// a round trip that would find nothing.
    Expected,
}

/// Loads aggregate `aggregate_id`, lets `precheck` refuse the command on what it finds (before
/// the version is compared, so "nobody here" wins over "stale version"), compares the version
/// with `expected_version`, decides, and commits. Writers of one aggregate in this process
/// take turns; a race lost to another process is retried from the load. Given a `unit` of
/// work, the command is staged there instead ([`UnitOfWork`]).
/// Returns the aggregate and its version after the command.
pub(crate) async fn execute_on<A, D>(
    (repository, unit): (SealedRepository, Option<&UnitOfWork>),
    (aggregate_id, fresh): (&str, Fresh),
    expected_version: Option<u64>,
    precheck: impl Fn(&A, u64) -> Result<(), A::Error>,
    decide: D,
    metadata: CommandMetadata,
) -> Result<(A, u64), CommandError<A::Error>>
where
    A: Aggregate + Clone + 'static,
    D: Fn(&A) -> Result<Vec<A::Event>, A::Error>,
{
    let result = execute_once(
        (repository, unit),
        (aggregate_id, fresh),
        expected_version,
        precheck,
        decide,
        metadata,
    )
    .await;
    crate::metrics::command(A::TYPE, outcome(&result));
    result
}

/// [`execute_on`], uncounted.
async fn execute_once<A, D>(
    (repository, unit): (SealedRepository, Option<&UnitOfWork>),
    (aggregate_id, fresh): (&str, Fresh),
    expected_version: Option<u64>,
    precheck: impl Fn(&A, u64) -> Result<(), A::Error>,
    decide: D,
    metadata: CommandMetadata,
) -> Result<(A, u64), CommandError<A::Error>>
where
    A: Aggregate + Clone + 'static,
    D: Fn(&A) -> Result<Vec<A::Event>, A::Error>,
{
    if let Some(unit) = unit {
        return unit
            .stage(
                repository,
                (aggregate_id, fresh),
                expected_version,
                precheck,
                decide,
                metadata,
            )
            .await;
    }
    let Some(_turn) = turn(format!("{}/{aggregate_id}", A::TYPE)).await else {
        return Err(CommandError::Busy);
    };
    // A long stream's state is loaded through the states kept between loads.
    let reader = repository.keeps_states().then(|| repository.bare());
    let store: PersistedEventStore<SealedRepository, A> = repository
        .reserving(metadata.reservation.clone())
        .into_store();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut context = if attempt == 1 && fresh == Fresh::Expected {
            // Nothing to read: the first event's sequence being taken (a unique violation)
            // is a lost race like any other, retried from a load.
            EventStoreAggregateContext {
                aggregate_id: aggregate_id.to_owned(),
                aggregate: A::default(),
                current_sequence: 0,
                current_snapshot: None,
            }
        } else if let Some(reader) = &reader {
            crate::states::load(reader, aggregate_id)
                .await
                .map_err(classify)?
        } else {
            store.load_aggregate(aggregate_id).await.map_err(classify)?
        };
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
                // Another process wrote it: give it a moment, more each time.
                tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
            }
            Err(AggregateError::AggregateConflict) => return Err(CommandError::Conflict),
            Err(other) => return Err(classify(other)),
        }
    }
}

/// One aggregate's part in a unit of work ([`execute_together`]): which aggregate, the version
/// the caller expects it at (if any), what refuses the command on what is found before the
/// version is compared (as in [`execute_on`]), and what it decides.
pub(crate) struct Part<'a, A: Aggregate> {
    pub aggregate_id: String,
    pub expected_version: Option<u64>,
    #[allow(clippy::type_complexity)]
    pub precheck: Box<dyn Fn(&A, u64) -> Result<(), A::Error> + Send + Sync + 'a>,
    #[allow(clippy::type_complexity)]
    pub decide: Box<dyn Fn(&A) -> Result<Vec<A::Event>, A::Error> + Send + Sync + 'a>,
}

/// Executes commands on several aggregates of type `A` as one unit of work: each is loaded,
/// its version compared with the expected one and its command decided, and all their events
/// are stored in one transaction ([`SealedRepository::persist_together`]), each aggregate
/// under its own optimistic-concurrency check. Either every aggregate changes or none does;
/// a race lost to another process is retried from the loads. Writers take their turns at the
/// aggregates in one order, so two units of work on the same aggregates cannot wait on each
/// other. Returns each aggregate and its version after the commands, in the order of `parts`.
pub(crate) async fn execute_together<A>(
    (repository, unit): (SealedRepository, Option<&UnitOfWork>),
    parts: Vec<Part<'_, A>>,
    metadata: CommandMetadata,
) -> Result<Vec<(A, u64)>, CommandError<A::Error>>
where
    A: Aggregate + Clone + 'static,
{
    let result = execute_parts((repository, unit), parts, metadata).await;
    crate::metrics::command(A::TYPE, outcome(&result));
    result
}

/// [`execute_together`], uncounted.
async fn execute_parts<A>(
    (repository, unit): (SealedRepository, Option<&UnitOfWork>),
    parts: Vec<Part<'_, A>>,
    metadata: CommandMetadata,
) -> Result<Vec<(A, u64)>, CommandError<A::Error>>
where
    A: Aggregate + Clone + 'static,
{
    use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
    if let Some(unit) = unit {
        // Inside a larger unit of work: each part staged there, on the aggregate as the unit
        // holds it (the repository's effects concern erasure, which no unit stages).
        let mut after = Vec::with_capacity(parts.len());
        for part in parts {
            let staged = unit
                .stage(
                    repository.bare(),
                    (&part.aggregate_id, Fresh::Unknown),
                    part.expected_version,
                    |aggregate: &A, current| (part.precheck)(aggregate, current),
                    |aggregate: &A| (part.decide)(aggregate),
                    metadata.clone(),
                )
                .await?;
            after.push(staged);
        }
        return Ok(after);
    }
    use cqrs_es::DomainEvent;
    let mut keys: Vec<String> = parts
        .iter()
        .map(|p| format!("{}/{}", A::TYPE, p.aggregate_id))
        .collect();
    keys.sort();
    keys.dedup();
    let mut turns = Vec::with_capacity(keys.len());
    for key in keys {
        turns.push(turn(key).await.ok_or(CommandError::Busy)?);
    }
    let repository = repository.reserving(metadata.reservation.clone());
    let stored_metadata = serde_json::to_value(metadata.into_map())
        .map_err(|e| CommandError::Internal(Box::new(e)))?;
    let unreadable = || CommandError::Internal("a stored event does not deserialize".into());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut after = Vec::with_capacity(parts.len());
        let mut streams = Vec::with_capacity(parts.len());
        for part in &parts {
            let stored = repository
                .get_events::<A>(&part.aggregate_id)
                .await
                .map_err(|e| classify(AggregateError::from(e)))?;
            let mut aggregate = A::default();
            let mut current = 0;
            for event in stored {
                current = event.sequence as u64;
                let event: A::Event =
                    serde_json::from_value(event.payload).map_err(|_| unreadable())?;
                aggregate.apply(event);
            }
            (part.precheck)(&aggregate, current).map_err(CommandError::Rule)?;
            if let Some(expected) = part.expected_version {
                if expected != current {
                    return Err(CommandError::VersionMismatch { expected, current });
                }
            }
            let events = (part.decide)(&aggregate).map_err(CommandError::Rule)?;
            let mut serialized = Vec::with_capacity(events.len());
            for (event, sequence) in events.into_iter().zip(current + 1..) {
                serialized.push(SerializedEvent::new(
                    part.aggregate_id.clone(),
                    sequence as usize,
                    A::TYPE.to_owned(),
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(&event)
                        .map_err(|e| CommandError::Internal(Box::new(e)))?,
                    stored_metadata.clone(),
                ));
                aggregate.apply(event);
            }
            after.push((aggregate, current + serialized.len() as u64));
            streams.push(serialized);
        }
        let streams: Vec<&[SerializedEvent]> = streams.iter().map(Vec::as_slice).collect();
        match repository.persist_together::<A>(&streams).await {
            Ok(()) => return Ok(after),
            Err(cqrs_es::persist::PersistenceError::OptimisticLockError)
                if attempt <= CONFLICT_RETRIES =>
            {
                tracing::debug!(attempt, "lost a race for an aggregate, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
            }
            Err(other) => return Err(classify(AggregateError::from(other))),
        }
    }
}

/// Aggregate `aggregate_id` as its first `version` events left it, or `None` when it never
/// reached that version (or its events at that version are gone with a forgotten patient).
pub(crate) async fn load_version<A: Aggregate>(
    repository: SealedRepository,
    aggregate_id: &str,
    version: u64,
) -> Result<Option<A>, CommandError<A::Error>> {
    let store: PersistedEventStore<SealedRepository, A> =
        PersistedEventStore::new_event_store(repository);
    let events = store.load_events(aggregate_id).await.map_err(classify)?;
    // By sequence, not count: a forgotten patient's sealed events are gone from the list.
    if version == 0 || !events.iter().any(|e| e.sequence as u64 >= version) {
        return Ok(None);
    }
    let mut aggregate = A::default();
    for envelope in events
        .into_iter()
        .take_while(|e| e.sequence as u64 <= version)
    {
        aggregate.apply(envelope.payload);
    }
    Ok(Some(aggregate))
}

/// Aggregate `aggregate_id` as each of its latest `newest` versions left it, newest first:
/// its stream read and applied once (versions whose events are gone with a forgotten patient
/// are left out).
pub(crate) async fn load_versions<A: Aggregate + Clone>(
    repository: SealedRepository,
    aggregate_id: &str,
    newest: usize,
) -> Result<Vec<(u64, A)>, CommandError<A::Error>> {
    let store: PersistedEventStore<SealedRepository, A> =
        PersistedEventStore::new_event_store(repository);
    let events = store.load_events(aggregate_id).await.map_err(classify)?;
    let first_kept = events.len().saturating_sub(newest);
    let mut aggregate = A::default();
    let mut versions = Vec::with_capacity(events.len() - first_kept);
    for (i, envelope) in events.into_iter().enumerate() {
        let sequence = envelope.sequence as u64;
        aggregate.apply(envelope.payload);
        if i >= first_kept {
            versions.push((sequence, aggregate.clone()));
        }
    }
    versions.reverse();
    Ok(versions)
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
        AggregateError::UnexpectedError(e) if e.is::<crate::idempotency::KeyTaken>() => {
            CommandError::KeyTaken
        }
        AggregateError::UnexpectedError(e)
            if e.is::<crate::registration_guard::LikelyDuplicates>() =>
        {
            match e.downcast::<crate::registration_guard::LikelyDuplicates>() {
                Ok(likely) => CommandError::LikelyDuplicates(likely.0),
                Err(e) => CommandError::Internal(e),
            }
        }
        AggregateError::UnexpectedError(e) => match e.downcast::<sqlx::Error>() {
            Ok(sqlx) => sqlx_error(*sqlx),
            Err(e) => CommandError::Internal(e),
        },
    }
}

/// A unit of work across aggregates of any type: the commands of one request (a FHIR
/// `transaction` Bundle registering a patient and recording their allergies and observations)
/// are decided one after another, each on the aggregate as the commands before it left it, and
/// their events are stored in one transaction ([`UnitOfWork::commit`]): all of them, or none.
///
/// A store bound to a unit (`in_unit`) stages the events of the commands executed through it
/// instead of storing them, and loads an aggregate the unit holds as staged. The unit holds
/// this process's turn at each aggregate it staged until it is committed or dropped, so no
/// other writer here decides on a state the unit is about to change; a writer elsewhere that
/// takes a sequence first makes the commit fail as a lost race ([`CommandError::Conflict`]),
/// and nothing is stored. Cheap to clone: clones share what is staged.
#[derive(Clone, Default)]
pub struct UnitOfWork(Arc<tokio::sync::Mutex<Staging>>);

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Staging {
    streams: Vec<Stream>,
    /// This process's turns at the staged aggregates, held until the unit ends.
    turns: Vec<tokio::sync::OwnedMutexGuard<()>>,
    /// The database and keys to store with (those of the first store that staged).
    repository: Option<SealedRepository>,
    over: bool,
}

/// One aggregate's staged change.
struct Stream {
    aggregate_type: &'static str,
    aggregate_id: String,
    /// The aggregate as the staged events leave it (of the type named).
    aggregate: Box<dyn std::any::Any + Send>,
    version: u64,
    events: Vec<cqrs_es::persist::SerializedEvent>,
    /// The effects of the commands that staged events, each with the range of its events.
    effects: Vec<(Box<dyn TransactionEffect>, std::ops::Range<usize>)>,
}

fn over<E>() -> CommandError<E> {
    CommandError::Internal("the unit of work is over".into())
}

impl UnitOfWork {
    /// Decides a command on aggregate `aggregate_id` as [`crate::command::execute_on`] does,
    /// on the aggregate as this unit holds it (loaded on first use), and stages its events and
    /// the repository's effects. Returns the aggregate and its version after the command, as
    /// they will be once the unit is committed.
    pub(crate) async fn stage<A, D>(
        &self,
        mut repository: SealedRepository,
        (aggregate_id, fresh): (&str, Fresh),
        expected_version: Option<u64>,
        precheck: impl Fn(&A, u64) -> Result<(), A::Error>,
        decide: D,
        metadata: CommandMetadata,
    ) -> Result<(A, u64), CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        D: Fn(&A) -> Result<Vec<A::Event>, A::Error>,
    {
        let mut staging = self.0.lock().await;
        if staging.over {
            return Err(over());
        }
        let index = match staging.position(A::TYPE, aggregate_id) {
            Some(index) => index,
            None => {
                let turn = turn(format!("{}/{aggregate_id}", A::TYPE))
                    .await
                    .ok_or(CommandError::Busy)?;
                staging.turns.push(turn);
                let (aggregate, version) = if fresh == Fresh::Expected {
                    (A::default(), 0)
                } else {
                    load_current::<A>(repository.bare(), aggregate_id).await?
                };
                staging.streams.push(Stream {
                    aggregate_type: A::TYPE,
                    aggregate_id: aggregate_id.to_owned(),
                    aggregate: Box::new(aggregate),
                    version,
                    events: Vec::new(),
                    effects: Vec::new(),
                });
                staging.streams.len() - 1
            }
        };
        if staging.repository.is_none() {
            staging.repository = Some(repository.bare());
        }
        let stream = &mut staging.streams[index];
        let Some(aggregate) = stream.aggregate.downcast_ref::<A>() else {
            return Err(over());
        };
        let current = stream.version;
        precheck(aggregate, current).map_err(CommandError::Rule)?;
        if let Some(expected) = expected_version {
            if expected != current {
                return Err(CommandError::VersionMismatch { expected, current });
            }
        }
        let events = decide(aggregate).map_err(CommandError::Rule)?;
        let stored_metadata = serde_json::to_value(metadata.into_map())
            .map_err(|e| CommandError::Internal(Box::new(e)))?;
        let mut after = aggregate.clone();
        let first = stream.events.len();
        for (event, sequence) in events.into_iter().zip(current + 1..) {
            stream.events.push(cqrs_es::persist::SerializedEvent::new(
                aggregate_id.to_owned(),
                sequence as usize,
                A::TYPE.to_owned(),
                cqrs_es::DomainEvent::event_type(&event),
                cqrs_es::DomainEvent::event_version(&event),
                serde_json::to_value(&event).map_err(|e| CommandError::Internal(Box::new(e)))?,
                stored_metadata.clone(),
            ));
            after.apply(event);
        }
        let added = first..stream.events.len();
        stream.version += added.len() as u64;
        stream.aggregate = Box::new(after.clone());
        for effect in repository.take_effects() {
            stream.effects.push((effect, added.clone()));
        }
        Ok((after, stream.version))
    }

    /// Aggregate `aggregate_id` of type `A` and its version as this unit holds it, if it
    /// staged a command on it.
    pub(crate) async fn staged<A: Aggregate + Clone + 'static>(
        &self,
        aggregate_id: &str,
    ) -> Option<(A, u64)> {
        let staging = self.0.lock().await;
        let stream = &staging.streams[staging.position(A::TYPE, aggregate_id)?];
        let aggregate = stream.aggregate.downcast_ref::<A>()?;
        Some((aggregate.clone(), stream.version))
    }

    /// Stores every staged event in one transaction, with the staging commands' effects; the
    /// unit is over afterwards, whatever the outcome, and its turns are released. Returns how
    /// many events were stored.
    ///
    /// # Errors
    ///
    /// [`CommandError::Conflict`] when another writer took a sequence first (nothing is
    /// stored); [`CommandError::LikelyDuplicates`] from a registration's guard; the store
    /// failing.
    pub async fn commit(&self) -> Result<usize, CommandError> {
        let mut staging = self.0.lock().await;
        if staging.over {
            return Err(over());
        }
        staging.over = true;
        let Some(repository) = staging.repository.take() else {
            return Ok(0);
        };
        let streams: Vec<crate::repository::StagedStream<'_>> = staging
            .streams
            .iter()
            .map(|s| crate::repository::StagedStream {
                aggregate_type: s.aggregate_type,
                events: &s.events,
                effects: &s.effects,
            })
            .collect();
        let count = streams.iter().map(|s| s.events.len()).sum();
        let stored = repository.persist_unit(&streams).await;
        drop(streams);
        staging.turns.clear();
        match stored {
            Ok(()) => Ok(count),
            Err(cqrs_es::persist::PersistenceError::OptimisticLockError) => {
                Err(CommandError::Conflict)
            }
            Err(other) => Err(classify(AggregateError::from(other))),
        }
    }
}

impl Staging {
    fn position(&self, aggregate_type: &str, aggregate_id: &str) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.aggregate_type == aggregate_type && s.aggregate_id == aggregate_id)
    }
}

/// Aggregate `aggregate_id` as stored, and its version.
async fn load_current<A: Aggregate>(
    repository: SealedRepository,
    aggregate_id: &str,
) -> Result<(A, u64), CommandError<A::Error>> {
    let store: PersistedEventStore<SealedRepository, A> = repository.into_store();
    let context = store.load_aggregate(aggregate_id).await.map_err(classify)?;
    Ok((context.aggregate, context.current_sequence as u64))
}

/// The outcome a command's result is counted as.
fn outcome<T, E>(result: &Result<T, CommandError<E>>) -> &'static str {
    match result {
        Ok(_) => "stored",
        Err(CommandError::Rule(_)) => "refused",
        Err(CommandError::VersionMismatch { .. }) => "version-mismatch",
        Err(CommandError::Conflict) => "conflict",
        Err(CommandError::KeyTaken) => "key-taken",
        Err(CommandError::LikelyDuplicates(_)) => "likely-duplicate",
        Err(CommandError::Busy) => "busy",
        Err(CommandError::Unavailable(_)) => "unavailable",
        Err(CommandError::Internal(_)) => "failed",
    }
}
