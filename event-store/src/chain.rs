//! Tamper evidence: every stored event carries an HMAC-SHA256 that commits to the event and to
//! the hash of the event before it in its aggregate's stream.
//!
//! The hash is computed by the service when it writes the event, with a key from configuration
//! that the database never sees. Whoever can write to the database can change, remove or add a
//! row, but cannot give it a hash that verifies: [`verify_events`] recomputes every stream and
//! names the first row that does not fit.

use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{PgPool, Row};
use zeroize::Zeroizing;

/// The secret key of the hash chains.
#[derive(Clone)]
pub struct ChainKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(<secret>)")
    }
}

impl ChainKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The link after `previous` (empty for the first) committing to `fields`, each
    /// length-prefixed so no two different field lists hash alike.
    pub fn link(&self, previous: &[u8], fields: &[&[u8]]) -> Vec<u8> {
        self.mac(previous, fields).finalize().into_bytes().to_vec()
    }

    /// Whether `mac` is [`ChainKey::link`] of `previous` and `fields`, compared in constant
    /// time.
    pub fn verifies_link(&self, previous: &[u8], fields: &[&[u8]], mac: &[u8]) -> bool {
        self.mac(previous, fields).verify_slice(mac).is_ok()
    }

    /// The MAC state after `previous` and `fields`, each length-prefixed.
    fn mac(&self, previous: &[u8], fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in std::iter::once(previous).chain(fields.iter().copied()) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

/// JSON with object keys sorted and no whitespace: the same bytes for the same value, however
/// the database stored and returned it.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(key).unwrap_or_default());
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
    }
}

/// The columns of an event row that its hash commits to.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a serde_json::Value,
    pub metadata: &'a serde_json::Value,
}

impl ChainKey {
    /// The hash of an event row following the row hashed `previous` (empty for sequence 1).
    pub fn event_hash(&self, previous: &[u8], event: EventFields<'_>) -> Vec<u8> {
        self.event_mac(previous, event)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `hash` is the hash of the row `event` after `previous`, compared in constant
    /// time.
    pub fn verifies(&self, previous: &[u8], event: EventFields<'_>, hash: &[u8]) -> bool {
        self.event_mac(previous, event).verify_slice(hash).is_ok()
    }

    fn event_mac(&self, previous: &[u8], event: EventFields<'_>) -> Hmac<Sha256> {
        self.mac(
            previous,
            &[
                event.aggregate_type.as_bytes(),
                event.aggregate_id.as_bytes(),
                event.sequence.to_string().as_bytes(),
                event.event_type.as_bytes(),
                event.event_version.as_bytes(),
                &canonical_json(event.payload),
                &canonical_json(event.metadata),
            ],
        )
    }
}

/// What is wrong with a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tampering {
    /// The row's content or hash does not match what was written: changed after the fact, or
    /// put there by someone without the key.
    AlteredOrInserted,
    /// Rows are missing before this one: sequences `from..=to` were deleted.
    Deleted { from: u64, to: u64 },
    /// The payload is in the clear where the service only ever stores sealed payloads.
    Unsealed,
}

/// One row that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub tampering: Tampering,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            aggregate_type,
            aggregate_id,
            sequence,
            ..
        } = self;
        match self.tampering {
            Tampering::AlteredOrInserted => write!(
                f,
                "events {aggregate_type}/{aggregate_id} sequence {sequence}: altered or inserted"
            ),
            Tampering::Deleted { from, to } if from == to => write!(
                f,
                "events {aggregate_type}/{aggregate_id} sequence {from}: deleted"
            ),
            Tampering::Deleted { from, to } => write!(
                f,
                "events {aggregate_type}/{aggregate_id} sequences {from}-{to}: deleted"
            ),
            Tampering::Unsealed => write!(
                f,
                "events {aggregate_type}/{aggregate_id} sequence {sequence}: unsealed payload"
            ),
        }
    }
}

/// What [`verify_events`] looked at and found.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub rows: u64,
    pub streams: u64,
    pub findings: Vec<Finding>,
}

/// Recomputes the hash chain of every stream in the event store.
///
/// # Errors
///
/// The database error, when reading fails.
pub async fn verify_events(pool: &PgPool, key: &ChainKey) -> Result<Verification, sqlx::Error> {
    let mut rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, hash
           FROM events
          ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .fetch(pool);
    let mut result = Verification::default();
    let mut stream: Option<(String, String)> = None;
    let mut previous: Vec<u8> = Vec::new();
    let mut expected = 1_u64;
    while let Some(row) = rows.try_next().await? {
        let aggregate_type: String = row.try_get("aggregate_type")?;
        let aggregate_id: String = row.try_get("aggregate_id")?;
        let sequence = row.try_get::<i64, _>("sequence")?.max(0) as u64;
        let hash: Option<Vec<u8>> = row.try_get("hash")?;
        let this_stream = (aggregate_type, aggregate_id);
        if stream.as_ref() != Some(&this_stream) {
            result.streams += 1;
            previous.clear();
            expected = 1;
            stream = Some(this_stream.clone());
        }
        result.rows += 1;
        let finding = |tampering| Finding {
            aggregate_type: this_stream.0.clone(),
            aggregate_id: this_stream.1.clone(),
            sequence,
            tampering,
        };
        if sequence != expected {
            result.findings.push(finding(Tampering::Deleted {
                from: expected,
                to: sequence.saturating_sub(1),
            }));
        } else {
            let payload: serde_json::Value = row.try_get("payload")?;
            let metadata: serde_json::Value = row.try_get("metadata")?;
            let event_type: String = row.try_get("event_type")?;
            let event_version: String = row.try_get("event_version")?;
            let recomputed = key.event_hash(
                &previous,
                EventFields {
                    aggregate_type: &this_stream.0,
                    aggregate_id: &this_stream.1,
                    sequence,
                    event_type: &event_type,
                    event_version: &event_version,
                    payload: &payload,
                    metadata: &metadata,
                },
            );
            if hash.as_deref() != Some(recomputed.as_slice()) {
                result.findings.push(finding(Tampering::AlteredOrInserted));
            }
        }
        // Later rows are checked against what is stored, so each finding is a root cause.
        previous = hash.unwrap_or_default();
        expected = sequence + 1;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"y":2,"x":1}],"c":"é"}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&a)).unwrap(),
            r#"{"a":{"c":"é","d":[1,{"x":1,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn a_link_commits_to_its_predecessor_and_every_field() {
        let key = ChainKey::new([3; 32]);
        let base = key.link(b"prev", &[b"a", b"b"]);
        assert_ne!(base, key.link(b"other", &[b"a", b"b"]));
        assert_ne!(base, key.link(b"prev", &[b"a", b"c"]));
        // Field boundaries count: "ab" + "" is not "a" + "b".
        assert_ne!(base, key.link(b"prev", &[b"ab", b""]));
        assert_ne!(base, ChainKey::new([4; 32]).link(b"prev", &[b"a", b"b"]));
    }
}
