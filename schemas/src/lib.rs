//! The published contract of the patient service: what downstream consumers may rely on.
//!
//! # Layout
//!
//! - [`topics`]: the Kafka topic of each aggregate type.
//! - [`envelope`]: the CloudEvents attributes carried as Kafka headers, and [`PublishedEvent`],
//!   one event as a consumer receives it.
//! - [`sealed`]: the format of sealed (encrypted) event data and the function that opens it.
//! - [`access`]: the wire types of the access topic (who read which patient's data).
//! - [`patient`]: the wire types of the patient topic, one module per major version.
//! - [`medical_record`]: the wire types of the medical record topic.
//! - [`clinical_entry`]: the wire types of the clinical entry topic (observations,
//!   procedures, encounters).
//! - [`appointment`]: the wire types of the appointment topic.
//! - [`notification`]: the wire types of the notifications topic.
//! - [`audit_head`]: the audit log's chain head, published to a topic of its own.
//! - [`json_schemas`]: the JSON Schema of every wire type; the checked-in files under `json/`
//!   are generated from it and a test fails when they drift.
//! - [`asyncapi`]: the AsyncAPI 3.0 document of every topic ([`asyncapi_document`], checked in
//!   as `asyncapi.json`).
//!
//! Nothing here does IO: this crate is what an outside consumer would depend on.

pub mod access;
pub mod appointment;
pub mod asyncapi;
pub mod audit_head;
pub mod clinical_entry;
pub mod envelope;
pub mod medical_record;
pub mod notification;
pub mod patient;
pub mod sealed;
pub mod topics;

pub use envelope::{DecodeError, PublishedEvent};

/// Every published wire type with the path of its checked-in JSON Schema, relative to this
/// crate's `json/` folder.
pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
    let mut schemas = patient::v1::json_schemas();
    schemas.extend(medical_record::v1::json_schemas());
    schemas.extend(clinical_entry::v1::json_schemas());
    schemas.extend(appointment::v1::json_schemas());
    schemas.extend(notification::v1::json_schemas());
    schemas.extend(access::v1::json_schemas());
    schemas.extend(audit_head::v1::json_schemas());
    schemas.push(("sealed.schema.json", schemars::schema_for!(sealed::Sealed)));
    schemas
}

/// The AsyncAPI document of every topic, its messages' payloads referring to the checked-in
/// JSON Schemas (paths relative to this crate's folder).
pub fn asyncapi_document() -> serde_json::Value {
    let events: Vec<(&str, String)> = json_schemas()
        .into_iter()
        .filter_map(|(path, _)| {
            if path.starts_with("audit-head/") {
                return None;
            }
            let (_, file) = path.rsplit_once('/')?;
            let event_type = file.strip_suffix(".schema.json")?;
            Some((event_type, format!("json/{path}")))
        })
        .collect();
    asyncapi::document(&events)
}
