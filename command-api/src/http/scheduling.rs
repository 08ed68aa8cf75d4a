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
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use domain::scheduling::appointment::AppointmentState;
use domain::scheduling::{Appointment, Interval, Priority};
use domain::{FieldError, FieldErrors};
use event_store::schedule::{Resource, Service};
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::auth::{permission, Action, AuthUser, Authorized};
use crate::http::idempotency::{idempotent, Keyed, Stored};
use crate::http::input;
use crate::http::input::scheduling::{instant, slug};
use crate::http::json::JsonObject;
use crate::http::openapi::{self as doc, Kind, Routes};
use crate::http::params::whole_number;
use crate::http::patient_commands::metadata;
use crate::http::{etag, if_match, ApiError, AppState, Items, RequestContext};
use application::appointments::{self, Step};
use application::planner::Placement;

/// A resource's id or a service's code.
fn slug_schema() -> serde_json::Value {
    json!({ "type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$" })
}

pub fn router() -> Routes {
    use input::patient::ReasonBody;
    use input::scheduling::{
        BlockBody, BookingBody, CancelBody, RescheduleBody, ResourceBody, ServiceBody, WaitlistBody,
    };
    let step = |step: &str, summary: &'static str| {
        doc::post(summary)
            .at(&format!("/v1/appointments/{{id}}/{step}"))
            .needs(Action::BookAppointments)
            .body_as(
                "application/json",
                json!({ "type": "object", "description": "A JSON object; nothing is read from it" }),
            )
            .change()
            .returns::<AppointmentAnswer>()
    };
    Routes::new()
        .route(
            "/v1/resources",
            get(list_resources),
            [doc::get("Practitioners, rooms and equipment")
                .needs(Action::ReadSchedule)
                .query(&[
                    ("kind", Kind::Text, false),
                    ("specialty", Kind::Text, false),
                    ("room_type", Kind::Text, false),
                ])
                .answers(200, "The resources that match")
                .returns::<Items<Resource>>()],
        )
        .route(
            "/v1/resources/{id}",
            put(put_resource),
            [doc::put("Create or replace a resource")
                .needs(Action::ManageResources)
                .path_param("id", slug_schema())
                .body::<ResourceBody>()
                .answers(200, "Replaced")
                .returns::<Resource>()
                .also_returns::<Resource>(201, "Created")],
        )
        .route(
            "/v1/resources/{id}/blocks",
            post(add_block),
            [doc::post("Block a resource's time")
                .needs(Action::BlockResources)
                .path_param("id", slug_schema())
                .body::<BlockBody>()
                .idempotent()
                .answers(201, "Blocked")
                .returns::<BlockAnswer>()],
        )
        .route(
            "/v1/services/{code}",
            put(put_service),
            [doc::put("Create or replace a bookable service")
                .needs(Action::ManageResources)
                .path_param("code", slug_schema())
                .body::<ServiceBody>()
                .answers(200, "Replaced")
                .returns::<Service>()
                .also_returns::<Service>(201, "Created")],
        )
        .route(
            "/v1/availability",
            get(availability),
            [doc::get("Free times for a service")
                .needs(Action::ReadSchedule)
                .query(&[
                    ("service", Kind::Text, true),
                    ("from", Kind::Instant, true),
                    ("to", Kind::Instant, true),
                    ("practitioner", Kind::Text, false),
                    ("duration", Kind::Whole(0, 480), false),
                    ("priority", Kind::Text, false),
                    ("limit", Kind::Whole(1, 2000), false),
                ])
                .answers(200, "The free times, earliest first")
                .returns::<Availability>()],
        )
        .route(
            "/v1/appointments",
            post(book),
            [doc::post("Book an appointment")
                .needs(Action::BookAppointments)
                .body::<BookingBody>()
                .idempotent()
                .answers(201, "Booked")
                .returns::<AppointmentAnswer>()],
        )
        .route(
            "/v1/waitlist",
            post(join_waitlist),
            [doc::post("Join the waitlist for a window")
                .needs(Action::BookAppointments)
                .body::<WaitlistBody>()
                .idempotent()
                .answers(201, "Waiting")
                .returns::<AppointmentAnswer>()],
        )
        .route(
            "/v1/appointments/{id}",
            get(read),
            [doc::get("An appointment")
                .needs(Action::ReadAppointments)
                .answers(200, "The appointment, its version in `ETag`")
                .returns::<AppointmentAnswer>()],
        )
        .route(
            "/v1/appointments/{id}/{action}",
            post(act),
            [
                step("confirm", "Confirm a held or proposed appointment"),
                step("arrive", "The patient arrived"),
                step("check-in", "Check the patient in"),
                step("fulfil", "The appointment took place"),
                step("no-show", "The patient did not come"),
                step("cancel", "Cancel an appointment").body::<CancelBody>(),
                step("entered-in-error", "The appointment was entered in error")
                    .body::<ReasonBody>(),
                step("reschedule", "Move an appointment").body::<RescheduleBody>(),
            ],
        )
}

