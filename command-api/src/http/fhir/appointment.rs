//! `Appointment`: read, vread and history (every version is an event), search (by patient,
//! practitioner, date and status, through the appointments read model, each hit read from the
//! store access-checked), create as a booking through the native booking use case (the
//! same slot rules, claims and reminders; a time already taken answers 409 naming the
//! conflict), and update as the native step the change amounts to (a new status, or a new
//! start: one at a time).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use domain::scheduling::appointment::AppointmentState;
use domain::{FieldError, FieldErrors};
use projections::appointments::Criteria;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::patient::base_url;
use super::{outcome, resource, Issue, Write};
use crate::auth::{permission, Authorized};
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};

/// The code system of the service's service types (`cardiology-consult`).
pub const SERVICE_SYSTEM: &str = "urn:patient-service:service";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/Appointment", get(search).post(create))
        .route("/Appointment/{id}", get(read).put(update))
        .route("/Appointment/{id}/_history", get(history))
        .route("/Appointment/{id}/_history/{vid}", get(vread))
}

/// An appointment as a FHIR `Appointment`.
pub fn to_fhir(id: Uuid, version: u64, state: &AppointmentState) -> Value {
    let mut object = Map::new();
    object.insert("resourceType".into(), json!("Appointment"));
    object.insert("id".into(), json!(id.to_string()));
    object.insert("meta".into(), json!({ "versionId": version.to_string() }));
    object.insert("status".into(), json!(state.status.code()));
    if let Some(cancellation) = &state.cancellation {
        object.insert(
            "cancelationReason".into(),
            json!({ "coding": [{ "system": "urn:patient-service:cancellation-reason",
                                  "code": cancellation.reason.code() }] }),
        );
    }
    object.insert(
        "serviceType".into(),
        json!([{ "coding": [{ "system": SERVICE_SYSTEM, "code": state.service }], "text": state.service }]),
    );
    let mut participants = vec![json!({
        "actor": { "reference": format!("Patient/{}", state.patient_id) },
        "status": "accepted",
    })];
    if let Some(booking) = &state.booking {
        object.insert(
            "start".into(),
            json!(booking
                .interval
                .start
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
        object.insert(
            "end".into(),
            json!(booking
                .interval
                .end
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
        object.insert(
            "minutesDuration".into(),
            json!((booking.interval.end - booking.interval.start).num_minutes()),
        );
        // The practitioner first, then rooms and equipment (resources named by id).
        participants.extend(booking.resources.iter().map(|r| {
            json!({ "actor": { "reference": format!("Practitioner/{r}"), "display": r }, "status": "accepted" })
        }));
        if let Some(rest) = participants.get_mut(2..) {
            for room in rest {
                room["actor"] = json!({ "display": room["actor"]["display"] });
            }
        }
    }
    object.insert("participant".into(), Value::Array(participants));
    object.insert(
        "created".into(),
        json!(state
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    Value::Object(object)
}

/// `GET /Appointment/{id}`: access-checked and recorded against its patient.
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAppointments>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such Appointment").at("id")],
        )
    };
    let Ok(id) = Uuid::parse_str(&raw) else {
        return Ok(not_found());
    };
    let (appointment, version) =
        application::appointments::read(state.services(), &user, id).await?;
    let Some(current) = appointment.state() else {
        return Ok(not_found());
    };
    let answer = super::versioned(StatusCode::OK, &to_fhir(id, version, current), version);
    Ok(answer)
}

/// The most versions an appointment's history lists (newest first).
const MAX_HISTORY: u64 = 100;

/// Appointment `raw`, read as `user` (access-checked and recorded against its patient), with
/// its current version; or the answer that there is none.
async fn readable(
    state: &AppState,
    user: &crate::auth::AuthUser,
    raw: &str,
) -> Result<Result<(Uuid, u64), Response>, ApiError> {
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such Appointment").at("id")],
        )
    };
    let Ok(id) = Uuid::parse_str(raw) else {
        return Ok(Err(not_found()));
    };
    let (appointment, version) =
        application::appointments::read(state.services(), user, id).await?;
    if appointment.state().is_none() {
        return Ok(Err(not_found()));
    }
    Ok(Ok((id, version)))
}

/// `GET /Appointment/{id}/_history/{vid}`.
async fn vread(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAppointments>,
    Path((raw, vid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (id, current) = match readable(&state, &user, &raw).await? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    super::vread(&vid, current, |version| async move {
        let then = state
            .appointments
            .load_version(id, version)
            .await
            .map_err(ApiError::from)?;
        Ok(then
            .as_ref()
            .and_then(|a| a.state())
            .map(|s| to_fhir(id, version, s)))
    })
    .await
}

/// `GET /Appointment/{id}/_history`: its versions, newest first (the latest [`MAX_HISTORY`]).
async fn history(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAppointments>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let (id, current) = match readable(&state, &user, &raw).await? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    let mut versions = Vec::new();
    let stored = state
        .appointments
        .versions(id, MAX_HISTORY as usize)
        .await
        .map_err(ApiError::from)?;
    for (version, appointment) in stored {
        if let Some(then) = appointment.state().filter(|_| version <= current) {
            let body = to_fhir(id, version, then);
            versions.push((body, u32::try_from(version).unwrap_or(u32::MAX), None));
        }
    }
    Ok(resource(
        StatusCode::OK,
        &super::history_bundle(
            &base_url(&state, &headers),
            "Appointment",
            &id.to_string(),
            versions.into_iter(),
        ),
    ))
}

/// The search parameters of `Appointment`, with what each does (the CapabilityStatement
/// lists them).
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("patient", "reference", "the patient: Patient/<id> or <id>"),
    (
        "practitioner",
        "reference",
        "a resource of the booking: Practitioner/<id> or <id>",
    ),
    (
        "date",
        "date",
        "the start: YYYY-MM-DD or an instant, with eq (a whole day), ge, gt, le or lt; repeat for a range",
    ),
    (
        "status",
        "token",
        "proposed, pending, booked, arrived, fulfilled, cancelled, noshow, entered-in-error, checked-in, waitlist; several comma-separated",
    ),
    ("_count", "number", "1 to 100, 50 by default"),
    ("_offset", "number", "results to skip"),
];

/// The statuses an appointment may have.
const STATUSES: &[&str] = &[
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
];

/// One `date` value as the instants it spans: `[start, end)` (a day, or one second).
fn date_span(value: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let start = day.and_hms_opt(0, 0, 0)?.and_utc();
        return Some((start, start + chrono::Duration::days(1)));
    }
    let instant = DateTime::parse_from_rfc3339(value)
        .ok()?
        .with_timezone(&Utc);
    Some((instant, instant + chrono::Duration::seconds(1)))
}

/// The search's criteria, or every bad parameter.
fn criteria(query: &[(String, String)]) -> Result<Criteria, FieldErrors> {
    let mut errors = FieldErrors::new();
    let keys: Vec<String> = query.iter().map(|(k, _)| k.clone()).collect();
    let known: Vec<&str> = SEARCH_PARAMS.iter().map(|(name, _, _)| *name).collect();
    super::refuse_unknown(&keys, &known, "Appointment", &mut errors);
    let mut criteria = Criteria {
        limit: 50,
        ..Criteria::default()
    };
    for (key, raw) in query {
        match key.as_str() {
            "patient" => {
                let id = raw.strip_prefix("Patient/").unwrap_or(raw);
                match Uuid::parse_str(id) {
                    Ok(id) => criteria.patient = Some(id),
                    Err(_) => errors.push(FieldError::new("patient", "must be Patient/<id>")),
                }
            }
            "practitioner" => {
                let id = raw.strip_prefix("Practitioner/").unwrap_or(raw);
                if id.is_empty() || id.len() > 100 || id.chars().any(char::is_control) {
                    errors.push(FieldError::new("practitioner", "must be Practitioner/<id>"));
                } else {
                    criteria.practitioner = Some(id.to_owned());
                }
            }
            "status" => {
                for status in raw.split(',') {
                    if STATUSES.contains(&status) {
                        criteria.statuses.push(status.to_owned());
                    } else {
                        errors.push(FieldError::new(
                            "status",
                            format!("must be among {}", STATUSES.join(", ")),
                        ));
                    }
                }
            }
            "date" => {
                let (prefix, value) = match raw.get(..2) {
                    Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &raw[2..]),
                    _ => ("eq", raw.as_str()),
                };
                let Some((start, end)) = date_span(value) else {
                    errors.push(FieldError::new(
                        "date",
                        "must be YYYY-MM-DD or an instant, with eq, ge, gt, le or lt before it",
                    ));
                    continue;
                };
                let later =
                    |a: Option<DateTime<Utc>>, b| Some(a.map_or(b, |a: DateTime<Utc>| a.max(b)));
                let earlier =
                    |a: Option<DateTime<Utc>>, b| Some(a.map_or(b, |a: DateTime<Utc>| a.min(b)));
                match prefix {
                    "ge" => criteria.from = later(criteria.from, start),
                    "gt" => criteria.from = later(criteria.from, end),
                    "lt" => criteria.before = earlier(criteria.before, start),
                    "le" => criteria.before = earlier(criteria.before, end),
                    _ => {
                        criteria.from = later(criteria.from, start);
                        criteria.before = earlier(criteria.before, end);
                    }
                }
            }
            "_count" => match raw.parse::<u32>() {
                Ok(n @ 1..=100) => criteria.limit = n,
                _ => errors.push(FieldError::new(
                    "_count",
                    "must be a whole number from 1 to 100",
                )),
            },
            "_offset" => match raw.parse::<u32>() {
                Ok(n @ 0..=100_000) => criteria.offset = n,
                _ => errors.push(FieldError::new(
                    "_offset",
                    "must be a whole number up to 100000",
                )),
            },
            _ => {}
        }
    }
    errors.into_result()?;
    Ok(criteria)
}

