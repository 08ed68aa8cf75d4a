//! The audit log's chain head kept outside the database. Every process running the relay (a
//! standby too: repeated heads are harmless) publishes it to [`schemas::topics::AUDIT_HEAD`] whenever it has moved ([`HeadPublisher`]); `audit
//! verify` reads every head published ([`read_published`]) and checks the database's chain
//! against the highest one published for it ([`check`]). The chain itself shows an entry
//! changed, removed or slipped in, but not the newest entries removed with the head moved back
//! to an earlier entry; the topic does, as long as a head beyond that entry was published.
//!
//! Each record carries a MAC with the audit key, so a record produced by anyone without the key
//! is told apart ([`is_authentic`]) and ignored; replaying an older genuine record does not
//! lower the highest head. The chain's id is signed too ([`chain_id_mac`], written when the log
//! is built afresh), so a chain of one's own, under a new id, does not escape the heads
//! published for the real one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use event_store::chain::ChainKey;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use schemas::audit_head::v1::AuditChainHead;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why the published heads could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the audit head topic: {0}")]
    Read(#[from] crate::kafka::ReadToEndError),
}

/// The chain head as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub chain_id: Uuid,
    pub seq: u64,
    pub hash: Vec<u8>,
    /// [`chain_id_mac`] of the id; none for the chain the migration started.
    pub chain_mac: Option<Vec<u8>>,
}

const CHAIN_ID_CONTEXT: &[u8] = b"patient-service audit chain id";

/// The MAC with the audit key that vouches for a chain's id.
pub fn chain_id_mac(chain: &ChainKey, chain_id: Uuid) -> Vec<u8> {
    chain.link(CHAIN_ID_CONTEXT, &[chain_id.as_bytes()])
}

/// Whether the chain's id is signed by an audit key: `None` when it carries no signature.
fn chain_id_signed(chain: &ChainKey, head: &Head) -> Option<bool> {
    head.chain_mac
        .as_deref()
        .map(|mac| chain.verifies_link(CHAIN_ID_CONTEXT, &[head.chain_id.as_bytes()], mac))
}

