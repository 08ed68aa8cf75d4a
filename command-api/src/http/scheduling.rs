//! Scheduling over HTTP: resources with their weekly templates and blocks, service types,
//! availability computed on demand, and appointments through their FHIR statuses. No
//! practitioner, room, piece of equipment or patient is ever double-booked: the time an
//! appointment claims is stored with its events under an exclusion constraint.
//!
//! | method and path                                   | who                         |
//! |---------------------------------------------------|-----------------------------|
//! | `PUT /v1/resources/{id}`                          | admin                       |
//! | `GET /v1/resources`                               | admin, registrar, clinician, scheduler |
//! | `POST /v1/resources/{id}/blocks`                  | admin, scheduler            |
//! | `PUT /v1/services/{code}`                         | admin                       |
//! | `GET /v1/availability?service=&...`               | admin, registrar, clinician, scheduler |
//! | `POST /v1/appointments`                           | admin, registrar, scheduler |
//! | `GET /v1/appointments/{id}`                       | as reading the patient's appointments |
//! | `POST /v1/appointments/{id}/{action}`             | admin, registrar, scheduler |

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Duration, NaiveTime, Utc, Weekday};
use domain::patient::governance::Principal;
use domain::patient::{PatientId, Reason};
use domain::scheduling::appointment::{AppointmentState, Booking, CancellationReason};
use domain::scheduling::assignment::Strategy;
use domain::scheduling::{
    Appointment, AppointmentCommand, AppointmentStatus, Interval, Priority, WeeklyTemplate, Window,
};
use domain::{FieldError, FieldErrors};
use event_store::schedule::{
    self, Claim, ClaimChange, PlannedReminder, Resource, Service, WaitlistChange,
};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::{access, permission, Action, AuthUser, Authorized};
use crate::http::idempotency::{idempotent, Keyed, Stored};
use crate::http::json::{Fields, JsonObject};
use crate::http::params::whole_number;
use crate::http::patient_commands::metadata;
use crate::http::reach::{changeable, checked_access, reach};
use crate::http::{etag, if_match, ApiError, AppState, RequestContext};
use application::planner::{self, Ask, Placement};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/resources", get(list_resources))
        .route("/v1/resources/{id}", put(put_resource))
        .route("/v1/resources/{id}/blocks", post(add_block))
        .route("/v1/services/{code}", put(put_service))
        .route("/v1/availability", get(availability))
        .route("/v1/appointments", post(book))
        .route("/v1/waitlist", post(join_waitlist))
        .route("/v1/appointments/{id}", get(read))
        .route("/v1/appointments/{id}/{action}", post(act))
}

/// A per-request tie-break for placement.
fn rand_salt() -> u64 {
    application::booking::salt()
}

/// The longest range availability is computed over.
const MAX_RANGE_DAYS: i64 = 31;

fn slug(field: &str, value: &str) -> Result<String, FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "must be 1 to 64 lowercase letters, digits or hyphens",
        ))
    }
}

fn label(f: &mut Fields<'_>, key: &str, required: bool) -> Option<String> {
    let value = if required {
        f.string(key)
    } else {
        f.optional_string(key)
    }?;
    let path = f.path(key);
    let trimmed = value.trim();
    if trimmed.is_empty()
        || trimmed.chars().count() > 100
        || trimmed.chars().any(domain::validation::is_hidden)
    {
        f.errors.push(FieldError::new(
            path,
            "must be 1 to 100 characters without control characters",
        ));
        return None;
    }
    Some(trimmed.to_owned())
}

fn slugs(f: &mut Fields<'_>, key: &str) -> Vec<String> {
    let path = f.path(key);
    let values = f.optional_string_array(key).unwrap_or_default();
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if let Some(s) = f.check(slug(&format!("{path}[{i}]"), v)) {
            out.push(s);
        }
    }
    out
}

