//! The medical record read model: every version of every item (who, when, why, and the item
//! as it stood) and each item's current search entry (full text, ranked with highlights; and
//! coded concepts for structured search across patients).
//!
//! Fed by the medical record topic; the patient topic's `PatientForgotten` deletes all of a
//! patient's rows.

use chrono::{DateTime, Utc};
use event_store::documents::DocumentStore;
use event_store::repository::SHREDDING_EVENT_TYPE;
use schemas::medical_record::v1;
use schemas::patient::v1 as patient_v1;
use schemas::{DecodeError, PublishedEvent};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Row};
use std::collections::HashMap;
use uuid::Uuid;

use crate::{ProjectionError, ReadModel};

/// At most this many characters of a document's text are indexed.
pub const MAX_INDEXED_TEXT: usize = 100_000;

/// The read model; it reads documents' extracted text from `documents`.
#[derive(Debug, Clone)]
pub struct MedicalRecords {
    documents: DocumentStore,
}

impl MedicalRecords {
    pub fn new(documents: DocumentStore) -> Self {
        Self { documents }
    }
}

/// What an event does to its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Recorded,
    Revised,
    EnteredInError,
}

/// The kind code (`allergy`) and the change of a v1 event type (`AllergyRevised`).
fn kind_and_change(event_type: &str) -> Option<(&'static str, Change)> {
    let (prefix, change) = if let Some(p) = event_type.strip_suffix("Recorded") {
        (p, Change::Recorded)
    } else if let Some(p) = event_type.strip_suffix("Revised") {
        (p, Change::Revised)
    } else {
        (
            event_type.strip_suffix("EnteredInError")?,
            Change::EnteredInError,
        )
    };
    let kind = match prefix {
        "Allergy" => "allergy",
        "Medication" => "medication",
        "Immunization" => "immunization",
        "Problem" => "problem",
        "HistoryEntry" => "history",
        "Document" => "document",
        "Observation" => "observation",
        "Procedure" => "procedure",
        "Encounter" => "encounter",
        _ => return None,
    };
    Some((kind, change))
}

/// Whether an event type is an item's: of the medical record or of a clinical entry.
fn is_item_event(event_type: &str) -> bool {
    v1::EVENT_TYPES.contains(&event_type)
        || schemas::clinical_entry::v1::EVENT_TYPES.contains(&event_type)
}

/// The patient and item an item event is about.
#[derive(Debug, Clone, Copy)]
struct ItemIds {
    patient_id: Uuid,
    item_id: Uuid,
}

/// The ids of an item event, decoded by its topic's contract.
fn item_ids(event: &PublishedEvent) -> Result<ItemIds, DecodeError> {
    if v1::EVENT_TYPES.contains(&event.event_type.as_str()) {
        let decoded = v1::MedicalRecordEvent::from_published(event)?;
        Ok(ItemIds {
            patient_id: decoded.patient_id(),
            item_id: decoded.item_id(),
        })
    } else {
        let decoded = schemas::clinical_entry::v1::ClinicalEntryEvent::from_published(event)?;
        Ok(ItemIds {
            patient_id: decoded.patient_id(),
            item_id: decoded.item_id(),
        })
    }
}

/// The search facts of an item: its concept, status, whether it stands, its title and text.
struct Facts {
    system: Option<String>,
    code: Option<String>,
    concept_text: String,
    status: String,
    active: bool,
    title: String,
    body: String,
}

