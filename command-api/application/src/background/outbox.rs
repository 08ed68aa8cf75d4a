//! The notification outbox: notices (wait-list offers) written with the command that caused
//! them, sent once each after it committed.

use event_store::schedule::{self, AppointmentStore};

/// Sends what the outbox holds, each once, and empties it.
///
/// # Errors
///
/// The outbox could not be read.
pub async fn drain_outbox(appointments: &AppointmentStore) -> Result<usize, sqlx::Error> {
    let mut sent = 0;
    for (id, patient, event) in schedule::outbox(appointments.pool(), 100).await? {
        match appointments.notify(id, patient, event).await {
            Ok(first_time) => {
                sent += usize::from(first_time);
                schedule::sent(appointments.pool(), id).await?;
            }
            Err(e) => {
                tracing::warn!(notification_id = %id, error.message = %e, "notification not sent now")
            }
        }
    }
    Ok(sent)
}
