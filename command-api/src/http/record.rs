//! `/v1/patients/{id}/...`: the parts of a record besides demographics. Every change needs
//! `If-Match`, takes an `Idempotency-Key`, and answers the patient with the new `ETag`.
//!
//! | method and path                                   | change                         |
//! |---------------------------------------------------|--------------------------------|
//! | `PUT contact`                                     | phones, e-mails, addresses     |
//! | `POST identifiers`, `POST identifiers/remove`     | add or remove an identifier    |
//! | `PUT preferences`                                 | communication preferences      |
//! | `POST emergency-contacts`                         | add an emergency contact       |
//! | `PUT`, `DELETE emergency-contacts/{item}`         | change or remove one           |
//! | `POST coverages`, `PUT coverages/{item}`          | add or change a coverage       |
//! | `POST coverages/{item}/end`                       | end a coverage (kept on record)|

use axum::extract::State;
use axum::response::Response;
use axum::routing::{post, put};
use domain::patient::{EndCoverage, PatientCommand, RecordChange, RemoveIdentifier};
use uuid::Uuid;

use crate::auth::{permission, Action};
use crate::http::input;
use crate::http::openapi::{self as doc, Routes};
use crate::http::patient_commands::{change, CommandRequest, PatientAnswer};
use crate::http::{ApiError, AppState};

