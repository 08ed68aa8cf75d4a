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

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use schemas::sealed::{self, DataKey, Sealed};
use serde_json::Value;
use sqlx::PgPool;

use crate::chain::{ChainKey, EventFields};
use crate::keys::{KeyError, KeyState, KeyStore};

/// Event types stored and published in the clear.
pub const CLEAR_EVENT_TYPES: &[&str] = &["PatientForgotten"];

/// The event type whose storing destroys the aggregate's data key.
pub const SHREDDING_EVENT_TYPE: &str = "PatientForgotten";

/// The metadata entry naming whose data key seals an aggregate's events, when the aggregate
/// is about a patient but is not the patient (an appointment): the patient's id. Absent, the
/// aggregate's own id names the key. Forgetting the patient then erases these events too.
pub const DATA_KEY_OWNER: &str = "data_key_owner";

/// The field of a sealed payload.
const SEALED_FIELD: &str = "sealed";

/// Sealing, chaining event repository.
pub struct SealedRepository {
    pool: PgPool,
    inner: PostgresEventRepository,
    keys: KeyStore,
    chain: ChainKey,
    /// Time an appointment claims or gives back, in the transaction of its events.
    claims: Option<crate::schedule::ClaimChange>,
}

impl std::fmt::Debug for SealedRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRepository").finish_non_exhaustive()
    }
}

impl SealedRepository {
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool.clone()),
            pool,
            keys,
            chain,
            claims: None,
        }
    }

    /// Stores `claims` with the events, in their transaction.
    pub fn with_claims(mut self, claims: crate::schedule::ClaimChange) -> Self {
        self.claims = Some(claims);
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
        KeyError::Database(e) => sqlx_error(e),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

fn sqlx_error(error: sqlx::Error) -> PersistenceError {
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

impl PersistedEventRepository for SealedRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self.inner.get_events::<A>(aggregate_id).await?;
        self.open_all::<A>(aggregate_id, events).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self
            .inner
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await?;
        self.open_all::<A>(aggregate_id, events).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        // Snapshots would hold patient data in the clear; aggregates are rebuilt from events.
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            return Err(PersistenceError::UnknownError(
                "snapshots are not supported: they would hold patient data in the clear".into(),
            ));
        }
        let Some(first) = events.first() else {
            return Ok(());
        };
        let aggregate_id = first.aggregate_id.as_str();
        let owner = first
            .metadata
            .get(DATA_KEY_OWNER)
            .and_then(Value::as_str)
            .unwrap_or(aggregate_id);
        let mut tx = self.pool.begin().await.map_err(sqlx_error)?;
        let mut key = None;
        if events
            .iter()
            .any(|e| !CLEAR_EVENT_TYPES.contains(&e.event_type.as_str()))
        {
            match self
                .keys
                .data_key_for_writing(&mut tx, owner)
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
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(first.sequence as i64 - 1)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sqlx_error)?
            .flatten()
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        for event in events {
            let metadata = serde_json::to_value(&event.metadata)?;
            let payload = match &key {
                Some(key) if !CLEAR_EVENT_TYPES.contains(&event.event_type.as_str()) => {
                    let event_id =
                        schemas::envelope::event_id(A::TYPE, aggregate_id, event.sequence as u64);
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
                    aggregate_type: A::TYPE,
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
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(event.sequence as i64)
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(&payload)
            .bind(&metadata)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(sqlx_error)?;
            if event.event_type == SHREDDING_EVENT_TYPE {
                self.keys
                    .destroy(&mut tx, aggregate_id)
                    .await
                    .map_err(sqlx_error)?;
            }
            previous = hash;
        }
        if let Some(claims) = &self.claims {
            crate::schedule::apply_claims(&mut tx, claims)
                .await
                .map_err(|e| {
                    if crate::schedule::is_claim_conflict(&e) {
                        PersistenceError::UnknownError(Box::new(crate::schedule::TimeTaken))
                    } else {
                        sqlx_error(e)
                    }
                })?;
        }
        tx.commit().await.map_err(sqlx_error)?;
        Ok(())
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
