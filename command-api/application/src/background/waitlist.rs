//! The wait-list loop: offers expire back to the list, and every waiting entry, best first
//! (priority, then waiting time), is offered the earliest free place in its window as a hold
//! that expires (`scheduling.hold_minutes`), announced on `patients.notifications.v1`.
//! Confirming the appointment accepts the offer. A freed slot (a cancellation, a reschedule,
//! reserved capacity released) is thus offered to the best entry at the next pass; an entry
//! that lets an offer expire is not offered that start again, so it passes to the next.

use chrono::{DateTime, Duration, Utc};
use domain::patient::PatientId;
use domain::scheduling::appointment::Booking;
use domain::scheduling::assignment::Strategy;
use domain::scheduling::notification::{offer_id, NotificationEvent};
use domain::scheduling::{AppointmentCommand, Interval, Priority, SchedulingError};
use event_store::command::{CommandError, CommandMetadata};
use event_store::schedule::{
    self, AppointmentStore, Claim, ClaimChange, Service, WaitlistChange, WaitlistEntry,
};
use event_store::store::PatientStore;

use crate::planner::{self, Ask};
use crate::settings::SchedulingSettings;

fn metadata() -> CommandMetadata {
    CommandMetadata {
        user_id: "scheduler".to_owned(),
        ..CommandMetadata::default()
    }
}

fn priority(rank: i16) -> Priority {
    match rank {
        0 => Priority::Emergency,
        1 => Priority::Urgent,
        _ => Priority::Routine,
    }
}

/// The rank of a priority on the wait list: lower goes first.
pub fn rank(priority: Priority) -> i16 {
    match priority {
        Priority::Emergency => 0,
        Priority::Urgent => 1,
        Priority::Routine => 2,
    }
}

/// The earliest free place in `entry`'s window, but the start it declined.
async fn place_for(
    pool: &sqlx::PgPool,
    (entry, service): (&WaitlistEntry, &Service),
    now: DateTime<Utc>,
    (settings, strategy): (&SchedulingSettings, Strategy),
) -> Result<Option<planner::Placement>, Box<dyn std::error::Error + Send + Sync>> {
    let start = entry.wish.start.max(now);
    if start >= entry.wish.end {
        return Ok(None);
    }
    let ask = Ask {
        service,
        practitioner: entry.practitioner.as_deref(),
        range: Interval::new(start, entry.wish.end),
        duration: Duration::minutes(i64::from(service.minutes)),
        priority: priority(entry.priority_rank),
        now,
        release_lead: Duration::minutes(i64::from(settings.reserved_release_minutes)),
        strategy,
        ignoring: None,
        patient: Some(PatientId::new(entry.patient_id)),
        salt: entry.appointment_id.as_u64_pair().1,
    };
    Ok(planner::availability(pool, &ask, 20)
        .await?
        .into_iter()
        .find(|p| Some(p.start) != entry.declined_start))
}

