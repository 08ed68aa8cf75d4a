//! The background work of the service, in one place, under one runner: the reminder
//! dispatcher ([`reminders`]), wait-list offers ([`waitlist`]), the notification outbox
//! ([`outbox`]), the process managers that follow the event stream ([`follower`]: an
//! archived patient's appointments cancelled, [`archived`]), and the sweep of expired
//! idempotency records. `serve` and `project` run it;
//! each step is retried on the next round when it fails, and every step is safe to repeat
//! (reminders and notifications have derived ids, offers are claims under the exclusion
//! constraint).

pub mod archived;
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
    let mut swept_at: Option<std::time::Instant> = None;
    loop {
        // Expired idempotency records and registration guards go, about once a minute.
        if swept_at.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            let swept = async {
                idempotency.sweep(clock()).await?;
                event_store::registration_guard::sweep(store.pool(), clock()).await
            };
            match swept.await {
                Ok(_) => swept_at = Some(std::time::Instant::now()),
                Err(e) => {
                    tracing::warn!(error.message = %e, "expired idempotency records and registration guards stay for now")
                }
            }
        }
        if let Err(e) = archived.step(clock()).await {
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
