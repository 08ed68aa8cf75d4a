//! The audit log read model: every patient and medical record event and every access entry, hash-chained, and
//! queryable by patient, user, time range and action.
//!
//! Each entry's hash is an HMAC (the audit key from configuration) over the previous entry's
//! hash and this entry's columns, so an entry cannot be changed, removed or slipped in without
//! [`verify`] naming it. Entries also keep the stored row's own hash (`ce_eventhash`), which
//! lets `verify` cross-check the event store: a stored event that was deleted or rewritten
//! after it was audited no longer matches.
//!
//! The same cross-check runs before an entry is written: an event without `ce_eventhash`, or
//! whose hash is not the stored row's at its aggregate and sequence, is refused
//! ([`ProjectionError::Unverified`], so it is parked). The log neither opens sealed data nor
//! keeps sequences, so without this a record replayed with a recomputed `ce_id` would take the
//! genuine event's entry id, and the genuine event would then be dropped as a repeat.

use chrono::{DateTime, SecondsFormat, Utc};
use event_store::chain::{canonical_json, ChainKey, KeyUses, Retirement};
use futures::TryStreamExt;
use schemas::access::v1::AccessEntry;
use schemas::PublishedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, QueryBuilder, Row};
use uuid::Uuid;

use crate::runtime::{ProjectionError, ReadModel};

/// The audit log. Needs the audit key to extend the chain.
#[derive(Debug, Clone)]
pub struct AuditLog {
    chain: ChainKey,
}

impl AuditLog {
    pub fn new(chain: ChainKey) -> Self {
        Self { chain }
    }
}

/// One audit log entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub entry_id: Uuid,
    /// `event` or `access`.
    pub kind: String,
    pub recorded_at: DateTime<Utc>,
    pub patient_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub action: String,
    pub detail: serde_json::Value,
    #[serde(skip)]
    pub event_hash: Option<Vec<u8>>,
    #[serde(skip)]
    pub hash: Vec<u8>,
}

impl AuditEntry {
    /// The link after `previous` committing to this entry, made with the active key.
    fn link(&self, chain: &ChainKey, previous: &[u8]) -> Vec<u8> {
        let fields = self.fields();
        chain.link(previous, &fields.each_ref().map(Vec::as_slice))
    }

    /// The index of the key whose link after `previous` is this entry's hash, if any.
    fn linked_by(&self, chain: &ChainKey, previous: &[u8]) -> Option<usize> {
        let fields = self.fields();
        chain.link_made_by(previous, &fields.each_ref().map(Vec::as_slice), &self.hash)
    }

    /// What an entry's link commits to, in order.
    fn fields(&self) -> [Vec<u8>; 9] {
        [
            self.seq.to_string().into_bytes(),
            self.entry_id.as_bytes().to_vec(),
            self.kind.clone().into_bytes(),
            self.recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
                .into_bytes(),
            self.patient_id
                .map(|p| p.to_string())
                .unwrap_or_default()
                .into_bytes(),
            self.user_id.clone().unwrap_or_default().into_bytes(),
            self.action.clone().into_bytes(),
            canonical_json(&self.detail),
            self.event_hash.clone().unwrap_or_default(),
        ]
    }
}

/// A refusal of `event` by the audit log, naming ids only.
fn unverified(event: &PublishedEvent, what: &str) -> ProjectionError {
    ProjectionError::Unverified(format!(
        "{} {} sequence {} (ce_id {}): {what}",
        event.aggregate_type(),
        // At most an id's length: the subject is a header, whoever wrote it.
        event.subject.chars().take(64).collect::<String>(),
        event.sequence,
        event.id
    ))
}

/// The stored row's hash that `event` carries in `ce_eventhash`.
///
/// # Errors
///
/// [`ProjectionError::Unverified`] when it carries none, or not in hex: the entry could not be
/// cross-checked, so it is not written.
fn carried_event_hash(event: &PublishedEvent) -> Result<Vec<u8>, ProjectionError> {
    let hash = event
        .event_hash
        .as_deref()
        .ok_or_else(|| unverified(event, "no ce_eventhash to check against the event store"))?;
    hex::decode(hash).map_err(|_| unverified(event, "ce_eventhash is malformed"))
}

