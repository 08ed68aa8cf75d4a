//! The committed events in a gap-free global order.
//!
//! Identity positions are taken at INSERT but become visible at COMMIT, so a reader that asks
//! for "position > last" skips a row whose transaction commits after a later one. This stream
//! reads only rows whose writing transaction is below the oldest transaction still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`): those have all ended, nothing can join them, and
//! ordering them by (transaction id, position) gives an order that only ever grows at the end.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::sealed::DataKey;
use sqlx::{PgExecutor, Row};

use crate::keys::{KeyError, KeyStore};

/// A place in the stream: everything at or before it has been read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub transaction_id: u64,
    pub position: i64,
}

/// One committed event as stored.
#[derive(Clone)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub position: i64,
    pub transaction_id: u64,
    pub recorded_at: DateTime<Utc>,
    /// The store's epoch the event was written in: 0 until the store's first restore
    /// (`store_epochs`); it enters the published identity.
    pub epoch: u32,
    /// The row's link in its stream's hash chain ([`crate::chain`]).
    pub hash: Option<Vec<u8>>,
}

impl std::fmt::Debug for StoredEvent {
    // The payload holds patient data: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredEvent")
            .field("aggregate_type", &self.aggregate_type)
            .field("aggregate_id", &self.aggregate_id)
            .field("sequence", &self.sequence)
            .field("event_type", &self.event_type)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl Cursor {
    /// A cursor from a transaction id read as text (as `transaction_id::text` gives it: an
    /// `xid8` does not decode as a number) and a position.
    ///
    /// # Errors
    ///
    /// [`sqlx::Error::Decode`] when the text is not a transaction id.
    pub fn parse(transaction_id: &str, position: i64) -> Result<Self, sqlx::Error> {
        Ok(Self {
            transaction_id: transaction_id
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            position,
        })
    }
}

/// The place of the newest event stored (committed and visible now), or `None` when there is
/// none: where a reader that must not react to the past starts, or up to where one that must
/// take in everything stored reads.
///
/// # Errors
///
/// The database error.
pub async fn newest<'e>(executor: impl PgExecutor<'e>) -> Result<Option<Cursor>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(
        // Ordered by the column, not by its text (an output column named like it would be
        // sorted as text: '9994' after '10000').
        "SELECT transaction_id::text AS xid, position FROM events
          ORDER BY events.transaction_id DESC, events.position DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    row.map(|(transaction_id, position)| Cursor::parse(&transaction_id, position))
        .transpose()
}

impl StoredEvent {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }

    /// Whether the payload is still sealed: after [`open`], that means its key was destroyed
    /// (the patient was forgotten) and it can never be read.
    pub fn is_sealed(&self) -> bool {
        crate::repository::is_sealed(&self.payload)
    }

    /// A metadata entry written with the command (`user_id`, `request_id`, `traceparent`).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(serde_json::Value::as_str)
    }

    /// The id of the data key this event is sealed with: the patient the aggregate is about
    /// ([`crate::repository::DATA_KEY_OWNER`] in its metadata), else the aggregate itself.
    pub fn key_owner(&self) -> &str {
        self.metadata(crate::repository::DATA_KEY_OWNER)
            .unwrap_or(&self.aggregate_id)
    }
}

/// Reads up to `limit` committed events after `after`, in stream order.
///
/// # Errors
///
/// The database error, when the query fails.
#[tracing::instrument(skip_all, fields(after_position = after.position, limit))]
pub async fn read_after<'e>(
    executor: impl PgExecutor<'e>,
    after: Cursor,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, position, transaction_id::text AS xid, recorded_at, hash,
                (SELECT max(s.epoch) FROM store_epochs s WHERE s.from_position <= events.position) AS epoch
           FROM events
          WHERE (transaction_id, position) > ($1::text::xid8, $2)
            AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY transaction_id, position
          LIMIT $3",
    )
    .bind(after.transaction_id.to_string())
    .bind(after.position)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(decode_row).collect()
}

/// Whether events are committed after `after` that [`read_after`] cannot return yet, because
/// an older transaction (anywhere in the cluster) is still running. A reader seeing this should
/// look again shortly: no commit notification will tell it when that transaction ends.
///
/// # Errors
///
/// The database error, when the query fails.
pub async fn is_held_back<'e>(
    executor: impl PgExecutor<'e>,
    after: Cursor,
) -> Result<bool, sqlx::Error> {
    // Ordered and limited as the commit-order index is: within `EXISTS` the planner drops the
    // order and scans the whole table, which costs in proportion to the store on every idle
    // poll of every reader.
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM events WHERE (transaction_id, position) > ($1::text::xid8, $2)
          ORDER BY transaction_id, position LIMIT 1",
    )
    .bind(after.transaction_id.to_string())
    .bind(after.position)
    .fetch_optional(executor)
    .await?;
    Ok(found.is_some())
}

/// Every committed event of one aggregate, in sequence order: its history, for auditors and
/// for reading a record as it was.
///
/// # Errors
///
/// The database error, when the query fails.
#[tracing::instrument(skip_all, fields(aggregate_id))]
pub async fn history<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, position, transaction_id::text AS xid, recorded_at, hash,
                (SELECT max(s.epoch) FROM store_epochs s WHERE s.from_position <= events.position) AS epoch
           FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
          ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(executor)
    .await?;
    rows.iter().map(decode_row).collect()
}

