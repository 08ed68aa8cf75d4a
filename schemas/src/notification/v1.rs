//! Version 1 of the notifications, keyed by patient id; `ce_subject` is the notification id,
//! the same on every re-send (a notification is sent once). Sealed with the patient's key.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DecodeError;

pub const MAJOR: u32 = 1;

/// `AppointmentReminder`: an appointment is coming up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentReminder {
    pub notification_id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Uuid,
    /// `sms`, `email`, `phone` or `post`: the patient's preferred channel, if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["sms", "email", "phone", "post", null]))]
    pub channel: Option<String>,
    pub starts_at: DateTime<Utc>,
    /// Minutes before the start this reminder was planned for.
    pub offset_minutes: u32,
    pub at: DateTime<Utc>,
}

/// A half-open interval `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// `WaitlistOffer`: a slot is held for a wait-list entry until `expires_at`; confirming the
/// appointment accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WaitlistOffer {
    pub notification_id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["sms", "email", "phone", "post", null]))]
    pub channel: Option<String>,
    pub slot: Interval,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// Every v1 event type.
pub const EVENT_TYPES: &[&str] = &["AppointmentReminder", "WaitlistOffer"];

/// Any v1 notification.
#[derive(Debug, Clone, PartialEq)]
pub enum NotificationEvent {
    AppointmentReminder(AppointmentReminder),
    WaitlistOffer(WaitlistOffer),
}

impl NotificationEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::AppointmentReminder(_) => "AppointmentReminder",
            Self::WaitlistOffer(_) => "WaitlistOffer",
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Self::AppointmentReminder(e) => serde_json::to_vec(e),
            Self::WaitlistOffer(e) => serde_json::to_vec(e),
        }
        .unwrap_or_default()
    }

    /// Decodes the data of an event of `event_type`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for an unknown type or data that does not fit.
    pub fn decode(event_type: &str, data: &[u8]) -> Result<Self, DecodeError> {
        let malformed = |_| DecodeError::MalformedData(event_type.to_owned());
        match event_type {
            "AppointmentReminder" => serde_json::from_slice(data)
                .map(Self::AppointmentReminder)
                .map_err(malformed),
            "WaitlistOffer" => serde_json::from_slice(data)
                .map(Self::WaitlistOffer)
                .map_err(malformed),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }

    /// Decodes a received event of this major version.
    ///
    /// # Errors
    ///
    /// As [`NotificationEvent::decode`], and for another major version.
    pub fn from_published(event: &crate::PublishedEvent) -> Result<Self, DecodeError> {
        if event.major_version != MAJOR {
            return Err(DecodeError::UnknownType(format!(
                "{} v{}",
                event.event_type, event.major_version
            )));
        }
        Self::decode(&event.event_type, &event.data)
    }
}

/// The JSON Schema of each v1 notification type, with its path under `json/`.
pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "notification/v1/AppointmentReminder.schema.json",
            schemars::schema_for!(AppointmentReminder),
        ),
        (
            "notification/v1/WaitlistOffer.schema.json",
            schemars::schema_for!(WaitlistOffer),
        ),
    ]
}
