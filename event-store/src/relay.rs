//! The relay: publishes every committed event to Kafka, at least once, in order per aggregate.
//!
//! It tails the [`stream`](crate::stream) from its checkpoint, sends each event with the
//! idempotent producer (acks=all) keyed by aggregate id, and advances the checkpoint only past
//! events the broker acknowledged. A crash, a broker outage or a failed send therefore repeats
//! events, never loses them; consumers drop repeats by `ce_id` or sequence.
//!
//! One relay is active per database: it holds a PostgreSQL advisory lock on the connection it
//! reads with, so a standby takes over when the active relay's connection dies.

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
        while !shutdown.is_cancelled() {
            if self.fatal_error().is_some() {
                // Step down: the caller replaces the producer.
                return Ok(());
            }
            // Rung from here on means committed after this read began: read again.
            rung.mark_unchanged();
            match self.publish_batch(&mut conn).await {
                Ok(sent) if sent as i64 >= self.settings.batch_size => {
                    backoff.reset();
                    continue;
                }
                Ok(_) => {
                    backoff.reset();
                    let checkpoint = self.checkpoint(&mut conn).await?;
                    // Held back by an older transaction: look again soon, then less often
                    // the longer it stays open.
                    let wait = if stream::is_held_back(&mut conn, checkpoint).await? {
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
                Err(RelayError::Database(e)) => return Err(RelayError::Database(e)),
                Err(e) => {
                    tracing::warn!(error.message = %e, "publishing failed; will resend from the checkpoint");
                    backoff.wait(shutdown).await;
                }
            }
        }
        Ok(())
    }

    /// Publishes one batch after the checkpoint and advances the checkpoint past the events
    /// the broker acknowledged, in order. Returns how many events were acknowledged.
    ///
    /// # Errors
    ///
    /// The first failure; the checkpoint then stands before the failed event.
    pub async fn publish_batch(&self, conn: &mut PgConnection) -> Result<usize, RelayError> {
        let checkpoint = self.checkpoint(conn).await?;
        let events = stream::read_after(&mut *conn, checkpoint, self.settings.batch_size).await?;
        if events.is_empty() {
            return Ok(0);
        }
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
        // In stream order: `None` for a rejected event, else its delivery.
        let mut sent = Vec::with_capacity(events.len());
        let mut failure: Option<RelayError> = None;
        let mut verified = verified.iter();
        for is_rejected in &rejected {
            if *is_rejected {
                sent.push(None);
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
                Ok(delivery) => sent.push(Some(delivery)),
                Err((e, _)) => {
                    failure = Some(e.into());
                    break;
                }
            }
        }
        // The checkpoint may pass the acknowledged (or rejected) prefix of what was sent, even
        // when sending stopped early (a queue-full or unmappable event): those are done.
        let results = join_all(sent.into_iter().map(|delivery| async move {
            match delivery {
                Some(delivery) => Some(delivery.await),
                None => None,
            }
        }))
        .await;
        let mut done = 0;
        let mut acknowledged = 0;
        for result in results {
            match result {
                None => done += 1,
                Some(Ok(Ok(_))) => {
                    done += 1;
                    acknowledged += 1;
                }
                Some(Ok(Err((e, _)))) => {
                    failure.get_or_insert(e.into());
                    break;
                }
                Some(Err(_canceled)) => {
                    failure.get_or_insert(KafkaError::Canceled.into());
                    break;
                }
            }
        }
        if done > 0 {
            self.save_checkpoint(conn, events[done - 1].cursor())
                .await?;
        }
        tracing::debug!(acknowledged, "published");
        match failure {
            None => Ok(acknowledged),
            Some(e) => Err(e),
        }
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

/// Creates the topics of every aggregate type (with `prefix`) that do not exist yet.
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
    // Kept forever: a new consumer group or read model reads every event from the start.
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
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
