//! The medical record: recording, revising and striking items (documents included), and every
//! read of them. A change is decided once per request ([`writer`], which records the access)
//! and then made through the [`Writer`] it hands back; each read decides and records its own
//! access.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use domain::medical_record::items::{Document, DocumentContent};
use domain::medical_record::{
    Acknowledgement, Item, ItemContent, ItemId, ItemKind, MedicalRecord, MedicalRecordCommand,
    MedicalRecordError,
};
use domain::patient::governance::Principal;
use domain::patient::{PatientId, Reason};
use domain::{FieldError, FieldErrors};
use event_store::command::{CommandError, CommandMetadata};
use event_store::documents::DocumentError;
use projections::medical_records::{self as read_model, Criteria, ItemHit, TextHit, Version};
use uuid::Uuid;

use crate::access::{self, Decision};
use crate::caller::{AuthUser, Refused};
use crate::extraction::Extraction;
use crate::policy::Action;
use crate::reach::{changeable, reach};
use crate::services::{Services, UseCaseError};

/// A new item, as the caller gave it.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub content: ItemContent,
    /// Why, when given (required to record an item against a warning).
    pub reason: Option<Reason>,
    /// The allergies whose warnings the clinician acknowledges for this item.
    pub acknowledged: Vec<ItemId>,
}

/// A revision of an item: its new content and why.
#[derive(Debug, Clone)]
pub struct Revision {
    pub content: ItemContent,
    pub reason: Reason,
    pub acknowledged: Vec<ItemId>,
}

/// An uploaded document: what describes it (parsed once the stored content is known) and its
/// bytes.
#[allow(missing_debug_implementations)] // holds the document's bytes and a closure
pub struct Upload<F> {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    /// Builds the document from its stored content, or names the fields that are wrong.
    pub describe: F,
}

/// The patient's medical record, open for changes by one caller: made only by [`writer`],
/// which decided (and recorded) that the caller may write it.
#[derive(Debug)]
pub struct Writer {
    services: Services,
    user: AuthUser,
    id: PatientId,
}

/// Decides whether `user` may write patient `id`'s medical record (recording the attempt)
/// and whether the patient is active.
///
/// # Errors
///
/// [`UseCaseError::Refused`] when not; the patient's status rule when archived or merged.
pub async fn writer(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
) -> Result<Writer, UseCaseError> {
    let patient = reach(
        services,
        user,
        (Action::WriteMedicalRecord, "medical-record-write"),
        id,
    )
    .await?;
    changeable(&patient)?;
    Ok(Writer {
        services: services.clone(),
        user: user.clone(),
        id,
    })
}

fn principal(user: &AuthUser) -> Result<Principal, UseCaseError> {
    Principal::parse("sub", &user.id).map_err(|_| UseCaseError::Refused(Refused::Forbidden))
}

/// An allergy warning refused the order: the warnings, and the order as given (for the
/// clinician to acknowledge and send again).
fn warned(error: CommandError<MedicalRecordError>, content: &ItemContent) -> UseCaseError {
    match error {
        CommandError::Rule(MedicalRecordError::UnacknowledgedAllergyWarnings(warnings)) => {
            UseCaseError::AllergyWarning {
                warnings,
                order: serde_json::to_value(content).unwrap_or_default(),
            }
        }
        other => UseCaseError::Record(other),
    }
}

impl Writer {
    /// Refuses a caller whose subject cannot name the author of an item (the events name
    /// who wrote them), for a change that must be refused before any work is done.
    ///
    /// # Errors
    ///
    /// [`Refused::Forbidden`].
    pub fn may_author(&self) -> Result<(), UseCaseError> {
        principal(&self.user).map(|_| ())
    }

    /// The day it is, for input that is checked against it (a date in the future).
    pub fn today(&self) -> NaiveDate {
        (self.services.clock)().date_naive()
    }

    /// Records `item` as `item_id`. Returns the record after it.
    ///
    /// # Errors
    ///
    /// [`UseCaseError::AllergyWarning`] when a medication meets an active allergy that was not
    /// acknowledged; the record's rules, or the store's error.
    pub async fn record(
        &self,
        item_id: ItemId,
        item: NewItem,
        metadata: CommandMetadata,
    ) -> Result<MedicalRecord, UseCaseError> {
        let command = MedicalRecordCommand::Record {
            item_id,
            content: item.content.clone(),
            reason: item.reason,
            acknowledgement: Acknowledgement {
                by: principal(&self.user)?,
                allergies: item.acknowledged,
            },
            at: (self.services.clock)(),
        };
        let record = self.execute(command, &item.content, metadata).await?;
        tracing::info!(item_id = %item_id, kind = item.content.kind().code(), "medical record item recorded");
        Ok(record)
    }

