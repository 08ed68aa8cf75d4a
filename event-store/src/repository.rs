//! The cqrs-es event repository of the service: postgres-es's tables and reads, plus sealing
//! and hash-chaining on the way in and opening on the way out.
//!
//! - **Sealing.** Every event's payload is stored as `{"sealed": Sealed}`: encrypted with the
//!   aggregate's data key ([`crate::keys`]), bound to the event id. The data key is created in
//!   the transaction of the aggregate's first events. Event types in [`CLEAR_EVENT_TYPES`] are
//!   stored in the clear: they carry no patient data and must stay readable after erasure.
//! - **Chaining.** Every row gets its [`crate::chain`] hash, computed here from the previous
//!   row's hash in the same transaction; the primary key makes a concurrent writer of the same
//!   sequence fail, so the chain never forks.
//! - **Erasure.** [`SHREDDING_EVENT_TYPE`] destroys the aggregate's data key in the transaction
//!   that stores it. Reading an aggregate whose key is destroyed yields only its clear events.
//! - **Verification.** Loading an aggregate checks its whole stream before anything is decided
//!   on it ([`check_stream`]): a row without a hash that fits (inserted or altered
//!   by someone without the audit key), a gap, or a plaintext payload where a sealed one is due
//!   fails the load with [`Unverified`] and an operator alert. This is why the
//!   repository reads rows itself rather than through postgres-es, whose reads leave out the
//!   `hash` column; the table layout and the optimistic-concurrency rule are postgres-es's.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use futures::future::BoxFuture;
use schemas::sealed::{self, DataKey, Sealed};
use serde_json::Value;
use sqlx::PgPool;

use crate::chain::{ChainKey, EventFields, Finding, Tampering};
use crate::keys::{KeyError, KeyState, KeyStore};

/// Event types stored and published in the clear: the contract's list, so what is stored in
/// the clear and what consumers accept in the clear cannot drift apart.
pub const CLEAR_EVENT_TYPES: &[&str] = schemas::sealed::CLEAR_EVENT_TYPES;

/// An `events` row as a load reads it: sequence, event type and version, payload, metadata,
/// hash.
type StoredRow = (i64, String, String, Value, Value, Option<Vec<u8>>);

/// The event type whose storing destroys the aggregate's data key.
pub const SHREDDING_EVENT_TYPE: &str = "PatientForgotten";

/// The metadata entry naming whose data key seals an aggregate's events, when the aggregate
/// is about a patient but is not the patient (an appointment): the patient's id. Absent, the
/// aggregate's own id names the key. Forgetting the patient then erases these events too.
pub const DATA_KEY_OWNER: &str = "data_key_owner";

/// The field of a sealed payload.
const SEALED_FIELD: &str = "sealed";

/// Work that must commit with an aggregate's new events, and only with them: it runs inside
/// their transaction, after they are inserted. Scheduling's claims on time are one
/// ([`crate::schedule::ClaimChange`]), erasing what is kept beside a forgotten patient's events
/// another ([`crate::store::Erasure`]); the repository knows nothing of what an effect does.
pub trait TransactionEffect: Send + Sync {
    /// Does the work in `tx`, for `events` (as the command produced them, not yet sealed),
    /// which were sealed with `keys` (by owner).
    ///
    /// # Errors
    ///
    /// A [`PersistenceError`]; the events are then not stored either.
    fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        events: &'a [SerializedEvent],
        keys: &'a SealingKeys,
    ) -> BoxFuture<'a, Result<(), PersistenceError>>;
}

/// The data keys the events of one transaction were sealed with, by owner.
pub type SealingKeys = std::collections::HashMap<String, DataKey>;

/// The staged events of one aggregate in a unit of work, as [`SealedRepository::persist_unit`]
/// stores them: with the effects of the commands that staged them, each with the range of its
/// events.
pub(crate) struct StagedStream<'a> {
    pub aggregate_type: &'static str,
    pub events: &'a [SerializedEvent],
    pub effects: &'a [(Box<dyn TransactionEffect>, std::ops::Range<usize>)],
}

