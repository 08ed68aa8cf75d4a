//! A patient's compartment: everything the service holds of one patient (their record, every
//! item of their medical record, their appointments), read under one access decision and
//! recorded as one access entry. FHIR's `Patient/$everything` answers with it; the patient
//! reading their own compartment exercises their right of access, and the entry it leaves is
//! a disclosure to them in their accounting of disclosures.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::medical_record::{Item, ItemId, ItemKind};
use domain::patient::{Patient, PatientId};
use domain::scheduling::Appointment;
use uuid::Uuid;

use crate::access::{self, Decision};
use crate::caller::{AuthUser, Refused};
use crate::policy::{Action, Role};
use crate::reach::checked_access;
use crate::services::{Services, UseCaseError};

/// What the compartment access entries are recorded as.
pub const ACCESS: &str = "patient-everything";

/// The most appointments a compartment lists (the newest first).
const MAX_APPOINTMENTS: u32 = 1_000;

/// A patient's compartment as it stands.
#[derive(Debug)]
pub struct Compartment {
    pub patient_id: PatientId,
    pub patient: Patient,
    /// The patient record's version.
    pub version: u64,
    /// When the patient's record last changed (the newest event of its stream).
    pub changed_at: Option<DateTime<Utc>>,
    /// Every item of the medical record at its latest version, entered-in-error ones too.
    pub items: Vec<Item>,
    /// The patient's appointments with their versions and when each last changed; empty when
    /// the caller may not read them.
    pub appointments: Vec<(Uuid, u64, Appointment, Option<DateTime<Utc>>)>,
}

/// The compartment of patient `id`, read as `user`: one access decision (to read the medical
/// record), recorded as [`ACCESS`]. Appointments are in it when `user` may read the patient's
/// appointments, or is the patient.
///
/// # Errors
///
/// As [`checked_access`]; [`Refused::NotFound`] for nobody; [`UseCaseError::Database`] and store errors.
pub async fn everything(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
) -> Result<Compartment, UseCaseError> {
    let loaded = services.store.load(id).await?;
    checked_access(
        services,
        user,
        (Action::ReadMedicalRecord, ACCESS),
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    let loaded = loaded.ok_or(UseCaseError::Refused(Refused::NotFound))?;
    gather(services, user, id, loaded).await
}

/// The compartment of patient `id`, loaded already at `version`, as `user` may see it (their
/// appointments when `user` may read them), with no access decision nor entry: the caller
/// has made and recorded them ([`everything`], a bulk export).
///
/// # Errors
///
/// [`UseCaseError::Database`] and store errors.
pub async fn gather(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
    (patient, version): (Patient, u64),
) -> Result<Compartment, UseCaseError> {
    let mut items = Vec::new();
    let (record, _) = services.records.load(id).await?;
    items.extend(record.items().cloned());
    let own_streams = ItemKind::CODES
        .iter()
        .filter_map(|code| ItemKind::parse("kind", code).ok())
        .filter(ItemKind::has_own_stream);
    for kind in own_streams {
        let latest =
            projections::medical_records::latest_of(&services.pool, id.as_uuid(), kind.code())
                .await?;
        items.extend(latest.into_iter().filter_map(|v| {
            crate::records::item_at(
                (kind, ItemId::new(v.item_id)),
                v.version,
                &v.state,
                (v.recorded_at, v.changed_at),
            )
        }));
    }

    let themself = user.roles.contains(&Role::Patient) && user.patient_id == Some(id.as_uuid());
    let may_read_appointments = themself
        || access::decide(
            user,
            Action::ReadAppointments,
            id,
            Some(&patient),
            services.home_organization.as_deref(),
        ) == Decision::Granted;
    let mut appointments = Vec::new();
    if may_read_appointments {
        let page = projections::appointments::search(
            &services.pool,
            &projections::appointments::Criteria {
                patient: Some(id.as_uuid()),
                practitioner: None,
                statuses: Vec::new(),
                from: None,
                before: None,
                limit: MAX_APPOINTMENTS,
                offset: 0,
            },
        )
        .await?;
        let changed = changed_at(services, "Appointment", &page.ids).await?;
        for appointment_id in page.ids {
            let loaded = services
                .appointments
                .load(appointment_id)
                .await
                .map_err(UseCaseError::Scheduling)?;
            if let Some((appointment, version)) = loaded {
                let at = changed.get(&appointment_id.to_string()).copied();
                appointments.push((appointment_id, version, appointment, at));
            }
        }
    }
    let changed = changed_at(services, "Patient", &[id.as_uuid()]).await?;
    Ok(Compartment {
        patient_id: id,
        patient,
        version,
        changed_at: changed.get(&id.to_string()).copied(),
        items,
        appointments,
    })
}

/// When each of the aggregates `ids` of `aggregate_type` last changed: the time its newest
/// event was stored.
async fn changed_at(
    services: &Services,
    aggregate_type: &str,
    ids: &[Uuid],
) -> Result<HashMap<String, DateTime<Utc>>, UseCaseError> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT aggregate_id, max(recorded_at) FROM events
          WHERE aggregate_type = $1 AND aggregate_id = ANY($2)
          GROUP BY aggregate_id",
    )
    .bind(aggregate_type)
    .bind(&ids)
    .fetch_all(&services.pool)
    .await?;
    Ok(rows.into_iter().collect())
}