fn weekday(value: &str) -> Option<Weekday> {
    Some(match value {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

fn windows(f: &mut Fields<'_>, key: &str) -> Vec<Window> {
    let mut out = Vec::new();
    let Some(items) = f.optional_array(key) else {
        return out;
    };
    let path = f.path(key);
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(object) = item.as_object() else {
            f.errors.push(FieldError::new(at, "must be an object"));
            continue;
        };
        let mut w = Fields::new(object, &at, &["weekday", "start", "end"]);
        let day = w.string("weekday").and_then(|d| {
            let parsed = weekday(d).ok_or_else(|| {
                FieldError::new(
                    format!("{at}.weekday"),
                    "must be one of mon, tue, wed, thu, fri, sat, sun",
                )
            });
            w.check(parsed)
        });
        let time = |w: &mut Fields<'_>, k: &str| {
            w.string(k).and_then(|t| {
                let parsed = NaiveTime::parse_from_str(t, "%H:%M").map_err(|_| {
                    FieldError::new(format!("{at}.{k}"), "must be a time such as 08:30")
                });
                w.check(parsed)
            })
        };
        let start = time(&mut w, "start");
        let end = time(&mut w, "end");
        f.absorb(w.errors);
        if let (Some(weekday), Some(start), Some(end)) = (day, start, end) {
            out.push(Window {
                weekday,
                start,
                end,
            });
        }
    }
    out
}

fn template(f: &mut Fields<'_>) -> Option<WeeklyTemplate> {
    let object = f.optional_object("template")?;
    let mut t = Fields::new(
        object,
        "template",
        &["time_zone", "slot_minutes", "hours", "breaks", "reserved"],
    );
    let zone = t.string("time_zone").map(str::to_owned);
    let slot = t.optional_whole("slot_minutes", 1..=1440);
    if slot.is_none() && !t.present("slot_minutes") {
        t.errors
            .push(FieldError::new("template.slot_minutes", "is required"));
    }
    let hours = windows(&mut t, "hours");
    let breaks = windows(&mut t, "breaks");
    let reserved = windows(&mut t, "reserved");
    let parsed = match (zone, slot) {
        (Some(zone), Some(slot)) => WeeklyTemplate::new(&zone, slot, hours, breaks, reserved)
            .map_err(|errors| {
                let mut prefixed = FieldErrors::new();
                for e in errors.into_vec() {
                    prefixed.push(FieldError::new(format!("template.{}", e.field), e.message));
                }
                prefixed
            }),
        _ => Err(FieldErrors::new()),
    };
    f.absorb(t.errors);
    f.errors.check_all(parsed)
}

/// `PUT /v1/resources/{id}`: `{kind, name, specialty?, room_type?, capabilities?, template?}`.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn put_resource(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ManageResources>,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let id = slug("id", &id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    let mut f = Fields::new(
        &body.object,
        "",
        &[
            "kind",
            "name",
            "specialty",
            "room_type",
            "capabilities",
            "template",
        ],
    );
    let kind = f.string("kind").and_then(|k| {
        let ok = ["practitioner", "room", "equipment"].contains(&k);
        f.check(if ok {
            Ok(k.to_owned())
        } else {
            Err(FieldError::new(
                "kind",
                "must be one of practitioner, room, equipment",
            ))
        })
    });
    let name = label(&mut f, "name", true);
    let specialty = f
        .optional_string("specialty")
        .and_then(|s| f.check(slug("specialty", s)));
    let room_type = f
        .optional_string("room_type")
        .and_then(|s| f.check(slug("room_type", s)));
    let capabilities = slugs(&mut f, "capabilities");
    let template = template(&mut f);
    if kind.as_deref() == Some("practitioner") && template.is_none() && !f.present("template") {
        f.errors.push(FieldError::new(
            "template",
            "is required for a practitioner",
        ));
    }
    f.finish()?;
    let resource = Resource {
        id,
        kind: kind.unwrap_or_default(),
        name: name.unwrap_or_default(),
        specialty,
        room_type,
        capabilities,
        template,
        version: 0,
    };
    let (stored, created) =
        schedule::put_resource(&state.pool, &resource, &user.id, (state.clock)()).await?;
    tracing::info!(resource_id = %stored.id, version = stored.version, "resource stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)).into_response())
}

