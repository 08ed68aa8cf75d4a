//! The projector runtime: applies published events to a read model exactly once per aggregate
//! sequence, whatever the source delivers.
//!
//! Sources deliver at least once (a relay restart re-sends, a consumer restart re-reads), and a
//! re-send can interleave with the original. So every change to a read model happens in one
//! transaction with its bookkeeping, the last sequence applied per aggregate, and an event is
//! applied only when it is the next one for its aggregate:
//!
//! - `sequence <= last`: a repeat, already applied; skipped.
//! - `sequence == last + 1`: applied.
//! - `sequence > last + 1`: an earlier event has not arrived yet (a re-send overtook it); skipped
//!   now and applied when the relay's re-send reaches it, because the relay re-sends from its
//!   checkpoint, which stands before every event not acknowledged.
//!
//! Nothing on a topic is taken on trust: anyone allowed to produce to it could have written it.
//! Before an event is applied (on either path: Kafka or the event store's stream), its `ce_id`
//! is recomputed from type, subject and sequence, its value must be sealed unless the contract
//! publishes its type in the clear ([`PublishedEvent::verify`]), a sealed value is opened with
//! that recomputed identity as associated data, and a `PatientForgotten` (in the clear, so
//! anyone could write one) counts only if the patient's data key really is destroyed. What
//! does not verify is parked in `projections.parked_messages` with its reason, never applied
//! and never retried; [`parked_counts`] counts them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;

use event_store::keys::{KeyError, KeyState, KeyStore};
use event_store::repository::SHREDDING_EVENT_TYPE;
use schemas::sealed::{DataKey, OpenError};
use schemas::{DecodeError, PublishedEvent};
use sqlx::{PgConnection, PgPool};

/// A read model: its name, the topics it reads, and how it applies one event.
pub trait ReadModel: Send + Sync + 'static {
    /// Unique name of this read model, the key of its bookkeeping and its consumer group.
    fn name(&self) -> &'static str;

    /// The topics (without prefix) this read model consumes.
    fn topics(&self) -> &'static [&'static str];

    /// Applies one event inside the projector's transaction.
    fn apply(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Applies a batch of events, in order, inside the projector's transaction, each verified,
    /// in its turn and opened already. A model able to write a batch in fewer statements than
    /// one apply per event overrides this; the result must be the same.
    fn apply_many(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        async move {
            for event in events {
                self.apply(tx, event).await?;
            }
            Ok(())
        }
    }

    /// [`ReadModel::apply_many`] for events the stream feed read from the event store itself
    /// and whose hash chain it checked as it read them: a model that cross-checks what a
    /// topic carries against the store may take these as they are. The result must be the
    /// same.
    fn apply_many_from_store(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        self.apply_many(tx, events)
    }

    /// Whether a rebuild may write the model's batches split by patient (the events'
    /// subject), in transactions side by side: no write of one patient's events reads or
    /// orders against another's. The audit log says no: its chain has one writer.
    fn partitions_by_patient(&self) -> bool {
        false
    }

    /// Whether sealed events are opened before [`ReadModel::apply`] (and events of forgotten
    /// patients, which no longer open, passed over). A model that only records that events
    /// happened says no.
    fn opens_sealed_data(&self) -> bool {
        true
    }

    /// Whether events are applied once each, in sequence order per aggregate, with the
    /// runtime's bookkeeping. A model that is idempotent by event id on its own says no.
    fn ordered_per_aggregate(&self) -> bool {
        true
    }

    /// The tables the read model writes (in `projections`), which a rebuild fills afresh
    /// ([`crate::rebuild`]).
    fn tables(&self) -> &'static [&'static str];

    /// The indexes (beyond primary and unique keys) its writes look rows up by: a rebuild
    /// builds these before loading the fresh tables, the others after.
    fn indexes_for_writes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Empties the read model, leaving its tables as a fresh model's (before it is fed from
    /// the start again).
    fn clear(&self, tx: &mut PgConnection) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// Held by the one process feeding a read model from the event store's stream or rebuilding
/// it, alone; or shared, by each of its Kafka consumers ([`Projector::try_lock_shared`]).
#[derive(Debug)]
pub struct StreamLock {
    conn: PgConnection,
}

