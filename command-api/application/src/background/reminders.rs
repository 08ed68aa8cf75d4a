//! The reminder dispatcher: sends each planned reminder when it falls due, once, on the
//! patient's preferred channel, if they opted in, outside their quiet hours (read in the
//! practitioner's time zone). Reminders are rows written with the appointment's events, so
//! they survive restarts; each goes out as a `Notification` event whose id is the reminder's,
//! so a dispatcher that dies between sending and marking sends nothing twice.

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use domain::patient::PatientId;
use domain::scheduling::notification::NotificationEvent;
use event_store::schedule::{self, AppointmentStore, DueReminder};
use event_store::store::PatientStore;

/// When the quiet hours around `at` end, if `at` is inside them.
fn quiet_until(
    at: DateTime<Utc>,
    zone: &str,
    start: NaiveTime,
    end: NaiveTime,
) -> Option<DateTime<Utc>> {
    let tz: Tz = zone.parse().unwrap_or(Tz::UTC);
    let local = at.with_timezone(&tz);
    let time = local.time();
    let inside = if start <= end {
        start <= time && time < end
    } else {
        time >= start || time < end
    };
    if !inside {
        return None;
    }
    let mut day = local.date_naive();
    if start > end && time >= start {
        day = day.succ_opt()?;
    }
    // An end inside a clock-forward gap falls on the first instant after it.
    let local_end = day.and_time(end);
    tz.from_local_datetime(&local_end)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(local_end + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// Sends every reminder due at `now`; returns how many went out.
///
/// # Errors
///
/// The first store error.
pub async fn dispatch_due(
    store: &PatientStore,
    appointments: &AppointmentStore,
    now: DateTime<Utc>,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let mut sent = 0;
    for reminder in schedule::due_reminders(appointments.pool(), now, 100).await? {
        // One reminder failing must not hold up the others.
        match dispatch(store, appointments, &reminder, now).await {
            Ok(first_time) => sent += usize::from(first_time),
            Err(e) => {
                tracing::warn!(reminder_id = %reminder.reminder_id, error.message = %e, "reminder not sent now");
            }
        }
    }
    Ok(sent)
}

async fn dispatch(
    store: &PatientStore,
    appointments: &AppointmentStore,
    reminder: &DueReminder,
    now: DateTime<Utc>,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let pool = appointments.pool();
    let patient = PatientId::new(reminder.patient_id);
    // The appointment must still be booked for this start (a cancel or a move may have
    // committed since the reminder was read), and not begun.
    let still_due = appointments
        .load(reminder.appointment_id)
        .await?
        .and_then(|(a, _)| a.state().cloned())
        .is_some_and(|a| {
            a.status == domain::scheduling::AppointmentStatus::Booked
                && a.booking
                    .is_some_and(|b| b.interval.start == reminder.starts_at)
        });
    if !still_due || now >= reminder.starts_at {
        schedule::settle_reminder(pool, reminder.reminder_id, "skipped", None).await?;
        return Ok(false);
    }
    let preferences = store.load(patient).await?.and_then(|(p, _)| {
        p.record()
            // Merged away, the person still comes; archived, their appointments were cancelled.
            .filter(|r| r.status != domain::patient::PatientStatus::Archived)
            .map(|r| r.preferences.clone())
    });
    let Some(preferences) = preferences.filter(|p| p.reminder_opt_in) else {
        schedule::settle_reminder(pool, reminder.reminder_id, "skipped", None).await?;
        tracing::debug!(reminder_id = %reminder.reminder_id, "reminder skipped: not opted in");
        return Ok(false);
    };
    if let Some(quiet) = &preferences.quiet_hours {
        if let Some(until) = quiet_until(now, &reminder.time_zone, quiet.start, quiet.end) {
            if until < reminder.starts_at {
                schedule::settle_reminder(pool, reminder.reminder_id, "pending", Some(until))
                    .await?;
            } else {
                schedule::settle_reminder(pool, reminder.reminder_id, "skipped", None).await?;
            }
            return Ok(false);
        }
    }
    let event = NotificationEvent::AppointmentReminder {
        patient_id: patient,
        appointment_id: reminder.appointment_id,
        channel: preferences.preferred_channel,
        starts_at: reminder.starts_at,
        offset_minutes: reminder.offset_minutes,
        at: now,
    };
    let first_time = appointments
        .notify(reminder.reminder_id, patient, event)
        .await?;
    schedule::settle_reminder(pool, reminder.reminder_id, "sent", None).await?;
    tracing::info!(reminder_id = %reminder.reminder_id, appointment_id = %reminder.appointment_id, first_time, "reminder sent");
    Ok(first_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_may_span_midnight() {
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 29, 22, 30, 0).unwrap(); // 23:30 in Zurich
        let until = quiet_until(at, "Europe/Zurich", t(22, 0), t(7, 0)).unwrap();
        assert_eq!(until, Utc.with_ymd_and_hms(2026, 11, 30, 6, 0, 0).unwrap());
        assert_eq!(quiet_until(at, "Europe/Zurich", t(8, 0), t(9, 0)), None);
    }
}
