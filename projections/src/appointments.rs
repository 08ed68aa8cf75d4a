//! Appointments as they stand, by patient, practitioner, time and status: what FHIR
//! `Appointment` search looks up (the appointments themselves are then read from the store,
//! access-checked). Fed by the appointment topic; the patient topic's `PatientForgotten`
//! deletes the patient's rows. Holds ids, codes and times only.

use chrono::{DateTime, Utc};
use schemas::appointment::v1::{self, AppointmentEvent};
use schemas::patient::v1 as patient_v1;
use schemas::PublishedEvent;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::runtime::{ProjectionError, ReadModel};

/// The appointments read model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Appointments;

impl ReadModel for Appointments {
    fn name(&self) -> &'static str {
        "appointments"
    }

    fn topics(&self) -> &'static [&'static str] {
        &[schemas::topics::APPOINTMENT, schemas::topics::PATIENT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["appointments"]
    }

    fn partitions_by_patient(&self) -> bool {
        true
    }

    fn indexes_for_writes(&self) -> &'static [&'static str] {
        // By patient: a forgotten patient's rows are deleted.
        &["appointments_patient"]
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> Result<(), ProjectionError> {
        if !v1::EVENT_TYPES.contains(&event.event_type.as_str()) {
            // A patient event: only erasure concerns this model.
            if let Ok(patient_v1::PatientEvent::Forgotten(e)) =
                patient_v1::PatientEvent::from_published(event)
            {
                sqlx::query("DELETE FROM appointments WHERE patient_id = $1")
                    .bind(e.patient_id)
                    .execute(&mut *tx)
                    .await?;
            }
            return Ok(());
        }
        let version = i64::try_from(event.sequence).unwrap_or(i64::MAX);
        match AppointmentEvent::from_published(event)? {
            AppointmentEvent::AppointmentCreated(e) => {
                let booking = e.booking.as_ref();
                sqlx::query(
                    "INSERT INTO appointments (appointment_id, patient_id, status, service,
                         practitioner, resources, starts_at, ends_at, version, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (appointment_id) DO NOTHING",
                )
                .bind(e.appointment_id)
                .bind(e.patient_id)
                .bind(&e.status)
                .bind(&e.service)
                .bind(booking.and_then(|b| b.resources.first()))
                .bind(booking.map(|b| b.resources.clone()).unwrap_or_default())
                .bind(booking.map(|b| b.interval.start))
                .bind(booking.map(|b| b.interval.end))
                .bind(version)
                .bind(e.at)
                .execute(&mut *tx)
                .await?;
            }
            AppointmentEvent::AppointmentOffered(e) => {
                book(
                    tx,
                    e.appointment_id,
                    Some(&e.booking),
                    Some("pending"),
                    (version, e.at),
                )
                .await?;
            }
            AppointmentEvent::AppointmentRescheduled(e) => {
                book(
                    tx,
                    e.appointment_id,
                    Some(&e.booking),
                    None,
                    (version, e.at),
                )
                .await?;
            }
            AppointmentEvent::AppointmentOfferExpired(e) => {
                book(
                    tx,
                    e.appointment_id,
                    None,
                    Some("waitlist"),
                    (version, e.at),
                )
                .await?;
            }
            AppointmentEvent::AppointmentStatusChanged(e) => {
                set_status(tx, e.appointment_id, &e.to, (version, e.at)).await?;
            }
            AppointmentEvent::AppointmentCancelled(e) => {
                let at = e.cancellation.at;
                set_status(tx, e.appointment_id, "cancelled", (version, at)).await?;
            }
            AppointmentEvent::AppointmentEnteredInError(e) => {
                set_status(tx, e.appointment_id, "entered-in-error", (version, e.at)).await?;
            }
        }
        Ok(())
    }

    async fn clear(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE appointments")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// Sets the appointment's time and resources (`None`: it has none, back on the wait list), and
/// its status when given.
async fn book(
    tx: &mut PgConnection,
    appointment_id: Uuid,
    booking: Option<&v1::Booking>,
    status: Option<&str>,
    (version, at): (i64, DateTime<Utc>),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE appointments
            SET practitioner = $2, resources = $3, starts_at = $4, ends_at = $5,
                status = COALESCE($6, status), version = $7, updated_at = $8
          WHERE appointment_id = $1",
    )
    .bind(appointment_id)
    .bind(booking.and_then(|b| b.resources.first()))
    .bind(booking.map(|b| b.resources.clone()).unwrap_or_default())
    .bind(booking.map(|b| b.interval.start))
    .bind(booking.map(|b| b.interval.end))
    .bind(status)
    .bind(version)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn set_status(
    tx: &mut PgConnection,
    appointment_id: Uuid,
    status: &str,
    (version, at): (i64, DateTime<Utc>),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE appointments SET status = $2, version = $3, updated_at = $4
          WHERE appointment_id = $1",
    )
    .bind(appointment_id)
    .bind(status)
    .bind(version)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What an appointment search asks for; every part given must hold.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    pub patient: Option<Uuid>,
    /// A resource among the booking's (the practitioner, or a room).
    pub practitioner: Option<String>,
    /// Statuses, any of which.
    pub statuses: Vec<String>,
    /// The appointment starts at or after this.
    pub from: Option<DateTime<Utc>>,
    /// The appointment starts before this.
    pub before: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u32,
}

/// One page of appointment ids (by start, then id) and how many match in all (unknown only on
/// a page past the last).
#[derive(Debug, Clone)]
pub struct Page {
    pub ids: Vec<Uuid>,
    pub total: Option<u64>,
    pub has_more: bool,
}

/// The appointments `criteria` asks for.
///
/// # Errors
///
/// The database's error.
pub async fn search(pool: &PgPool, criteria: &Criteria) -> Result<Page, sqlx::Error> {
    let mut query = QueryBuilder::new(
        "SELECT appointment_id, count(*) OVER () AS total FROM projections.appointments WHERE true",
    );
    if let Some(patient) = criteria.patient {
        query.push(" AND patient_id = ").push_bind(patient);
    }
    if let Some(practitioner) = &criteria.practitioner {
        query
            .push(" AND resources @> ARRAY[")
            .push_bind(practitioner.clone())
            .push("]::text[]");
    }
    if !criteria.statuses.is_empty() {
        query
            .push(" AND status = ANY(")
            .push_bind(criteria.statuses.clone())
            .push(")");
    }
    if let Some(from) = criteria.from {
        query.push(" AND starts_at >= ").push_bind(from);
    }
    if let Some(before) = criteria.before {
        query.push(" AND starts_at < ").push_bind(before);
    }
    query
        .push(" ORDER BY starts_at NULLS LAST, appointment_id LIMIT ")
        .push_bind(i64::from(criteria.limit) + 1)
        .push(" OFFSET ")
        .push_bind(i64::from(criteria.offset));
    let rows: Vec<(Uuid, i64)> = query.build_query_as().fetch_all(pool).await?;
    let total = match rows.first() {
        Some((_, total)) => Some(u64::try_from(*total).unwrap_or_default()),
        None if criteria.offset == 0 => Some(0),
        None => None,
    };
    let has_more = rows.len() > criteria.limit as usize;
    let ids = rows
        .into_iter()
        .take(criteria.limit as usize)
        .map(|(id, _)| id)
        .collect();
    Ok(Page {
        ids,
        total,
        has_more,
    })
}