impl StreamLock {
    /// Releases the lock now: closes its connection and waits for the server to end the
    /// session (dropping it closes the connection too, but the server may notice a moment
    /// later, and another feeder asking at once would be refused).
    ///
    /// # Errors
    ///
    /// The database error while closing.
    pub async fn release(self) -> Result<(), sqlx::Error> {
        use sqlx::Connection as _;
        self.conn.close().await
    }
}

/// The advisory lock key of a read model's stream feed.
fn advisory_key(model: &str) -> i64 {
    fnv1a("patient-service projector ".bytes().chain(model.bytes())) as i64
}

/// FNV-1a of `bytes`: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Where a stream-fed projector stands in the event store's stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub transaction_id: u64,
    pub position: i64,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    Duplicate,
    /// Arrived before an earlier event of its aggregate; skipped until that one comes.
    Early {
        expected: u64,
    },
    /// Unusable ([`ProjectionError::is_unusable`]): recorded in `projections.parked_messages`
    /// and passed over. Only the stream feed parks on its own; the Kafka loop parks by offset.
    Parked,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read model store: {0}")]
    Database(#[from] sqlx::Error),
    /// The event cannot be used; retrying will not help.
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    /// Sealed data that does not open with its key: altered, or sealed for another event.
    #[error("sealed data of the event does not open: {0}")]
    Unopenable(#[from] OpenError),
    /// The event is not what its headers claim: its `ce_id` is not its identity, it is in the
    /// clear where a sealed value is due, or it does not match the event store. The message
    /// names ids, types and sequences only.
    #[error("the event does not verify: {0}")]
    Unverified(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Document storage failed (retry).
    #[error("document storage: {0}")]
    Documents(String),
}

impl ProjectionError {
    /// Whether the event can never be applied, so it is parked rather than retried.
    pub fn is_unusable(&self) -> bool {
        match self {
            Self::Undecodable(_) | Self::Unopenable(_) | Self::Unverified(_) => true,
            Self::Database(_) | Self::Keys(_) | Self::Documents(_) => false,
        }
    }

    /// A short, stable name of the kind of error, kept with a parked record for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Database(_) => "database",
            Self::Undecodable(_) => "undecodable",
            Self::Unopenable(_) => "unopenable",
            Self::Unverified(_) => "unverified",
            Self::Keys(_) => "keys",
            Self::Documents(_) => "documents",
        }
    }
}

impl From<schemas::envelope::VerifyError> for ProjectionError {
    fn from(error: schemas::envelope::VerifyError) -> Self {
        Self::Unverified(error.to_string())
    }
}

/// The partition recorded for an event parked while read from the event store's stream (no
/// Kafka partition); its offset is then the event's global position.
pub const STREAM_PARTITION: i32 = -1;

/// How many records one projector parked for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedCount {
    pub projector: String,
    /// [`ProjectionError::reason`] of the records.
    pub reason: String,
    pub count: i64,
}

/// How many records each projector parked, by reason (projector, then reason order).
///
/// # Errors
///
/// The database error.
pub async fn parked_counts(
    executor: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<ParkedCount>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT projector, reason, count(*) FROM projections.parked_messages
          GROUP BY projector, reason ORDER BY projector, reason",
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(projector, reason, count)| ParkedCount {
            projector,
            reason,
            count,
        })
        .collect())
}

/// How many aggregates of `aggregate_types` have events at or before the event store's global
/// `position` that `projector` (a read model ordered per aggregate) has not applied yet: 0
/// once its read model holds everything the store held at `position`.
///
/// # Errors
///
/// The database error.
pub async fn behind(
    pool: &PgPool,
    projector: &str,
    aggregate_types: &[&str],
    position: i64,
) -> Result<i64, sqlx::Error> {
    // A projector knows an aggregate by its id on the patient topic, else by topic and id
    // ([`aggregate_of`]).
    let prefixes: Vec<String> = aggregate_types
        .iter()
        .map(|t| match schemas::topics::for_aggregate_type(t) {
            Some(schemas::topics::PATIENT) | None => String::new(),
            Some(topic) => format!("{topic}/"),
        })
        .collect();
    sqlx::query_scalar(
        "SELECT count(*) FROM (
            SELECT k.prefix || e.aggregate_id AS aggregate_id, max(e.sequence) AS last
              FROM events e
              JOIN unnest($2::text[], $3::text[]) AS k(aggregate_type, prefix)
                ON k.aggregate_type = e.aggregate_type
             WHERE e.position <= $4
             GROUP BY 1) AS stored
          LEFT JOIN projections.applied_sequences a
            ON a.projector = $1 AND a.aggregate_id = stored.aggregate_id
         WHERE coalesce(a.last_sequence, 0) < stored.last",
    )
    .bind(projector)
    .bind(aggregate_types)
    .bind(&prefixes)
    .bind(position)
    .fetch_one(pool)
    .await
}

