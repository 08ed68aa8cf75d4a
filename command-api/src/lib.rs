//! The patient service's outer layer: the HTTP API, authentication and authorization,
//! configuration, telemetry, the embedded PostgreSQL default, and the `patient-service`
//! binary's subcommands that run each role.
//!
//! # Layout
//!
//! - [`cli`]: subcommands (`serve`, `api`, `relay`, `project`, `migrate`, `rebuild`, `token`,
//!   `bench`).
//! - [`startup`]: wires a [`startup::Service`] from [`configuration::Settings`] and roles.
//! - [`http`]: routes, extractors, problem+json errors.
//! - [`auth`]: bearer JWT and the policy table.
//! - [`embedded_postgres`]: the private cluster `serve` runs with no database configured.
//! - [`matching`]: duplicate detection against the `patient_match` read model.
//! - [`planner`]: availability and placement of appointments on resources.
//! - [`bench`]: the benchmark behind `patient-service bench`.
//! - [`bench_schedule`]: the scheduling benchmark behind `patient-service bench-schedule`.
//! - [`bench_records`]: the medical record benchmark behind `patient-service bench-records`.
//! - [`reminders`]: the reminder dispatcher.
//! - [`waitlist`]: wait-list offers.
//! - [`replay`]: `patient-service replay`, the event history as NDJSON for auditors.
//! - [`retention`]: `patient-service retention purge`, erasure of patients past retention.
//! - [`match_eval`]: `patient-service match-eval`, duplicate detection on a FEBRL data set.

pub mod auth;
pub mod bench;
pub mod bench_records;
pub mod bench_schedule;
pub mod cli;
pub mod configuration;
pub mod embedded_postgres;
pub mod extraction;
pub mod http;
pub mod match_eval;
pub mod matching;
pub mod planner;
pub mod reminders;
pub mod replay;
pub mod retention;
pub mod startup;
pub mod synthetic;
pub mod telemetry;
pub mod waitlist;
