//! `Coverage`: a patient's insurance coverages, from the patient record (read and search by
//! patient, access-checked and recorded as a read of the patient). A coverage's id is the
//! patient's UUID and its own, as 64 hex digits.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use domain::patient::record::{Coverage, CoveragePriority};
use domain::patient::PatientId;
use domain::FieldErrors;
use serde_json::{json, Value};

use super::clinical::{fhir_id, parse_fhir_id};
use super::patient::base_url;
use super::{match_entry, outcome, patient_param, refuse_unknown, resource, searchset, Issue};
use crate::auth::{permission, Authorized};
use crate::http::{ApiError, AppState};
use application::finding;
use domain::medical_record::ItemId;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/Coverage", get(search))
        .route("/Coverage/{id}", get(read))
}

/// A coverage as a FHIR `Coverage`.
pub fn to_fhir(patient: PatientId, c: &Coverage) -> Value {
    let mut coverage = json!({
        "resourceType": "Coverage",
        "id": fhir_id(patient, ItemId::new(c.coverage_id)),
        "status": if c.ended { "cancelled" } else { "active" },
        "subscriberId": c.member_id,
        "beneficiary": { "reference": format!("Patient/{patient}") },
        "relationship": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
            "code": c.relationship.code(),
        }] },
        "period": { "start": c.start.format("%Y-%m-%d").to_string() },
        "payor": [{ "display": c.payer }],
        "order": match c.priority {
            CoveragePriority::Primary => 1,
            CoveragePriority::Secondary => 2,
            CoveragePriority::Tertiary => 3,
        },
    });
    if let Some(end) = c.end {
        coverage["period"]["end"] = json!(end.format("%Y-%m-%d").to_string());
    }
    let mut classes = Vec::new();
    for (code, value) in [("group", &c.group), ("plan", &c.plan)] {
        if let Some(value) = value {
            classes.push(json!({
                "type": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                    "code": code,
                }] },
                "value": value,
            }));
        }
    }
    if !classes.is_empty() {
        coverage["class"] = Value::Array(classes);
    }
    coverage
}

/// The patient's coverages, the patient read as `user` (access-checked and recorded).
async fn coverages_of(
    state: &AppState,
    user: &crate::auth::AuthUser,
    patient: PatientId,
) -> Result<Vec<Coverage>, ApiError> {
    let (found, _) = finding::read(state.services(), user, patient).await?;
    Ok(found
        .record()
        .map(|r| r.coverages.clone())
        .unwrap_or_default())
}

/// `GET /Coverage/{id}`.
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such Coverage").at("id")],
        )
    };
    let Some((patient, wanted)) = parse_fhir_id(&raw) else {
        return Ok(not_found());
    };
    let coverages = coverages_of(&state, &user, patient).await?;
    Ok(
        match coverages.iter().find(|c| c.coverage_id == wanted.as_uuid()) {
            Some(c) => resource(StatusCode::OK, &to_fhir(patient, c)),
            None => not_found(),
        },
    )
}

/// `GET /Coverage?patient=...` (or `beneficiary=`): the patient's coverages, ended ones too.
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    refuse_unknown(
        params.keys(),
        &["patient", "beneficiary", "status"],
        "Coverage",
        &mut errors,
    );
    let patient = patient_param(&params, &["patient", "beneficiary"], &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let patient = patient.ok_or(ApiError::NotFound)?;
    let base = base_url(&state, &headers);
    let entries: Vec<Value> = coverages_of(&state, &user, patient)
        .await?
        .iter()
        .map(|c| to_fhir(patient, c))
        .filter(|c| {
            params
                .get("status")
                .is_none_or(|s| c["status"] == s.as_str())
        })
        .map(|c| match_entry(&base, c))
        .collect();
    Ok(resource(StatusCode::OK, &searchset(entries)))
}