    /// Runs `command`, which records or revises `content`: on the patient's medical record,
    /// or on the item's own stream for a kind kept apart (then the record answered holds that
    /// item alone).
    async fn execute(
        &self,
        command: MedicalRecordCommand,
        content: &ItemContent,
        metadata: CommandMetadata,
    ) -> Result<MedicalRecord, UseCaseError> {
        if content.kind().has_own_stream() {
            return self.execute_entry(command, metadata).await;
        }
        let (record, _) = self
            .services
            .records
            .execute(self.id, command, metadata)
            .await
            .map_err(|e| warned(e, content))?;
        Ok(record)
    }

    /// Runs `command` on the clinical entry it names (an observation, procedure or
    /// encounter); another patient's entry is not found.
    async fn execute_entry(
        &self,
        command: MedicalRecordCommand,
        metadata: CommandMetadata,
    ) -> Result<MedicalRecord, UseCaseError> {
        let item_id = match &command {
            MedicalRecordCommand::Record { item_id, .. }
            | MedicalRecordCommand::Revise { item_id, .. }
            | MedicalRecordCommand::EnterInError { item_id, .. } => *item_id,
        };
        let (entry, _) = self
            .services
            .entries
            .execute(item_id.as_uuid(), self.id, command, metadata)
            .await
            .map_err(|e| match e {
                CommandError::Rule(MedicalRecordError::OtherPatient) => {
                    UseCaseError::Refused(Refused::NotFound)
                }
                other => UseCaseError::Record(other),
            })?;
        Ok(entry.as_record().clone())
    }

    /// The document `item_id` describes now (its content stays through revisions).
    ///
    /// # Errors
    ///
    /// [`Refused::NotFound`] when `item_id` is not a document of this patient.
    pub async fn document_content(&self, item_id: ItemId) -> Result<DocumentContent, UseCaseError> {
        let (record, _) = self.services.records.load(self.id).await?;
        match record.item(item_id).map(|i| &i.content) {
            Some(ItemContent::Document(d)) => Ok(d.content.clone()),
            _ => Err(UseCaseError::Refused(Refused::NotFound)),
        }
    }

    /// Revises item `item_id`, which must be at `expected_version` (`If-Match`).
    ///
    /// # Errors
    ///
    /// As [`Writer::record`]; a stale version; [`Refused::NotFound`] for no such item.
    pub async fn revise(
        &self,
        (item_id, expected_version): (ItemId, u64),
        revision: Revision,
        metadata: CommandMetadata,
    ) -> Result<MedicalRecord, UseCaseError> {
        let command = MedicalRecordCommand::Revise {
            item_id,
            expected_version: u32::try_from(expected_version).unwrap_or(u32::MAX),
            content: revision.content.clone(),
            reason: revision.reason,
            acknowledgement: Acknowledgement {
                by: principal(&self.user)?,
                allergies: revision.acknowledged,
            },
            at: (self.services.clock)(),
        };
        let record = self.execute(command, &revision.content, metadata).await?;
        tracing::info!(item_id = %item_id, "medical record item revised");
        Ok(record)
    }

    /// Marks item `item_id` of `kind` a mistake; it stays in the record, marked.
    ///
    /// # Errors
    ///
    /// [`Refused::NotFound`] when the patient has no such item of that kind; a stale version.
    pub async fn enter_in_error(
        &self,
        (kind, item_id, expected_version): (ItemKind, ItemId, u64),
        reason: Reason,
        metadata: CommandMetadata,
    ) -> Result<MedicalRecord, UseCaseError> {
        let command = MedicalRecordCommand::EnterInError {
            item_id,
            expected_version: u32::try_from(expected_version).unwrap_or(u32::MAX),
            reason: reason.clone(),
            at: (self.services.clock)(),
        };
        if kind.has_own_stream() {
            entry_of(self.services.clone(), self.id, (kind, item_id)).await?;
            let record = self.execute_entry(command, metadata).await?;
            tracing::info!(item_id = %item_id, "clinical entry entered in error");
            return Ok(record);
        }
        let (record, _) = self.services.records.load(self.id).await?;
        if record.item(item_id).map(|i| i.content.kind()) != Some(kind) {
            return Err(UseCaseError::Refused(Refused::NotFound));
        }
        let (record, _) = self
            .services
            .records
            .execute(
                self.id,
                MedicalRecordCommand::EnterInError {
                    item_id,
                    expected_version: u32::try_from(expected_version).unwrap_or(u32::MAX),
                    reason,
                    at: (self.services.clock)(),
                },
                metadata,
            )
            .await
            .map_err(UseCaseError::Record)?;
        tracing::info!(item_id = %item_id, "medical record item entered in error");
        Ok(record)
    }

