//! Finding patients and reading them: by id (now or as they were), by search, by likeness to a
//! candidate ($match), by the retention policy, and their data key for downstream services.
//! Every patient answered is recorded as an access.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use domain::matching::MatchRecord;
use domain::patient::{Patient, PatientEvent, PatientId};
use event_store::keys::KeyState;
use projections::patient_search::{self, Criteria, Page, PatientSummary, RetentionCandidate};
use schemas::sealed::DataKey;
use uuid::Uuid;

use crate::access::{self, Decision, Purpose};
use crate::audit::verified_history;
use crate::caller::{AuthUser, Refused};
use crate::matching::{self, Match};
use crate::policy::Action;
use crate::reach::checked_access;
use crate::services::{Services, UseCaseError};

/// Patient `id` as they are now, with their version.
///
/// # Errors
///
/// As [`checked_access`]; [`Refused::NotFound`] for nobody.
pub async fn read(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
) -> Result<(Patient, u64), UseCaseError> {
    let loaded = services.store.load(id).await?;
    checked_access(
        services,
        user,
        (Action::ReadPatient, "read"),
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    loaded.ok_or(UseCaseError::Refused(Refused::NotFound))
}

/// Patient `id` as they were at `as_of`, rebuilt from the events recorded until then, with
/// their version then.
///
/// # Errors
///
/// As [`checked_access`]; [`Refused::NotFound`] when nobody had this id then.
pub async fn read_as_of(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
    as_of: DateTime<Utc>,
) -> Result<(Patient, u64), UseCaseError> {
    let loaded = services.store.load(id).await?;
    checked_access(
        services,
        user,
        (Action::ReadPatient, "read-as-of"),
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    let history = verified_history(services, Patient::TYPE, id).await?;
    let mut patient = Patient::default();
    let mut version = 0;
    for event in history.into_iter().take_while(|e| e.recorded_at <= as_of) {
        let event: PatientEvent = serde_json::from_value(event.payload)
            .map_err(|_| UseCaseError::Internal("a stored event does not deserialize".into()))?;
        patient.apply(event);
        version += 1;
    }
    if version == 0 {
        return Err(UseCaseError::Refused(Refused::NotFound));
    }
    Ok((patient, version))
}

/// The patients `criteria` find (a research purpose leaves out those who opted out); each
/// one answered is recorded as an access.
///
/// # Errors
///
/// [`Refused::Forbidden`] for users of other organizations, who reach patients one by one
/// through their consent; the database's error.
pub async fn search(
    services: &Services,
    user: &AuthUser,
    mut criteria: Criteria,
) -> Result<Page, UseCaseError> {
    // Another organization's users, and apps confined to one patient, search no one.
    if access::is_external(user, services.home_organization.as_deref())
        || user.confined_to.is_some()
    {
        return Err(UseCaseError::Refused(Refused::Forbidden));
    }
    criteria.exclude_research_opt_outs = user.purpose == Purpose::Research;
    let page = patient_search::search(&services.pool, &criteria).await?;
    let ids: Vec<Uuid> = page.items.iter().map(|p| p.id).collect();
    record(services, user, "search-result", &ids).await?;
    tracing::info!(results = page.items.len(), "patient search");
    Ok(page)
}

/// The registered patients `candidate` may be, best first, each with their summary (when the
/// search read model has it); each one shown is recorded as an access.
///
/// # Errors
///
/// The database's error.
pub async fn matches(
    services: &Services,
    user: &AuthUser,
    candidate: &MatchRecord,
) -> Result<Vec<(Match, Option<PatientSummary>)>, UseCaseError> {
    if user.confined_to.is_some() {
        return Err(UseCaseError::Refused(Refused::Forbidden));
    }
    let found = matching::find_matches(&services.pool, candidate).await?;
    let ids: Vec<Uuid> = found.iter().map(|m| m.id).collect();
    let summaries = patient_search::by_ids(&services.pool, &ids).await?;
    let shown: Vec<Uuid> = summaries.iter().map(|s| s.id).collect();
    record(services, user, "match-result", &shown).await?;
    tracing::info!(results = found.len(), "patient match");
    Ok(found
        .into_iter()
        .map(|m| {
            let summary = summaries.iter().find(|s| s.id == m.id).cloned();
            (m, summary)
        })
        .collect())
}

/// Archived patients whose retention period has passed, oldest first: a page of `limit` from
/// `offset`, whether there are more, and the cutoff (archived before it).
///
/// # Errors
///
/// The database's error.
pub async fn retention_candidates(
    services: &Services,
    user: &AuthUser,
    (limit, offset): (u32, u32),
) -> Result<(Vec<RetentionCandidate>, bool, DateTime<Utc>), UseCaseError> {
    let cutoff = (services.clock)() - Duration::days(i64::from(services.retention_days));
    let mut items = patient_search::archived_before(&services.pool, cutoff, limit, offset).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let ids: Vec<Uuid> = items.iter().map(|c| c.id).collect();
    record(services, user, "retention-candidate", &ids).await?;
    Ok((items, more, cutoff))
}

/// Patient `id`'s data key, for a downstream service to open their sealed events; the fetch
/// is recorded as an access.
///
/// # Errors
///
/// As [`checked_access`]; [`Refused::Gone`] once the patient is forgotten (the key is
/// destroyed); [`Refused::NotFound`] when the patient has no key.
pub async fn data_key(
    services: &Services,
    user: &AuthUser,
    id: PatientId,
) -> Result<DataKey, UseCaseError> {
    // The same reach as any read: another organization's service needs the patient's consent,
    // a research purpose the patient's not having opted out.
    let loaded = services.store.load(id).await?;
    checked_access(
        services,
        user,
        (Action::ReadDataKey, "data-key"),
        id,
        loaded.as_ref().map(|(p, _)| p),
    )
    .await?;
    let key = services
        .store
        .keys()
        .data_key(&services.pool, &id.to_string())
        .await?;
    match key {
        KeyState::Active(key) => {
            tracing::info!("data key handed out");
            Ok(key)
        }
        KeyState::Destroyed => Err(UseCaseError::Refused(Refused::Gone)),
        KeyState::Absent => Err(UseCaseError::Refused(Refused::NotFound)),
    }
}

/// Records that `user` was shown `patients` as `what`.
async fn record(
    services: &Services,
    user: &AuthUser,
    what: &str,
    patients: &[Uuid],
) -> Result<(), UseCaseError> {
    Ok(services
        .access
        .record(user, what, patients, Decision::Granted, (services.clock)())
        .await?)
}
