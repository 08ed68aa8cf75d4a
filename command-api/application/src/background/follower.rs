//! Process managers: reactions of one aggregate to another's events, which must not be lost.
//! Each follows the event store's ordered stream with a checkpoint of its own and reacts to the
//! events it cares about by issuing commands. A reaction that fails for want of the database
//! is tried again on the next round (the checkpoint stays before its event); one the domain
//! refuses is recorded in `process_manager_refusals` with its reason, logged and passed by.
//! Reactions are safe to repeat: each checks the state it acts on (a command that already
//! happened finds nothing left to do).
//!
//! A process manager starts where the migration that introduced it puts it, the newest event
//! stored at the upgrade: the reactions to earlier events were made by the service before it
//! (in the request that wrote them), and replaying them now could undo what happened since.
//! One no migration placed starts at the newest event stored when it first runs.

use std::future::Future;

use chrono::{DateTime, Utc};
use event_store::chain::ChainKey;
use event_store::keys::KeyStore;
use event_store::stream::{self, Cursor, StoredEvent};
use sqlx::PgPool;

/// Events read per batch.
const BATCH: i64 = 500;

/// Batches read per round at most, so a long backlog does not starve the other work.
const BATCHES_PER_ROUND: usize = 20;

/// Why a reaction did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Reaction {
    /// The domain refused the command: recorded, not retried.
    #[error("refused: {0}")]
    Refused(String),
    /// The store failed: tried again on the next round.
    #[error("store: {0}")]
    Retry(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A reaction to committed events.
pub trait ProcessManager: Send + Sync {
    /// Unique name: the key of its checkpoint and refusals.
    fn name(&self) -> &'static str;

    /// Whether it reacts to events of `event_type`.
    fn reacts_to(&self, event_type: &str) -> bool;

    /// Reacts to `event` (opened), at `now`.
    fn react(
        &self,
        event: &StoredEvent,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), Reaction>> + Send;
}

/// Feeds one process manager from the event store's stream.
#[derive(Debug)]
pub struct Follower<M> {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
    manager: M,
}

impl<M: ProcessManager> Follower<M> {
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey, manager: M) -> Self {
        Self {
            pool,
            keys,
            chain,
            manager,
        }
    }

    /// Reacts to the events committed after the checkpoint, a batch after another while the
    /// batches come full (up to [`BATCHES_PER_ROUND`]), so it keeps up with the writers;
    /// returns how many events were passed.
    ///
    /// # Errors
    ///
    /// As [`Follower::step_batch`].
    pub async fn step(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        for _ in 0..BATCHES_PER_ROUND {
            let (passed, full) = self.step_batch(now).await?;
            total += passed;
            if !full || passed == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Reacts to one batch of events after the checkpoint; returns how many were passed and
    /// whether the batch came full.
    ///
    /// # Errors
    ///
    /// The database error, when the stream or the checkpoint cannot be read or written; a
    /// reaction that must be retried stops the round without an error (it is logged).
    async fn step_batch(&self, now: DateTime<Utc>) -> Result<(usize, bool), sqlx::Error> {
        let start = self.checkpoint().await?;
        let events = stream::read_after(&self.pool, start, BATCH).await?;
        if events.is_empty() {
            return Ok((0, false));
        }
        let full = events.len() as i64 == BATCH;
        let rejected: std::collections::HashSet<usize> =
            stream::unverified(&self.pool, &self.chain, &events)
                .await?
                .into_iter()
                .map(|(index, finding)| {
                    tracing::error!(alert = "event-store-tampering", process_manager = self.manager.name(), finding = %finding, "a stored event does not verify; passed by");
                    index
                })
                .collect();
        let mut wanted: Vec<StoredEvent> = events
            .iter()
            .enumerate()
            .filter(|(i, e)| !rejected.contains(i) && self.manager.reacts_to(&e.event_type))
            .map(|(_, e)| e.clone())
            .collect();
        if let Err(e) = stream::open(&self.keys, &self.pool, &mut wanted).await {
            tracing::warn!(process_manager = self.manager.name(), error.message = %e, "cannot open events now; retrying");
            return Ok((0, false));
        }
        let mut wanted = wanted.into_iter();
        let mut passed = start;
        let mut count = 0;
        for (index, event) in events.iter().enumerate() {
            if !rejected.contains(&index) && self.manager.reacts_to(&event.event_type) {
                let Some(opened) = wanted.next() else { break };
                match self.manager.react(&opened, now).await {
                    Ok(()) => {}
                    Err(Reaction::Refused(reason)) => self.refused(&opened, &reason, now).await?,
                    Err(Reaction::Retry(e)) => {
                        tracing::warn!(process_manager = self.manager.name(), position = event.position, error.message = %e, "reaction failed; retrying");
                        break;
                    }
                }
            }
            passed = event.cursor();
            count += 1;
        }
        if passed != start {
            self.save(passed).await?;
        }
        Ok((count, full && count == events.len()))
    }

    /// Where the manager stands; for a manager no migration placed, the newest event stored.
    async fn checkpoint(&self) -> Result<Cursor, sqlx::Error> {
        let found: Option<(String, i64)> = sqlx::query_as(
            "SELECT transaction_id::text, position FROM process_manager_checkpoints WHERE name = $1",
        )
        .bind(self.manager.name())
        .fetch_optional(&self.pool)
        .await?;
        if let Some((transaction_id, position)) = found {
            return Cursor::parse(&transaction_id, position);
        }
        let end = stream::newest(&self.pool).await?.unwrap_or_default();
        self.save(end).await?;
        tracing::info!(
            process_manager = self.manager.name(),
            position = end.position,
            "process manager starts at the end of the stream"
        );
        Ok(end)
    }

    async fn save(&self, at: Cursor) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO process_manager_checkpoints (name, transaction_id, position, updated_at)
             VALUES ($1, $2::text::xid8, $3, now())
             ON CONFLICT (name) DO UPDATE SET transaction_id = EXCLUDED.transaction_id,
                 position = EXCLUDED.position, updated_at = now()",
        )
        .bind(self.manager.name())
        .bind(at.transaction_id.to_string())
        .bind(at.position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn refused(
        &self,
        event: &StoredEvent,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        tracing::warn!(
            alert = "process-manager-refusal",
            process_manager = self.manager.name(),
            aggregate_type = %event.aggregate_type,
            aggregate_id = %event.aggregate_id,
            sequence = event.sequence,
            reason,
            "a reaction was refused; recorded"
        );
        sqlx::query(
            "INSERT INTO process_manager_refusals
                 (name, position, aggregate_type, aggregate_id, sequence, reason, refused_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(self.manager.name())
        .bind(event.position)
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.sequence as i64)
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