    /// Extracts the text of an uploaded document, stores both (sealed with the patient's
    /// key), and records the document as `item_id`.
    ///
    /// # Errors
    ///
    /// [`UseCaseError::Busy`] when no extraction slot frees, or the `file` field when the text
    /// cannot be extracted; the fields `describe` names; as [`Writer::record`].
    pub async fn store_document<F>(
        &self,
        item_id: ItemId,
        upload: Upload<F>,
        metadata: CommandMetadata,
    ) -> Result<MedicalRecord, UseCaseError>
    where
        F: FnOnce(DocumentContent) -> Result<(Document, Option<Reason>), FieldErrors>,
    {
        let Upload {
            media_type,
            bytes,
            describe,
        } = upload;
        let text = self
            .services
            .extractor
            .extract(media_type, bytes.clone())
            .await?;
        let patient_key = self.id.to_string();
        let documents = &self.services.documents;
        let sha256 = documents.put(&patient_key, &bytes).await?;
        let (text_sha256, text_length) = match &text {
            Some(text) => (
                Some(documents.put(&patient_key, text.as_bytes()).await?),
                text.chars().count() as u64,
            ),
            None => (None, 0),
        };
        let content = DocumentContent {
            media_type: media_type.to_owned(),
            size: bytes.len() as u64,
            sha256,
            text_sha256,
            text_length,
        };
        let (document, reason) = describe(content).map_err(UseCaseError::Invalid)?;
        self.record(
            item_id,
            NewItem {
                content: ItemContent::Document(document),
                reason,
                acknowledged: Vec::new(),
            },
            metadata,
        )
        .await
    }
}

/// The items of one kind of patient `id`'s medical record (`include_errors`: the mistakes
/// too), from the event store.
///
/// # Errors
///
/// As [`reach`].
pub async fn list(
    services: &Services,
    user: &AuthUser,
    (id, kind): (PatientId, ItemKind),
    include_errors: bool,
) -> Result<Vec<Item>, UseCaseError> {
    reach(
        services,
        user,
        (Action::ReadMedicalRecord, "medical-record-list"),
        id,
    )
    .await?;
    if kind.has_own_stream() {
        // Kept apart, each in its own stream: listed from the read model, which follows the
        // store within moments.
        let latest = read_model::latest_of(&services.pool, id.as_uuid(), kind.code()).await?;
        return Ok(latest
            .into_iter()
            .filter_map(|v| {
                item_at(
                    (kind, ItemId::new(v.item_id)),
                    v.version,
                    &v.state,
                    (v.recorded_at, v.changed_at),
                )
            })
            .filter(|i| include_errors || i.entered_in_error.is_none())
            .collect());
    }
    let (record, _) = services.records.load(id).await?;
    Ok(record
        .items()
        .filter(|i| i.content.kind() == kind && (include_errors || i.entered_in_error.is_none()))
        .cloned()
        .collect())
}

/// An item as a version of the versions read model shows it (its JSON is the published item,
/// with its error mark), or `None` should the two ever part.
pub fn item_at(
    (kind, item_id): (ItemKind, ItemId),
    version: i32,
    state: &serde_json::Value,
    (recorded_at, changed_at): (DateTime<Utc>, DateTime<Utc>),
) -> Option<Item> {
    let mut content = state.clone();
    content["kind"] = serde_json::json!(kind.code());
    let content: ItemContent = serde_json::from_value(content).ok()?;
    let entered_in_error = state.get("entered_in_error").and_then(|mark| {
        Some(domain::medical_record::ErrorMark {
            reason: Reason::parse("reason", mark["reason"].as_str()?).ok()?,
            at: changed_at,
        })
    });
    Some(Item {
        item_id,
        content,
        version: u32::try_from(version).ok()?,
        entered_in_error,
        acknowledged_warnings: Vec::new(),
        recorded_at,
        updated_at: changed_at,
    })
}

