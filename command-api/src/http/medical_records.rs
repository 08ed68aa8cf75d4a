//! `/v1/patients/{id}/{allergies,medications,immunizations,problems,history,documents}` and
//! the medical record's searches. Every read is permission-checked and recorded as an access
//! (one entry per search result row); every change is an event with who, when and why.
//!
//! | method and path                              | what                                        |
//! |----------------------------------------------|---------------------------------------------|
//! | `POST {kind}`                                | records an item (documents: multipart)     |
//! | `GET {kind}`                                 | the items of that kind                      |
//! | `GET {kind}/{item}`                          | one item, `ETag` its version; `?as_of=`     |
//! | `PUT {kind}/{item}`                          | revises it (`If-Match`, `reason`)           |
//! | `POST {kind}/{item}/entered-in-error`        | marks it a mistake (`If-Match`, `reason`)   |
//! | `GET {kind}/{item}/versions`, `.../{n}`      | every version: who, when, why               |
//! | `GET {kind}/{item}/diff?from=&to=`           | RFC 6902 JSON Patch between two versions    |
//! | `GET documents/{item}/content`               | the document's bytes                        |
//! | `GET medical-record`                         | every standing item of the patient          |
//! | `GET medical-record/search?q=`               | full-text search, ranked, with highlights   |
//! | `GET /v1/medical-records/search?kind=...`    | structured search across patients           |
//!
//! Reads: admin, the patient themself, and clinicians with a care relationship, consent or
//! break-the-glass. Writes: clinicians with a care relationship (or break-the-glass).

use std::collections::HashMap;

use application::records;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::medical_record::items::DocumentContent;
use domain::medical_record::{
    AcknowledgedWarning, ErrorMark, Item, ItemContent, ItemId, ItemKind, MedicalRecord,
};
use domain::patient::PatientId;
use domain::{FieldError, FieldErrors};
use event_store::command::CommandMetadata;
use futures::future::BoxFuture;
use projections::medical_records::{self as read_model, Criteria};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{permission, Action, AuthUser, Authorized};
use crate::extraction;
use crate::http::idempotency::{idempotency_key, idempotent, Stored};
use crate::http::input;
use crate::http::openapi::{self as doc, Kind, Routes};
use crate::http::params::{url_encode, whole_number};
use crate::http::patient_commands::{metadata, CommandRequest};
use crate::http::{etag, if_match, ApiError, AppState, Items, RequestContext};

/// The path segment of each kind.
const KINDS: [(&str, ItemKind); 9] = [
    ("allergies", ItemKind::Allergy),
    ("medications", ItemKind::Medication),
    ("immunizations", ItemKind::Immunization),
    ("problems", ItemKind::Problem),
    ("history", ItemKind::History),
    ("documents", ItemKind::Document),
    ("observations", ItemKind::Observation),
    ("procedures", ItemKind::Procedure),
    ("encounters", ItemKind::Encounter),
];

fn segment(kind: ItemKind) -> &'static str {
    KINDS
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or("items", |(s, _)| s)
}

/// Room for an upload's metadata part and multipart framing beside the document's bytes.
pub const MULTIPART_OVERHEAD: usize = 64 * 1024;

