//! The envelope of a published event, in the CloudEvents 1.0 Kafka protocol binding (binary
//! mode): the record value is the event's JSON data, the attributes are headers prefixed `ce_`.
//!
//! | header            | meaning                                                             |
//! |-------------------|---------------------------------------------------------------------|
//! | `ce_specversion`  | `1.0`                                                               |
//! | `ce_id`           | UUID v5 of aggregate type, id, sequence (and epoch): stable across re-sends |
//! | `ce_source`       | [`SOURCE`]                                                          |
//! | `ce_type`         | [`ce_type`] of the event type and version                           |
//! | `ce_time`         | when the event was recorded (RFC 3339)                              |
//! | `ce_subject`      | the aggregate id (also the record key)                              |
//! | `ce_sequence`     | the event's sequence within its aggregate, from 1, without gaps     |
//! | `ce_position`     | the event's position in the store's global order                    |
//! | `ce_requestid`    | the id of the HTTP request that caused it, when there was one       |
//! | `content-type`    | `application/json`, or [`SEALED_CONTENT_TYPE`] for sealed data      |
//! | `ce_userid`       | the user whose command or read caused it                            |
//! | `ce_eventhash`    | hex of the stored row's hash-chain link (tamper evidence)           |
//! | `traceparent`     | W3C trace context of the request that caused it                     |
//! | `ce_epoch`        | the store's epoch, sent only when not 0: see below                  |
//!
//! A consumer drops duplicates by `ce_id`, or by keeping the last (`ce_epoch`, `ce_sequence`)
//! per subject.
//!
//! Epochs: restoring the event store from a backup loses the events written after the backup,
//! some of them already published; the events written after the restore take their sequences
//! again, with other content. Each restore therefore starts a new epoch (1, 2, ...), which
//! enters the `ce_id` of every event written in it ([`event_id_in_epoch`]) and is sent in
//! `ce_epoch`, so one `ce_id` never stands for two contents. Events of epoch 0, the store's
//! life before its first restore, have no `ce_epoch` and keep the ids they always had.
//!
//! Headers are whatever the producer wrote, so a consumer does not take them on trust:
//! [`PublishedEvent::verify`] recomputes the `ce_id` from the type, subject and sequence and
//! checks that the value is sealed exactly when the contract says it is
//! ([`crate::sealed::is_published_in_clear`]); [`PublishedEvent::opened_with`] binds the sealed
//! value to that recomputed identity. Without these, anyone able to produce to a topic could
//! slip a value in the clear past a consumer, or replay an old sealed value at a new sequence
//! so that the genuine event there is then dropped as a duplicate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::sealed::{self, DataKey, OpenError, Sealed, SEALED_CONTENT_TYPE};

pub const SPEC_VERSION: &str = "1.0";
pub const SOURCE: &str = "urn:nextgen-medtech:patient-service";
pub const CONTENT_TYPE: &str = "application/json";

pub const H_SPEC_VERSION: &str = "ce_specversion";
pub const H_ID: &str = "ce_id";
pub const H_SOURCE: &str = "ce_source";
pub const H_TYPE: &str = "ce_type";
pub const H_TIME: &str = "ce_time";
pub const H_SUBJECT: &str = "ce_subject";
pub const H_SEQUENCE: &str = "ce_sequence";
pub const H_POSITION: &str = "ce_position";
pub const H_REQUEST_ID: &str = "ce_requestid";
pub const H_CONTENT_TYPE: &str = "content-type";
pub const H_TRACEPARENT: &str = "traceparent";
pub const H_USER_ID: &str = "ce_userid";
pub const H_EVENT_HASH: &str = "ce_eventhash";
pub const H_EPOCH: &str = "ce_epoch";

const CE_TYPE_PREFIX: &str = "org.nextgen-medtech.patients";

/// Namespace of the UUID v5 event ids.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_5d0e_8a5b_4c55_9f3e_2b1e_7c9a_4d21);

/// The `ce_type` of an event type at a major version:
/// `org.nextgen-medtech.patients.PatientRegistered.v1`.
pub fn ce_type(event_type: &str, major: u32) -> String {
    format!("{CE_TYPE_PREFIX}.{event_type}.v{major}")
}

/// Splits a `ce_type` into event type and major version.
pub fn parse_ce_type(ce_type: &str) -> Option<(&str, u32)> {
    let rest = ce_type.strip_prefix(CE_TYPE_PREFIX)?.strip_prefix('.')?;
    let (event_type, version) = rest.rsplit_once(".v")?;
    Some((event_type, version.parse().ok()?))
}

