//! The retention policy: archived patients are kept `retention.archived_days` after archiving,
//! then erased as `forget` with the reason `retention-expired`. Patients on legal hold are left
//! alone and counted.

use chrono::{DateTime, Utc};
use domain::patient::governance::{ErasureReason, GovernanceChange};
use domain::patient::{PatientCommand, PatientError, PatientId};
use event_store::command::{CommandError, CommandMetadata};
use event_store::store::PatientStore;
use projections::patient_search;
use sqlx::PgPool;

use crate::services::UseCaseError;

/// The user id the purge's events are recorded under.
pub const PURGE_USER: &str = "retention-policy";

/// What a purge did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub candidates: usize,
    pub forgotten: usize,
    pub on_legal_hold: usize,
}

/// Erases every patient archived more than `archived_days` before `now` (with `dry_run`, only
/// counts them).
///
/// # Errors
///
/// When the database or the event store fails.
pub async fn purge(
    (pool, store): (&PgPool, &PatientStore),
    archived_days: u32,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Purged, UseCaseError> {
    let cutoff = now - chrono::Duration::days(i64::from(archived_days));
    // Listed first, then erased: erasing empties the read model being paged through.
    let mut candidates = Vec::new();
    loop {
        let page =
            patient_search::archived_before(pool, cutoff, 1000, candidates.len() as u32).await?;
        let more = page.len() > 1000;
        candidates.extend(page.into_iter().take(1000).map(|c| c.id));
        if !more {
            break;
        }
    }
    let mut purged = Purged {
        candidates: candidates.len(),
        ..Purged::default()
    };
    if dry_run {
        return Ok(purged);
    }
    for id in candidates {
        let command = PatientCommand::Govern(GovernanceChange::Forget {
            reason: ErasureReason::RetentionExpired,
            reference: None,
            at: now,
        });
        let metadata = CommandMetadata {
            user_id: PURGE_USER.to_owned(),
            ..CommandMetadata::default()
        };
        match store
            .execute(PatientId::new(id), None, command, metadata)
            .await
        {
            Ok(_) => purged.forgotten += 1,
            Err(CommandError::Rule(PatientError::LegalHoldPreventsErasure)) => {
                purged.on_legal_hold += 1;
            }
            // Forgotten meanwhile, or restored and merged since the read model saw it.
            Err(CommandError::Rule(rule)) => {
                tracing::info!(patient_id = %id, code = rule.code(), "not purged");
            }
            Err(e) => return Err(UseCaseError::Command(e)),
        }
    }
    tracing::info!(
        forgotten = purged.forgotten,
        on_legal_hold = purged.on_legal_hold,
        "retention purge done"
    );
    Ok(purged)
}
