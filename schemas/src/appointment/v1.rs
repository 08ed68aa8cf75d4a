//! Version 1 of the appointment events as published, keyed by patient id; `ce_subject` is the
//! appointment id. Sealed with the patient's data key (the sealed value's `kid`). Statuses are
//! FHIR R4 `Appointment.status` codes; instants RFC 3339 in UTC.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DecodeError;

pub const MAJOR: u32 = 1;

/// A half-open interval `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The time and the resources (practitioner first, then rooms and equipment) of an
/// appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Booking {
    pub interval: Interval,
    pub resources: Vec<String>,
}

/// What a wait-list entry waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WaitlistWish {
    pub window: Interval,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
}

/// `AppointmentCreated`: booked, held (`pending`), proposed, or on the wait list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentCreated {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub service: String,
    /// `routine`, `urgent` or `emergency`.
    #[schemars(extend("enum" = ["routine", "urgent", "emergency"]))]
    pub priority: String,
    #[schemars(extend("enum" = ["proposed", "pending", "booked", "arrived", "checked-in", "fulfilled", "cancelled", "noshow", "entered-in-error", "waitlist"]))]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking: Option<Booking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waitlist: Option<WaitlistWish>,
    pub at: DateTime<Utc>,
}

/// `AppointmentOffered`: a wait-list entry is offered a slot, held until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentOffered {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub booking: Booking,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// `AppointmentRescheduled`: a new time or new resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentRescheduled {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub booking: Booking,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// `AppointmentStatusChanged`: confirmed, arrived, checked in, fulfilled or no-show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentStatusChanged {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub from: String,
    pub to: String,
    pub at: DateTime<Utc>,
}

/// Who cancelled and why; `late` by the configured policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cancellation {
    pub reason: String,
    pub by: String,
    pub at: DateTime<Utc>,
    pub late: bool,
}

/// `AppointmentCancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentCancelled {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub cancellation: Cancellation,
}

/// `AppointmentOfferExpired`: a wait-list offer was not taken in time; the entry waits again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentOfferExpired {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub at: DateTime<Utc>,
}

/// `AppointmentEnteredInError`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentEnteredInError {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub reason: String,
    pub at: DateTime<Utc>,
}

macro_rules! appointment_events {
    ($($t:ident),+ $(,)?) => {
        /// Any v1 appointment event, tagged by its event type (`ce_type`).
        #[derive(Debug, Clone, PartialEq)]
        pub enum AppointmentEvent {
            $($t($t)),+
        }

        /// Every v1 event type.
        pub const EVENT_TYPES: &[&str] = &[$(stringify!($t)),+];

        impl AppointmentEvent {
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$t(_) => stringify!($t)),+
                }
            }

            pub fn appointment_id(&self) -> Uuid {
                match self {
                    $(Self::$t(e) => e.appointment_id),+
                }
            }

            pub fn patient_id(&self) -> Uuid {
                match self {
                    $(Self::$t(e) => e.patient_id),+
                }
            }

            /// The JSON data of this event, as published.
            pub fn to_json(&self) -> Vec<u8> {
                let result = match self {
                    $(Self::$t(e) => serde_json::to_vec(e)),+
                };
                result.unwrap_or_default()
            }

            /// Decodes a received event of this major version.
            ///
            /// # Errors
            ///
            /// [`DecodeError`] for another version, an unknown type or data that does not fit.
            pub fn from_published(event: &crate::PublishedEvent) -> Result<Self, DecodeError> {
                if event.major_version != MAJOR {
                    return Err(DecodeError::UnknownType(format!(
                        "{} v{}",
                        event.event_type, event.major_version
                    )));
                }
                Self::decode(&event.event_type, &event.data)
            }

            /// Decodes the data of an event of `event_type`.
            ///
            /// # Errors
            ///
            /// As [`AppointmentEvent::from_published`].
            pub fn decode(event_type: &str, data: &[u8]) -> Result<Self, DecodeError> {
                match event_type {
                    $(stringify!($t) => serde_json::from_slice(data)
                        .map(Self::$t)
                        .map_err(|_| DecodeError::MalformedData(event_type.to_owned())),)+
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }
        }

        /// The JSON Schema of each v1 event type, with its path under `json/`.
        pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
            vec![
                $((concat!("appointment/v1/", stringify!($t), ".schema.json"), schemars::schema_for!($t))),+
            ]
        }
    };
}

appointment_events!(
    AppointmentCreated,
    AppointmentOffered,
    AppointmentRescheduled,
    AppointmentStatusChanged,
    AppointmentCancelled,
    AppointmentOfferExpired,
    AppointmentEnteredInError,
);
