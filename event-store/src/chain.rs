//! Tamper evidence: every stored event carries an HMAC-SHA256 that commits to the event and to
//! the hash of the event before it in its aggregate's stream.
//!
//! The hash is computed by the service when it writes the event, with a key from configuration
//! that the database never sees. Whoever can write to the database can change, remove or add a
//! row, but cannot give it a hash that verifies: [`verify_events`] recomputes every stream and
//! names the first row that does not fit.
//!
//! The audit key can be rotated: the active key hashes every new row, and the keys used before
//! it (`security.previous_audit_keys`) still verify the rows they hashed. `keys rotate-audit`
//! then retires each previous key after the last row it hashed ([`Retirement`], signed by the
//! active key), so a previous key that leaks cannot vouch for a row written after its
//! retirement: [`verify_events`] names such a row, and a previous key not retired yet.

use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{PgPool, Row};
use zeroize::Zeroizing;

/// The secret key of the hash chains: the active key, and the keys used before it, which
/// still verify what they hashed.
#[derive(Clone)]
pub struct ChainKey {
    active: Zeroizing<[u8; 32]>,
    previous: Vec<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(<secret>)")
    }
}

impl ChainKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self {
            active: Zeroizing::new(bytes),
            previous: Vec::new(),
        }
    }

    /// This key with `previous` keys, which verify what they hashed but hash nothing new.
    #[must_use]
    pub fn with_previous(mut self, previous: impl IntoIterator<Item = [u8; 32]>) -> Self {
        self.previous = previous.into_iter().map(Zeroizing::new).collect();
        self
    }

    /// Every key: the active one first (index 0), then the previous ones in order.
    fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        std::iter::once(&*self.active).chain(self.previous.iter().map(|k| &**k))
    }

    /// The ids of the previous keys, in order (their indexes are 1, 2, ...).
    pub fn previous_key_ids(&self) -> Vec<String> {
        (1..=self.previous.len())
            .filter_map(|index| self.key_id(index))
            .collect()
    }

    /// The public id of key `index` (0: the active one): hex of 8 bytes of an HMAC with it, so
    /// the id names the key without telling anything of it.
    pub fn key_id(&self, index: usize) -> Option<String> {
        let key = self.keys().nth(index)?;
        let id = Self::mac_with(key, b"patient-service audit key id", &[]).finalize();
        Some(hex::encode(&id.into_bytes()[..8]))
    }

    /// The link after `previous` (empty for the first) committing to `fields`, each
    /// length-prefixed so no two different field lists hash alike, made with the active key.
    pub fn link(&self, previous: &[u8], fields: &[&[u8]]) -> Vec<u8> {
        self.mac(previous, fields).finalize().into_bytes().to_vec()
    }

    /// Whether `mac` is [`ChainKey::link`] of `previous` and `fields` by any of the keys,
    /// compared in constant time.
    pub fn verifies_link(&self, previous: &[u8], fields: &[&[u8]], mac: &[u8]) -> bool {
        self.link_made_by(previous, fields, mac).is_some()
    }

    /// The index of the key that made `mac` as the link of `previous` and `fields`, if any.
    pub fn link_made_by(&self, previous: &[u8], fields: &[&[u8]], mac: &[u8]) -> Option<usize> {
        self.keys().position(|key| {
            Self::mac_with(key, previous, fields)
                .verify_slice(mac)
                .is_ok()
        })
    }

    /// The MAC state of the active key after `previous` and `fields`.
    fn mac(&self, previous: &[u8], fields: &[&[u8]]) -> Hmac<Sha256> {
        Self::mac_with(self.active.as_slice(), previous, fields)
    }

    /// The MAC state of `key` after `previous` and `fields`, each length-prefixed.
    fn mac_with(key: &[u8], previous: &[u8], fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
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

    /// Whether `hash` is the hash of the row `event` after `previous` by any of the keys,
    /// compared in constant time.
    pub fn verifies(&self, previous: &[u8], event: EventFields<'_>, hash: &[u8]) -> bool {
        self.event_hashed_by(previous, event, hash).is_some()
    }

    /// The index of the key that made `hash` as the hash of `event` after `previous`, if any.
    pub fn event_hashed_by(
        &self,
        previous: &[u8],
        event: EventFields<'_>,
        hash: &[u8],
    ) -> Option<usize> {
        let (payload, metadata) = (
            canonical_json(event.payload),
            canonical_json(event.metadata),
        );
        let sequence = event.sequence.to_string();
        self.link_made_by(
            previous,
            &event_fields(event, &sequence, &payload, &metadata),
            hash,
        )
    }

    fn event_mac(&self, previous: &[u8], event: EventFields<'_>) -> Hmac<Sha256> {
        let (payload, metadata) = (
            canonical_json(event.payload),
            canonical_json(event.metadata),
        );
        let sequence = event.sequence.to_string();
        self.mac(
            previous,
            &event_fields(event, &sequence, &payload, &metadata),
        )
    }
}

