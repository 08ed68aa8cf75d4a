//! `GET /Patient/{id}/$everything`: the patient's compartment (FHIR's Patient-everything
//! operation) as a searchset Bundle, paged: the Patient, their Coverages and Consents, every
//! item of their medical record as its resource, and their Appointments when the caller may
//! read them. Read under one access decision ([`application::compartment`]); the patient calling
//! it on themself exercises their right of access, recorded as a disclosure to them.
//!
//! Parameters: `_count` and `_offset` (paging), `_since` (only resources changed at or after
//! that instant), `_type` (a comma-separated list of the resource types to include).

use std::collections::HashMap;

use application::compartment::Compartment;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::patient::{PatientId, PatientRecord};
use domain::{FieldError, FieldErrors};
use serde_json::{json, Value};

use application::smart::{Grant, Interaction};

use super::clinical::resource_type;
use super::patient::base_url;
use super::{match_entry, outcome, refuse_unknown, resource, Issue, Paging};
use crate::auth::{permission, Authorized};
use crate::http::{ApiError, AppState};

/// The resource types a compartment holds, in the order its Bundle lists them.
pub const TYPES: &[&str] = &[
    "Patient",
    "Coverage",
    "Consent",
    "AllergyIntolerance",
    "MedicationStatement",
    "Immunization",
    "Condition",
    "Observation",
    "Procedure",
    "Encounter",
    "DocumentReference",
    "Appointment",
];

/// The operation's parameters, for the CapabilityStatement.
pub const PARAMS: &[(&str, &str, &str)] = &[
    ("_count", "number", "1 to 1000, 100 by default"),
    ("_offset", "number", "where the page starts"),
    (
        "_since",
        "instant",
        "only resources changed at or after this instant (with its time zone)",
    ),
    (
        "_type",
        "string",
        "comma-separated resource types to include (all by default)",
    ),
];

/// What a request asks of the compartment.
struct Asked {
    count: usize,
    offset: usize,
    since: Option<DateTime<Utc>>,
    types: Option<Vec<String>>,
}

fn asked(params: &HashMap<String, String>) -> Result<Asked, FieldErrors> {
    let mut errors = FieldErrors::default();
    let known: Vec<&str> = PARAMS.iter().map(|(name, _, _)| *name).collect();
    refuse_unknown(params.keys(), &known, "Patient/$everything", &mut errors);
    let whole =
        |key: &str, default: usize, (min, max): (usize, usize), errors: &mut FieldErrors| {
            match params.get(key).map(|raw| raw.parse::<usize>()) {
                None => default,
                Some(Ok(n)) if (min..=max).contains(&n) => n,
                Some(_) => {
                    errors.push(FieldError::new(
                        key,
                        format!("must be a whole number from {min} to {max}"),
                    ));
                    default
                }
            }
        };
    let count = whole("_count", 100, (1, 1_000), &mut errors);
    let offset = whole("_offset", 0, (0, 1_000_000), &mut errors);
    let since = params
        .get("_since")
        .and_then(|raw| errors.check(super::instant("_since", raw)));
    let types = params.get("_type").map(|raw| {
        raw.split(',')
            .map(|t| t.trim().to_owned())
            .collect::<Vec<_>>()
    });
    for unknown in types
        .iter()
        .flatten()
        .filter(|t| !TYPES.contains(&t.as_str()))
    {
        errors.push(FieldError::new(
            "_type",
            format!(
                "names {unknown:?}, which is not a resource type of a patient's compartment here: {}",
                TYPES.join(", ")
            ),
        ));
    }
    errors.into_result()?;
    Ok(Asked {
        count,
        offset,
        since,
        types,
    })
}

/// `GET /Patient/{id}/$everything`.
pub async fn everything(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    headers: HeaderMap,
    Path(raw_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let asked = asked(&params).map_err(ApiError::InvalidParameters)?;
    let Ok(id) = PatientId::parse("id", &raw_id) else {
        return Ok(outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no Patient has this id").at("id")],
        ));
    };
    let compartment = application::compartment::everything(state.services(), &user, id).await?;
    let Some(record) = compartment.patient.record() else {
        return Ok(outcome(
            StatusCode::GONE,
            &[Issue::new("deleted", "this patient was erased")],
        ));
    };

    let resources = resources_of(&compartment, record);

    // A SMART app sees only the types its scopes let it read.
    let readable = |body: &Value| {
        user.scopes.as_ref().is_none_or(|scopes| {
            let name = body["resourceType"].as_str().unwrap_or_default();
            scopes.grant(name, Interaction::Read) != Grant::None
        })
    };
    let kept: Vec<Value> = resources
        .into_iter()
        .filter(|(body, _)| readable(body))
        .filter(|(body, _)| {
            asked.types.as_ref().is_none_or(|types| {
                types
                    .iter()
                    .any(|t| body["resourceType"].as_str() == Some(t.as_str()))
            })
        })
        .filter(|(_, changed)| match (asked.since, changed) {
            (Some(since), Some(changed)) => *changed >= since,
            _ => true,
        })
        .map(|(body, _)| body)
        .collect();
    let total = kept.len();
    let base = base_url(&state, &headers);
    let entries: Vec<Value> = kept
        .into_iter()
        .skip(asked.offset)
        .take(asked.count)
        .map(|body| match_entry(&base, body))
        .collect();
    let query: Vec<(String, String)> = params.into_iter().collect();
    let paging = Paging {
        count: asked.count,
        offset: asked.offset,
        has_more: asked.offset + asked.count < total,
    };
    Ok(resource(
        StatusCode::OK,
        &super::page_bundle(
            (&base, &format!("Patient/{id}/$everything")),
            &query,
            paging,
            Some(total as u64),
            entries,
        ),
    ))
}

/// The resources of `compartment` (whose patient's record is `record`), in the order a
/// compartment lists them, each with when it last changed (the patient record's time for what
/// the record holds: coverages, consents).
pub fn resources_of(
    compartment: &Compartment,
    record: &PatientRecord,
) -> Vec<(Value, Option<DateTime<Utc>>)> {
    let id = compartment.patient_id;
    let mut resources: Vec<(Value, Option<DateTime<Utc>>)> = Vec::new();
    let version = compartment.version;
    let record_changed = compartment.changed_at;
    let mut patient = super::patient::to_fhir(record, version);
    last_updated(&mut patient, record_changed);
    resources.push((patient, record_changed));
    for coverage in &record.coverages {
        let body = super::coverage::COVERAGE.versioned(id, coverage, version);
        resources.push((body, record_changed));
    }
    for consent in &record.governance.consents {
        let body = super::consent::CONSENT.versioned(id, consent, version);
        resources.push((body, record_changed));
    }
    let mut items: Vec<_> = compartment
        .items
        .iter()
        .filter_map(|item| Some((resource_type(item.content.kind())?, item)))
        .collect();
    items.sort_by_key(|(name, item)| (TYPES.iter().position(|t| t == name), item.item_id));
    for (_, item) in items {
        let body = super::clinical::to_fhir(id, item);
        resources.push((body, Some(item.updated_at)));
    }
    for (appointment_id, version, appointment, changed) in &compartment.appointments {
        if let Some(current) = appointment.state() {
            let mut body = super::appointment::to_fhir(*appointment_id, *version, current);
            last_updated(&mut body, *changed);
            resources.push((body, *changed));
        }
    }
    resources
}

/// Sets `meta.lastUpdated` of `body` to `changed`, when known.
fn last_updated(body: &mut Value, changed: Option<DateTime<Utc>>) {
    if let Some(changed) = changed {
        body["meta"]["lastUpdated"] = json!(changed.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
}
