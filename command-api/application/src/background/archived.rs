//! The process manager that winds down an archived patient's schedule: every appointment still
//! ahead is cancelled (reason `record-archived`) and their wait-list places given up, as the
//! user who archived them. It checks the patient is still archived when it reacts (a patient
//! restored since keeps what was booked after), and cancels only what can still be cancelled,
//! so reacting twice to one archive changes nothing the second time.

use chrono::{DateTime, Duration, Utc};
use domain::patient::governance::Principal;
use domain::patient::{PatientId, PatientStatus};
use domain::scheduling::appointment::CancellationReason;
use domain::scheduling::{AppointmentCommand, AppointmentStatus};
use event_store::command::{CommandError, CommandMetadata};
use event_store::schedule::{self, AppointmentStore, ClaimChange, WaitlistChange};
use event_store::store::PatientStore;
use event_store::stream::StoredEvent;

use super::follower::{ProcessManager, Reaction};

/// Who acts when the archiving user is not known.
const ACTOR: &str = "process-manager";

/// Cancels an archived patient's appointments ahead.
#[derive(Debug, Clone)]
pub struct CancelAppointmentsOfArchived {
    pub patients: PatientStore,
    pub appointments: AppointmentStore,
}

/// What a store error means for the reaction: the database out of reach, or a lost race, is
/// tried again; anything else (a stream that does not verify, an event that does not read)
/// would fail the same way for ever, so it is recorded as a refusal instead.
fn reaction<E: std::fmt::Display>(error: CommandError<E>) -> Reaction {
    match error {
        CommandError::Unavailable(_) | CommandError::Conflict | CommandError::Busy => {
            Reaction::Retry(error.to_string().into())
        }
        other => Reaction::Refused(other.to_string()),
    }
}

impl ProcessManager for CancelAppointmentsOfArchived {
    fn name(&self) -> &'static str {
        "archived-patient-appointments"
    }

    fn reacts_to(&self, event_type: &str) -> bool {
        event_type == "PatientArchived"
    }

    async fn react(&self, event: &StoredEvent, now: DateTime<Utc>) -> Result<(), Reaction> {
        let Ok(patient) = PatientId::parse("id", &event.aggregate_id) else {
            return Err(Reaction::Refused(
                "the archived aggregate is not a patient id".into(),
            ));
        };
        let still_archived = self
            .patients
            .load(patient)
            .await
            .map_err(reaction)?
            .and_then(|(p, _)| p.record().map(|r| r.status))
            == Some(PatientStatus::Archived);
        if !still_archived {
            return Ok(());
        }
        let user = event.metadata("user_id").unwrap_or(ACTOR);
        let by = Principal::parse("sub", user)
            .or_else(|_| Principal::parse("sub", ACTOR))
            .map_err(|_| Reaction::Refused("no principal to cancel as".into()))?;
        let ids = schedule::ahead_of(self.appointments.pool(), patient, now)
            .await
            .map_err(|e| Reaction::Retry(Box::new(e)))?;
        let mut cancelled = 0;
        let mut refusals = Vec::new();
        for id in ids {
            // The wait-list loop may change an entry meanwhile (an offer): read it again then.
            let mut done = false;
            for _ in 0..3 {
                let Some((appointment, version)) =
                    self.appointments.load(id).await.map_err(reaction)?
                else {
                    done = true;
                    break;
                };
                let Some(current) = appointment.state() else {
                    done = true;
                    break;
                };
                if !current.status.allows(AppointmentStatus::Cancelled) {
                    done = true;
                    break;
                }
                let change = ClaimChange {
                    appointment_id: id,
                    release: true,
                    claim: None,
                    now,
                    reminders: Some(Vec::new()),
                    waitlist: current.waitlist.as_ref().map(|_| WaitlistChange::Left),
                    notification: None,
                };
                let command = AppointmentCommand::Cancel {
                    reason: CancellationReason::RecordArchived,
                    by: by.clone(),
                    late_within: Duration::zero(),
                    at: now,
                };
                let metadata = CommandMetadata {
                    user_id: user.to_owned(),
                    ..Default::default()
                };
                match self
                    .appointments
                    .execute(id, patient, Some(version), command, Some(change), metadata)
                    .await
                {
                    Ok(_) => {
                        cancelled += 1;
                        done = true;
                        break;
                    }
                    // Changed meanwhile: read it again.
                    Err(CommandError::VersionMismatch { .. }) => {}
                    // One refused appointment does not keep the others booked.
                    Err(CommandError::Rule(rule)) => {
                        refusals.push(format!("appointment {id}: {rule}"));
                        done = true;
                        break;
                    }
                    Err(other) => return Err(reaction(other)),
                }
            }
            if !done {
                // It kept changing: the whole reaction is tried again on the next round, and
                // what it cancelled already is passed by then.
                return Err(Reaction::Retry(
                    format!("appointment {id} kept changing").into(),
                ));
            }
        }
        tracing::info!(patient_id = %patient, cancelled, "appointments of an archived patient cancelled");
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(Reaction::Refused(refusals.join("; ")))
        }
    }
}