pub fn router() -> Routes {
    use input::patient::{
        ContactBody, CoverageBody, CoverageEndBody, EmergencyContactBody, IdentifierBody,
        IdentifierRemovalBody, PreferencesBody,
    };
    Routes::new()
        .route(
            "/v1/patients/{id}/contact",
            put(contact),
            [doc::put("Replace a patient's contact information")
                .needs(Action::ChangeContactInformation)
                .body::<ContactBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/identifiers",
            post(add_identifier),
            [doc::post("Add an identifier")
                .needs(Action::ChangeIdentifiers)
                .body::<IdentifierBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/identifiers/remove",
            post(remove_identifier),
            [doc::post("Remove an identifier")
                .needs(Action::ChangeIdentifiers)
                .body::<IdentifierRemovalBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/preferences",
            put(preferences),
            [doc::put("Replace a patient's communication preferences")
                .needs(Action::ChangePreferences)
                .body::<PreferencesBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/emergency-contacts",
            post(add_emergency_contact),
            [doc::post("Add an emergency contact")
                .needs(Action::ChangeEmergencyContacts)
                .body::<EmergencyContactBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/emergency-contacts/{item}",
            put(change_emergency_contact).delete(remove_emergency_contact),
            [
                doc::put("Replace an emergency contact")
                    .needs(Action::ChangeEmergencyContacts)
                    .body::<EmergencyContactBody>()
                    .change()
                    .returns::<PatientAnswer>(),
                doc::delete("Remove an emergency contact")
                    .needs(Action::ChangeEmergencyContacts)
                    .change()
                    .returns::<PatientAnswer>(),
            ],
        )
        .route(
            "/v1/patients/{id}/coverages",
            post(add_coverage),
            [doc::post("Add an insurance coverage")
                .needs(Action::ChangeCoverages)
                .body::<CoverageBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/coverages/{item}",
            put(change_coverage),
            [doc::put("Replace an insurance coverage")
                .needs(Action::ChangeCoverages)
                .body::<CoverageBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/coverages/{item}/end",
            post(end_coverage),
            [doc::post("End an insurance coverage")
                .needs(Action::ChangeCoverages)
                .body::<CoverageEndBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
}

/// The `{item}` of the path as a UUID.
fn item<P>(req: &CommandRequest<P>) -> Result<Uuid, ApiError> {
    req.item
        .as_deref()
        .and_then(|raw| Uuid::parse_str(raw).ok())
        .ok_or_else(|| ApiError::invalid_parameter("item", "must be a UUID"))
}

/// Runs `build` into a record change and executes it at `path`. The caller's permission was
/// checked by the extractor.
async fn record_change<P: crate::auth::Permission>(
    state: &AppState,
    req: &CommandRequest<P>,
    path: &str,
    build: impl FnOnce(chrono::DateTime<chrono::Utc>) -> Result<RecordChange, ApiError>,
) -> Result<Response, ApiError> {
    let command = build((state.clock)()).map(PatientCommand::Change);
    change(state, req, path, command).await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn contact(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeContactInformation>,
) -> Result<Response, ApiError> {
    record_change(&state, &req, "contact", |at| {
        let contact = input::patient::contact_body(&req.body.object)?;
        Ok(RecordChange::ChangeContactInformation { contact, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn add_identifier(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeIdentifiers>,
) -> Result<Response, ApiError> {
    record_change(&state, &req, "identifiers", |at| {
        let identifier = input::patient::identifier_body(&req.body.object)?;
        Ok(RecordChange::AddIdentifier { identifier, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn remove_identifier(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeIdentifiers>,
) -> Result<Response, ApiError> {
    record_change(&state, &req, "identifiers/remove", |at| {
        let (system, value, reason) = input::patient::identifier_removal(&req.body.object)?;
        Ok(RecordChange::RemoveIdentifier(RemoveIdentifier {
            system,
            value,
            reason,
            at,
        }))
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn preferences(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangePreferences>,
) -> Result<Response, ApiError> {
    record_change(&state, &req, "preferences", |at| {
        let preferences = input::patient::preferences_body(&req.body.object)?;
        Ok(RecordChange::UpdatePreferences { preferences, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn add_emergency_contact(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeEmergencyContacts>,
) -> Result<Response, ApiError> {
    record_change(&state, &req, "emergency-contacts", |at| {
        let contact = input::patient::emergency_contact_body(&req.body.object, Uuid::new_v4())?;
        Ok(RecordChange::AddEmergencyContact { contact, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn change_emergency_contact(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeEmergencyContacts>,
) -> Result<Response, ApiError> {
    let path = format!(
        "emergency-contacts/{}",
        req.item.as_deref().unwrap_or_default()
    );
    record_change(&state, &req, &path, |at| {
        let contact = input::patient::emergency_contact_body(&req.body.object, item(&req)?)?;
        Ok(RecordChange::ChangeEmergencyContact { contact, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn remove_emergency_contact(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeEmergencyContacts>,
) -> Result<Response, ApiError> {
    let path = format!(
        "emergency-contacts/{}",
        req.item.as_deref().unwrap_or_default()
    );
    record_change(&state, &req, &path, |at| {
        Ok(RecordChange::RemoveEmergencyContact {
            contact_id: item(&req)?,
            at,
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn add_coverage(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeCoverages>,
) -> Result<Response, ApiError> {
    record_change(&state, &req, "coverages", |at| {
        let coverage = input::patient::coverage_body(&req.body.object, Uuid::new_v4())?;
        Ok(RecordChange::AddCoverage { coverage, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn change_coverage(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeCoverages>,
) -> Result<Response, ApiError> {
    let path = format!("coverages/{}", req.item.as_deref().unwrap_or_default());
    record_change(&state, &req, &path, |at| {
        let coverage = input::patient::coverage_body(&req.body.object, item(&req)?)?;
        Ok(RecordChange::ChangeCoverage { coverage, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn end_coverage(
    State(state): State<AppState>,
    req: CommandRequest<permission::ChangeCoverages>,
) -> Result<Response, ApiError> {
    let path = format!("coverages/{}/end", req.item.as_deref().unwrap_or_default());
    record_change(&state, &req, &path, |at| {
        let (end, reason) = input::patient::coverage_end_body(&req.body.object)?;
        Ok(RecordChange::EndCoverage(EndCoverage {
            coverage_id: item(&req)?,
            end,
            reason,
            at,
        }))
    })
    .await
}