async fn park_in(
    conn: &mut PgConnection,
    projector: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    error: &ProjectionError,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projections.parked_messages
                (projector, topic, partition, \"offset\", error, reason)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(projector)
    .bind(topic)
    .bind(partition)
    .bind(offset)
    .bind(error.to_string())
    .bind(error.reason())
    .execute(conn)
    .await?;
    Ok(())
}

/// The tables a projector writes: the live read models, or the fresh ones a rebuild fills
/// before swapping them in ([`crate::rebuild`]).
///
/// The read models' write statements name their tables without a schema; each projector
/// transaction begins by setting the schema they resolve in. The read side (search, versions,
/// the audit trail) names `projections` itself, so it always reads the live tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tables {
    #[default]
    Live,
    Rebuild,
}

impl Tables {
    /// The schema the tables are in.
    pub fn schema(self) -> &'static str {
        match self {
            Self::Live => "projections",
            Self::Rebuild => crate::rebuild::SCHEMA,
        }
    }

    /// The statement beginning a projector transaction on these tables. A rebuild's path
    /// leaves the live schema out, so a table it forgot to copy fails loudly instead of
    /// being written live. (A prepared statement is analysed again when the path changes.)
    fn begin(self) -> &'static str {
        match self {
            Self::Live => "BEGIN; SET LOCAL search_path TO projections, public",
            Self::Rebuild => "BEGIN; SET LOCAL search_path TO projections_rebuild, public",
        }
    }
}

/// Applies events to one read model.
#[derive(Debug, Clone)]
pub struct Projector<M> {
    pool: PgPool,
    keys: KeyStore,
    model: M,
    tables: Tables,
}

impl<M: ReadModel> Projector<M> {
    /// A projector opening sealed events with the data keys of `keys`.
    pub fn new(pool: PgPool, keys: KeyStore, model: M) -> Self {
        Self {
            pool,
            keys,
            model,
            tables: Tables::Live,
        }
    }

