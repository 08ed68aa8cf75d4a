//! Sealed data: patient data encrypted with that patient's data key.
//!
//! Every event is published sealed except those [`is_published_in_clear`] names (the event
//! types of [`CLEAR_EVENT_TYPES`] and every event of [`CLEAR_TOPICS`]): the record value is a
//! [`Sealed`] JSON object instead of the event's JSON, and the `content-type` header is
//! [`SEALED_CONTENT_TYPE`]. Opening it gives exactly the bytes the event's JSON Schema
//! describes. Whether a value is sealed is the contract's to say, not the header's: a consumer
//! refuses a value in the clear where a sealed one is due, whatever its `content-type`.
//!
//! - Algorithm: AES-256-GCM ([`ALGORITHM`]), a fresh random 96-bit nonce per seal.
//! - Key: the patient's 256-bit data key; `kid` names it (the patient id). Downstream services
//!   with the `service` role fetch it from `GET /v1/patients/{id}/data-key` (an audited read).
//!   After the patient is forgotten the key no longer exists anywhere and the data stays
//!   unreadable for good (crypto-shredding).
//! - Associated data: the 16 bytes of the event's id, [`crate::envelope::event_id`] of its
//!   aggregate type, subject and sequence (which the `ce_id` of a genuine event equals), so a
//!   sealed value cannot be moved to another event undetected. A consumer recomputes that id
//!   rather than reading it from `ce_id` ([`crate::PublishedEvent::opened_with`]).
//! - `nonce` and `ciphertext` (which ends with the 16-byte tag) are standard base64, padded.
//!
//! ```
//! use schemas::sealed::{self, DataKey};
//! let key = DataKey::new("patient-1", [7; 32]);
//! let event_id = uuid::Uuid::nil();
//! let sealed = sealed::seal(&key, event_id.as_bytes(), b"{\"family\":\"Doe\"}");
//! assert_eq!(sealed::open(&key, event_id.as_bytes(), &sealed).unwrap(), b"{\"family\":\"Doe\"}");
//! ```

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The only algorithm: AES-256-GCM.
pub const ALGORITHM: &str = "A256GCM";

/// The `content-type` header of a record whose value is [`Sealed`].
pub const SEALED_CONTENT_TYPE: &str = "application/vnd.nextgen-medtech.sealed+json";

/// Event types published (and stored) in the clear on topics whose other events are sealed:
/// they carry ids and codes only, and must stay readable after the patient's key is destroyed.
pub const CLEAR_EVENT_TYPES: &[&str] = &["PatientForgotten"];

/// Topics every event of which is published in the clear: access entries hold ids and codes
/// only, and are not about one aggregate whose key could seal them.
pub const CLEAR_TOPICS: &[&str] = &[crate::topics::ACCESS];

/// Whether the contract publishes events of `event_type` in the clear; every other event type
/// is published sealed.
pub fn is_published_in_clear(event_type: &str) -> bool {
    CLEAR_EVENT_TYPES.contains(&event_type)
        || CLEAR_TOPICS.contains(&crate::topics::for_event_type(event_type))
}

/// Encrypted data and what it takes to open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sealed {
    /// Always `A256GCM`.
    pub alg: String,
    /// The id of the data key that sealed it: the patient id.
    pub kid: String,
    /// The 12-byte nonce, base64.
    pub nonce: String,
    /// Ciphertext followed by the 16-byte authentication tag, base64.
    pub ciphertext: String,
}

impl Sealed {
    /// Reads a [`Sealed`] from its JSON form.
    ///
    /// # Errors
    ///
    /// [`OpenError::Malformed`] when `bytes` is not a sealed value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, OpenError> {
        serde_json::from_slice(bytes).map_err(|_| OpenError::Malformed)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A patient's 256-bit data key. `Debug` prints the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey {
    id: String,
    /// Wiped from memory when the key is dropped.
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub fn new(id: impl Into<String>, bytes: [u8; 32]) -> Self {
        Self {
            id: id.into(),
            bytes: Zeroizing::new(bytes),
        }
    }

    /// A fresh random key.
    pub fn generate(id: impl Into<String>) -> Self {
        Self::new(id, random_key())
    }

    /// Reads a key from its base64 form, as the data-key endpoint hands it out.
    ///
    /// # Errors
    ///
    /// [`OpenError::Malformed`] unless `base64` holds exactly 32 bytes.
    pub fn from_base64(id: impl Into<String>, base64: &str) -> Result<Self, OpenError> {
        let bytes = STANDARD.decode(base64).map_err(|_| OpenError::Malformed)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| OpenError::Malformed)?;
        Ok(Self::new(id, bytes))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw key bytes: for wrapping it, or handing it to an authorized consumer.
    pub fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The key in base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(*self.bytes)
    }
}

/// 32 bytes from the operating system's random source.
pub fn random_key() -> [u8; 32] {
    Aes256Gcm::generate_key(OsRng).into()
}

