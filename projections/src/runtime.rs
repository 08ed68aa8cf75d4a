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

use std::future::Future;

use event_store::keys::{KeyError, KeyState, KeyStore};
use schemas::sealed::OpenError;
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

    /// Empties the read model (before a rebuild).
    fn clear(&self, tx: &mut PgConnection) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// Held by the one process feeding a read model from the event store's stream.
#[derive(Debug)]
pub struct StreamLock {
    _conn: PgConnection,
}

/// The advisory lock key of a read model's stream feed.
fn advisory_key(model: &str) -> i64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "patient-service projector ".bytes().chain(model.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
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
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Document storage failed (retry).
    #[error("document storage: {0}")]
    Documents(String),
}

/// Applies events to one read model.
#[derive(Debug, Clone)]
pub struct Projector<M> {
    pool: PgPool,
    keys: KeyStore,
    model: M,
}

impl<M: ReadModel> Projector<M> {
    /// A projector opening sealed events with the data keys of `keys`.
    pub fn new(pool: PgPool, keys: KeyStore, model: M) -> Self {
        Self { pool, keys, model }
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
    /// [`ProjectionError::Undecodable`] for an event the read model cannot use (nothing is
    /// changed); [`ProjectionError::Database`] when the transaction fails (nothing is changed;
    /// retry).
    #[tracing::instrument(skip_all, fields(
        projector = self.model.name(),
        aggregate_id = %event.subject,
        sequence = event.sequence,
        request_id = event.request_id.as_deref().unwrap_or_default(),
    ))]
    pub async fn apply(&self, event: &PublishedEvent) -> Result<Applied, ProjectionError> {
        let mut tx = self.pool.begin().await?;
        let applied = self.apply_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Applies `event` read from the event store's stream and moves this projector's stream
    /// checkpoint to `at`, in one transaction.
    ///
    /// # Errors
    ///
    /// As [`Projector::apply`].
    pub async fn apply_from_stream(
        &self,
        event: &PublishedEvent,
        at: StreamPosition,
    ) -> Result<Applied, ProjectionError> {
        let mut tx = self.pool.begin().await?;
        let applied = self.apply_in(&mut tx, event).await?;
        save_stream_position(&mut tx, self.model.name(), at).await?;
        tx.commit().await?;
        Ok(applied)
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
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(advisory_key(self.model.name()))
            .fetch_one(&mut conn)
            .await?;
        Ok(locked.then_some(StreamLock { _conn: conn }))
    }

    /// Moves the stream checkpoint past `at` without applying anything (the event there is
    /// for other read models).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn skip_in_stream(&self, at: StreamPosition) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        save_stream_position(&mut tx, self.model.name(), at).await?;
        tx.commit().await
    }

    /// Where this projector stands in the event store's stream (the start if it never read it).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn stream_position(&self) -> Result<StreamPosition, sqlx::Error> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id, position FROM projections.stream_checkpoints WHERE projector = $1",
        )
        .bind(self.model.name())
        .fetch_optional(&self.pool)
        .await?;
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
        let mut tx = self.pool.begin().await?;
        self.model.clear(&mut tx).await?;
        for table in ["applied_sequences", "stream_checkpoints"] {
            sqlx::query(&format!(
                "DELETE FROM projections.{table} WHERE projector = $1"
            ))
            .bind(self.model.name())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Keeps a record the read model cannot use, with the reason, so it is not silently lost.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn park(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO projections.parked_messages (projector, topic, partition, \"offset\", error)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(self.model.name())
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn apply_in(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> Result<Applied, ProjectionError> {
        if !self.model.ordered_per_aggregate() {
            self.model.apply(tx, event).await?;
            return Ok(Applied::Applied);
        }
        // A patient's record and medical record share the patient's id as subject: keep
        // their sequences apart by topic (patient events keep the bare id they always had).
        let topic = schemas::topics::for_event_type(&event.event_type);
        let aggregate = if topic == schemas::topics::PATIENT {
            event.subject.clone()
        } else {
            format!("{topic}/{}", event.subject)
        };
        // Lock the aggregate's bookkeeping row (creating it at 0) so two consumers of the same
        // aggregate cannot both apply the same sequence.
        sqlx::query(
            "INSERT INTO projections.applied_sequences (projector, aggregate_id, last_sequence)
             VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        )
        .bind(self.model.name())
        .bind(&aggregate)
        .execute(&mut *tx)
        .await?;
        let last: i64 = sqlx::query_scalar(
            "SELECT last_sequence FROM projections.applied_sequences
              WHERE projector = $1 AND aggregate_id = $2 FOR UPDATE",
        )
        .bind(self.model.name())
        .bind(&aggregate)
        .fetch_one(&mut *tx)
        .await?;
        let last = last as u64;
        if event.sequence <= last {
            return Ok(Applied::Duplicate);
        }
        if event.sequence > last + 1 {
            tracing::warn!(
                expected = last + 1,
                "event arrived before an earlier one; skipped"
            );
            return Ok(Applied::Early { expected: last + 1 });
        }
        if event.sealed && self.model.opens_sealed_data() {
            // The key that sealed it names its owner (the patient), whatever the aggregate.
            let owner = event.key_id().unwrap_or_else(|| event.subject.clone());
            match self.keys.data_key(&mut *tx, &owner).await? {
                KeyState::Active(key) => {
                    self.model
                        .apply(tx, &event.clone().opened_with(&key)?)
                        .await?;
                }
                // Forgotten: the event can never be read; its `PatientForgotten` purges.
                KeyState::Destroyed => {}
                // Sealed without any key record: the key store was tampered with; park it.
                KeyState::Absent => {
                    return Err(ProjectionError::Unopenable(
                        schemas::sealed::OpenError::WrongKey,
                    ))
                }
            }
        } else {
            self.model.apply(tx, event).await?;
        }
        sqlx::query(
            "UPDATE projections.applied_sequences SET last_sequence = $3
              WHERE projector = $1 AND aggregate_id = $2",
        )
        .bind(self.model.name())
        .bind(&aggregate)
        .bind(event.sequence as i64)
        .execute(&mut *tx)
        .await?;
        Ok(Applied::Applied)
    }
}

async fn save_stream_position(
    tx: &mut PgConnection,
    projector: &str,
    at: StreamPosition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projections.stream_checkpoints (projector, transaction_id, position, updated_at)
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

/// The partition recorded for an event parked while read from the event store's stream.
pub const STREAM_PARTITION: i32 = -1;

/// How many records one projector parked for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedCount {
    pub projector: String,
    pub reason: String,
    pub count: i64,
}

/// How many records each projector parked, by reason.
///
/// # Errors
///
/// The database error.
pub async fn parked_counts(pool: &PgPool) -> Result<Vec<ParkedCount>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT projector, error, count(*) FROM projections.parked_messages
          GROUP BY projector, error ORDER BY projector, error",
    )
    .fetch_all(pool)
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