pub fn router(document_limit: usize) -> Routes {
    let mut routes = Routes::new();
    for (segment, kind) in KINDS {
        let base = format!("/v1/patients/{{id}}/{segment}");
        let schema = input::record::item_schema(kind);
        let collection = get(move |s, u, p, q| list(s, u, p, q, kind));
        let (collection, record) = if kind == ItemKind::Document {
            // Multipart, so the body limit is the document limit plus room for the metadata;
            // a larger declared length is refused before anything is read.
            let limit = document_limit.saturating_add(MULTIPART_OVERHEAD);
            let upload_doc = doc::post("Upload a document: its metadata, and its file").body_as(
                "multipart/form-data",
                json!({
                    "type": "object",
                    "required": ["metadata", "file"],
                    "properties": {
                        "metadata": schema.clone(),
                        "file": {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                            "description": "PDF, PNG, JPEG, TIFF or plain text",
                        },
                    },
                }),
            );
            let methods = collection
                .post(upload)
                .layer(DefaultBodyLimit::max(limit))
                .layer(axum::middleware::from_fn_with_state(
                    limit,
                    crate::http::refuse_declared_over,
                ));
            (methods, upload_doc)
        } else {
            let create_doc =
                doc::post("Record an item").body_as("application/json", schema.clone());
            (collection.post(move |s, r| create(s, r, kind)), create_doc)
        };
        let item = |summary| doc::get(summary).needs(Action::ReadMedicalRecord);
        routes = routes
            .route(
                &base,
                collection,
                [
                    item("The patient's items of this kind")
                        .query(&[("include_entered_in_error", Kind::Flag, false)])
                        .answers(200, "The items")
                        .returns::<Items<ItemAnswer>>(),
                    record
                        .needs(Action::WriteMedicalRecord)
                        .idempotent()
                        .answers(201, "Recorded")
                        .returns::<ItemAnswer>(),
                ],
            )
            .route(
                &format!("{base}/{{item}}"),
                get(move |s, u, p, q| read(s, u, p, q, kind)).put(move |s, r| revise(s, r, kind)),
                [
                    item("An item, current or as it was at an instant")
                        .query(&[("as_of", Kind::Instant, false)])
                        .answers(200, "The item as it is now, its version in `ETag`")
                        .returns::<ItemAnswer>()
                        .also_returns::<VersionAnswer>(200, "the version it had at `as_of`"),
                    doc::put("Revise an item (`reason` required)")
                        .needs(Action::WriteMedicalRecord)
                        .body_as("application/json", schema)
                        .change()
                        .returns::<ItemAnswer>(),
                ],
            )
            .route(
                &format!("{base}/{{item}}/entered-in-error"),
                post(move |s, r| enter_in_error(s, r, kind)),
                [doc::post("Mark an item entered in error")
                    .needs(Action::WriteMedicalRecord)
                    .body::<input::patient::ReasonBody>()
                    .change()
                    .returns::<ItemAnswer>()],
            )
            .route(
                &format!("{base}/{{item}}/versions"),
                get(move |s, u, p| versions(s, u, p, kind)),
                [item("Every version of an item: who, when, why")
                    .answers(200, "The versions")
                    .returns::<VersionsAnswer>()],
            )
            .route(
                &format!("{base}/{{item}}/versions/{{n}}"),
                get(move |s, u, p| version(s, u, p, kind)),
                [item("One version of an item")
                    .path_param("n", json!({ "type": "integer", "minimum": 1 }))
                    .returns::<VersionAnswer>()],
            )
            .route(
                &format!("{base}/{{item}}/diff"),
                get(move |s, u, p, q| diff(s, u, p, q, kind)),
                [
                    item("What changed between two versions (RFC 6902 JSON Patch)")
                        .query(&[
                            ("from", Kind::Whole(1, i64::from(i32::MAX)), true),
                            ("to", Kind::Whole(1, i64::from(i32::MAX)), true),
                        ])
                        .answers(200, "The patch")
                        .returns_as::<Vec<PatchOperation>>("application/json-patch+json"),
                ],
            );
    }
    routes
        .route(
            "/v1/patients/{id}/documents/{item}/content",
            get(content),
            [doc::get("A document's bytes")
                .needs(Action::ReadMedicalRecord)
                .answers_as(
                    200,
                    "The document, in its own content type",
                    "*/*",
                    json!({ "type": "string", "contentMediaType": "application/octet-stream" }),
                )],
        )
        .route(
            "/v1/patients/{id}/medical-record",
            get(summary),
            [
                doc::get("Every standing item of a patient's medical record")
                    .needs(Action::ReadMedicalRecord)
                    .returns::<RecordSummary>(),
            ],
        )
        .route(
            "/v1/patients/{id}/medical-record/search",
            get(search_text),
            [
                doc::get("Full-text search of a patient's record, ranked, with highlights")
                    .needs(Action::ReadMedicalRecord)
                    .query(&[
                        ("q", Kind::Text, true),
                        ("kind", Kind::Text, false),
                        ("limit", Kind::Whole(1, MAX_LIMIT), false),
                    ])
                    .answers(200, "The hits, best first")
                    .returns::<Items<TextHitAnswer>>(),
            ],
        )
        .route(
            "/v1/medical-records/search",
            get(search_items),
            [doc::get("Structured search of items across patients")
                .needs(Action::SearchMedicalRecords)
                .query(&[
                    ("kind", Kind::Text, true),
                    ("system", Kind::Text, false),
                    ("code", Kind::Text, false),
                    ("text", Kind::Text, false),
                    ("status", Kind::Text, false),
                    ("active", Kind::Flag, false),
                    ("after", Kind::Text, false),
                    ("limit", Kind::Whole(1, MAX_LIMIT), false),
                ])
                .answers(200, "A page of items")
                .returns::<ItemPageAnswer>()],
        )
}

fn patient_id(raw: &str) -> Result<PatientId, ApiError> {
    PatientId::parse("id", raw).map_err(|e| ApiError::InvalidParameters(e.into()))
}

fn item_id(raw: &str) -> Result<ItemId, ApiError> {
    ItemId::parse("item", raw).map_err(|e| ApiError::InvalidParameters(e.into()))
}

