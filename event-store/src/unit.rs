//! A unit of work across aggregates of any type: the commands of one request (a FHIR
//! `transaction` Bundle registering a patient and recording their allergies and observations)
//! are decided one after another, each on the aggregate as the commands before it left it, and
//! their events are stored in one transaction ([`UnitOfWork::commit`]): all of them, or none.
//!
//! A store bound to a unit (`in_unit`) stages the events of the commands executed through it
//! instead of storing them, and loads an aggregate the unit holds as staged. The unit holds
//! this process's turn at each aggregate it staged until it is committed or dropped, so no
//! other writer here decides on a state the unit is about to change; a writer elsewhere that
//! takes a sequence first makes the commit fail as a lost race ([`CommandError::Conflict`]),
//! and nothing is stored.

use std::any::Any;
use std::ops::Range;
use std::sync::Arc;

use cqrs_es::persist::{PersistedEventStore, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventStore};

use crate::command::{classify, turn, CommandError, CommandMetadata, Fresh};
use crate::repository::{SealedRepository, TransactionEffect};

/// The commands of one request, staged to be stored together. Cheap to clone: clones share
/// what is staged.
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
    aggregate: Box<dyn Any + Send>,
    version: u64,
    events: Vec<SerializedEvent>,
    /// The effects of the commands that staged events, each with the range of its events.
    effects: Vec<(Box<dyn TransactionEffect>, Range<usize>)>,
}

/// A staged stream as the repository stores it.
pub(crate) struct StagedStream<'a> {
    pub aggregate_type: &'static str,
    pub events: &'a [SerializedEvent],
    pub effects: &'a [(Box<dyn TransactionEffect>, Range<usize>)],
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
                    load::<A>(repository.bare(), aggregate_id).await?
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
            stream.events.push(SerializedEvent::new(
                aggregate_id.to_owned(),
                sequence as usize,
                A::TYPE.to_owned(),
                event.event_type(),
                event.event_version(),
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
        let streams: Vec<StagedStream<'_>> = staging
            .streams
            .iter()
            .map(|s| StagedStream {
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
async fn load<A: Aggregate>(
    repository: SealedRepository,
    aggregate_id: &str,
) -> Result<(A, u64), CommandError<A::Error>> {
    let store: PersistedEventStore<SealedRepository, A> = repository.into_store();
    let context = store.load_aggregate(aggregate_id).await.map_err(classify)?;
    Ok((context.aggregate, context.current_sequence as u64))
}
