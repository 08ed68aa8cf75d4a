//! Booking an appointment: the use case behind `POST /v1/appointments`, and the planning
//! pieces the other scheduling commands share (reminders, alternatives, the strategy).
//!
//! A booking is placed by the planner on what is free, claimed in the appointment's
//! transaction (the exclusion constraint refuses a double booking), and placed again when a
//! concurrent booking took a resource it chose.

use chrono::{DateTime, Duration, Utc};
use domain::patient::PatientId;
use domain::scheduling::appointment::{Booking, NewAppointment};
use domain::scheduling::assignment::Strategy;
use domain::scheduling::{Appointment, AppointmentCommand, Interval, Priority, SchedulingError};
use domain::FieldError;
use event_store::command::{CommandError, CommandMetadata};
use event_store::schedule::{self, Claim, ClaimChange, PlannedReminder, Service};
use sqlx::PgPool;
use uuid::Uuid;

use crate::access;
use crate::caller::AuthUser;
use crate::planner::{self, Ask, Placement};
use crate::policy::Action;
use crate::reach::{changeable, reach};
use crate::services::{Services, UseCaseError};
use crate::settings::SchedulingSettings;

/// How many times a booking is placed again when a concurrent one took a resource it chose.
const PLACEMENT_ATTEMPTS: usize = 8;

/// How the planner picks among free practitioners.
pub fn strategy(settings: &SchedulingSettings) -> Strategy {
    Strategy::parse("strategy", &settings.strategy).unwrap_or(Strategy::BestFit)
}

/// How long before it starts reserved time still free opens to routine requests.
pub fn release_lead(settings: &SchedulingSettings) -> Duration {
    Duration::minutes(i64::from(settings.reserved_release_minutes))
}

/// A tie-breaker for placements of equal cost, fresh for each request.
pub fn salt() -> u64 {
    Uuid::new_v4().as_u64_pair().0
}

/// The service of code `code` (named in `field`).
///
/// # Errors
///
/// [`UseCaseError::Unknown`] naming `field` when there is none.
pub async fn service_named(
    services: &Services,
    code: &str,
    field: &str,
) -> Result<Service, UseCaseError> {
    schedule::service(&services.pool, code)
        .await?
        .ok_or_else(|| UseCaseError::Unknown(FieldError::new(field, "names no service").into()))
}

/// The five free places nearest `at` for what `ask` asks, for an answer that the time is
/// taken.
pub async fn alternatives(pool: &PgPool, ask: &Ask<'_>, at: DateTime<Utc>) -> Vec<Placement> {
    let range = Interval::new(at - Duration::hours(12), at + Duration::hours(36));
    let around = Ask {
        range,
        ..ask.clone()
    };
    let mut slots = planner::availability(pool, &around, 500)
        .await
        .unwrap_or_default();
    slots.sort_by_key(|p| (p.start - at).num_seconds().abs());
    slots.truncate(5);
    slots
}

/// The reminders of a booked appointment: one per configured offset still in the future, in
/// the practitioner's time zone (for quiet hours).
///
/// # Errors
///
/// The database error.
pub async fn plan_reminders(
    services: &Services,
    appointment: Uuid,
    patient: PatientId,
    booking: &Booking,
) -> Result<Vec<PlannedReminder>, sqlx::Error> {
    let practitioner = booking.resources.first().cloned().unwrap_or_default();
    let time_zone = schedule::resources(
        &services.pool,
        None,
        None,
        None,
        Some(std::slice::from_ref(&practitioner)),
    )
    .await?
    .into_iter()
    .find_map(|r| r.template.map(|t| t.time_zone.name().to_owned()))
    .unwrap_or_else(|| "UTC".to_owned());
    let now = (services.clock)();
    let starts_at = booking.interval.start;
    Ok(services
        .scheduling
        .reminder_offsets_minutes
        .iter()
        .map(|&offset| (offset, starts_at - Duration::minutes(i64::from(offset))))
        .filter(|(_, due_at)| *due_at > now)
        .map(|(offset, due_at)| PlannedReminder {
            reminder_id: domain::scheduling::notification::reminder_id(
                appointment,
                starts_at,
                offset,
            ),
            patient_id: patient.as_uuid(),
            starts_at,
            offset_minutes: offset,
            due_at,
            time_zone: time_zone.clone(),
        })
        .collect())
}

