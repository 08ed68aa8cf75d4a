//! A record's history as auditors and as-of reads see it: every event of one aggregate, opened,
//! after the same check a load makes.

use domain::patient::PatientId;

use crate::http::{ApiError, AppState};

/// Every event of aggregate `aggregate_type`/`id` in sequence order, opened, after checking the
/// stream as a load does: a row the service did not write is never shown as history.
///
/// # Errors
///
/// 500 with an operator alert when a row does not verify; 503 or 500 when the store fails.
pub(super) async fn verified_history(
    state: &AppState,
    aggregate_type: &str,
    id: PatientId,
) -> Result<Vec<event_store::stream::StoredEvent>, ApiError> {
    let mut history =
        event_store::stream::history(&state.pool, aggregate_type, &id.to_string()).await?;
    if let Err(finding) = event_store::stream::check_history(state.store.chain(), &history) {
        tracing::error!(
            alert = "event-store-tampering",
            aggregate_type,
            aggregate_id = %id,
            sequence = finding.sequence,
            finding = %finding,
            "a stored event does not verify; refusing to show it"
        );
        return Err(ApiError::Internal(Box::new(
            event_store::repository::Unverified(finding),
        )));
    }
    event_store::stream::open(state.store.keys(), &state.pool, &mut history).await?;
    Ok(history)
}
