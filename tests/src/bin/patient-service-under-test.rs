//! The `patient-service` binary, built inside this package so the end-to-end tests can start it
//! as a real process. With `PATIENT_SERVICE_UNDER_TEST_NOW` (RFC 3339) set, its clock stands
//! still at that time, as the clock of the service the tests run in their own process does:
//! a process started beside it then sees the same "now" (appointments ahead stay ahead
//! whatever day the suite runs on).

use std::sync::Arc;

use chrono::{DateTime, Utc};

fn main() -> anyhow::Result<()> {
    let clock: command_api::http::Clock = match std::env::var("PATIENT_SERVICE_UNDER_TEST_NOW") {
        Ok(now) => {
            let now: DateTime<Utc> = DateTime::parse_from_rfc3339(&now)?.with_timezone(&Utc);
            Arc::new(move || now)
        }
        Err(_) => command_api::http::system_clock(),
    };
    command_api::cli::main_with_clock(clock)
}