/// Checks one aggregate's [`history`] as a load does ([`crate::repository::check_stream`]).
///
/// # Errors
///
/// The first row that does not verify.
pub fn check_history(
    chain: &crate::chain::ChainKey,
    events: &[StoredEvent],
) -> Result<(), crate::chain::Finding> {
    crate::repository::check_stream(
        chain,
        events.iter().map(|e| {
            (
                crate::chain::EventFields {
                    aggregate_type: &e.aggregate_type,
                    aggregate_id: &e.aggregate_id,
                    sequence: e.sequence,
                    event_type: &e.event_type,
                    event_version: &e.event_version,
                    payload: &e.payload,
                    metadata: &e.metadata,
                },
                e.hash.as_deref(),
            )
        }),
    )
}

/// The events of a batch read by [`read_after`] that the service did not write, by index, with
/// what is wrong: each must pass [`crate::repository::check_link`] against the stored hash of
/// the event before it in its aggregate (in the batch, or read from the table in one query).
/// The relay never publishes such an event and stream-fed projectors park it, so a row
/// inserted without the audit key reaches no topic and no read model.
///
/// # Errors
///
/// The database error.
pub async fn unverified<'e>(
    executor: impl PgExecutor<'e>,
    chain: &crate::chain::ChainKey,
    events: &[StoredEvent],
) -> Result<Vec<(usize, crate::chain::Finding)>, sqlx::Error> {
    type Link = (String, String, u64);
    let mut hashes: HashMap<Link, Option<Vec<u8>>> = events
        .iter()
        .map(|e| {
            let link = (e.aggregate_type.clone(), e.aggregate_id.clone(), e.sequence);
            (link, e.hash.clone())
        })
        .collect();
    let missing: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| {
            e.sequence > 1
                && !hashes.contains_key(&(
                    e.aggregate_type.clone(),
                    e.aggregate_id.clone(),
                    e.sequence - 1,
                ))
        })
        .collect();
    if !missing.is_empty() {
        let rows: Vec<(String, String, i64, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash
               FROM events e
               JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS k(t, i, s)
                 ON e.aggregate_type = k.t AND e.aggregate_id = k.i AND e.sequence = k.s",
        )
        .bind(
            missing
                .iter()
                .map(|e| e.aggregate_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            missing
                .iter()
                .map(|e| e.aggregate_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            missing
                .iter()
                .map(|e| e.sequence as i64 - 1)
                .collect::<Vec<_>>(),
        )
        .fetch_all(executor)
        .await?;
        for (aggregate_type, aggregate_id, sequence, hash) in rows {
            hashes.insert((aggregate_type, aggregate_id, sequence.max(0) as u64), hash);
        }
    }
    let mut findings = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let finding = |tampering| crate::chain::Finding {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            tampering,
        };
        let previous = if event.sequence <= 1 {
            Some(Vec::new())
        } else {
            let link = (
                event.aggregate_type.clone(),
                event.aggregate_id.clone(),
                event.sequence - 1,
            );
            hashes.get(&link).map(|h| h.clone().unwrap_or_default())
        };
        let Some(previous) = previous else {
            findings.push((
                index,
                finding(crate::chain::Tampering::Deleted {
                    from: event.sequence - 1,
                    to: event.sequence - 1,
                }),
            ));
            continue;
        };
        let fields = crate::chain::EventFields {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
        };
        if let Err(tampering) =
            crate::repository::check_link(chain, &previous, fields, event.hash.as_deref())
        {
            findings.push((index, finding(tampering)));
        }
    }
    Ok(findings)
}

fn decode_row(row: &sqlx::postgres::PgRow) -> Result<StoredEvent, sqlx::Error> {
    // Read as text under another name: `ORDER BY transaction_id` must mean the xid8 column, not
    // its text (where "1000" sorts before "999").
    let transaction_id: String = row.try_get("xid")?;
    let sequence: i64 = row.try_get("sequence")?;
    Ok(StoredEvent {
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: u64::try_from(sequence).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        position: row.try_get("position")?,
        transaction_id: transaction_id
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        recorded_at: row.try_get("recorded_at")?,
        epoch: row
            .try_get::<Option<i32>, _>("epoch")?
            .map_or(0, |e| u32::try_from(e).unwrap_or(0)),
        hash: row.try_get("hash")?,
    })
}

/// Opens the sealed payloads of `events` in place with their data keys ([`StoredEvent::key_owner`]),
/// and returns those keys by owner. Events of forgotten aggregates stay sealed.
///
/// # Errors
///
/// [`KeyError`] when the key store fails; [`KeyError::Unwrap`] also when a payload does not
/// open with its key (it was altered).
pub async fn open<'e>(
    keys: &KeyStore,
    executor: impl PgExecutor<'e>,
    events: &mut [StoredEvent],
) -> Result<HashMap<String, DataKey>, KeyError> {
    let mut ids: Vec<String> = events
        .iter()
        .filter(|e| e.is_sealed())
        .map(|e| e.key_owner().to_owned())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let found = keys.data_keys(executor, &ids).await?;
    for event in events.iter_mut().filter(|e| e.is_sealed()) {
        if let Some(key) = found.get(event.key_owner()) {
            let opened = crate::repository::open_payload(
                Some(key),
                &event.aggregate_type,
                &event.aggregate_id,
                event.sequence,
                &event.payload,
            )
            .map_err(|_| KeyError::Unwrap(event.aggregate_id.clone()))?;
            if let Some(payload) = opened {
                event.payload = payload;
            }
        }
    }
    Ok(found)
}

/// The channel commits of events are notified on ([`crate::bell`]).
pub use crate::bell::COMMIT_CHANNEL;

/// How soon a reader held back by an older transaction looks again.
pub const HELD_BACK_POLL: std::time::Duration = std::time::Duration::from_millis(5);
