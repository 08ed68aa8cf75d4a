//! What auditors and patients see of the record's history: the audit log (every event and
//! access entry), a patient's disclosures, and the verified event history of one record.
//! Reading any of it is itself recorded.

use domain::patient::PatientId;
use event_store::stream::StoredEvent;
use projections::audit_log::{self, AuditEntry, Criteria};
use serde_json::Value;

use crate::access::{self, Decision};
use crate::caller::{AuthUser, Refused};
use crate::policy::Action;
use crate::reach::checked_access;
use crate::services::{Services, UseCaseError};

/// Every event of aggregate `aggregate_type`/`id` in sequence order, opened, after checking
/// the stream as a load does: a row the service did not write is never shown as history.
///
/// # Errors
///
/// [`UseCaseError::Internal`] with an operator alert when a row does not verify; the store's
/// error.
pub async fn verified_history(
    services: &Services,
    aggregate_type: &str,
    id: PatientId,
) -> Result<Vec<StoredEvent>, UseCaseError> {
    let mut history =
        event_store::stream::history(&services.pool, aggregate_type, &id.to_string()).await?;
    if let Err(finding) = event_store::stream::check_history(services.store.chain(), &history) {
        tracing::error!(
            alert = "event-store-tampering",
            aggregate_type,
            aggregate_id = %id,
            sequence = finding.sequence,
            finding = %finding,
            "a stored event does not verify; refusing to show it"
        );
        return Err(UseCaseError::Internal(Box::new(
            event_store::repository::Unverified(finding),
        )));
    }
    event_store::stream::open(services.store.keys(), &services.pool, &mut history).await?;
    Ok(history)
}

/// Decides whether `user` may read patient `id`'s audit trail, as any read of their data
/// ([`checked_access`]: another organization needs the patient's consent), and records it as
/// `what`. The trail of a forgotten patient (the fact of the erasure, and who did what before
/// it) stays open to this organization's auditors.
async fn audit_reach(
    services: &Services,
    user: &AuthUser,
    what: &str,
    id: PatientId,
) -> Result<(), UseCaseError> {
    let loaded = services.store.load(id).await?;
    let patient = loaded.as_ref().map(|(p, _)| p);
    let home = services.home_organization.as_deref();
    if patient.is_some_and(|p| p.forgotten().is_some())
        && access::may_change(user, Action::ReadAuditTrail, id, home)
    {
        let at = (services.clock)();
        return Ok(services
            .access
            .record(user, what, &[id.as_uuid()], Decision::Granted, at)
            .await?);
    }
    checked_access(services, user, (Action::ReadAuditTrail, what), id, patient)
        .await
        .map(|_| ())
}

/// The audit log entries `criteria` ask for, oldest first. One patient's trail is decided as
/// any read of their data; the log across patients is for this organization's auditors.
///
/// # Errors
///
/// [`Refused::Forbidden`] for users of other organizations across patients; as
/// [`checked_access`]; the database's error.
pub async fn entries(
    services: &Services,
    user: &AuthUser,
    criteria: &Criteria,
) -> Result<Vec<AuditEntry>, UseCaseError> {
    match criteria.patient_id {
        Some(id) => audit_reach(services, user, "audit-entries", PatientId::new(id)).await?,
        None if access::is_external(user, services.home_organization.as_deref()) => {
            return Err(UseCaseError::Refused(Refused::Forbidden))
        }
        None => {}
    }
    Ok(audit_log::query(&services.pool, criteria).await?)
}

/// Who accessed patient `id`'s record, when, why and with what outcome, oldest first:
/// `limit` entries after `after`.
///
/// # Errors
///
/// As [`checked_access`]; the database's error.
pub async fn disclosures(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
    (after, limit): (i64, i64),
) -> Result<Vec<AuditEntry>, UseCaseError> {
    let loaded = services.store.load(id).await?;
    checked_access(
        services,
        user,
        (Action::ReadDisclosures, "disclosures"),
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    Ok(audit_log::query(
        &services.pool,
        &Criteria {
            patient_id: Some(id.as_uuid()),
            kind: Some("access".into()),
            after: Some(after),
            limit,
            ..Criteria::default()
        },
    )
    .await?)
}

/// Every event of patient `id`'s record of `aggregate_type` (the patient, or their medical
/// record), verified and opened, for an auditor.
///
/// # Errors
///
/// As [`checked_access`]; [`Refused::NotFound`] for a record without events.
pub async fn history(
    services: &Services,
    user: &AuthUser,
    (aggregate_type, id): (&str, PatientId),
) -> Result<Vec<StoredEvent>, UseCaseError> {
    audit_reach(services, user, "history", id).await?;
    let events = verified_history(services, aggregate_type, id).await?;
    if events.is_empty() {
        return Err(UseCaseError::Refused(Refused::NotFound));
    }
    Ok(events)
}

/// Replaces the value of every national identifier in `data` by its masked form.
pub fn mask_national_identifiers(data: &mut Value) {
    match data {
        Value::Object(map) => {
            if map.get("national") == Some(&Value::Bool(true)) {
                if let Some(Value::String(value)) = map.get("value") {
                    let masked = domain::patient::contact::Identifier {
                        system: String::new(),
                        value: value.clone(),
                        national: true,
                    }
                    .display_value();
                    map.insert("value".into(), Value::String(masked));
                }
            }
            map.values_mut().for_each(mask_national_identifiers);
        }
        Value::Array(items) => items.iter_mut().for_each(mask_national_identifiers),
        _ => {}
    }
}
