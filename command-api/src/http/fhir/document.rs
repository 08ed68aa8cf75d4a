//! `DocumentReference` writes: a document created with its bytes inline
//! (`content[0].attachment.data`, base64, of a media type the service extracts text from), and
//! what describes it revised by an update (its bytes stay as stored). Through the same use case
//! as the native upload: the text extracted, bytes and text sealed with the patient's key, the
//! document recorded as an item of the medical record. Reads are the clinical resources'
//! ([`super::clinical`]); the bytes read back as a `Binary`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{post, put};
use axum::Router;
use base64::Engine as _;
use chrono::NaiveDate;
use domain::medical_record::items::DocumentContent;
use domain::medical_record::ItemId;
use domain::patient::PatientId;
use domain::{FieldError, FieldErrors};
use serde_json::{json, Map, Value};

use super::clinical::{parse_fhir_id, written};
use super::{expected_version, Write, CHANGE_REASON, DEFAULT_REASON};
use crate::auth::permission;
use crate::extraction;
use crate::http::input;
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};
use application::records;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/DocumentReference", post(create))
        .route("/DocumentReference/{id}", put(update))
}

/// The native document fields as FHIRPath, for errors.
fn document_paths(errors: &FieldErrors) -> FieldErrors {
    let mut renamed = FieldErrors::new();
    for e in errors.iter() {
        let path = match e.field.as_str() {
            "title" => "DocumentReference.description".to_owned(),
            "author" => "DocumentReference.author".to_owned(),
            "date" => "DocumentReference.content[0].attachment.creation".to_owned(),
            "reason" => CHANGE_REASON.to_owned(),
            field if field.starts_with("document_type") => "DocumentReference.type".to_owned(),
            field if field.starts_with("note") => "DocumentReference.content".to_owned(),
            other => format!("DocumentReference.{other}"),
        };
        renamed.push(FieldError::new(path, e.message.clone()));
    }
    renamed
}

/// What describes the document, as the native metadata: its title (`description`, else the
/// attachment's title), type, author (a reference, else a display, else the caller) and date
/// (the attachment's creation, else the resource's date, else `today`).
fn describing(resource: &Value, caller: &str, today: NaiveDate) -> Map<String, Value> {
    let attachment = &resource["content"][0]["attachment"];
    let mut body = Map::new();
    if let Some(title) = resource["description"]
        .as_str()
        .or(attachment["title"].as_str())
    {
        body.insert("title".into(), json!(title));
    }
    let kind = &resource["type"];
    let coding = &kind["coding"][0];
    if kind.is_object() {
        let mut concept = Map::new();
        for key in ["system", "code"] {
            if let Some(value) = coding.get(key) {
                concept.insert(key.into(), value.clone());
            }
        }
        if let Some(text) = kind["text"].as_str().or(coding["display"].as_str()) {
            concept.insert("text".into(), json!(text));
        }
        body.insert("document_type".into(), Value::Object(concept));
    }
    let author = &resource["author"][0];
    let author = author["reference"]
        .as_str()
        .or(author["display"].as_str())
        .unwrap_or(caller);
    body.insert("author".into(), json!(author));
    let date = attachment["creation"]
        .as_str()
        .or(resource["date"].as_str())
        .and_then(|d| d.get(..10))
        .map_or_else(|| today.format("%Y-%m-%d").to_string(), str::to_owned);
    body.insert("date".into(), json!(date));
    body
}

