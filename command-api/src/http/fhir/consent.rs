//! `Consent`: the consent directives in force on a patient's record, from the patient record
//! (read and search by patient, access-checked and recorded as a read of the patient). A
//! directive's id is the patient's UUID and its own, as 64 hex digits.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use domain::patient::governance::{Consent, ConsentDirective};
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
        .route("/Consent", get(search))
        .route("/Consent/{id}", get(read))
}

/// A directive in force as a FHIR `Consent`: sharing as an opt-in permitting access to the
/// organization or role named, a research opt-out as a denial for research.
pub fn to_fhir(patient: PatientId, c: &Consent) -> Value {
    let (scope, rule, provision) = match &c.directive {
        ConsentDirective::ShareWithOrganization { organization } => (
            "patient-privacy",
            "OPTIN",
            json!({
                "type": "permit",
                "actor": [{
                    "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP" }] },
                    "reference": { "display": format!("organization {}", organization.as_str()) },
                }],
                "action": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access" }] }],
            }),
        ),
        ConsentDirective::ShareWithRole { role } => (
            "patient-privacy",
            "OPTIN",
            json!({
                "type": "permit",
                "actor": [{
                    "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP" }] },
                    "reference": { "display": format!("every {role}") },
                }],
                "action": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access" }] }],
            }),
        ),
        ConsentDirective::ResearchOptOut => (
            "research",
            "OPTOUT",
            json!({
                "type": "deny",
                "purpose": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH" }],
            }),
        ),
    };
    json!({
        "resourceType": "Consent",
        "id": fhir_id(patient, ItemId::new(c.consent_id)),
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": scope }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent" }] }],
        "patient": { "reference": format!("Patient/{patient}") },
        "dateTime": c.granted_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": rule }] },
        "provision": provision,
    })
}

/// The directives in force on the patient's record, the patient read as `user`.
async fn consents_of(
    state: &AppState,
    user: &crate::auth::AuthUser,
    patient: PatientId,
) -> Result<Vec<Consent>, ApiError> {
    let (found, _) = finding::read(state.services(), user, patient).await?;
    Ok(found
        .record()
        .map(|r| r.governance.consents.clone())
        .unwrap_or_default())
}

/// `GET /Consent/{id}`.
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such Consent in force").at("id")],
        )
    };
    let Some((patient, wanted)) = parse_fhir_id(&raw) else {
        return Ok(not_found());
    };
    let consents = consents_of(&state, &user, patient).await?;
    Ok(
        match consents.iter().find(|c| c.consent_id == wanted.as_uuid()) {
            Some(c) => resource(StatusCode::OK, &to_fhir(patient, c)),
            None => not_found(),
        },
    )
}

/// `GET /Consent?patient=...`: the directives in force.
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    refuse_unknown(params.keys(), &["patient"], "Consent", &mut errors);
    let patient = patient_param(&params, &["patient"], &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let patient = patient.ok_or(ApiError::NotFound)?;
    let base = base_url(&state, &headers);
    let entries: Vec<Value> = consents_of(&state, &user, patient)
        .await?
        .iter()
        .map(|c| match_entry(&base, to_fhir(patient, c)))
        .collect();
    Ok(resource(StatusCode::OK, &searchset(entries)))
}