/// One pass at `now`; returns how many offers were made.
///
/// # Errors
///
/// The first store error.
pub async fn process(
    patients: &PatientStore,
    appointments: &AppointmentStore,
    settings: &SchedulingSettings,
    now: DateTime<Utc>,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let pool = appointments.pool();
    for entry in schedule::expired_offers(pool, now).await? {
        let change = ClaimChange {
            appointment_id: entry.appointment_id,
            release: true,
            claim: None,
            now,
            reminders: None,
            waitlist: Some(WaitlistChange::Waiting {
                declined_start: entry.offer_start,
            }),
            notification: None,
        };
        let patient = PatientId::new(entry.patient_id);
        match appointments
            .execute(
                entry.appointment_id,
                patient,
                None,
                AppointmentCommand::ExpireOffer { at: now },
                Some(change),
                metadata(),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(appointment_id = %entry.appointment_id, "wait-list offer expired")
            }
            Err(CommandError::Rule(SchedulingError::OfferStillOpen)) => {}
            // Gone, or moved on (entered in error, erased): it waits for nothing any more.
            Err(CommandError::Rule(rule)) => {
                tracing::warn!(appointment_id = %entry.appointment_id, code = rule.code(), "entry leaves the wait list");
                schedule::leave_waitlist(pool, entry.appointment_id).await?;
            }
            // One entry failing must not hold up the others.
            Err(other) => {
                tracing::warn!(appointment_id = %entry.appointment_id, error.message = %other, "offer could not expire now");
            }
        }
    }
    let strategy = Strategy::parse("strategy", &settings.strategy).unwrap_or(Strategy::BestFit);
    let mut offers = 0;
    // The entries of this pass that found no place. A place freed while the pass runs (a
    // cancellation committing between two entries) must not go to a later, lesser entry
    // before them: before each offer they look again, and if one now finds a place the pass
    // ends, for the next to serve them first.
    let mut unplaced: Vec<(WaitlistEntry, Service)> = Vec::new();
    'pass: for entry in schedule::waiting(pool, now, 100).await? {
        let Some(service) = schedule::service(pool, &entry.service).await? else {
            continue;
        };
        // Only patients on record and active are offered anything. An archived patient's
        // entries are cancelled by the process manager that reacts to the archive
        // (`super::archived`): they stay on the list until it does, offered nothing.
        let record = patients
            .load(PatientId::new(entry.patient_id))
            .await?
            .and_then(|(p, _)| p.record().cloned());
        let status = record.as_ref().map(|r| r.status);
        let Some(record) = record.filter(|r| r.status == domain::patient::PatientStatus::Active)
        else {
            if status != Some(domain::patient::PatientStatus::Archived) {
                schedule::leave_waitlist(pool, entry.appointment_id).await?;
            }
            continue;
        };
        let Some(place) = place_for(pool, (&entry, &service), now, (settings, strategy)).await?
        else {
            unplaced.push((entry, service));
            continue;
        };
        for (earlier, earlier_service) in &unplaced {
            if place_for(pool, (earlier, earlier_service), now, (settings, strategy))
                .await?
                .is_some()
            {
                break 'pass;
            }
        }
        let patient = PatientId::new(entry.patient_id);
        let booking = Booking {
            interval: place.interval(),
            resources: place.resources(),
        };
        let keys = schedule::claim_keys(&booking.resources, patient);
        let expires_at = now + Duration::minutes(i64::from(settings.hold_minutes));
        let channel = record.preferences.preferred_channel;
        // The notice is written with the offer: sent once it commits, never without it.
        let notification = NotificationEvent::WaitlistOffer {
            patient_id: patient,
            appointment_id: entry.appointment_id,
            channel,
            slot: booking.interval,
            expires_at,
            at: now,
        };
        let change = ClaimChange {
            appointment_id: entry.appointment_id,
            release: true,
            claim: Some(Claim {
                keys,
                interval: booking.interval,
                expires_at: Some(expires_at),
            }),
            now,
            reminders: None,
            waitlist: Some(WaitlistChange::Offered {
                start: booking.interval.start,
                expires_at,
            }),
            notification: Some((
                offer_id(entry.appointment_id, &booking.interval, expires_at),
                patient,
                notification,
            )),
        };
        let command = AppointmentCommand::Offer {
            booking: booking.clone(),
            expires_at,
            at: now,
        };
        match appointments
            .execute(
                entry.appointment_id,
                patient,
                None,
                command,
                Some(change),
                metadata(),
            )
            .await
        {
            Ok(_) => {}
            // Someone else took the time (or the entry changed): the next pass looks again.
            Err(CommandError::Rule(SchedulingError::TimeTaken) | CommandError::Conflict) => {
                continue
            }
            Err(CommandError::Rule(rule)) => {
                tracing::warn!(appointment_id = %entry.appointment_id, code = rule.code(), "entry leaves the wait list");
                schedule::leave_waitlist(pool, entry.appointment_id).await?;
                continue;
            }
            Err(other) => {
                tracing::warn!(appointment_id = %entry.appointment_id, error.message = %other, "no offer now");
                continue;
            }
        }
        tracing::info!(appointment_id = %entry.appointment_id, "wait-list offer made");
        offers += 1;
    }
    Ok(offers)
}