fn path_param<'a>(params: &'a HashMap<String, String>, key: &str) -> &'a str {
    params.get(key).map_or("", String::as_str)
}

/// An item as the API answers it: its data (`kind` and the kind's fields), with ids, version
/// and marks.
#[derive(Serialize, JsonSchema)]
struct ItemAnswer<'a> {
    #[serde(flatten)]
    content: &'a ItemContent,
    item_id: ItemId,
    patient_id: PatientId,
    version: u32,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    acknowledged_warnings: &'a [AcknowledgedWarning],
    #[serde(skip_serializing_if = "Option::is_none")]
    entered_in_error: Option<&'a ErrorMark>,
    recorded_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    href: String,
    /// An active allergy's answer when it is recorded or changed: the current medications its
    /// substance is named in, for the clinician to review.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    medication_warnings: Vec<MedicationWarning>,
}

#[derive(Serialize, JsonSchema)]
struct MedicationWarning {
    medication_id: ItemId,
}

fn resource(patient: PatientId, item: &Item) -> ItemAnswer<'_> {
    ItemAnswer {
        content: &item.content,
        item_id: item.item_id,
        patient_id: patient,
        version: item.version,
        acknowledged_warnings: &item.acknowledged_warnings,
        entered_in_error: item.entered_in_error.as_ref(),
        recorded_at: item.recorded_at,
        updated_at: item.updated_at,
        href: format!(
            "/v1/patients/{patient}/{}/{}",
            segment(item.content.kind()),
            item.item_id
        ),
        medication_warnings: Vec::new(),
    }
}

fn item_response(status: StatusCode, patient: PatientId, item: &Item) -> Response {
    answer_item(status, resource(patient, item))
}

fn answer_item(status: StatusCode, body: ItemAnswer<'_>) -> Response {
    let (patient, item_id, version) = (body.patient_id, body.item_id, body.version);
    let kind = body.content.kind();
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&etag(u64::from(version))) {
        headers.insert(header::ETAG, tag);
    }
    if status == StatusCode::CREATED {
        if let Ok(location) = HeaderValue::from_str(&format!(
            "/v1/patients/{patient}/{}/{item_id}",
            segment(kind),
        )) {
            headers.insert(header::LOCATION, location);
        }
    }
    response
}

/// The first answer of a keyed command on a medical record item, rebuilt: the item as the
/// record's version after the command had it.
fn replay<'a>(
    state: &'a AppState,
    stored: Stored<'a>,
) -> BoxFuture<'a, Result<Response, ApiError>> {
    Box::pin(async move {
        if stored.item_id == Some(stored.aggregate_id) {
            // A clinical entry: a stream of its own, under the item's id.
            let entry_id = item_id(stored.aggregate_id)?;
            let entry = state
                .entries
                .load_version(entry_id.as_uuid(), stored.version)
                .await?
                .ok_or(ApiError::NotFound)?;
            let (Some(id), Some(item)) = (entry.patient_id(), entry.item()) else {
                return Err(ApiError::NotFound);
            };
            return Ok(item_response(stored.status, id, item));
        }
        let id = patient_id(stored.aggregate_id)?;
        let record = state
            .records
            .load_version(id, stored.version)
            .await?
            .ok_or(ApiError::NotFound)?;
        let item_id = item_id(stored.item_id.unwrap_or_default())?;
        let item = record.item(item_id).ok_or(ApiError::NotFound)?;
        Ok(with_medication_warnings(stored.status, id, &record, item))
    })
}

/// An allergy is never refused for the medications the patient takes; instead the answer
/// names, in `medication_warnings`, the current medications its substance is named in, for
/// the clinician to review.
fn with_medication_warnings(
    status: StatusCode,
    patient: PatientId,
    record: &MedicalRecord,
    item: &Item,
) -> Response {
    let mut body = resource(patient, item);
    if let ItemContent::Allergy(allergy) = &item.content {
        if allergy.is_active() && item.entered_in_error.is_none() {
            body.medication_warnings = record
                .medications_named_by(allergy)
                .into_iter()
                .map(|medication_id| MedicationWarning { medication_id })
                .collect();
        }
    }
    answer_item(status, body)
}