/// `GET /v1/resources?kind=&specialty=&room_type=`.
async fn list_resources(
    State(state): State<AppState>,
    Authorized(_user, _): Authorized<permission::ReadSchedule>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    unknown(&query, &["kind", "specialty", "room_type"], &mut errors);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let items = schedule::resources(
        &state.pool,
        query.get("kind").map(String::as_str),
        query.get("specialty").map(String::as_str),
        query.get("room_type").map(String::as_str),
        None,
    )
    .await?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// `POST /v1/resources/{id}/blocks`: `{from, to, reason}` with reason `holiday`, `leave` or
/// `one-off`.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn add_block(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BlockResources>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let id = slug("id", &id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    let path = format!("/v1/resources/{id}/blocks");
    idempotent(
        &state,
        &user,
        &headers,
        ("POST", &path, &body.raw),
        replay_block,
        |key| block_resource(&state, &user, &id, &body, key),
    )
    .await
}

/// The first answer of a keyed block, rebuilt from the block.
fn replay_block<'a>(
    state: &'a AppState,
    stored: Stored<'a>,
) -> BoxFuture<'a, Result<Response, ApiError>> {
    Box::pin(async move {
        let block_id = appointment_id(stored.aggregate_id)?;
        let (resource, during, reason) = schedule::block(&state.pool, block_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        Ok(block_response(
            stored.status,
            block_id,
            &resource,
            &during,
            &reason,
        ))
    })
}

fn block_response(
    status: StatusCode,
    block_id: Uuid,
    resource: &str,
    during: &Interval,
    reason: &str,
) -> Response {
    let body = json!({
        "block_id": block_id, "resource_id": resource,
        "from": during.start, "to": during.end, "reason": reason,
    });
    (status, Json(body)).into_response()
}

async fn block_resource(
    state: &AppState,
    user: &AuthUser,
    id: &str,
    body: &JsonObject,
    key: Option<Keyed>,
) -> Result<Response, ApiError> {
    let id = id.to_owned();
    let mut f = Fields::new(&body.object, "", &["from", "to", "reason"]);
    let from = instant_field(&mut f, "from");
    let to = instant_field(&mut f, "to");
    let reason = f.string("reason").and_then(|r| {
        let ok = ["holiday", "leave", "one-off"].contains(&r);
        f.check(if ok {
            Ok(r.to_owned())
        } else {
            Err(FieldError::new(
                "reason",
                "must be one of holiday, leave, one-off",
            ))
        })
    });
    if let (Some(from), Some(to)) = (from, to) {
        if to <= from {
            f.errors.push(FieldError::new("to", "must be after from"));
        }
    }
    f.finish()?;
    let (Some(from), Some(to), Some(reason)) = (from, to, reason) else {
        return Err(ApiError::Validation(FieldErrors::new()));
    };
    if schedule::resources(
        &state.pool,
        None,
        None,
        None,
        Some(std::slice::from_ref(&id)),
    )
    .await?
    .is_empty()
    {
        return Err(ApiError::NotFound);
    }
    let block_id = Uuid::new_v4();
    let reservation = key.map(|k| k.answering(StatusCode::CREATED));
    let during = Interval::new(from, to);
    let added = schedule::add_block(
        &state.pool,
        block_id,
        (&id, &during, &reason),
        &user.id,
        (state.clock)(),
        reservation.as_ref(),
    )
    .await?;
    if !added {
        // A repeat that lost the key to the first request: the wrapper answers as it did.
        return Err(ApiError::Conflict);
    }
    Ok(block_response(
        StatusCode::CREATED,
        block_id,
        &id,
        &during,
        &reason,
    ))
}

/// `PUT /v1/services/{code}`: `{name, minutes, specialty?, room_type?, capabilities?}`.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn put_service(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ManageResources>,
    Path(code): Path<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let code = slug("code", &code).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    let mut f = Fields::new(
        &body.object,
        "",
        &["name", "minutes", "specialty", "room_type", "capabilities"],
    );
    let name = label(&mut f, "name", true);
    let minutes = f.optional_whole("minutes", 5..=480);
    if minutes.is_none() && !f.present("minutes") {
        f.errors.push(FieldError::new("minutes", "is required"));
    }
    let specialty = f
        .optional_string("specialty")
        .and_then(|s| f.check(slug("specialty", s)));
    let room_type = f
        .optional_string("room_type")
        .and_then(|s| f.check(slug("room_type", s)));
    let capabilities = slugs(&mut f, "capabilities");
    f.finish()?;
    let service = Service {
        code,
        name: name.unwrap_or_default(),
        minutes: minutes.map_or(0, |m| m as i32),
        specialty,
        room_type,
        capabilities,
        version: 0,
    };
    let (stored, created) =
        schedule::put_service(&state.pool, &service, &user.id, (state.clock)()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)).into_response())
}