/// The database's chain head.
///
/// # Errors
///
/// The database error.
pub async fn current(pool: &PgPool) -> Result<Head, sqlx::Error> {
    let (chain_id, seq, hash, chain_mac): (Uuid, i64, Vec<u8>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT chain_id, seq, hash, chain_mac FROM projections.audit_chain_head")
            .fetch_one(pool)
            .await?;
    Ok(Head {
        chain_id,
        seq: u64::try_from(seq).unwrap_or(0),
        hash,
        chain_mac,
    })
}

/// The fields a head's MAC commits to.
fn mac_fields(chain_id: &Uuid, seq: u64, hash: &str) -> [Vec<u8>; 3] {
    [
        chain_id.as_bytes().to_vec(),
        seq.to_string().into_bytes(),
        hash.as_bytes().to_vec(),
    ]
}

const MAC_CONTEXT: &[u8] = b"patient-service audit chain head";

/// The record publishing `head`, read at `read_at`.
pub fn record(chain: &ChainKey, head: &Head, read_at: DateTime<Utc>) -> AuditChainHead {
    let hash = hex::encode(&head.hash);
    let fields = mac_fields(&head.chain_id, head.seq, &hash);
    let mac = chain.link(MAC_CONTEXT, &fields.each_ref().map(Vec::as_slice));
    AuditChainHead {
        chain_id: head.chain_id,
        seq: head.seq,
        hash,
        read_at,
        mac: hex::encode(mac),
    }
}

/// Whether `head`'s MAC is one made with the audit key.
pub fn is_authentic(chain: &ChainKey, head: &AuditChainHead) -> bool {
    let Ok(mac) = hex::decode(&head.mac) else {
        return false;
    };
    let fields = mac_fields(&head.chain_id, head.seq, &head.hash);
    chain.verifies_link(MAC_CONTEXT, &fields.each_ref().map(Vec::as_slice), &mac)
}

/// Publishes the chain head to the audit head topic whenever it has moved, every `interval`.
pub struct HeadPublisher {
    pool: PgPool,
    chain: ChainKey,
    producer: FutureProducer,
    topic: String,
    interval: Duration,
}

impl std::fmt::Debug for HeadPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadPublisher")
            .field("topic", &self.topic)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl HeadPublisher {
    /// A publisher to `topic` through a producer built from `kafka`.
    ///
    /// # Errors
    ///
    /// The librdkafka error when the producer cannot be created.
    pub fn new(
        pool: PgPool,
        chain: ChainKey,
        kafka: &ClientConfig,
        topic: String,
        interval: Duration,
    ) -> Result<Self, KafkaError> {
        let producer = kafka.clone().set("acks", "all").create()?;
        Ok(Self {
            pool,
            chain,
            producer,
            topic,
            interval,
        })
    }

    /// Runs until `shutdown`: publishes the head at once, then each `interval` when it moved.
    /// Failures are logged and tried again at the next tick.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut published: Option<Head> = None;
        loop {
            match self.publish_if_moved(published.as_ref()).await {
                Ok(Some(head)) => published = Some(head),
                Ok(None) => {}
                Err(e) => tracing::warn!(error.message = %e, "cannot publish the audit chain head"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Publishes the head unless it is `last`; answers the head published.
    async fn publish_if_moved(&self, last: Option<&Head>) -> Result<Option<Head>, HeadError> {
        let head = current(&self.pool).await?;
        if last == Some(&head) {
            return Ok(None);
        }
        if chain_id_signed(&self.chain, &head) == Some(false) {
            // Not the service's chain: vouching for it would launder a replaced log.
            tracing::warn!(alert = "audit-chain-tampering", chain_id = %head.chain_id, "the audit chain's id is not signed by an audit key: its head is not published");
            return Ok(None);
        }
        let value = serde_json::to_vec(&record(&self.chain, &head, Utc::now())).unwrap_or_default();
        let key = head.chain_id.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: schemas::envelope::H_CONTENT_TYPE,
            value: Some(schemas::envelope::CONTENT_TYPE),
        });
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        tracing::debug!(chain_id = %head.chain_id, seq = head.seq, "audit chain head published");
        Ok(Some(head))
    }
}

/// Every record of the audit head topic `topic` that decodes, from each partition's start to
/// its end; none when the topic does not exist.
///
/// # Errors
///
/// When the brokers cannot be read, or the topic not to its end within a minute.
pub fn read_published(kafka: &ClientConfig, topic: &str) -> Result<Vec<AuditChainHead>, HeadError> {
    let mut heads = Vec::new();
    crate::kafka::read_to_end(
        kafka,
        "patient-service-audit-verify",
        &[topic.to_owned()],
        Duration::from_secs(60),
        |message| {
            if let Some(head) = message
                .payload()
                .and_then(|value| serde_json::from_slice::<AuditChainHead>(value).ok())
            {
                heads.push(head);
            }
        },
    )?;
    Ok(heads)
}

/// What checking the database's chain against the published heads found.
#[derive(Debug, Default)]
pub struct HeadCheck {
    /// The highest authentic head published for the database's chain.
    pub against: Option<AuditChainHead>,
    /// Records whose MAC is not the audit key's: ignored.
    pub forged: usize,
    /// What does not hold, one sentence each (ids and numbers only).
    pub findings: Vec<String>,
}

/// Checks the database's chain against `published`: it must still hold the highest authentic
/// head published for it, entry and hash.
///
/// # Errors
///
/// The database error.
pub async fn check(
    pool: &PgPool,
    chain: &ChainKey,
    published: Vec<AuditChainHead>,
) -> Result<HeadCheck, sqlx::Error> {
    let (authentic, forged): (Vec<_>, Vec<_>) =
        published.into_iter().partition(|h| is_authentic(chain, h));
    let head = current(pool).await?;
    let other_chains = authentic
        .iter()
        .filter(|h| h.chain_id != head.chain_id)
        .count();
    let against = authentic
        .into_iter()
        .filter(|h| h.chain_id == head.chain_id)
        .max_by_key(|h| h.seq);
    let mut findings = Vec::new();
    match &against {
        Some(published) if head.seq < published.seq => findings.push(format!(
            "audit chain {}: ends at entry {}, but its head at entry {} was published at {}: the newest entries were removed",
            head.chain_id, head.seq, published.seq, published.read_at
        )),
        Some(published) if published.seq > 0 => {
            let stored: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT hash FROM projections.audit_log WHERE seq = $1")
                    .bind(i64::try_from(published.seq).unwrap_or(i64::MAX))
                    .fetch_optional(pool)
                    .await?;
            if stored.map(hex::encode).as_deref() != Some(published.hash.as_str()) {
                findings.push(format!(
                    "audit chain {}: entry {} is not the entry whose hash was published at {}: the chain was rewritten",
                    head.chain_id, published.seq, published.read_at
                ));
            }
        }
        Some(_) => {}
        None => {}
    }
    match chain_id_signed(chain, &head) {
        Some(true) => {}
        Some(false) => findings.push(format!(
            "audit chain {}: its id is not signed by an audit key: the log was replaced by someone without the key",
            head.chain_id
        )),
        // The chain the migration started, before ids were signed: fine while it is the only
        // one; once heads of other chains were published, an unsigned id is a replacement.
        None if other_chains > 0 => findings.push(format!(
            "audit chain {}: its id is not signed while heads of {other_chains} other chains were published: the log was replaced by someone without the key",
            head.chain_id
        )),
        None => {}
    }
    Ok(HeadCheck {
        against,
        forged: forged.len(),
        findings,
    })
}