/// Answers a change of item `item_id`: the item as the record has it after the change.
fn changed(
    status: StatusCode,
    id: PatientId,
    record: &MedicalRecord,
    item_id: ItemId,
) -> Result<Response, ApiError> {
    let item = record.item(item_id).ok_or(ApiError::NotFound)?;
    Ok(with_medication_warnings(status, id, record, item))
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn create(
    State(state): State<AppState>,
    req: CommandRequest<permission::WriteMedicalRecord>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let id = patient_id(req.raw_id())?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let services = state.services();
    let writer = records::writer(services, &req.user, id).await?;
    let path = format!("/v1/patients/{id}/{}", segment(kind));
    idempotent(
        &state,
        &req.user,
        req.headers(),
        ("POST", &path, &req.body.raw),
        replay,
        |key| async {
            let item = input::record::new_item(kind, &req.body.object, writer.today())?;
            let item_id = ItemId::new(Uuid::new_v4());
            let reservation = key.map(|k| k.answering_item(StatusCode::CREATED, item_id));
            let record = writer
                .record(item_id, item, metadata(&req.user, req.ctx(), reservation))
                .await?;
            changed(StatusCode::CREATED, id, &record, item_id)
        },
    )
    .await
}

/// A change to an existing item: the patient (reachable and changeable), the item's id and
/// the version named by `If-Match` are checked, then `run` changes it under the request's
/// `Idempotency-Key` (`path_suffix` after the item's path, for the request's hash) with the
/// metadata to give the command.
async fn item_change<F, Fut>(
    state: &AppState,
    req: &CommandRequest<permission::WriteMedicalRecord>,
    (kind, path_suffix): (ItemKind, &str),
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(records::Writer, (ItemId, u64), CommandMetadata) -> Fut,
    Fut: std::future::Future<Output = Result<MedicalRecord, ApiError>>,
{
    let id = patient_id(req.raw_id())?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let item_id = item_id(req.item.as_deref().unwrap_or_default())?;
    let services = state.services();
    let writer = records::writer(services, &req.user, id).await?;
    let expected = if_match(req.headers())?;
    let path = format!("/v1/patients/{id}/{}/{item_id}{path_suffix}", segment(kind));
    idempotent(
        state,
        &req.user,
        req.headers(),
        (req.method(), &path, &req.body.raw),
        replay,
        |key| async {
            let reservation = key.map(|k| k.answering_item(StatusCode::OK, item_id));
            let record = run(
                writer,
                (item_id, expected),
                metadata(&req.user, req.ctx(), reservation),
            )
            .await?;
            changed(StatusCode::OK, id, &record, item_id)
        },
    )
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn revise(
    State(state): State<AppState>,
    req: CommandRequest<permission::WriteMedicalRecord>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let body = &req.body.object;
    item_change(
        &state,
        &req,
        (kind, ""),
        |writer, (item_id, expected), metadata| async move {
            let revision = if kind == ItemKind::Document {
                // The content stays: only what describes the document is revised.
                let current = writer.document_content(item_id).await?;
                input::record::document_revision(body, current, writer.today())?
            } else {
                input::record::revision(kind, body, writer.today())?
            };
            Ok(writer
                .revise((item_id, expected), revision, metadata)
                .await?)
        },
    )
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn enter_in_error(
    State(state): State<AppState>,
    req: CommandRequest<permission::WriteMedicalRecord>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let body = &req.body;
    item_change(
        &state,
        &req,
        (kind, "/entered-in-error"),
        |writer, (item_id, expected), metadata| async move {
            let reason = crate::http::patient_commands::reason_only(body)?;
            Ok(writer
                .enter_in_error((kind, item_id, expected), reason, metadata)
                .await?)
        },
    )
    .await
}

/// `POST /v1/patients/{id}/documents`: `multipart/form-data` with a `metadata` part (JSON:
/// `title`, `document_type`, `author`, `date`, optional `note` and `reason`) and a `file` part
/// whose `Content-Type` is one of [`extraction::MEDIA_TYPES`].
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn upload(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::WriteMedicalRecord>,
    ctx: RequestContext,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let id = patient_id(path_param(&params, "id"))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    idempotency_key(&headers)?;
    let services = state.services();
    // Whatever can refuse the upload is checked before anything is stored.
    let writer = records::writer(services, &user, id).await?;
    writer.may_author()?;
    let mut multipart = multipart.map_err(|_| ApiError::UnsupportedMediaType)?;
    // Each upload holds its document in memory while it is read: only so many at once.
    let _reading = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable("too many documents are being uploaded at once".into())
    })?;
    let mut metadata_part: Option<serde_json::Map<String, Value>> = None;
    // What a repeat under the same `Idempotency-Key` must send again: both parts.
    let mut request = Vec::new();
    let mut file: Option<(Option<String>, Vec<u8>)> = None;
    let mut errors = FieldErrors::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge)
            }
            Err(_) => {
                return Err(ApiError::MalformedJson(
                    "the multipart body is malformed".into(),
                ))
            }
        };
        match field.name() {
            // One of each: which of two would count is anyone's guess.
            Some(name @ ("metadata" | "file")) if !seen.insert(name.to_owned()) => {
                errors.push(FieldError::new(name.to_owned(), "is sent more than once"));
            }
            Some("metadata") => {
                let bytes = field.bytes().await.map_err(|_| ApiError::PayloadTooLarge)?;
                request.extend_from_slice(&bytes);
                request.push(0);
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(value) if let Some(at) = crate::http::json::nul_in(&value) => {
                        errors.push(FieldError::new(
                            format!("metadata.{at}"),
                            "must not contain the NUL character (U+0000)",
                        ));
                    }
                    Ok(Value::Object(object)) => metadata_part = Some(object),
                    _ => errors.push(FieldError::new("metadata", "must be a JSON object")),
                }
            }
            Some("file") => {
                let media_type = field.content_type().map(str::to_owned);
                let bytes = field.bytes().await.map_err(|_| ApiError::PayloadTooLarge)?;
                file = Some((media_type, bytes.to_vec()));
            }
            _ => errors.push(FieldError::new(
                field.name().unwrap_or_default().to_owned(),
                "unknown part: send metadata and file",
            )),
        }
    }
    let Some(metadata_part) = metadata_part else {
        errors.push(FieldError::new("metadata", "is required"));
        return Err(ApiError::Validation(errors));
    };
    let Some((media_type, bytes)) = file else {
        errors.push(FieldError::new("file", "is required"));
        return Err(ApiError::Validation(errors));
    };
    if bytes.len() > state.document_max_bytes {
        return Err(ApiError::PayloadTooLarge);
    }
    let accepted: Vec<&str> = extraction::MEDIA_TYPES.iter().map(|(t, _)| *t).collect();
    let Some(media_type) = media_type.as_deref().and_then(extraction::accepted) else {
        errors.push(FieldError::new(
            "file",
            format!("must have a Content-Type of {}", accepted.join(", ")),
        ));
        return Err(ApiError::Validation(errors));
    };
    if bytes.is_empty() {
        errors.push(FieldError::new("file", "must not be empty"));
    }
    errors.into_result().map_err(ApiError::Validation)?;
    let today = writer.today();
    // Check the metadata before the work of extraction and storage.
    let placeholder = DocumentContent {
        media_type: media_type.to_owned(),
        size: bytes.len() as u64,
        sha256: String::new(),
        text_sha256: None,
        text_length: 0,
    };
    input::record::document(&metadata_part, "metadata", placeholder, today)?;
    request.extend_from_slice(media_type.as_bytes());
    request.push(0);
    request.extend_from_slice(&bytes);
    let path = format!("/v1/patients/{id}/documents");
    idempotent(
        &state,
        &user,
        &headers,
        ("POST", &path, &request),
        replay,
        |key| async {
            let item_id = ItemId::new(Uuid::new_v4());
            let reservation = key.map(|k| k.answering_item(StatusCode::CREATED, item_id));
            let upload = records::Upload {
                media_type,
                bytes,
                describe: |content| {
                    input::record::document(&metadata_part, "metadata", content, today)
                },
            };
            let record = writer
                .store_document(item_id, upload, metadata(&user, &ctx, reservation))
                .await?;
            changed(StatusCode::CREATED, id, &record, item_id)
        },
    )
    .await
}

