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
use crate::command::{execute_on, CommandError, CommandMetadata, Fresh};
use crate::keys::KeyStore;
use crate::repository::SealedRepository;

/// The time one appointment claims on its resources (and its patient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Claim keys: `resource:<id>` and `patient:<id>`.
    pub keys: Vec<String>,
    pub interval: Interval,
    /// Holds and offers end here; bookings do not.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a command does to an appointment's claims (and reminders), stored with its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimChange {
    pub appointment_id: Uuid,
    /// Gives back what the appointment claimed before (a move, a cancellation).
    pub release: bool,
    pub claim: Option<Claim>,
    /// The instant of the command: claims that expired by then give way.
    pub now: DateTime<Utc>,
    /// Replaces the appointment's pending reminders (`Some(vec![])` drops them).
    pub reminders: Option<Vec<PlannedReminder>>,
    /// What happens to the appointment's wait-list entry.
    pub waitlist: Option<WaitlistChange>,
    /// A notification to send once this commits (id, patient, content).
    pub notification: Option<(
        Uuid,
        PatientId,
        domain::scheduling::notification::NotificationEvent,
    )>,
}

impl crate::repository::TransactionEffect for ClaimChange {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _events: &'a [cqrs_es::persist::SerializedEvent],
        _keys: &'a crate::repository::SealingKeys,
    ) -> futures::future::BoxFuture<'a, Result<(), cqrs_es::persist::PersistenceError>> {
        Box::pin(async move {
            apply_claims(tx, self).await.map_err(|e| {
                if is_claim_conflict(&e) {
                    cqrs_es::persist::PersistenceError::UnknownError(Box::new(TimeTaken))
                } else {
                    crate::repository::persistence_error(e)
                }
            })
        })
    }
}

/// A change to a wait-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitlistChange {
    Join {
        patient_id: Uuid,
        service: String,
        practitioner: Option<String>,
        wish: Interval,
        /// 0 emergency, 1 urgent, 2 routine.
        priority_rank: i16,
        joined_at: DateTime<Utc>,
    },
    Offered {
        start: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// Waiting again after letting an offer expire: that start is not offered again.
    Waiting {
        declined_start: Option<DateTime<Utc>>,
    },
    Booked,
    Left,
}

/// A wait-list entry as the offer loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitlistEntry {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub service: String,
    pub practitioner: Option<String>,
    pub wish: Interval,
    pub priority_rank: i16,
    pub offer_start: Option<DateTime<Utc>>,
    pub declined_start: Option<DateTime<Utc>>,
}

fn entry_of(row: &sqlx::postgres::PgRow) -> Result<WaitlistEntry, sqlx::Error> {
    Ok(WaitlistEntry {
        appointment_id: row.try_get("appointment_id")?,
        patient_id: row.try_get("patient_id")?,
        service: row.try_get("service")?,
        practitioner: row.try_get("practitioner")?,
        wish: Interval::new(row.try_get("wish_start")?, row.try_get("wish_end")?),
        priority_rank: row.try_get("priority_rank")?,
        offer_start: row.try_get("offer_start")?,
        declined_start: row.try_get("declined_start")?,
    })
}

const ENTRY_COLUMNS: &str = "appointment_id, patient_id, service, practitioner,
    lower(wish) AS wish_start, upper(wish) AS wish_end, priority_rank, offer_start, declined_start";

/// Entries waiting for a slot still ahead at `now`, best first (priority, then waiting time).
///
/// # Errors
///
/// The database error.
pub async fn waiting(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<WaitlistEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM scheduling_waitlist
          WHERE status = 'waiting' AND upper(wish) > $1
          ORDER BY priority_rank, joined_at, appointment_id LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(entry_of).collect()
}

