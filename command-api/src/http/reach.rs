//! A patient's data, reached only through the access decision: the HTTP face of
//! [`application::reach`], where every read and change is decided and recorded.

use domain::patient::{Patient, PatientId};

use crate::auth::{access, Action, AuthUser};
use crate::http::{ApiError, AppState};

/// [`application::reach::checked_access`], answered as a problem.
pub(super) async fn checked_access(
    state: &AppState,
    user: &AuthUser,
    action: Action,
    what: &str,
    id: PatientId,
    patient: Option<&Patient>,
) -> Result<Option<access::BreakGlassReason>, ApiError> {
    Ok(
        application::reach::checked_access(&state.services(), user, (action, what), id, patient)
            .await?,
    )
}

/// [`application::reach::changeable_by`], answered as a problem.
pub(super) async fn changeable_by(
    state: &AppState,
    user: &AuthUser,
    action: Action,
    id: PatientId,
) -> Result<(), ApiError> {
    Ok(application::reach::changeable_by(&state.services(), user, action, id).await?)
}