/// `GET /v1/patients/{id}/documents/{item}/content`: the bytes, as uploaded.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn content(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = patient_id(path_param(&params, "id"))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let item_id = item_id(path_param(&params, "item"))?;
    let (item, bytes) = records::document(state.services(), &user, (id, item_id)).await?;
    let ItemContent::Document(document) = &item.content else {
        return Err(ApiError::NotFound);
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    if let Ok(media_type) = HeaderValue::from_str(&document.content.media_type) {
        headers.insert(header::CONTENT_TYPE, media_type);
    }
    // An uploaded HTML document must never run in the API's origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", document.content.sha256)) {
        headers.insert(header::ETAG, tag);
    }
    if item.entered_in_error.is_some() {
        // Kept for the record, but a mistake (say, the wrong patient's letter): say so.
        headers.insert("entered-in-error", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn unknown_params(params: &HashMap<String, String>, known: &[&str], errors: &mut FieldErrors) {
    for key in params.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(FieldError::new(key.clone(), "unknown parameter"));
    }
}

fn instant(
    params: &HashMap<String, String>,
    key: &str,
    errors: &mut FieldErrors,
) -> Option<DateTime<Utc>> {
    let value = params.get(key)?;
    errors.check(
        DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                FieldError::new(
                    key,
                    "must be an RFC 3339 instant such as 2026-11-27T12:00:00Z",
                )
            }),
    )
}

