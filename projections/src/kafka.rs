//! Feeds a projector from a Kafka consumer group, at least once.
//!
//! Offsets are stored only after the read-model transaction committed
//! (`enable.auto.offset.store=false`); librdkafka commits stored offsets in the background. A
//! crash after the commit and before the offset store re-reads the event, which the projector
//! then skips as a repeat.
//!
//! A record that cannot be used (malformed, sealed data that does not open, or an event that
//! does not verify: see [`crate::runtime`]) is parked with its topic, partition, offset and
//! reason, and its offset stored: it is never applied and never blocks the partition.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::PublishedEvent;
use tokio_util::sync::CancellationToken;

use crate::runtime::{ProjectionError, Projector, ReadModel};

/// Runs `projector` as a member of the consumer group `group_id` until `shutdown`.
///
/// # Errors
///
/// The librdkafka error when the consumer cannot be created or subscribe.
pub async fn run<M: ReadModel>(
    projector: Projector<M>,
    kafka: &ClientConfig,
    group_id: &str,
    topic_prefix: &str,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    // Held while consuming: a rebuild is refused meanwhile, and this waits while one runs.
    let feeding = loop {
        match projector.try_lock_shared().await {
            Ok(Some(lock)) => break lock,
            Ok(None) => tracing::info!(
                projector = projector.model().name(),
                "the read model is being rebuilt or fed from the stream; consuming once it is not"
            ),
            Err(e) => tracing::warn!(error.message = %e, "the projector lock cannot be taken now"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(LOCK_RETRY) => {}
        }
    };
    let consumed = consume(&projector, kafka, (group_id, topic_prefix), shutdown).await;
    if let Err(e) = feeding.release().await {
        tracing::warn!(error.message = %e, "the projector lock's connection did not close cleanly");
    }
    consumed
}

/// How soon a consumer waiting for a rebuild to end asks again.
const LOCK_RETRY: Duration = Duration::from_secs(1);

async fn consume<M: ReadModel>(
    projector: &Projector<M>,
    kafka: &ClientConfig,
    (group_id, topic_prefix): (&str, &str),
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    let consumer: StreamConsumer = kafka
        .clone()
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let topics: Vec<String> = projector
        .model()
        .topics()
        .iter()
        .map(|t| format!("{topic_prefix}{t}"))
        .collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(
        projector = projector.model().name(),
        group_id,
        "projector consuming"
    );
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error.message = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // With it, whatever else has arrived already (without waiting): one transaction for
        // all of them.
        let mut batch = vec![message];
        while batch.len() < BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message),
                Some(Err(e)) => {
                    tracing::warn!(error.message = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        if !handle_batch(projector, &batch, &shutdown).await {
            break;
        }
        for message in &batch {
            if let Err(e) = consumer.store_offset_from_message(message) {
                tracing::warn!(error.message = %e, "could not store offset; the event will be re-read");
            }
        }
    }
    // Commit what was stored so a restart resumes exactly here.
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(error.message = %e, "final offset commit");
    }
    tracing::info!(projector = projector.model().name(), "projector stopped");
    Ok(())
}

/// Waits `delay` before a retry (doubling it for the next, up to 5 s); false when shut down
/// first.
async fn wait_to_retry(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => return false,
        () = tokio::time::sleep(*delay) => {}
    }
    *delay = (*delay * 2).min(Duration::from_secs(5));
    true
}

/// The most records applied in one transaction.
const BATCH: usize = 500;

