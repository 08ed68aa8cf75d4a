//! The shape shared by commands on a patient: the request (`CommandRequest`: authorization,
//! path, body, in the order that decides which error a caller sees first), `If-Match`,
//! `Idempotency-Key` (a repeat answers as the first request), execution, and the patient as
//! the API shows them.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::patient::governance::ErasureReason;
use domain::patient::{
    AdministrativeGender, MaritalStatus, Patient, PatientCommand, PatientId, PatientStatus, Reason,
};
use event_store::command::CommandMetadata;
use event_store::idempotency::Reservation;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::HashMap;

use crate::auth::{AuthUser, Authorized, Permission};
use crate::http::idempotency::{idempotent, Stored};
use crate::http::json::JsonObject;
use crate::http::{etag, if_match, ApiError, AppState, RequestContext};
use application::reach::changeable_by;

/// A patient as the API answers them: their record, or what is left of them once forgotten.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
pub(super) enum PatientAnswer {
    Record(Box<PatientResource>),
    Forgotten(ForgottenPatient),
}

/// What is left of an erased patient: the fact, without any of their data.
#[derive(Serialize, JsonSchema)]
pub(super) struct ForgottenPatient {
    status: Forgotten,
    /// Why they were forgotten.
    reason: ErasureReason,
    /// The request or decision that asked for it.
    reference: Option<String>,
    forgotten_at: chrono::DateTime<chrono::Utc>,
    version: u64,
}

/// The one status of a forgotten patient.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Forgotten {
    Forgotten,
}

/// A patient as the API shows them.
#[derive(Serialize, JsonSchema)]
pub(super) struct PatientResource {
    id: uuid::Uuid,
    mrn: String,
    name: NameResource,
    #[serde(skip_serializing_if = "Option::is_none")]
    birth_date: Option<chrono::NaiveDate>,
    gender: AdministrativeGender,
    #[serde(skip_serializing_if = "Option::is_none")]
    marital_status: Option<MaritalStatus>,
    languages: Vec<String>,
    identifiers: Vec<IdentifierResource>,
    contact: domain::patient::contact::ContactInformation,
    /// The survivor this patient was merged into.
    #[serde(skip_serializing_if = "Option::is_none")]
    merged_into: Option<Link>,
    /// The duplicates merged into this patient.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replaces: Vec<Link>,
    preferences: domain::patient::record::Preferences,
    care_team: Vec<domain::patient::governance::CareRelationship>,
    consents: Vec<domain::patient::governance::Consent>,
    /// Present while the record is on legal hold (it cannot be erased).
    #[serde(skip_serializing_if = "Option::is_none")]
    legal_hold: Option<LegalHold>,
    emergency_contacts: Vec<domain::patient::record::EmergencyContact>,
    coverages: Vec<domain::patient::record::Coverage>,
    status: PatientStatus,
    version: u64,
}

/// Why a record is on legal hold.
#[derive(Serialize, JsonSchema)]
pub(super) struct LegalHold {
    reason: String,
}

/// A link to another patient.
#[derive(Serialize, JsonSchema)]
pub(super) struct Link {
    id: uuid::Uuid,
    href: String,
}

impl Link {
    fn to(id: PatientId) -> Self {
        Self {
            id: id.as_uuid(),
            href: format!("/v1/patients/{id}"),
        }
    }
}

/// An identifier as shown: national identifiers masked but for their last four characters.
#[derive(Serialize, JsonSchema)]
pub(super) struct IdentifierResource {
    system: String,
    value: String,
    national: bool,
}

#[derive(Serialize, JsonSchema)]
pub(super) struct NameResource {
    given: Vec<String>,
    family: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prefix: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    suffix: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred: Option<String>,
}

pub(super) fn resource(patient: &Patient, version: u64) -> Result<PatientResource, ApiError> {
    let record = patient.record().ok_or(ApiError::NotFound)?;
    Ok(PatientResource {
        id: record.patient_id.as_uuid(),
        mrn: record.mrn.as_str().to_owned(),
        name: NameResource {
            given: record.name.given().to_vec(),
            family: record.name.family().to_owned(),
            prefix: record.name.prefix().to_vec(),
            suffix: record.name.suffix().to_vec(),
            preferred: record.name.preferred().map(str::to_owned),
        },
        marital_status: record.marital_status,
        languages: record
            .languages
            .iter()
            .map(|l| l.as_str().to_owned())
            .collect(),
        birth_date: record.birth_date.map(|d| d.date()),
        gender: record.gender,
        identifiers: record
            .identifiers
            .iter()
            .map(|id| IdentifierResource {
                system: id.system.clone(),
                value: id.display_value(),
                national: id.national,
            })
            .collect(),
        contact: record.contact.clone(),
        merged_into: record.merged_into.map(Link::to),
        replaces: record
            .absorptions
            .iter()
            .map(|a| Link::to(a.source_id))
            .collect(),
        preferences: record.preferences.clone(),
        care_team: record.governance.care_team.clone(),
        consents: record.governance.consents.clone(),
        legal_hold: record
            .governance
            .legal_hold
            .as_ref()
            .map(|reason| LegalHold {
                reason: reason.as_str().to_owned(),
            }),
        emergency_contacts: record.emergency_contacts.clone(),
        coverages: record.coverages.clone(),
        status: record.status,
        version,
    })
}