/// Takes an entry off the wait list (its appointment moved on, or its patient left).
///
/// # Errors
///
/// The database error.
pub async fn leave_waitlist(pool: &PgPool, appointment_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE scheduling_waitlist SET status = 'left' WHERE appointment_id = $1")
        .bind(appointment_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets what scheduling holds of a patient outside their sealed events, inside `tx` (the
/// erasure's): their claims are given back, their pending reminders, wait-list entries and
/// unsent notifications removed.
///
/// # Errors
///
/// The database error.
pub async fn forget_patient(
    tx: &mut sqlx::PgConnection,
    patient: PatientId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM schedule_claims WHERE appointment_id IN
            (SELECT appointment_id FROM schedule_claims WHERE resource = $1)",
    )
    .bind(patient_key(patient))
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM scheduling_reminders WHERE patient_id = $1")
        .bind(patient.as_uuid())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM scheduling_waitlist WHERE patient_id = $1")
        .bind(patient.as_uuid())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM scheduling_outbox WHERE patient_id = $1")
        .bind(patient.as_uuid())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Notifications waiting to be sent: id, patient, content (oldest first).
///
/// # Errors
///
/// The database error.
pub async fn outbox(
    pool: &PgPool,
    limit: i64,
) -> Result<
    Vec<(
        Uuid,
        PatientId,
        domain::scheduling::notification::NotificationEvent,
    )>,
    sqlx::Error,
> {
    let rows = sqlx::query(
        "SELECT notification_id, patient_id, event FROM scheduling_outbox ORDER BY created_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let event: serde_json::Value = row.try_get("event")?;
        let event = serde_json::from_value(event).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        out.push((
            row.try_get("notification_id")?,
            PatientId::new(row.try_get("patient_id")?),
            event,
        ));
    }
    Ok(out)
}

/// Removes a sent notification from the outbox.
///
/// # Errors
///
/// The database error.
pub async fn sent(pool: &PgPool, notification_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM scheduling_outbox WHERE notification_id = $1")
        .bind(notification_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The appointments of `patient` that claim time ending after `now`, and their wait-list
/// entries still open.
///
/// # Errors
///
/// The database error.
pub async fn ahead_of(
    pool: &PgPool,
    patient: PatientId,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT appointment_id FROM schedule_claims WHERE resource = $1 AND upper(during) > $2
         UNION
         SELECT appointment_id FROM scheduling_waitlist
          WHERE patient_id = $3 AND status IN ('waiting', 'offered')",
    )
    .bind(patient_key(patient))
    .bind(now)
    .bind(patient.as_uuid())
    .fetch_all(pool)
    .await
}

/// Offers that expired by `now`.
///
/// # Errors
///
/// The database error.
pub async fn expired_offers(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Vec<WaitlistEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM scheduling_waitlist
          WHERE status = 'offered' AND offer_expires_at <= $1
          ORDER BY offer_expires_at LIMIT 100"
    ))
    .bind(now)
    .fetch_all(pool)
    .await?;
    rows.iter().map(entry_of).collect()
}

/// A reminder to send at `due_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedReminder {
    pub reminder_id: Uuid,
    pub patient_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub offset_minutes: u32,
    pub due_at: DateTime<Utc>,
    pub time_zone: String,
}

/// Another appointment holds some of the time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the time is taken")]
pub struct TimeTaken;

/// The claim key of a resource.
pub fn resource_key(id: &str) -> String {
    format!("resource:{id}")
}

/// The claim keys of a booking: each of its resources, and its patient.
pub fn claim_keys(resources: &[String], patient: PatientId) -> Vec<String> {
    let mut keys: Vec<String> = resources.iter().map(|r| resource_key(r)).collect();
    keys.push(patient_key(patient));
    keys
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
    // Every writer claims in the same order, so two cannot wait on each other.
    let keys = change.claim.as_ref().map(|claim| {
        let mut keys = claim.keys.clone();
        keys.sort_unstable();
        keys.dedup();
        keys
    });
    if let Some(keys) = &keys {
        // One claim writer per key at a time, taken in that order and before anything is
        // deleted (a move gives its old time back first: a writer waiting on that deleted row
        // while holding the key would wait on this one). Without it, two bookings inserting
        // the same key at once each find the other's uncommitted row under the exclusion
        // constraint and wait on each other: a deadlock, retried with the same claims, over
        // and over (two bookings of eight under load hung 30 s). With it, the second waits
        // for the first to commit and then meets its row: the time is taken.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('schedule_claims ' || k, 0))
               FROM (SELECT DISTINCT unnest($1::text[]) AS k ORDER BY 1) AS keys",
        )
        .bind(keys)
        .execute(&mut *tx)
        .await?;
    }
    if change.release {
        sqlx::query("DELETE FROM schedule_claims WHERE appointment_id = $1")
            .bind(change.appointment_id)
            .execute(&mut *tx)
            .await?;
    }
    if let (Some(claim), Some(keys)) = (&change.claim, &keys) {
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
        .bind(keys)
        .bind(range(&claim.interval))
        .bind(claim.expires_at)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(waitlist) = &change.waitlist {
        apply_waitlist(tx, change.appointment_id, waitlist).await?;
    }
    if let Some((id, patient, event)) = &change.notification {
        sqlx::query(
            "INSERT INTO scheduling_outbox (notification_id, patient_id, event)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(patient.as_uuid())
        .bind(serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(reminders) = &change.reminders {
        sqlx::query(
            "DELETE FROM scheduling_reminders WHERE appointment_id = $1 AND status = 'pending'",
        )
        .bind(change.appointment_id)
        .execute(&mut *tx)
        .await?;
        for r in reminders {
            sqlx::query(
                "INSERT INTO scheduling_reminders
                    (reminder_id, appointment_id, patient_id, starts_at, offset_minutes, due_at, time_zone)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (reminder_id) DO NOTHING",
            )
            .bind(r.reminder_id)
            .bind(change.appointment_id)
            .bind(r.patient_id)
            .bind(r.starts_at)
            .bind(r.offset_minutes as i32)
            .bind(r.due_at)
            .bind(&r.time_zone)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

async fn apply_waitlist(
    tx: &mut PgConnection,
    id: Uuid,
    change: &WaitlistChange,
) -> Result<(), sqlx::Error> {
    let query = match change {
        WaitlistChange::Join { patient_id, service, practitioner, wish, priority_rank, joined_at } => sqlx::query(
            "INSERT INTO scheduling_waitlist
                (appointment_id, patient_id, service, practitioner, wish, priority_rank, joined_at, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'waiting')",
        )
        .bind(id)
        .bind(patient_id)
        .bind(service)
        .bind(practitioner)
        .bind(range(wish))
        .bind(priority_rank)
        .bind(joined_at),
        WaitlistChange::Offered { start, expires_at } => sqlx::query(
            "UPDATE scheduling_waitlist SET status = 'offered', offer_start = $2, offer_expires_at = $3
              WHERE appointment_id = $1",
        )
        .bind(id)
        .bind(start)
        .bind(expires_at),
        WaitlistChange::Waiting { declined_start } => sqlx::query(
            "UPDATE scheduling_waitlist
                SET status = 'waiting', offer_start = NULL, offer_expires_at = NULL, declined_start = $2
              WHERE appointment_id = $1",
        )
        .bind(id)
        .bind(declined_start),
        WaitlistChange::Booked => sqlx::query(
            "UPDATE scheduling_waitlist SET status = 'booked', offer_expires_at = NULL WHERE appointment_id = $1",
        )
        .bind(id),
        WaitlistChange::Left => {
            sqlx::query("UPDATE scheduling_waitlist SET status = 'left' WHERE appointment_id = $1").bind(id)
        }
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

/// A reminder due to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReminder {
    pub reminder_id: Uuid,
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub offset_minutes: u32,
    pub due_at: DateTime<Utc>,
    pub time_zone: String,
}

/// Up to `limit` pending reminders due by `now`, earliest first.
///
/// # Errors
///
/// The database error.
pub async fn due_reminders(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DueReminder>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT reminder_id, appointment_id, patient_id, starts_at, offset_minutes, due_at, time_zone
           FROM scheduling_reminders WHERE status = 'pending' AND due_at <= $1
          ORDER BY due_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let offset: i32 = r.try_get("offset_minutes")?;
            Ok(DueReminder {
                reminder_id: r.try_get("reminder_id")?,
                appointment_id: r.try_get("appointment_id")?,
                patient_id: r.try_get("patient_id")?,
                starts_at: r.try_get("starts_at")?,
                offset_minutes: offset.max(0) as u32,
                due_at: r.try_get("due_at")?,
                time_zone: r.try_get("time_zone")?,
            })
        })
        .collect()
}

/// Marks a pending reminder `sent` or `skipped`, or moves it to `due_at` (quiet hours).
///
/// # Errors
///
/// The database error.
pub async fn settle_reminder(
    pool: &PgPool,
    reminder_id: Uuid,
    status: &str,
    due_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE scheduling_reminders SET status = $2, due_at = coalesce($3, due_at)
          WHERE reminder_id = $1 AND status = 'pending'",
    )
    .bind(reminder_id)
    .bind(status)
    .bind(due_at)
    .execute(pool)
    .await?;
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

/// The claims on `keys` overlapping `within` at `now`: key, interval and appointment.
///
/// # Errors
///
/// The database error.
pub async fn claimed_by(
    pool: &PgPool,
    keys: &[String],
    within: &Interval,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Interval, Uuid)>, sqlx::Error> {
    // One index search per resource: the exclusion constraint's index (resource, during)
    // cannot serve `resource = ANY($1)`, which scanned every claim overlapping the range
    // (all resources', growing with the bookings). `OFFSET 0` keeps the planner from turning
    // the lookups back into one join.
    let rows = sqlx::query(
        "SELECT c.resource, lower(c.during) AS start, upper(c.during) AS end, c.appointment_id
           FROM unnest($1::text[]) AS k(resource)
           CROSS JOIN LATERAL (
                SELECT resource, during, appointment_id FROM schedule_claims
                 WHERE resource = k.resource AND during && $2
                   AND (expires_at IS NULL OR expires_at > $3)
                OFFSET 0) AS c",
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
                r.try_get("appointment_id")?,
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

    fn repository(&self, claims: Option<ClaimChange>) -> SealedRepository {
        let repository = crate::command::repository(&self.pool, &self.keys, &self.chain);
        match claims {
            Some(claims) => repository.with_effect(claims),
            None => repository,
        }
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
        // The commands that open an appointment act on an id made for it.
        let fresh = match command {
            AppointmentCommand::Book { .. }
            | AppointmentCommand::Hold { .. }
            | AppointmentCommand::Propose { .. }
            | AppointmentCommand::JoinWaitlist { .. } => Fresh::Expected,
            _ => Fresh::Unknown,
        };
        let result = execute_on(
            (self.repository(claims), None),
            (&id.to_string(), fresh),
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

    /// Sends notification `id` about `patient` (once: `Ok(false)` when it went out before).
    ///
    /// # Errors
    ///
    /// [`CommandError`] when the store fails.
    pub async fn notify(
        &self,
        id: Uuid,
        patient: PatientId,
        event: domain::scheduling::notification::NotificationEvent,
    ) -> Result<bool, CommandError<SchedulingError>> {
        let metadata = CommandMetadata {
            user_id: "scheduler".to_owned(),
            data_key_owner: Some(patient.to_string()),
            ..CommandMetadata::default()
        };
        match execute_on(
            (self.repository(None), None),
            (&id.to_string(), Fresh::Unknown),
            None,
            |_, _| Ok(()),
            |n: &domain::scheduling::notification::Notification| n.decide(event.clone()),
            metadata,
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(CommandError::Rule(SchedulingError::AlreadySent) | CommandError::Conflict) => {
                Ok(false)
            }
            Err(other) => Err(other),
        }
    }

    /// The appointment as its first `version` events left it.
    ///
    /// # Errors
    ///
    /// [`CommandError`] when the store fails.
    pub async fn load_version(
        &self,
        id: Uuid,
        version: u64,
    ) -> Result<Option<Appointment>, CommandError<SchedulingError>> {
        crate::command::load_version(self.repository(None), &id.to_string(), version).await
    }

    /// The appointment as each of its latest `newest` versions left it, newest first (the
    /// events read once).
    ///
    /// # Errors
    ///
    /// [`CommandError`] when the store fails.
    pub async fn versions(
        &self,
        id: Uuid,
        newest: usize,
    ) -> Result<Vec<(u64, Appointment)>, CommandError<SchedulingError>> {
        crate::command::load_versions(self.repository(None), &id.to_string(), newest).await
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
        let context = PersistedEventStore::<_, Appointment>::new_event_store(self.repository(None))
            .load_aggregate(&id.to_string())
            .await
            .map_err(crate::command::classify)?;
        if context.current_sequence == 0 {
            return Ok(None);
        }
        Ok(Some((context.aggregate, context.current_sequence as u64)))
    }
}

/// A practitioner, room or piece of equipment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Resource {
    pub id: String,
    /// `practitioner`, `room` or `equipment`.
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specialty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type: Option<String>,
    pub capabilities: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<domain::scheduling::WeeklyTemplate>,
    pub version: i32,
}

fn resource_of(row: &sqlx::postgres::PgRow) -> Result<Resource, sqlx::Error> {
    let template: Option<serde_json::Value> = row.try_get("template")?;
    Ok(Resource {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        specialty: row.try_get("specialty")?,
        room_type: row.try_get("room_type")?,
        capabilities: row.try_get("capabilities")?,
        template: template.and_then(|t| serde_json::from_value(t).ok()),
        version: row.try_get("version")?,
    })
}

const RESOURCE_COLUMNS: &str =
    "id, kind, name, specialty, room_type, capabilities, template, version";

/// Creates or replaces resource `resource.id`; returns it as stored and whether it is new.
///
/// # Errors
///
/// The database error.
pub async fn put_resource(
    pool: &PgPool,
    resource: &Resource,
    user: &str,
    at: DateTime<Utc>,
) -> Result<(Resource, bool), sqlx::Error> {
    let row = sqlx::query(&format!(
        "INSERT INTO scheduling_resources
            (id, kind, name, specialty, room_type, capabilities, template, updated_by, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE
            SET kind = EXCLUDED.kind, name = EXCLUDED.name, specialty = EXCLUDED.specialty,
                room_type = EXCLUDED.room_type, capabilities = EXCLUDED.capabilities,
                template = EXCLUDED.template, updated_by = EXCLUDED.updated_by,
                updated_at = EXCLUDED.updated_at,
                version = scheduling_resources.version + 1
         RETURNING {RESOURCE_COLUMNS}"
    ))
    .bind(&resource.id)
    .bind(&resource.kind)
    .bind(&resource.name)
    .bind(&resource.specialty)
    .bind(&resource.room_type)
    .bind(&resource.capabilities)
    .bind(
        resource
            .template
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok()),
    )
    .bind(user)
    .bind(at)
    .fetch_one(pool)
    .await?;
    let stored = resource_of(&row)?;
    let created = stored.version == 1;
    Ok((stored, created))
}

/// Resources, narrowed by kind, specialty, room type and ids (each when given), by id.
///
/// # Errors
///
/// The database error.
pub async fn resources(
    pool: &PgPool,
    kind: Option<&str>,
    specialty: Option<&str>,
    room_type: Option<&str>,
    ids: Option<&[String]>,
) -> Result<Vec<Resource>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM scheduling_resources
          WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR specialty = $2)
            AND ($3::text IS NULL OR room_type = $3) AND ($4::text[] IS NULL OR id = ANY($4))
          ORDER BY id"
    ))
    .bind(kind)
    .bind(specialty)
    .bind(room_type)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    rows.iter().map(resource_of).collect()
}

/// Adds a block (holiday, leave, one-off) to a resource.
///
/// # Errors
///
/// The database error.
pub async fn add_block(
    pool: &PgPool,
    block_id: Uuid,
    (resource_id, interval, reason): (&str, &Interval, &str),
    user: &str,
    at: DateTime<Utc>,
    reservation: Option<&crate::idempotency::Reservation>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(reservation) = reservation {
        let id = block_id.to_string();
        if !crate::idempotency::reserve(&mut tx, reservation, (BLOCK, &id, 1)).await? {
            return Ok(false);
        }
    }
    sqlx::query(
        "INSERT INTO scheduling_blocks (block_id, resource_id, during, reason, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(block_id)
    .bind(resource_id)
    .bind(range(interval))
    .bind(reason)
    .bind(user)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// What idempotency records name a block by.
pub const BLOCK: &str = "SchedulingBlock";

/// Block `block_id`: its resource, interval and reason.
///
/// # Errors
///
/// The database error.
pub async fn block(
    pool: &PgPool,
    block_id: Uuid,
) -> Result<Option<(String, Interval, String)>, sqlx::Error> {
    let row: Option<(String, DateTime<Utc>, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT resource_id, lower(during), upper(during), reason
           FROM scheduling_blocks WHERE block_id = $1",
    )
    .bind(block_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(resource, from, to, reason)| (resource, Interval::new(from, to), reason)))
}

/// The blocks of `resource_ids` overlapping `within`.
///
/// # Errors
///
/// The database error.
pub async fn blocks(
    pool: &PgPool,
    resource_ids: &[String],
    within: &Interval,
) -> Result<Vec<(String, Interval)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT resource_id, lower(during) AS start, upper(during) AS end FROM scheduling_blocks
          WHERE resource_id = ANY($1) AND during && $2",
    )
    .bind(resource_ids)
    .bind(range(within))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("resource_id")?,
                Interval::new(r.try_get("start")?, r.try_get("end")?),
            ))
        })
        .collect()
}