/// A resource's blocked time.
#[derive(Serialize, JsonSchema)]
struct BlockAnswer {
    block_id: Uuid,
    resource_id: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// `holiday`, `leave` or `one-off`.
    reason: String,
}

/// The free places for a service.
#[derive(Serialize, JsonSchema)]
struct Availability {
    service: String,
    duration_minutes: u32,
    slots: Vec<Placement>,
}

/// An appointment as the API shows it.
#[derive(Serialize, JsonSchema)]
struct AppointmentAnswer<'a> {
    #[serde(flatten)]
    state: &'a AppointmentState,
    appointment_id: Uuid,
    version: u64,
    href: String,
}

/// The longest range availability is computed over.
const MAX_RANGE_DAYS: i64 = 31;

/// `PUT /v1/resources/{id}`: `{kind, name, specialty?, room_type?, capabilities?, template?}`.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn put_resource(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ManageResources>,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let id = slug("id", &id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    let resource = input::scheduling::resource(id, &body.object)?;
    let (stored, created) =
        application::resources::put_resource(state.services(), &user, &resource).await?;
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
    let items = application::resources::resources(state.services(), filter).await?;
    Ok(Json(Items { items }).into_response())
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
            application::resources::read_block(state.services(), block_id).await?;
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
    let body = BlockAnswer {
        block_id,
        resource_id: resource.to_owned(),
        from: during.start,
        to: during.end,
        reason: reason.to_owned(),
    };
    (status, Json(body)).into_response()
}

async fn block_resource(
    state: &AppState,
    user: &AuthUser,
    id: &str,
    body: &JsonObject,
    key: Option<Keyed>,
) -> Result<Response, ApiError> {
    let block = input::scheduling::block(id.to_owned(), &body.object)?;
    let reservation = key.map(|k| k.answering(StatusCode::CREATED));
    let block_id =
        application::resources::block(state.services(), user, &block, reservation.as_ref()).await?;
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
    let service = input::scheduling::service(code, &body.object)?;
    let (stored, created) =
        application::resources::put_service(state.services(), &user, &service).await?;
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
    // Both were checked above; a missing one was named there.
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::invalid_parameter("from", "is required"));
    };
    let range = Interval::new(from, to);
    let wanted = application::resources::Wanted {
        service: query.get("service").cloned().unwrap_or_default(),
        practitioner,
        range,
        minutes: (duration != 0).then_some(duration),
        priority,
        limit,
    };
    let (service, minutes, slots) =
        application::resources::availability(state.services(), &wanted).await?;
    let body = Availability {
        service: service.code,
        duration_minutes: minutes,
        slots,
    };
    Ok(Json(body).into_response())
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
    let body = AppointmentAnswer {
        state,
        appointment_id: id,
        version,
        href: format!("/v1/appointments/{id}"),
    };
    let mut response = (status, Json(body)).into_response();
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
    let request = input::scheduling::booking(&body.object)?;
    let (id, appointment, version) = application::booking::book(
        state.services(),
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
    let wish = input::scheduling::wish(&body.object, (state.clock)())?;
    let (id, appointment, version) = application::booking::join_waitlist(
        state.services(),
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
        application::appointments::read(state.services(), &user, id).await?;
    appointment_response(StatusCode::OK, id, &appointment, version)
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
    let opened = appointments::open(state.services(), user, id, step).await?;
    let expected = if_match(headers)?;
    let metadata = metadata(user, ctx, key.map(|k| k.answering(StatusCode::OK)));
    let (appointment, version) = opened
        .take(
            expected,
            |step| input::scheduling::step(step, &body.object),
            metadata,
        )
        .await?;
    appointment_response(StatusCode::OK, id, &appointment, version)
}
