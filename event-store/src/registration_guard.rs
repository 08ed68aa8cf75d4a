//! Registrations that the matcher grades `certain` or `probable` against each other do not
//! both pass, however close together they arrive.
//!
//! The matcher's read model lags the store, so two registrations of one person a few
//! milliseconds apart would each find nobody there. The guard closes that gap inside the
//! registration's transaction ([`RegistrationGuard`], a [`TransactionEffect`]): it locks the
//! registration's blocking keys (as keyed hashes, `pg_advisory_xact_lock`, in one order), compares
//! it with the registrations of the last [`GUARD_LIFETIME`] that share a key, and leaves a row
//! per key for the ones after it. No patient data is in the clear: a row holds the key's HMAC
//! under a key derived from the master key and the matcher's record sealed with the patient's
//! data key (erasure destroys the key and deletes the rows).

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use domain::matching::{compare, Grade, MatchRecord};
use domain::patient::PatientId;
use futures::future::BoxFuture;
use schemas::sealed;
use sqlx::PgPool;

use crate::keys::KeyStore;
use crate::repository::{persistence_error, SealingKeys, TransactionEffect};

/// How long a registration's guard rows are kept: the match read model knows the patient long
/// before.
pub const GUARD_LIFETIME: chrono::Duration = chrono::Duration::hours(24);

/// Registrations graded `certain` or `probable` against this one: id, grade and score.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} registered patients may be the same person", .0.len())]
pub struct LikelyDuplicates(pub Vec<(uuid::Uuid, Grade, f64)>);

/// The guard of one registration.
pub struct RegistrationGuard {
    pub patient_id: PatientId,
    pub record: MatchRecord,
    /// The registration goes ahead of likely duplicates (the caller gave a reason).
    pub overridden: bool,
    pub keys: KeyStore,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for RegistrationGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationGuard")
            .field("patient_id", &self.patient_id)
            .finish_non_exhaustive()
    }
}

impl RegistrationGuard {
    /// The keyed hashes of the record's blocking keys, sorted and without repeats.
    fn key_hashes(&self) -> Vec<Vec<u8>> {
        let hash_key = self.keys.derived_key(b"registration guard v1");
        let mut hashes: Vec<Vec<u8>> = self
            .record
            .blocking_keys()
            .iter()
            .map(|k| hash_key.link(b"blocking key", &[k.as_bytes()]))
            .collect();
        hashes.sort();
        hashes.dedup();
        hashes
    }

