//! Changing a patient's record: the use case behind every command on one existing patient
//! (demographics, contact, identifiers, preferences, coverages, emergency contacts, care team,
//! consent, legal hold, archive, restore, erasure).

use domain::patient::{Patient, PatientCommand, PatientId};
use event_store::command::CommandMetadata;

use crate::caller::AuthUser;
use crate::policy::Action;
use crate::reach::changeable_by;
use crate::services::{Services, UseCaseError};

/// Runs `command` (the caller's `action`) on patient `id`, refused unless the patient is at
/// `expected_version` (`If-Match`), when given. Returns the patient and their version after it.
///
/// # Errors
///
/// [`UseCaseError::Refused`] when `user` may not change the patient; the command's rule, a
/// stale version, or the store's error.
pub async fn change(
    services: &Services,
    user: &AuthUser,
    (action, command): (Action, PatientCommand),
    (id, expected_version): (PatientId, Option<u64>),
    metadata: CommandMetadata,
) -> Result<(Patient, u64), UseCaseError> {
    changeable_by(services, user, action, id).await?;
    let (patient, version) = services
        .store
        .execute(id, expected_version, command, metadata)
        .await?;
    tracing::info!(version, "patient changed");
    Ok((patient, version))
}
