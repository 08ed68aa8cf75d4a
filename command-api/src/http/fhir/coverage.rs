//! `Coverage`: a patient's insurance coverages, held in the patient record. Read and search by
//! patient (access-checked and recorded as a read of the patient); create and update as the
//! native coverage commands (a registrar's). A coverage's id is the patient's UUID and its own,
//! as 64 hex digits; its version is the patient record's (a coverage has no history of its own:
//! the patient's `_history` holds it).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use domain::patient::record::{Coverage, CoveragePriority};
use domain::patient::PatientId;
use domain::patient::{PatientCommand, RecordChange};
use domain::{FieldError, FieldErrors};
use serde_json::{json, Map, Value};

use super::clinical::{fhir_id, parse_fhir_id};
use super::record_part::Part;
use super::Write;
use crate::auth::{permission, Authorized};
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};
use application::policy::Action;
use domain::medical_record::ItemId;

/// Coverages, as parts of the patient record.
pub(super) const COVERAGE: Part<Coverage> = Part {
    name: "Coverage",
    missing: "no such Coverage",
    of: |record| record.coverages.as_slice(),
    id: |coverage| coverage.coverage_id,
    to_fhir,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/Coverage", get(search).post(create))
        .route("/Coverage/{id}", get(read).put(update))
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

/// A FHIR `Coverage` as the native coverage body, and the patient it covers (its
/// `beneficiary`). Elements the record does not hold are left out.
fn native(resource: &Value) -> Result<(PatientId, Map<String, Value>), ApiError> {
    let mut errors = FieldErrors::new();
    if resource["resourceType"] != "Coverage" {
        errors.push(FieldError::new(
            "Coverage.resourceType",
            "must be Coverage at this address",
        ));
    }
    let patient = resource["beneficiary"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(|id| PatientId::parse("beneficiary", id).ok());
    if patient.is_none() {
        errors.push(FieldError::new(
            "Coverage.beneficiary",
            "must reference the patient: Patient/<id>",
        ));
    }
    if !matches!(resource["status"].as_str(), Some("active")) {
        errors.push(FieldError::new(
            "Coverage.status",
            "must be active (a coverage ends through period.end, which stays on record)",
        ));
    }
    let mut body = Map::new();
    // The payer by name, else by reference or identifier; the member by subscriberId, else by
    // the coverage's identifier (the insurer's number for it).
    let payor = &resource["payor"][0];
    let payer = payor["display"]
        .as_str()
        .or(payor["reference"].as_str())
        .or(payor["identifier"]["value"].as_str());
    if let Some(payer) = payer {
        body.insert("payer".into(), json!(payer));
    }
    let member = resource["subscriberId"]
        .as_str()
        .or(resource["identifier"][0]["value"].as_str());
    if let Some(member) = member {
        body.insert("member_id".into(), json!(member));
    }
    for class in resource["class"].as_array().into_iter().flatten() {
        if let Some(code @ ("group" | "plan")) = class["type"]["coding"][0]["code"].as_str() {
            body.insert(code.into(), class["value"].clone());
        }
    }
    if let Some(code) = resource["relationship"]["coding"][0]["code"].as_str() {
        body.insert("relationship".into(), json!(code));
    }
    for (fhir, native) in [("start", "start"), ("end", "end")] {
        if let Some(date) = resource["period"][fhir].as_str() {
            body.insert(native.into(), json!(date));
        }
    }
    let priority = match resource["order"].as_u64() {
        None | Some(1) => "primary",
        Some(2) => "secondary",
        Some(3) => "tertiary",
        Some(_) => {
            errors.push(FieldError::new(
                "Coverage.order",
                "must be 1, 2 or 3 (primary, secondary, tertiary)",
            ));
            "primary"
        }
    };
    body.insert("priority".into(), json!(priority));
    errors.into_result().map_err(ApiError::Validation)?;
    Ok((patient.ok_or(ApiError::NotFound)?, body))
}

/// The native coverage fields as FHIRPath, for errors.
fn coverage_paths(errors: &FieldErrors) -> FieldErrors {
    let mut renamed = FieldErrors::new();
    for e in errors.iter() {
        let path = match e.field.as_str() {
            "payer" => "Coverage.payor",
            "member_id" => "Coverage.subscriberId",
            "plan" | "group" => "Coverage.class",
            "relationship" => "Coverage.relationship",
            "start" => "Coverage.period.start",
            "end" => "Coverage.period.end",
            "priority" => "Coverage.order",
            field if field.starts_with("subscriber_name") => "Coverage.subscriber",
            _ => "Coverage",
        };
        renamed.push(FieldError::new(path, e.message.clone()));
    }
    renamed
}

/// Runs a coverage change on the patient; answers the coverage as it is after it.
async fn change_coverage(
    state: &AppState,
    write: &Write<permission::ChangeCoverages>,
    (patient, expected): (PatientId, Option<u64>),
    change: RecordChange,
    coverage_id: uuid::Uuid,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let (changed, version) = application::patients::change(
        state.services(),
        &write.user,
        (Action::ChangeCoverages, PatientCommand::Change(change)),
        (patient, expected),
        metadata(&write.user, &write.ctx, None),
    )
    .await?;
    Ok(COVERAGE.written(
        (state, &write.headers),
        (patient, version),
        COVERAGE.after(&changed, coverage_id)?,
        (status, |_| {}),
    ))
}

/// `POST /Coverage`: adds the coverage to its beneficiary's record.
async fn create(
    State(state): State<AppState>,
    write: Write<permission::ChangeCoverages>,
) -> Result<Response, ApiError> {
    let (patient, body) = native(&write.resource)?;
    let coverage_id = write.imported_id.unwrap_or_else(uuid::Uuid::new_v4);
    let coverage = crate::http::input::patient::coverage_body(&body, coverage_id)
        .map_err(|errors| ApiError::Validation(coverage_paths(&errors)))?;
    let at = (state.clock)();
    let change = RecordChange::AddCoverage { coverage, at };
    change_coverage(
        &state,
        &write,
        (patient, None),
        change,
        coverage_id,
        StatusCode::CREATED,
    )
    .await
}

/// `PUT /Coverage/{id}` with `If-Match` (the patient record's version): replaces the coverage.
async fn update(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    write: Write<permission::ChangeCoverages>,
) -> Result<Response, ApiError> {
    let expected = super::expected_version(&write.headers)?;
    let Some((patient, item)) = parse_fhir_id(&raw) else {
        return Err(ApiError::NotFound);
    };
    if write.resource["id"].as_str() != Some(raw.as_str()) {
        return Err(ApiError::Validation(
            FieldError::new("Coverage.id", "must be the id in the address").into(),
        ));
    }
    let (named, body) = native(&write.resource)?;
    if named != patient {
        return Err(ApiError::Validation(
            FieldError::new(
                "Coverage.beneficiary",
                "cannot move the coverage to another patient",
            )
            .into(),
        ));
    }
    let coverage = crate::http::input::patient::coverage_body(&body, item.as_uuid())
        .map_err(|errors| ApiError::Validation(coverage_paths(&errors)))?;
    let at = (state.clock)();
    let change = RecordChange::ChangeCoverage { coverage, at };
    change_coverage(
        &state,
        &write,
        (patient, Some(expected)),
        change,
        item.as_uuid(),
        StatusCode::OK,
    )
    .await
}

/// `GET /Coverage/{id}`.
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    COVERAGE.read(&state, &user, &raw).await
}

/// `GET /Coverage?patient=...` (or `beneficiary=`): the patient's coverages, ended ones too.
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let status = params.get("status").cloned();
    COVERAGE
        .search(
            (&state, &user, &headers),
            &params,
            (&["patient", "beneficiary"], &["status"]),
            |c| status.as_ref().is_none_or(|s| c["status"] == s.as_str()),
        )
        .await
}