/// Sealing, chaining event repository.
pub struct SealedRepository {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
    /// Work that commits in the transaction of the events.
    effects: Vec<Box<dyn TransactionEffect>>,
    /// The `Idempotency-Key` the events are stored under, reserved before them.
    reservation: Option<crate::idempotency::Reservation>,
    /// Every how many events a sealed snapshot of the aggregate is stored, if at all.
    snapshots: Option<usize>,
    /// The snapshot last read: aggregate id, sequence and the hash of its event, the anchor
    /// the events after it must chain from.
    anchor: std::sync::Mutex<Option<(String, usize, Vec<u8>)>>,
    /// The newest event the last load verified: its sequence and hash.
    tip: std::sync::Mutex<Option<(usize, Vec<u8>)>>,
}

impl std::fmt::Debug for SealedRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRepository").finish_non_exhaustive()
    }
}

impl SealedRepository {
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey) -> Self {
        Self {
            pool,
            keys,
            chain,
            effects: Vec::new(),
            reservation: None,
            snapshots: None,
            anchor: std::sync::Mutex::new(None),
            tip: std::sync::Mutex::new(None),
        }
    }

    /// Whether the aggregate's state is worth keeping between loads: its stream grows long
    /// (it has snapshots).
    pub(crate) fn keeps_states(&self) -> bool {
        self.snapshots.is_some()
    }

    /// Has the next load of `aggregate_id` after `sequence` chain its events from `hash`, the
    /// hash of the event at `sequence` (as after reading a snapshot taken there).
    pub(crate) fn anchor_at(&self, aggregate_id: &str, sequence: usize, hash: Vec<u8>) {
        if let Ok(mut anchor) = self.anchor.lock() {
            *anchor = Some((aggregate_id.to_owned(), sequence, hash));
        }
    }

    /// The sequence and hash of the newest event the last load read and verified (the anchor
    /// when none came after it).
    pub(crate) fn tip(&self) -> Option<(usize, Vec<u8>)> {
        self.tip.lock().ok().and_then(|tip| tip.clone())
    }

    /// A repository over the same database, keys and snapshots, with no effects.
    pub(crate) fn bare(&self) -> Self {
        let mut bare = Self::new(self.pool.clone(), self.keys.clone(), self.chain.clone());
        bare.snapshots = self.snapshots;
        bare
    }

    /// Takes this repository's effects (to run them in a unit of work's transaction).
    pub(crate) fn take_effects(&mut self) -> Vec<Box<dyn TransactionEffect>> {
        std::mem::take(&mut self.effects)
    }

    /// Stores a sealed snapshot of the aggregate every `every` events, and loads from the
    /// latest one: a load then reads (and verifies, opens and applies) at most `every` events
    /// after it, however long the stream. The snapshot is sealed with the aggregate's data key
    /// and bound to the hash of the event it stands after; erasure destroys the key.
    #[must_use]
    pub fn with_snapshots(mut self, every: usize) -> Self {
        self.snapshots = Some(every.max(1));
        self
    }

    /// The cqrs-es event store over this repository: snapshot-sourced when snapshots are on.
    pub(crate) fn into_store<A: Aggregate>(self) -> cqrs_es::persist::PersistedEventStore<Self, A> {
        match self.snapshots {
            Some(every) => cqrs_es::persist::PersistedEventStore::new_snapshot_store(self, every),
            None => cqrs_es::persist::PersistedEventStore::new_event_store(self),
        }
    }

    /// Reserves `reservation`'s key in the transaction of the events, before inserting them
    /// ([`crate::idempotency::reserve`]): a concurrent repeat waits for this transaction and
    /// then fails with [`crate::idempotency::KeyTaken`].
    #[must_use]
    pub fn reserving(mut self, reservation: Option<crate::idempotency::Reservation>) -> Self {
        self.reservation = reservation;
        self
    }

    /// Runs `effect` in the transaction of the events this repository stores, after the effects
    /// added before it.
    #[must_use]
    pub fn with_effect(mut self, effect: impl TransactionEffect + 'static) -> Self {
        self.effects.push(Box::new(effect));
        self
    }

    async fn open_all<A: Aggregate>(
        &self,
        aggregate_id: &str,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        if !events.iter().any(|e| is_sealed(&e.payload)) {
            return Ok(events);
        }
        let owner = events
            .iter()
            .find_map(|e| e.metadata.get(DATA_KEY_OWNER).and_then(Value::as_str))
            .unwrap_or(aggregate_id)
            .to_owned();
        let key = match self
            .keys
            .data_key(&self.pool, &owner)
            .await
            .map_err(key_error)?
        {
            KeyState::Active(key) => Some(key),
            KeyState::Destroyed => None,
            // Sealed events without any key record: the key store was tampered with.
            KeyState::Absent => {
                return Err(PersistenceError::UnknownError(
                    format!("sealed events of {aggregate_id} have no data key").into(),
                ))
            }
        };
        let mut opened = Vec::with_capacity(events.len());
        for mut event in events {
            match open_payload(
                key.as_ref(),
                A::TYPE,
                aggregate_id,
                event.sequence as u64,
                &event.payload,
            )? {
                Some(payload) => event.payload = payload,
                // Erased: only the clear events remain readable.
                None => continue,
            }
            opened.push(event);
        }
        Ok(opened)
    }
}

