//! Wakes the readers of the event store (the relay, the stream-fed projectors) when events
//! commit: in this process at once, through a channel rung after every commit that inserted
//! events; in other processes through `NOTIFY events_committed` ([`COMMIT_CHANNEL`]) sent by
//! [`forward`] from a connection of its own, outside every writing transaction. PostgreSQL
//! serialises the commits of transactions that notify, which would undo group commit if every
//! writer notified in its own transaction; the forwarder sends one notification for all the
//! commits rung while it sent the previous one. Readers still poll as a fallback.

use std::sync::OnceLock;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The channel other processes are told of commits on.
pub const COMMIT_CHANNEL: &str = "events_committed";

fn bell() -> &'static watch::Sender<u64> {
    static BELL: OnceLock<watch::Sender<u64>> = OnceLock::new();
    BELL.get_or_init(|| watch::channel(0).0)
}

/// This process's name on [`COMMIT_CHANNEL`]: the payload of its notifications, so its own
/// readers, woken by the bell already, can pass over them.
pub fn this_process() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Says that events committed in this process.
pub fn ring() {
    bell().send_modify(|rung| *rung = rung.wrapping_add(1));
}

/// A receiver that sees every ring after it subscribed (rings while it was not waiting
/// coalesce into one).
pub fn subscribe() -> watch::Receiver<u64> {
    bell().subscribe()
}

/// Sends a notification on [`COMMIT_CHANNEL`] after the rings of this process, one for all
/// those rung while the previous one was being sent, until `shutdown`.
pub async fn forward(pool: PgPool, shutdown: CancellationToken) {
    let mut rung = subscribe();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = rung.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        rung.mark_unchanged();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(COMMIT_CHANNEL)
            .bind(this_process())
            .execute(&pool)
            .await
        {
            // Readers in other processes fall back to their poll.
            tracing::debug!(error.message = %e, "cannot notify other processes of a commit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_wakes_a_subscriber_and_rings_while_busy_coalesce() {
        let mut rung = subscribe();
        rung.mark_unchanged();
        ring();
        ring();
        tokio::time::timeout(std::time::Duration::from_secs(5), rung.changed())
            .await
            .expect("woken")
            .expect("the bell lives");
        rung.mark_unchanged();
        assert!(!rung.has_changed().unwrap());
    }
}