fn text_of(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Lowercase, single-spaced: how concept texts are compared.
pub fn fold(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn facts(kind: &str, item: &Value, document_text: Option<&str>) -> Facts {
    let concept_field = match kind {
        "allergy" => "substance",
        "medication" => "medication",
        "immunization" => "vaccine",
        "problem" => "condition",
        "history" => "description",
        "observation" | "procedure" => "code",
        "encounter" => "encounter_type",
        _ => "document_type",
    };
    let concept = &item[concept_field];
    let concept_text = text_of(concept, "/text").unwrap_or_default();
    let status_of = |field: &str| text_of(item, field).unwrap_or_default();
    let (status, active) = match kind {
        "allergy" => {
            let s = status_of("/clinical_status");
            let refuted = status_of("/verification_status") == "refuted";
            (s.clone(), s == "active" && !refuted)
        }
        "medication" => {
            let s = status_of("/status");
            (s.clone(), s == "active" || s == "on-hold")
        }
        "immunization" => {
            let s = status_of("/status");
            (s.clone(), s == "completed")
        }
        "problem" => {
            let s = status_of("/clinical_status");
            (
                s.clone(),
                matches!(s.as_str(), "active" | "recurrence" | "relapse"),
            )
        }
        "history" => (status_of("/category"), true),
        // Results, procedures and encounters stand unless called off.
        "observation" | "encounter" => {
            let s = status_of("/status");
            (s.clone(), s != "cancelled")
        }
        "procedure" => {
            let s = status_of("/status");
            (s.clone(), s != "not-done")
        }
        _ => ("current".to_owned(), true),
    };
    let title = match kind {
        "document" => status_of("/title"),
        "encounter" if concept_text.is_empty() => status_of("/class"),
        _ => concept_text.clone(),
    };
    let mut parts: Vec<String> = Vec::new();
    if kind == "document" {
        parts.push(concept_text.clone());
    }
    for pointer in [
        "/reason_for_use/text",
        "/relationship",
        "/lot_number",
        "/reason/text",
        "/value/text",
        "/interpretation/text",
        "/location",
    ] {
        parts.extend(text_of(item, pointer));
    }
    if let Some(reactions) = item.get("reactions").and_then(Value::as_array) {
        parts.extend(
            reactions
                .iter()
                .filter_map(|r| text_of(r, "/manifestation/text")),
        );
    }
    parts.extend(text_of(item, "/note"));
    if let Some(text) = document_text {
        parts.push(text.chars().take(MAX_INDEXED_TEXT).collect());
    }
    Facts {
        system: text_of(concept, "/system"),
        code: text_of(concept, "/code"),
        concept_text: fold(&concept_text),
        status,
        active,
        title,
        body: parts.join("\n"),
    }
}

impl ReadModel for MedicalRecords {
    fn name(&self) -> &'static str {
        "medical_records"
    }

    fn topics(&self) -> &'static [&'static str] {
        &[
            schemas::topics::MEDICAL_RECORD,
            schemas::topics::CLINICAL_ENTRY,
            schemas::topics::PATIENT,
        ]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "medical_record_versions",
            "medical_record_items",
            "medical_record_forgotten",
        ]
    }

    fn partitions_by_patient(&self) -> bool {
        true
    }

    fn indexes_for_writes(&self) -> &'static [&'static str] {
        // By patient: a forgotten patient's rows are purged.
        &[
            "medical_record_versions_patient",
            "medical_record_items_patient",
        ]
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> Result<(), ProjectionError> {
        if !is_item_event(&event.event_type) {
            // A patient event: only erasure concerns this model.
            if let Ok(patient_v1::PatientEvent::Forgotten(e)) =
                patient_v1::PatientEvent::from_published(event)
            {
                purge(tx, e.patient_id).await?;
                // Their stored documents go too (a folder cannot join the erasure's
                // transaction); a failure is retried with the event.
                self.documents
                    .forget(&e.patient_id.to_string())
                    .await
                    .map_err(|e| ProjectionError::Documents(e.to_string()))?;
            }
            return Ok(());
        }
        let ids = item_ids(event)?;
        self.apply_items(tx, &[(event, ids)]).await
    }

    /// Runs of item changes are written in a few statements whatever their length (the
    /// patients locked, the forgotten and the items' latest versions read, versions inserted
    /// and items upserted once each); an erasure between them is applied on its own, in order.
    /// The other patient events concern this model not at all and do not break a run.
    async fn apply_many(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
    ) -> Result<(), ProjectionError> {
        let mut run = Vec::new();
        for &event in events {
            if is_item_event(&event.event_type) {
                run.push((event, item_ids(event)?));
            } else if event.event_type == SHREDDING_EVENT_TYPE {
                self.apply_items(tx, &std::mem::take(&mut run)).await?;
                self.apply(tx, event).await?;
            }
        }
        self.apply_items(tx, &run).await
    }

    async fn clear(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "TRUNCATE medical_record_versions, medical_record_items,
                      medical_record_forgotten",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// A version row to insert.
#[derive(Serialize)]
struct VersionRow<'a> {
    item_id: Uuid,
    version: i32,
    patient_id: Uuid,
    kind: &'static str,
    event_type: &'a str,
    state: Value,
    reason: Option<String>,
    changed_by: Option<&'a str>,
    #[serde(serialize_with = "crate::microseconds")]
    changed_at: DateTime<Utc>,
}

/// An item row as it stands after a run of changes.
#[derive(Serialize)]
struct ItemRow {
    item_id: Uuid,
    patient_id: Uuid,
    kind: &'static str,
    version: i32,
    status: String,
    active: bool,
    entered_in_error: bool,
    code_system: Option<String>,
    code: Option<String>,
    concept_text: String,
    title: String,
    body: String,
    #[serde(serialize_with = "crate::microseconds")]
    updated_at: DateTime<Utc>,
}

/// An item entered in error by a run that did not otherwise change it.
#[derive(Serialize)]
struct EnteredInError {
    item_id: Uuid,
    version: i32,
    #[serde(serialize_with = "crate::microseconds")]
    updated_at: DateTime<Utc>,
}

impl MedicalRecords {
    /// Applies a run of item changes, in order (see [`ReadModel::apply_many`]).
    async fn apply_items(
        &self,
        tx: &mut PgConnection,
        run: &[(&PublishedEvent, ItemIds)],
    ) -> Result<(), ProjectionError> {
        if run.is_empty() {
            return Ok(());
        }
        let mut patients: Vec<Uuid> = run.iter().map(|(_, d)| d.patient_id).collect();
        patients.sort_unstable();
        patients.dedup();
        let forgotten = lock_and_find_forgotten(tx, &patients).await?;
        let items: Vec<Uuid> = run.iter().map(|(_, d)| d.item_id).collect();
        let latest: Vec<(Uuid, i32, Value)> = sqlx::query_as(
            "SELECT DISTINCT ON (item_id) item_id, version, state
               FROM medical_record_versions
              WHERE item_id = ANY($1) ORDER BY item_id, version DESC",
        )
        .bind(&items)
        .fetch_all(&mut *tx)
        .await?;
        let mut previous: HashMap<Uuid, (i32, Value)> = latest
            .into_iter()
            .map(|(item, version, state)| (item, (version, state)))
            .collect();
        let mut versions = Vec::with_capacity(run.len());
        let mut upserts: Vec<ItemRow> = Vec::new();
        let mut upserted: HashMap<Uuid, usize> = HashMap::new();
        let mut entered: HashMap<Uuid, EnteredInError> = HashMap::new();
        for (event, decoded) in run {
            let (patient_id, item_id) = (decoded.patient_id, decoded.item_id);
            if forgotten.contains(&patient_id) {
                continue;
            }
            let (kind, change) = kind_and_change(&event.event_type)
                .ok_or_else(|| DecodeError::UnknownType(event.event_type.clone()))?;
            let data: Value = serde_json::from_slice(&event.data)
                .map_err(|_| DecodeError::MalformedData(event.event_type.clone()))?;
            let before = previous.get(&item_id);
            let version = before.map_or(1, |(v, _)| v + 1);
            let reason = data
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let (state, at) = next_state(change, before.map(|(_, s)| s), &data, reason.as_deref());
            let at: DateTime<Utc> = serde_json::from_value(at)
                .map_err(|_| DecodeError::MalformedData(event.event_type.clone()))?;
            versions.push(VersionRow {
                item_id,
                version,
                patient_id,
                kind,
                event_type: &event.event_type,
                state: state.clone(),
                reason,
                changed_by: event.user_id.as_deref(),
                changed_at: at,
            });
            if change == Change::EnteredInError {
                match upserted.get(&item_id) {
                    Some(&row) => {
                        let row = &mut upserts[row];
                        (row.entered_in_error, row.active) = (true, false);
                        (row.version, row.updated_at) = (version, at);
                    }
                    None => {
                        entered.insert(
                            item_id,
                            EnteredInError {
                                item_id,
                                version,
                                updated_at: at,
                            },
                        );
                    }
                }
            } else {
                let facts = facts(
                    kind,
                    &state,
                    self.document_text(kind, patient_id, &state)
                        .await?
                        .as_deref(),
                );
                let row = ItemRow {
                    item_id,
                    patient_id,
                    kind,
                    version,
                    status: facts.status,
                    active: facts.active,
                    // An item entered in error stays so whatever follows.
                    entered_in_error: entered.remove(&item_id).is_some(),
                    code_system: facts.system,
                    code: facts.code,
                    concept_text: facts.concept_text,
                    title: facts.title,
                    body: facts.body,
                    updated_at: at,
                };
                match upserted.get(&item_id) {
                    Some(&index) => {
                        let entered_in_error =
                            upserts[index].entered_in_error || row.entered_in_error;
                        upserts[index] = ItemRow {
                            entered_in_error,
                            ..row
                        };
                    }
                    None => {
                        upserted.insert(item_id, upserts.len());
                        upserts.push(row);
                    }
                }
            }
            previous.insert(item_id, (version, state));
        }
        write_rows(tx, &versions, &upserts, entered.values()).await?;
        Ok(())
    }

    /// The extracted text of a document item, from document storage.
    async fn document_text(
        &self,
        kind: &str,
        patient_id: Uuid,
        state: &Value,
    ) -> Result<Option<String>, ProjectionError> {
        let Some(sha) = state
            .pointer("/content/text_sha256")
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        if kind != "document" {
            return Ok(None);
        }
        Ok(self
            .documents
            .get(&patient_id.to_string(), sha)
            .await
            .map_err(|e| match e {
                event_store::documents::DocumentError::Altered(_) => {
                    ProjectionError::Unopenable(schemas::sealed::OpenError::Tampered)
                }
                other => ProjectionError::Documents(other.to_string()),
            })?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// The item as it stands after a change, and when the change was made (as sent).
fn next_state(
    change: Change,
    previous: Option<&Value>,
    data: &Value,
    reason: Option<&str>,
) -> (Value, Value) {
    match change {
        Change::Recorded | Change::Revised => {
            let mut state = data["item"].clone();
            let mut acknowledged: Vec<Value> = previous
                .and_then(|s| s.get("acknowledged_warnings"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(new) = data.get("acknowledged_warnings").and_then(Value::as_array) {
                acknowledged.extend(new.iter().cloned());
            }
            if !acknowledged.is_empty() {
                state["acknowledged_warnings"] = Value::Array(acknowledged);
            }
            let at = if change == Change::Recorded {
                &data["recorded_at"]
            } else {
                &data["revised_at"]
            };
            (state, at.clone())
        }
        Change::EnteredInError => {
            let mut state = previous.cloned().unwrap_or_else(|| json!({}));
            state["entered_in_error"] =
                json!({ "reason": reason, "at": data["entered_at"].clone() });
            (state, data["entered_at"].clone())
        }
    }
}

/// Writes a run's versions, its items as they stand, and the entries in error of items it did
/// not otherwise change: one statement each.
async fn write_rows(
    tx: &mut PgConnection,
    versions: &[VersionRow<'_>],
    items: &[ItemRow],
    entered: impl Iterator<Item = &EnteredInError>,
) -> Result<(), sqlx::Error> {
    let as_json = |rows: Vec<Value>| Value::Array(rows);
    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    if !versions.is_empty() {
        let rows = versions
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(encode)?;
        sqlx::query(
            "INSERT INTO medical_record_versions
                (item_id, version, patient_id, kind, event_type, state, reason, changed_by,
                 changed_at)
             SELECT * FROM jsonb_to_recordset($1) AS r(
                item_id uuid, version integer, patient_id uuid, kind text, event_type text,
                state jsonb, reason text, changed_by text, changed_at timestamptz)
             ON CONFLICT (item_id, version) DO NOTHING",
        )
        .bind(as_json(rows))
        .execute(&mut *tx)
        .await?;
    }
    if !items.is_empty() {
        let rows = items
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(encode)?;
        sqlx::query(
            "INSERT INTO medical_record_items AS i
                (item_id, patient_id, kind, version, status, active, entered_in_error,
                 code_system, code, concept_text, title, body, updated_at)
             SELECT * FROM jsonb_to_recordset($1) AS r(
                item_id uuid, patient_id uuid, kind text, version integer, status text,
                active boolean, entered_in_error boolean, code_system text, code text,
                concept_text text, title text, body text, updated_at timestamptz)
             ON CONFLICT (item_id) DO UPDATE
                SET version = EXCLUDED.version, status = EXCLUDED.status,
                    active = EXCLUDED.active,
                    entered_in_error = i.entered_in_error OR EXCLUDED.entered_in_error,
                    code_system = EXCLUDED.code_system, code = EXCLUDED.code,
                    concept_text = EXCLUDED.concept_text, title = EXCLUDED.title,
                    body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
        )
        .bind(as_json(rows))
        .execute(&mut *tx)
        .await?;
    }
    let entered: Vec<Value> = entered
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .map_err(encode)?;
    if !entered.is_empty() {
        sqlx::query(
            "UPDATE medical_record_items AS i
                SET entered_in_error = true, active = false, version = r.version,
                    updated_at = r.updated_at
               FROM jsonb_to_recordset($1) AS r(item_id uuid, version integer, updated_at timestamptz)
              WHERE i.item_id = r.item_id",
        )
        .bind(as_json(entered))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Takes the locks of `patients` (sorted) for this transaction, as [`forgotten`] does for one,
/// and returns those of them who were forgotten.
async fn lock_and_find_forgotten(
    tx: &mut PgConnection,
    patients: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('medical_records ' || p::text, 0))
           FROM unnest($1::uuid[]) WITH ORDINALITY AS k(p, n) ORDER BY n",
    )
    .bind(patients)
    .execute(&mut *tx)
    .await?;
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT patient_id FROM medical_record_forgotten WHERE patient_id = ANY($1)",
    )
    .bind(patients)
    .fetch_all(&mut *tx)
    .await?;
    Ok(found.into_iter().collect())
}

/// Takes the patient's lock for this transaction (the purge takes it too, so a purge and an
/// event of the same patient never interleave) and says whether the patient was forgotten.
async fn forgotten(tx: &mut PgConnection, patient_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('medical_records ' || $1::text, 0))",
    )
    .bind(patient_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM medical_record_forgotten WHERE patient_id = $1)",
    )
    .bind(patient_id)
    .fetch_one(&mut *tx)
    .await
}

async fn purge(tx: &mut PgConnection, patient_id: Uuid) -> Result<(), sqlx::Error> {
    forgotten(tx, patient_id).await?;
    sqlx::query(
        "INSERT INTO medical_record_forgotten (patient_id) VALUES ($1)
         ON CONFLICT DO NOTHING",
    )
    .bind(patient_id)
    .execute(&mut *tx)
    .await?;
    for table in ["medical_record_versions", "medical_record_items"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE patient_id = $1"))
            .bind(patient_id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// One version of an item.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Version {
    pub version: i32,
    pub event_type: String,
    pub changed_at: DateTime<Utc>,
    pub changed_by: Option<String>,
    pub reason: Option<String>,
    /// The item as it stood after this version.
    pub item: Value,
}

fn version_of(row: &sqlx::postgres::PgRow) -> Result<Version, sqlx::Error> {
    Ok(Version {
        version: row.try_get("version")?,
        event_type: row.try_get("event_type")?,
        changed_at: row.try_get("changed_at")?,
        changed_by: row.try_get("changed_by")?,
        reason: row.try_get("reason")?,
        item: row.try_get("state")?,
    })
}

const VERSION_COLUMNS: &str = "version, event_type, changed_at, changed_by, reason, state";

/// Every version of item `item_id` of patient `patient_id` of `kind`, oldest first.
///
/// # Errors
///
/// The database error.
pub async fn versions(
    pool: &PgPool,
    patient_id: Uuid,
    kind: &str,
    item_id: Uuid,
) -> Result<Vec<Version>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM projections.medical_record_versions
          WHERE item_id = $1 AND patient_id = $2 AND kind = $3 ORDER BY version"
    ))
    .bind(item_id)
    .bind(patient_id)
    .bind(kind)
    .fetch_all(pool)
    .await?;
    rows.iter().map(version_of).collect()
}

/// An item's latest version, as a list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemVersion {
    pub item_id: Uuid,
    pub version: i32,
    /// The item as it stands, with its error mark.
    pub state: Value,
    pub recorded_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
}

/// The latest version of every item of `kind` of patient `patient_id`, oldest first: how the
/// items kept apart (each a stream of its own) are listed.
///
/// # Errors
///
/// The database error.
pub async fn latest_of(
    pool: &PgPool,
    patient_id: Uuid,
    kind: &str,
) -> Result<Vec<ItemVersion>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.item_id, v.version, v.state, first.changed_at AS recorded_at, v.changed_at
           FROM projections.medical_record_items i
           JOIN projections.medical_record_versions v
             ON v.item_id = i.item_id AND v.version = i.version
           JOIN projections.medical_record_versions first
             ON first.item_id = i.item_id AND first.version = 1
          WHERE i.patient_id = $1 AND i.kind = $2
          ORDER BY first.changed_at, i.item_id",
    )
    .bind(patient_id)
    .bind(kind)
    .fetch_all(pool)
    .await
}

