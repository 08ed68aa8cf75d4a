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
use domain::patient::{PatientId, Reason};
use domain::scheduling::appointment::{AppointmentState, CancellationReason};
use domain::scheduling::{Appointment, Interval, Priority, WeeklyTemplate, Window};
use domain::{FieldError, FieldErrors};
use event_store::schedule::{Resource, Service};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::{permission, AuthUser, Authorized};
use crate::http::idempotency::{idempotent, Keyed, Stored};
use crate::http::json::{Fields, JsonObject};
use crate::http::params::whole_number;
use crate::http::patient_commands::metadata;
use crate::http::{etag, if_match, ApiError, AppState, RequestContext};
use application::appointments::{self, Step, StepInput};

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
        application::resources::put_resource(&state.services(), &user, &resource).await?;
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
    let filter = application::resources::ResourceFilter {
        kind: query.get("kind").map(String::as_str),
        specialty: query.get("specialty").map(String::as_str),
        room_type: query.get("room_type").map(String::as_str),
    };
    let items = application::resources::resources(&state.services(), filter).await?;
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
        let (resource, during, reason) =
            application::resources::read_block(&state.services(), block_id).await?;
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
    let block = application::resources::Block {
        resource: id,
        during: Interval::new(from, to),
        reason,
    };
    let reservation = key.map(|k| k.answering(StatusCode::CREATED));
    let block_id =
        application::resources::block(&state.services(), user, &block, reservation.as_ref())
            .await?;
    Ok(block_response(
        StatusCode::CREATED,
        block_id,
        &block.resource,
        &block.during,
        &block.reason,
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
        application::resources::put_service(&state.services(), &user, &service).await?;
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
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::InvalidParameters(FieldErrors::new()));
    };
    let wanted = application::resources::Wanted {
        service: query.get("service").cloned().unwrap_or_default(),
        practitioner,
        range: Interval::new(from, to),
        minutes: (duration != 0).then_some(duration),
        priority,
        limit,
    };
    let (service, minutes, slots) =
        application::resources::availability(&state.services(), &wanted).await?;
    Ok(
        Json(json!({ "service": service.code, "duration_minutes": minutes, "slots": slots }))
            .into_response(),
    )
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
    let request = application::booking::BookingRequest {
        patient,
        service: service_code,
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
    let wish = application::booking::Wish {
        patient,
        service: service_code,
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
    let (appointment, version) =
        application::appointments::read(&state.services(), &user, id).await?;
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
    let step = Step::parse(action).ok_or(ApiError::NotFound)?;
    let opened = appointments::open(&state.services(), user, id, step).await?;
    let expected = if_match(headers)?;
    let metadata = metadata(user, ctx, key.map(|k| k.answering(StatusCode::OK)));
    let (appointment, version) = opened
        .take(expected, |step| step_input(step, &body.object), metadata)
        .await?;
    appointment_response(StatusCode::OK, id, &appointment, version)
}

/// What the body of a step gives it.
fn step_input(step: Step, body: &Map<String, Value>) -> Result<StepInput, FieldErrors> {
    let validation = |e: ApiError| match e {
        ApiError::Validation(errors) => errors,
        _ => FieldErrors::new(),
    };
    Ok(match step {
        Step::Cancel => {
            let mut f = Fields::new(body, "", &["reason"]);
            let code = f
                .string("reason")
                .and_then(|r| f.check(CancellationReason::parse("reason", r)));
            f.errors.into_result()?;
            StepInput::Cancel(code.ok_or_else(FieldErrors::new)?)
        }
        Step::EnterInError => StepInput::EnterInError(reason(body).map_err(validation)?),
        Step::Reschedule => {
            let mut f = Fields::new(body, "", &["start", "practitioner", "reason"]);
            let start = instant_field(&mut f, "start");
            let practitioner = f
                .optional_string("practitioner")
                .and_then(|p| f.check(slug("practitioner", p)));
            let why = f
                .string("reason")
                .and_then(|v| f.check(Reason::parse("reason", v)));
            f.errors.into_result()?;
            let (Some(start), Some(reason)) = (start, why) else {
                return Err(FieldErrors::new());
            };
            StepInput::Reschedule {
                start,
                practitioner,
                reason,
            }
        }
        _ => StepInput::None,
    })
}
