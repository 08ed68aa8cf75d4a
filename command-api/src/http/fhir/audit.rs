//! Read-only `AuditEvent` and `Provenance`.
//!
//! - `AuditEvent`: the patient's accounting of disclosures (every read of their data, granted
//!   or denied), after IHE Basic Audit Log Patterns: a RESTful read or search by a user, its
//!   outcome, its purpose when it was an emergency.
//! - `Provenance`: who changed the patient's record, from each event's metadata: one per
//!   version, targeting that version.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use domain::patient::PatientId;
use domain::{FieldError, FieldErrors};
use projections::audit_log::AuditEntry;
use serde_json::{json, Value};

use super::patient::base_url;
use super::{match_entry, patient_param, refuse_unknown, resource, searchset};
use crate::auth::{permission, Authorized};
use crate::http::{ApiError, AppState};

/// The most entries one search answers.
const MAX_COUNT: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/AuditEvent", get(audit_events))
        .route("/Provenance", get(provenances))
}

/// The patient a search names in `keys` (`Patient/<id>` or `<id>`), and `_count`.
fn patient_and_count(
    params: &HashMap<String, String>,
    keys: &[&str],
    name: &str,
) -> Result<(PatientId, i64), ApiError> {
    let mut errors = FieldErrors::new();
    let known: Vec<&str> = keys.iter().copied().chain(["_count"]).collect();
    refuse_unknown(params.keys(), &known, name, &mut errors);
    let patient = patient_param(params, keys, &mut errors);
    let count = match params.get("_count") {
        None => 100,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_COUNT).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "_count",
                    format!("must be a whole number from 1 to {MAX_COUNT}"),
                ));
                100
            }
        },
    };
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    Ok((patient.ok_or(ApiError::NotFound)?, count))
}

/// An access entry as an `AuditEvent`.
pub fn audit_event(patient: PatientId, e: &AuditEntry) -> Value {
    let search = e.action.contains("search");
    let granted = e.detail["outcome"] != "denied";
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": e.entry_id.to_string(),
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                  "code": "rest", "display": "RESTful Operation" },
        "subtype": [{ "system": "http://hl7.org/fhir/restful-interaction",
                      "code": if search { "search-type" } else { "read" } }],
        "action": if search { "E" } else { "R" },
        "recorded": e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "outcome": if granted { "0" } else { "4" },
        "outcomeDesc": e.action,
        "agent": [{
            "who": { "display": e.user_id.as_deref().unwrap_or("unknown") },
            "requestor": true,
        }],
        "source": { "observer": { "display": "patient-service" } },
        "entity": [{ "what": { "reference": format!("Patient/{patient}") },
                     "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role",
                               "code": "1", "display": "Patient" } }],
    });
    if e.detail
        .get("emergency_reason")
        .is_some_and(|r| !r.is_null())
    {
        event["purposeOfEvent"] = json!([{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": "ETREAT", "display": "Emergency Treatment" }] }]);
    }
    event
}

/// `GET /AuditEvent?patient=...` (or `entity=`): the patient's accounting of disclosures,
/// oldest first (admin, or the patient themself).
async fn audit_events(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadDisclosures>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (patient, count) = patient_and_count(&params, &["patient", "entity"], "AuditEvent")?;
    let entries =
        application::audit::disclosures(state.services(), &user, patient, (0, count)).await?;
    let base = base_url(&state, &headers);
    let entries = entries
        .iter()
        .filter(|e| e.kind == "access")
        .map(|e| match_entry(&base, audit_event(patient, e)))
        .collect();
    Ok(resource(StatusCode::OK, &searchset(entries)))
}

/// `GET /Provenance?target=Patient/<id>` (or `patient=`): one Provenance per version of the
/// patient's record (admin, auditor): who made it, when, and what it was.
async fn provenances(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAuditTrail>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (patient, count) = patient_and_count(&params, &["target", "patient"], "Provenance")?;
    let events = application::audit::history(state.services(), &user, ("Patient", patient)).await?;
    let base = base_url(&state, &headers);
    let entries = events
        .iter()
        .take(usize::try_from(count).unwrap_or(100))
        .map(|event| {
            let id = schemas::envelope::event_id_in_epoch(
                &event.aggregate_type,
                &event.aggregate_id,
                event.sequence,
                event.epoch,
            );
            let operation = if event.sequence == 1 { "CREATE" } else { "UPDATE" };
            let mut provenance = json!({
                "resourceType": "Provenance",
                "id": id.to_string(),
                "target": [{ "reference": format!("Patient/{patient}/_history/{}", event.sequence) }],
                "recorded": event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "activity": {
                    "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": operation }],
                    "text": event.event_type,
                },
                "agent": [{ "who": { "display": event.metadata("user_id").unwrap_or("unknown") } }],
            });
            if let Some(request) = event.metadata("request_id") {
                provenance["entity"] = json!([{ "role": "source",
                    "what": { "identifier": { "system": "urn:patient-service:request-id", "value": request } } }]);
            }
            match_entry(&base, provenance)
        })
        .collect();
    Ok(resource(StatusCode::OK, &searchset(entries)))
}
