//! Replay for auditors: the full event history of a record, with who, when, why and in
//! answer to which request.
//!
//! `GET /v1/audit/streams/patient/{id}` answers every event of the patient in order, each in
//! its published (v1) form, national identifiers masked as everywhere in the API.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cqrs_es::Aggregate;
use domain::patient::{Patient, PatientId};
use serde_json::{json, Value};

use crate::auth::{permission, Authorized};
use crate::http::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit/streams/{aggregate_type}/{id}", get(stream))
}

/// Replaces the value of every national identifier in `data` by its masked form.
pub fn mask_national_identifiers(data: &mut Value) {
    match data {
        Value::Object(map) => {
            if map.get("national") == Some(&Value::Bool(true)) {
                if let Some(Value::String(value)) = map.get("value") {
                    let masked = domain::patient::contact::Identifier {
                        system: String::new(),
                        value: value.clone(),
                        national: true,
                    }
                    .display_value();
                    map.insert("value".into(), Value::String(masked));
                }
            }
            map.values_mut().for_each(mask_national_identifiers);
        }
        Value::Array(items) => items.iter_mut().for_each(mask_national_identifiers),
        _ => {}
    }
}

#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn stream(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAuditTrail>,
    Path((aggregate_type, raw_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if aggregate_type != "patient" {
        return Err(ApiError::NotFound);
    }
    let id = PatientId::parse("id", &raw_id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let mut events =
        event_store::stream::history(&state.pool, Patient::TYPE, &id.to_string()).await?;
    event_store::stream::open(state.store.keys(), &state.pool, &mut events).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound);
    }
    let mut items = Vec::with_capacity(events.len());
    for event in &events {
        let (_, published) = event_store::wire::to_published(event, None)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        // Still sealed after opening: the patient was forgotten and this event is gone.
        let data = if published.sealed {
            Value::Null
        } else {
            let mut data: Value = serde_json::from_slice(&published.data)
                .map_err(|_| ApiError::Internal("a published event is not JSON".into()))?;
            mask_national_identifiers(&mut data);
            data
        };
        items.push(json!({
            "sequence": event.sequence,
            "position": event.position,
            "event_type": event.event_type,
            "event_version": event.event_version,
            "recorded_at": event.recorded_at,
            "user_id": event.metadata("user_id"),
            "request_id": event.metadata("request_id"),
            "erased": published.sealed,
            "reason": data.get("reason").cloned(),
            "data": data,
        }));
    }
    tracing::info!(events = items.len(), "audit stream read");
    Ok(Json(json!({
        "aggregate_type": "patient",
        "id": id,
        "events": items,
    }))
    .into_response())
}
