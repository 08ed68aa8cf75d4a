//! Ending sessions before their tokens expire.
//!
//! - `POST /v1/sessions/current/revoke`: logout; any caller, for the session of their token.
//! - `POST /v1/sessions/{session_id}/revoke`: an admin cuts a session off (a lost device, a
//!   departed employee).
//!
//! A revoked session's tokens answer 401 from then on.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::auth::{permission, sessions, Action, AuthUser, Authorized};
use crate::http::openapi::{self as doc, Routes};
use crate::http::{ApiError, AppState};

pub fn router() -> Routes {
    Routes::new()
        .route(
            "/v1/sessions/current/revoke",
            post(logout),
            [doc::post("End the caller's own session (log out)")
                .authenticated()
                .answers_nothing(204, "Ended: its tokens are refused from now on")],
        )
        .route(
            "/v1/sessions/{session_id}/revoke",
            post(revoke),
            [doc::post("Revoke a user's session")
                .needs(Action::RevokeSessions)
                .path_param(
                    "session_id",
                    serde_json::json!({ "type": "string", "minLength": 1, "maxLength": 200 }),
                )
                .answers_nothing(204, "Revoked: its tokens are refused from now on")],
        )
}

#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<Response, ApiError> {
    sessions::revoke(&state.pool, &user.session_id, &user.id, (state.clock)()).await?;
    tracing::info!("session ended by its user");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn revoke(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::RevokeSessions>,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    if session_id.is_empty()
        || session_id.len() > 200
        || !session_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid_parameter(
            "session_id",
            "must be 1 to 200 printable ASCII characters",
        ));
    }
    sessions::revoke(&state.pool, &session_id, &user.id, (state.clock)()).await?;
    tracing::info!("session revoked by an admin");
    Ok(StatusCode::NO_CONTENT.into_response())
}