/// What a booking asks for.
#[derive(Debug, Clone)]
pub struct BookingRequest {
    pub patient: PatientId,
    /// The code of the service booked.
    pub service: String,
    pub start: DateTime<Utc>,
    /// The practitioner asked for; without one, any of the service's specialty.
    pub practitioner: Option<String>,
    pub priority: Priority,
    /// Held (pending) for `scheduling.hold_minutes`, to be confirmed.
    pub hold: bool,
    /// Proposed: claims nothing until confirmed.
    pub propose: bool,
}

/// Books `request` for `user`: decides access to the patient (who must be active), places it,
/// claims its time and plans its reminders in one transaction. Returns the new appointment's
/// id, the appointment and its version.
///
/// # Errors
///
/// [`UseCaseError::TimeTaken`] with the holder (for callers of this organization) and the
/// nearest alternatives; the access refusal, the patient's rule, or the store's error.
pub async fn book(
    services: &Services,
    user: &AuthUser,
    request: BookingRequest,
    metadata: CommandMetadata,
) -> Result<(Uuid, Appointment, u64), UseCaseError> {
    let BookingRequest {
        patient,
        service,
        start,
        practitioner,
        priority,
        hold,
        propose,
    } = request;
    let service = service_named(services, &service, "service").await?;
    let found = reach(
        services,
        user,
        (Action::BookAppointments, "appointment-book"),
        patient,
    )
    .await?;
    changeable(&found)?;
    let now = (services.clock)();
    let duration = Duration::minutes(i64::from(service.minutes));
    let ask = Ask {
        service: &service,
        practitioner: practitioner.as_deref(),
        range: Interval::new(start, start + duration),
        duration,
        priority,
        now,
        release_lead: release_lead(&services.scheduling),
        strategy: strategy(&services.scheduling),
        ignoring: None,
        patient: Some(patient),
        salt: salt(),
    };
    let id = Uuid::new_v4();
    tracing::Span::current().record("appointment_id", tracing::field::display(id));
    // Which appointment holds the time is told only to callers of this organization: it is
    // another patient's.
    let external = access::is_external(user, services.home_organization.as_deref());
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Held until this attempt's command is stored or refused: this process's concurrent
        // bookings steer clear of it.
        let Some((placement, _held)) = planner::place_held(&services.pool, &ask).await? else {
            let keys: Vec<String> = practitioner
                .iter()
                .map(|p| schedule::resource_key(p))
                .collect();
            let conflicting = schedule::holder(&services.pool, &keys, &ask.range, now)
                .await?
                .filter(|_| !external);
            return Err(UseCaseError::TimeTaken {
                conflicting,
                alternatives: alternatives(&services.pool, &ask, start).await,
            });
        };
        let booking = Booking {
            interval: placement.interval(),
            resources: placement.resources(),
        };
        let keys = schedule::claim_keys(&booking.resources, patient);
        let new = NewAppointment {
            patient_id: patient,
            service: service.code.clone(),
            priority,
            at: now,
        };
        let (command, expires_at) = if propose {
            (
                AppointmentCommand::Propose {
                    new,
                    booking: Some(booking.clone()),
                },
                None,
            )
        } else if hold {
            let expires_at = now + Duration::minutes(i64::from(services.scheduling.hold_minutes));
            (
                AppointmentCommand::Hold {
                    new,
                    booking: booking.clone(),
                    expires_at,
                },
                Some(expires_at),
            )
        } else {
            (
                AppointmentCommand::Book {
                    new,
                    booking: booking.clone(),
                },
                None,
            )
        };
        let reminders = if hold || propose {
            None
        } else {
            Some(plan_reminders(services, id, patient, &booking).await?)
        };
        // A proposal claims nothing: its time is claimed when it is confirmed, if still free.
        let claims = ClaimChange {
            appointment_id: id,
            release: false,
            claim: (!propose).then(|| Claim {
                keys: keys.clone(),
                interval: booking.interval,
                expires_at,
            }),
            now,
            reminders,
            waitlist: None,
            notification: None,
        };
        match services
            .appointments
            .execute(id, patient, None, command, Some(claims), metadata.clone())
            .await
        {
            Ok((appointment, version)) => {
                tracing::info!(
                    status = if propose {
                        "proposed"
                    } else if hold {
                        "pending"
                    } else {
                        "booked"
                    },
                    "appointment created"
                );
                return Ok((id, appointment, version));
            }
            Err(CommandError::Rule(SchedulingError::TimeTaken)) if attempt < PLACEMENT_ATTEMPTS => {
                // A concurrent booking took a resource chosen for this one (two requests picking
                // the same free room): place again on what is left.
                tracing::debug!(attempt, "placement taken meanwhile; placing again");
            }
            Err(CommandError::Rule(SchedulingError::TimeTaken)) => {
                let conflicting = schedule::holder(&services.pool, &keys, &booking.interval, now)
                    .await?
                    .filter(|_| !external);
                return Err(UseCaseError::TimeTaken {
                    conflicting,
                    alternatives: alternatives(&services.pool, &ask, start).await,
                });
            }
            Err(other) => return Err(UseCaseError::Scheduling(other)),
        }
    }
}