/// `GET {kind}`: the patient's items of one kind, from the event store;
/// `?include_entered_in_error=true` lists the mistakes too.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn list(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let id = patient_id(path_param(&params, "id"))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let mut errors = FieldErrors::new();
    unknown_params(&query, &["include_entered_in_error"], &mut errors);
    let include_errors = match query.get("include_entered_in_error").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            errors.push(FieldError::new(
                "include_entered_in_error",
                "must be true or false",
            ));
            false
        }
    };
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let found = records::list(state.services(), &user, (id, kind), include_errors).await?;
    let items = found.iter().map(|i| resource(id, i)).collect();
    Ok(Json(Items { items }).into_response())
}

/// `GET /v1/patients/{id}/medical-record`: every standing item, by kind.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn summary(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = patient_id(path_param(&params, "id"))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let (record, version) = records::summary(state.services(), &user, id).await?;
    let mut summary = RecordSummary::new(id, version);
    for item in record.items().filter(|i| i.entered_in_error.is_none()) {
        summary
            .of_kind(item.content.kind())
            .push(resource(id, item));
    }
    Ok(Json(summary).into_response())
}

/// Every standing item of a patient's medical record (none entered in error), by kind: each
/// field is named as the kind's path segment ([`KINDS`]).
#[derive(Serialize, JsonSchema)]
struct RecordSummary<'a> {
    patient_id: PatientId,
    version: u64,
    allergies: Vec<ItemAnswer<'a>>,
    medications: Vec<ItemAnswer<'a>>,
    immunizations: Vec<ItemAnswer<'a>>,
    problems: Vec<ItemAnswer<'a>>,
    history: Vec<ItemAnswer<'a>>,
    documents: Vec<ItemAnswer<'a>>,
    observations: Vec<ItemAnswer<'a>>,
    procedures: Vec<ItemAnswer<'a>>,
    encounters: Vec<ItemAnswer<'a>>,
}

impl<'a> RecordSummary<'a> {
    fn new(patient_id: PatientId, version: u64) -> Self {
        Self {
            patient_id,
            version,
            allergies: Vec::new(),
            medications: Vec::new(),
            immunizations: Vec::new(),
            problems: Vec::new(),
            history: Vec::new(),
            documents: Vec::new(),
            observations: Vec::new(),
            procedures: Vec::new(),
            encounters: Vec::new(),
        }
    }

    /// The list of `kind`'s items: a kind added to [`ItemKind`] does not compile until it has
    /// one.
    fn of_kind(&mut self, kind: ItemKind) -> &mut Vec<ItemAnswer<'a>> {
        match kind {
            ItemKind::Allergy => &mut self.allergies,
            ItemKind::Medication => &mut self.medications,
            ItemKind::Immunization => &mut self.immunizations,
            ItemKind::Problem => &mut self.problems,
            ItemKind::History => &mut self.history,
            ItemKind::Document => &mut self.documents,
            ItemKind::Observation => &mut self.observations,
            ItemKind::Procedure => &mut self.procedures,
            ItemKind::Encounter => &mut self.encounters,
        }
    }
}

/// One version of an item, from the versions read model.
#[derive(Serialize, JsonSchema)]
struct VersionAnswer {
    patient_id: PatientId,
    item_id: ItemId,
    kind: ItemKind,
    version: i32,
    event_type: String,
    changed_at: DateTime<Utc>,
    changed_by: Option<String>,
    reason: Option<String>,
    /// The item as it stood after this version: its `kind` and the kind's fields, as the
    /// item's own answer has them.
    item: Value,
    /// The instant asked for, when the version was read as it stood then.
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<DateTime<Utc>>,
}

/// Every version of an item, oldest first.
#[derive(Serialize, JsonSchema)]
struct VersionsAnswer {
    item_id: ItemId,
    kind: ItemKind,
    versions: Vec<VersionAnswer>,
}