/// Checks one row as written by this service: sealed unless the contract publishes its type in
/// the clear, and carrying the hash that commits to it and to `previous` (the stored hash of
/// the row before it in its stream; empty for the first).
///
/// # Errors
///
/// What is wrong with it.
pub fn check_link(
    key: &ChainKey,
    previous: &[u8],
    fields: EventFields<'_>,
    hash: Option<&[u8]>,
) -> Result<(), Tampering> {
    if !schemas::sealed::is_published_in_clear(fields.event_type) && !is_sealed(fields.payload) {
        return Err(Tampering::Unsealed);
    }
    if !hash.is_some_and(|hash| key.verifies(previous, fields, hash)) {
        return Err(Tampering::AlteredOrInserted);
    }
    Ok(())
}

/// Checks one aggregate's rows, given in sequence order from its first, as they are loaded to
/// act on: each must follow the one before without a gap and pass [`check_link`]. Returns the
/// first row that fails.
///
/// # Errors
///
/// The [`Finding`] naming that row.
pub fn check_stream<'a>(
    key: &ChainKey,
    rows: impl IntoIterator<Item = (EventFields<'a>, Option<&'a [u8]>)>,
) -> Result<(), Finding> {
    check_stream_after(key, (0, &[]), rows)
}

/// [`check_stream`] for the rows after sequence `after`, whose stored hash is `previous`
/// (checked by the caller: a snapshot's anchor).
///
/// # Errors
///
/// The [`Finding`] naming the first row that fails.
pub fn check_stream_after<'a>(
    key: &ChainKey,
    (after, previous): (u64, &'a [u8]),
    rows: impl IntoIterator<Item = (EventFields<'a>, Option<&'a [u8]>)>,
) -> Result<(), Finding> {
    let mut previous: &[u8] = previous;
    for (expected, (fields, hash)) in (after + 1..).zip(rows) {
        let finding = |tampering| Finding {
            aggregate_type: fields.aggregate_type.to_owned(),
            aggregate_id: fields.aggregate_id.to_owned(),
            sequence: fields.sequence,
            tampering,
        };
        if fields.sequence != expected {
            return Err(finding(Tampering::Deleted {
                from: expected,
                to: fields.sequence.saturating_sub(1),
            }));
        }
        check_link(key, previous, fields, hash).map_err(finding)?;
        previous = hash.unwrap_or_default();
    }
    Ok(())
}

