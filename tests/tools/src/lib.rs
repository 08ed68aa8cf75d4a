//! The patient service's benchmarks and evaluations, out of the product binary: each measures
//! the real service (its library, a real PostgreSQL) and prints its figures.
//!
//! # Layout
//!
//! - [`cli`]: the `patient-service-tools` subcommands.
//! - [`bench`]: registrations per second against pgbench on the same cluster, and projection lag.
//! - [`bench_pipeline`]: the whole pipeline in one run, ending with the `summary:` line.
//! - [`bench_records`]: medical records: items and documents per second, search latency.
//! - [`bench_schedule`]: availability latency and bookings per second.
//! - [`match_eval`]: duplicate detection on a FEBRL data set: precision, recall, F1.
//! - [`fuzz`]: Schemathesis against the served OpenAPI document, with each role's token.
//! - [`soak`]: the service killed under load, then checked for anything lost.
//! - [`simulate_week`]: best-fit against first-fit assignment on generated clinic weeks.
//! - [`pgbench`]: the baseline, PostgreSQL's own `pgbench` on the same cluster.
//! - [`measure`]: what every benchmark reports the same way (percentiles).
//! - [`population`]: the synthetic patients a benchmark registers through the API.

pub mod bench;
pub mod bench_pipeline;
pub mod bench_records;
pub mod bench_schedule;
pub mod cli;
pub mod fuzz;
pub mod idp;
pub mod match_eval;
pub mod measure;
pub mod mixed_store;
pub mod pgbench;
pub mod population;
pub mod simulate_week;
pub mod soak;
