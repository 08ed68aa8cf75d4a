//! `patient-service replay`: the event store's events in their gap-free global order, as
//! NDJSON on stdout (one event a line, in its published form with who, when and which
//! request), with a progress bar on stderr. Filters: aggregate id, event types, time range.
//! National identifiers are masked, as everywhere else.

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::Args;
use event_store::keys::KeyStore;
use event_store::stream::{self, Cursor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::configuration::Settings;
use crate::startup;

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Only events of this aggregate type: `Patient`, `MedicalRecord`, or `Access` (access
    /// entries).
    #[arg(long)]
    pub aggregate_type: Option<String>,
    /// Only the events of this aggregate (a patient id).
    #[arg(long)]
    pub aggregate_id: Option<String>,
    /// Only events of this type (repeatable), e.g. PatientRegistered.
    #[arg(long = "event-type")]
    pub event_types: Vec<String>,
    /// Only events recorded at or after this instant (RFC 3339).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Only events recorded before this instant (RFC 3339).
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
}

impl ReplayArgs {
    fn matches(&self, event: &stream::StoredEvent) -> bool {
        self.aggregate_type
            .as_deref()
            .is_none_or(|t| t == event.aggregate_type)
            && self
                .aggregate_id
                .as_deref()
                .is_none_or(|id| id == event.aggregate_id)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.from.is_none_or(|from| event.recorded_at >= from)
            && self.to.is_none_or(|to| event.recorded_at < to)
    }
}

/// Writes the matching events to stdout.
///
/// # Errors
///
/// When the database fails or stdout is closed.
pub async fn run(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let keys = settings.secrets()?.keys;
    startup::with_database(
        settings,
        |pool| async move { replay(&pool, &keys, &args).await },
    )
    .await
}

async fn replay(pool: &PgPool, keys: &KeyStore, args: &ReplayArgs) -> anyhow::Result<()> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let progress = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut cursor = Cursor::default();
    let mut written = 0u64;
    let mut held_back_since: Option<std::time::Instant> = None;
    loop {
        let mut events = stream::read_after(pool, cursor, 1000).await?;
        stream::open(keys, pool, &mut events).await?;
        let Some(last) = events.last() else {
            // Committed events may wait behind a transaction still open elsewhere: wait for
            // it (briefly), so the replay ends with everything committed, in order.
            if stream::is_held_back(pool, cursor).await? {
                let since = *held_back_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < std::time::Duration::from_secs(30) {
                    tokio::time::sleep(stream::HELD_BACK_POLL).await;
                    continue;
                }
                tracing::warn!("a transaction open for 30 s holds back the newest events; replay stops before them");
            }
            break;
        };
        held_back_since = None;
        cursor = last.cursor();
        for event in events.iter().filter(|e| args.matches(e)) {
            // Opened and not sealed again: an auditor's copy. Still sealed: forgotten.
            let (_, published) = event_store::wire::to_published(event, None)?;
            let data = if published.sealed {
                Value::Null
            } else {
                let mut data: Value = serde_json::from_slice(&published.data)?;
                application::audit::mask_national_identifiers(&mut data);
                data
            };
            let line = json!({
                "position": event.position,
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "sequence": event.sequence,
                "event_type": event.event_type,
                "event_version": event.event_version,
                "recorded_at": event.recorded_at,
                "user_id": event.metadata("user_id"),
                "request_id": event.metadata("request_id"),
                "erased": published.sealed,
                "data": data,
            });
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        progress.inc(events.len() as u64);
    }
    out.flush()?;
    progress.finish_and_clear();
    tracing::info!(written, "replay finished");
    Ok(())
}