/// The version of an item current at `as_of`, if it existed then.
///
/// # Errors
///
/// The database error.
pub async fn version_as_of(
    pool: &PgPool,
    patient_id: Uuid,
    kind: &str,
    item_id: Uuid,
    as_of: DateTime<Utc>,
) -> Result<Option<Version>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM projections.medical_record_versions
          WHERE item_id = $1 AND patient_id = $2 AND kind = $3 AND changed_at <= $4
          ORDER BY version DESC LIMIT 1"
    ))
    .bind(item_id)
    .bind(patient_id)
    .bind(kind)
    .bind(as_of)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(version_of).transpose()
}

/// One full-text hit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TextHit {
    pub patient_id: Uuid,
    pub item_id: Uuid,
    pub kind: String,
    pub title: String,
    pub rank: f32,
    /// Fragments of the text around the matched words, each match wrapped in `<mark>`; the
    /// rest of the text is HTML-escaped.
    pub highlights: Vec<String>,
}

// Markers ts_headline puts around matches: characters no stored text holds (validation
// refuses control characters), replaced by `<mark>` once the text is escaped.
const START: &str = "\u{1}";
const STOP: &str = "\u{2}";

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn highlights(headline: &str) -> Vec<String> {
    headline
        .split(" ... ")
        .filter(|f| !f.trim().is_empty())
        .map(|fragment| {
            escape_html(fragment)
                .replace(START, "<mark>")
                .replace(STOP, "</mark>")
        })
        .collect()
}