/// Clinical entry `item_id` of patient `id`, if it is one of theirs and of `kind`.
async fn entry_of(
    services: Services,
    id: PatientId,
    (kind, item_id): (ItemKind, ItemId),
) -> Result<Item, UseCaseError> {
    let (entry, _) = services.entries.load(item_id.as_uuid()).await?;
    entry
        .item()
        .filter(|i| entry.patient_id() == Some(id) && i.content.kind() == kind)
        .cloned()
        .ok_or(UseCaseError::Refused(Refused::NotFound))
}

/// Patient `id`'s whole medical record and its version.
///
/// # Errors
///
/// As [`reach`].
pub async fn summary(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
) -> Result<(MedicalRecord, u64), UseCaseError> {
    reach(
        services,
        user,
        (Action::ReadMedicalRecord, "medical-record-read"),
        id,
    )
    .await?;
    Ok(services.records.load(id).await?)
}

/// One item as it is now.
///
/// # Errors
///
/// As [`reach`]; [`Refused::NotFound`] when the patient has no such item of that kind.
pub async fn item(
    services: &Services,
    user: &AuthUser,
    (id, kind, item_id): (PatientId, ItemKind, ItemId),
) -> Result<Item, UseCaseError> {
    reach(
        services,
        user,
        (Action::ReadMedicalRecord, "medical-record-read"),
        id,
    )
    .await?;
    if kind.has_own_stream() {
        return entry_of(services.clone(), id, (kind, item_id)).await;
    }
    let (record, _) = services.records.load(id).await?;
    record
        .item(item_id)
        .filter(|i| i.content.kind() == kind)
        .cloned()
        .ok_or(UseCaseError::Refused(Refused::NotFound))
}

/// One item as it stood at `as_of`, from the versions read model.
///
/// # Errors
///
/// As [`reach`]; [`Refused::NotFound`] when it did not exist then.
pub async fn item_as_of(
    services: &Services,
    user: &AuthUser,
    (id, kind, item_id): (PatientId, ItemKind, ItemId),
    as_of: DateTime<Utc>,
) -> Result<Version, UseCaseError> {
    reach(
        services,
        user,
        (Action::ReadMedicalRecord, "medical-record-read-as-of"),
        id,
    )
    .await?;
    read_model::version_as_of(
        &services.pool,
        id.as_uuid(),
        kind.code(),
        item_id.as_uuid(),
        as_of,
    )
    .await?
    .ok_or(UseCaseError::Refused(Refused::NotFound))
}

/// Every version of one item, oldest first, read as `what` (the versions, or a diff).
///
/// # Errors
///
/// As [`reach`]; [`Refused::NotFound`] when there is no such item.
pub async fn versions(
    services: &Services,
    user: &AuthUser,
    (id, kind, item_id): (PatientId, ItemKind, ItemId),
    what: &str,
) -> Result<Vec<Version>, UseCaseError> {
    reach(services, user, (Action::ReadMedicalRecord, what), id).await?;
    let versions =
        read_model::versions(&services.pool, id.as_uuid(), kind.code(), item_id.as_uuid()).await?;
    if versions.is_empty() {
        return Err(UseCaseError::Refused(Refused::NotFound));
    }
    Ok(versions)
}

/// A document's bytes, as uploaded, with the item that describes them.
///
/// # Errors
///
/// As [`reach`]; [`Refused::NotFound`] when the item is not a document or its bytes are gone.
pub async fn document(
    services: &Services,
    user: &AuthUser,
    (id, item_id): (PatientId, ItemId),
) -> Result<(Item, Vec<u8>), UseCaseError> {
    reach(
        services,
        user,
        (Action::ReadMedicalRecord, "document-content"),
        id,
    )
    .await?;
    let (record, _) = services.records.load(id).await?;
    let item = record
        .item(item_id)
        .cloned()
        .ok_or(UseCaseError::Refused(Refused::NotFound))?;
    let ItemContent::Document(document) = &item.content else {
        return Err(UseCaseError::Refused(Refused::NotFound));
    };
    let bytes = services
        .documents
        .get(&id.to_string(), &document.content.sha256)
        .await?
        .ok_or(UseCaseError::Refused(Refused::NotFound))?;
    Ok((item, bytes))
}

/// A full-text search of patient `id`'s items and documents for `q` (of `kind`, when given),
/// best first; every result row is recorded as an access.
///
/// # Errors
///
/// As [`reach`].
pub async fn search_text(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
    (q, kind, limit): (&str, Option<ItemKind>, i64),
) -> Result<Vec<TextHit>, UseCaseError> {
    reach(
        services,
        user,
        (Action::ReadMedicalRecord, "medical-record-search"),
        id,
    )
    .await?;
    let hits = read_model::search_text(
        &services.pool,
        id.as_uuid(),
        q,
        kind.map(|k| k.code()),
        limit,
    )
    .await?;
    record_results(services, user, hits.iter().map(|h| h.patient_id)).await?;
    tracing::info!(results = hits.len(), "medical record text search");
    Ok(hits)
}