    async fn guard(
        &self,
        tx: &mut sqlx::PgConnection,
        keys: &SealingKeys,
    ) -> Result<(), PersistenceError> {
        let hashes = self.key_hashes();
        if hashes.is_empty() {
            return Ok(());
        }
        // One lock per key hash, taken in the hashes' order so two registrations cannot wait
        // on each other.
        let locks: Vec<i64> = hashes
            .iter()
            .map(|h| i64::from_be_bytes(h[..8].try_into().unwrap_or_default()))
            .collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k)
               FROM (SELECT DISTINCT unnest($1::bigint[]) AS k ORDER BY 1) AS keys",
        )
        .bind(&locks)
        .execute(&mut *tx)
        .await
        .map_err(persistence_error)?;
        let id = self.patient_id.to_string();
        // Each key read through the primary key, and the rows' age and owner checked here:
        // given to PostgreSQL as conditions, the planner came to scan the day's rows by time
        // (or to intersect with that index) and compare every hash, in proportion to the
        // registrations of the last day. `OFFSET 0` keeps it from flattening the lookup; every
        // row of a key is read, however many share it.
        let rows: Vec<(String, serde_json::Value, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT g.patient_id, g.sealed_record, g.registered_at
               FROM unnest($1::bytea[]) AS h(key_hash)
               CROSS JOIN LATERAL (
                    SELECT patient_id, sealed_record, registered_at FROM registration_guard
                     WHERE key_hash = h.key_hash OFFSET 0) AS g",
        )
        .bind(&hashes)
        .fetch_all(&mut *tx)
        .await
        .map_err(persistence_error)?;
        let since = self.at - GUARD_LIFETIME;
        let mut others: Vec<(String, serde_json::Value)> = Vec::new();
        for (other, sealed_record, registered_at) in rows {
            if other != id && registered_at > since && !others.iter().any(|(o, _)| *o == other) {
                others.push((other, sealed_record));
            }
        }
        // Their data keys in one read; an erased patient's is gone, and so is its guard.
        let ids: Vec<String> = others.iter().map(|(id, _)| id.clone()).collect();
        let their_keys = self
            .keys
            .data_keys(&mut *tx, &ids)
            .await
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        let mut likely = Vec::new();
        for (other, sealed_record) in others {
            let Some(key) = their_keys.get(&other) else {
                continue;
            };
            let record = open(key, &other, sealed_record)?;
            let comparison = compare(&self.record, &record);
            if let Some(grade) = comparison.grade.filter(Grade::blocks_registration) {
                if let Ok(other) = uuid::Uuid::parse_str(&other) {
                    likely.push((other, grade, comparison.score));
                }
            }
        }
        if !likely.is_empty() && !self.overridden {
            likely.sort_by(|a, b| b.2.total_cmp(&a.2));
            return Err(PersistenceError::UnknownError(Box::new(LikelyDuplicates(
                likely,
            ))));
        }
        // The registration's events were sealed with this key a moment ago, in this
        // transaction.
        let Some(key) = keys.get(&id) else {
            // Without its key the registration could leave no guard for those after it.
            return Err(PersistenceError::UnknownError(
                format!("{id} has no data key to seal its registration guard with").into(),
            ));
        };
        let plain = serde_json::to_vec(&self.record)?;
        let sealed = serde_json::to_value(sealed::seal(key, id.as_bytes(), &plain))?;
        sqlx::query(
            "INSERT INTO registration_guard (key_hash, patient_id, sealed_record, registered_at)
             SELECT h, $2, $3, $4 FROM unnest($1::bytea[]) AS h
             ON CONFLICT DO NOTHING",
        )
        .bind(&hashes)
        .bind(&id)
        .bind(&sealed)
        .bind(self.at)
        .execute(&mut *tx)
        .await
        .map_err(persistence_error)?;
        Ok(())
    }
}

/// The matcher's record of registration `patient_id`, opened with its data key.
fn open(
    key: &sealed::DataKey,
    patient_id: &str,
    sealed_record: serde_json::Value,
) -> Result<MatchRecord, PersistenceError> {
    let sealed: sealed::Sealed = serde_json::from_value(sealed_record)?;
    let plain = sealed::open(key, patient_id.as_bytes(), &sealed).map_err(|_| {
        PersistenceError::UnknownError(
            format!("the guard row of {patient_id} does not open").into(),
        )
    })?;
    Ok(serde_json::from_slice(&plain)?)
}

impl TransactionEffect for RegistrationGuard {
    fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        _events: &'a [SerializedEvent],
        keys: &'a SealingKeys,
    ) -> BoxFuture<'a, Result<(), PersistenceError>> {
        Box::pin(self.guard(tx, keys))
    }
}

/// Deletes the guard rows of `patient_id`, inside `tx` (the erasure's).
///
/// # Errors
///
/// The database error.
pub async fn forget(tx: &mut sqlx::PgConnection, patient_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM registration_guard WHERE patient_id = $1")
        .bind(patient_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// Deletes the guard rows older than [`GUARD_LIFETIME`] before `now`; returns how many.
///
/// # Errors
///
/// The database error.
pub async fn sweep(pool: &PgPool, now: chrono::DateTime<chrono::Utc>) -> Result<u64, sqlx::Error> {
    let result = sqlx::query("DELETE FROM registration_guard WHERE registered_at <= $1")
        .bind(now - GUARD_LIFETIME)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}
