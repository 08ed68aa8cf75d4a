//! End-to-end tests: the real service over real HTTP, a real PostgreSQL, a real Kafka-protocol
//! broker. Run with `scripts/test`.

mod audit;
mod audit_head;
mod audit_keys;
mod auth;
mod backup;
mod changes;
mod contract;
mod deployment;
mod described;
mod embedded;
mod export;
pub(crate) mod fhir;
mod hardening;
mod health;
mod helpers;
mod idempotency;
mod import;
mod matching;
mod medical_records;
mod merge;
mod metrics;
mod openapi;
mod pipeline;
mod probed;
pub(crate) mod reconcile;
mod record;
mod registration;
mod scheduling;
mod search;
mod security;
mod smart;
mod tls;
mod tools;
pub(crate) mod untrusted_records;
mod validation;
