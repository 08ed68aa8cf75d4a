//! The patient service's outer layer: the HTTP API, token authentication, configuration,
//! telemetry, the embedded PostgreSQL default, and the `patient-service` binary's subcommands
//! that run each role. What a caller may do and the work the service does on its own are the
//! application layer's (`application`, in `command-api/application`).
//!
//! # Layout
//!
//! - [`cli`]: the operator's subcommands (`serve`, `api`, `relay`, `project`, `migrate`,
//!   `rebuild`, `token`, `replay`, `audit`, `retention`, `keys`). Benchmarks and evaluations
//!   are `patient-service-tools` (`tests/tools`).
//! - [`startup`]: wires a [`startup::Service`] from [`configuration::Settings`] and roles.
//! - [`http`]: routes, extractors, problem+json errors.
//! - [`auth`]: bearer JWT checks and sessions (the policy table is the application crate's).
//! - [`embedded_postgres`]: the private cluster `serve` runs with no database configured.
//! - [`read_models`]: every read model, named once for `serve`, `project` and `rebuild`.
//! - [`replay`]: `patient-service replay`, the event history as NDJSON for auditors.
//! - [`retention`]: `patient-service retention purge`, erasure of patients past retention.
//! - [`audit_keys`]: `patient-service keys rotate-audit`, and both chains verified against the
//!   audit keys' retirements.

pub mod audit_keys;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod configuration;
pub mod embedded_postgres;
pub mod extraction;
pub mod http;
pub mod import;
pub mod kafka_lag;
pub mod read_models;
pub mod reconcile;
pub mod replay;
pub mod retention;
pub mod startup;
pub mod stream_feed;
pub mod telemetry;
