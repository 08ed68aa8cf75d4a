//! Sealed snapshots of long-lived aggregates (the repository's `with_snapshots`):
//! a patient's medical record is loaded from its latest snapshot and the events after it, so a
//! command's cost does not grow with the length of the chart.
//!
//! A snapshot is the aggregate's state after event `sequence`, sealed with the patient's data
//! key (never in the clear), bound by its associated data to the aggregate, the sequence and
//! the hash of that event (its anchor). A load checks that the stored event at `sequence` still
//! has that hash and that the events after it chain from it; erasure destroys the data key
//! (and deletes the row), so a snapshot never outlives its events. One that does not open or
//! no longer decodes is passed over: the aggregate is loaded from all its events.

use cqrs_es::persist::SerializedSnapshot;
use cqrs_es::Aggregate;
use schemas::sealed::{self, DataKey, Sealed};
use serde_json::Value;

use crate::keys::{KeyError, KeyState, KeyStore};

/// A snapshot cqrs-es asks to store with a commit: the state after event `sequence`.
#[derive(Debug)]
pub(crate) struct Taken {
    pub sequence: usize,
    pub version: usize,
    pub state: Value,
}

/// What a snapshot's sealed state is bound to.
fn associated_data(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: usize,
    anchor: &[u8],
) -> Vec<u8> {
    format!(
        "snapshot/{aggregate_type}/{aggregate_id}/{sequence}/{}",
        hex::encode(anchor)
    )
    .into_bytes()
}

/// Stores `taken` as the snapshot of `aggregate_id`, sealed with `key` (the data key of
/// `owner`), unless a later one is stored already, or the key was destroyed: the statement
/// locks the key's row, so an erasure either waits for it (and then deletes the snapshot) or
/// has destroyed the key first (and nothing is stored).
pub(crate) async fn write<A: Aggregate>(
    pool: &sqlx::PgPool,
    (key, owner): (&DataKey, &str),
    aggregate_id: &str,
    anchor: &[u8],
    taken: Taken,
) -> Result<(), sqlx::Error> {
    let plain = serde_json::to_vec(&taken.state).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sealed = sealed::seal(
        key,
        &associated_data(A::TYPE, aggregate_id, taken.sequence, anchor),
        &plain,
    );
    sqlx::query(
        "WITH live AS (SELECT 1 FROM patient_data_keys
                        WHERE patient_id = $7 AND wrapped_key IS NOT NULL FOR SHARE)
         INSERT INTO aggregate_snapshots
            (aggregate_type, aggregate_id, sequence, version, anchor_hash, sealed)
         SELECT $1, $2, $3, $4, $5, $6 FROM live
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET sequence = EXCLUDED.sequence, version = EXCLUDED.version,
                anchor_hash = EXCLUDED.anchor_hash, sealed = EXCLUDED.sealed, taken_at = now()
          WHERE aggregate_snapshots.sequence < EXCLUDED.sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(taken.sequence as i64)
    .bind(i32::try_from(taken.version).unwrap_or(i32::MAX))
    .bind(anchor)
    .bind(serde_json::to_value(&sealed).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// The latest snapshot of `aggregate_id`, opened, with its anchor (the hash of its event, which
/// the events read after it must chain from); `None` when there is none or it cannot be used.
pub(crate) async fn read<A: Aggregate>(
    pool: &sqlx::PgPool,
    keys: &KeyStore,
    aggregate_id: &str,
) -> Result<Option<(SerializedSnapshot, Vec<u8>)>, KeyError> {
    let row: Option<(i64, i32, Vec<u8>, Value)> = sqlx::query_as(
        "SELECT sequence, version, anchor_hash, sealed FROM aggregate_snapshots
          WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await?;
    let Some((sequence, version, anchor, sealed)) = row else {
        return Ok(None);
    };
    let sequence = usize::try_from(sequence).unwrap_or_default();
    let KeyState::Active(key) = keys.data_key(pool, aggregate_id).await? else {
        // Forgotten (or never sealed): nothing to open.
        return Ok(None);
    };
    let opened = serde_json::from_value::<Sealed>(sealed)
        .ok()
        .and_then(|s| {
            sealed::open(
                &key,
                &associated_data(A::TYPE, aggregate_id, sequence, &anchor),
                &s,
            )
            .ok()
        })
        .and_then(|plain| serde_json::from_slice::<Value>(&plain).ok());
    let Some(state) = opened else {
        tracing::error!(
            alert = "event-store-tampering",
            aggregate_type = A::TYPE,
            aggregate_id,
            sequence,
            "a snapshot does not open; loading from the events"
        );
        return Ok(None);
    };
    let snapshot = SerializedSnapshot {
        aggregate_id: aggregate_id.to_owned(),
        aggregate: state,
        current_sequence: sequence,
        current_snapshot: usize::try_from(version).unwrap_or_default(),
    };
    Ok(Some((snapshot, anchor)))
}

/// Deletes the snapshots of the aggregates sealed with `patient_id`'s key, inside `tx` (the
/// erasure's): their key is destroyed in it too.
///
/// # Errors
///
/// The database error.
pub async fn forget(tx: &mut sqlx::PgConnection, patient_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM aggregate_snapshots WHERE aggregate_id = $1")
        .bind(patient_id)
        .execute(tx)
        .await?;
    Ok(())
}
