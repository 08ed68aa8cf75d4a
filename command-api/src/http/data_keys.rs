//! Data keys for downstream services: `GET /v1/patients/{id}/data-key`.
//!
//! Patient events are published sealed ([`schemas::sealed`]). A consumer with the `service`
//! role fetches the patient's data key here and opens them with `schemas::sealed::open`. Every
//! fetch is logged with who and which patient; a forgotten patient's key is gone (410).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use domain::patient::PatientId;
use event_store::keys::KeyState;
use serde_json::json;

use crate::auth::{permission, Action, Authorized};
use crate::http::reach::checked_access;
use crate::http::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/patients/{id}/data-key", get(data_key))
}

#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn data_key(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadDataKey>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = PatientId::parse("id", &raw_id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    // The same reach as any read: another organization's service needs the patient's consent,
    // a research purpose the patient's not having opted out; the access is recorded.
    let loaded = state.store.load(id).await?;
    checked_access(
        &state,
        &user,
        Action::ReadDataKey,
        "data-key",
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    let key = match state
        .store
        .keys()
        .data_key(&state.pool, &id.to_string())
        .await?
    {
        KeyState::Active(key) => key,
        KeyState::Destroyed => return Err(ApiError::Gone),
        KeyState::Absent => return Err(ApiError::NotFound),
    };
    tracing::info!("data key handed out");
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "patient_id": id,
            "kid": key.id(),
            "alg": schemas::sealed::ALGORITHM,
            "key": key.to_base64(),
        })),
    )
        .into_response())
}