/// `GET /Appointment?...`: a searchset Bundle, by start time. Each hit is read from the store
/// as the caller, access-checked and recorded; one the caller may not read is left out.
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadAppointments>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let criteria = criteria(&query).map_err(ApiError::InvalidParameters)?;
    // A patient, or a user of another organization, reaches some patients only: their
    // searches name one (and are refused when they may not read it).
    let narrow = user.roles.iter().all(|r| *r == crate::auth::Role::Patient)
        || user.confined_to.is_some()
        || crate::auth::access::is_external(&user, state.home_organization.as_deref());
    if narrow && criteria.patient.is_none() {
        return Err(ApiError::InvalidParameters(
            FieldError::new(
                "patient",
                "is required: you may search your own appointments",
            )
            .into(),
        ));
    }
    let page = projections::appointments::search(&state.pool, &criteria).await?;
    let base = base_url(&state, &headers);
    let mut entries = Vec::with_capacity(page.ids.len());
    let mut left_out = false;
    for id in page.ids {
        match application::appointments::read(state.services(), &user, id).await {
            Ok((appointment, version)) => {
                if let Some(current) = appointment.state() {
                    entries.push(super::match_entry(&base, to_fhir(id, version, current)));
                }
            }
            // Named patient not readable: refused whole, as a read of it would be.
            Err(refused @ application::services::UseCaseError::Refused(_))
                if criteria.patient.is_some() =>
            {
                return Err(refused.into())
            }
            Err(application::services::UseCaseError::Refused(_)) => left_out = true,
            Err(other) => return Err(other.into()),
        }
    }
    // What the caller may not read is not counted either.
    let total = if left_out { None } else { page.total };
    let paging = super::Paging {
        count: criteria.limit as usize,
        offset: criteria.offset as usize,
        has_more: page.has_more,
    };
    Ok(resource(
        StatusCode::OK,
        &super::page_bundle((&base, "Appointment"), &query, paging, total, entries),
    ))
}