fn unknown(params: &HashMap<String, String>, known: &[&str], errors: &mut FieldErrors) {
    for key in params.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(FieldError::new(key.clone(), "unknown parameter"));
    }
}

fn instant(value: &str, field: &str) -> Result<DateTime<Utc>, FieldError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            FieldError::new(
                field,
                "must be an RFC 3339 instant such as 2026-11-30T09:00:00Z",
            )
        })
}

fn instant_field(f: &mut Fields<'_>, key: &str) -> Option<DateTime<Utc>> {
    let path = f.path(key);
    f.string(key).and_then(|v| f.check(instant(v, &path)))
}

fn strategy(state: &AppState) -> Strategy {
    application::booking::strategy(&state.scheduling)
}

fn release_lead(state: &AppState) -> Duration {
    application::booking::release_lead(&state.scheduling)
}

async fn service_named(state: &AppState, code: &str, field: &str) -> Result<Service, ApiError> {
    schedule::service(&state.pool, code)
        .await?
        .ok_or_else(|| ApiError::invalid_parameter(field, "names no service"))
}

/// `GET /v1/availability?service=&practitioner=&from=&to=&duration=&priority=&limit=`: free
/// places from the templates minus blocks and claimed time.
#[tracing::instrument(skip_all)]
async fn availability(
    State(state): State<AppState>,
    Authorized(_user, _): Authorized<permission::ReadSchedule>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    unknown(
        &query,
        &[
            "service",
            "practitioner",
            "from",
            "to",
            "duration",
            "priority",
            "limit",
        ],
        &mut errors,
    );
    for key in ["service", "from", "to"] {
        if !query.contains_key(key) {
            errors.push(FieldError::new(key, "is required"));
        }
    }
    let from = query
        .get("from")
        .and_then(|v| errors.check(instant(v, "from")));
    let to = query.get("to").and_then(|v| errors.check(instant(v, "to")));
    if let (Some(from), Some(to)) = (from, to) {
        if to <= from || to - from > Duration::days(MAX_RANGE_DAYS) {
            errors.push(FieldError::new(
                "to",
                format!("must be after from, at most {MAX_RANGE_DAYS} days"),
            ));
        }
    }
    let priority = query
        .get("priority")
        .and_then(|p| errors.check(Priority::parse("priority", p)))
        .unwrap_or(Priority::Routine);
    let duration: u32 = whole_number(&query, "duration", 0, 0..=480, &mut errors);
    let limit: usize = whole_number(&query, "limit", 200, 1..=2000, &mut errors);
    let practitioner = query
        .get("practitioner")
        .and_then(|p| errors.check(slug("practitioner", p)));
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let service = service_named(
        &state,
        query.get("service").map_or("", String::as_str),
        "service",
    )
    .await?;
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::InvalidParameters(FieldErrors::new()));
    };
    let minutes = if duration == 0 {
        service.minutes as u32
    } else {
        duration
    };
    let ask = Ask {
        service: &service,
        practitioner: practitioner.as_deref(),
        range: Interval::new(from, to),
        duration: Duration::minutes(i64::from(minutes)),
        priority,
        now: (state.clock)(),
        release_lead: release_lead(&state),
        strategy: strategy(&state),
        ignoring: None,
        patient: None,
        salt: 0,
    };
    let slots = planner::availability(&state.pool, &ask, limit).await?;
    Ok(
        Json(json!({ "service": service.code, "duration_minutes": minutes, "slots": slots }))
            .into_response(),
    )
}

/// The nearest free places around `at` (the same day either side), for a refusal.
async fn alternatives(state: &AppState, ask: &Ask<'_>, at: DateTime<Utc>) -> Vec<Placement> {
    application::booking::alternatives(&state.pool, ask, at).await
}

fn appointment_body(id: Uuid, version: u64, state: &AppointmentState) -> Value {
    let mut body = serde_json::to_value(state).unwrap_or_else(|_| json!({}));
    body["appointment_id"] = json!(id);
    body["version"] = json!(version);
    body["href"] = json!(format!("/v1/appointments/{id}"));
    body
}

