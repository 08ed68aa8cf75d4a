//! The key store: one AES-256 data key per patient, wrapped by a master key.
//!
//! Patient events are sealed with their patient's data key before they are stored or
//! published ([`schemas::sealed`]). Data keys live in `patient_data_keys`, each encrypted
//! ("wrapped") with the active master key from configuration, never in the clear. Rotating the
//! master key rewraps the data keys and touches no event. Forgetting a patient deletes their
//! wrapped key: every copy of their events, in the store and on every topic, becomes unreadable
//! (crypto-shredding).

use std::collections::HashMap;
use std::sync::Arc;

use schemas::sealed::{self, DataKey};
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool, Row};
use zeroize::Zeroizing;

/// A 256-bit master key. Its id is derived from it, so configuration holds keys only.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    /// Wiped from memory when the key is dropped.
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        let digest =
            Sha256::digest([b"patient-service master key id:".as_slice(), &bytes].concat());
        Self {
            id: hex::encode(&digest[..8]),
            bytes: Zeroizing::new(bytes),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The active master key, which wraps every new data key, and earlier ones still able to
/// unwrap keys not yet rotated.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    active: MasterKey,
    previous: Vec<MasterKey>,
}

impl MasterKeys {
    pub fn new(active: MasterKey, previous: Vec<MasterKey>) -> Self {
        Self { active, previous }
    }

    pub fn active(&self) -> &MasterKey {
        &self.active
    }

    fn find(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.active)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }
}

/// A patient's data key as the store knows it.
#[derive(Debug, Clone)]
pub enum KeyState {
    /// No event of this patient was ever sealed.
    Absent,
    Active(DataKey),
    /// The patient was forgotten: their sealed data can never be opened again.
    Destroyed,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("data key of {patient_id} is wrapped by master key {master_key_id}, which is not configured")]
    UnknownMasterKey {
        patient_id: String,
        master_key_id: String,
    },
    #[error(
        "the wrapped data key of {0} does not open: altered, or wrapped by another master key"
    )]
    Unwrap(String),
}

/// Wraps, unwraps, creates, rotates and destroys data keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    master: Arc<MasterKeys>,
}

impl KeyStore {
    pub fn new(master: MasterKeys) -> Self {
        Self {
            master: Arc::new(master),
        }
    }

    /// The key of the idempotency records' request hashes
    /// ([`crate::idempotency::request_hash`]), derived from the active master key: whoever
    /// holds it can read every live record anyway, whereas the audit key is held by those who
    /// only verify. Rotating the master key changes it, so a key sent just before a rotation
    /// and repeated after it is refused as reused (422) rather than answered twice.
    pub fn request_hash_key(&self) -> crate::chain::ChainKey {
        self.derived_key(b"idempotency request hash v2")
    }

    /// A key for `purpose`, derived from the active master key.
    pub fn derived_key(&self, purpose: &[u8]) -> crate::chain::ChainKey {
        Self::derive(&self.master.active, purpose)
    }

    /// The id of the active master key.
    pub fn active_master_id(&self) -> &str {
        self.master.active.id()
    }

    /// A key for `purpose`, derived from master key `master_id` (the active one or a previous
    /// one still configured); `None` when it is not configured.
    pub fn derived_key_of(
        &self,
        master_id: &str,
        purpose: &[u8],
    ) -> Option<crate::chain::ChainKey> {
        self.master
            .find(master_id)
            .map(|master| Self::derive(master, purpose))
    }

    fn derive(master: &MasterKey, purpose: &[u8]) -> crate::chain::ChainKey {
        let derived = crate::chain::ChainKey::new(*master.bytes)
            .link(b"patient-service key derivation", &[purpose]);
        let mut bytes = Zeroizing::new([0_u8; 32]);
        bytes.copy_from_slice(&derived);
        crate::chain::ChainKey::new(*bytes)
    }

