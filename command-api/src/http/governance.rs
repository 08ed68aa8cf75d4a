//! `/v1/patients/{id}/...`: who may see the record and how long it is kept. Every change needs
//! `If-Match`, takes an `Idempotency-Key`, and is an event in the record's history.
//!
//! | method and path                                     | change                           | roles                      |
//! |-----------------------------------------------------|----------------------------------|----------------------------|
//! | `POST care-relationships`                           | a practitioner starts caring     | admin, registrar           |
//! | `POST care-relationships/{practitioner}/end`        | the relationship ends            | admin, registrar           |
//! | `POST consents`                                     | a consent directive              | admin, registrar, patient  |
//! | `POST consents/{consent_id}/withdraw`               | withdraws it                     | admin, registrar, patient  |
//! | `POST legal-hold`, `POST legal-hold/release`        | place or release a legal hold    | admin                      |
//! | `POST forget`                                       | erase the patient (crypto-shred) | admin                      |
//! | `GET disclosures`                                   | accounting of disclosures        | admin, patient             |

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::patient::governance::{GovernanceChange, Principal};
use domain::patient::{PatientCommand, PatientId};
use domain::FieldErrors;
use projections::audit_log;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{permission, Action, Authorized};
use crate::http::input;
use crate::http::openapi::{self as doc, Kind, Routes};
use crate::http::params::whole_number;
use crate::http::patient_commands::{change, reason_only, CommandRequest, PatientAnswer};
use crate::http::{ApiError, AppState};

