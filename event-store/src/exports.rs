//! Where FHIR Bulk Data exports are kept: the export asked for, who asked, how far its run
//! got, and its files' contents, sealed.
//!
//! A file is made of parts, each the lines of one resource type of one patient (or of no
//! patient: reference data such as practitioners). A patient's part is sealed with the
//! patient's data key, so erasing the patient makes it unreadable at once; the erasure also
//! deletes it ([`forget`]). Other parts are sealed with a key derived for the export from the
//! master key. Every part is bound by its associated data to its export, file and place.
//!
//! One run of an export holds it by a lease; a run that loses it (its process died, or the
//! export was cancelled) can write nothing more, and a later claim starts the export over.

use chrono::{DateTime, Utc};
use schemas::sealed;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::keys::{KeyError, KeyState, KeyStore};

/// An export asked for, before it runs.
#[derive(Debug, Clone)]
pub struct NewExport {
    pub export_id: Uuid,
    pub requested_by: String,
    /// Roles, organization, purpose and request context of the caller: ids and codes only.
    pub requester: Value,
    /// `system` or `patient`.
    pub level: &'static str,
    pub request_url: String,
    pub types: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub requested_at: DateTime<Utc>,
}

/// An export a run holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub export_id: Uuid,
    pub attempt: i32,
    pub requested_by: String,
    pub requester: Value,
    pub level: String,
    pub types: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub transaction_time: DateTime<Utc>,
    /// The master key the export's own key is derived from.
    pub master_key_id: Option<String>,
}

/// One part of a file, in the clear, before it is sealed.
#[derive(Debug, Clone)]
pub struct Part {
    pub resource_type: String,
    pub file_no: i32,
    pub part_no: i32,
    pub lines: i32,
    /// NDJSON: one resource per line, each line ending in `\n`.
    pub body: Vec<u8>,
}

/// Where an export stands, as its caller sees it.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for a run, or running: `done` of `total` patients (unknown before the run
    /// counts them).
    Running { done: i32, total: Option<i32> },
    Completed {
        transaction_time: DateTime<Utc>,
        request_url: String,
        /// Each file: resource type, file number and how many lines it holds now.
        files: Vec<(String, i32, i64)>,
    },
    /// The reason is the service's words, never data.
    Failed { error: String },
}

/// Why a file's part could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("export parts: {0}")]
    Database(#[from] sqlx::Error),
    #[error("an export part does not open: it was altered")]
    Altered,
    #[error("the master key the export's key came from is no longer configured")]
    MasterKeyGone,
}

/// Exports and their sealed files.
#[derive(Debug, Clone)]
pub struct ExportStore {
    pool: PgPool,
    keys: KeyStore,
}

/// The parts read from a file per round trip.
const PARTS_PER_READ: i64 = 200;

impl ExportStore {
    pub fn new(pool: PgPool, keys: KeyStore) -> Self {
        Self { pool, keys }
    }