    /// The data key of `patient_id`.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the database fails or the wrapped key cannot be unwrapped.
    pub async fn data_key<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        patient_id: &str,
    ) -> Result<KeyState, KeyError> {
        let row = sqlx::query(
            "SELECT master_key_id, wrapped_key FROM patient_data_keys WHERE patient_id = $1",
        )
        .bind(patient_id)
        .fetch_optional(executor)
        .await?;
        match row {
            None => Ok(KeyState::Absent),
            Some(row) => self.unwrap_row(patient_id, &row),
        }
    }

    /// The data keys of several patients at once; destroyed and absent keys are left out.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the database fails or a wrapped key cannot be unwrapped.
    pub async fn data_keys<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        patient_ids: &[String],
    ) -> Result<HashMap<String, DataKey>, KeyError> {
        if patient_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(
            "SELECT patient_id, master_key_id, wrapped_key FROM patient_data_keys
              WHERE patient_id = ANY($1) AND wrapped_key IS NOT NULL",
        )
        .bind(patient_ids)
        .fetch_all(executor)
        .await?;
        let mut keys = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("patient_id")?;
            if let KeyState::Active(key) = self.unwrap_row(&id, &row)? {
                keys.insert(id, key);
            }
        }
        Ok(keys)
    }

    /// The data key of `patient_id`, created (and stored wrapped) inside `tx` when the patient
    /// has none yet. `likely_new` says the patient probably has none (their registration):
    /// the key is then made and inserted before any is looked for, one round trip instead of
    /// two; otherwise it is looked for first.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the database fails or the wrapped key cannot be unwrapped.
    pub async fn data_key_for_writing(
        &self,
        tx: &mut sqlx::PgConnection,
        patient_id: &str,
        likely_new: bool,
    ) -> Result<KeyState, KeyError> {
        // Most writes are to patients who have a key: one read. Only a first write makes one.
        if !likely_new {
            match self.data_key(&mut *tx, patient_id).await? {
                KeyState::Absent => {}
                known => return Ok(known),
            }
        }
        let fresh = DataKey::generate(patient_id);
        let (master_key_id, wrapped) = self.wrap(&fresh);
        // Two first commands racing: one key wins, the other command's events then conflict
        // on their sequence and retry with it.
        let inserted: Option<bool> = sqlx::query_scalar(
            "INSERT INTO patient_data_keys (patient_id, master_key_id, wrapped_key)
             VALUES ($1, $2, $3) ON CONFLICT (patient_id) DO NOTHING RETURNING true",
        )
        .bind(patient_id)
        .bind(master_key_id)
        .bind(wrapped)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_some() {
            return Ok(KeyState::Active(fresh));
        }
        self.data_key(&mut *tx, patient_id).await
    }

    /// Destroys the data key of `patient_id` inside `tx`: the wrapped key is deleted, the row
    /// stays to say when.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn destroy(
        &self,
        tx: &mut sqlx::PgConnection,
        patient_id: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO patient_data_keys (patient_id, destroyed_at) VALUES ($1, now())
             ON CONFLICT (patient_id) DO UPDATE
                SET master_key_id = NULL, wrapped_key = NULL, destroyed_at = now()",
        )
        .bind(patient_id)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Rewraps every data key not wrapped by the active master key. Events are not touched.
    /// Returns how many keys were rewrapped.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the database fails or a key's master key is not configured.
    pub async fn rotate(&self, pool: &PgPool) -> Result<u64, KeyError> {
        let mut rotated = 0;
        loop {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(
                "SELECT patient_id, master_key_id, wrapped_key FROM patient_data_keys
                  WHERE wrapped_key IS NOT NULL AND master_key_id <> $1
                  LIMIT 500 FOR UPDATE SKIP LOCKED",
            )
            .bind(self.master.active.id())
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(rotated);
            }
            for row in &rows {
                let id: String = row.try_get("patient_id")?;
                let KeyState::Active(key) = self.unwrap_row(&id, row)? else {
                    continue;
                };
                let (master_key_id, wrapped) = self.wrap(&key);
                sqlx::query(
                    "UPDATE patient_data_keys SET master_key_id = $2, wrapped_key = $3
                      WHERE patient_id = $1",
                )
                .bind(&id)
                .bind(master_key_id)
                .bind(wrapped)
                .execute(&mut *tx)
                .await?;
                rotated += 1;
            }
            tx.commit().await?;
        }
    }

    fn wrap(&self, key: &DataKey) -> (&str, Vec<u8>) {
        let master = &self.master.active;
        let (nonce, ciphertext) =
            sealed::seal_raw(&master.bytes, &wrap_aad(key.id()), key.expose());
        (master.id(), [nonce.as_slice(), &ciphertext].concat())
    }

    fn unwrap_row(
        &self,
        patient_id: &str,
        row: &sqlx::postgres::PgRow,
    ) -> Result<KeyState, KeyError> {
        let master_key_id: Option<String> = row.try_get("master_key_id")?;
        let wrapped: Option<Vec<u8>> = row.try_get("wrapped_key")?;
        let (Some(master_key_id), Some(wrapped)) = (master_key_id, wrapped) else {
            return Ok(KeyState::Destroyed);
        };
        let master =
            self.master
                .find(&master_key_id)
                .ok_or_else(|| KeyError::UnknownMasterKey {
                    patient_id: patient_id.to_owned(),
                    master_key_id: master_key_id.clone(),
                })?;
        if wrapped.len() < 12 {
            return Err(KeyError::Unwrap(patient_id.to_owned()));
        }
        let (nonce, ciphertext) = wrapped.split_at(12);
        let bytes = sealed::open_raw(&master.bytes, &wrap_aad(patient_id), nonce, ciphertext)
            .map_err(|_| KeyError::Unwrap(patient_id.to_owned()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Unwrap(patient_id.to_owned()))?;
        Ok(KeyState::Active(DataKey::new(patient_id, bytes)))
    }
}

/// Binds a wrapped key to its patient, so wrapped keys cannot be swapped between rows.
fn wrap_aad(patient_id: &str) -> Vec<u8> {
    format!("patient-data-key/{patient_id}").into_bytes()
}