pub fn router() -> Routes {
    use input::governance::{CareRelationshipBody, ConsentBody, ForgetBody};
    use input::patient::ReasonBody;
    Routes::new()
        .route(
            "/v1/patients/{id}/care-relationships",
            post(start_care_relationship),
            [doc::post("Start a care relationship with a practitioner")
                .needs(Action::ManageCareRelationships)
                .body::<CareRelationshipBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/care-relationships/{item}/end",
            post(end_care_relationship),
            [doc::post("End a care relationship")
                .needs(Action::ManageCareRelationships)
                .body::<ReasonBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/consents",
            post(grant_consent),
            [doc::post("Record a consent directive")
                .needs(Action::ManageConsents)
                .body::<ConsentBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/consents/{item}/withdraw",
            post(withdraw_consent),
            [doc::post("Withdraw a consent directive")
                .needs(Action::ManageConsents)
                .body::<ReasonBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/legal-hold",
            post(place_legal_hold),
            [doc::post("Place a legal hold (no erasure while it holds)")
                .needs(Action::ManageLegalHold)
                .body::<ReasonBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/legal-hold/release",
            post(release_legal_hold),
            [doc::post("Release a legal hold")
                .needs(Action::ManageLegalHold)
                .body::<ReasonBody>()
                .change()
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/forget",
            post(forget),
            [
                doc::post("Forget (erase) a patient: their data key is destroyed")
                    .needs(Action::ForgetPatient)
                    .body::<ForgetBody>()
                    .change()
                    .returns::<PatientAnswer>(),
            ],
        )
        .route(
            "/v1/patients/{id}/disclosures",
            get(disclosures),
            [doc::get("Who was shown a patient's data, and why")
                .needs(Action::ReadDisclosures)
                .query(&[
                    ("limit", Kind::Whole(1, 1000), false),
                    ("after", Kind::Whole(0, i64::MAX), false),
                ])
                .answers(200, "A page of disclosures, oldest first")
                .returns::<AuditPage>()],
        )
}

async fn govern<P: crate::auth::Permission>(
    state: &AppState,
    req: &CommandRequest<P>,
    path: &str,
    build: impl FnOnce(chrono::DateTime<chrono::Utc>) -> Result<GovernanceChange, ApiError>,
) -> Result<Response, ApiError> {
    let command = build((state.clock)()).map(PatientCommand::Govern);
    change(state, req, path, command).await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn start_care_relationship(
    State(state): State<AppState>,
    req: CommandRequest<permission::ManageCareRelationships>,
) -> Result<Response, ApiError> {
    govern(&state, &req, "care-relationships", |at| {
        let (practitioner, role) = input::governance::care_relationship(&req.body.object)?;
        Ok(GovernanceChange::StartCareRelationship {
            practitioner,
            role,
            at,
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn end_care_relationship(
    State(state): State<AppState>,
    req: CommandRequest<permission::ManageCareRelationships>,
) -> Result<Response, ApiError> {
    let practitioner = Principal::parse("practitioner", req.item.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::InvalidParameters(e.into()))?;
    let path = format!("care-relationships/{}/end", practitioner.as_str());
    govern(&state, &req, &path, |at| {
        let reason = reason_only(&req.body)?;
        Ok(GovernanceChange::EndCareRelationship {
            practitioner,
            reason,
            at,
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn grant_consent(
    State(state): State<AppState>,
    req: CommandRequest<permission::ManageConsents>,
) -> Result<Response, ApiError> {
    govern(&state, &req, "consents", |at| {
        Ok(GovernanceChange::GrantConsent {
            consent_id: Uuid::new_v4(),
            directive: input::governance::consent(&req.body.object)?,
            at,
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn withdraw_consent(
    State(state): State<AppState>,
    req: CommandRequest<permission::ManageConsents>,
) -> Result<Response, ApiError> {
    let consent_id = req
        .item
        .as_deref()
        .and_then(|raw| Uuid::parse_str(raw).ok())
        .ok_or_else(|| ApiError::invalid_parameter("consent_id", "must be a UUID"))?;
    let path = format!("consents/{consent_id}/withdraw");
    govern(&state, &req, &path, |at| {
        let reason = reason_only(&req.body)?;
        Ok(GovernanceChange::WithdrawConsent {
            consent_id,
            reason,
            at,
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn place_legal_hold(
    State(state): State<AppState>,
    req: CommandRequest<permission::ManageLegalHold>,
) -> Result<Response, ApiError> {
    govern(&state, &req, "legal-hold", |at| {
        let reason = reason_only(&req.body)?;
        Ok(GovernanceChange::PlaceLegalHold { reason, at })
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn release_legal_hold(
    State(state): State<AppState>,
    req: CommandRequest<permission::ManageLegalHold>,
) -> Result<Response, ApiError> {
    govern(&state, &req, "legal-hold/release", |at| {
        let reason = reason_only(&req.body)?;
        Ok(GovernanceChange::ReleaseLegalHold { reason, at })
    })
    .await
}

/// `POST /v1/patients/{id}/forget` with `{reason, reference?}`: erases the patient. The reason
/// is a code and the reference a ticket number, so the fact of erasure holds no patient data.
#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn forget(
    State(state): State<AppState>,
    req: CommandRequest<permission::ForgetPatient>,
) -> Result<Response, ApiError> {
    // Everything kept beside the events (scheduling rows, idempotency records, document
    // contents) goes in the erasure's transaction: see `event_store::repository`.
    govern(&state, &req, "forget", |at| {
        let (reason, reference) = input::governance::forget(&req.body.object)?;
        Ok(GovernanceChange::Forget {
            reason,
            reference,
            at,
        })
    })
    .await
}

/// `GET /v1/patients/{id}/disclosures?limit=&after=`: who accessed the patient's record, when,
/// why and with what outcome, oldest first. For the patient themself, or an admin on their
/// behalf. Reading it is itself recorded.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn disclosures(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadDisclosures>,
    Path(raw_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = PatientId::parse("id", &raw_id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let mut errors = FieldErrors::new();
    let limit: u64 = whole_number(&params, "limit", 100, 1..=1000, &mut errors);
    let after: i64 = whole_number(&params, "after", 0, 0..=i64::MAX, &mut errors);
    for key in params
        .keys()
        .filter(|k| !["limit", "after"].contains(&k.as_str()))
    {
        errors.push(domain::FieldError::new(key.clone(), "unknown parameter"));
    }
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let entries =
        application::audit::disclosures(state.services(), &user, id, (after, limit as i64 + 1))
            .await?;
    Ok(Json(page(entries, limit, |seq| {
        format!("/v1/patients/{id}/disclosures?limit={limit}&after={seq}")
    })?)
    .into_response())
}

/// A page of audit entries, and the link to the next page while there is one.
#[derive(Serialize, JsonSchema)]
pub(super) struct AuditPage {
    items: Vec<AuditEntryAnswer>,
    next: Option<String>,
}

/// One entry of the audit log: ids and codes only.
#[derive(Serialize, JsonSchema)]
struct AuditEntryAnswer {
    seq: i64,
    kind: EntryKind,
    recorded_at: DateTime<Utc>,
    patient_id: Option<uuid::Uuid>,
    user_id: Option<String>,
    action: String,
    /// An access entry's caller and why: the roles, organization, purpose of use, outcome,
    /// break-the-glass reason and request id.
    #[serde(flatten)]
    access: Option<AccessDetail>,
    /// An event entry's place in the store: `aggregate_type`, `aggregate_id`, `sequence`,
    /// `position` and `request_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum EntryKind {
    Event,
    Access,
}

/// Who accessed a patient's data, and why.
#[derive(Serialize, Deserialize, JsonSchema)]
struct AccessDetail {
    roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    organization: Option<String>,
    /// Purpose of use: `treatment`, `payment`, `operations`, `research` or `emergency`.
    purpose: String,
    /// `granted` or `denied`.
    outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emergency_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

/// A page of audit entries (`limit` + 1 were asked for) with the link to the next one.
pub(super) fn page(
    mut entries: Vec<audit_log::AuditEntry>,
    limit: u64,
    next: impl Fn(i64) -> String,
) -> Result<AuditPage, ApiError> {
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next = more.then(|| entries.last().map(|e| next(e.seq))).flatten();
    let items = entries
        .into_iter()
        .map(|e| {
            let (kind, access, detail) = if e.kind == "access" {
                let access = serde_json::from_value(e.detail)
                    .map_err(|e| ApiError::Internal(Box::new(e)))?;
                (EntryKind::Access, Some(access), None)
            } else {
                (EntryKind::Event, None, Some(e.detail))
            };
            Ok(AuditEntryAnswer {
                seq: e.seq,
                kind,
                recorded_at: e.recorded_at,
                patient_id: e.patient_id,
                user_id: e.user_id,
                action: e.action,
                access,
                detail,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(AuditPage { items, next })
}