/// The native booking body of a FHIR Appointment: its patient and practitioner participants,
/// its service type, its start; `proposed` and `pending` statuses propose or hold.
fn booking_body(appointment: &Value) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut body = Map::new();
    let references: Vec<&str> = appointment["participant"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|p| p["actor"]["reference"].as_str())
                .collect()
        })
        .unwrap_or_default();
    match references.iter().find_map(|r| r.strip_prefix("Patient/")) {
        Some(patient) => {
            body.insert("patient_id".into(), json!(patient));
        }
        None => errors.push(FieldError::new(
            "Appointment.participant",
            "must name the patient: actor Patient/<id>",
        )),
    }
    if let Some(practitioner) = references
        .iter()
        .find_map(|r| r.strip_prefix("Practitioner/"))
    {
        body.insert("practitioner".into(), json!(practitioner));
    }
    let service = appointment["serviceType"][0]["coding"][0]["code"]
        .as_str()
        .or_else(|| appointment["serviceType"][0]["text"].as_str());
    match service {
        Some(service) => {
            body.insert("service".into(), json!(service));
        }
        None => errors.push(FieldError::new(
            "Appointment.serviceType",
            "is required: the service booked",
        )),
    }
    if let Some(start) = appointment.get("start") {
        body.insert("start".into(), start.clone());
    }
    match appointment["status"].as_str() {
        Some("booked") | None => {}
        Some("pending") => {
            body.insert("hold".into(), json!(true));
        }
        Some("proposed") => {
            body.insert("propose".into(), json!(true));
        }
        Some(_) => errors.push(FieldError::new(
            "Appointment.status",
            "must be booked, pending or proposed on create",
        )),
    }
    errors.into_result()?;
    Ok(body)
}