/// The fields of an event row its hash commits to, in order.
fn event_fields<'a>(
    event: EventFields<'a>,
    sequence: &'a str,
    payload: &'a [u8],
    metadata: &'a [u8],
) -> [&'a [u8]; 7] {
    [
        event.aggregate_type.as_bytes(),
        event.aggregate_id.as_bytes(),
        sequence.as_bytes(),
        event.event_type.as_bytes(),
        event.event_version.as_bytes(),
        payload,
        metadata,
    ]
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
    /// The row verifies only with a previous audit key (its id given), and lies after the
    /// last row that key hashed before it was retired.
    RetiredKey(String),
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
        match &self.tampering {
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
            Tampering::RetiredKey(kid) => write!(
                f,
                "events {aggregate_type}/{aggregate_id} sequence {sequence}: hashed with the audit key {kid} after its retirement"
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
    /// The rows only a previous key verified.
    pub keys: KeyUses,
}

/// The rows (events, or audit log entries) only a previous key verified.
#[derive(Debug, Clone, Default)]
pub struct KeyUses {
    /// Per previous key not retired (by id): the rows it verified and the last one.
    pub unretired: std::collections::BTreeMap<String, KeyUse>,
    /// Rows verified by a previous key within its retirement.
    pub within_retirement: u64,
}

impl KeyUses {
    /// Records the row at `at` (an event's position, an entry's number) that key `index` of
    /// `key` verified. Answers that key's id when its retirement among `retired` does not
    /// cover the row, as `covers` judges: the row is then a finding.
    pub fn record(
        &mut self,
        (key, index): (&ChainKey, usize),
        at: i64,
        retired: &[Retirement],
        covers: impl Fn(&Retirement) -> bool,
    ) -> Option<String> {
        if index == 0 {
            return None;
        }
        let kid = key.key_id(index).unwrap_or_default();
        match retired.iter().find(|r| r.kid == kid) {
            Some(retirement) if !covers(retirement) => Some(kid),
            Some(_) => {
                self.within_retirement += 1;
                None
            }
            None => {
                let using = self.unretired.entry(kid).or_default();
                using.rows += 1;
                using.last = using.last.max(at);
                None
            }
        }
    }
}

/// The rows one key verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUse {
    pub rows: u64,
    /// The position (events) or number (audit log) of the last row.
    pub last: i64,
}

/// A previous audit key retired by `keys rotate-audit`: it vouches only for the event rows up
/// to `last_position` and the audit log entries of chain `audit_chain_id` up to
/// `last_audit_seq`. Signed by the key active then (`successor`), so whoever holds the retired
/// key cannot widen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retirement {
    pub kid: String,
    pub successor: String,
    pub last_position: i64,
    pub audit_chain_id: uuid::Uuid,
    pub last_audit_seq: i64,
}

impl Retirement {
    fn fields(&self) -> [Vec<u8>; 5] {
        [
            self.kid.clone().into_bytes(),
            self.successor.clone().into_bytes(),
            self.last_position.to_string().into_bytes(),
            self.audit_chain_id.as_bytes().to_vec(),
            self.last_audit_seq.to_string().into_bytes(),
        ]
    }
}

const RETIREMENT_CONTEXT: &[u8] = b"patient-service audit key retirement";