/// What a patient waits for on the wait list.
#[derive(Debug, Clone)]
pub struct Wish {
    pub patient: PatientId,
    /// The code of the service waited for.
    pub service: String,
    /// When the patient could come.
    pub window: Interval,
    pub practitioner: Option<String>,
    pub priority: Priority,
}

/// Puts `wish` on the wait list for `user`: decides access to the patient (who must be
/// active) and stores the entry with its row in one transaction; the best entry is offered
/// each place that frees ([`crate::background::waitlist`]). Returns the entry's id (an
/// appointment in status `waitlist`), the appointment and its version.
///
/// # Errors
///
/// The access refusal, the patient's rule, or the store's error.
pub async fn join_waitlist(
    services: &Services,
    user: &AuthUser,
    wish: Wish,
    metadata: CommandMetadata,
) -> Result<(Uuid, Appointment, u64), UseCaseError> {
    let Wish {
        patient,
        service,
        window,
        practitioner,
        priority,
    } = wish;
    let service = service_named(services, &service, "service").await?;
    let found = reach(
        services,
        user,
        (Action::BookAppointments, "waitlist-join"),
        patient,
    )
    .await?;
    changeable(&found)?;
    let now = (services.clock)();
    let id = Uuid::new_v4();
    tracing::Span::current().record("appointment_id", tracing::field::display(id));
    let command = AppointmentCommand::JoinWaitlist {
        new: NewAppointment {
            patient_id: patient,
            service: service.code.clone(),
            priority,
            at: now,
        },
        wish: domain::scheduling::appointment::WaitlistWish {
            window,
            practitioner: practitioner.clone(),
        },
    };
    let change = ClaimChange {
        appointment_id: id,
        release: false,
        claim: None,
        now,
        reminders: None,
        waitlist: Some(schedule::WaitlistChange::Join {
            patient_id: patient.as_uuid(),
            service: service.code.clone(),
            practitioner,
            wish: window,
            priority_rank: crate::background::waitlist::rank(priority),
            joined_at: now,
        }),
        notification: None,
    };
    let (appointment, version) = services
        .appointments
        .execute(id, patient, None, command, Some(change), metadata)
        .await
        .map_err(UseCaseError::Scheduling)?;
    tracing::info!("wait list joined");
    Ok((id, appointment, version))
}
