//! Liveness (the process answers) and readiness (the database answers and every migration is
//! applied). Neither needs a token: load balancers and orchestrators call them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};

use crate::http::openapi::{self as doc, Routes};
use crate::http::AppState;

pub fn router() -> Routes {
    let report = json!({
        "type": "object",
        "required": ["status"],
        "properties": { "status": { "type": "string" }, "reason": { "type": "string" } },
    });
    Routes::new()
        .route(
            "/health/live",
            get(live),
            [doc::get("Liveness: the process answers").answers_as(
                200,
                "Live",
                "application/json",
                report.clone(),
            )],
        )
        .route(
            "/health/ready",
            get(ready),
            [
                doc::get("Readiness: the database answers and every migration is applied")
                    .answers_as(200, "Ready", "application/json", report.clone())
                    .also_answers_as(503, "Not ready, and why", "application/json", report),
            ],
        )
}

async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match crate::startup::migrations_applied(&state.pool).await {
        Ok(true) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": "migrations pending" })),
        ),
        Err(e) => {
            tracing::warn!(error.message = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "reason": "database unreachable" })),
            )
        }
    }
}
