//! The process manager that records the encounter a fulfilled appointment was: when an
//! appointment becomes `fulfilled`, an encounter (finished, ambulatory, of the appointment's
//! service, over its booked time, with its practitioner and room) is recorded in the patient's
//! chart as a clinical entry, naming the appointment.
//!
//! The encounter's id is derived from the appointment's, so reacting twice records it once.

use chrono::{DateTime, Utc};
use domain::medical_record::items::{Encounter, EncounterClass, EncounterStatus};
use domain::medical_record::values::{Concept, Label};
use domain::medical_record::{ClinicalEntry, ItemContent, ItemId, MedicalRecordCommand};
use domain::patient::governance::Principal;
use domain::patient::Reason;
use domain::scheduling::{AppointmentEvent, AppointmentStatus};
use event_store::command::{CommandError, CommandMetadata};
use event_store::records::ClinicalEntryStore;
use event_store::schedule::AppointmentStore;
use event_store::stream::StoredEvent;
use uuid::Uuid;

use super::follower::{ProcessManager, Reaction};

/// Who acts when the user who marked the appointment fulfilled is not known.
const ACTOR: &str = "process-manager";

/// The namespace of encounter ids derived from appointment ids.
const ENCOUNTERS: Uuid = Uuid::from_u128(0x6a1f_0c55_2b9e_4d1e_9f4e_3c8a_e7d2_0b15);

/// The id of the encounter appointment `appointment` became.
pub fn encounter_id(appointment: Uuid) -> Uuid {
    Uuid::new_v5(&ENCOUNTERS, appointment.as_bytes())
}

/// Records the encounter of each fulfilled appointment.
#[derive(Debug, Clone)]
pub struct EncounterOfFulfilledAppointment {
    pub appointments: AppointmentStore,
    pub entries: ClinicalEntryStore,
}

fn reaction<E: std::fmt::Display>(error: CommandError<E>) -> Reaction {
    match error {
        CommandError::Unavailable(_) | CommandError::Conflict | CommandError::Busy => {
            Reaction::Retry(error.to_string().into())
        }
        other => Reaction::Refused(other.to_string()),
    }
}

impl ProcessManager for EncounterOfFulfilledAppointment {
    fn name(&self) -> &'static str {
        "fulfilled-appointment-encounters"
    }

    fn reacts_to(&self, event_type: &str) -> bool {
        event_type == "AppointmentStatusChanged"
    }

    async fn react(&self, event: &StoredEvent, _now: DateTime<Utc>) -> Result<(), Reaction> {
        let Ok(AppointmentEvent::AppointmentStatusChanged { to, at, .. }) =
            serde_json::from_value::<AppointmentEvent>(event.payload.clone())
        else {
            return Err(Reaction::Refused("the event does not read".into()));
        };
        if to != AppointmentStatus::Fulfilled {
            return Ok(());
        }
        let Ok(appointment_id) = Uuid::parse_str(&event.aggregate_id) else {
            return Err(Reaction::Refused("the appointment id is not a UUID".into()));
        };
        let id = encounter_id(appointment_id);
        let (entry, _) = self.entries.load(id).await.map_err(reaction)?;
        if entry.item().is_some() {
            return Ok(());
        }
        let Some((appointment, _)) = self
            .appointments
            .load(appointment_id)
            .await
            .map_err(reaction)?
        else {
            return Err(Reaction::Refused("the appointment is not stored".into()));
        };
        let Some(state) = appointment.state() else {
            return Err(Reaction::Refused(
                "the appointment was never created".into(),
            ));
        };
        let booking = state.booking.as_ref();
        let resources = booking.map(|b| b.resources.as_slice()).unwrap_or_default();
        let encounter = Encounter {
            status: EncounterStatus::Finished,
            class: EncounterClass::Ambulatory,
            encounter_type: Concept::parse("service", None, None, Some(&state.service)).ok(),
            start: booking.map(|b| b.interval.start),
            end: booking
                .map(|b| b.interval.end.min(at))
                .filter(|end| booking.is_some_and(|b| *end >= b.interval.start)),
            practitioner: resources
                .first()
                .and_then(|p| Principal::parse("practitioner", p).ok()),
            location: resources
                .get(1)
                .and_then(|r| Label::parse("location", r).ok()),
            reason: None,
            appointment_id: Some(appointment_id),
            note: None,
        };
        let user = event.metadata("user_id").unwrap_or(ACTOR);
        let by = Principal::parse("sub", user)
            .or_else(|_| Principal::parse("sub", ACTOR))
            .map_err(|_| Reaction::Refused("no principal to record as".into()))?;
        let command = MedicalRecordCommand::Record {
            item_id: ItemId::new(id),
            content: ItemContent::Encounter(encounter),
            reason: Reason::parse("reason", "the appointment was fulfilled").ok(),
            acknowledgement: ClinicalEntry::no_acknowledgement(by),
            at,
        };
        let metadata = CommandMetadata {
            user_id: user.to_owned(),
            request_id: event.metadata("request_id").map(str::to_owned),
            traceparent: event.metadata("traceparent").map(str::to_owned),
            ..CommandMetadata::default()
        };
        match self
            .entries
            .execute(id, state.patient_id, command, metadata)
            .await
        {
            Ok(_) => {
                tracing::info!(appointment_id = %appointment_id, encounter_id = %id, "encounter of a fulfilled appointment recorded");
                Ok(())
            }
            // Recorded by a run that died before its checkpoint moved.
            Err(CommandError::Rule(domain::medical_record::MedicalRecordError::ItemIdInUse)) => {
                Ok(())
            }
            Err(other) => Err(reaction(other)),
        }
    }
}
