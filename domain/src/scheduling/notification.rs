//! Notifications to patients (appointment reminders, wait-list offers): one aggregate per
//! notification, its id derived from what it is about, so a notification is sent at most once
//! however often a dispatcher retries (the store refuses a second first event).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::calendar::Interval;
use super::SchedulingError;
use crate::patient::record::Channel;
use crate::patient::PatientId;

/// A notification's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotificationEvent {
    /// An appointment is coming up.
    AppointmentReminder {
        patient_id: PatientId,
        appointment_id: Uuid,
        /// The patient's preferred channel, if they named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<Channel>,
        starts_at: DateTime<Utc>,
        /// Minutes before the start this reminder was planned for.
        offset_minutes: u32,
        at: DateTime<Utc>,
    },
    /// A slot is offered to a wait-list entry until `expires_at`.
    WaitlistOffer {
        patient_id: PatientId,
        appointment_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<Channel>,
        slot: Interval,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for NotificationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AppointmentReminder { .. } => "AppointmentReminder",
            Self::WaitlistOffer { .. } => "WaitlistOffer",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A notification; sent once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    sent: Option<NotificationEvent>,
}

impl Notification {
    pub fn sent(&self) -> Option<&NotificationEvent> {
        self.sent.as_ref()
    }

    /// # Errors
    ///
    /// [`SchedulingError::AlreadySent`] when this notification went out already.
    pub fn decide(
        &self,
        event: NotificationEvent,
    ) -> Result<Vec<NotificationEvent>, SchedulingError> {
        if self.sent.is_some() {
            return Err(SchedulingError::AlreadySent);
        }
        Ok(vec![event])
    }
}

impl Aggregate for Notification {
    const TYPE: &'static str = "Notification";
    type Command = NotificationEvent;
    type Event = NotificationEvent;
    type Error = SchedulingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.sent = Some(event);
    }
}

/// The id of the reminder of appointment `appointment` starting at `starts_at`, `offset`
/// minutes before: the same every time it is planned, a new one when the appointment moves.
pub fn reminder_id(appointment: Uuid, starts_at: DateTime<Utc>, offset_minutes: u32) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!(
            "reminder {appointment} {} {offset_minutes}",
            starts_at.timestamp()
        )
        .as_bytes(),
    )
}

/// The id of the offer of `slot` to wait-list entry `appointment`, open until `expires_at`.
pub fn offer_id(appointment: Uuid, slot: &Interval, expires_at: DateTime<Utc>) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!(
            "offer {appointment} {} {}",
            slot.start.timestamp(),
            expires_at.timestamp()
        )
        .as_bytes(),
    )
}

const NAMESPACE: Uuid = Uuid::from_u128(0x1f6e_03c2_77b4_4d9a_b5e1_62c0_9a8d_4e37);