/// Full-text search over one patient's standing items (documents' text included), best
/// first. `query` is web-search syntax: words, `"quoted phrases"`, `or`, `-excluded`.
///
/// # Errors
///
/// The database error.
pub async fn search_text(
    pool: &PgPool,
    patient_id: Uuid,
    query: &str,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<TextHit>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT item_id, patient_id, kind, title, rank,
                ts_headline('english', title || E'\\n' || body, q,
                            'MaxFragments=3, MinWords=5, MaxWords=20, StartSel={START}, StopSel={STOP}, FragmentDelimiter=\" ... \"') AS headline
           FROM (SELECT item_id, patient_id, kind, title, body, q,
                        ts_rank_cd(search, q) AS rank
                   FROM projections.medical_record_items,
                        websearch_to_tsquery('english', $2) AS q
                  WHERE patient_id = $1 AND NOT entered_in_error AND search @@ q
                    AND ($3::text IS NULL OR kind = $3)
                  ORDER BY rank DESC, item_id
                  LIMIT $4) AS hits
          ORDER BY rank DESC, item_id"
    ))
    .bind(patient_id)
    .bind(query)
    .bind(kind)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let headline: String = row.try_get("headline")?;
            Ok(TextHit {
                patient_id: row.try_get("patient_id")?,
                item_id: row.try_get("item_id")?,
                kind: row.try_get("kind")?,
                title: row.try_get("title")?,
                rank: row.try_get("rank")?,
                highlights: highlights(&headline),
            })
        })
        .collect()
}