/// The first answer of a keyed command on an appointment, rebuilt: the appointment at the
/// version the command left it.
fn replay<'a>(
    state: &'a AppState,
    stored: Stored<'a>,
) -> BoxFuture<'a, Result<Response, ApiError>> {
    Box::pin(async move {
        let id = appointment_id(stored.aggregate_id)?;
        let appointment = state
            .appointments
            .load_version(id, stored.version)
            .await?
            .ok_or(ApiError::NotFound)?;
        appointment_response(stored.status, id, &appointment, stored.version)
    })
}

fn appointment_response(
    status: StatusCode,
    id: Uuid,
    appointment: &Appointment,
    version: u64,
) -> Result<Response, ApiError> {
    let state = appointment.state().ok_or(ApiError::NotFound)?;
    let mut response = (status, Json(appointment_body(id, version, state))).into_response();
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&etag(version)) {
        headers.insert(header::ETAG, tag);
    }
    if status == StatusCode::CREATED {
        if let Ok(location) = HeaderValue::from_str(&format!("/v1/appointments/{id}")) {
            headers.insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// Loads the patient and records the scheduler's access to them.
async fn patient_reach(
    state: &AppState,
    user: &AuthUser,
    action: Action,
    what: &str,
    id: PatientId,
    must_be_active: bool,
) -> Result<(), ApiError> {
    let patient = reach(state, user, action, what, id).await?;
    // Winding down (cancel, no-show, mark a mistake) stays possible for anyone on record.
    if must_be_active {
        changeable(&patient)?;
    }
    Ok(())
}

/// `POST /v1/appointments`: `{patient_id, service, start, practitioner?, priority?, hold?}`.
/// Books at `start` on the practitioner asked for, or on the one of the service's specialty
/// the strategy picks, with a room and equipment; `hold: true` holds it (pending) for
/// `scheduling.hold_minutes`, to be confirmed.
#[tracing::instrument(skip_all, fields(user_id = %user.id, appointment_id))]
async fn book(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BookAppointments>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    idempotent(
        &state,
        &user,
        &headers,
        ("POST", "/v1/appointments", &body.raw),
        replay,
        |key| book_appointment(&state, (&user, &ctx), &body, key),
    )
    .await
}

async fn book_appointment(
    state: &AppState,
    (user, ctx): (&AuthUser, &RequestContext),
    body: &JsonObject,
    key: Option<Keyed>,
) -> Result<Response, ApiError> {
    let reservation = key.map(|k| k.answering(StatusCode::CREATED));
    let mut f = Fields::new(
        &body.object,
        "",
        &[
            "patient_id",
            "service",
            "start",
            "practitioner",
            "priority",
            "hold",
            "propose",
        ],
    );
    let patient = f
        .string("patient_id")
        .and_then(|p| f.check(PatientId::parse("patient_id", p)));
    let service_code = f.string("service").map(str::to_owned);
    let start = instant_field(&mut f, "start");
    let practitioner = f
        .optional_string("practitioner")
        .and_then(|p| f.check(slug("practitioner", p)));
    let priority = f
        .optional_string("priority")
        .and_then(|p| f.check(Priority::parse("priority", p)))
        .unwrap_or(Priority::Routine);
    let hold = f.optional_bool("hold").unwrap_or(false);
    let propose = f.optional_bool("propose").unwrap_or(false);
    if hold && propose {
        f.errors.push(FieldError::new(
            "propose",
            "a proposal holds nothing: send hold or propose, not both",
        ));
    }
    f.finish()?;
    let (Some(patient), Some(service_code), Some(start)) = (patient, service_code, start) else {
        return Err(ApiError::Validation(FieldErrors::new()));
    };
    let service = service_named(state, &service_code, "service").await?;
    let request = application::booking::BookingRequest {
        patient,
        service,
        start,
        practitioner,
        priority,
        hold,
        propose,
    };
    let (id, appointment, version) = application::booking::book(
        &state.services(),
        user,
        request,
        metadata(user, ctx, reservation),
    )
    .await?;
    appointment_response(StatusCode::CREATED, id, &appointment, version)
}

/// The reminders of a booked appointment ([`application::booking::plan_reminders`]).
async fn plan_reminders(
    state: &AppState,
    appointment: Uuid,
    patient: PatientId,
    booking: &Booking,
) -> Result<Vec<PlannedReminder>, ApiError> {
    Ok(
        application::booking::plan_reminders(&state.services(), appointment, patient, booking)
            .await?,
    )
}

/// `POST /v1/waitlist`: `{patient_id, service, from, to, practitioner?, priority?}`: the
/// patient waits for a place in that window; the best entry (priority, then waiting time) is
/// offered each place that frees, as a hold to confirm (`POST /v1/appointments/{id}/confirm`).
#[tracing::instrument(skip_all, fields(user_id = %user.id, appointment_id))]
async fn join_waitlist(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BookAppointments>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    idempotent(
        &state,
        &user,
        &headers,
        ("POST", "/v1/waitlist", &body.raw),
        replay,
        |key| join(&state, (&user, &ctx), &body, key),
    )
    .await
}

async fn join(
    state: &AppState,
    (user, ctx): (&AuthUser, &RequestContext),
    body: &JsonObject,
    key: Option<Keyed>,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(
        &body.object,
        "",
        &[
            "patient_id",
            "service",
            "from",
            "to",
            "practitioner",
            "priority",
        ],
    );
    let patient = f
        .string("patient_id")
        .and_then(|p| f.check(PatientId::parse("patient_id", p)));
    let service_code = f.string("service").map(str::to_owned);
    let from = instant_field(&mut f, "from");
    let to = instant_field(&mut f, "to");
    let practitioner = f
        .optional_string("practitioner")
        .and_then(|p| f.check(slug("practitioner", p)));
    let priority = f
        .optional_string("priority")
        .and_then(|p| f.check(Priority::parse("priority", p)))
        .unwrap_or(Priority::Routine);
    let now = (state.clock)();
    if let (Some(from), Some(to)) = (from, to) {
        if to <= from || to <= now {
            f.errors.push(FieldError::new(
                "to",
                "must be after from and in the future",
            ));
        }
    }
    f.finish()?;
    let (Some(patient), Some(service_code), Some(from), Some(to)) =
        (patient, service_code, from, to)
    else {
        return Err(ApiError::Validation(FieldErrors::new()));
    };
    let service = service_named(state, &service_code, "service").await?;
    let wish = application::booking::Wish {
        patient,
        service,
        window: Interval::new(from, to),
        practitioner,
        priority,
    };
    let (id, appointment, version) = application::booking::join_waitlist(
        &state.services(),
        user,
        wish,
        metadata(user, ctx, key.map(|k| k.answering(StatusCode::CREATED))),
    )
    .await?;
    appointment_response(StatusCode::CREATED, id, &appointment, version)
}

async fn load(
    state: &AppState,
    id: Uuid,
) -> Result<(Appointment, u64, AppointmentState), ApiError> {
    let (appointment, version) = state
        .appointments
        .load(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let appointment_state = appointment.state().cloned().ok_or(ApiError::NotFound)?;
    Ok((appointment, version, appointment_state))
}

/// The answer for an appointment nobody booked: as for an unknown patient, only a caller who
/// reaches any patient learns that it does not exist (404); everyone else gets the 403 they
/// would get for one that does.
fn unknown_appointment(state: &AppState, user: &AuthUser, action: Action) -> ApiError {
    let nobody = PatientId::new(Uuid::nil());
    match access::decide(
        user,
        action,
        nobody,
        None,
        state.home_organization.as_deref(),
    ) {
        access::Decision::NotFound => ApiError::NotFound,
        _ => ApiError::Forbidden,
    }
}

fn appointment_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid_parameter("id", "must be a UUID"))
}

/// `GET /v1/appointments/{id}`.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAppointments>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = appointment_id(&raw)?;
    let loaded = state.appointments.load(id).await?;
    let patient = loaded
        .as_ref()
        .and_then(|(a, _)| a.state())
        .map(|s| s.patient_id);
    let Some(patient) = patient else {
        return Err(unknown_appointment(&state, &user, Action::ReadAppointments));
    };
    let loaded_patient = state.store.load(patient).await?;
    checked_access(
        &state,
        &user,
        Action::ReadAppointments,
        "appointment-read",
        patient,
        loaded_patient.as_ref().map(|(p, _)| p),
    )
    .await?;
    let (appointment, version) = loaded.ok_or(ApiError::NotFound)?;
    appointment_response(StatusCode::OK, id, &appointment, version)
}

