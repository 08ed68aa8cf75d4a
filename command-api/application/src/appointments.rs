//! An appointment's life after booking: reading it, and moving it through its statuses
//! (confirm, arrive, check in, fulfil, no-show, cancel, strike, reschedule), with the time it
//! claims, its reminders and its wait-list entry following it in the same transaction.

use chrono::{DateTime, Duration, Utc};
use domain::patient::governance::Principal;
use domain::patient::{PatientId, Reason};
use domain::scheduling::appointment::{AppointmentState, Booking, CancellationReason};
use domain::scheduling::SchedulingError;
use domain::scheduling::{Appointment, AppointmentCommand, AppointmentStatus, Interval};
use domain::FieldErrors;
use event_store::command::{CommandError, CommandMetadata};
use event_store::schedule::{self, Claim, ClaimChange, PlannedReminder, WaitlistChange};
use uuid::Uuid;

use crate::access::{self, Decision};
use crate::booking::{alternatives, plan_reminders, release_lead, salt, service_named, strategy};
use crate::caller::{AuthUser, Refused};
use crate::planner::{self, Ask};
use crate::policy::Action;
use crate::reach::{changeable, checked_access, reach};
use crate::services::{Services, UseCaseError};

/// What can be done to a booked (or held, or offered) appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Confirm,
    Arrive,
    CheckIn,
    Fulfil,
    NoShow,
    Cancel,
    EnterInError,
    Reschedule,
}

