//! Data keys for downstream services: `GET /v1/patients/{id}/data-key`.
//!
//! Patient events are published sealed ([`schemas::sealed`]). A consumer with the `service`
//! role fetches the patient's data key here and opens them with `schemas::sealed::open`. Every
//! fetch is logged with who and which patient; a forgotten patient's key is gone (410).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use domain::patient::PatientId;
use schemars::JsonSchema;
use serde::Serialize;

use crate::auth::{permission, Action, Authorized};
use crate::http::openapi::{self as doc, Routes};
use crate::http::{ApiError, AppState};

pub fn router() -> Routes {
    Routes::new().route(
        "/v1/patients/{id}/data-key",
        get(data_key),
        [
            doc::get("A patient's data key, to open their sealed events")
                .needs(Action::ReadDataKey)
                .answers(200, "The key: `alg`, `key` (base64), `kid`, `patient_id`")
                .returns::<DataKey>(),
        ],
    )
}

/// A patient's data key, which opens their sealed events.
#[derive(Serialize, JsonSchema)]
struct DataKey {
    patient_id: uuid::Uuid,
    /// The key's id, as sealed events name it in `ce_keyid`.
    kid: String,
    alg: &'static str,
    /// The key, base64 with padding.
    #[schemars(extend("contentEncoding" = "base64"))]
    key: String,
}

#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn data_key(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadDataKey>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = PatientId::parse("id", &raw_id).map_err(|e| ApiError::InvalidParameters(e.into()))?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let key = application::finding::data_key(state.services(), &user, id).await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(DataKey {
            patient_id: id.as_uuid(),
            kid: key.id().to_string(),
            alg: schemas::sealed::ALGORITHM,
            key: key.to_base64(),
        }),
    )
        .into_response())
}
