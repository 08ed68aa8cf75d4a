//! The patient service's domain: aggregates, commands, events and the value types they are built
//! from. Everything here is pure: no IO, no clock, no random ids. Time, ids and the acting user
//! arrive with a command (or its metadata), so every decision can be replayed and tested.
//!
//! # Layout
//!
//! - [`patient`]: patient data management (registration, demographics, archive).
//! - [`matching`]: duplicate detection (blocking and Fellegi-Sunter scoring).
//! - [`validation`]: the field-level error type shared by every value type's parser.
//!
//! The brief's medical records and scheduling areas get their own modules as they arrive.

pub mod matching;
pub mod patient;
pub mod validation;

pub use validation::{FieldError, FieldErrors};
