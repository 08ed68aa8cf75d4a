//! The patient service's outer layer: the HTTP API, authentication and authorization,
//! configuration, telemetry, the embedded PostgreSQL default, and the `patient-service`
//! binary's subcommands that run each role.
//!
//! # Layout
//!
//! - [`cli`]: the operator's subcommands (`serve`, `api`, `relay`, `project`, `migrate`,
//!   `rebuild`, `token`, `replay`, `audit`, `retention`, `keys`). Benchmarks and evaluations
//!   are `patient-service-tools` (`tests/tools`).
//! - [`startup`]: wires a [`startup::Service`] from [`configuration::Settings`] and roles.
//! - [`http`]: routes, extractors, problem+json errors.
//! - [`auth`]: bearer JWT and the policy table.
//! - [`embedded_postgres`]: the private cluster `serve` runs with no database configured.
//! - [`matching`]: duplicate detection against the `patient_match` read model.
//! - [`planner`]: availability and placement of appointments on resources.
//! - [`read_models`]: every read model, named once for `serve`, `project` and `rebuild`.
//! - [`reminders`]: the reminder dispatcher.
//! - [`waitlist`]: wait-list offers.
//! - [`replay`]: `patient-service replay`, the event history as NDJSON for auditors.
//! - [`retention`]: `patient-service retention purge`, erasure of patients past retention.

pub mod auth;
pub mod cli;
pub mod configuration;
pub mod embedded_postgres;
pub mod extraction;
pub mod http;
pub mod matching;
pub mod planner;
pub mod read_models;
pub mod reminders;
pub mod replay;
pub mod retention;
pub mod startup;
pub mod telemetry;
pub mod waitlist;