    /// This projector writing `tables` instead of the live ones.
    #[must_use]
    pub fn writing(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// A transaction on this projector's tables ([`Tables`]).
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin_with(self.tables.begin()).await
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Applies `event` unless it is a repeat or early (see the module docs).
    ///
    /// # Errors
    ///
    /// An error that [`ProjectionError::is_unusable`] for an event that does not verify or
    /// that the read model cannot use (nothing is changed; park it);
    /// [`ProjectionError::Database`] when the transaction fails (nothing is changed; retry).
    #[tracing::instrument(skip_all, fields(
        projector = self.model.name(),
        aggregate_id = %event.subject,
        sequence = event.sequence,
        request_id = event.request_id.as_deref().unwrap_or_default(),
    ))]
    pub async fn apply(&self, event: &PublishedEvent) -> Result<Applied, ProjectionError> {
        let mut tx = self.begin().await?;
        let applied = self.apply_in(&mut tx, event, Source::Topic).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Applies `event` read from the event store's stream and moves this projector's stream
    /// checkpoint to `at`, in one transaction. An unusable event is parked as the Kafka loop
    /// parks one (with [`STREAM_PARTITION`] and its position as offset) and passed over, so
    /// one bad row cannot stall the read model: [`Applied::Parked`].
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Database`] and the other errors that are not
    /// [`ProjectionError::is_unusable`] (nothing is changed; retry).
    pub async fn apply_from_stream(
        &self,
        event: &PublishedEvent,
        at: StreamPosition,
    ) -> Result<Applied, ProjectionError> {
        let mut tx = self.begin().await?;
        let applied = match self.apply_in(&mut tx, event, Source::Store).await {
            Ok(applied) => applied,
            Err(e) if e.is_unusable() => {
                tx.rollback().await?;
                tracing::error!(
                    projector = self.model.name(),
                    event_id = %event.id,
                    aggregate_id = %event.subject,
                    sequence = event.sequence,
                    position = event.position,
                    reason = e.reason(),
                    error.message = %e,
                    "unusable event parked"
                );
                let mut tx = self.begin().await?;
                park_in(
                    &mut tx,
                    self.model.name(),
                    schemas::topics::for_event_type(&event.event_type),
                    STREAM_PARTITION,
                    event.position,
                    &e,
                )
                .await?;
                save_stream_position(&mut tx, self.model.name(), at).await?;
                tx.commit().await?;
                return Ok(Applied::Parked);
            }
            Err(e) => return Err(e),
        };
        save_stream_position(&mut tx, self.model.name(), at).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Parks an event of the event store's stream that must not be applied (it does not
    /// verify), with `error`, and moves the stream checkpoint past it, in one transaction.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn park_in_stream(
        &self,
        event_type: &str,
        at: StreamPosition,
        error: &ProjectionError,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        park_in(
            &mut tx,
            self.model.name(),
            schemas::topics::for_event_type(event_type),
            STREAM_PARTITION,
            at.position,
            error,
        )
        .await?;
        save_stream_position(&mut tx, self.model.name(), at).await?;
        tx.commit().await
    }

    /// Makes this process the one feeding the read model from the event store's stream, or
    /// returns `None` if another process (a running projector, a rebuild) already is. The
    /// returned guard holds a PostgreSQL advisory lock on a connection of its own; dropping it
    /// closes the connection and releases the lock.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn try_lock_stream(&self) -> Result<Option<StreamLock>, sqlx::Error> {
        self.try_lock("SELECT pg_try_advisory_lock($1)").await
    }

    /// The same lock, shared: held by each Kafka consumer of the read model while it
    /// consumes, so that a rebuild or a stream feed (which take it alone) is refused
    /// meanwhile, and consumers wait while one runs. A rebuild swaps the live tables out:
    /// what a consumer wrote to them meanwhile would be lost with offsets already committed.
    /// `None` while a rebuild or stream feed holds it.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn try_lock_shared(&self) -> Result<Option<StreamLock>, sqlx::Error> {
        self.try_lock("SELECT pg_try_advisory_lock_shared($1)")
            .await
    }

    async fn try_lock(&self, statement: &'static str) -> Result<Option<StreamLock>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar(statement)
            .bind(advisory_key(self.model.name()))
            .fetch_one(&mut conn)
            .await?;
        Ok(locked.then_some(StreamLock { conn }))
    }

    /// Applies a batch read from the event store's stream in one transaction: each event
    /// (`None` for one this model passes over) with its bookkeeping, and the stream checkpoint
    /// once, at the last position. `keys` holds data keys the reader opened already; only
    /// those of other patients are read from the key store. Returns `false`, changing
    /// nothing, when an event of the
    /// batch is unusable: the caller then applies the batch event by event
    /// ([`Projector::apply_from_stream`]), which parks that one.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Database`] and the other errors that are not
    /// [`ProjectionError::is_unusable`] (nothing is changed; retry).
    pub async fn apply_batch_from_stream(
        &self,
        batch: &[(Option<&PublishedEvent>, StreamPosition)],
        keys: &HashMap<String, DataKey>,
    ) -> Result<bool, ProjectionError> {
        let Some(&(_, last)) = batch.last() else {
            return Ok(true);
        };
        let events: Vec<&PublishedEvent> = batch.iter().filter_map(|(event, _)| *event).collect();
        if self.tables == Tables::Rebuild && self.model.partitions_by_patient() && events.len() > 1
        {
            return self.apply_in_partitions(&events, keys, last).await;
        }
        self.apply_batch_in_one(&events, keys, Some(last)).await
    }

    /// A rebuild's batch for a model that allows it, split by patient
    /// into [`REBUILD_PARTITIONS`] transactions side by side. They need not commit together:
    /// a rebuild that fails is dropped whole. Should one fail (two patients' merge events
    /// locking each other's rows can deadlock), the batch is applied again in one transaction,
    /// where what the others committed counts as repeats.
    async fn apply_in_partitions(
        &self,
        events: &[&PublishedEvent],
        keys: &HashMap<String, DataKey>,
        last: StreamPosition,
    ) -> Result<bool, ProjectionError> {
        let mut parts: Vec<Vec<&PublishedEvent>> = vec![Vec::new(); REBUILD_PARTITIONS];
        for &event in events {
            // By patient: a sealed event's key names its patient (a clinical entry's or an
            // appointment's subject is its own id); a clear one's subject is the patient.
            let patient = event.key_id().unwrap_or_else(|| event.subject.clone());
            parts[partition_of(&patient)].push(event);
        }
        let outcomes = futures::future::join_all(
            parts
                .iter()
                .map(|part| self.apply_batch_in_one(part, keys, Some(last))),
        )
        .await;
        let mut whole = true;
        for outcome in outcomes {
            match outcome {
                Ok(applied) => whole &= applied,
                Err(e) if e.is_unusable() => return Err(e),
                Err(e) => {
                    tracing::debug!(
                        projector = self.model.name(),
                        error.message = %e,
                        "a partition of a rebuild's batch failed; applied in one transaction"
                    );
                    return self.apply_batch_in_one(events, keys, Some(last)).await;
                }
            }
        }
        Ok(whole)
    }

    /// Applies a batch of events (records of a Kafka topic) in one transaction, each with its
    /// bookkeeping, as [`Projector::apply`] applies one. Returns `false`, changing nothing,
    /// when an event of the batch is unusable: the caller then applies the batch event by
    /// event, which parks that one.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Database`] and the other errors that are not
    /// [`ProjectionError::is_unusable`] (nothing is changed; retry).
    pub async fn apply_batch(&self, events: &[&PublishedEvent]) -> Result<bool, ProjectionError> {
        self.apply_batch_in_one(events, &HashMap::new(), None).await
    }

    /// One transaction for `events` ([`Projector::apply_all`]), moving the stream checkpoint
    /// to `at` when given; `false`, changing nothing, when an event is unusable.
    async fn apply_batch_in_one(
        &self,
        events: &[&PublishedEvent],
        keys: &HashMap<String, DataKey>,
        at: Option<StreamPosition>,
    ) -> Result<bool, ProjectionError> {
        let mut tx = self.begin().await?;
        let source = if at.is_some() {
            Source::Store
        } else {
            Source::Topic
        };
        match self.apply_all(&mut tx, events, keys, source).await {
            Ok(_) => {}
            Err(e) if e.is_unusable() => {
                tx.rollback().await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        if let Some(at) = at {
            save_stream_position(&mut tx, self.model.name(), at).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Applies `events` in `tx`: their bookkeeping read and locked once, each verified, put in
    /// turn and opened, all handed to the model at once, the bookkeeping written once. Returns
    /// what became of each.
    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
        keys: &HashMap<String, DataKey>,
        source: Source,
    ) -> Result<Vec<Applied>, ProjectionError> {
        let mut books = self.books(tx, events, keys).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut ready = Vec::with_capacity(events.len());
        for event in events {
            let (outcome, event) = self.prepare(tx, event, &mut books).await?;
            outcomes.push(outcome);
            ready.extend(event);
        }
        let ready: Vec<&PublishedEvent> = ready.iter().map(|event| &**event).collect();
        match source {
            Source::Store => self.model.apply_many_from_store(tx, &ready).await?,
            Source::Topic => self.model.apply_many(tx, &ready).await?,
        }
        books.save(tx, self.model.name()).await?;
        Ok(outcomes)
    }

    /// The bookkeeping of a batch, read (and locked) once: the last applied sequence of each
    /// of its aggregates, and the data keys of the patients its sealed events belong to.
    async fn books(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
        known: &HashMap<String, DataKey>,
    ) -> Result<Books, ProjectionError> {
        let mut books = Books::default();
        if self.model.ordered_per_aggregate() {
            let mut aggregates: Vec<String> = events.iter().map(|e| aggregate_of(e)).collect();
            aggregates.sort_unstable();
            aggregates.dedup();
            // Created at 0 and locked, so two consumers cannot both apply one sequence.
            sqlx::query(
                "INSERT INTO applied_sequences (projector, aggregate_id, last_sequence)
                 SELECT $1, a, 0 FROM unnest($2::text[]) AS a ON CONFLICT DO NOTHING",
            )
            .bind(self.model.name())
            .bind(&aggregates)
            .execute(&mut *tx)
            .await?;
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT aggregate_id, last_sequence FROM applied_sequences
                  WHERE projector = $1 AND aggregate_id = ANY($2)
                  ORDER BY aggregate_id FOR UPDATE",
            )
            .bind(self.model.name())
            .bind(&aggregates)
            .fetch_all(&mut *tx)
            .await?;
            books.last = rows.into_iter().collect();
        }
        if self.model.opens_sealed_data() {
            let mut owners: Vec<String> = Vec::new();
            for owner in events
                .iter()
                .filter(|e| e.sealed)
                .map(|e| e.key_id().unwrap_or_else(|| e.subject.clone()))
            {
                match known.get(&owner) {
                    Some(key) => {
                        books.keys.insert(owner, key.clone());
                    }
                    None => owners.push(owner),
                }
            }
            owners.sort_unstable();
            owners.dedup();
            if !owners.is_empty() {
                books
                    .keys
                    .extend(self.keys.data_keys(&mut *tx, &owners).await?);
            }
            // Keys handed in were read before this transaction: one destroyed since (the
            // patient forgotten meanwhile) no longer opens anything.
            let handed: Vec<&String> = books
                .keys
                .keys()
                .filter(|k| known.contains_key(*k))
                .collect();
            if !handed.is_empty() {
                let destroyed: Vec<String> = sqlx::query_scalar(
                    "SELECT patient_id FROM patient_data_keys
                      WHERE patient_id = ANY($1) AND wrapped_key IS NULL",
                )
                .bind(handed)
                .fetch_all(&mut *tx)
                .await?;
                for patient in destroyed {
                    books.keys.remove(&patient);
                }
            }
        }
        Ok(books)
    }

    /// What of `event` is to be applied in a batch, with the batch's bookkeeping in `books`
    /// instead of the table: `None` for a repeat, an early event or one of a forgotten patient.
    async fn prepare<'e>(
        &self,
        tx: &mut PgConnection,
        event: &'e PublishedEvent,
        books: &mut Books,
    ) -> Result<(Applied, Option<Cow<'e, PublishedEvent>>), ProjectionError> {
        self.verify(tx, event).await?;
        if !self.model.ordered_per_aggregate() {
            return Ok((Applied::Applied, Some(Cow::Borrowed(event))));
        }
        let aggregate = aggregate_of(event);
        let last = books.last.get(&aggregate).copied().unwrap_or(0) as u64;
        if let Some(passed_over) = out_of_turn(event.sequence, last) {
            return Ok((passed_over, None));
        }
        let ready = self.open(tx, event, &books.keys).await?;
        books.applied(aggregate, event.sequence as i64);
        Ok((Applied::Applied, ready))
    }

    /// `event`, opened when sealed (with its key from `keys`, else the store); `None` when it
    /// can never be read (its patient was forgotten: their `PatientForgotten` purges).
    async fn open<'e>(
        &self,
        tx: &mut PgConnection,
        event: &'e PublishedEvent,
        keys: &HashMap<String, DataKey>,
    ) -> Result<Option<Cow<'e, PublishedEvent>>, ProjectionError> {
        if !(event.sealed && self.model.opens_sealed_data()) {
            return Ok(Some(Cow::Borrowed(event)));
        }
        // The key that sealed it names its owner (the patient), whatever the aggregate.
        let owner = event.key_id().unwrap_or_else(|| event.subject.clone());
        let state = match keys.get(&owner) {
            Some(key) => KeyState::Active(key.clone()),
            None => self.keys.data_key(&mut *tx, &owner).await?,
        };
        match state {
            // Bound to the identity recomputed from type, subject and sequence, not to the
            // `ce_id` header: a sealed value replayed elsewhere does not open.
            KeyState::Active(key) => Ok(Some(Cow::Owned(event.clone().opened_with(&key)?))),
            KeyState::Destroyed => Ok(None),
            // Sealed without any key record: the key store was tampered with; park it.
            KeyState::Absent => Err(ProjectionError::Unopenable(
                schemas::sealed::OpenError::WrongKey,
            )),
        }
    }

    /// Moves the stream checkpoint past `at` without applying anything (the event there is
    /// for other read models).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn skip_in_stream(&self, at: StreamPosition) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        save_stream_position(&mut tx, self.model.name(), at).await?;
        tx.commit().await
    }

    /// Where this projector stands in the event store's stream (the start if it never read it).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn stream_position(&self) -> Result<StreamPosition, sqlx::Error> {
        let mut tx = self.begin().await?;
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id, position FROM stream_checkpoints WHERE projector = $1",
        )
        .bind(self.model.name())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row
            .map(|(transaction_id, position)| StreamPosition {
                transaction_id: transaction_id as u64,
                position,
            })
            .unwrap_or_default())
    }

    /// Empties the read model and its bookkeeping, so it can be rebuilt from the stream.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn reset(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        self.model.clear(&mut tx).await?;
        for table in ["applied_sequences", "stream_checkpoints"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE projector = $1"))
                .bind(self.model.name())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Keeps a record the read model cannot use, with the error and its
    /// [`ProjectionError::reason`], so it is not silently lost (no payload is kept).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn park(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        error: &ProjectionError,
    ) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        park_in(
            &mut conn,
            self.model.name(),
            topic,
            partition,
            offset,
            error,
        )
        .await
    }

    /// Refuses an event that is not what its headers claim (see the module docs).
    async fn verify(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> Result<(), ProjectionError> {
        event.verify()?;
        if event.event_type == SHREDDING_EVENT_TYPE {
            // In the clear, so anyone able to produce could write one, and every read model
            // purges the patient on it: it counts only once the key is really gone, which the
            // event store does in the transaction that stores it.
            match self.keys.data_key(&mut *tx, &event.subject).await? {
                KeyState::Destroyed => {}
                KeyState::Active(_) | KeyState::Absent => {
                    return Err(ProjectionError::Unverified(format!(
                        "{SHREDDING_EVENT_TYPE} of {} sequence {} but the data key is not destroyed",
                        event.id, event.sequence
                    )))
                }
            }
        }
        Ok(())
    }

    /// One event with its bookkeeping in `tx`: a batch of one ([`Projector::apply_all`]).
    async fn apply_in(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
        source: Source,
    ) -> Result<Applied, ProjectionError> {
        let outcomes = self
            .apply_all(tx, &[event], &HashMap::new(), source)
            .await?;
        Ok(outcomes.first().copied().unwrap_or(Applied::Applied))
    }
}