/// A stored stream that does not verify ([`check_stream`]): someone wrote to the event store
/// without the audit key. Nothing is decided on such a stream; the operator is alerted and
/// `audit verify` names every such row.
#[derive(Debug, thiserror::Error)]
#[error("the event store holds a row the service did not write: {0}")]
pub struct Unverified(pub Finding);

/// Whether a stored payload is sealed.
pub fn is_sealed(payload: &Value) -> bool {
    payload
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key(SEALED_FIELD))
}

/// The sealed value of a stored payload, if it is sealed.
pub fn sealed_of(payload: &Value) -> Option<Sealed> {
    if !is_sealed(payload) {
        return None;
    }
    serde_json::from_value(payload.get(SEALED_FIELD)?.clone()).ok()
}

/// Opens a stored payload: the clear payload as is, a sealed one with `key`. `None` when it is
/// sealed and the key is gone (the aggregate was forgotten).
///
/// # Errors
///
/// [`PersistenceError::DeserializationError`] when a sealed payload does not open with its key:
/// it was altered.
pub fn open_payload(
    key: Option<&DataKey>,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    payload: &Value,
) -> Result<Option<Value>, PersistenceError> {
    if !is_sealed(payload) {
        return Ok(Some(payload.clone()));
    }
    let Some(key) = key else {
        return Ok(None);
    };
    let sealed = sealed_of(payload)
        .ok_or_else(|| PersistenceError::DeserializationError("malformed sealed payload".into()))?;
    let event_id = schemas::envelope::event_id(aggregate_type, aggregate_id, sequence);
    let bytes = sealed::open(key, event_id.as_bytes(), &sealed).map_err(|e| {
        PersistenceError::DeserializationError(
            format!("stored event {aggregate_id}/{sequence} does not open: {e}").into(),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| PersistenceError::DeserializationError("opened payload is not JSON".into()))
}

fn key_error(error: KeyError) -> PersistenceError {
    match error {
        KeyError::Database(e) => persistence_error(e),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

/// The persistence error of a database error: a lost race (a unique violation or a deadlock)
/// is an optimistic-lock error, retried from a fresh load.
pub(crate) fn persistence_error(error: sqlx::Error) -> PersistenceError {
    if let sqlx::Error::Database(db) = &error {
        // A lost race for a sequence, or two writers waiting on each other (a deadlock while
        // checking an exclusion constraint): retried from a fresh load.
        if db.is_unique_violation() || db.code().as_deref() == Some("40P01") {
            return PersistenceError::OptimisticLockError;
        }
    }
    if crate::is_unavailable(&error) {
        PersistenceError::ConnectionError(Box::new(error))
    } else {
        PersistenceError::UnknownError(Box::new(error))
    }
}

impl SealedRepository {
    /// The aggregate's events as stored, after checking that the whole stream verifies
    /// ([`check_stream`]): nothing is acted on that the service did not write.
    async fn verified_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        anchor: Option<(usize, &[u8])>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after = anchor.map_or(0, |(sequence, _)| sequence);
        let mut rows: Vec<StoredRow> = sqlx::query_as(
            "SELECT sequence, event_type, event_version, payload, metadata, hash
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3
              ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(after as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(persistence_error)?;
        let mut previous: &[u8] = &[];
        let anchored;
        if let Some((sequence, hash)) = anchor {
            // The snapshot's own event must be the one it was taken after.
            let first = rows.first().map(|r| (r.0, r.5.clone()));
            if first != Some((sequence as i64, Some(hash.to_vec()))) {
                tracing::error!(
                    alert = "event-store-tampering",
                    aggregate_type = A::TYPE,
                    aggregate_id,
                    sequence,
                    "a snapshot's event is not the one it was taken after"
                );
                return Err(PersistenceError::UnknownError(Box::new(Unverified(
                    Finding {
                        aggregate_type: A::TYPE.to_owned(),
                        aggregate_id: aggregate_id.to_owned(),
                        sequence: sequence as u64,
                        tampering: crate::chain::Tampering::AlteredOrInserted,
                    },
                ))));
            }
            rows.remove(0);
            anchored = hash.to_vec();
            previous = &anchored;
        }
        let checked = check_stream_after(
            &self.chain,
            (after as u64, previous),
            rows.iter().map(
                |(sequence, event_type, event_version, payload, metadata, hash)| {
                    (
                        EventFields {
                            aggregate_type: A::TYPE,
                            aggregate_id,
                            sequence: u64::try_from(*sequence).unwrap_or_default(),
                            event_type,
                            event_version,
                            payload,
                            metadata,
                        },
                        hash.as_deref(),
                    )
                },
            ),
        );
        let newest = rows
            .last()
            .and_then(|row| Some((usize::try_from(row.0).ok()?, row.5.clone()?)))
            .or_else(|| anchor.map(|(sequence, hash)| (sequence, hash.to_vec())));
        if let Ok(mut tip) = self.tip.lock() {
            *tip = newest.filter(|_| checked.is_ok());
        }
        if let Err(finding) = checked {
            // Ids and the kind of tampering only: the row's content is not to be trusted or shown.
            tracing::error!(
                alert = "event-store-tampering",
                aggregate_type = A::TYPE,
                aggregate_id,
                sequence = finding.sequence,
                finding = %finding,
                "a stored event does not verify; refusing to act on it"
            );
            return Err(PersistenceError::UnknownError(Box::new(Unverified(
                finding,
            ))));
        }
        Ok(rows
            .into_iter()
            .map(
                |(sequence, event_type, event_version, payload, metadata, _)| SerializedEvent {
                    aggregate_id: aggregate_id.to_owned(),
                    sequence: usize::try_from(sequence).unwrap_or_default(),
                    aggregate_type: A::TYPE.to_owned(),
                    event_type,
                    event_version,
                    payload,
                    metadata,
                },
            )
            .collect())
    }
}

impl PersistedEventRepository for SealedRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self.verified_events::<A>(aggregate_id, None).await?;
        self.open_all::<A>(aggregate_id, events).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        // After a snapshot just read: the events after it, chained from its anchor. Otherwise
        // the chain is checked from the stream's first row, so the whole stream is read.
        let anchor = self
            .anchor
            .lock()
            .ok()
            .and_then(|mut a| a.take())
            .filter(|(id, sequence, _)| id == aggregate_id && *sequence == last_sequence);
        let mut events = match &anchor {
            Some((_, sequence, hash)) if last_sequence > 0 => {
                self.verified_events::<A>(aggregate_id, Some((*sequence, hash)))
                    .await?
            }
            _ => self.verified_events::<A>(aggregate_id, None).await?,
        };
        events.retain(|e| e.sequence > last_sequence);
        self.open_all::<A>(aggregate_id, events).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        if self.snapshots.is_none() {
            return Ok(None);
        }
        let Some((snapshot, anchor)) =
            crate::snapshots::read::<A>(&self.pool, &self.keys, aggregate_id)
                .await
                .map_err(key_error)?
        else {
            return Ok(None);
        };
        if let Ok(mut kept) = self.anchor.lock() {
            *kept = Some((aggregate_id.to_owned(), snapshot.current_sequence, anchor));
        }
        Ok(Some(snapshot))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let snapshot = match (snapshot_update, self.snapshots) {
            (Some((_, state, version)), Some(every)) => {
                let last = events.last().map_or(0, |e| e.sequence);
                Some(crate::snapshots::Taken {
                    sequence: last / every * every,
                    version,
                    state,
                })
            }
            _ => None,
        };
        self.persist_all::<A>(&[events], snapshot).await
    }

    async fn stream_events<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        // Replays go through `crate::stream`, which opens sealed payloads; postgres-es's stream
        // would hand them out sealed.
        Err(PersistenceError::UnknownError(
            "stream events through event_store::stream".into(),
        ))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(PersistenceError::UnknownError(
            "stream events through event_store::stream".into(),
        ))
    }
}

impl SealedRepository {
    /// Stores the new events of several aggregates of type `A` in one transaction (a unit of
    /// work): each stream under its own optimistic-concurrency check (its next sequences must
    /// be free), sealed and chained as when stored alone, with this repository's effects and
    /// its reservation (for the first stream's answer). All of them commit, or none.
    ///
    /// # Errors
    ///
    /// [`PersistenceError::OptimisticLockError`] when another writer took a sequence first;
    /// what an effect or the database refuses.
    pub async fn persist_together<A: Aggregate>(
        &self,
        streams: &[&[SerializedEvent]],
    ) -> Result<(), PersistenceError> {
        self.persist_all::<A>(streams, None).await
    }

    /// Stores the staged events of a unit of work, of aggregates of any type, in one
    /// transaction: each stream under its own optimistic-concurrency check, sealed and chained
    /// as when stored alone, each with the effects of the commands that staged it. The streams
    /// whose aggregate owns its data key (a patient) go first, so that the entries sealed with
    /// a new patient's key find it; then in the order of type and id. All commit, or none.
    ///
    /// # Errors
    ///
    /// [`PersistenceError::OptimisticLockError`] when another writer took a sequence first;
    /// what an effect or the database refuses.
    pub(crate) async fn persist_unit(
        &self,
        streams: &[StagedStream<'_>],
    ) -> Result<(), PersistenceError> {
        let mut ordered: Vec<&StagedStream<'_>> =
            streams.iter().filter(|s| !s.events.is_empty()).collect();
        if ordered.is_empty() {
            return Ok(());
        }
        let borrows_key = |s: &StagedStream<'_>| {
            s.events[0]
                .metadata
                .get(DATA_KEY_OWNER)
                .and_then(Value::as_str)
                .is_some_and(|owner| owner != s.events[0].aggregate_id)
        };
        ordered.sort_by(|a, b| {
            (borrows_key(a), a.aggregate_type, &a.events[0].aggregate_id).cmp(&(
                borrows_key(b),
                b.aggregate_type,
                &b.events[0].aggregate_id,
            ))
        });
        let mut tx = self.pool.begin().await.map_err(persistence_error)?;
        let mut keys = SealingKeys::new();
        for stream in &ordered {
            let (sealing, _) = self
                .insert_events(&mut tx, stream.aggregate_type, stream.events)
                .await?;
            if let Some((owner, key)) = sealing {
                keys.insert(owner, key);
            }
        }
        for stream in &ordered {
            for (effect, events) in stream.effects {
                effect
                    .apply(&mut tx, &stream.events[events.clone()], &keys)
                    .await?;
            }
        }
        tx.commit().await.map_err(persistence_error)?;
        crate::bell::ring();
        for stream in &ordered {
            crate::metrics::appended(stream.aggregate_type, stream.events.len());
        }
        Ok(())
    }

    /// [`Self::persist_together`], storing `snapshot` of the first stream's aggregate with
    /// its events.
    async fn persist_all<A: Aggregate>(
        &self,
        streams: &[&[SerializedEvent]],
        snapshot: Option<crate::snapshots::Taken>,
    ) -> Result<(), PersistenceError> {
        let Some(answered) = streams.iter().find(|s| !s.is_empty()) else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(persistence_error)?;
        if let Some(reservation) = &self.reservation {
            let version = answered.last().map_or(0, |e| e.sequence as u64);
            let aggregate_id = answered[0].aggregate_id.as_str();
            let reserved =
                crate::idempotency::reserve(&mut tx, reservation, (A::TYPE, aggregate_id, version))
                    .await
                    .map_err(persistence_error)?;
            if !reserved {
                return Err(PersistenceError::UnknownError(Box::new(
                    crate::idempotency::KeyTaken,
                )));
            }
        }
        // In the order of the aggregates' ids, whatever the caller's order: two units of work
        // on the same aggregates (a merge and its mirror image in another process) then take
        // their sequences in one order and cannot wait on each other.
        let mut ordered: Vec<&[SerializedEvent]> = streams.to_vec();
        ordered.sort_by(|a, b| {
            let id = |s: &[SerializedEvent]| s.first().map(|e| e.aggregate_id.clone());
            id(a).cmp(&id(b))
        });
        let mut keys = SealingKeys::new();
        let mut hashes: Vec<(String, usize, Vec<u8>)> = Vec::new();
        for events in ordered {
            let (sealing, inserted) = self.insert_events(&mut tx, A::TYPE, events).await?;
            if let Some((owner, key)) = sealing {
                keys.insert(owner, key);
            }
            hashes.extend(inserted);
        }
        // Only a snapshot of sealed state, after an event of this commit, is kept: the
        // aggregate id, the owner of the key, the key and the event's hash.
        let snapshot = snapshot.and_then(|snapshot| {
            let aggregate_id = answered[0].aggregate_id.clone();
            let (_, _, anchor) = hashes
                .iter()
                .find(|(id, sequence, _)| *id == aggregate_id && *sequence == snapshot.sequence)?;
            let owner = answered[0]
                .metadata
                .get(DATA_KEY_OWNER)
                .and_then(Value::as_str)
                .unwrap_or(&aggregate_id)
                .to_owned();
            let key = keys.get(&owner)?.clone();
            Some((aggregate_id, owner, key, anchor.clone(), snapshot))
        });
        for &events in streams {
            for effect in &self.effects {
                effect.apply(&mut tx, events, &keys).await?;
            }
        }
        tx.commit().await.map_err(persistence_error)?;
        crate::bell::ring();
        crate::metrics::appended(A::TYPE, streams.iter().map(|s| s.len()).sum());
        if let Some((aggregate_id, owner, key, anchor, snapshot)) = snapshot {
            // Sealed and stored beside the command, not in its way: the next load uses it
            // once it is there, and one lost with a crash is taken again later.
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let written = crate::snapshots::write::<A>(
                    &pool,
                    (&key, &owner),
                    &aggregate_id,
                    &anchor,
                    snapshot,
                )
                .await;
                if let Err(e) = written {
                    tracing::warn!(aggregate_id, error.message = %e, "a snapshot could not be stored");
                }
            });
        }
        Ok(())
    }

    /// Seals, chains and inserts the events of one aggregate in `tx`; returns the owner and
    /// data key they were sealed with, if any was, and each event's hash.
    #[allow(clippy::type_complexity)]
    async fn insert_events(
        &self,
        tx: &mut sqlx::PgConnection,
        aggregate_type: &str,
        events: &[SerializedEvent],
    ) -> Result<(Option<(String, DataKey)>, Vec<(String, usize, Vec<u8>)>), PersistenceError> {
        let Some(first) = events.first() else {
            return Ok((None, Vec::new()));
        };
        let mut hashes = Vec::with_capacity(events.len());
        let aggregate_id = first.aggregate_id.as_str();
        let owner = first
            .metadata
            .get(DATA_KEY_OWNER)
            .and_then(Value::as_str)
            .unwrap_or(aggregate_id);
        let mut key = None;
        if events
            .iter()
            .any(|e| !CLEAR_EVENT_TYPES.contains(&e.event_type.as_str()))
        {
            // An aggregate's first events, sealed with its own key, are usually a patient's
            // first: their key is made before it is looked for.
            let likely_new = first.sequence == 1 && owner == aggregate_id;
            match self
                .keys
                .data_key_for_writing(&mut *tx, owner, likely_new)
                .await
                .map_err(key_error)?
            {
                KeyState::Active(k) => key = Some(k),
                KeyState::Absent | KeyState::Destroyed => {
                    return Err(PersistenceError::UnknownError(
                        format!("{owner} was forgotten: nothing more can be stored for it").into(),
                    ))
                }
            }
        }
        let mut previous: Vec<u8> = if first.sequence > 1 {
            sqlx::query_scalar::<_, Option<Vec<u8>>>(
                "SELECT hash FROM events
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(first.sequence as i64 - 1)
            .fetch_optional(&mut *tx)
            .await
            .map_err(persistence_error)?
            .flatten()
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        for event in events {
            let metadata = serde_json::to_value(&event.metadata)?;
            let payload = match &key {
                Some(key) if !CLEAR_EVENT_TYPES.contains(&event.event_type.as_str()) => {
                    let event_id = schemas::envelope::event_id(
                        aggregate_type,
                        aggregate_id,
                        event.sequence as u64,
                    );
                    let sealed = sealed::seal(
                        key,
                        event_id.as_bytes(),
                        &serde_json::to_vec(&event.payload)?,
                    );
                    serde_json::json!({ SEALED_FIELD: sealed })
                }
                _ => event.payload.clone(),
            };
            let hash = self.chain.event_hash(
                &previous,
                EventFields {
                    aggregate_type,
                    aggregate_id,
                    sequence: event.sequence as u64,
                    event_type: &event.event_type,
                    event_version: &event.event_version,
                    payload: &payload,
                    metadata: &metadata,
                },
            );
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(event.sequence as i64)
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(&payload)
            .bind(&metadata)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(persistence_error)?;
            if event.event_type == SHREDDING_EVENT_TYPE {
                self.keys
                    .destroy(&mut *tx, aggregate_id)
                    .await
                    .map_err(persistence_error)?;
            }
            hashes.push((aggregate_id.to_owned(), event.sequence, hash.clone()));
            previous = hash;
        }
        Ok((key.map(|key| (owner.to_owned(), key)), hashes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(
        sequence: u64,
        event_type: &'a str,
        payload: &'a serde_json::Value,
    ) -> EventFields<'a> {
        EventFields {
            aggregate_type: "Patient",
            aggregate_id: "p",
            sequence,
            event_type,
            event_version: "1.0",
            payload,
            metadata: &serde_json::Value::Null,
        }
    }

    #[test]
    fn a_loaded_stream_must_be_whole_chained_and_sealed() {
        let key = ChainKey::new([7; 32]);
        let sealed =
            serde_json::json!({ "sealed": { "kid": "k", "nonce": "n", "ciphertext": "c" } });
        let clear = serde_json::json!({ "patient_id": "p" });
        let first = key.event_hash(&[], row(1, "PatientRegistered", &sealed));
        let second = key.event_hash(&first, row(2, "PatientForgotten", &clear));
        let good = [
            (row(1, "PatientRegistered", &sealed), Some(first.as_slice())),
            (row(2, "PatientForgotten", &clear), Some(second.as_slice())),
        ];
        assert_eq!(check_stream(&key, good), Ok(()));

        // A row put there without the key: no hash, or one made with another key.
        let forged = ChainKey::new([8; 32]).event_hash(&second, row(3, "ContactChanged", &sealed));
        for hash in [None, Some(forged.as_slice())] {
            let inserted = good
                .into_iter()
                .chain([(row(3, "ContactChanged", &sealed), hash)]);
            let finding = check_stream(&key, inserted).unwrap_err();
            assert_eq!(
                (finding.sequence, finding.tampering),
                (3, Tampering::AlteredOrInserted)
            );
        }
        // A plaintext payload where a sealed one is due, even with a hash that fits.
        let plain_hash = key.event_hash(&second, row(3, "CareRelationshipStarted", &clear));
        let plain = good.into_iter().chain([(
            row(3, "CareRelationshipStarted", &clear),
            Some(plain_hash.as_slice()),
        )]);
        assert_eq!(
            check_stream(&key, plain).unwrap_err().tampering,
            Tampering::Unsealed
        );
        // A gap.
        let gap = [(row(2, "PatientForgotten", &clear), Some(second.as_slice()))];
        assert_eq!(
            check_stream(&key, gap).unwrap_err().tampering,
            Tampering::Deleted { from: 1, to: 1 }
        );
    }
}