/// What a structured search across patients looks for.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    pub kind: String,
    pub system: Option<String>,
    pub code: Option<String>,
    /// Matches the concept's text, folded.
    pub text: Option<String>,
    /// Only items that stand (active allergies, current medications, active problems).
    pub active_only: bool,
    /// A status code of the kind (`resolved`, `on-hold`, ...).
    pub status: Option<String>,
    /// Keyset paging: items after this (patient, item).
    pub after: Option<(Uuid, Uuid)>,
    pub limit: i64,
}

/// One structured-search hit.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ItemHit {
    pub patient_id: Uuid,
    pub item_id: Uuid,
    pub kind: String,
    pub status: String,
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub title: String,
}

/// Items of `criteria.kind` across patients, ordered by (patient, item).
///
/// # Errors
///
/// The database error.
pub async fn search_items(pool: &PgPool, criteria: &Criteria) -> Result<Vec<ItemHit>, sqlx::Error> {
    let (after_patient, after_item) = criteria.after.unzip();
    let rows = sqlx::query(
        "SELECT patient_id, item_id, kind, status, active, code_system, code, title
           FROM projections.medical_record_items
          WHERE kind = $1 AND NOT entered_in_error
            AND ($2::text IS NULL OR code_system = $2)
            AND ($3::text IS NULL OR code = $3)
            AND ($4::text IS NULL OR concept_text = $4)
            AND (NOT $5 OR active)
            AND ($6::text IS NULL OR status = $6)
            AND ($7::uuid IS NULL OR (patient_id, item_id) > ($7, $8))
          ORDER BY patient_id, item_id
          LIMIT $9",
    )
    .bind(&criteria.kind)
    .bind(&criteria.system)
    .bind(&criteria.code)
    .bind(criteria.text.as_deref().map(fold))
    .bind(criteria.active_only)
    .bind(&criteria.status)
    .bind(after_patient)
    .bind(after_item)
    .bind(criteria.limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ItemHit {
                patient_id: row.try_get("patient_id")?,
                item_id: row.try_get("item_id")?,
                kind: row.try_get("kind")?,
                status: row.try_get("status")?,
                active: row.try_get("active")?,
                system: row.try_get("code_system")?,
                code: row.try_get("code")?,
                title: row.try_get("title")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_name_kind_and_change() {
        assert_eq!(
            kind_and_change("HistoryEntryEnteredInError"),
            Some(("history", Change::EnteredInError))
        );
        assert_eq!(
            kind_and_change("AllergyRevised"),
            Some(("allergy", Change::Revised))
        );
        assert_eq!(kind_and_change("PatientRegistered"), None);
    }

    #[test]
    fn highlights_escape_the_text_and_mark_the_matches() {
        let out = highlights("a <b> \u{1}penicillin\u{2} rash ... second \u{1}hit\u{2}");
        assert_eq!(
            out,
            [
                "a &lt;b&gt; <mark>penicillin</mark> rash",
                "second <mark>hit</mark>"
            ]
        );
    }

    #[test]
    fn facts_say_whether_an_item_stands() {
        let allergy = json!({"substance": {"text": "Peanut  Oil"}, "clinical_status": "active",
                             "verification_status": "refuted", "note": "hives"});
        let f = facts("allergy", &allergy, None);
        assert!(!f.active);
        assert_eq!(f.concept_text, "peanut oil");
        assert_eq!(f.body, "hives");
    }
}
