//! The relay: publishes every committed event to Kafka, at least once, in order per aggregate.
//!
//! It tails the [`stream`](crate::stream) from its checkpoint, sends each event with the
//! idempotent producer (acks=all) keyed by aggregate id, and advances the checkpoint only past
//! events the broker acknowledged. A crash, a broker outage or a failed send therefore repeats
//! events, never loses them; consumers drop repeats by `ce_id` or sequence.
//!
//! One relay is active per database: it holds a PostgreSQL advisory lock on the connection it
//! reads with, so a standby takes over when the active relay's connection dies.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::chain::ChainKey;
use crate::keys::KeyStore;
use crate::stream::{self, Cursor, StoredEvent, COMMIT_CHANNEL};
use crate::wire;

/// Settings of a relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Name of the checkpoint; relays with different names publish independently.
    pub name: String,
    /// Prepended to every topic name (isolates tests and environments sharing a broker).
    pub topic_prefix: String,
    /// Events read and sent per round trip.
    pub batch_size: i64,
    /// How long to wait for a commit notification before looking anyway.
    pub idle_poll: Duration,
    /// How long a standby waits between attempts to become the active relay.
    pub standby_poll: Duration,
    /// How long librdkafka keeps retrying a send before reporting it failed.
    pub message_timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            name: "kafka".to_owned(),
            topic_prefix: String::new(),
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            standby_poll: Duration::from_secs(2),
            message_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a relay round stopped short.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("event store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] KafkaError),
    #[error(transparent)]
    Mapping(#[from] wire::MappingError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
}

/// Batches sent and not yet acknowledged at once.
const PIPELINE_DEPTH: usize = 3;

/// How often, at most, the checkpoint is stored while batches keep coming (and always when
/// the relay catches up or stops): a crash repeats at most this much, never loses any.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// A batch handed to the producer: each event's place in the stream with its delivery
/// (`None` for a row that does not verify, passed over), and how far it goes.
struct InFlight {
    sent: Vec<(Cursor, Option<rdkafka::producer::DeliveryFuture>)>,
    last: Cursor,
    /// Why sending stopped before the end of what was read, if it did.
    failure: Option<RelayError>,
}

impl InFlight {
    /// Waits for the broker's answers; returns the place after the acknowledged (or passed
    /// over) prefix of the batch, and the first failure.
    async fn settle(self) -> (Option<Cursor>, Option<RelayError>) {
        let results = join_all(self.sent.into_iter().map(|(at, delivery)| async move {
            match delivery {
                Some(delivery) => (at, Some(delivery.await)),
                None => (at, None),
            }
        }))
        .await;
        let mut done = None;
        let mut failure = self.failure;
        for (at, result) in results {
            match result {
                None | Some(Ok(Ok(_))) => done = Some(at),
                Some(Ok(Err((e, _)))) => {
                    failure = Some(e.into());
                    break;
                }
                Some(Err(_canceled)) => {
                    failure = Some(KafkaError::Canceled.into());
                    break;
                }
            }
        }
        (done, failure)
    }
}

pub struct Relay {
    pool: PgPool,
    keys: KeyStore,
    /// Checks that each event was written by the service before it is published.
    chain: ChainKey,
    /// The client settings new producers are made from.
    kafka: ClientConfig,
    producer: FutureProducer,
    settings: RelaySettings,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The advisory lock key of the relay named `name`.
fn lock_key(name: &str) -> i64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "patient-service relay ".bytes().chain(name.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

impl Relay {
    /// A relay publishing through a producer built from `kafka` (brokers and security
    /// settings); this sets the idempotent producer and acks=all itself.
    ///
    /// # Errors
    ///
    /// The librdkafka error when the producer cannot be created.
    pub fn new(
        pool: PgPool,
        keys: KeyStore,
        chain: ChainKey,
        kafka: &ClientConfig,
        settings: RelaySettings,
    ) -> Result<Self, KafkaError> {
        let mut kafka = kafka.clone();
        kafka
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            );
        let producer = kafka.create()?;
        Ok(Self {
            pool,
            keys,
            chain,
            kafka,
            producer,
            settings,
        })
    }

    /// A fatal producer error (the idempotent producer lost its identity, say) fails every
    /// later send: the relay then steps down, releasing its lock, and starts a new producer.
    fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Runs until `shutdown` is cancelled: waits to become the active relay, then publishes
    /// every event committed since the checkpoint and keeps up with new commits. Every failure
    /// is logged and retried with backoff; nothing is skipped.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut relay = self;
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match relay.run_while_active(&shutdown).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error.message = %e, "relay interrupted, retrying");
                    backoff.wait(&shutdown).await;
                }
            }
            if let Some(fatal) = relay.fatal_error() {
                tracing::error!(error.message = %fatal, "producer failed for good; starting a new one");
                match relay.kafka.create() {
                    Ok(producer) => relay.producer = producer,
                    Err(e) => tracing::error!(error.message = %e, "cannot create a producer"),
                }
            }
        }
        tracing::info!("relay stopped");
    }

    async fn run_while_active(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let mut conn = self.pool.acquire().await?;
        let key = lock_key(&self.settings.name);
        let active: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if !active {
            tracing::debug!("another relay is active; standing by");
            sleep_or_cancel(self.settings.standby_poll, shutdown).await;
            // The connection goes back to the pool: it holds no lock.
            return Ok(());
        }
        // From here on the lock lives as long as this connection: detach it from the pool so
        // it is closed, not reused, when this function returns, and the lock dies with it.
        let mut conn = conn.detach();
        tracing::info!(relay = %self.settings.name, "relay active");
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(COMMIT_CHANNEL).await?;
        // Commits of this process ring at once; other processes' arrive by notification.
        let mut rung = crate::bell::subscribe();
        let mut backoff = Backoff::default();
        let mut held_back = stream::HELD_BACK_POLL;
        // Where the broker acknowledged everything before (and the stored checkpoint, which
        // may lag it by up to `CHECKPOINT_EVERY`), and where reading goes on.
        let mut acknowledged = self.checkpoint(&mut conn).await?;
        let mut saved = acknowledged;
        let mut saved_at = tokio::time::Instant::now();
        let mut read_at = acknowledged;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        while !shutdown.is_cancelled() {
            if self.fatal_error().is_some() {
                // Step down: the caller replaces the producer.
                break;
            }
            // Rung from here on means committed after this read began: read again.
            rung.mark_unchanged();
            // Batches in flight side by side: the next is read and sent while the broker
            // acknowledges the one before.
            let mut failure = None;
            while in_flight.len() < PIPELINE_DEPTH {
                match self.send_batch(&mut conn, read_at).await {
                    Ok(Some(batch)) => {
                        read_at = batch.last;
                        // Cut short: nothing after it is sent before it is sent again.
                        let cut_short = batch.failure.is_some();
                        in_flight.push_back(batch);
                        if cut_short {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(RelayError::Database(e)) => return Err(RelayError::Database(e)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Some(batch) = in_flight.pop_front() {
                let (done, error) = batch.settle().await;
                if let Some(done) = done {
                    acknowledged = done;
                }
                failure = failure.or(error);
            }
            if failure.is_none()
                && acknowledged != saved
                && (in_flight.is_empty() || saved_at.elapsed() >= CHECKPOINT_EVERY)
            {
                self.save_checkpoint(&mut conn, acknowledged).await?;
                (saved, saved_at) = (acknowledged, tokio::time::Instant::now());
            }
            if let Some(e) = failure {
                // Everything after the acknowledged prefix is sent again: repeats, never gaps.
                in_flight.clear();
                self.save_checkpoint(&mut conn, acknowledged).await?;
                (saved, saved_at, read_at) =
                    (acknowledged, tokio::time::Instant::now(), acknowledged);
                tracing::warn!(error.message = %e, "publishing failed; will resend from the checkpoint");
                backoff.wait(shutdown).await;
                continue;
            }
            backoff.reset();
            if !in_flight.is_empty() {
                continue;
            }
            // Caught up: wait for a commit.
            let wait = if stream::is_held_back(&mut conn, read_at).await? {
                // Held back by an older transaction: look again soon, then less often the
                // longer it stays open.
                held_back = (held_back * 2).min(self.settings.idle_poll);
                held_back
            } else {
                held_back = stream::HELD_BACK_POLL;
                self.settings.idle_poll
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = tokio::time::timeout(wait, listener.recv()) => {}
                _ = rung.changed() => {}
            }
        }
        // Stopping: what was sent is waited for, so the checkpoint passes all that arrived.
        while let Some(batch) = in_flight.pop_front() {
            let (done, error) = batch.settle().await;
            if let Some(done) = done {
                acknowledged = done;
            }
            if error.is_some() {
                break;
            }
        }
        if acknowledged != saved {
            self.save_checkpoint(&mut conn, acknowledged).await?;
        }
        Ok(())
    }

    /// Reads the batch after `after`, checks and opens it, and hands every event of it to the
    /// producer; returns it in flight, or `None` when nothing is committed after `after`.
    ///
    /// # Errors
    ///
    /// A database, key or mapping failure, or the producer refusing the first event.
    async fn send_batch(
        &self,
        conn: &mut PgConnection,
        after: Cursor,
    ) -> Result<Option<InFlight>, RelayError> {
        let events = stream::read_after(&mut *conn, after, self.settings.batch_size).await?;
        let Some(last) = events.last().map(StoredEvent::cursor) else {
            return Ok(None);
        };
        // A row the service did not write is never published (nor opened): the checkpoint
        // passes it, the operator is alerted, and `audit verify` names it.
        let mut rejected = vec![false; events.len()];
        for (index, finding) in stream::unverified(&mut *conn, &self.chain, &events).await? {
            tracing::error!(
                alert = "event-store-tampering",
                position = events[index].position,
                finding = %finding,
                "a stored event does not verify; not published"
            );
            rejected[index] = true;
        }
        let mut verified: Vec<StoredEvent> = events
            .iter()
            .zip(&rejected)
            .filter(|(_, rejected)| !**rejected)
            .map(|(event, _)| event.clone())
            .collect();
        let keys = stream::open(&self.keys, &mut *conn, &mut verified).await?;
        // In stream order: the event's place, and `None` for a rejected event, else its
        // delivery.
        let mut sent = Vec::with_capacity(events.len());
        let mut failure: Option<RelayError> = None;
        let mut verified = verified.iter();
        for (stored, is_rejected) in events.iter().zip(&rejected) {
            if *is_rejected {
                sent.push((stored.cursor(), None));
                continue;
            }
            let Some(event) = verified.next() else {
                break;
            };
            let (topic, published) = match wire::to_published(event, keys.get(event.key_owner())) {
                Ok(mapped) => mapped,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            let topic = format!("{}{topic}", self.settings.topic_prefix);
            let mut headers = OwnedHeaders::new_with_capacity(12);
            for (key, value) in published.headers() {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
            let key = wire::record_key(event);
            let record = FutureRecord::to(&topic)
                .key(key.as_str())
                .payload(published.data.as_slice())
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => sent.push((stored.cursor(), Some(delivery))),
                Err((e, _)) => {
                    failure = Some(e.into());
                    break;
                }
            }
        }
        if sent.is_empty() {
            return Err(failure.unwrap_or(RelayError::Broker(KafkaError::Canceled)));
        }
        // A batch cut short (a full queue, an unmappable event) is in flight up to there; the
        // failure shows when it settles, and everything after is sent again.
        let last = if failure.is_none() {
            last
        } else {
            sent[sent.len() - 1].0
        };
        Ok(Some(InFlight {
            sent,
            last,
            failure,
        }))
    }

    async fn checkpoint(&self, conn: &mut PgConnection) -> Result<Cursor, sqlx::Error> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT transaction_id::text, position FROM relay_checkpoints WHERE relay = $1",
        )
        .bind(&self.settings.name)
        .fetch_optional(&mut *conn)
        .await?;
        row.map_or(Ok(Cursor::default()), |(transaction_id, position)| {
            Cursor::parse(&transaction_id, position)
        })
    }

    async fn save_checkpoint(
        &self,
        conn: &mut PgConnection,
        at: Cursor,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO relay_checkpoints (relay, transaction_id, position, updated_at)
             VALUES ($1, $2::text::xid8, $3, now())
             ON CONFLICT (relay) DO UPDATE
                SET transaction_id = EXCLUDED.transaction_id,
                    position = EXCLUDED.position,
                    updated_at = now()",
        )
        .bind(&self.settings.name)
        .bind(at.transaction_id.to_string())
        .bind(at.position)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Creates the topics of every aggregate type (with `prefix`), and the audit head topic (one
/// partition: its records are read whole), that do not exist yet.
///
/// # Errors
///
/// The broker's error for any topic it failed to create, other than "already exists".
pub async fn ensure_topics(
    kafka: &ClientConfig,
    prefix: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let names: Vec<String> = schemas::topics::ALL
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
    let audit_head = format!("{prefix}{}", schemas::topics::AUDIT_HEAD);
    // Kept forever: a new consumer group or read model reads every event from the start.
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| (name, partitions))
        .chain(std::iter::once((&audit_head, 1)))
        .map(|(name, partitions)| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(replication))
                .set("retention.ms", "-1")
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(%topic, ?code, "could not create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    async fn wait(&mut self, shutdown: &CancellationToken) {
        let delay =
            Duration::from_millis(100 * 2u64.pow(self.failures.min(6))).min(Duration::from_secs(5));
        self.failures += 1;
        sleep_or_cancel(delay, shutdown).await;
    }
}
