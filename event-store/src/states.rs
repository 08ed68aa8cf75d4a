//! Aggregate states kept in memory between loads, for aggregates whose streams grow long (a
//! patient's medical record): a load then reads, verifies, opens and applies only the events
//! stored since this process last loaded the aggregate, so a command's cost stays that of an
//! empty chart however long the chart grows. The sealed snapshots ([`crate::snapshots`]) serve
//! the first load in a process, and every load of an aggregate this process has not seen lately.
//!
//! A kept state stands after event `sequence`, whose hash it keeps: the next load reads from
//! that event on and checks the events after it chain from that hash, as after a snapshot, so
//! whatever another process stored meanwhile is applied, and a stream rewritten under the state
//! is caught. The states are opened patient data, so they are kept few ([`CAPACITY`], the least
//! recently used go first) and briefly ([`TIME_LIMIT`]), and erasure drops the patient's at once
//! in the erasing process ([`forget`], from the erasure's transaction); another process's lapses
//! within the time limit, and cannot be used meanwhile to write (the data key that sealing needs
//! is destroyed) or to read (every read of a forgotten patient is refused before the record is
//! loaded).

use std::any::Any;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventRepository};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use hashlink::LruCache;

use crate::repository::SealedRepository;

/// How many aggregates' states a process keeps.
pub const CAPACITY: usize = 256;

/// How long a state is kept after the load that left it.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);

/// An aggregate's state after event `sequence`, whose hash is `hash`.
#[derive(Clone)]
struct Kept<A> {
    sequence: usize,
    hash: Vec<u8>,
    snapshot: Option<usize>,
    aggregate: A,
}

/// A kept state of any aggregate type, and when it was kept.
struct Entry {
    kept_at: Instant,
    state: Arc<dyn Any + Send + Sync>,
}

/// The kept states by aggregate id (one per id: only one type keeps states).
static STATES: LazyLock<Mutex<LruCache<String, Entry>>> =
    LazyLock::new(|| Mutex::new(LruCache::new(CAPACITY)));

fn states() -> std::sync::MutexGuard<'static, LruCache<String, Entry>> {
    // The cache holds no invariant a panic elsewhere could break: recover it.
    STATES.lock().unwrap_or_else(PoisonError::into_inner)
}

fn get<A: Aggregate + Clone + 'static>(aggregate_id: &str) -> Option<Kept<A>> {
    let state = {
        let mut states = states();
        let entry = states.get(aggregate_id)?;
        if entry.kept_at.elapsed() > TIME_LIMIT {
            states.remove(aggregate_id);
            return None;
        }
        entry.state.clone()
    };
    // Cloned outside the lock: a long chart takes a while.
    state.downcast_ref::<Kept<A>>().cloned()
}

fn put<A: Aggregate + Clone + 'static>(aggregate_id: &str, kept: Kept<A>) {
    let entry = Entry {
        kept_at: Instant::now(),
        state: Arc::new(kept),
    };
    states().insert(aggregate_id.to_owned(), entry);
}

/// Loads served from a kept state, and loads that found none (or one the stream no longer
/// continues), since the process started.
static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static MISSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Loads served from a kept state and loads that were not, since the process started.
pub fn counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (HITS.load(Relaxed), MISSES.load(Relaxed))
}

/// Drops the state kept of `aggregate_id` (a forgotten patient's record), if any.
pub fn forget(aggregate_id: &str) {
    states().remove(aggregate_id);
}

/// Whether a state of `aggregate_id` is kept (for tests of erasure).
pub fn holds(aggregate_id: &str) -> bool {
    states().contains_key(aggregate_id)
}

/// Loads `aggregate_id` through `repository` (one that [keeps states](SealedRepository::keeps_states)):
/// from the state kept of it, else from its snapshot, plus the events after; keeps the result.
///
/// # Errors
///
/// What the repository's reads fail with (a stream that does not verify among them).
pub(crate) async fn load<A: Aggregate + Clone + 'static>(
    repository: &SealedRepository,
    aggregate_id: &str,
) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
    if let Some(kept) = get::<A>(aggregate_id) {
        repository.anchor_at(aggregate_id, kept.sequence, kept.hash);
        let context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_owned(),
            aggregate: kept.aggregate,
            current_sequence: kept.sequence,
            current_snapshot: kept.snapshot,
        };
        match after(repository, context).await {
            Ok(context) => {
                HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(context);
            }
            // The stream no longer continues the kept state (restored from a backup, say):
            // loaded afresh, where a stream that does not verify is refused.
            Err(_) => forget(aggregate_id),
        }
    }
    MISSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let context = match repository.get_snapshot::<A>(aggregate_id).await? {
        // One that no longer decodes is passed over: all the events are applied instead.
        Some(snapshot) => snapshot.try_into().unwrap_or_else(|_| empty(aggregate_id)),
        None => empty(aggregate_id),
    };
    after(repository, context).await
}

fn empty<A: Aggregate>(aggregate_id: &str) -> EventStoreAggregateContext<A> {
    EventStoreAggregateContext {
        aggregate_id: aggregate_id.to_owned(),
        aggregate: A::default(),
        current_sequence: 0,
        current_snapshot: None,
    }
}

/// `context` with the events stored after it applied, kept when they all were.
async fn after<A: Aggregate + Clone + 'static>(
    repository: &SealedRepository,
    mut context: EventStoreAggregateContext<A>,
) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
    let aggregate_id = context.aggregate_id.clone();
    let events = repository
        .get_last_events::<A>(&aggregate_id, context.current_sequence)
        .await?;
    for event in events {
        let envelope: EventEnvelope<A> = event.try_into()?;
        context.current_sequence = envelope.sequence;
        context.aggregate.apply(envelope.payload);
    }
    // Kept only when the newest event verified is the newest applied: events a forgotten
    // patient's key no longer opens are not in the list.
    if let Some((sequence, hash)) = repository.tip() {
        if sequence == context.current_sequence {
            let kept = Kept {
                sequence,
                hash,
                snapshot: context.current_snapshot,
                aggregate: context.aggregate.clone(),
            };
            put(&aggregate_id, kept);
        }
    }
    Ok(context)
}