/// The stored rows' hashes that `events` carry, each checked against the event store (in one
/// read).
///
/// # Errors
///
/// [`ProjectionError::Unverified`] for the first event that carries none, or not the hash of
/// the stored row at its aggregate and sequence (or there is no such row); the database error.
async fn checked_event_hashes(
    tx: &mut PgConnection,
    events: &[&PublishedEvent],
) -> Result<Vec<Vec<u8>>, ProjectionError> {
    let carried = events
        .iter()
        .map(|e| carried_event_hash(e))
        .collect::<Result<Vec<_>, _>>()?;
    let types: Vec<&str> = events.iter().map(|e| e.aggregate_type()).collect();
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
    let stored: Vec<(i64, Option<Vec<u8>>, bool)> = sqlx::query_as(
        "SELECT k.n, e.hash, e.sequence IS NOT NULL
           FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS k(t, i, s, n)
           LEFT JOIN events e
             ON e.aggregate_type = k.t AND e.aggregate_id = k.i AND e.sequence = k.s
          ORDER BY k.n",
    )
    .bind(&types)
    .bind(&subjects)
    .bind(&sequences)
    .fetch_all(&mut *tx)
    .await?;
    for ((event, hash), (_, stored, found)) in events.iter().zip(&carried).zip(&stored) {
        if !found {
            return Err(unverified(event, "not in the event store"));
        }
        if stored.as_deref() != Some(hash.as_slice()) {
            return Err(unverified(
                event,
                "ce_eventhash is not the stored event's hash",
            ));
        }
    }
    Ok(carried)
}

