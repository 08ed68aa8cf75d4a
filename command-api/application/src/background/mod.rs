//! The background work of the service, in one place, under one runner: the reminder
//! dispatcher ([`reminders`]), wait-list offers ([`waitlist`]), the notification outbox
//! ([`outbox`]), the process managers that follow the event stream ([`follower`]: an
//! archived patient's appointments cancelled, [`archived`]; a fulfilled appointment's
//! encounter recorded, [`encounters`]), and the sweep of expired
//! idempotency records and registration guards. `serve`, `project` and `background` run it;
//! one runner is active at a time across processes (it holds a PostgreSQL advisory lock,
//! [`Leadership`]); the others stand by and take over within a second of its stopping. Each
//! step is retried on the next round when it fails, and every step is safe to repeat
//! (reminders and notifications have derived ids, offers are claims under the exclusion
//! constraint, process managers use expected versions).

pub mod archived;
pub mod encounters;
pub mod follower;
pub mod outbox;
pub mod reminders;
pub mod waitlist;

use std::time::Duration;

use event_store::schedule::AppointmentStore;
use event_store::store::PatientStore;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// How often due reminders are looked for.
const POLL: Duration = Duration::from_millis(200);

/// How often a standing-by runner tries to become the active one.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The advisory lock the active runner holds: a fixed pair of keys ("pati", "bgnd" in ASCII),
/// so every version of the service agrees on it. Two 32-bit keys are a key space apart from
/// the 64-bit ones the registration guard locks (`pg_locks.objsubid` 2, not 1).
const LOCK_KEY: (i32, i32) = (0x7061_7469, 0x6267_6e64);

/// The active runner's hold on [`LOCK_KEY`]: a session-level advisory lock on a connection of
/// its own, so it goes when the process (or its connection) dies.
pub struct Leadership {
    pool: sqlx::PgPool,
    connection: Option<sqlx::PgConnection>,
    /// A standby's connection, kept between its tries.
    standby: Option<sqlx::PgConnection>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("held", &self.connection.is_some())
            .finish()
    }
}

impl Leadership {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self {
            pool,
            connection: None,
            standby: None,
        }
    }

    /// Whether this runner holds the lock: checks that its connection still lives, or tries
    /// to take the lock on a new one.
    pub async fn hold(&mut self) -> bool {
        if let Some(connection) = &mut self.connection {
            if sqlx::query("SELECT 1")
                .execute(&mut *connection)
                .await
                .is_ok()
            {
                return true;
            }
            tracing::warn!("lost the connection holding the background lock; standing by");
            self.connection = None;
        }
        let mut connection = match self.standby.take() {
            Some(connection) => connection,
            None => match self.pool.acquire().await {
                Ok(pooled) => pooled.detach(),
                Err(_) => return false,
            },
        };
        let taken: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(LOCK_KEY.0)
            .bind(LOCK_KEY.1)
            .fetch_one(&mut connection)
            .await;
        match taken {
            Ok(true) => {
                tracing::info!("this process runs the background work");
                self.connection = Some(connection);
                true
            }
            // Another runner is active: try again on this connection next time.
            Ok(false) => {
                self.standby = Some(connection);
                false
            }
            // A broken connection is dropped; the next try takes a new one.
            Err(_) => false,
        }
    }
}

/// How often expired idempotency records are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Runs the process managers, reminders, the wait list and the outbox (and sweeps expired
/// idempotency records) until `shutdown`.
pub async fn run(
    store: PatientStore,
    appointments: AppointmentStore,
    settings: crate::settings::SchedulingSettings,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let idempotency = event_store::idempotency::IdempotencyKeys::new(store.pool().clone());
    let archived = follower::Follower::new(
        store.pool().clone(),
        store.keys().clone(),
        store.chain().clone(),
        archived::CancelAppointmentsOfArchived {
            patients: store.clone(),
            appointments: appointments.clone(),
        },
    );
    let encounters = follower::Follower::new(
        store.pool().clone(),
        store.keys().clone(),
        store.chain().clone(),
        encounters::EncounterOfFulfilledAppointment {
            appointments: appointments.clone(),
            entries: event_store::records::ClinicalEntryStore::new(
                store.pool().clone(),
                store.keys().clone(),
                store.chain().clone(),
            ),
        },
    );
    let mut swept_at: Option<std::time::Instant> = None;
    let mut leadership = Leadership::new(store.pool().clone());
    loop {
        // Only the runner holding the lock works; the others wait their turn.
        if !leadership.hold().await {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(STANDBY_POLL) => continue,
            }
        }
        // Expired idempotency records, registration guards and bulk exports go, about once a
        // minute.
        if swept_at.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            let swept = async {
                idempotency.sweep(clock()).await?;
                event_store::exports::sweep(store.pool(), clock()).await?;
                event_store::registration_guard::sweep(store.pool(), clock()).await
            };
            match swept.await {
                Ok(_) => swept_at = Some(std::time::Instant::now()),
                Err(e) => {
                    tracing::warn!(error.message = %e, "expired idempotency records, registration guards and exports stay for now")
                }
            }
        }
        if let Err(e) = archived.step(clock()).await {
            tracing::warn!(error.message = %e, "process managers could not run now; retrying");
        }
        if let Err(e) = encounters.step(clock()).await {
            tracing::warn!(error.message = %e, "process managers could not run now; retrying");
        }
        if let Err(e) = reminders::dispatch_due(&store, &appointments, clock()).await {
            tracing::warn!(error.message = %e, "reminders could not be dispatched now; retrying");
        }
        if let Err(e) = waitlist::process(&store, &appointments, &settings, clock()).await {
            tracing::warn!(error.message = %e, "the wait list could not be processed now; retrying");
        }
        if let Err(e) = outbox::drain_outbox(&appointments).await {
            tracing::warn!(error.message = %e, "notifications could not be sent now; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
