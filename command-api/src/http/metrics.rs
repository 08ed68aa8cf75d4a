//! `GET /metrics`: counters of this process in the Prometheus text format, for the operator's
//! alerting. Counts only, no ids and no patient data, so it needs no token (like the health
//! checks); keep it on the internal network.
//!
//! - `patient_service_emergency_access_granted_total`: break-the-glass grants. Each is also an
//!   `EmergencyAccessGranted` event on `patients.access.v1`, naming user, patient and reason.
//! - `patient_service_emergency_access_refused_total`: break-the-glass refused by the per-user
//!   hourly limit (`auth.break_glass_patients_per_hour`).
//! - `patient_service_access_denied_total`: refused accesses to a patient's data.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let counters = state.access.counters();
    let mut body = String::new();
    for (name, help, value) in [
        (
            "patient_service_emergency_access_granted_total",
            "Break-the-glass accesses granted.",
            &counters.emergency_granted,
        ),
        (
            "patient_service_emergency_access_refused_total",
            "Break-the-glass accesses refused by the per-user hourly limit.",
            &counters.emergency_refused,
        ),
        (
            "patient_service_access_denied_total",
            "Accesses to a patient's data refused.",
            &counters.denied,
        ),
    ] {
        // Writing to a String cannot fail.
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