/// Why sealed data could not be opened. Never carries the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed value")]
    Malformed,
    #[error("sealed with another key or algorithm")]
    WrongKey,
    #[error("the data or its associated data was altered, or the key is wrong")]
    Tampered,
}

/// Seals `plaintext` with `key`, binding it to `associated_data`.
pub fn seal(key: &DataKey, associated_data: &[u8], plaintext: &[u8]) -> Sealed {
    let (nonce, ciphertext) = seal_raw(&key.bytes, associated_data, plaintext);
    Sealed {
        alg: ALGORITHM.to_owned(),
        kid: key.id.clone(),
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ciphertext),
    }
}

/// Opens `sealed` with `key`, checking it was bound to `associated_data`.
///
/// # Errors
///
/// [`OpenError`] when the value is malformed, sealed with another key, or altered.
pub fn open(key: &DataKey, associated_data: &[u8], sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
    if sealed.alg != ALGORITHM || sealed.kid != key.id {
        return Err(OpenError::WrongKey);
    }
    let nonce = STANDARD
        .decode(&sealed.nonce)
        .map_err(|_| OpenError::Malformed)?;
    let ciphertext = STANDARD
        .decode(&sealed.ciphertext)
        .map_err(|_| OpenError::Malformed)?;
    open_raw(&key.bytes, associated_data, &nonce, &ciphertext)
}

/// AES-256-GCM with a fresh random nonce: returns the nonce and the ciphertext with its tag.
pub fn seal_raw(key: &[u8; 32], associated_data: &[u8], plaintext: &[u8]) -> ([u8; 12], Vec<u8>) {
    let cipher = Aes256Gcm::new(key.into());
    let nonce = Aes256Gcm::generate_nonce(OsRng);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: associated_data,
            },
        )
        // Encryption fails only for inputs beyond GCM's 64 GiB limit.
        .unwrap_or_default();
    (nonce.into(), ciphertext)
}

/// Opens what [`seal_raw`] produced.
///
/// # Errors
///
/// [`OpenError::Malformed`] for a nonce of the wrong length, [`OpenError::Tampered`] when the
/// tag does not verify.
pub fn open_raw(
    key: &[u8; 32],
    associated_data: &[u8],
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, OpenError> {
    if nonce.len() != 12 {
        return Err(OpenError::Malformed);
    }
    Aes256Gcm::new(key.into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: associated_data,
            },
        )
        .map_err(|_| OpenError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_hides_the_plaintext() {
        let key = DataKey::generate("p1");
        let sealed = seal(&key, b"event-1", b"Jane Doe 1980-02-03");
        assert!(!String::from_utf8_lossy(&sealed.to_json()).contains("Jane"));
        assert_eq!(
            open(&key, b"event-1", &sealed).unwrap(),
            b"Jane Doe 1980-02-03"
        );
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let key = DataKey::generate("p1");
        assert_ne!(seal(&key, b"", b"x").nonce, seal(&key, b"", b"x").nonce);
    }

    #[test]
    fn moved_altered_or_foreign_data_does_not_open() {
        let key = DataKey::generate("p1");
        let sealed = seal(&key, b"event-1", b"secret");
        assert_eq!(open(&key, b"event-2", &sealed), Err(OpenError::Tampered));
        let other = DataKey::new("p1", [1; 32]);
        assert_eq!(open(&other, b"event-1", &sealed), Err(OpenError::Tampered));
        let stranger = DataKey::new("p2", *key.expose());
        assert_eq!(
            open(&stranger, b"event-1", &sealed),
            Err(OpenError::WrongKey)
        );
        let mut altered = sealed.clone();
        altered.ciphertext = STANDARD.encode(b"0123456789abcdef0123");
        assert_eq!(open(&key, b"event-1", &altered), Err(OpenError::Tampered));
    }

    #[test]
    fn only_erasure_and_access_entries_are_published_in_the_clear() {
        for clear in [
            "PatientForgotten",
            "AccessRecorded",
            "EmergencyAccessGranted",
        ] {
            assert!(is_published_in_clear(clear), "{clear}");
        }
        for sealed in [
            "PatientRegistered",
            "DemographicsCorrected",
            "PatientArchived",
            "AllergyRecorded",
            "DocumentRevised",
            "AppointmentCreated",
            "AppointmentReminder",
            "WaitlistOffer",
            // An unknown type is published on the patient topic, where values are sealed.
            "SomethingNew",
        ] {
            assert!(!is_published_in_clear(sealed), "{sealed}");
        }
    }

    #[test]
    fn keys_round_trip_through_base64_and_debug_hides_them() {
        let key = DataKey::generate("p1");
        assert_eq!(DataKey::from_base64("p1", &key.to_base64()).unwrap(), key);
        assert!(!format!("{key:?}").contains(&key.to_base64()));
        assert_eq!(
            DataKey::from_base64("p1", "c2hvcnQ="),
            Err(OpenError::Malformed)
        );
    }
}