    /// Records `export`, waiting for a run.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn create(&self, export: &NewExport) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bulk_exports (export_id, requested_by, requester, level, request_url,
                                       types, since, status, requested_at, master_key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'accepted', $8, $9)",
        )
        .bind(export.export_id)
        .bind(&export.requested_by)
        .bind(&export.requester)
        .bind(export.level)
        .bind(&export.request_url)
        .bind(&export.types)
        .bind(export.since)
        .bind(export.requested_at)
        .bind(self.keys.active_master_id())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the oldest export waiting for a run, or whose run lost its lease (its parts are
    /// deleted: it starts over), and holds it until `now + lease`.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn claim(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Option<Claim>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE bulk_exports SET status = 'running', attempt = attempt + 1,
                    lease_until = $1 + $2::interval, transaction_time = $1,
                    patients_done = 0, patients_total = NULL
              WHERE export_id = (SELECT export_id FROM bulk_exports
                                  WHERE status = 'accepted'
                                     OR (status = 'running' AND lease_until < $1)
                                  ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING export_id, attempt, requested_by, requester, level, types, since,
                       master_key_id",
        )
        .bind(now)
        .bind(lease)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let export_id: Uuid = row.try_get("export_id")?;
        sqlx::query("DELETE FROM bulk_export_parts WHERE export_id = $1")
            .bind(export_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Claim {
            export_id,
            attempt: row.try_get("attempt")?,
            requested_by: row.try_get("requested_by")?,
            requester: row.try_get("requester")?,
            level: row.try_get("level")?,
            types: row.try_get("types")?,
            since: row.try_get("since")?,
            transaction_time: now,
            master_key_id: row.try_get("master_key_id")?,
        }))
    }

    /// Renews the lease of `claim` and records its progress (`done` of `total` patients, the
    /// total unknown yet when `None`). False when the run no longer holds the export
    /// (cancelled, or taken over): it must stop.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn renew(
        &self,
        claim: &Claim,
        (done, total): (i32, Option<i32>),
        (now, lease): (DateTime<Utc>, chrono::Duration),
    ) -> Result<bool, sqlx::Error> {
        let renewed = sqlx::query(
            "UPDATE bulk_exports SET lease_until = $3 + $4::interval,
                    patients_done = $5, patients_total = $6
              WHERE export_id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(claim.export_id)
        .bind(claim.attempt)
        .bind(now)
        .bind(lease)
        .bind(done)
        .bind(total)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Stores `parts` of `claim`'s export, each sealed with the data key of `patient` (or the
    /// export's key for reference data and patients without a key). Nothing is stored when
    /// the run no longer holds the export or the patient was forgotten meanwhile: returns
    /// whether the parts were stored.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the database fails or the patient's key cannot be unwrapped.
    pub async fn write(
        &self,
        claim: &Claim,
        patient: Option<&str>,
        parts: Vec<Part>,
    ) -> Result<bool, KeyError> {
        if parts.is_empty() {
            return Ok(true);
        }
        let key = match patient {
            Some(id) => match self.keys.data_key(&self.pool, id).await? {
                KeyState::Active(key) => Some(*key.expose()),
                KeyState::Destroyed => return Ok(false),
                KeyState::Absent => None,
            },
            None => None,
        };
        let patient_key = key.is_some();
        let key = match key {
            Some(key) => key,
            None => self
                .export_key(claim.export_id, claim.master_key_id.as_deref())
                .ok_or_else(|| KeyError::UnknownMasterKey {
                    patient_id: String::new(),
                    master_key_id: claim.master_key_id.clone().unwrap_or_default(),
                })?,
        };
        let mut types = Vec::with_capacity(parts.len());
        let mut files = Vec::with_capacity(parts.len());
        let mut numbers = Vec::with_capacity(parts.len());
        let mut lines = Vec::with_capacity(parts.len());
        let mut nonces = Vec::with_capacity(parts.len());
        let mut sealed_parts = Vec::with_capacity(parts.len());
        for part in parts {
            let associated = associated_data(claim.export_id, &part, patient);
            let (nonce, sealed) = sealed::seal_raw(&key, &associated, &part.body);
            nonces.push(nonce.to_vec());
            sealed_parts.push(sealed);
            types.push(part.resource_type);
            files.push(part.file_no);
            numbers.push(part.part_no);
            lines.push(part.lines);
        }
        // The export's row (and the patient's key row) are locked for share: a cancellation,
        // a takeover or an erasure either waits for this statement or has happened already.
        let written = sqlx::query(
            "WITH held AS (SELECT 1 FROM bulk_exports
                            WHERE export_id = $1 AND attempt = $2 AND status = 'running'
                              FOR SHARE),
                  live AS (SELECT 1 FROM patient_data_keys
                            WHERE patient_id = $3 AND wrapped_key IS NOT NULL FOR SHARE)
             INSERT INTO bulk_export_parts (export_id, resource_type, file_no, part_no,
                                            patient_id, patient_key, lines, nonce, sealed)
             SELECT $1, t.resource_type, t.file_no, t.part_no, $3, $4, t.lines, t.nonce, t.sealed
               FROM unnest($5::text[], $6::int[], $7::int[], $8::int[], $9::bytea[], $10::bytea[])
                    AS t(resource_type, file_no, part_no, lines, nonce, sealed)
              WHERE EXISTS (SELECT 1 FROM held) AND (NOT $4 OR EXISTS (SELECT 1 FROM live))",
        )
        .bind(claim.export_id)
        .bind(claim.attempt)
        .bind(patient)
        .bind(patient_key)
        .bind(&types)
        .bind(&files)
        .bind(&numbers)
        .bind(&lines)
        .bind(&nonces)
        .bind(&sealed_parts)
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() > 0)
    }

    /// Marks `claim`'s export completed at `now`, kept until `expires_at`. False when the run
    /// no longer holds it.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn complete(
        &self,
        claim: &Claim,
        (now, expires_at): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE bulk_exports SET status = 'completed', completed_at = $3, expires_at = $4,
                    lease_until = NULL, patients_done = coalesce(patients_total, 0)
              WHERE export_id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(claim.export_id)
        .bind(claim.attempt)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks `claim`'s export failed for `error` (the service's words, never data); its parts
    /// are deleted. It is kept until `expires_at` to tell its caller.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn fail(
        &self,
        claim: &Claim,
        error: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let failed = sqlx::query(
            "UPDATE bulk_exports SET status = 'failed', error = $3, expires_at = $4,
                    lease_until = NULL
              WHERE export_id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(claim.export_id)
        .bind(claim.attempt)
        .bind(error)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if failed.rows_affected() == 1 {
            sqlx::query("DELETE FROM bulk_export_parts WHERE export_id = $1")
                .bind(claim.export_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Where export `export_id` of `requested_by` stands at `now`: `None` when there is no
    /// such export of theirs, or it expired.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn progress(
        &self,
        export_id: Uuid,
        requested_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Progress>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT status, request_url, transaction_time, patients_done, patients_total, error
               FROM bulk_exports
              WHERE export_id = $1 AND requested_by = $2
                AND (expires_at IS NULL OR expires_at > $3)",
        )
        .bind(export_id)
        .bind(requested_by)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: String = row.try_get("status")?;
        Ok(Some(match status.as_str() {
            "completed" => {
                let files: Vec<(String, i32, i64)> = sqlx::query_as(
                    "SELECT resource_type, file_no, sum(lines)::bigint FROM bulk_export_parts
                      WHERE export_id = $1 GROUP BY resource_type, file_no
                      ORDER BY resource_type, file_no",
                )
                .bind(export_id)
                .fetch_all(&self.pool)
                .await?;
                Progress::Completed {
                    transaction_time: row
                        .try_get::<Option<DateTime<Utc>>, _>("transaction_time")?
                        .unwrap_or(now),
                    request_url: row.try_get("request_url")?,
                    files,
                }
            }
            "failed" => Progress::Failed {
                error: row
                    .try_get::<Option<String>, _>("error")?
                    .unwrap_or_default(),
            },
            _ => Progress::Running {
                done: row.try_get("patients_done")?,
                total: row.try_get("patients_total")?,
            },
        }))
    }

    /// Deletes export `export_id` of `requested_by` and its files (a run of it stops at its
    /// next write). False when there is no such export of theirs.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn cancel(&self, export_id: Uuid, requested_by: &str) -> Result<bool, sqlx::Error> {
        let deleted =
            sqlx::query("DELETE FROM bulk_exports WHERE export_id = $1 AND requested_by = $2")
                .bind(export_id)
                .bind(requested_by)
                .execute(&self.pool)
                .await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Up to [`PARTS_PER_READ`] parts of file `file_no` of `resource_type` of export
    /// `export_id` after part `after`, opened: the last part's number and the lines, or `None`
    /// when there are no more. Parts of forgotten patients are passed over.
    ///
    /// # Errors
    ///
    /// [`ReadError`] when the database fails or a part does not open (it was altered).
    pub async fn read(
        &self,
        export_id: Uuid,
        (resource_type, file_no): (&str, i32),
        after: i32,
    ) -> Result<Option<(i32, Vec<u8>)>, ReadError> {
        let rows = sqlx::query(
            "SELECT part_no, patient_id, patient_key, lines, nonce, sealed FROM bulk_export_parts
              WHERE export_id = $1 AND resource_type = $2 AND file_no = $3 AND part_no > $4
              ORDER BY part_no LIMIT $5",
        )
        .bind(export_id)
        .bind(resource_type)
        .bind(file_no)
        .bind(after)
        .bind(PARTS_PER_READ)
        .fetch_all(&self.pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        let last: i32 = last.try_get("part_no")?;
        let patients: Vec<String> = rows
            .iter()
            .filter(|row| row.try_get::<bool, _>("patient_key").unwrap_or(false))
            .filter_map(|row| {
                row.try_get::<Option<String>, _>("patient_id")
                    .ok()
                    .flatten()
            })
            .collect();
        let keys = self.keys.data_keys(&self.pool, &patients).await?;
        // Parts of patients who had no key when sealed, forgotten since (the erasure deletes
        // them too; this covers one racing it).
        let keyless: Vec<String> = rows
            .iter()
            .filter(|row| !row.try_get::<bool, _>("patient_key").unwrap_or(true))
            .filter_map(|row| {
                row.try_get::<Option<String>, _>("patient_id")
                    .ok()
                    .flatten()
            })
            .collect();
        let forgotten: std::collections::HashSet<String> = if keyless.is_empty() {
            std::collections::HashSet::new()
        } else {
            sqlx::query_scalar(
                "SELECT patient_id FROM patient_data_keys
                  WHERE patient_id = ANY($1) AND wrapped_key IS NULL",
            )
            .bind(&keyless)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect()
        };
        let master_key_id: Option<String> =
            sqlx::query_scalar("SELECT master_key_id FROM bulk_exports WHERE export_id = $1")
                .bind(export_id)
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        // The export's key, if the master key it came from is still configured; parts that
        // need it and cannot have it end the read in an error.
        let export_key = self.export_key(export_id, master_key_id.as_deref());
        let mut out = Vec::new();
        for row in rows {
            let patient: Option<String> = row.try_get("patient_id")?;
            let key = if row.try_get::<bool, _>("patient_key")? {
                // Forgotten since: their lines are gone.
                match patient.as_ref().and_then(|p| keys.get(p)) {
                    Some(key) => *key.expose(),
                    None => continue,
                }
            } else if patient.as_ref().is_some_and(|p| forgotten.contains(p)) {
                continue;
            } else {
                export_key.ok_or(ReadError::MasterKeyGone)?
            };
            let part = Part {
                resource_type: resource_type.to_owned(),
                file_no,
                part_no: row.try_get("part_no")?,
                lines: row.try_get("lines")?,
                body: Vec::new(),
            };
            let associated = associated_data(export_id, &part, patient.as_deref());
            let nonce: Vec<u8> = row.try_get("nonce")?;
            let sealed: Vec<u8> = row.try_get("sealed")?;
            let plain = sealed::open_raw(&key, &associated, &nonce, &sealed)
                .map_err(|_| ReadError::Altered)?;
            out.extend_from_slice(&plain);
        }
        Ok(Some((last, out)))
    }

    /// Whether export `export_id` of `requested_by` is completed, unexpired at `now`, and
    /// has file `file_no` of `resource_type`.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn has_file(
        &self,
        export_id: Uuid,
        requested_by: &str,
        (resource_type, file_no): (&str, i32),
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let found: Option<bool> = sqlx::query_scalar(
            "SELECT true FROM bulk_exports e
              WHERE e.export_id = $1 AND e.requested_by = $2 AND e.status = 'completed'
                AND e.expires_at > $3
                AND EXISTS (SELECT 1 FROM bulk_export_parts p
                             WHERE p.export_id = e.export_id AND p.resource_type = $4
                               AND p.file_no = $5)",
        )
        .bind(export_id)
        .bind(requested_by)
        .bind(now)
        .bind(resource_type)
        .bind(file_no)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// The key of an export's parts that are not sealed with a patient's key, derived from
    /// master key `master_key_id` (the active one for an export recorded without one); `None`
    /// when that master key is no longer configured.
    fn export_key(&self, export_id: Uuid, master_key_id: Option<&str>) -> Option<[u8; 32]> {
        let master = master_key_id.unwrap_or_else(|| self.keys.active_master_id());
        let derived = self
            .keys
            .derived_key_of(master, b"bulk export files v1")?
            .link(export_id.as_bytes(), &[]);
        let mut key = [0_u8; 32];
        key.copy_from_slice(&derived[..32]);
        Some(key)
    }
}

/// What a part is bound to: its export, file, place and patient.
fn associated_data(export_id: Uuid, part: &Part, patient: Option<&str>) -> Vec<u8> {
    format!(
        "bulk-export/{export_id}/{}/{}/{}/{}/{}",
        part.resource_type,
        part.file_no,
        part.part_no,
        part.lines,
        patient.unwrap_or("-")
    )
    .into_bytes()
}

/// Deletes the export parts of `patient_id`, inside `tx` (the erasure's).
///
/// # Errors
///
/// The database error.
pub async fn forget(tx: &mut sqlx::PgConnection, patient_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM bulk_export_parts WHERE patient_id = $1")
        .bind(patient_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// Deletes the exports expired at `now` (with their files); returns how many.
///
/// # Errors
///
/// The database error.
pub async fn sweep(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let swept = sqlx::query("DELETE FROM bulk_exports WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(swept.rows_affected())
}