/// Rows read at a time by a structured search, and how many such reads one request may make
/// looking for rows the caller may see.
const SCAN_BATCH: i64 = 200;
const MAX_SCAN_BATCHES: usize = 25;

/// A page of a structured search across patients.
#[derive(Debug)]
pub struct ItemPage {
    pub hits: Vec<ItemHit>,
    /// Where the next page starts (patient, item), when this one is full.
    pub next: Option<(Uuid, Uuid)>,
    /// Scanned as far as one request may without filling the page.
    pub incomplete: bool,
}

/// Items across patients matching `criteria` (`criteria.limit` per page), only of patients
/// `user` may search; every row shown is recorded as an access.
///
/// # Errors
///
/// The database's error.
pub async fn search_items(
    services: &Services,
    user: &AuthUser,
    criteria: Criteria,
) -> Result<ItemPage, UseCaseError> {
    let limit = criteria.limit;
    // Only rows of patients this caller may read, decided per patient on their record. A page
    // is filled from such rows only and its cursor names the last row shown, so neither a
    // page nor a cursor tells of patients out of the caller's reach.
    let mut criteria = Criteria {
        limit: SCAN_BATCH,
        ..criteria
    };
    let mut allowed: HashMap<Uuid, bool> = HashMap::new();
    let mut hits = Vec::new();
    let mut incomplete = true;
    'scan: for _ in 0..MAX_SCAN_BATCHES {
        let batch = read_model::search_items(&services.pool, &criteria).await?;
        let exhausted = (batch.len() as i64) < criteria.limit;
        for hit in batch {
            criteria.after = Some((hit.patient_id, hit.item_id));
            let granted = match allowed.get(&hit.patient_id) {
                Some(&granted) => granted,
                None => {
                    let granted =
                        may_search(services, user, PatientId::new(hit.patient_id)).await?;
                    allowed.insert(hit.patient_id, granted);
                    granted
                }
            };
            if granted {
                hits.push(hit);
                if hits.len() as i64 == limit {
                    incomplete = false;
                    break 'scan;
                }
            }
        }
        if exhausted {
            incomplete = false;
            break;
        }
    }
    let next = (hits.len() as i64 == limit)
        .then(|| hits.last().map(|h| (h.patient_id, h.item_id)))
        .flatten();
    record_results(services, user, hits.iter().map(|h| h.patient_id)).await?;
    tracing::info!(results = hits.len(), "medical record structured search");
    Ok(ItemPage {
        hits,
        next,
        incomplete,
    })
}

/// Whether `user` may see patient `id`'s rows in a search across patients.
async fn may_search(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
) -> Result<bool, UseCaseError> {
    let patient = match services.store.load(id).await {
        Ok(loaded) => loaded.map(|(p, _)| p),
        // A patient whose stream does not verify is left out (the load alerted), rather than
        // failing everyone's search.
        Err(CommandError::Internal(e)) if e.is::<event_store::repository::Unverified>() => None,
        Err(e) => return Err(e.into()),
    };
    Ok(access::decide(
        user,
        Action::SearchMedicalRecords,
        id,
        patient.as_ref(),
        services.home_organization.as_deref(),
    ) == Decision::Granted)
}

/// Records each search result row shown to `user` as an access.
async fn record_results(
    services: &Services,
    user: &AuthUser,
    rows: impl Iterator<Item = Uuid>,
) -> Result<(), UseCaseError> {
    let rows: Vec<Uuid> = rows.collect();
    if !rows.is_empty() {
        services
            .access
            .record(
                user,
                "medical-record-search-result",
                &rows,
                Decision::Granted,
                (services.clock)(),
            )
            .await?;
    }
    Ok(())
}

impl From<Extraction> for UseCaseError {
    fn from(error: Extraction) -> Self {
        match error {
            Extraction::Busy => Self::Busy,
            Extraction::Refused(why) => Self::Invalid(FieldError::new("file", why).into()),
        }
    }
}

impl From<DocumentError> for UseCaseError {
    fn from(error: DocumentError) -> Self {
        match error {
            DocumentError::Database(e) => Self::Database(e),
            DocumentError::KeyDestroyed => Self::Refused(Refused::Gone),
            other => Self::Internal(Box::new(other)),
        }
    }
}