impl AuditLog {
    /// Writes the entries of `events`, whose stored rows have the hashes `hashes`: the chain
    /// head locked once, repeats passed over, the entries inserted in one statement and the
    /// head moved once.
    async fn write(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
        hashes: Vec<Vec<u8>>,
    ) -> Result<(), ProjectionError> {
        let mut entries = events
            .iter()
            .zip(hashes)
            .map(|(event, hash)| Self::entry(event, hash))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut seq, mut hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE only_row FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        let ids: Vec<Uuid> = entries.iter().map(|e| e.entry_id).collect();
        let mut seen: std::collections::HashSet<Uuid> =
            sqlx::query_scalar("SELECT entry_id FROM audit_log WHERE entry_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        // Repeats (recorded before, or twice in the batch) are passed over.
        entries.retain(|e| seen.insert(e.entry_id));
        if entries.is_empty() {
            return Ok(());
        }
        for entry in &mut entries {
            seq += 1;
            entry.seq = seq;
            entry.hash = entry.link(&self.chain, &hash);
            hash.clone_from(&entry.hash);
        }
        sqlx::query(
            "INSERT INTO audit_log (seq, entry_id, kind, recorded_at, patient_id,
                                                user_id, action, detail, event_hash, hash)
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[],
                                  $5::uuid[], $6::text[], $7::text[], $8::jsonb[], $9::bytea[],
                                  $10::bytea[])",
        )
        .bind(entries.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.entry_id).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.patient_id).collect::<Vec<_>>())
        .bind(
            entries
                .iter()
                .map(|e| e.user_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|e| e.action.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| &e.detail).collect::<Vec<_>>())
        .bind(
            entries
                .iter()
                .map(|e| e.event_hash.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|e| e.hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE audit_chain_head SET seq = $1, hash = $2")
            .bind(seq)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// The entry `event` makes, before it has a place in the chain (`seq` and `hash` unset).
    fn entry(event: &PublishedEvent, event_hash: Vec<u8>) -> Result<AuditEntry, ProjectionError> {
        let (kind, patient_id, user_id, action, detail) = if event.event_type
            == schemas::access::v1::ACCESS_RECORDED
            || event.event_type == schemas::access::v1::EMERGENCY_ACCESS_GRANTED
        {
            let entry = AccessEntry::from_published(event)?;
            (
                "access",
                Some(entry.patient_id),
                Some(entry.user_id.clone()),
                entry.action.clone(),
                serde_json::to_value(&entry).unwrap_or_default(),
            )
        } else {
            (
                "event",
                // The patient the event is about: the owner of the key that seals it (an
                // appointment's or a notification's patient), else its subject.
                event
                    .key_id()
                    .and_then(|owner| Uuid::parse_str(&owner).ok())
                    .or_else(|| Uuid::parse_str(&event.subject).ok()),
                event.user_id.clone(),
                event.event_type.clone(),
                serde_json::json!({
                    "aggregate_type": event.aggregate_type(),
                    "aggregate_id": event.subject,
                    "sequence": event.sequence,
                    "position": event.position,
                    "request_id": event.request_id,
                }),
            )
        };
        Ok(AuditEntry {
            seq: 0,
            entry_id: event.id,
            kind: kind.to_owned(),
            // Microseconds, as PostgreSQL keeps them, so the hash recomputes from the row.
            recorded_at: DateTime::from_timestamp_micros(event.time.timestamp_micros())
                .unwrap_or(event.time),
            patient_id,
            user_id,
            action,
            detail,
            event_hash: Some(event_hash),
            hash: Vec::new(),
        })
    }
}

impl ReadModel for AuditLog {
    fn name(&self) -> &'static str {
        "audit_log"
    }

    /// Every topic: every event of every aggregate type is audited.
    fn topics(&self) -> &'static [&'static str] {
        &schemas::topics::ALL
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_log", "audit_chain_head"]
    }

    /// The log records that an event happened, not what it says: sealed data stays sealed,
    /// and events of forgotten patients are recorded all the same.
    fn opens_sealed_data(&self) -> bool {
        false
    }

    /// Entries are unique by event id; their order across aggregates is the log's own.
    fn ordered_per_aggregate(&self) -> bool {
        false
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_many(tx, &[event]).await
    }

    /// The entries of a batch: their stored hashes checked in one read, the chain head locked
    /// once, the entries written in one statement and the head moved once.
    async fn apply_many(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
    ) -> Result<(), ProjectionError> {
        if events.is_empty() {
            return Ok(());
        }
        // The runtime has checked that each `ce_id` is the identity of type, subject and
        // sequence.
        let hashes = checked_event_hashes(tx, events).await?;
        self.write(tx, events, hashes).await
    }

    /// As [`AuditLog::apply_many`], with each entry's hash as the event store holds it (the
    /// stream feed read it from there and checked the chain): no second read to check it.
    async fn apply_many_from_store(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
    ) -> Result<(), ProjectionError> {
        if events.is_empty() {
            return Ok(());
        }
        let hashes = events
            .iter()
            .map(|e| carried_event_hash(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.write(tx, events, hashes).await
    }

    async fn clear(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM audit_log")
            .execute(&mut *tx)
            .await?;
        // The head's one row, as the migration leaves it (a rebuild's fresh copy has none).
        sqlx::query("DELETE FROM audit_chain_head")
            .execute(&mut *tx)
            .await?;
        // A new chain, its id signed with the audit key (`audit_head::check` holds it to that).
        let chain_id = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO audit_chain_head (seq, hash, chain_id, chain_mac)
             VALUES (0, ''::bytea, $1, $2)",
        )
        .bind(chain_id)
        .bind(crate::audit_head::chain_id_mac(&self.chain, chain_id))
        .execute(&mut *tx)
        .await
        .map(|_| ())
    }
}

/// What to look for in the audit log. Every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    pub patient_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub action: Option<String>,
    /// `event` or `access`.
    pub kind: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only entries after this `seq` (for paging).
    pub after: Option<i64>,
    pub limit: i64,
}

