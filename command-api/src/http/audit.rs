//! Replay for auditors: the full event history of a record, with who, when, why and in
//! answer to which request.
//!
//! `GET /v1/audit/streams/patient/{id}` answers every event of the patient in order, each in
//! its published (v1) form, national identifiers masked as everywhere in the API.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use cqrs_es::Aggregate;
use domain::patient::{Patient, PatientId};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use chrono::{DateTime, Utc};
use domain::{FieldError, FieldErrors};
use projections::audit_log;

use crate::auth::{permission, Action, Authorized};
use crate::http::governance::{page, AuditPage};
use crate::http::openapi::{self as doc, Kind, Routes};
use crate::http::params::{url_encode, whole_number};
use crate::http::{ApiError, AppState};

pub fn router() -> Routes {
    Routes::new()
        .route(
            "/v1/audit/streams/{aggregate_type}/{id}",
            get(stream),
            [
                doc::get("A patient's or medical record's events, as stored")
                    .needs(Action::ReadAuditTrail)
                    .path_param(
                        "aggregate_type",
                        serde_json::json!({ "enum": ["patient", "medical-record"] }),
                    )
                    .answers(200, "The stream's events, oldest first")
                    .returns::<StreamAnswer>(),
            ],
        )
        .route(
            "/v1/audit/entries",
            get(entries),
            [
                doc::get("The audit log: every event and access, oldest first")
                    .needs(Action::ReadAuditTrail)
                    .query(&[
                        ("patient", Kind::Id, false),
                        ("user", Kind::Text, false),
                        ("action", Kind::Text, false),
                        ("kind", Kind::Text, false),
                        ("from", Kind::Instant, false),
                        ("to", Kind::Instant, false),
                        ("after", Kind::Whole(0, i64::MAX), false),
                        ("limit", Kind::Whole(1, 1000), false),
                    ])
                    .answers(200, "A page of entries")
                    .returns::<AuditPage>(),
            ],
        )
}

/// `GET /v1/audit/entries?patient=&user=&action=&kind=&from=&to=&after=&limit=`: the audit log
/// (every event and access entry), oldest first, each narrowing parameter optional. Entries
/// hold ids and codes only.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn entries(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAuditTrail>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let known = [
        "patient", "user", "action", "kind", "from", "to", "after", "limit",
    ];
    for key in params.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(FieldError::new(key.clone(), "unknown parameter"));
    }
    let limit: u64 = whole_number(&params, "limit", 100, 1..=1000, &mut errors);
    let after: i64 = whole_number(&params, "after", 0, 0..=i64::MAX, &mut errors);
    let patient_id = params
        .get("patient")
        .and_then(|v| errors.check(PatientId::parse("patient", v)))
        .map(|p| p.as_uuid());
    let instant = |key: &str, errors: &mut FieldErrors| {
        params.get(key).and_then(|v| {
            errors.check(
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| FieldError::new(key, "must be an RFC 3339 instant")),
            )
        })
    };
    let from = instant("from", &mut errors);
    let to = instant("to", &mut errors);
    let kind = params.get("kind").and_then(|k| {
        errors.check(
            ["event", "access"]
                .contains(&k.as_str())
                .then(|| k.clone())
                .ok_or_else(|| FieldError::new("kind", "must be event or access")),
        )
    });
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let criteria = audit_log::Criteria {
        patient_id,
        user_id: params.get("user").cloned(),
        action: params.get("action").cloned(),
        kind,
        from,
        to,
        after: Some(after),
        limit: limit as i64 + 1,
    };
    let found = application::audit::entries(state.services(), &user, &criteria).await?;
    let mut query: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !["after", "limit"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    query.sort();
    Ok(Json(page(found, limit, |seq| {
        let mut parts: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        parts.push(format!("limit={limit}"));
        parts.push(format!("after={seq}"));
        format!("/v1/audit/entries?{}", parts.join("&"))
    })?)
    .into_response())
}

/// A patient's or medical record's events, oldest first.
#[derive(Serialize, JsonSchema)]
struct StreamAnswer {
    /// `patient` or `medical-record`.
    aggregate_type: String,
    id: uuid::Uuid,
    events: Vec<StreamEvent>,
}

/// One stored event, as the auditor sees it.
#[derive(Serialize, JsonSchema)]
struct StreamEvent {
    sequence: u64,
    position: i64,
    event_type: String,
    event_version: String,
    recorded_at: DateTime<Utc>,
    user_id: Option<String>,
    request_id: Option<String>,
    /// The patient was forgotten: the event's data is gone with their key.
    erased: bool,
    /// The reason given for the change, when one was.
    reason: Option<Value>,
    /// The event's payload as published (see the AsyncAPI document's schemas), national
    /// identifiers masked; of a medical record only the item and reason; `null` once erased.
    data: Value,
}

#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn stream(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAuditTrail>,
    Path((aggregate_type, raw_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let stored_type = match aggregate_type.as_str() {
        "patient" => Patient::TYPE,
        "medical-record" => domain::medical_record::MedicalRecord::TYPE,
        _ => return Err(ApiError::NotFound),
    };
    let id = PatientId::parse("id", &raw_id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let events = application::audit::history(state.services(), &user, (stored_type, id)).await?;
    let mut items = Vec::with_capacity(events.len());
    for event in &events {
        let (_, published) = event_store::wire::to_published(event, None)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        // Still sealed after opening: the patient was forgotten and this event is gone.
        let data = if published.sealed {
            Value::Null
        } else if stored_type != Patient::TYPE {
            // Clinical content is for those who may read the medical record, not auditors:
            // the trail says which item changed, who, when and why.
            let data: Value = serde_json::from_slice(&published.data)
                .map_err(|_| ApiError::Internal("a published event is not JSON".into()))?;
            json!({ "item_id": data["item_id"], "reason": data["reason"] })
        } else {
            let mut data: Value = serde_json::from_slice(&published.data)
                .map_err(|_| ApiError::Internal("a published event is not JSON".into()))?;
            application::audit::mask_national_identifiers(&mut data);
            data
        };
        items.push(StreamEvent {
            sequence: event.sequence,
            position: event.position,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            recorded_at: event.recorded_at,
            user_id: event.metadata("user_id").map(str::to_owned),
            request_id: event.metadata("request_id").map(str::to_owned),
            erased: published.sealed,
            reason: data.get("reason").cloned(),
            data,
        });
    }
    tracing::info!(events = items.len(), "audit stream read");
    Ok(Json(StreamAnswer {
        aggregate_type,
        id: id.as_uuid(),
        events: items,
    })
    .into_response())
}