/// `POST /Appointment`: books through the native booking use case.
async fn create(
    State(state): State<AppState>,
    write: Write<permission::BookAppointments>,
) -> Result<Response, ApiError> {
    if write.resource["resourceType"] != "Appointment" {
        return Err(ApiError::Validation(
            FieldError::new("resourceType", "must be Appointment at this address").into(),
        ));
    }
    let body = booking_body(&write.resource).map_err(ApiError::Validation)?;
    let fhir_paths = |errors: FieldErrors| {
        let mut renamed = FieldErrors::new();
        for e in errors.iter() {
            let field = match e.field.as_str() {
                "patient_id" | "practitioner" => "Appointment.participant".to_owned(),
                "service" => "Appointment.serviceType".to_owned(),
                other => format!("Appointment.{other}"),
            };
            renamed.push(FieldError::new(field, e.message.clone()));
        }
        ApiError::Validation(renamed)
    };
    let request = crate::http::input::scheduling::booking(&body).map_err(fhir_paths)?;
    let (id, appointment, version) = application::booking::book(
        state.services(),
        &write.user,
        request,
        metadata(&write.user, &write.ctx, None),
    )
    .await
    .map_err(|e| match e {
        // A service or practitioner the resource names that this service does not have: an
        // element of the resource, not a query parameter.
        application::services::UseCaseError::Unknown(errors) => fhir_paths(errors),
        other => other.into(),
    })?;
    let current = appointment.state().ok_or(ApiError::NotFound)?;
    let mut answer = super::versioned(StatusCode::CREATED, &to_fhir(id, version, current), version);
    let location = format!(
        "{}/Appointment/{id}/_history/{version}",
        base_url(&state, &write.headers)
    );
    super::locate(&mut answer, &location);
    Ok(answer)
}

/// The native cancellation reason of a FHIR `cancelationReason`: the service's own code, or
/// HL7's appointment-cancellation-reason by its group (patient, provider, facility, weather);
/// `other` when none is given.
fn cancellation_reason(sent: &Value) -> String {
    let coding = &sent["cancelationReason"]["coding"][0];
    let code = coding["code"].as_str().unwrap_or("other");
    if coding["system"] == "urn:patient-service:cancellation-reason" {
        return code.to_owned();
    }
    match code {
        "pat-swl" => "patient-sick",
        c if c.starts_with("pat") => "patient",
        c if c.starts_with("prov") => "practitioner",
        "maint" | "oth-room" => "facility",
        "oth-weath" => "weather",
        _ => "other",
    }
    .to_owned()
}

/// A native appointment step and the body it takes.
type StepRequest = (application::appointments::Step, Map<String, Value>);