/// How many transactions side by side a rebuild writes a batch of a model partitioned by
/// patient in ([`ReadModel::partitions_by_patient`]): one per core of the machine this was
/// tuned on.
const REBUILD_PARTITIONS: usize = 2;

/// The partition of a rebuild's batch that events about `subject` go to.
fn partition_of(subject: &str) -> usize {
    (fnv1a(subject.bytes()) % REBUILD_PARTITIONS as u64) as usize
}

/// Where a batch was read: from the event store by the stream feed (which checked the hash
/// chain), or from a topic, which anyone allowed to produce to could have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Store,
    Topic,
}

/// A batch's bookkeeping: the last applied sequence of each aggregate (read once, written
/// once) and the data keys its sealed events are opened with.
#[derive(Default)]
struct Books {
    last: HashMap<String, i64>,
    changed: HashMap<String, i64>,
    keys: HashMap<String, DataKey>,
}

impl Books {
    fn applied(&mut self, aggregate: String, sequence: i64) {
        self.last.insert(aggregate.clone(), sequence);
        self.changed.insert(aggregate, sequence);
    }

    /// Writes the last applied sequences that moved, in one statement.
    async fn save(&self, tx: &mut PgConnection, projector: &str) -> Result<(), sqlx::Error> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let (aggregates, sequences): (Vec<&String>, Vec<i64>) =
            self.changed.iter().map(|(a, s)| (a, *s)).unzip();
        sqlx::query(
            "UPDATE applied_sequences AS s SET last_sequence = v.last
               FROM unnest($2::text[], $3::bigint[]) AS v(aggregate_id, last)
              WHERE s.projector = $1 AND s.aggregate_id = v.aggregate_id",
        )
        .bind(projector)
        .bind(aggregates)
        .bind(sequences)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// What becomes of an event of sequence `sequence` when its aggregate's last applied one is
/// `last`: `None` when it is next; a repeat is a duplicate, one past a gap waits for the
/// re-send.
fn out_of_turn(sequence: u64, last: u64) -> Option<Applied> {
    if sequence <= last {
        return Some(Applied::Duplicate);
    }
    if sequence > last + 1 {
        tracing::warn!(
            expected = last + 1,
            "event arrived before an earlier one; skipped"
        );
        return Some(Applied::Early { expected: last + 1 });
    }
    None
}

/// The aggregate `event`'s sequence counts in: a patient's record and medical record share the
/// patient's id as subject, so they are kept apart by topic (patient events keep the bare id
/// they always had).
fn aggregate_of(event: &PublishedEvent) -> String {
    let topic = schemas::topics::for_event_type(&event.event_type);
    if topic == schemas::topics::PATIENT {
        event.subject.clone()
    } else {
        format!("{topic}/{}", event.subject)
    }
}

async fn save_stream_position(
    tx: &mut PgConnection,
    projector: &str,
    at: StreamPosition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stream_checkpoints (projector, transaction_id, position, updated_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (projector) DO UPDATE
            SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position,
                updated_at = now()",
    )
    .bind(projector)
    .bind(at.transaction_id as i64)
    .bind(at.position)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use schemas::envelope::event_id;
    use schemas::sealed::DataKey;

    use super::*;

    fn registered(sequence: u64) -> PublishedEvent {
        PublishedEvent {
            id: event_id("Patient", "p1", sequence),
            event_type: "PatientRegistered".into(),
            major_version: 1,
            time: chrono::DateTime::UNIX_EPOCH,
            subject: "p1".into(),
            sequence,
            position: 1,
            epoch: 0,
            request_id: None,
            traceparent: None,
            user_id: None,
            event_hash: Some("00ff".into()),
            sealed: false,
            data: br#"{"family":"Doe"}"#.to_vec(),
        }
    }

    #[test]
    fn a_rebuilding_projector_writes_into_the_rebuild_schema() {
        assert_eq!(Tables::Rebuild.schema(), crate::rebuild::SCHEMA);
        assert!(Tables::Rebuild.begin().contains(&format!(
            "search_path TO {}, public",
            crate::rebuild::SCHEMA
        )));
    }

    #[test]
    fn a_plaintext_event_where_a_sealed_one_is_due_is_parked_as_unverified() {
        // Act
        let err = ProjectionError::from(registered(1).verify().unwrap_err());

        // Assert
        assert!(err.is_unusable());
        assert_eq!(err.reason(), "unverified");
        assert!(!err.to_string().contains("Doe"), "{err}");
    }

    #[test]
    fn a_ce_id_that_is_not_recomputed_from_type_subject_and_sequence_is_parked() {
        // Arrange: sequence 1's sealed value and ce_id, sent as sequence 3.
        let key = DataKey::generate("p1");
        let mut replayed = registered(1).sealed_with(&key);
        replayed.sequence = 3;

        // Act
        let err = ProjectionError::from(replayed.verify().unwrap_err());

        // Assert
        assert!(err.is_unusable());
        assert!(err.to_string().contains("sequence 3"), "{err}");
    }

    #[test]
    fn only_failures_of_the_store_keys_or_documents_are_retried() {
        for unusable in [
            ProjectionError::Undecodable(schemas::DecodeError::MissingHeader("ce_id")),
            ProjectionError::Unopenable(OpenError::Tampered),
            ProjectionError::Unverified("x".into()),
        ] {
            assert!(unusable.is_unusable(), "{unusable}");
        }
        for retried in [
            ProjectionError::Database(sqlx::Error::PoolTimedOut),
            ProjectionError::Documents("x".into()),
        ] {
            assert!(!retried.is_unusable(), "{retried}");
        }
    }
}