/// The entries matching `criteria`, oldest first.
///
/// # Errors
///
/// The database error.
pub async fn query(pool: &PgPool, criteria: &Criteria) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "SELECT seq, entry_id, kind, recorded_at, patient_id, user_id, action, detail,
                event_hash, hash
           FROM projections.audit_log WHERE true",
    );
    if let Some(patient) = criteria.patient_id {
        q.push(" AND patient_id = ").push_bind(patient);
    }
    if let Some(user) = &criteria.user_id {
        q.push(" AND user_id = ").push_bind(user.clone());
    }
    if let Some(action) = &criteria.action {
        q.push(" AND action = ").push_bind(action.clone());
    }
    if let Some(kind) = &criteria.kind {
        q.push(" AND kind = ").push_bind(kind.clone());
    }
    if let Some(from) = criteria.from {
        q.push(" AND recorded_at >= ").push_bind(from);
    }
    if let Some(to) = criteria.to {
        q.push(" AND recorded_at < ").push_bind(to);
    }
    if let Some(after) = criteria.after {
        q.push(" AND seq > ").push_bind(after);
    }
    q.push(" ORDER BY seq LIMIT ").push_bind(criteria.limit);
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(decode)
        .collect()
}

fn decode(row: &sqlx::postgres::PgRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        entry_id: row.try_get("entry_id")?,
        kind: row.try_get("kind")?,
        recorded_at: row.try_get("recorded_at")?,
        patient_id: row.try_get("patient_id")?,
        user_id: row.try_get("user_id")?,
        action: row.try_get("action")?,
        detail: row.try_get("detail")?,
        event_hash: row.try_get("event_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// What is wrong with the audit log, or with the event store as the audit log saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The entry does not match its hash: altered, or inserted by someone without the key.
    AlteredOrInserted { seq: i64 },
    /// Entries `from..=to` are missing.
    Deleted { from: i64, to: i64 },
    /// The chain head does not match the last entry: the last entries were removed.
    HeadMismatch { head_seq: i64, last_seq: i64 },
    /// The entry holds no stored row's hash, so it cannot be checked against the event store.
    /// The projector refuses such events; an entry like this was written another way.
    NoEventHash { seq: i64 },
    /// An audited event is no longer in the event store, or is there with another hash.
    StoreRowChanged {
        seq: i64,
        aggregate: String,
        sequence: i64,
        missing: bool,
    },
    /// An event the audit log has passed (at or before its checkpoint) has no entry.
    Unaudited { aggregate: String, sequence: i64 },
    /// The entry verifies only with a previous audit key (its id), after that key's
    /// retirement.
    RetiredKey { seq: i64, kid: String },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlteredOrInserted { seq } => {
                write!(f, "audit_log seq {seq}: altered or inserted")
            }
            Self::RetiredKey { seq, kid } => write!(
                f,
                "audit_log seq {seq}: hashed with the audit key {kid} after its retirement"
            ),
            Self::Deleted { from, to } if from == to => write!(f, "audit_log seq {from}: deleted"),
            Self::Deleted { from, to } => write!(f, "audit_log seq {from}-{to}: deleted"),
            Self::HeadMismatch { head_seq, last_seq } => write!(
                f,
                "audit_log: chain head says seq {head_seq} but the last entry is {last_seq}: entries after it deleted, or the head altered"
            ),
            Self::NoEventHash { seq } => write!(
                f,
                "audit_log seq {seq}: no event hash to check against the event store"
            ),
            Self::StoreRowChanged {
                seq,
                aggregate,
                sequence,
                missing,
            } => write!(
                f,
                "events {aggregate} sequence {sequence}: {} (audited as audit_log seq {seq})",
                if *missing { "deleted" } else { "altered" }
            ),
            Self::Unaudited {
                aggregate,
                sequence,
            } => write!(
                f,
                "events {aggregate} sequence {sequence}: not in the audit log"
            ),
        }
    }
}

/// What [`verify`] looked at and found.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub entries: u64,
    pub findings: Vec<Finding>,
    /// The entries only a previous key verified.
    pub keys: KeyUses,
}

