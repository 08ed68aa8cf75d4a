//! `Consent`: the consent directives in force on a patient's record, held in the patient
//! record. Read and search by patient (access-checked and recorded as a read of the patient);
//! create grants a directive and an update to `status: inactive` withdraws it, as the native
//! consent commands (admin, registrar, or the patient). A directive's id is the patient's UUID
//! and its own, as 64 hex digits; its version is the patient record's.
//!
//! The directives the service holds, as FHIR: a research opt-out (`provision.type` deny with
//! purpose `HRESCH`, or scope `research`), sharing with another organization (`permit`, an
//! actor `Organization/<id>`), and sharing with every clinician (`permit`, an actor shown as
//! `every clinician`). Any other Consent is refused naming `Consent.provision`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use domain::patient::governance::{Consent, ConsentDirective, GovernanceChange, Principal};
use domain::patient::{PatientCommand, PatientId, Reason};
use domain::{FieldError, FieldErrors};
use serde_json::{json, Value};

use super::clinical::{fhir_id, parse_fhir_id};
use super::record_part::Part;
use super::{expected_version, Write, CHANGE_REASON, DEFAULT_REASON};
use crate::auth::{permission, Authorized};
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};
use application::policy::Action;
use domain::medical_record::ItemId;

/// The directives in force, as parts of the patient record.
pub(super) const CONSENT: Part<Consent> = Part {
    name: "Consent",
    missing: "no such Consent in force",
    of: |record| record.governance.consents.as_slice(),
    id: |consent| consent.consent_id,
    to_fhir,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/Consent", get(search).post(create))
        .route("/Consent/{id}", get(read).put(update))
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
                    "reference": organization_reference(organization.as_str()),
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

/// An organization as a FHIR reference: `Organization/<id>` when its name is a FHIR id,
/// else by display.
fn organization_reference(organization: &str) -> Value {
    let is_id = (1..=64).contains(&organization.len())
        && organization
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if is_id {
        json!({ "reference": format!("Organization/{organization}"), "display": format!("organization {organization}") })
    } else {
        json!({ "display": format!("organization {organization}") })
    }
}

/// The patient a FHIR Consent is about, and the directive it states; every bad element named.
fn directive(resource: &Value) -> Result<(PatientId, ConsentDirective), ApiError> {
    let mut errors = FieldErrors::new();
    if resource["resourceType"] != "Consent" {
        errors.push(FieldError::new(
            "Consent.resourceType",
            "must be Consent at this address",
        ));
    }
    let patient = resource["patient"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(|id| PatientId::parse("patient", id).ok());
    if patient.is_none() {
        errors.push(FieldError::new(
            "Consent.patient",
            "must reference the patient: Patient/<id>",
        ));
    }
    if resource["status"] != "active" {
        errors.push(FieldError::new(
            "Consent.status",
            "must be active: a directive is granted in force",
        ));
    }
    let provision = &resource["provision"];
    let scope = resource["scope"]["coding"][0]["code"].as_str();
    let research = provision["purpose"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["code"] == "HRESCH")
        || scope == Some("research");
    let actors: Vec<&Value> = provision["actor"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let organization = actors.iter().find_map(|a| {
        a["reference"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Organization/"))
    });
    let clinicians = actors
        .iter()
        .any(|a| a["reference"]["display"] == "every clinician");
    let directive = match (
        provision["type"].as_str(),
        research,
        organization,
        clinicians,
    ) {
        (Some("deny"), true, None, false) => Some(ConsentDirective::ResearchOptOut),
        (Some("permit"), false, Some(organization), false) => {
            match Principal::parse("Consent.provision.actor", organization) {
                Ok(organization) => Some(ConsentDirective::ShareWithOrganization { organization }),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        }
        (Some("permit"), false, None, true) => Some(ConsentDirective::ShareWithRole {
            role: "clinician".to_owned(),
        }),
        _ => {
            errors.push(FieldError::new(
                "Consent.provision",
                "must state a directive the service holds: a research opt-out (type deny, \
                 purpose HRESCH), sharing with an organization (type permit, an actor \
                 Organization/<id>) or with every clinician (type permit, an actor shown as \
                 every clinician)",
            ));
            None
        }
    };
    errors.into_result().map_err(ApiError::Validation)?;
    match (patient, directive) {
        (Some(patient), Some(directive)) => Ok((patient, directive)),
        _ => Err(ApiError::NotFound),
    }
}

/// `POST /Consent`: grants the directive on the patient's record.
async fn create(
    State(state): State<AppState>,
    write: Write<permission::ManageConsents>,
) -> Result<Response, ApiError> {
    let (patient, directive) = directive(&write.resource)?;
    let consent_id = uuid::Uuid::new_v4();
    let change = GovernanceChange::GrantConsent {
        consent_id,
        directive,
        at: (state.clock)(),
    };
    let (changed, version) = application::patients::change(
        state.services(),
        &write.user,
        (Action::ManageConsents, PatientCommand::Govern(change)),
        (patient, None),
        metadata(&write.user, &write.ctx, None),
    )
    .await?;
    Ok(CONSENT.written(
        (&state, &write.headers),
        (patient, version),
        CONSENT.after(&changed, consent_id)?,
        (StatusCode::CREATED, |_| {}),
    ))
}

/// `PUT /Consent/{id}` with `If-Match` (the patient record's version): `status: inactive`
/// withdraws the directive, for the reason in `X-Change-Reason`. A directive is not otherwise
/// changed: it is withdrawn and another granted.
async fn update(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    write: Write<permission::ManageConsents>,
) -> Result<Response, ApiError> {
    let expected = expected_version(&write.headers)?;
    let Some((patient, item)) = parse_fhir_id(&raw) else {
        return Err(ApiError::NotFound);
    };
    if write.resource["id"].as_str() != Some(raw.as_str()) {
        return Err(ApiError::Validation(
            FieldError::new("Consent.id", "must be the id in the address").into(),
        ));
    }
    if write.resource["status"] != "inactive" {
        return Err(ApiError::Validation(
            FieldError::new(
                "Consent.status",
                "must be inactive: an update withdraws the directive (grant another to change it)",
            )
            .into(),
        ));
    }
    let (consents, _) = CONSENT.all(&state, &write.user, patient).await?;
    let Some(withdrawn) = consents
        .into_iter()
        .find(|c| c.consent_id == item.as_uuid())
    else {
        return Err(ApiError::NotFound);
    };
    let reason = write
        .headers
        .get(CHANGE_REASON)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_REASON);
    let reason = Reason::parse(CHANGE_REASON, reason)
        .map_err(|e| ApiError::invalid_parameter("X-Change-Reason", &e.message))?;
    let change = GovernanceChange::WithdrawConsent {
        consent_id: item.as_uuid(),
        reason,
        at: (state.clock)(),
    };
    let (_, version) = application::patients::change(
        state.services(),
        &write.user,
        (Action::ManageConsents, PatientCommand::Govern(change)),
        (patient, Some(expected)),
        metadata(&write.user, &write.ctx, None),
    )
    .await?;
    // Answered as it stood, withdrawn: it is no longer anywhere to be read.
    let mut answer = CONSENT.written(
        (&state, &write.headers),
        (patient, version),
        &withdrawn,
        (StatusCode::OK, |body| body["status"] = json!("inactive")),
    );
    answer.headers_mut().remove(header::LOCATION);
    Ok(answer)
}

/// `GET /Consent/{id}`.
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    CONSENT.read(&state, &user, &raw).await
}

/// `GET /Consent?patient=...`: the directives in force.
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    CONSENT
        .search(
            (&state, &user, &headers),
            &params,
            (&["patient"], &[]),
            |_| true,
        )
        .await
}
