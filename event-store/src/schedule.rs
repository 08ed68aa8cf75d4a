//! Scheduling's storage: resources, their blocks and service types (reference data in plain
//! tables), appointments (event-sourced, sealed with the patient's key), and the time each
//! appointment claims, under an exclusion constraint that makes double booking impossible
//! however many API processes book at once.

use chrono::{DateTime, Utc};
use cqrs_es::persist::PersistedEventStore;
use domain::patient::PatientId;
use domain::scheduling::{Appointment, AppointmentCommand, Interval, SchedulingError};
use sqlx::postgres::types::PgRange;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::chain::ChainKey;
use crate::keys::KeyStore;
use crate::repository::SealedRepository;
use crate::store::{execute_on, CommandError, CommandMetadata};

/// The time one appointment claims on its resources (and its patient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Claim keys: `resource:<id>` and `patient:<id>`.
    pub keys: Vec<String>,
    pub interval: Interval,
    /// Holds and offers end here; bookings do not.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a command does to an appointment's claims, stored with its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimChange {
    pub appointment_id: Uuid,
    /// Gives back what the appointment claimed before (a move, a cancellation).
    pub release: bool,
    pub claim: Option<Claim>,
    /// The instant of the command: claims that expired by then give way.
    pub now: DateTime<Utc>,
}

/// Another appointment holds some of the time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the time is taken")]
pub struct TimeTaken;

/// The claim key of a resource.
pub fn resource_key(id: &str) -> String {
    format!("resource:{id}")
}

/// The claim key of a patient.
pub fn patient_key(id: PatientId) -> String {
    format!("patient:{id}")
}

fn range(interval: &Interval) -> PgRange<DateTime<Utc>> {
    PgRange::from(interval.start..interval.end)
}

/// Applies `change` inside `tx`.
///
/// # Errors
///
/// The database error; an exclusion violation ([`is_claim_conflict`]) when the time is taken.
pub async fn apply_claims(tx: &mut PgConnection, change: &ClaimChange) -> Result<(), sqlx::Error> {
    if change.release {
        sqlx::query("DELETE FROM schedule_claims WHERE appointment_id = $1")
            .bind(change.appointment_id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(claim) = &change.claim {
        sqlx::query(
            "DELETE FROM schedule_claims
              WHERE resource = ANY($1) AND during && $2 AND expires_at <= $3",
        )
        .bind(&claim.keys)
        .bind(range(&claim.interval))
        .bind(change.now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO schedule_claims (appointment_id, resource, during, expires_at)
             SELECT $1, key, $3, $4 FROM unnest($2::text[]) AS key",
        )
        .bind(change.appointment_id)
        .bind(&claim.keys)
        .bind(range(&claim.interval))
        .bind(claim.expires_at)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Whether `error` is the exclusion constraint refusing overlapping claims.
pub fn is_claim_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23P01"))
}

/// The appointment holding part of `interval` on one of `keys` at `now`, if any.
///
/// # Errors
///
/// The database error.
pub async fn holder(
    pool: &PgPool,
    keys: &[String],
    interval: &Interval,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT appointment_id FROM schedule_claims
          WHERE resource = ANY($1) AND during && $2 AND (expires_at IS NULL OR expires_at > $3)
          LIMIT 1",
    )
    .bind(keys)
    .bind(range(interval))
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// The intervals claimed on `key` overlapping `within` at `now`.
///
/// # Errors
///
/// The database error.
pub async fn claimed(
    pool: &PgPool,
    keys: &[String],
    within: &Interval,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Interval)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT resource, lower(during) AS start, upper(during) AS end FROM schedule_claims
          WHERE resource = ANY($1) AND during && $2 AND (expires_at IS NULL OR expires_at > $3)",
    )
    .bind(keys)
    .bind(range(within))
    .bind(now)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("resource")?,
                Interval::new(r.try_get("start")?, r.try_get("end")?),
            ))
        })
        .collect()
}

/// The appointment event store.
#[derive(Clone)]
pub struct AppointmentStore {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
}

impl std::fmt::Debug for AppointmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppointmentStore").finish_non_exhaustive()
    }
}

impl AppointmentStore {
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey) -> Self {
        Self { pool, keys, chain }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn event_store(
        &self,
        claims: Option<ClaimChange>,
    ) -> PersistedEventStore<SealedRepository, Appointment> {
        let repository =
            SealedRepository::new(self.pool.clone(), self.keys.clone(), self.chain.clone());
        PersistedEventStore::new_event_store(match claims {
            Some(claims) => repository.with_claims(claims),
            None => repository,
        })
    }

    /// Executes `command` on appointment `id` of `patient`, storing `claims` with its events;
    /// the events are sealed with the patient's data key.
    ///
    /// # Errors
    ///
    /// [`CommandError::Rule`] with [`SchedulingError::TimeTaken`] when another appointment
    /// holds the time; the other rules, a stale version, a lost race or the store failing.
    pub async fn execute(
        &self,
        id: Uuid,
        patient: PatientId,
        expected_version: Option<u64>,
        command: AppointmentCommand,
        claims: Option<ClaimChange>,
        mut metadata: CommandMetadata,
    ) -> Result<(Appointment, u64), CommandError<SchedulingError>> {
        metadata.data_key_owner = Some(patient.to_string());
        let result = execute_on(
            &self.event_store(claims),
            &id.to_string(),
            expected_version,
            |_, _| Ok(()),
            |appointment: &Appointment| appointment.decide(command.clone()),
            metadata,
        )
        .await;
        match result {
            Err(CommandError::Internal(e)) if e.is::<TimeTaken>() => {
                Err(CommandError::Rule(SchedulingError::TimeTaken))
            }
            other => other,
        }
    }

    /// The appointment and its version (`None` if there is none with this id).
    ///
    /// # Errors
    ///
    /// [`CommandError`] when the store fails.
    pub async fn load(
        &self,
        id: Uuid,
    ) -> Result<Option<(Appointment, u64)>, CommandError<SchedulingError>> {
        use cqrs_es::EventStore;
        let context = self
            .event_store(None)
            .load_aggregate(&id.to_string())
            .await
            .map_err(crate::store::classify)?;
        if context.current_sequence == 0 {
            return Ok(None);
        }
        Ok(Some((context.aggregate, context.current_sequence as u64)))
    }
}
