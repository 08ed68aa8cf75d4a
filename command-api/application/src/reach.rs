//! A patient's data, reached only through the access decision ([`access::decide`]): every
//! read of it and every change to it is decided here, and recorded as an access entry.

use domain::patient::{Patient, PatientError, PatientId, PatientStatus};

use crate::access::{self, BreakGlassReason, Decision};
use crate::caller::{AuthUser, Refused};
use crate::policy::Action;
use crate::services::{Services, UseCaseError};

/// Decides whether `user` may do `action` on patient `id` (as loaded) and records the access
/// as `what`, granted or denied. Unknown and erased patients leave no entry.
///
/// # Errors
///
/// [`UseCaseError::Refused`] as [`access::decide`] says; [`UseCaseError::EmergencyAccessLimit`]
/// past the break-the-glass limit; [`UseCaseError::Database`] when the entry cannot be
/// recorded (the data is then not answered).
pub async fn checked_access(
    services: &Services,
    user: &AuthUser,
    (action, what): (Action, &str),
    id: PatientId,
    patient: Option<&Patient>,
) -> Result<Option<BreakGlassReason>, UseCaseError> {
    let mut decision = access::decide(
        user,
        action,
        id,
        patient,
        services.home_organization.as_deref(),
    );
    let at = (services.clock)();
    // Past the break-the-glass limit every such request is refused alike, whether the patient
    // exists or not (a 429 only for those who exist would tell which ids do).
    let asks_emergency =
        user.break_glass.is_some() && !matches!(decision, Decision::Granted | Decision::Gone);
    let over_limit = asks_emergency
        && !services
            .access
            .allow_emergency(user, id, at, matches!(decision, Decision::Emergency(_)))
            .await?;
    if over_limit {
        decision = Decision::Denied;
    }
    if matches!(
        decision,
        Decision::Granted | Decision::Emergency(_) | Decision::Denied
    ) {
        services
            .access
            .record(user, what, &[id.as_uuid()], decision, at)
            .await?;
    }
    if over_limit {
        return Err(UseCaseError::EmergencyAccessLimit);
    }
    Ok(decision.into_result()?)
}

/// Loads the patient, decides whether `user` may do `action` on them and records the access
/// as `what`. Returns the patient.
///
/// # Errors
///
/// As [`checked_access`]; [`Refused::NotFound`] when nobody has this id.
pub async fn reach(
    services: &Services,
    user: &AuthUser,
    (action, what): (Action, &str),
    id: PatientId,
) -> Result<Patient, UseCaseError> {
    let loaded = services.store.load(id).await?;
    checked_access(
        services,
        user,
        (action, what),
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    loaded
        .map(|(p, _)| p)
        .ok_or(UseCaseError::Refused(Refused::NotFound))
}

/// Refuses changes to the medical record of an archived or merged patient.
///
/// # Errors
///
/// The rule the patient's status breaks; [`Refused::NotFound`] for nobody.
pub fn changeable(patient: &Patient) -> Result<(), UseCaseError> {
    match patient.record().map(|r| r.status) {
        Some(PatientStatus::Active) => Ok(()),
        Some(PatientStatus::Merged) => Err(UseCaseError::Rule(
            PatientError::MergedPatientCannotBeChanged,
        )),
        Some(PatientStatus::Archived) => Err(UseCaseError::Rule(
            PatientError::ArchivedPatientCannotBeCorrected,
        )),
        None => Err(UseCaseError::Refused(Refused::NotFound)),
    }
}

/// Allows `user` to change patient `id` with `action` only if [`access::may_change`] says so;
/// a refusal is recorded as an access entry.
///
/// # Errors
///
/// [`Refused::Forbidden`] when refused (whether or not the patient exists);
/// [`UseCaseError::Database`] when the entry cannot be stored.
pub async fn changeable_by(
    services: &Services,
    user: &AuthUser,
    action: Action,
    id: PatientId,
) -> Result<(), UseCaseError> {
    if access::may_change(user, action, id, services.home_organization.as_deref()) {
        return Ok(());
    }
    services
        .access
        .record(
            user,
            &format!("{action:?}"),
            &[id.as_uuid()],
            Decision::Denied,
            (services.clock)(),
        )
        .await?;
    Err(UseCaseError::Refused(Refused::Forbidden))
}
