//! A patient's data, reached only through the access decision ([`access::decide`]): every
//! read of it and every change to it is decided here, and recorded as an access entry.

use domain::patient::{Patient, PatientError, PatientId};

use crate::auth::{access, Action, AuthUser};
use crate::http::{ApiError, AppState};

/// Decides whether `user` may do `action` on patient `id` (as loaded) and records the access
/// as `what`, granted or denied. Unknown and erased patients leave no entry.
///
/// # Errors
///
/// 403, 404 or 410 as [`access::decide`] says; 503 when the entry cannot be recorded (the
/// data is then not answered).
pub(super) async fn checked_access(
    state: &AppState,
    user: &AuthUser,
    action: Action,
    what: &str,
    id: PatientId,
    patient: Option<&Patient>,
) -> Result<Option<access::BreakGlassReason>, ApiError> {
    let mut decision = access::decide(
        user,
        action,
        id,
        patient,
        state.home_organization.as_deref(),
    );
    let at = (state.clock)();
    // Past the break-the-glass limit every such request is refused alike, whether the patient
    // exists or not (a 429 only for those who exist would tell which ids do).
    let asks_emergency = user.break_glass.is_some()
        && !matches!(decision, access::Decision::Granted | access::Decision::Gone);
    let over_limit = asks_emergency
        && !state
            .access
            .allow_emergency(
                user,
                id,
                at,
                matches!(decision, access::Decision::Emergency(_)),
            )
            .await?;
    if over_limit {
        decision = access::Decision::Denied;
    }
    if matches!(
        decision,
        access::Decision::Granted | access::Decision::Emergency(_) | access::Decision::Denied
    ) {
        state
            .access
            .record(user, what, &[id.as_uuid()], decision, at)
            .await?;
    }
    if over_limit {
        return Err(ApiError::EmergencyAccessLimit);
    }
    Ok(decision.into_result()?)
}

/// Loads the patient, decides whether `user` may do `action` on them and records the access
/// as `what`. Returns the patient.
pub(super) async fn reach(
    state: &AppState,
    user: &AuthUser,
    action: Action,
    what: &str,
    id: PatientId,
) -> Result<Patient, ApiError> {
    let loaded = state.store.load(id).await?;
    checked_access(
        state,
        user,
        action,
        what,
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    loaded.map(|(p, _)| p).ok_or(ApiError::NotFound)
}

/// Refuses changes to the medical record of an archived or merged patient.
pub(super) fn changeable(patient: &Patient) -> Result<(), ApiError> {
    match patient.record().map(|r| r.status) {
        Some(domain::patient::PatientStatus::Active) => Ok(()),
        Some(domain::patient::PatientStatus::Merged) => {
            Err(ApiError::Rule(PatientError::MergedPatientCannotBeChanged))
        }
        Some(domain::patient::PatientStatus::Archived) => Err(ApiError::Rule(
            PatientError::ArchivedPatientCannotBeCorrected,
        )),
        None => Err(ApiError::NotFound),
    }
}

/// Allows `user` to change patient `id` with `action` only if [`access::may_change`] says so;
/// a refusal is recorded as an access entry.
///
/// # Errors
///
/// 403 when refused (whether or not the patient exists); 503 when the entry cannot be stored.
pub(super) async fn changeable_by(
    state: &AppState,
    user: &AuthUser,
    action: Action,
    id: PatientId,
) -> Result<(), ApiError> {
    if access::may_change(user, action, id, state.home_organization.as_deref()) {
        return Ok(());
    }
    state
        .access
        .record(
            user,
            &format!("{action:?}"),
            &[id.as_uuid()],
            access::Decision::Denied,
            (state.clock)(),
        )
        .await?;
    Err(ApiError::Forbidden)
}