/// The patient a DocumentReference names as `subject`.
fn subject(resource: &Value) -> Result<PatientId, ApiError> {
    resource["subject"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(|id| PatientId::parse("subject", id).ok())
        .ok_or_else(|| {
            ApiError::Validation(
                FieldError::new(
                    "DocumentReference.subject",
                    "must reference the patient: Patient/<id>",
                )
                .into(),
            )
        })
}

/// `POST /DocumentReference`: the document and its bytes.
async fn create(
    State(state): State<AppState>,
    write: Write<permission::WriteMedicalRecord>,
) -> Result<Response, ApiError> {
    let resource = &write.resource;
    if resource["resourceType"] != "DocumentReference" {
        return Err(ApiError::Validation(
            FieldError::new("resourceType", "must be DocumentReference at this address").into(),
        ));
    }
    let patient = subject(resource)?;
    let writer = records::writer(state.services(), &write.user, patient).await?;
    writer.may_author()?;
    let mut errors = FieldErrors::new();
    if resource["status"] != "current" {
        errors.push(FieldError::new(
            "DocumentReference.status",
            "must be current: a document is recorded as it stands",
        ));
    }
    let attachment = &resource["content"][0]["attachment"];
    let accepted: Vec<&str> = extraction::MEDIA_TYPES.iter().map(|(t, _)| *t).collect();
    let media_type = attachment["contentType"]
        .as_str()
        .and_then(extraction::accepted);
    if media_type.is_none() {
        errors.push(FieldError::new(
            "DocumentReference.content[0].attachment.contentType",
            format!("must be one of {}", accepted.join(", ")),
        ));
    }
    let bytes = match attachment["data"].as_str() {
        Some(data) => match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(bytes) if !bytes.is_empty() => Some(bytes),
            _ => {
                errors.push(FieldError::new(
                    "DocumentReference.content[0].attachment.data",
                    "must be the document's bytes in base64, not empty",
                ));
                None
            }
        },
        None => {
            errors.push(FieldError::new(
                "DocumentReference.content[0].attachment.data",
                "is required: the service stores the document's bytes (a url elsewhere is not fetched)",
            ));
            None
        }
    };
    errors.into_result().map_err(ApiError::Validation)?;
    let (Some(media_type), Some(bytes)) = (media_type, bytes) else {
        return Err(ApiError::NotFound);
    };
    if bytes.len() > state.document_max_bytes {
        return Err(ApiError::PayloadTooLarge);
    }
    let today = writer.today();
    let described = describing(resource, &write.user.id, today);
    // Checked before the work of extraction and storage.
    let placeholder = DocumentContent {
        media_type: media_type.to_owned(),
        size: bytes.len() as u64,
        sha256: String::new(),
        text_sha256: None,
        text_length: 0,
    };
    input::record::document(&described, "", placeholder, today)
        .map_err(|errors| ApiError::Validation(document_paths(&errors)))?;
    let item_id = ItemId::new(uuid::Uuid::new_v4());
    let upload = records::Upload {
        media_type,
        bytes,
        describe: |content| input::record::document(&described, "", content, today),
    };
    let record = writer
        .store_document(item_id, upload, metadata(&write.user, &write.ctx, None))
        .await?;
    let item = record.item(item_id).ok_or(ApiError::NotFound)?;
    Ok(written(
        &state,
        &write.headers,
        (patient, item),
        StatusCode::CREATED,
    ))
}

/// `PUT /DocumentReference/{id}` with `If-Match`: revises what describes the document, for the
/// reason in `X-Change-Reason`. Its bytes cannot change: an attachment sent with other data is
/// refused.
async fn update(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    write: Write<permission::WriteMedicalRecord>,
) -> Result<Response, ApiError> {
    let expected = expected_version(&write.headers)?;
    let Some((patient, item_id)) = parse_fhir_id(&raw) else {
        return Err(ApiError::NotFound);
    };
    let resource = &write.resource;
    if resource["id"].as_str() != Some(raw.as_str()) {
        return Err(ApiError::Validation(
            FieldError::new("DocumentReference.id", "must be the id in the address").into(),
        ));
    }
    if subject(resource)? != patient {
        return Err(ApiError::Validation(
            FieldError::new(
                "DocumentReference.subject",
                "cannot move the document to another patient",
            )
            .into(),
        ));
    }
    let writer = records::writer(state.services(), &write.user, patient).await?;
    writer.may_author()?;
    let current = writer.document_content(item_id).await?;
    if let Some(data) = resource["content"][0]["attachment"]["data"].as_str() {
        let same = base64::engine::general_purpose::STANDARD
            .decode(data)
            .is_ok_and(|bytes| event_store::documents::sha256_hex(&bytes) == current.sha256);
        if !same {
            return Err(ApiError::Validation(
                FieldError::new(
                    "DocumentReference.content[0].attachment.data",
                    "cannot change: a document's bytes stay as stored (create another)",
                )
                .into(),
            ));
        }
    }
    let today = writer.today();
    let mut described = describing(resource, &write.user.id, today);
    let reason = write
        .headers
        .get(CHANGE_REASON)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_REASON);
    described.insert("reason".into(), json!(reason));
    let revision = input::record::document_revision(&described, current, today)
        .map_err(|errors| ApiError::Validation(document_paths(&errors)))?;
    let record = writer
        .revise(
            (item_id, expected),
            revision,
            metadata(&write.user, &write.ctx, None),
        )
        .await?;
    let item = record.item(item_id).ok_or(ApiError::NotFound)?;
    Ok(written(
        &state,
        &write.headers,
        (patient, item),
        StatusCode::OK,
    ))
}