fn reason(body: &Map<String, Value>) -> Result<Reason, ApiError> {
    let mut f = Fields::new(body, "", &["reason"]);
    let reason = f
        .string("reason")
        .and_then(|v| f.check(Reason::parse("reason", v)));
    f.finish()?;
    reason.ok_or_else(|| ApiError::Validation(FieldErrors::new()))
}

/// `POST /v1/appointments/{id}/{action}` with `If-Match`: `confirm`, `arrive`, `check-in`,
/// `fulfil`, `no-show`, `cancel` (`{reason}` a cancellation code), `entered-in-error`
/// (`{reason}`), `reschedule` (`{start, practitioner?, reason}`).
#[tracing::instrument(skip_all, fields(user_id = %user.id, appointment_id))]
async fn act(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BookAppointments>,
    ctx: RequestContext,
    Path((raw, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let path = format!("/v1/appointments/{raw}/{action}");
    idempotent(
        &state,
        &user,
        &headers,
        ("POST", &path, &body.raw),
        replay,
        |key| {
            change(
                &state,
                (&user, &ctx),
                (&raw, &action),
                (&headers, &body),
                key,
            )
        },
    )
    .await
}

async fn change(
    state: &AppState,
    (user, ctx): (&AuthUser, &RequestContext),
    (raw, action): (&str, &str),
    (headers, body): (&HeaderMap, &JsonObject),
    key: Option<Keyed>,
) -> Result<Response, ApiError> {
    let id = appointment_id(raw)?;
    tracing::Span::current().record("appointment_id", tracing::field::display(id));
    let actions = [
        "confirm",
        "arrive",
        "check-in",
        "fulfil",
        "no-show",
        "cancel",
        "entered-in-error",
        "reschedule",
    ];
    if !actions.contains(&action) {
        return Err(ApiError::NotFound);
    }
    let (_, loaded_version, current) = match load(state, id).await {
        Err(ApiError::NotFound) => {
            return Err(unknown_appointment(state, user, Action::BookAppointments))
        }
        other => other?,
    };
    let starts_something = matches!(action, "confirm" | "reschedule");
    patient_reach(
        state,
        user,
        Action::BookAppointments,
        "appointment-change",
        current.patient_id,
        starts_something,
    )
    .await?;
    let expected = if_match(headers)?;
    // The claims below are computed from this version: it must be the one the caller saw, or
    // a concurrent change would have them written for a booking that no longer stands.
    if expected != loaded_version {
        return Err(ApiError::PreconditionFailed {
            current: loaded_version,
        });
    }
    if action == "reschedule" && current.waitlist.is_some() {
        // An offer is taken or let go; another place is a new offer.
        return Err(ApiError::Schedule(
            domain::scheduling::SchedulingError::TransitionNotAllowed {
                from: current.status,
                to: current.status,
            },
        ));
    }
    let now = (state.clock)();
    let release = |claim: Option<Claim>, reminders: Option<Vec<PlannedReminder>>| ClaimChange {
        appointment_id: id,
        release: true,
        claim,
        now,
        reminders,
        waitlist: None,
        notification: None,
    };
    let no_more_reminders = ClaimChange {
        appointment_id: id,
        release: false,
        claim: None,
        now,
        reminders: Some(Vec::new()),
        waitlist: None,
        notification: None,
    };
    // A wait-list entry's row follows the appointment: booked once confirmed, gone once
    // cancelled.
    let on_list = current.waitlist.is_some();
    let with_waitlist = |change: Option<ClaimChange>, status: WaitlistChange| {
        change.map(|mut c| {
            if on_list {
                c.waitlist = Some(status);
            }
            c
        })
    };
    let (command, claims) = match action {
        "confirm" => {
            // The hold's claim stays, without its expiry; the reminders are planned.
            let booking = current.booking.clone().ok_or(ApiError::Schedule(
                domain::scheduling::SchedulingError::NoTimeYet,
            ))?;
            let keys = schedule::claim_keys(&booking.resources, current.patient_id);
            let reminders = plan_reminders(state, id, current.patient_id, &booking).await?;
            let claim = Claim {
                keys,
                interval: booking.interval,
                expires_at: None,
            };
            (
                AppointmentCommand::Confirm { at: now },
                with_waitlist(
                    Some(release(Some(claim), Some(reminders))),
                    WaitlistChange::Booked,
                ),
            )
        }
        "arrive" => (
            AppointmentCommand::Arrive { at: now },
            Some(no_more_reminders),
        ),
        "check-in" => (AppointmentCommand::CheckIn { at: now }, None),
        "fulfil" => (AppointmentCommand::Fulfil { at: now }, None),
        "no-show" => (
            AppointmentCommand::NoShow { at: now },
            Some(release(None, Some(Vec::new()))),
        ),
        "cancel" => {
            let mut f = Fields::new(&body.object, "", &["reason"]);
            let code = f
                .string("reason")
                .and_then(|r| f.check(CancellationReason::parse("reason", r)));
            f.finish()?;
            let by = Principal::parse("sub", &user.id).map_err(|_| ApiError::Forbidden)?;
            (
                AppointmentCommand::Cancel {
                    reason: code.ok_or_else(|| ApiError::Validation(FieldErrors::new()))?,
                    by,
                    late_within: Duration::hours(i64::from(
                        state.scheduling.late_cancellation_hours,
                    )),
                    at: now,
                },
                with_waitlist(Some(release(None, Some(Vec::new()))), WaitlistChange::Left),
            )
        }
        "entered-in-error" => (
            AppointmentCommand::EnterInError {
                reason: reason(&body.object)?,
                at: now,
            },
            with_waitlist(Some(release(None, Some(Vec::new()))), WaitlistChange::Left),
        ),
        _ => {
            let mut f = Fields::new(&body.object, "", &["start", "practitioner", "reason"]);
            let start = instant_field(&mut f, "start");
            let practitioner = f
                .optional_string("practitioner")
                .and_then(|p| f.check(slug("practitioner", p)));
            let why = f
                .string("reason")
                .and_then(|v| f.check(Reason::parse("reason", v)));
            f.finish()?;
            let (Some(start), Some(why)) = (start, why) else {
                return Err(ApiError::Validation(FieldErrors::new()));
            };
            let service = service_named(state, &current.service, "service").await?;
            let duration = Duration::minutes(i64::from(service.minutes));
            let ask = Ask {
                service: &service,
                practitioner: practitioner.as_deref(),
                range: Interval::new(start, start + duration),
                duration,
                priority: current.priority,
                now,
                release_lead: release_lead(state),
                strategy: strategy(state),
                ignoring: Some(id),
                patient: Some(current.patient_id),
                salt: rand_salt(),
            };
            let Some(placement) = planner::place(&state.pool, &ask).await? else {
                return Err(ApiError::TimeTaken {
                    conflicting: None,
                    alternatives: alternatives(state, &ask, start).await,
                });
            };
            let booking = Booking {
                interval: placement.interval(),
                resources: placement.resources(),
            };
            let keys = schedule::claim_keys(&booking.resources, current.patient_id);
            let expires_at = (current.status == AppointmentStatus::Pending)
                .then_some(current.hold_expires_at)
                .flatten();
            // A booked appointment's reminders move with it.
            let reminders = if current.status == AppointmentStatus::Booked {
                Some(plan_reminders(state, id, current.patient_id, &booking).await?)
            } else {
                None
            };
            let claim = Claim {
                keys,
                interval: booking.interval,
                expires_at,
            };
            (
                AppointmentCommand::Reschedule {
                    booking: booking.clone(),
                    reason: why,
                    at: now,
                },
                Some(release(Some(claim), reminders)),
            )
        }
    };
    let (appointment, version) = state
        .appointments
        .execute(
            id,
            current.patient_id,
            Some(expected),
            command,
            claims,
            metadata(user, ctx, key.map(|k| k.answering(StatusCode::OK))),
        )
        .await?;
    tracing::info!(action, version, "appointment changed");
    appointment_response(StatusCode::OK, id, &appointment, version)
}
