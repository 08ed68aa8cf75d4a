//! Read-only `Practitioner`, `Location` and `Device`: the scheduling resources (practitioners,
//! rooms, equipment) as FHIR sees them. They are reference data, not event-sourced: no
//! history.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use domain::FieldErrors;
use event_store::schedule::Resource;
use serde_json::{json, Value};

use super::patient::base_url;
use super::{match_entry, outcome, refuse_unknown, resource, searchset, Issue};
use crate::auth::{permission, Authorized};
use crate::http::{ApiError, AppState};

/// The FHIR type of each kind of scheduling resource.
pub const TYPES: &[(&str, &str)] = &[
    ("Practitioner", "practitioner"),
    ("Location", "room"),
    ("Device", "equipment"),
];

/// The search parameters of the three: (name, type, what it matches).
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "the resource's id"),
    ("name", "string", "part of the name, ignoring case"),
];

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (name, kind) in TYPES {
        let (name, kind) = (*name, *kind);
        router = router
            .route(
                &format!("/{name}"),
                get(move |s, u, h, q| search(s, u, h, q, (name, kind))),
            )
            .route(
                &format!("/{name}/{{id}}"),
                get(move |s, u, p| read(s, u, p, (name, kind))),
            );
    }
    router
}

/// A scheduling resource as its FHIR resource.
pub fn to_fhir(r: &Resource) -> Value {
    let meta = json!({ "versionId": r.version.to_string() });
    match r.kind.as_str() {
        "practitioner" => {
            let mut practitioner = json!({
                "resourceType": "Practitioner", "id": r.id, "meta": meta, "active": true,
                "name": [{ "text": r.name }],
            });
            if let Some(specialty) = &r.specialty {
                practitioner["qualification"] = json!([{ "code": { "text": specialty } }]);
            }
            practitioner
        }
        "room" => {
            let mut location = json!({
                "resourceType": "Location", "id": r.id, "meta": meta, "status": "active",
                "name": r.name, "mode": "instance",
                "physicalType": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                    "code": "ro", "display": "Room" }] },
            });
            if let Some(room_type) = &r.room_type {
                location["type"] = json!([{ "text": room_type }]);
            }
            location
        }
        _ => {
            let mut device = json!({
                "resourceType": "Device", "id": r.id, "meta": meta, "status": "active",
                "deviceName": [{ "name": r.name, "type": "user-friendly-name" }],
            });
            if !r.capabilities.is_empty() {
                device["property"] = json!([{
                    "type": { "text": "capabilities" },
                    "valueCode": r.capabilities.iter().map(|c| json!({ "text": c })).collect::<Vec<_>>(),
                }]);
            }
            device
        }
    }
}

async fn of_kind(state: &AppState, kind: &str) -> Result<Vec<Resource>, ApiError> {
    Ok(application::resources::resources(
        state.services(),
        application::resources::ResourceFilter {
            kind: Some(kind),
            specialty: None,
            room_type: None,
        },
    )
    .await?)
}

/// `GET /{Type}/{id}`.
async fn read(
    State(state): State<AppState>,
    Authorized(_user, _): Authorized<permission::ReadSchedule>,
    Path(id): Path<String>,
    (name, kind): (&'static str, &'static str),
) -> Result<Response, ApiError> {
    let found = of_kind(&state, kind)
        .await?
        .into_iter()
        .find(|r| r.id == id);
    Ok(match found {
        Some(found) => resource(StatusCode::OK, &to_fhir(&found)),
        None => outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", format!("no {name} has this id")).at("id")],
        ),
    })
}

/// `GET /{Type}?...`: every one, or those `_id` or `name` picks.
async fn search(
    State(state): State<AppState>,
    Authorized(_user, _): Authorized<permission::ReadSchedule>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    (name, kind): (&'static str, &'static str),
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let known: Vec<&str> = SEARCH_PARAMS.iter().map(|(p, _, _)| *p).collect();
    refuse_unknown(params.keys(), &known, name, &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let wanted = params.get("name").map(|n| n.to_lowercase());
    let base = base_url(&state, &headers);
    let entries: Vec<Value> = of_kind(&state, kind)
        .await?
        .iter()
        .filter(|r| params.get("_id").is_none_or(|id| *id == r.id))
        .filter(|r| {
            wanted
                .as_deref()
                .is_none_or(|n| r.name.to_lowercase().contains(n))
        })
        .map(|r| match_entry(&base, to_fhir(r)))
        .collect();
    Ok(resource(StatusCode::OK, &searchset(entries)))
}
