//! `Appointment`: read, and create as a booking through the native booking use case (the same
//! slot rules, claims and reminders); a time already taken answers 409 naming the conflict.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use domain::scheduling::appointment::AppointmentState;
use domain::{FieldError, FieldErrors};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::patient::base_url;
use super::{outcome, resource, weak_etag, Issue, Write};
use crate::auth::{permission, Authorized};
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};

/// The code system of the service's service types (`cardiology-consult`).
pub const SERVICE_SYSTEM: &str = "urn:patient-service:service";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/Appointment", axum::routing::post(create))
        .route("/Appointment/{id}", get(read))
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
    let mut answer = resource(StatusCode::OK, &to_fhir(id, version, current));
    answer
        .headers_mut()
        .insert(header::ETAG, weak_etag(version));
    Ok(answer)
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
    let request = crate::http::input::scheduling::booking(&body).map_err(|errors| {
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
    })?;
    let (id, appointment, version) = application::booking::book(
        state.services(),
        &write.user,
        request,
        metadata(&write.user, &write.ctx, None),
    )
    .await?;
    let current = appointment.state().ok_or(ApiError::NotFound)?;
    let mut answer = resource(StatusCode::CREATED, &to_fhir(id, version, current));
    answer
        .headers_mut()
        .insert(header::ETAG, weak_etag(version));
    let location = format!(
        "{}/Appointment/{id}/_history/{version}",
        base_url(&state, &write.headers)
    );
    if let Ok(location) = header::HeaderValue::from_str(&location) {
        answer.headers_mut().insert(header::LOCATION, location);
    }
    Ok(answer)
}
