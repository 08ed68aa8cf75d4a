//! Version 1 of the access entries. They hold ids and codes only, never patient data, and are
//! published in the clear.
//!
//! Two event types share one shape:
//! - `AccessRecorded`: a read of patient data (or an attempt), granted or denied.
//! - `EmergencyAccessGranted`: a clinician without a care relationship read the record under
//!   break-the-glass, with a stated reason. A notification service acts on these.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DecodeError;

pub const MAJOR: u32 = 1;

/// The event type of an ordinary access entry.
pub const ACCESS_RECORDED: &str = "AccessRecorded";
/// The event type of a break-the-glass access.
pub const EMERGENCY_ACCESS_GRANTED: &str = "EmergencyAccessGranted";

/// One access to one patient's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccessEntry {
    pub entry_id: Uuid,
    pub patient_id: Uuid,
    /// The user (the token's `sub`).
    pub user_id: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// The user's organization, when the token names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// What was accessed: `read`, `read-as-of`, `search-result`, `match-result`, `history`,
    /// `data-key`, `disclosures`, or the command attempted when a change was denied.
    pub action: String,
    /// Purpose of use: `treatment`, `payment`, `operations`, `research` or `emergency`.
    #[schemars(extend("enum" = ["treatment", "payment", "operations", "research", "emergency"]))]
    pub purpose: String,
    /// `granted` or `denied`.
    #[schemars(extend("enum" = ["granted", "denied"]))]
    pub outcome: String,
    /// The break-the-glass reason code, for emergency access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["emergency-treatment", "patient-unable-to-consent", "urgent-clinical-need", "imminent-threat", null]))]
    pub emergency_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub accessed_at: DateTime<Utc>,
}

impl AccessEntry {
    /// The event type this entry is published as.
    pub fn event_type(&self) -> &'static str {
        if self.emergency_reason.is_some() && self.outcome == "granted" {
            EMERGENCY_ACCESS_GRANTED
        } else {
            ACCESS_RECORDED
        }
    }

    /// Decodes a received access entry.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for another version or type, or data that does not match the schema.
    pub fn from_published(event: &crate::PublishedEvent) -> Result<Self, DecodeError> {
        if event.major_version != MAJOR
            || ![ACCESS_RECORDED, EMERGENCY_ACCESS_GRANTED].contains(&event.event_type.as_str())
        {
            return Err(DecodeError::UnknownType(format!(
                "{} v{}",
                event.event_type, event.major_version
            )));
        }
        serde_json::from_slice(&event.data)
            .map_err(|_| DecodeError::MalformedData(event.event_type.clone()))
    }
}

/// The JSON Schema of each v1 access event type.
pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "access/v1/AccessRecorded.schema.json",
            schemars::schema_for!(AccessEntry),
        ),
        (
            "access/v1/EmergencyAccessGranted.schema.json",
            schemars::schema_for!(AccessEntry),
        ),
    ]
}