/// The `ce_id` of an event of epoch 0 (written before the store's first restore, if any): the
/// same for every publication of the same stored event.
pub fn event_id(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> Uuid {
    event_id_in_epoch(aggregate_type, aggregate_id, sequence, 0)
}

/// The `ce_id` of an event written in the store's `epoch` (see the module's documentation): the
/// epoch enters the name for every epoch after 0.
pub fn event_id_in_epoch(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    epoch: u32,
) -> Uuid {
    let name = if epoch == 0 {
        format!("{aggregate_type}/{aggregate_id}/{sequence}")
    } else {
        format!("{aggregate_type}/{aggregate_id}/{sequence}@{epoch}")
    };
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// Why a received event is not the event its headers claim. Messages name ids, types and
/// sequences, never data; strings from headers are cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The `ce_id` is not the id of the type, subject and sequence it came with.
    #[error("ce_id {found} is not the id of {aggregate_type} {subject} sequence {sequence}")]
    WrongId {
        found: Uuid,
        aggregate_type: &'static str,
        subject: String,
        sequence: u64,
    },
    /// A value in the clear where the contract publishes a sealed one.
    #[error("{event_type} {subject} sequence {sequence} is in the clear; it is published sealed")]
    NotSealed {
        event_type: String,
        subject: String,
        sequence: u64,
    },
    /// A sealed value where the contract publishes one in the clear.
    #[error("{event_type} {subject} sequence {sequence} is sealed; it is published in the clear")]
    UnexpectedlySealed {
        event_type: String,
        subject: String,
        sequence: u64,
    },
}

/// At most 64 characters of a header value, for messages: enough for any id, too little to
/// carry data someone put where an id belongs.
fn cut(value: &str) -> String {
    value.chars().take(64).collect()
}

/// One event as a consumer receives it: the CloudEvents attributes and the JSON data.
#[derive(Clone, PartialEq)]
pub struct PublishedEvent {
    pub id: Uuid,
    pub event_type: String,
    pub major_version: u32,
    pub time: DateTime<Utc>,
    pub subject: String,
    pub sequence: u64,
    pub position: i64,
    /// The store's epoch the event was written in: 0 until the store's first restore.
    pub epoch: u32,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    /// The user whose request caused the event.
    pub user_id: Option<String>,
    /// Hex of the stored row's link in its stream's hash chain.
    pub event_hash: Option<String>,
    /// Whether `data` is a [`Sealed`] value rather than the event's JSON, as the
    /// `content-type` header says; [`PublishedEvent::verify`] holds it to the contract.
    pub sealed: bool,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for PublishedEvent {
    // The data holds patient data: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedEvent")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("subject", &self.subject)
            .field("sequence", &self.sequence)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// Why a received record is not a usable event. Messages name headers, never data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    #[error("unsupported event type {0}")]
    UnknownType(String),
    #[error("the data of a {0} event does not match its schema")]
    MalformedData(String),
}

impl PublishedEvent {
    /// The headers of this event, in the order they are sent.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (H_SPEC_VERSION, SPEC_VERSION.to_owned()),
            (H_ID, self.id.to_string()),
            (H_SOURCE, SOURCE.to_owned()),
            (H_TYPE, ce_type(&self.event_type, self.major_version)),
            (
                H_TIME,
                self.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
            (H_SUBJECT, self.subject.clone()),
            (H_SEQUENCE, self.sequence.to_string()),
            (H_POSITION, self.position.to_string()),
            (
                H_CONTENT_TYPE,
                if self.sealed {
                    SEALED_CONTENT_TYPE
                } else {
                    CONTENT_TYPE
                }
                .to_owned(),
            ),
        ];
        if let Some(id) = &self.request_id {
            headers.push((H_REQUEST_ID, id.clone()));
        }
        if let Some(tp) = &self.traceparent {
            headers.push((H_TRACEPARENT, tp.clone()));
        }
        if let Some(user) = &self.user_id {
            headers.push((H_USER_ID, user.clone()));
        }
        if let Some(hash) = &self.event_hash {
            headers.push((H_EVENT_HASH, hash.clone()));
        }
        if self.epoch > 0 {
            headers.push((H_EPOCH, self.epoch.to_string()));
        }
        headers
    }

    /// Rebuilds an event from received headers and the record value.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when a required header is missing or malformed.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        data: &[u8],
    ) -> Result<Self, DecodeError> {
        let mut found: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for (key, value) in headers {
            if let Ok(value) = std::str::from_utf8(value) {
                found.insert(key, value);
            }
        }
        let get = |name: &'static str| {
            found
                .get(name)
                .copied()
                .ok_or(DecodeError::MissingHeader(name))
        };
        let (event_type, major_version) =
            parse_ce_type(get(H_TYPE)?).ok_or(DecodeError::MalformedHeader(H_TYPE))?;
        Ok(Self {
            id: get(H_ID)?
                .parse()
                .map_err(|_| DecodeError::MalformedHeader(H_ID))?,
            event_type: event_type.to_owned(),
            major_version,
            time: DateTime::parse_from_rfc3339(get(H_TIME)?)
                .map_err(|_| DecodeError::MalformedHeader(H_TIME))?
                .with_timezone(&Utc),
            subject: get(H_SUBJECT)?.to_owned(),
            sequence: get(H_SEQUENCE)?
                .parse()
                .map_err(|_| DecodeError::MalformedHeader(H_SEQUENCE))?,
            position: get(H_POSITION)?
                .parse()
                .map_err(|_| DecodeError::MalformedHeader(H_POSITION))?,
            epoch: match found.get(H_EPOCH) {
                None => 0,
                Some(epoch) => epoch
                    .parse()
                    .ok()
                    .filter(|e| *e > 0)
                    .ok_or(DecodeError::MalformedHeader(H_EPOCH))?,
            },
            request_id: found.get(H_REQUEST_ID).map(|s| (*s).to_owned()),
            traceparent: found.get(H_TRACEPARENT).map(|s| (*s).to_owned()),
            user_id: found.get(H_USER_ID).map(|s| (*s).to_owned()),
            event_hash: found.get(H_EVENT_HASH).map(|s| (*s).to_owned()),
            sealed: found.get(H_CONTENT_TYPE).copied() == Some(SEALED_CONTENT_TYPE),
            data: data.to_vec(),
        })
    }

    /// The aggregate type this event belongs to, by its event type.
    pub fn aggregate_type(&self) -> &'static str {
        crate::topics::aggregate_type_of_event_type(&self.event_type)
    }

    /// The id this event must have: [`event_id_in_epoch`] of its aggregate type, subject,
    /// sequence and epoch, recomputed rather than read from `ce_id`.
    pub fn expected_id(&self) -> Uuid {
        event_id_in_epoch(
            self.aggregate_type(),
            &self.subject,
            self.sequence,
            self.epoch,
        )
    }

    /// Checks what the headers claim against the contract: the `ce_id` is the id of the type,
    /// subject and sequence, and the value is sealed unless the event type is published in the
    /// clear. A consumer calls this before using the event, and opens it with
    /// [`PublishedEvent::opened_with`], which binds the sealed value to the same identity.
    ///
    /// # Errors
    ///
    /// [`VerifyError`] naming what does not hold.
    pub fn verify(&self) -> Result<(), VerifyError> {
        if self.id != self.expected_id() {
            return Err(VerifyError::WrongId {
                found: self.id,
                aggregate_type: self.aggregate_type(),
                subject: cut(&self.subject),
                sequence: self.sequence,
            });
        }
        match (sealed::is_published_in_clear(&self.event_type), self.sealed) {
            (false, false) => Err(VerifyError::NotSealed {
                event_type: cut(&self.event_type),
                subject: cut(&self.subject),
                sequence: self.sequence,
            }),
            (true, true) => Err(VerifyError::UnexpectedlySealed {
                event_type: cut(&self.event_type),
                subject: cut(&self.subject),
                sequence: self.sequence,
            }),
            _ => Ok(()),
        }
    }

    /// This event with its data sealed by `key`, bound to its identity
    /// ([`PublishedEvent::expected_id`], which is its `ce_id`).
    #[must_use]
    pub fn sealed_with(mut self, key: &DataKey) -> Self {
        if !self.sealed {
            self.data = sealed::seal(key, self.expected_id().as_bytes(), &self.data).to_json();
            self.sealed = true;
        }
        self
    }

    /// The id of the key that sealed this event's data, if it is sealed.
    pub fn key_id(&self) -> Option<String> {
        self.sealed
            .then(|| Sealed::from_json(&self.data).ok().map(|s| s.kid))
            .flatten()
    }

    /// This event with its data opened by `key`; an event that is not sealed comes back as is.
    /// The associated data is the identity recomputed from type, subject and sequence
    /// ([`PublishedEvent::expected_id`]), never the `ce_id` header: a sealed value moved to
    /// another sequence or aggregate does not open, whatever `ce_id` it is sent with.
    ///
    /// # Errors
    ///
    /// [`OpenError`] when the data is not sealed by `key` for this event, or was altered.
    pub fn opened_with(mut self, key: &DataKey) -> Result<Self, OpenError> {
        if self.sealed {
            let sealed = Sealed::from_json(&self.data)?;
            self.data = sealed::open(key, self.expected_id().as_bytes(), &sealed)?;
            self.sealed = false;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ce_type_round_trips() {
        let t = ce_type("PatientRegistered", 1);
        assert_eq!(t, "org.nextgen-medtech.patients.PatientRegistered.v1");
        assert_eq!(parse_ce_type(&t), Some(("PatientRegistered", 1)));
        assert_eq!(parse_ce_type("com.other.PatientRegistered.v1"), None);
    }

    #[test]
    fn event_id_is_stable_and_distinct_per_sequence() {
        let a = event_id("Patient", "p1", 1);
        assert_eq!(a, event_id("Patient", "p1", 1));
        assert_ne!(a, event_id("Patient", "p1", 2));
    }

    #[test]
    fn headers_round_trip() {
        let event = PublishedEvent {
            id: event_id("Patient", "p1", 3),
            event_type: "PatientArchived".into(),
            major_version: 1,
            time: DateTime::parse_from_rfc3339("2026-11-27T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            subject: "p1".into(),
            sequence: 3,
            position: 99,
            epoch: 0,
            request_id: Some("r-1".into()),
            traceparent: None,
            user_id: Some("u-1".into()),
            event_hash: Some("00ff".into()),
            sealed: false,
            data: b"{}".to_vec(),
        };
        let headers = event.headers();
        let back =
            PublishedEvent::from_headers(headers.iter().map(|(k, v)| (*k, v.as_bytes())), b"{}")
                .unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn sealed_events_say_so_in_their_headers_and_open_with_their_key() {
        let key = DataKey::generate("p1");
        let event = PublishedEvent {
            id: event_id("Patient", "p1", 1),
            event_type: "PatientRegistered".into(),
            major_version: 1,
            time: Utc::now(),
            subject: "p1".into(),
            sequence: 1,
            position: 1,
            epoch: 0,
            request_id: None,
            traceparent: None,
            user_id: Some("u-1".into()),
            event_hash: Some("00ff".into()),
            sealed: false,
            data: br#"{"family":"Doe"}"#.to_vec(),
        };
        let sealed = event.clone().sealed_with(&key);
        assert!(!String::from_utf8_lossy(&sealed.data).contains("Doe"));
        assert_eq!(sealed.key_id().as_deref(), Some("p1"));
        let headers = sealed.headers();
        let received = PublishedEvent::from_headers(
            headers.iter().map(|(k, v)| (*k, v.as_bytes())),
            &sealed.data,
        )
        .unwrap();
        assert!(received.sealed);
        assert_eq!(received.opened_with(&key).unwrap().data, event.data);
    }

    fn registered(sequence: u64) -> PublishedEvent {
        PublishedEvent {
            id: event_id("Patient", "p1", sequence),
            event_type: "PatientRegistered".into(),
            major_version: 1,
            time: Utc::now(),
            subject: "p1".into(),
            sequence,
            position: 1,
            epoch: 0,
            request_id: None,
            traceparent: None,
            user_id: None,
            event_hash: Some("00ff".into()),
            sealed: false,
            data: br#"{"family":"Doe"}"#.to_vec(),
        }
    }

    #[test]
    fn a_sealed_event_with_its_own_identity_verifies() {
        let key = DataKey::generate("p1");
        let event = registered(1).sealed_with(&key);
        assert_eq!(event.verify(), Ok(()));
        assert_eq!(event.opened_with(&key).unwrap().data, registered(1).data);
    }

    #[test]
    fn a_ce_id_that_is_not_the_id_of_type_subject_and_sequence_does_not_verify() {
        let key = DataKey::generate("p1");
        let mut event = registered(1).sealed_with(&key);
        event.sequence = 2;
        let err = event.verify().unwrap_err();
        assert!(
            matches!(err, VerifyError::WrongId { sequence: 2, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("Doe"));
    }

    #[test]
    fn an_old_sealed_value_replayed_at_a_new_sequence_with_a_recomputed_ce_id_does_not_open() {
        // Arrange: the attacker copies sequence 1's sealed value and gives it the ce_id of 2.
        let key = DataKey::generate("p1");
        let old = registered(1).sealed_with(&key);
        let mut replayed = old.clone();
        replayed.sequence = 2;
        replayed.id = event_id("Patient", "p1", 2);

        // Act
        let verified = replayed.verify();
        let opened = replayed.opened_with(&key);

        // Assert: the headers agree with each other, but the value is bound to sequence 1.
        assert_eq!(verified, Ok(()));
        assert_eq!(opened.unwrap_err(), OpenError::Tampered);
    }

    #[test]
    fn opening_binds_to_the_recomputed_identity_not_the_ce_id_header() {
        // Arrange: sealed for sequence 2, then sent as sequence 1 with 2's ce_id kept.
        let key = DataKey::generate("p1");
        let mut moved = registered(2).sealed_with(&key);
        moved.sequence = 1;

        // Act
        let opened = moved.opened_with(&key);

        // Assert
        assert_eq!(opened.unwrap_err(), OpenError::Tampered);
    }

    #[test]
    fn a_value_in_the_clear_where_a_sealed_one_is_due_does_not_verify() {
        let err = registered(1).verify().unwrap_err();
        assert!(matches!(err, VerifyError::NotSealed { .. }), "{err}");
        assert!(!err.to_string().contains("Doe"));
    }

    #[test]
    fn erasure_and_access_entries_verify_in_the_clear_and_not_sealed() {
        let key = DataKey::generate("p1");
        for (aggregate_type, event_type) in [
            ("Patient", "PatientForgotten"),
            ("Access", crate::access::v1::ACCESS_RECORDED),
        ] {
            let event = PublishedEvent {
                id: event_id(aggregate_type, "p1", 1),
                event_type: event_type.into(),
                data: b"{}".to_vec(),
                ..registered(1)
            };
            assert_eq!(event.verify(), Ok(()), "{event_type}");
            let err = event.sealed_with(&key).verify().unwrap_err();
            assert!(
                matches!(err, VerifyError::UnexpectedlySealed { .. }),
                "{event_type}: {err}"
            );
        }
    }

    #[test]
    fn an_epoch_enters_the_identity_and_travels_in_ce_epoch() {
        assert_eq!(
            event_id_in_epoch("Patient", "p1", 2, 0),
            event_id("Patient", "p1", 2)
        );
        let after_restore = event_id_in_epoch("Patient", "p1", 2, 1);
        assert_ne!(after_restore, event_id("Patient", "p1", 2));
        assert_ne!(after_restore, event_id_in_epoch("Patient", "p1", 2, 2));

        let key = DataKey::generate("p1");
        let event = PublishedEvent {
            id: after_restore,
            epoch: 1,
            ..registered(2)
        }
        .sealed_with(&key);
        let headers = event.headers();
        assert!(headers.contains(&(H_EPOCH, "1".to_owned())));
        let received = PublishedEvent::from_headers(
            headers.iter().map(|(k, v)| (*k, v.as_bytes())),
            &event.data,
        )
        .unwrap();
        assert_eq!(received.epoch, 1);
        assert_eq!(received.verify(), Ok(()));
        assert!(received.clone().opened_with(&key).is_ok());
        // Epoch 0 sends no header; a record claiming epoch 0 or garbage is malformed.
        assert!(registered(2).headers().iter().all(|(k, _)| *k != H_EPOCH));
        for bad in ["0", "x", "-1"] {
            let mut forged = headers.clone();
            forged.retain(|(k, _)| *k != H_EPOCH);
            forged.push((H_EPOCH, bad.to_owned()));
            let err = PublishedEvent::from_headers(
                forged.iter().map(|(k, v)| (*k, v.as_bytes())),
                &event.data,
            )
            .unwrap_err();
            assert_eq!(err, DecodeError::MalformedHeader(H_EPOCH), "{bad}");
        }
        // The sealed value of epoch 1 does not pass as the epoch-0 event at that sequence.
        let mut moved = received;
        moved.epoch = 0;
        moved.id = event_id("Patient", "p1", 2);
        assert!(moved.opened_with(&key).is_err());
    }

    #[test]
    fn header_values_in_verify_errors_are_cut_short() {
        let mut event = registered(1);
        event.subject = "x".repeat(1000);
        let err = event.verify().unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn a_record_without_ce_type_is_rejected() {
        let err = PublishedEvent::from_headers([(H_ID, b"x".as_slice())], b"{}").unwrap_err();
        assert_eq!(err, DecodeError::MissingHeader(H_TYPE));
    }
}
