//! The patient service's domain: aggregates, commands, events and the value types they are built
//! from. Everything here is pure: no IO, no clock, no random ids. Time, ids and the acting user
//! arrive with a command (or its metadata), so every decision can be replayed and tested.
//!
//! # Layout
//!
//! - [`patient`]: patient data management (registration, demographics, archive).
//! - [`medical_record`]: medical records handling (clinical items, safety checks).
//! - [`scheduling`]: appointment scheduling (calendars, appointments, assignment).
//! - [`matching`]: duplicate detection (blocking and Fellegi-Sunter scoring).
//! - [`validation`]: the field-level error type shared by every value type's parser.
//!

pub mod matching;
pub mod medical_record;
pub mod patient;
pub mod scheduling;
pub mod validation;

pub use validation::{FieldError, FieldErrors};