/// One operation of an RFC 6902 JSON Patch, as `json_patch::diff` writes them.
#[derive(Serialize, JsonSchema)]
#[allow(dead_code)] // Describes the answer `json_patch` serializes; never built here.
struct PatchOperation {
    op: PatchOp,
    /// A JSON Pointer (RFC 6901) into the item.
    path: String,
    /// The source of `move` and `copy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    /// The value of `add`, `replace` and `test`.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum PatchOp {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

/// A full-text hit in a patient's record.
#[derive(Serialize, JsonSchema)]
struct TextHitAnswer {
    item_id: Uuid,
    kind: String,
    title: String,
    rank: f32,
    /// Fragments of the text around the matched words, each match wrapped in `<mark>`; the
    /// rest of the text is HTML-escaped.
    highlights: Vec<String>,
    href: String,
}

/// A page of items across patients.
#[derive(Serialize, JsonSchema)]
struct ItemPageAnswer {
    items: Vec<read_model::ItemHit>,
    /// Scanned as far as one request may without filling the page: narrow the criteria.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    incomplete: bool,
    /// The next page, while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `GET {kind}/{item}`: the item now, from the event store, with its `ETag`; with
/// `?as_of=INSTANT`, as it stood then, from the versions read model.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let id = patient_id(path_param(&params, "id"))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let item_id = item_id(path_param(&params, "item"))?;
    let mut errors = FieldErrors::new();
    unknown_params(&query, &["as_of"], &mut errors);
    let as_of = instant(&query, "as_of", &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let services = state.services();
    if let Some(as_of) = as_of {
        let version = records::item_as_of(services, &user, (id, kind, item_id), as_of).await?;
        let mut body = version_body(id, kind, item_id, version);
        body.as_of = Some(as_of);
        return Ok(Json(body).into_response());
    }
    let item = records::item(services, &user, (id, kind, item_id)).await?;
    Ok(item_response(StatusCode::OK, id, &item))
}

fn version_body(
    id: PatientId,
    kind: ItemKind,
    item_id: ItemId,
    version: read_model::Version,
) -> VersionAnswer {
    VersionAnswer {
        patient_id: id,
        item_id,
        kind,
        version: version.version,
        event_type: version.event_type,
        changed_at: version.changed_at,
        changed_by: version.changed_by,
        reason: version.reason,
        item: version.item,
        as_of: None,
    }
}

async fn load_versions(
    state: &AppState,
    user: &AuthUser,
    params: &HashMap<String, String>,
    kind: ItemKind,
    what: &str,
) -> Result<(PatientId, ItemId, Vec<read_model::Version>), ApiError> {
    let id = patient_id(path_param(params, "id"))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let item_id = item_id(path_param(params, "item"))?;
    let versions = records::versions(state.services(), user, (id, kind, item_id), what).await?;
    Ok((id, item_id, versions))
}

/// `GET {kind}/{item}/versions`: every version, oldest first.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn versions(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let (id, item_id, versions) =
        load_versions(&state, &user, &params, kind, "medical-record-versions").await?;
    let versions = versions
        .into_iter()
        .map(|v| version_body(id, kind, item_id, v))
        .collect();
    Ok(Json(VersionsAnswer {
        item_id,
        kind,
        versions,
    })
    .into_response())
}

/// `GET {kind}/{item}/versions/{n}`.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn version(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let n: i32 = path_param(&params, "n")
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid_parameter("n", "must be a version number from 1"))?;
    let (id, item_id, versions) =
        load_versions(&state, &user, &params, kind, "medical-record-versions").await?;
    let version = versions
        .into_iter()
        .find(|v| v.version == n)
        .ok_or(ApiError::NotFound)?;
    Ok(Json(version_body(id, kind, item_id, version)).into_response())
}

/// `GET {kind}/{item}/diff?from=1&to=3`: the RFC 6902 JSON Patch that turns version `from`
/// of the item into version `to`.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn diff(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    unknown_params(&query, &["from", "to"], &mut errors);
    for key in ["from", "to"] {
        if !query.contains_key(key) {
            errors.push(FieldError::new(key, "is required"));
        }
    }
    let from: i32 = whole_number(&query, "from", 1, 1..=i32::MAX, &mut errors);
    let to: i32 = whole_number(&query, "to", 1, 1..=i32::MAX, &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let (_, _, versions) =
        load_versions(&state, &user, &params, kind, "medical-record-diff").await?;
    let find = |n: i32| {
        versions
            .iter()
            .find(|v| v.version == n)
            .ok_or(ApiError::NotFound)
    };
    let patch = json_patch::diff(&find(from)?.item, &find(to)?.item);
    let mut response = Json(patch).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json-patch+json"),
    );
    Ok(response)
}

const MAX_LIMIT: i64 = 100;

/// The status codes a kind's items have in the search read model.
fn status_codes(kind: ItemKind) -> &'static [&'static str] {
    use domain::medical_record::items as i;
    match kind {
        ItemKind::Allergy => i::AllergyClinicalStatus::CODES,
        ItemKind::Medication => i::MedicationStatus::CODES,
        ItemKind::Immunization => i::ImmunizationStatus::CODES,
        ItemKind::Problem => i::ProblemStatus::CODES,
        ItemKind::History => i::HistoryCategory::CODES,
        ItemKind::Document => &["current"],
        ItemKind::Observation => i::ObservationStatus::CODES,
        ItemKind::Procedure => i::ProcedureStatus::CODES,
        ItemKind::Encounter => i::EncounterStatus::CODES,
    }
}