/// A service type: how long it takes and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Service {
    pub code: String,
    pub name: String,
    pub minutes: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specialty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type: Option<String>,
    pub capabilities: Vec<String>,
    pub version: i32,
}

const SERVICE_COLUMNS: &str = "code, name, minutes, specialty, room_type, capabilities, version";

fn service_of(row: &sqlx::postgres::PgRow) -> Result<Service, sqlx::Error> {
    Ok(Service {
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        minutes: row.try_get("minutes")?,
        specialty: row.try_get("specialty")?,
        room_type: row.try_get("room_type")?,
        capabilities: row.try_get("capabilities")?,
        version: row.try_get("version")?,
    })
}

/// Creates or replaces a service type; returns it and whether it is new.
///
/// # Errors
///
/// The database error.
pub async fn put_service(
    pool: &PgPool,
    service: &Service,
    user: &str,
    at: DateTime<Utc>,
) -> Result<(Service, bool), sqlx::Error> {
    let row = sqlx::query(&format!(
        "INSERT INTO scheduling_services
            (code, name, minutes, specialty, room_type, capabilities, updated_by, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (code) DO UPDATE
            SET name = EXCLUDED.name, minutes = EXCLUDED.minutes,
                specialty = EXCLUDED.specialty, room_type = EXCLUDED.room_type,
                capabilities = EXCLUDED.capabilities, updated_by = EXCLUDED.updated_by,
                updated_at = EXCLUDED.updated_at, version = scheduling_services.version + 1
         RETURNING {SERVICE_COLUMNS}"
    ))
    .bind(&service.code)
    .bind(&service.name)
    .bind(service.minutes)
    .bind(&service.specialty)
    .bind(&service.room_type)
    .bind(&service.capabilities)
    .bind(user)
    .bind(at)
    .fetch_one(pool)
    .await?;
    let stored = service_of(&row)?;
    let created = stored.version == 1;
    Ok((stored, created))
}

/// The service type `code`, if defined.
///
/// # Errors
///
/// The database error.
pub async fn service(pool: &PgPool, code: &str) -> Result<Option<Service>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {SERVICE_COLUMNS} FROM scheduling_services WHERE code = $1"
    ))
    .bind(code)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(service_of).transpose()
}