pub(super) fn respond(
    status: StatusCode,
    patient: &Patient,
    version: u64,
) -> Result<Response, ApiError> {
    if let Some(forgotten) = patient.forgotten() {
        let body = PatientAnswer::Forgotten(ForgottenPatient {
            status: Forgotten::Forgotten,
            reason: forgotten.reason,
            reference: forgotten.reference.as_ref().map(|r| r.as_str().to_owned()),
            forgotten_at: forgotten.forgotten_at,
            version,
        });
        return Ok((status, Json(body)).into_response());
    }
    let body = resource(patient, version)?;
    let location = format!("/v1/patients/{}", body.id);
    let mut response = (status, Json(PatientAnswer::Record(Box::new(body)))).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag(version)) {
        headers.insert(header::ETAG, value);
    }
    if status == StatusCode::CREATED {
        if let Ok(value) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, value);
        }
    }
    Ok(response)
}

pub(super) fn patient_id(raw: &str) -> Result<PatientId, ApiError> {
    PatientId::parse("id", raw).map_err(|e| ApiError::InvalidParameters(e.into()))
}

/// Who issued a command, and the `Idempotency-Key` to reserve in its transaction (kept in the
/// events' metadata too, for the audit trail).
pub(super) fn metadata(
    user: &AuthUser,
    ctx: &RequestContext,
    reservation: Option<Reservation>,
) -> CommandMetadata {
    CommandMetadata {
        user_id: user.id.clone(),
        request_id: Some(ctx.request_id.clone()),
        traceparent: Some(ctx.traceparent.clone()),
        idempotency_key: reservation.as_ref().map(|r| r.key.clone()),
        data_key_owner: None,
        reservation,
    }
}

/// The first answer of a keyed command on a patient, rebuilt: the patient at the version it
/// left them.
pub(super) fn replay<'a>(
    state: &'a AppState,
    stored: Stored<'a>,
) -> BoxFuture<'a, Result<Response, ApiError>> {
    Box::pin(async move {
        let id = patient_id(stored.aggregate_id)?;
        let patient = state
            .store
            .load_version(id, stored.version)
            .await?
            .ok_or(ApiError::NotFound)?;
        respond(stored.status, &patient, stored.version)
    })
}

/// Everything a command on an existing patient arrives with. Extracted in the order that
/// decides which error a caller sees first: authentication, then the path, then the body.
pub(super) struct CommandRequest<P> {
    pub(super) user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    method: axum::http::Method,
    raw_id: String,
    /// The second path parameter (`{item}`), on routes that have one.
    pub(super) item: Option<String>,
    pub(super) body: JsonObject,
    permission: std::marker::PhantomData<P>,
}

impl<P> CommandRequest<P> {
    pub(super) fn raw_id(&self) -> &str {
        &self.raw_id
    }

    pub(super) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub(super) fn ctx(&self) -> &RequestContext {
        &self.ctx
    }

    pub(super) fn method(&self) -> &str {
        self.method.as_str()
    }
}

impl<P: Permission> FromRequest<AppState> for CommandRequest<P> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Authorized(user, _) = Authorized::<P>::from_request_parts(&mut parts, state).await?;
        let Ok(ctx) = RequestContext::from_request_parts(&mut parts, state).await;
        let Path(mut params) =
            Path::<HashMap<String, String>>::from_request_parts(&mut parts, state)
                .await
                .map_err(|_| ApiError::invalid_parameter("id", "must be a UUID"))?;
        let raw_id = params.remove("id").unwrap_or_default();
        let item = params.remove("item");
        let headers = parts.headers.clone();
        let method = parts.method.clone();
        // A DELETE carries no body; every other command a JSON object.
        let body = if method == axum::http::Method::DELETE {
            JsonObject::empty()
        } else {
            JsonObject::from_request(Request::from_parts(parts, body), state).await?
        };
        Ok(Self {
            user,
            ctx,
            headers,
            method,
            raw_id,
            item,
            body,
            permission: std::marker::PhantomData,
        })
    }
}

/// Shared shape of the commands on an existing patient: If-Match, idempotency, execute.
pub(super) async fn change<P: Permission>(
    state: &AppState,
    req: &CommandRequest<P>,
    path_suffix: &str,
    command: Result<PatientCommand, ApiError>,
) -> Result<Response, ApiError> {
    let id = patient_id(&req.raw_id)?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    changeable_by(state.services(), &req.user, P::ACTION, id).await?;
    let path = format!("/v1/patients/{id}/{path_suffix}");
    idempotent(
        state,
        &req.user,
        &req.headers,
        (req.method.as_str(), &path, &req.body.raw),
        replay,
        |key| async {
            let expected = if_match(&req.headers)?;
            let command = command?;
            let reservation = key.map(|k| k.answering(StatusCode::OK));
            let (patient, version) = application::patients::change(
                state.services(),
                &req.user,
                (P::ACTION, command),
                (id, Some(expected)),
                metadata(&req.user, &req.ctx, reservation),
            )
            .await?;
            respond(StatusCode::OK, &patient, version)
        },
    )
    .await
}

pub(super) fn reason_only(body: &JsonObject) -> Result<Reason, ApiError> {
    Ok(crate::http::input::patient::reason_body(&body.object)?)
}
