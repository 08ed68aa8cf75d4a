//! Merging a duplicate into the patient who survives, and undoing it: one unit of work on
//! both records ([`PatientStore::execute_together`]), so a crash leaves a merge whole or
//! absent.
//!
//! [`PatientStore::execute_together`]: event_store::store::PatientStore::execute_together

use chrono::{DateTime, Utc};
use domain::patient::{Patient, PatientCommand, PatientError, PatientId, Reason};
use domain::FieldError;
use event_store::command::CommandMetadata;

use crate::caller::{AuthUser, Refused};
use crate::policy::Action;
use crate::reach::changeable_by;
use crate::services::{Services, UseCaseError};

/// Patient `source`, at `expected_version`, is a duplicate of `target`.
#[derive(Debug, Clone)]
pub struct Merge {
    pub source: PatientId,
    pub expected_version: u64,
    pub target: PatientId,
    pub reason: Reason,
}

/// Merges `merge.source` into `merge.target`: the source points to the survivor, which gains
/// the identifiers and contact points it lacked. The caller's right to change the source is
/// checked before (it decides which answer comes first); the survivor's is checked here.
/// Returns the source and its version after the merge.
///
/// # Errors
///
/// [`UseCaseError::Refused`] for the survivor, [`UseCaseError::Invalid`] when nobody is
/// registered as `target_id`, or the rule or store error of either record.
pub async fn merge(
    services: &Services,
    user: &AuthUser,
    merge: Merge,
    metadata: CommandMetadata,
    now: DateTime<Utc>,
) -> Result<(Patient, u64), UseCaseError> {
    let Merge {
        source,
        expected_version,
        target,
        reason,
    } = merge;
    changeable_by(services, user, Action::MergePatients, target).await?;
    let (source_patient, _) = services
        .store
        .load(source)
        .await?
        .ok_or(UseCaseError::Refused(Refused::NotFound))?;
    if services.store.load(target).await?.is_none() {
        return Err(UseCaseError::Invalid(
            FieldError::new("target_id", "no patient has this id").into(),
        ));
    }
    let record = source_patient.record();
    let absorb = PatientCommand::Absorb {
        source,
        identifiers: record.map(|r| r.identifiers.clone()).unwrap_or_default(),
        contact: record.map(|r| r.contact.clone()).unwrap_or_default(),
        reason: reason.clone(),
        at: now,
    };
    let merge = PatientCommand::MergeInto {
        target,
        reason,
        at: now,
    };
    // The source's expected version makes the absorbed identifiers and contact points the
    // ones it still has.
    let merged = together(
        services,
        (source, expected_version, merge),
        (target, absorb),
        metadata,
    )
    .await?;
    tracing::info!(%target, "patient merged");
    Ok(merged)
}

/// Undoes the merge of `source` (at `expected_version`): the survivor gives back what it
/// gained. Returns the source and its version after it.
///
/// # Errors
///
/// [`PatientError::NotMerged`] when the source is not merged; as [`merge`] otherwise.
pub async fn unmerge(
    services: &Services,
    user: &AuthUser,
    (source, expected_version): (PatientId, u64),
    reason: Reason,
    metadata: CommandMetadata,
    now: DateTime<Utc>,
) -> Result<(Patient, u64), UseCaseError> {
    let (before, _) = services
        .store
        .load(source)
        .await?
        .ok_or(UseCaseError::Refused(Refused::NotFound))?;
    let target = before
        .record()
        .and_then(|r| r.merged_into)
        .ok_or(UseCaseError::Rule(PatientError::NotMerged))?;
    changeable_by(services, user, Action::MergePatients, target).await?;
    let undo = PatientCommand::Unmerge {
        reason: reason.clone(),
        at: now,
    };
    let revert = PatientCommand::RevertAbsorption {
        source,
        reason,
        at: now,
    };
    let unmerged = together(
        services,
        (source, expected_version, undo),
        (target, revert),
        metadata,
    )
    .await?;
    tracing::info!(%target, "patient unmerged");
    Ok(unmerged)
}

/// Runs the source's command (at its expected version) and the survivor's as one unit of
/// work; returns the source and its version after it.
async fn together(
    services: &Services,
    (source, expected_version, on_source): (PatientId, u64, PatientCommand),
    (target, on_target): (PatientId, PatientCommand),
    metadata: CommandMetadata,
) -> Result<(Patient, u64), UseCaseError> {
    let mut changed = services
        .store
        .execute_together(
            vec![
                (source, Some(expected_version), on_source),
                (target, None, on_target),
            ],
            metadata,
        )
        .await?;
    Ok(changed.swap_remove(0))
}
