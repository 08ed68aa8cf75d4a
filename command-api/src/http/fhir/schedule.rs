//! Read-only `Schedule` (one per practitioner, from the scheduling resources) and `Slot` (the
//! free places computed from availability: templates minus blocks and claimed time). Slots are
//! computed, not stored: they are searched, never read by id, and have no history.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use domain::scheduling::{Interval, Priority};
use domain::{FieldError, FieldErrors};
use event_store::schedule::Resource;
use serde_json::{json, Value};
use uuid::Uuid;

use super::appointment::SERVICE_SYSTEM;
use super::patient::base_url;
use super::{match_entry, outcome, refuse_unknown, resource, searchset, Issue};
use crate::auth::{permission, Authorized};
use crate::http::{ApiError, AppState};

/// The longest span one Slot search covers.
const MAX_DAYS: i64 = 31;

/// The span searched when `start` gives no end.
const DEFAULT_DAYS: i64 = 7;

/// The namespace of slot ids (derived from practitioner, service and start).
const SLOTS: Uuid = Uuid::from_u128(0x3b8e_51d0_9a7c_4f2b_8e61_05d4_c9a3_7f12);

/// Slot's search parameters: (name, type, what it matches).
pub const SLOT_PARAMS: &[(&str, &str, &str)] = &[
    (
        "service-type",
        "token",
        "the service (required): its code, or urn:patient-service:service|code",
    ),
    ("schedule", "reference", "Schedule/<practitioner id>"),
    (
        "start",
        "date",
        "ge/gt for the first start, le/lt for the last (31 days at most; 7 days from the first by default, from now without one)",
    ),
    ("_count", "number", "at most this many slots (1 to 2000; 200 by default)"),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/Schedule", get(schedules))
        .route("/Schedule/{id}", get(schedule))
        .route("/Slot", get(slots))
}

/// A practitioner's schedule.
pub fn to_schedule(r: &Resource) -> Value {
    let mut schedule = json!({
        "resourceType": "Schedule",
        "id": r.id,
        "active": true,
        "actor": [{ "reference": format!("Practitioner/{}", r.id), "display": r.name }],
    });
    if let Some(specialty) = &r.specialty {
        schedule["specialty"] = json!([{ "text": specialty }]);
    }
    schedule
}

async fn practitioners(state: &AppState) -> Result<Vec<Resource>, ApiError> {
    Ok(application::resources::resources(
        state.services(),
        application::resources::ResourceFilter {
            kind: Some("practitioner"),
            specialty: None,
            room_type: None,
        },
    )
    .await?)
}

/// `GET /Schedule/{id}`: the schedule of practitioner `id`.
async fn schedule(
    State(state): State<AppState>,
    Authorized(_user, _): Authorized<permission::ReadSchedule>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(
        match practitioners(&state).await?.iter().find(|r| r.id == id) {
            Some(found) => resource(StatusCode::OK, &to_schedule(found)),
            None => outcome(
                StatusCode::NOT_FOUND,
                &[Issue::new("not-found", "no Schedule has this id").at("id")],
            ),
        },
    )
}

/// `GET /Schedule?actor=Practitioner/<id>`: every practitioner's schedule, or one's.
async fn schedules(
    State(state): State<AppState>,
    Authorized(_user, _): Authorized<permission::ReadSchedule>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    refuse_unknown(params.keys(), &["actor"], "Schedule", &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let actor = params
        .get("actor")
        .map(|a| a.strip_prefix("Practitioner/").unwrap_or(a).to_owned());
    let base = base_url(&state, &headers);
    let entries = practitioners(&state)
        .await?
        .iter()
        .filter(|r| actor.as_deref().is_none_or(|a| a == r.id))
        .map(|r| match_entry(&base, to_schedule(r)))
        .collect();
    Ok(resource(StatusCode::OK, &searchset(entries)))
}

/// An instant or a day (its start) of a `start` search parameter.
fn moment(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
}

/// `GET /Slot?service-type=...`: the free places, computed from availability.
async fn slots(
    State(state): State<AppState>,
    Authorized(_user, _): Authorized<permission::ReadSchedule>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let (mut service, mut practitioner, mut from, mut to, mut limit) =
        (None, None, None, None, 200);
    for (key, value) in &params {
        match key.as_str() {
            "service-type" => {
                service = Some(
                    value
                        .rsplit_once('|')
                        .map_or(value.as_str(), |(_, c)| c)
                        .to_owned(),
                );
            }
            "schedule" => {
                practitioner = Some(value.strip_prefix("Schedule/").unwrap_or(value).to_owned());
            }
            "start" => {
                let (prefix, rest) = match value.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &value[2..]),
                    _ => ("eq", value.as_str()),
                };
                match (prefix, moment(rest)) {
                    ("ge" | "gt", Some(at)) => from = Some(at),
                    ("le" | "lt", Some(at)) => to = Some(at),
                    ("eq", Some(at)) => {
                        from = Some(at);
                        to = Some(at + Duration::days(1));
                    }
                    _ => errors.push(FieldError::new(
                        "start",
                        "must be an instant or a day, with ge, gt, le, lt or eq before it",
                    )),
                }
            }
            "_count" => match value.parse::<usize>() {
                Ok(n) if (1..=2000).contains(&n) => limit = n,
                _ => errors.push(FieldError::new(
                    "_count",
                    "must be a whole number from 1 to 2000",
                )),
            },
            other => errors.push(FieldError::new(
                other,
                "is not a search parameter of Slot here (see /fhir/R4/metadata)",
            )),
        }
    }
    if service.is_none() {
        errors.push(FieldError::new(
            "service-type",
            "is required: the service the slots are for",
        ));
    }
    let from = from.unwrap_or_else(|| (state.clock)());
    let to = to.unwrap_or(from + Duration::days(DEFAULT_DAYS));
    if to <= from || to - from > Duration::days(MAX_DAYS) {
        errors.push(FieldError::new(
            "start",
            format!("the span must end after it starts, {MAX_DAYS} days at most"),
        ));
    }
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let service = service.unwrap_or_default();
    let wanted = application::resources::Wanted {
        service: service.clone(),
        practitioner,
        range: Interval::new(from, to),
        minutes: None,
        priority: Priority::Routine,
        limit,
    };
    let (service, _, places) = application::resources::availability(state.services(), &wanted)
        .await
        .map_err(|e| match ApiError::from(e) {
            ApiError::Validation(errors) | ApiError::InvalidParameters(errors) => {
                let mut renamed = FieldErrors::new();
                for e in errors.iter() {
                    renamed.push(FieldError::new("service-type", e.message.clone()));
                }
                ApiError::InvalidParameters(renamed)
            }
            other => other,
        })?;
    let base = base_url(&state, &headers);
    let entries = places
        .iter()
        .map(|p| {
            let id = Uuid::new_v5(
                &SLOTS,
                format!(
                    "{} {} {}",
                    p.practitioner,
                    service.code,
                    p.start.timestamp()
                )
                .as_bytes(),
            );
            let mut slot = json!({
                "resourceType": "Slot",
                "id": id.to_string(),
                "serviceType": [{ "coding": [{ "system": SERVICE_SYSTEM, "code": service.code }] }],
                "schedule": { "reference": format!("Schedule/{}", p.practitioner) },
                "status": "free",
                "start": p.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "end": p.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
            if let Some(room) = &p.room {
                slot["comment"] = json!(format!("room {room}"));
            }
            match_entry(&base, slot)
        })
        .collect();
    Ok(resource(StatusCode::OK, &searchset(entries)))
}