/// The native step a PUT asks for, and its body: from the status sent when it differs from
/// the appointment's, else from the start. `None`: nothing to change.
fn step_of(current: &Value, sent: &Value, reason: &str) -> Result<Option<StepRequest>, ApiError> {
    use application::appointments::Step;
    let refuse = |element: &str, message: &str| {
        Err(ApiError::Validation(
            FieldError::new(format!("Appointment.{element}"), message).into(),
        ))
    };
    let status_changed = sent["status"] != current["status"];
    let start_changed = sent["start"] != current["start"];
    let mut body = Map::new();
    if status_changed && start_changed {
        return refuse(
            "start",
            "one change at a time: a new status, or a new start (a reschedule)",
        );
    }
    if start_changed {
        let Some(start) = sent["start"].as_str() else {
            return refuse("start", "is required: the new start");
        };
        body.insert("start".into(), json!(start));
        let practitioner = sent["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|p| {
                p["actor"]["reference"]
                    .as_str()?
                    .strip_prefix("Practitioner/")
            });
        if let Some(practitioner) = practitioner {
            body.insert("practitioner".into(), json!(practitioner));
        }
        body.insert("reason".into(), json!(reason));
        return Ok(Some((Step::Reschedule, body)));
    }
    if !status_changed {
        return Ok(None);
    }
    let step = match sent["status"].as_str() {
        Some("booked") => Step::Confirm,
        Some("arrived") => Step::Arrive,
        Some("checked-in") => Step::CheckIn,
        Some("fulfilled") => Step::Fulfil,
        Some("noshow") => Step::NoShow,
        Some("cancelled") => {
            body.insert("reason".into(), json!(cancellation_reason(sent)));
            Step::Cancel
        }
        Some("entered-in-error") => {
            body.insert("reason".into(), json!(reason));
            Step::EnterInError
        }
        _ => {
            return refuse(
                "status",
                "must be booked (confirming a hold or proposal), arrived, checked-in, fulfilled, noshow, cancelled or entered-in-error",
            )
        }
    };
    Ok(Some((step, body)))
}

/// `PUT /Appointment/{id}` with `If-Match`: the native step the change amounts to (confirm,
/// arrive, check in, fulfil, no-show, cancel with `cancelationReason`, mark entered in error,
/// or reschedule to a new `start`), for the reason in `X-Change-Reason`.
async fn update(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    write: Write<permission::BookAppointments>,
) -> Result<Response, ApiError> {
    let expected = super::expected_version(&write.headers)?;
    let Ok(id) = Uuid::parse_str(&raw) else {
        return Err(ApiError::NotFound);
    };
    if write.resource["resourceType"] != "Appointment"
        || write.resource["id"].as_str() != Some(&raw)
    {
        return Err(ApiError::Validation(
            FieldError::new(
                "Appointment.id",
                "must be an Appointment with the id in the address",
            )
            .into(),
        ));
    }
    let services = state.services();
    let (appointment, version) = application::appointments::read(services, &write.user, id).await?;
    let current = appointment.state().ok_or(ApiError::NotFound)?;
    let shown = to_fhir(id, version, current);
    let reason = write
        .headers
        .get(super::CHANGE_REASON)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(super::DEFAULT_REASON);
    let Some((step, body)) = step_of(&shown, &write.resource, reason)? else {
        if version != expected {
            return Err(ApiError::PreconditionFailed { current: version });
        }
        let answer = super::versioned(StatusCode::OK, &shown, version);
        return Ok(answer);
    };
    let opened = application::appointments::open(services, &write.user, id, step).await?;
    let (appointment, version) = opened
        .take(
            expected,
            |step| {
                crate::http::input::scheduling::step(step, &body).map_err(|errors| {
                    let mut renamed = FieldErrors::new();
                    for e in errors.iter() {
                        let field = match e.field.as_str() {
                            "reason" if step == application::appointments::Step::Cancel => {
                                "Appointment.cancelationReason".to_owned()
                            }
                            "reason" => super::CHANGE_REASON.to_owned(),
                            "practitioner" => "Appointment.participant".to_owned(),
                            other => format!("Appointment.{other}"),
                        };
                        renamed.push(FieldError::new(field, e.message.clone()));
                    }
                    renamed
                })
            },
            metadata(&write.user, &write.ctx, None),
        )
        .await?;
    let current = appointment.state().ok_or(ApiError::NotFound)?;
    let answer = super::versioned(StatusCode::OK, &to_fhir(id, version, current), version);
    Ok(answer)
}
