//! Liveness (the process answers) and readiness (the database answers and every migration is
//! applied; in a process without the API, also no reader it runs is stuck). Neither needs a
//! token: load balancers and orchestrators call them.
//!
//! A process with the API stays ready while the broker is down: commands go on succeeding,
//! and the relay catches up once the broker is back. A `relay`, `project` or `background`
//! process is not ready once a reader it runs has left an event unread longer than
//! `health.stuck_after_secs`, so that an orchestrator restarts it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;

use crate::http::openapi::{self as doc, Routes};
use std::time::Duration;

use crate::http::metrics::{Pipeline, DATABASE_TIMEOUT};
use crate::http::AppState;

/// The readers a process without the API runs, whose lag its readiness answers for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Duties {
    pub relay: bool,
    /// Read models fed from the event store.
    pub read_models: bool,
    /// Read models fed from Kafka: stuck when their consumer group has records to read and
    /// its committed offsets have not moved for `stuck_after`.
    pub kafka_read_models: bool,
    pub process_managers: bool,
    pub stuck_after: Duration,
}

impl Duties {
    fn any(&self) -> bool {
        self.relay || self.read_models || self.kafka_read_models || self.process_managers
    }
}

/// What a health check answers.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "HealthReport")]
struct Report {
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Reason>,
    /// The readers that are stuck: `relay default`, `read model patient_search`, ...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stuck: Vec<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "HealthStatus")]
enum Status {
    Live,
    Ready,
    #[serde(rename = "not ready")]
    NotReady,
}

/// Why a process is not ready.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "NotReadyReason")]
enum Reason {
    #[serde(rename = "stuck")]
    Stuck,
    #[serde(rename = "database unreachable")]
    DatabaseUnreachable,
    #[serde(rename = "migrations pending")]
    MigrationsPending,
}

impl Report {
    fn is(status: Status) -> Json<Self> {
        Json(Self {
            status,
            reason: None,
            stuck: Vec::new(),
        })
    }

    fn not_ready(reason: Reason, stuck: Vec<String>) -> (StatusCode, Json<Self>) {
        let report = Self {
            status: Status::NotReady,
            reason: Some(reason),
            stuck,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(report))
    }
}

pub fn router() -> Routes {
    Routes::new()
        .route(
            "/health/live",
            get(live),
            [doc::get("Liveness: the process answers")
                .answers(200, "Live")
                .returns::<Report>()],
        )
        .route(
            "/health/ready",
            get(ready),
            [
                doc::get("Readiness: the database answers and every migration is applied")
                    .answers(200, "Ready")
                    .returns::<Report>()
                    .also_returns::<Report>(503, "Not ready, and why"),
            ],
        )
}

async fn live() -> Json<Report> {
    Report::is(Status::Live)
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Report>) {
    let ready = (StatusCode::OK, Report::is(Status::Ready));
    match crate::startup::migrations_applied(&state.pool).await {
        Ok(true) if !state.duties.any() => ready,
        Ok(true) => match stuck(&state).await {
            Ok(stuck) if stuck.is_empty() => ready,
            Ok(stuck) => Report::not_ready(Reason::Stuck, stuck),
            Err(e) => {
                tracing::warn!(error.message = %e, "readiness check failed");
                Report::not_ready(Reason::DatabaseUnreachable, Vec::new())
            }
        },
        Ok(false) => Report::not_ready(Reason::MigrationsPending, Vec::new()),
        Err(e) => {
            tracing::warn!(error.message = %e, "readiness check failed");
            Report::not_ready(Reason::DatabaseUnreachable, Vec::new())
        }
    }
}

/// The readers among `duties` that have left an event unread longer than `duties.stuck_after`:
/// `relay default`, `read model patient_search`, `process manager ...`.
///
/// # Errors
///
/// When the figures could not be read within [`DATABASE_TIMEOUT`].
async fn stuck(state: &AppState) -> Result<Vec<String>, sqlx::Error> {
    let (pool, duties) = (&state.pool, &state.duties);
    let pipeline = tokio::time::timeout(DATABASE_TIMEOUT, Pipeline::read(pool))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let limit = duties.stuck_after.as_secs_f64();
    let mut stuck = Vec::new();
    if duties.relay && pipeline.relays.is_empty() {
        // No relay has published yet (it has no checkpoint): it is behind by every event.
        let oldest: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - recorded_at)::float8
               FROM events ORDER BY transaction_id, position LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        if oldest.is_some_and(|age| age > limit) {
            stuck.push("relay (not started)".to_owned());
        }
    }
    for (duty, what, rows) in [
        (duties.relay, "relay", pipeline.relays),
        (duties.read_models, "read model", pipeline.read_models),
        (
            duties.process_managers,
            "process manager",
            pipeline.process_managers,
        ),
    ] {
        if duty {
            stuck.extend(
                rows.into_iter()
                    .filter(|(_, n, age)| *n > 0 && *age > limit)
                    .map(|(name, _, _)| format!("{what} {name}")),
            );
        }
    }
    if duties.kafka_read_models {
        stuck.extend(stuck_consumers(state).await);
    }
    Ok(stuck)
}

/// The read models whose consumer group has had records to read while its committed offsets
/// stood still for longer than `stuck_after` (as this process has seen them at its readiness
/// checks; a broker that does not answer makes nothing stuck: the broker is not this process).
async fn stuck_consumers(state: &AppState) -> Vec<String> {
    let Some(kafka) = &state.kafka else {
        return Vec::new();
    };
    let Ok(groups) = crate::kafka_lag::read(kafka, DATABASE_TIMEOUT).await else {
        return Vec::new();
    };
    let now = std::time::Instant::now();
    let mut seen = state
        .consumer_progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut stuck = Vec::new();
    for group in groups {
        let entry = seen
            .entry(group.model.clone())
            .or_insert((group.committed, now));
        if group.lag == 0 || entry.0 != group.committed {
            *entry = (group.committed, now);
        } else if now.duration_since(entry.1) > state.duties.stuck_after {
            stuck.push(format!("read model {} (Kafka)", group.model));
        }
    }
    stuck
}