/// Recomputes the audit log's chain, and checks every audited event against the event store.
///
/// # Errors
///
/// The database error.
pub async fn verify(
    pool: &PgPool,
    chain: &ChainKey,
    retired: &[Retirement],
) -> Result<Verification, sqlx::Error> {
    let mut result = Verification::default();
    let chain_id: uuid::Uuid =
        sqlx::query_scalar("SELECT chain_id FROM projections.audit_chain_head")
            .fetch_one(pool)
            .await?;
    let mut previous: Vec<u8> = Vec::new();
    let mut expected = 1_i64;
    {
        let mut rows = sqlx::query(
            "SELECT a.seq, a.entry_id, a.kind, a.recorded_at, a.patient_id, a.user_id, a.action,
                    a.detail, a.event_hash, a.hash,
                    e.aggregate_type AS store_type, e.hash AS store_hash,
                    (e.aggregate_id IS NOT NULL) AS in_store
               FROM projections.audit_log a
               LEFT JOIN events e
                 ON e.aggregate_type = CASE a.kind WHEN 'access' THEN 'Access'
                                       ELSE coalesce(a.detail->>'aggregate_type', 'Patient') END
                AND e.aggregate_id = CASE a.kind WHEN 'access' THEN a.detail->>'entry_id'
                                                 ELSE a.detail->>'aggregate_id' END
                AND e.sequence = CASE a.kind WHEN 'access' THEN 1
                                             ELSE (a.detail->>'sequence')::bigint END
              ORDER BY a.seq",
        )
        .fetch(pool);
        while let Some(row) = rows.try_next().await? {
            let entry = decode(&row)?;
            result.entries += 1;
            if entry.seq != expected {
                result.findings.push(Finding::Deleted {
                    from: expected,
                    to: entry.seq - 1,
                });
            } else {
                match entry.linked_by(chain, &previous) {
                    None => result
                        .findings
                        .push(Finding::AlteredOrInserted { seq: entry.seq }),
                    Some(index) => {
                        // A retirement vouches for the entries of the chain it was made on.
                        let covers = |r: &Retirement| {
                            r.audit_chain_id == chain_id && entry.seq <= r.last_audit_seq
                        };
                        if let Some(kid) =
                            result
                                .keys
                                .record((chain, index), entry.seq, retired, covers)
                        {
                            result.findings.push(Finding::RetiredKey {
                                seq: entry.seq,
                                kid,
                            });
                        }
                    }
                }
            }
            let in_store: bool = row.try_get("in_store")?;
            let store_hash: Option<Vec<u8>> = row.try_get("store_hash")?;
            if entry.event_hash.is_none() {
                // Not a pass: an entry that cannot be cross-checked is a finding of its own.
                result
                    .findings
                    .push(Finding::NoEventHash { seq: entry.seq });
            } else if !in_store || store_hash != entry.event_hash {
                let (aggregate, sequence) = if entry.kind == "access" {
                    (format!("Access/{}", entry.entry_id), 1)
                } else {
                    (
                        format!(
                            "{}/{}",
                            entry.detail["aggregate_type"].as_str().unwrap_or("Patient"),
                            entry.detail["aggregate_id"].as_str().unwrap_or_default()
                        ),
                        entry.detail["sequence"].as_i64().unwrap_or_default(),
                    )
                };
                result.findings.push(Finding::StoreRowChanged {
                    seq: entry.seq,
                    aggregate,
                    sequence,
                    missing: !in_store,
                });
            }
            previous = entry.hash;
            expected = entry.seq + 1;
        }
    }
    let (head_seq, head_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM projections.audit_chain_head")
            .fetch_one(pool)
            .await?;
    if head_seq != expected - 1 || head_hash != previous {
        result.findings.push(Finding::HeadMismatch {
            head_seq,
            last_seq: expected - 1,
        });
    }
    result.findings.extend(unaudited(pool).await?);
    Ok(result)
}

/// Events of the store the audit log has passed but holds no entry for, in stream order. Passed
/// means at or before the audit log's stream checkpoint when it is fed from the event store,
/// else at or before the newest event it audited (fed from Kafka, events in flight on other
/// partitions come after it once the service is quiet).
///
/// # Errors
///
/// The database error.
async fn unaudited(pool: &PgPool) -> Result<Vec<Finding>, sqlx::Error> {
    let checkpoint: Option<(i64, i64)> = sqlx::query_as(
        "SELECT transaction_id, position FROM projections.stream_checkpoints
          WHERE projector = 'audit_log'",
    )
    .fetch_optional(pool)
    .await?;
    let (transaction_id, position) = match checkpoint {
        Some((transaction_id, position)) => (Some(transaction_id), position),
        None => {
            let newest: Option<i64> = sqlx::query_scalar(
                "SELECT max((detail->>'position')::bigint) FROM projections.audit_log
                  WHERE kind = 'event'",
            )
            .fetch_one(pool)
            .await?;
            (None, newest.unwrap_or(0))
        }
    };
    // Two anti-joins on plain equalities (events, then access entries), so each can be hashed.
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence FROM (
             SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.transaction_id, e.position
               FROM events e
               LEFT JOIN projections.audit_log a
                 ON a.kind = 'event'
                AND a.detail->>'aggregate_type' = e.aggregate_type
                AND a.detail->>'aggregate_id' = e.aggregate_id
                AND (a.detail->>'sequence')::bigint = e.sequence
              WHERE e.aggregate_type <> 'Access' AND a.seq IS NULL
             UNION ALL
             SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.transaction_id, e.position
               FROM events e
               LEFT JOIN projections.audit_log a
                 ON a.kind = 'access' AND a.detail->>'entry_id' = e.aggregate_id
              WHERE e.aggregate_type = 'Access' AND a.seq IS NULL
         ) e
         WHERE CASE WHEN $1::bigint IS NULL THEN e.position <= $2
                    ELSE (e.transaction_id::text::bigint, e.position) <= ($1::bigint, $2) END
         ORDER BY e.transaction_id, e.position",
    )
    .bind(transaction_id)
    .bind(position)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(aggregate_type, aggregate_id, sequence)| Finding::Unaudited {
                aggregate: format!("{aggregate_type}/{aggregate_id}"),
                sequence,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use schemas::envelope::event_id;

    use super::*;

    fn access_entry(event_hash: Option<&str>) -> PublishedEvent {
        PublishedEvent {
            id: event_id("Access", "e1", 1),
            event_type: schemas::access::v1::ACCESS_RECORDED.into(),
            major_version: 1,
            time: DateTime::UNIX_EPOCH,
            subject: "e1".into(),
            sequence: 1,
            position: 1,
            epoch: 0,
            request_id: None,
            traceparent: None,
            user_id: Some("u-1".into()),
            event_hash: event_hash.map(str::to_owned),
            sealed: false,
            data: b"{}".to_vec(),
        }
    }

    #[test]
    fn an_entry_without_ce_eventhash_is_refused_not_written_unchecked() {
        let err = carried_event_hash(&access_entry(None)).unwrap_err();
        assert!(err.is_unusable());
        assert_eq!(err.reason(), "unverified");
        assert!(err.to_string().contains("no ce_eventhash"), "{err}");
    }

    #[test]
    fn an_entry_with_a_malformed_ce_eventhash_is_refused() {
        let err = carried_event_hash(&access_entry(Some("not hex"))).unwrap_err();
        assert_eq!(err.reason(), "unverified");
    }

    #[test]
    fn the_carried_ce_eventhash_is_decoded_for_the_cross_check() {
        assert_eq!(
            carried_event_hash(&access_entry(Some("00ff"))).unwrap(),
            vec![0x00, 0xff]
        );
    }

    #[test]
    fn an_entry_that_cannot_be_cross_checked_is_a_finding_of_its_own() {
        assert_eq!(
            Finding::NoEventHash { seq: 7 }.to_string(),
            "audit_log seq 7: no event hash to check against the event store"
        );
    }
}