impl Step {
    /// The step a path segment names (`check-in`, `no-show`, `entered-in-error`, ...).
    pub fn parse(segment: &str) -> Option<Self> {
        Some(match segment {
            "confirm" => Self::Confirm,
            "arrive" => Self::Arrive,
            "check-in" => Self::CheckIn,
            "fulfil" => Self::Fulfil,
            "no-show" => Self::NoShow,
            "cancel" => Self::Cancel,
            "entered-in-error" => Self::EnterInError,
            "reschedule" => Self::Reschedule,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Arrive => "arrive",
            Self::CheckIn => "check-in",
            Self::Fulfil => "fulfil",
            Self::NoShow => "no-show",
            Self::Cancel => "cancel",
            Self::EnterInError => "entered-in-error",
            Self::Reschedule => "reschedule",
        }
    }

    /// Steps that start something (rather than wind it down) need an active patient.
    fn starts_something(self) -> bool {
        matches!(self, Self::Confirm | Self::Reschedule)
    }
}

/// What a step needs beyond the appointment.
#[derive(Debug, Clone)]
pub enum StepInput {
    /// Confirm, arrive, check in, fulfil, no-show: nothing.
    None,
    Cancel(CancellationReason),
    EnterInError(Reason),
    Reschedule {
        start: DateTime<Utc>,
        practitioner: Option<String>,
        reason: Reason,
    },
}

/// The answer for an appointment nobody booked: as for an unknown patient, only a caller who
/// reaches any patient learns that it does not exist; everyone else is refused as they would
/// be for one that does.
fn unknown_appointment(services: &Services, user: &AuthUser, action: Action) -> UseCaseError {
    let nobody = PatientId::new(Uuid::nil());
    match access::decide(
        user,
        action,
        nobody,
        None,
        services.home_organization.as_deref(),
    ) {
        Decision::NotFound => UseCaseError::Refused(Refused::NotFound),
        _ => UseCaseError::Refused(Refused::Forbidden),
    }
}

/// Appointment `id`, with its version, read by `user` (recorded as an access to its patient).
///
/// # Errors
///
/// As [`checked_access`]; an unknown appointment as an unknown patient.
pub async fn read(
    services: &Services,
    user: &AuthUser,
    id: Uuid,
) -> Result<(Appointment, u64), UseCaseError> {
    let loaded = services
        .appointments
        .load(id)
        .await
        .map_err(UseCaseError::Scheduling)?;
    let patient = loaded
        .as_ref()
        .and_then(|(a, _)| a.state())
        .map(|s| s.patient_id);
    let Some(patient) = patient else {
        return Err(unknown_appointment(
            services,
            user,
            Action::ReadAppointments,
        ));
    };
    let loaded_patient = services.store.load(patient).await?;
    checked_access(
        services,
        user,
        (Action::ReadAppointments, "appointment-read"),
        patient,
        loaded_patient.as_ref().map(|(p, _)| p),
    )
    .await?;
    loaded.ok_or(UseCaseError::Refused(Refused::NotFound))
}

/// An appointment opened by one caller for one step: made only by [`open`], which decided
/// (and recorded) that the caller may change it.
#[derive(Debug)]
pub struct Opened {
    services: Services,
    user: AuthUser,
    id: Uuid,
    step: Step,
    version: u64,
    current: AppointmentState,
}

/// Loads appointment `id` and decides whether `user` may take `step` on it (recorded as an
/// access to its patient); confirming and rescheduling need the patient active.
///
/// # Errors
///
/// An unknown appointment as an unknown patient; as [`reach`]; the patient's status rule.
pub async fn open(
    services: &Services,
    user: &AuthUser,
    id: Uuid,
    step: Step,
) -> Result<Opened, UseCaseError> {
    let loaded = services
        .appointments
        .load(id)
        .await
        .map_err(UseCaseError::Scheduling)?;
    let Some((version, current)) =
        loaded.and_then(|(a, version)| a.state().cloned().map(|s| (version, s)))
    else {
        return Err(unknown_appointment(
            services,
            user,
            Action::BookAppointments,
        ));
    };
    let patient = reach(
        services,
        user,
        (Action::BookAppointments, "appointment-change"),
        current.patient_id,
    )
    .await?;
    // Winding down (cancel, no-show, mark a mistake) stays possible for anyone on record.
    if step.starts_something() {
        changeable(&patient)?;
    }
    Ok(Opened {
        services: services.clone(),
        user: user.clone(),
        id,
        step,
        version,
        current,
    })
}

fn rule(error: SchedulingError) -> UseCaseError {
    UseCaseError::Scheduling(CommandError::Rule(error))
}

impl Opened {
    /// Takes the step on the appointment, which must be at `expected` (`If-Match`), with what
    /// `input` gives (asked only once the version is known to be current).
    ///
    /// # Errors
    ///
    /// A stale version; the fields `input` names; [`UseCaseError::TimeTaken`] when a
    /// reschedule finds no place; the appointment's rules.
    pub async fn take<F>(
        self,
        expected: u64,
        input: F,
        metadata: CommandMetadata,
    ) -> Result<(Appointment, u64), UseCaseError>
    where
        F: FnOnce(Step) -> Result<StepInput, FieldErrors>,
    {
        let Self {
            services,
            user,
            id,
            step,
            version,
            current,
        } = self;
        // The claims below are computed from this version: it must be the one the caller saw,
        // or a concurrent change would have them written for a booking that no longer stands.
        if expected != version {
            return Err(UseCaseError::Scheduling(CommandError::VersionMismatch {
                current: version,
                expected,
            }));
        }
        if step == Step::Reschedule && current.waitlist.is_some() {
            // An offer is taken or let go; another place is a new offer.
            return Err(rule(SchedulingError::TransitionNotAllowed {
                from: current.status,
                to: current.status,
            }));
        }
        let input = input(step).map_err(UseCaseError::Invalid)?;
        let now = (services.clock)();
        let changes = Changes {
            id,
            now,
            on_list: current.waitlist.is_some(),
        };
        let (command, claims) = match (step, input) {
            (Step::Confirm, _) => {
                // The hold's claim stays, without its expiry; the reminders are planned.
                let booking = current
                    .booking
                    .clone()
                    .ok_or(rule(SchedulingError::NoTimeYet))?;
                let keys = schedule::claim_keys(&booking.resources, current.patient_id);
                let reminders = plan_reminders(&services, id, current.patient_id, &booking).await?;
                let claim = Claim {
                    keys,
                    interval: booking.interval,
                    expires_at: None,
                };
                (
                    AppointmentCommand::Confirm { at: now },
                    changes.listed(
                        changes.release(Some(claim), Some(reminders)),
                        WaitlistChange::Booked,
                    ),
                )
            }
            (Step::Arrive, _) => (
                AppointmentCommand::Arrive { at: now },
                Some(changes.no_more_reminders()),
            ),
            (Step::CheckIn, _) => (AppointmentCommand::CheckIn { at: now }, None),
            (Step::Fulfil, _) => (AppointmentCommand::Fulfil { at: now }, None),
            (Step::NoShow, _) => (
                AppointmentCommand::NoShow { at: now },
                Some(changes.release(None, Some(Vec::new()))),
            ),
            (Step::Cancel, StepInput::Cancel(reason)) => {
                let by = Principal::parse("sub", &user.id)
                    .map_err(|_| UseCaseError::Refused(Refused::Forbidden))?;
                (
                    AppointmentCommand::Cancel {
                        reason,
                        by,
                        late_within: Duration::hours(i64::from(
                            services.scheduling.late_cancellation_hours,
                        )),
                        at: now,
                    },
                    changes.listed(
                        changes.release(None, Some(Vec::new())),
                        WaitlistChange::Left,
                    ),
                )
            }
            (Step::EnterInError, StepInput::EnterInError(reason)) => (
                AppointmentCommand::EnterInError { reason, at: now },
                changes.listed(
                    changes.release(None, Some(Vec::new())),
                    WaitlistChange::Left,
                ),
            ),
            (
                Step::Reschedule,
                StepInput::Reschedule {
                    start,
                    practitioner,
                    reason,
                },
            ) => {
                let (booking, claim, reminders) =
                    rescheduled(&services, (id, &current), start, practitioner.as_deref()).await?;
                (
                    AppointmentCommand::Reschedule {
                        booking,
                        reason,
                        at: now,
                    },
                    Some(changes.release(Some(claim), reminders)),
                )
            }
            (step, _) => {
                return Err(UseCaseError::Internal(
                    format!("{} was given the input of another step", step.code()).into(),
                ))
            }
        };
        let (appointment, version) = services
            .appointments
            .execute(
                id,
                current.patient_id,
                Some(expected),
                command,
                claims,
                metadata,
            )
            .await
            .map_err(UseCaseError::Scheduling)?;
        tracing::info!(action = step.code(), version, "appointment changed");
        Ok((appointment, version))
    }
}

/// How a step changes the time an appointment claims, its reminders and its wait-list entry.
struct Changes {
    id: Uuid,
    now: DateTime<Utc>,
    /// Whether the appointment is a wait-list entry (whose row follows it).
    on_list: bool,
}

impl Changes {
    fn release(
        &self,
        claim: Option<Claim>,
        reminders: Option<Vec<PlannedReminder>>,
    ) -> ClaimChange {
        ClaimChange {
            appointment_id: self.id,
            release: true,
            claim,
            now: self.now,
            reminders,
            waitlist: None,
            notification: None,
        }
    }