/// The retirements of the keys of `key`, each checked: those whose signature is not the
/// named successor's, or that retire the successor itself, are left out and their key ids
/// answered apart.
///
/// # Errors
///
/// The database error.
pub async fn retirements(
    pool: &PgPool,
    key: &ChainKey,
) -> Result<(Vec<Retirement>, Vec<String>), sqlx::Error> {
    let rows: Vec<(String, String, i64, uuid::Uuid, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT kid, successor, last_position, audit_chain_id, last_audit_seq, mac
           FROM audit_key_retirements ORDER BY retired_at",
    )
    .fetch_all(pool)
    .await?;
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for (kid, successor, last_position, audit_chain_id, last_audit_seq, mac) in rows {
        let retirement = Retirement {
            kid,
            successor,
            last_position,
            audit_chain_id,
            last_audit_seq,
        };
        let fields = retirement.fields();
        let signer = key
            .link_made_by(
                RETIREMENT_CONTEXT,
                &fields.each_ref().map(Vec::as_slice),
                &mac,
            )
            .and_then(|index| key.key_id(index));
        if retirement.kid != retirement.successor && signer.as_ref() == Some(&retirement.successor)
        {
            valid.push(retirement);
        } else {
            invalid.push(retirement.kid);
        }
    }
    Ok((valid, invalid))
}

/// Records `retirement`, signed by the active key (which must be its successor).
///
/// # Errors
///
/// The database error; a key already retired is a unique violation.
pub async fn retire(
    pool: &PgPool,
    key: &ChainKey,
    retirement: &Retirement,
) -> Result<(), sqlx::Error> {
    let fields = retirement.fields();
    let mac = key.link(RETIREMENT_CONTEXT, &fields.each_ref().map(Vec::as_slice));
    sqlx::query(
        "INSERT INTO audit_key_retirements
                (kid, successor, last_position, audit_chain_id, last_audit_seq, mac)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&retirement.kid)
    .bind(&retirement.successor)
    .bind(retirement.last_position)
    .bind(retirement.audit_chain_id)
    .bind(retirement.last_audit_seq)
    .bind(mac)
    .execute(pool)
    .await?;
    Ok(())
}

/// Recomputes the hash chain of every stream in the event store. A row verified by a previous
/// key must lie within that key's retirement among `retired`; rows of previous keys not
/// retired are counted per key in [`Verification::unretired`].
///
/// # Errors
///
/// The database error, when reading fails.
pub async fn verify_events(
    pool: &PgPool,
    key: &ChainKey,
    retired: &[Retirement],
) -> Result<Verification, sqlx::Error> {
    let mut rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, hash, position
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
            let fields = EventFields {
                aggregate_type: &this_stream.0,
                aggregate_id: &this_stream.1,
                sequence,
                event_type: &event_type,
                event_version: &event_version,
                payload: &payload,
                metadata: &metadata,
            };
            let position: i64 = row.try_get("position")?;
            match hash
                .as_deref()
                .and_then(|hash| key.event_hashed_by(&previous, fields, hash))
            {
                None => result.findings.push(finding(Tampering::AlteredOrInserted)),
                Some(index) => {
                    if let Some(kid) = result.keys.record((key, index), position, retired, |r| {
                        position <= r.last_position
                    }) {
                        result.findings.push(finding(Tampering::RetiredKey(kid)));
                    }
                }
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
    fn a_rotated_key_hashes_with_the_new_key_and_still_verifies_what_the_old_one_hashed() {
        let old = ChainKey::new([1; 32]);
        let ring = ChainKey::new([2; 32]).with_previous([[1; 32]]);
        let (payload, metadata) = (serde_json::json!({"a": 1}), serde_json::json!({}));
        let row = |sequence| EventFields {
            aggregate_type: "Patient",
            aggregate_id: "p1",
            sequence,
            event_type: "PatientRegistered",
            event_version: "1.0",
            payload: &payload,
            metadata: &metadata,
        };
        let first = old.event_hash(&[], row(1));
        let second = ring.event_hash(&first, row(2));

        assert_eq!(ring.event_hashed_by(&[], row(1), &first), Some(1));
        assert_eq!(ring.event_hashed_by(&first, row(2), &second), Some(0));
        assert_eq!(old.event_hashed_by(&first, row(2), &second), None);
        assert_eq!(ring.key_id(1), old.key_id(0));
        assert_ne!(ring.key_id(0), ring.key_id(1));
        assert_eq!(ring.key_id(2), None);
        assert_eq!(ring.key_id(0).unwrap().len(), 16);
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