/// `GET /v1/patients/{id}/medical-record/search?q=...`: full-text search over the patient's
/// items and documents, best first, with highlighted fragments. `kind` narrows it. Each
/// result row is recorded as an access.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn search_text(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = patient_id(path_param(&params, "id"))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let mut errors = FieldErrors::new();
    unknown_params(&query, &["q", "kind", "limit"], &mut errors);
    let q = query.get("q").map(|q| q.trim()).unwrap_or_default();
    if q.is_empty() || q.chars().count() > 200 {
        errors.push(FieldError::new("q", "is required: 1 to 200 characters"));
    }
    let kind = query
        .get("kind")
        .and_then(|k| errors.check(ItemKind::parse("kind", k)));
    let limit: i64 = whole_number(&query, "limit", 20, 1..=MAX_LIMIT, &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let hits = records::search_text(state.services(), &user, id, (q, kind, limit)).await?;
    let items = hits
        .into_iter()
        .map(|h| TextHitAnswer {
            href: format!(
                "/v1/patients/{}/{}/{}",
                h.patient_id,
                ItemKind::parse("kind", &h.kind).map_or("items", segment),
                h.item_id
            ),
            item_id: h.item_id,
            kind: h.kind,
            title: h.title,
            rank: h.rank,
            highlights: h.highlights,
        })
        .collect();
    Ok(Json(Items { items }).into_response())
}

/// `GET /v1/medical-records/search?kind=allergy&code=...`: items across patients by coded
/// concept (`system` and `code`), concept text (`text`), `status` or `active=true`, ordered by
/// patient. Clinicians see only patients they care for (or who share with clinicians);
/// `X-Purpose-Of-Use: research` leaves out patients who opted out. Each row is an access.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn search_items(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::SearchMedicalRecords>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    unknown_params(
        &query,
        &[
            "kind", "system", "code", "text", "status", "active", "after", "limit",
        ],
        &mut errors,
    );
    let kind = match query.get("kind") {
        Some(k) => errors.check(ItemKind::parse("kind", k)),
        None => {
            errors.push(FieldError::new("kind", "is required"));
            None
        }
    };
    let text_param = |key: &str, errors: &mut FieldErrors| {
        let value = query.get(key)?.trim();
        if value.is_empty() || value.len() > 255 {
            errors.push(FieldError::new(key, "must be 1 to 255 characters"));
            return None;
        }
        Some(value.to_owned())
    };
    let system = text_param("system", &mut errors);
    let code = text_param("code", &mut errors);
    let text = text_param("text", &mut errors);
    let status = text_param("status", &mut errors);
    if let (Some(kind), Some(status)) = (kind, &status) {
        let codes = status_codes(kind);
        if !codes.contains(&status.as_str()) {
            errors.push(FieldError::new(
                "status",
                format!("must be one of {} for {}", codes.join(", "), kind.code()),
            ));
        }
    }
    let active_only = match query.get("active").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            errors.push(FieldError::new("active", "must be true or false"));
            false
        }
    };
    if code.is_none() && text.is_none() && status.is_none() && !active_only {
        errors.push(FieldError::new(
            "code",
            "give at least one of code, text, status or active=true",
        ));
    }
    if code.is_some() != system.is_some() {
        errors.push(FieldError::new("system", "system and code go together"));
    }
    let after =
        query.get("after").and_then(|a| {
            let parsed = a
                .split_once(',')
                .and_then(|(p, i)| Some((Uuid::parse_str(p).ok()?, Uuid::parse_str(i).ok()?)));
            errors.check(parsed.ok_or_else(|| {
                FieldError::new("after", "must be the next cursor of a previous page")
            }))
        });
    let limit: i64 = whole_number(&query, "limit", 50, 1..=MAX_LIMIT, &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let criteria = Criteria {
        kind: kind.map(|k| k.code().to_owned()).unwrap_or_default(),
        system,
        code,
        text,
        active_only,
        status,
        after,
        limit,
    };
    let records::ItemPage {
        hits,
        next,
        incomplete,
    } = records::search_items(state.services(), &user, criteria).await?;
    let next = next.map(|(patient, item)| {
        let mut query_string: Vec<String> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "after")
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        query_string.sort();
        query_string.push(format!(
            "after={}",
            url_encode(&format!("{patient},{item}"))
        ));
        format!("/v1/medical-records/search?{}", query_string.join("&"))
    });
    Ok(Json(ItemPageAnswer {
        items: hits,
        incomplete,
        next,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_summary_names_each_kind_by_its_path_segment() {
        let summary = RecordSummary::new(PatientId::new(Uuid::nil()), 1);
        let value = serde_json::to_value(&summary).unwrap();
        for (segment, _) in KINDS {
            assert!(value[segment].is_array(), "{segment}: {value}");
        }
        assert_eq!(value.as_object().unwrap().len(), KINDS.len() + 2, "{value}");
    }
}