/// The headers of a record, as name and value.
/// The headers of `message` that have a value, as [`PublishedEvent::from_headers`] takes them.
pub fn headers_of<'m>(message: &'m BorrowedMessage<'_>) -> Vec<(&'m str, &'m [u8])> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .filter_map(|h| h.value.map(|v| (h.key, v)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// Applies records in one transaction ([`Projector::apply_batch`]), retrying database
/// failures until they pass or `shutdown`; a batch holding a record that cannot be used is
/// applied record by record instead ([`handle`]), which parks that one. Returns false when
/// interrupted by shutdown before the batch was handled.
async fn handle_batch<M: ReadModel>(
    projector: &Projector<M>,
    batch: &[BorrowedMessage<'_>],
    shutdown: &CancellationToken,
) -> bool {
    let decoded: Result<Vec<PublishedEvent>, _> = batch
        .iter()
        .map(|m| PublishedEvent::from_headers(headers_of(m), m.payload().unwrap_or_default()))
        .collect();
    if let Ok(events) = decoded {
        let events: Vec<&PublishedEvent> = events.iter().collect();
        let mut delay = Duration::from_millis(100);
        loop {
            match projector.apply_batch(&events).await {
                Ok(true) => return true,
                Ok(false) => break,
                Err(e) if e.is_unusable() => break,
                Err(e) => {
                    tracing::warn!(error.message = %e, "read model store failed; retrying");
                }
            }
            if !wait_to_retry(&mut delay, shutdown).await {
                return false;
            }
        }
    }
    for message in batch {
        if !handle(projector, message, shutdown).await {
            return false;
        }
    }
    true
}

/// Applies one record, retrying database failures until they pass or `shutdown`. Returns false
/// when interrupted by shutdown before the record was handled.
async fn handle<M: ReadModel>(
    projector: &Projector<M>,
    message: &BorrowedMessage<'_>,
    shutdown: &CancellationToken,
) -> bool {
    let headers = headers_of(message);
    let mut delay = Duration::from_millis(100);
    loop {
        let result = match PublishedEvent::from_headers(
            headers.iter().copied(),
            message.payload().unwrap_or_default(),
        ) {
            Ok(event) => projector.apply(&event).await.map(|_| ()),
            Err(e) => Err(ProjectionError::Undecodable(e)),
        };
        match result {
            Ok(()) => return true,
            // Malformed, not opening, or not what its headers claim: retrying will not help.
            Err(e) if e.is_unusable() => {
                tracing::error!(
                    projector = projector.model().name(),
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    reason = e.reason(),
                    error.message = %e,
                    "unusable record parked"
                );
                match projector
                    .park(message.topic(), message.partition(), message.offset(), &e)
                    .await
                {
                    Ok(()) => return true,
                    Err(db) => {
                        tracing::warn!(error.message = %db, "could not park record; retrying")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "read model store failed; retrying");
            }
        }
        if !wait_to_retry(&mut delay, shutdown).await {
            return false;
        }
    }
}

/// Why [`read_to_end`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadToEndError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the topics were not read to their end within {0:?}")]
    Timeout(Duration),
}

/// Hands every record of `topics` to `each`, from each partition's start to its end as it is
/// when the read begins, read outside any consumer group (`client` names the reader to the
/// brokers; nothing is committed). Topics that do not exist are passed over.
///
/// # Errors
///
/// When the brokers cannot be read, or the topics not to their end within `limit`.
pub fn read_to_end(
    kafka: &ClientConfig,
    client: &str,
    topics: &[String],
    limit: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ReadToEndError> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", client)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    for found in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|name| name == t.name()))
    {
        for partition in found.partitions() {
            let (low, high) = consumer.fetch_watermarks(found.name(), partition.id(), timeout)?;
            if high > low {
                assignment.add_partition_offset(
                    found.name(),
                    partition.id(),
                    Offset::Offset(low),
                )?;
                remaining.insert((found.name().to_owned(), partition.id()), high);
            }
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + limit;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(ReadToEndError::Timeout(limit));
        }
        let Some(message) = consumer.poll(Duration::from_secs(1)) else {
            continue;
        };
        let message = message?;
        each(&message);
        let key = (message.topic().to_owned(), message.partition());
        if remaining
            .get(&key)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&key);
        }
    }
    Ok(())
}
