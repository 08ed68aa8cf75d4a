//! Document contents: stored apart from the events (which name them by SHA-256), in PostgreSQL
//! or in a directory, sealed with the patient's data key so that forgetting the patient erases
//! them with everything else.
//!
//! Content is addressed by the SHA-256 of the plain bytes, per patient: the same bytes
//! uploaded twice are stored once, and what is read back is checked against its address.

use std::path::PathBuf;

use schemas::sealed::{self, DataKey};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::keys::{KeyError, KeyState, KeyStore};

/// Where document contents go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentStorage {
    /// The `document_blobs` table of the event store's database.
    Database,
    /// A directory (local disk or a mounted object store): `<dir>/<patient>/<sha256>`.
    Directory(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("document storage database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("document storage directory: {0}")]
    Io(#[from] std::io::Error),
    /// The stored bytes do not open or do not hash to their address.
    #[error("stored document {0} was altered")]
    Altered(String),
    /// The patient was forgotten: nothing can be stored for them.
    #[error("the patient's data key is destroyed")]
    KeyDestroyed,
}

/// Stores and fetches document contents.
#[derive(Clone)]
pub struct DocumentStore {
    pool: PgPool,
    keys: KeyStore,
    storage: DocumentStorage,
}

impl std::fmt::Debug for DocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentStore")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn associated_data(patient_id: &str, sha256: &str) -> Vec<u8> {
    format!("document {patient_id} {sha256}").into_bytes()
}

impl DocumentStore {
    pub fn new(pool: PgPool, keys: KeyStore, storage: DocumentStorage) -> Self {
        Self {
            pool,
            keys,
            storage,
        }
    }

    /// Stores `bytes` for `patient_id` and returns their SHA-256 (hex).
    ///
    /// # Errors
    ///
    /// [`DocumentError`] when the key store or the storage fails, or the patient is forgotten.
    pub async fn put(&self, patient_id: &str, bytes: &[u8]) -> Result<String, DocumentError> {
        let sha256 = sha256_hex(bytes);
        let mut tx = self.pool.begin().await?;
        let key = match self
            .keys
            .data_key_for_writing(&mut tx, patient_id, false)
            .await?
        {
            KeyState::Active(key) => key,
            KeyState::Absent | KeyState::Destroyed => return Err(DocumentError::KeyDestroyed),
        };
        let (nonce, ciphertext) =
            sealed::seal_raw(key.expose(), &associated_data(patient_id, &sha256), bytes);
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&ciphertext);
        match &self.storage {
            DocumentStorage::Database => {
                sqlx::query(
                    "INSERT INTO document_blobs (patient_id, sha256, sealed, size)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(patient_id)
                .bind(&sha256)
                .bind(&stored)
                .bind(bytes.len() as i64)
                .execute(&mut *tx)
                .await?;
            }
            DocumentStorage::Directory(root) => {
                let dir = root.join(patient_dir(patient_id));
                tokio::fs::create_dir_all(&dir).await?;
                let path = dir.join(&sha256);
                if tokio::fs::try_exists(&path).await? {
                    // Same address, same bytes: stored already.
                } else {
                    // Written aside and renamed, so a reader never sees half a file.
                    let partial = dir.join(format!("{sha256}.{}.partial", uuid::Uuid::new_v4()));
                    tokio::fs::write(&partial, &stored).await?;
                    tokio::fs::rename(&partial, &path).await?;
                }
            }
        }
        // The key row, if this created it, commits with the content.
        tx.commit().await?;
        Ok(sha256)
    }

    /// The bytes stored for `patient_id` under `sha256`; `None` when there are none or the
    /// patient was forgotten.
    ///
    /// # Errors
    ///
    /// [`DocumentError`] when the storage fails or the bytes were altered.
    pub async fn get(
        &self,
        patient_id: &str,
        sha256: &str,
    ) -> Result<Option<Vec<u8>>, DocumentError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let key = match self.keys.data_key(&self.pool, patient_id).await? {
            KeyState::Active(key) => key,
            KeyState::Absent | KeyState::Destroyed => return Ok(None),
        };
        let stored = match &self.storage {
            DocumentStorage::Database => {
                sqlx::query_scalar::<_, Vec<u8>>(
                    "SELECT sealed FROM document_blobs WHERE patient_id = $1 AND sha256 = $2",
                )
                .bind(patient_id)
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?
            }
            DocumentStorage::Directory(root) => {
                let path = root.join(patient_dir(patient_id)).join(sha256);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Some(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let Some(stored) = stored else {
            return Ok(None);
        };
        open(&key, patient_id, sha256, &stored).map(Some)
    }
}

/// Deletes the patient's document contents stored in PostgreSQL, inside `tx` (the erasure's):
/// sealed as they are, their rows still named the SHA-256 of each file and of its text, and
/// its size, which would let whoever guesses a document confirm the patient had it.
///
/// # Errors
///
/// The database error.
pub async fn forget_stored(
    tx: &mut sqlx::PgConnection,
    patient_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM document_blobs WHERE patient_id = $1")
        .bind(patient_id)
        .execute(tx)
        .await?;
    Ok(())
}

impl DocumentStore {
    /// Deletes everything stored for a forgotten patient: their rows, and with directory
    /// storage their folder (files cannot join the erasure's transaction, so the medical
    /// record projector calls this when it applies `PatientForgotten`, retrying until done).
    /// Idempotent.
    ///
    /// # Errors
    ///
    /// The database or file system error.
    pub async fn forget(&self, patient_id: &str) -> Result<(), DocumentError> {
        let mut conn = self.pool.acquire().await?;
        forget_stored(&mut conn, patient_id).await?;
        if let DocumentStorage::Directory(root) = &self.storage {
            match tokio::fs::remove_dir_all(root.join(patient_dir(patient_id))).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// A directory name for a patient id: the id if it is a plain UUID-like token, else its hash,
/// so no id can climb out of the root.
fn patient_dir(patient_id: &str) -> String {
    if !patient_id.is_empty()
        && patient_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        patient_id.to_owned()
    } else {
        sha256_hex(patient_id.as_bytes())
    }
}

fn open(
    key: &DataKey,
    patient_id: &str,
    sha256: &str,
    stored: &[u8],
) -> Result<Vec<u8>, DocumentError> {
    let altered = || DocumentError::Altered(sha256.to_owned());
    if stored.len() < 12 {
        return Err(altered());
    }
    let (nonce, ciphertext) = stored.split_at(12);
    let bytes = sealed::open_raw(
        key.expose(),
        &associated_data(patient_id, sha256),
        nonce,
        ciphertext,
    )
    .map_err(|_| altered())?;
    if sha256_hex(&bytes) != sha256 {
        return Err(altered());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_directories_cannot_climb_out() {
        assert_eq!(patient_dir("0b8c-11"), "0b8c-11");
        assert_eq!(patient_dir("../etc").len(), 64);
    }

    #[test]
    fn stored_bytes_open_only_at_their_address() {
        let key = DataKey::generate("p");
        let bytes = b"discharge summary";
        let sha = sha256_hex(bytes);
        let (nonce, ct) = sealed::seal_raw(key.expose(), &associated_data("p", &sha), bytes);
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&ct);
        assert_eq!(open(&key, "p", &sha, &stored).unwrap(), bytes);
        assert!(open(&key, "q", &sha, &stored).is_err());
        stored[20] ^= 1;
        assert!(open(&key, "p", &sha, &stored).is_err());
    }
}