    fn no_more_reminders(&self) -> ClaimChange {
        ClaimChange {
            appointment_id: self.id,
            release: false,
            claim: None,
            now: self.now,
            reminders: Some(Vec::new()),
            waitlist: None,
            notification: None,
        }
    }

    /// A wait-list entry's row follows the appointment: booked once confirmed, gone once
    /// cancelled.
    fn listed(&self, mut change: ClaimChange, status: WaitlistChange) -> Option<ClaimChange> {
        if self.on_list {
            change.waitlist = Some(status);
        }
        Some(change)
    }
}

/// The new place of a rescheduled appointment: its booking, the time it claims and (for a
/// booked one) its reminders moved with it.
async fn rescheduled(
    services: &Services,
    (id, current): (Uuid, &AppointmentState),
    start: DateTime<Utc>,
    practitioner: Option<&str>,
) -> Result<(Booking, Claim, Option<Vec<PlannedReminder>>), UseCaseError> {
    let service = service_named(services, &current.service, "service").await?;
    let duration = Duration::minutes(i64::from(service.minutes));
    let ask = Ask {
        service: &service,
        practitioner,
        range: Interval::new(start, start + duration),
        duration,
        priority: current.priority,
        now: (services.clock)(),
        release_lead: release_lead(&services.scheduling),
        strategy: strategy(&services.scheduling),
        ignoring: Some(id),
        patient: Some(current.patient_id),
        salt: salt(),
    };
    let Some((placement, _held)) = planner::place_held(&services.pool, &ask).await? else {
        return Err(UseCaseError::TimeTaken {
            conflicting: None,
            alternatives: alternatives(&services.pool, &ask, start).await,
        });
    };
    let booking = Booking {
        interval: placement.interval(),
        resources: placement.resources(),
    };
    let keys = schedule::claim_keys(&booking.resources, current.patient_id);
    let expires_at = (current.status == AppointmentStatus::Pending)
        .then_some(current.hold_expires_at)
        .flatten();
    // A booked appointment's reminders move with it.
    let reminders = if current.status == AppointmentStatus::Booked {
        Some(plan_reminders(services, id, current.patient_id, &booking).await?)
    } else {
        None
    };
    let claim = Claim {
        keys,
        interval: booking.interval,
        expires_at,
    };
    Ok((booking, claim, reminders))
}
