//! Runs FHIR Bulk Data exports ([`super::export`] accepts them): one at a time per process,
//! each held by a lease in the database, so a process that dies mid-way leaves it to another
//! run (or to itself after a restart), which starts it over.
//!
//! A run reads every patient the caller may read (the same access decision as one read of
//! their medical record), takes their compartment as `Patient/$everything` does, keeps the
//! types and `_since` asked for, and stores each type's lines sealed with the patient's key
//! ([`event_store::exports`]). A system-level export adds the reference data (practitioners,
//! rooms, equipment and their schedules). When it is complete, every patient in it is
//! recorded as disclosed to the caller (one access entry each, `bulk-export`), then the
//! export is marked completed: an export whose disclosures cannot be recorded fails.

use std::collections::HashMap;
use std::time::Duration;

use application::access::{self, Decision};
use application::caller::AuthUser;
use application::policy::{Action, Role};
use domain::patient::PatientId;
use event_store::exports::{Claim, Part};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::everything::resources_of;
use crate::http::AppState;

/// What a run's access entries are recorded as.
pub const ACCESS: &str = "bulk-export";

/// How long a run holds an export without renewing its lease.
const LEASE: chrono::Duration = chrono::Duration::seconds(60);

/// How often a run renews its lease (and records its progress), in patients.
const RENEW_EVERY: usize = 20;

/// How long the runner waits for an export to be asked for before looking again (another
/// process may have accepted it, or a run may have lost its lease).
const POLL: Duration = Duration::from_secs(2);

/// The reference data a system-level export holds beside the patients' compartments.
pub const REFERENCE_TYPES: &[&str] = &["Practitioner", "Location", "Device", "Schedule"];

/// Runs the exports asked for until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    loop {
        let now = (state.clock)();
        match state.exports.claim(now, LEASE).await {
            Ok(Some(claim)) => {
                let export_id = claim.export_id;
                tracing::info!(%export_id, "bulk export started");
                match export(&state, &claim).await {
                    Ok(true) => tracing::info!(%export_id, "bulk export completed"),
                    Ok(false) => tracing::info!(%export_id, "bulk export cancelled or taken over"),
                    Err(e) => {
                        tracing::error!(%export_id, error.message = %e, "bulk export failed");
                        let expires = (state.clock)() + expiry(&state);
                        if let Err(e) = state
                            .exports
                            .fail(&claim, "the export could not be completed", expires)
                            .await
                        {
                            tracing::warn!(%export_id, error.message = %e, "could not mark the export failed; its lease will run out");
                        }
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error.message = %e, "could not look for exports; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = state.export_bell.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// How long an export is kept after it ends (at most a year).
fn expiry(state: &AppState) -> chrono::Duration {
    let secs = state.export_settings.expire_after_secs.min(366 * 86_400);
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(86_400))
}

/// The caller an export was asked by, as recorded with it.
pub fn requester(user: &AuthUser) -> Value {
    json!({
        "roles": user.roles.iter().map(Role::as_str).collect::<Vec<_>>(),
        "organization": user.organization,
        "purpose": user.purpose.code(),
        "session_id": user.session_id,
        "request_id": user.request_id,
        "traceparent": user.traceparent,
    })
}

/// The caller of `claim`, as [`requester`] recorded them.
fn caller_of(claim: &Claim) -> AuthUser {
    let text = |name: &str| claim.requester[name].as_str().map(str::to_owned);
    AuthUser {
        id: claim.requested_by.clone(),
        roles: claim.requester["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Role::parse(r.as_str()?))
            .collect(),
        patient_id: None,
        organization: text("organization"),
        session_id: text("session_id").unwrap_or_default(),
        purpose: text("purpose")
            .and_then(|p| access::Purpose::parse("purpose", &p).ok())
            .unwrap_or(access::Purpose::Treatment),
        break_glass: None,
        request_id: text("request_id"),
        traceparent: text("traceparent"),
        scopes: None,
        launch_patient: None,
        confined_to: None,
    }
}

/// Where each resource type's lines go next: its file, how many lines that file holds, and
/// its next part's number.
#[derive(Default)]
struct Files(HashMap<String, (i32, u32, i32)>);

impl Files {
    /// `lines` of `resource_type` as parts, no file holding more than `max` lines.
    fn parts(&mut self, resource_type: &str, lines: &[String], max: u32) -> Vec<Part> {
        let (file_no, held, next) = self.0.entry(resource_type.to_owned()).or_default();
        let mut parts = Vec::new();
        let mut rest = lines;
        while !rest.is_empty() {
            if *held >= max {
                *file_no += 1;
                *held = 0;
                *next = 0;
            }
            let room = (max - *held) as usize;
            let (taken, after) = rest.split_at(room.min(rest.len()));
            let mut body = Vec::new();
            for line in taken {
                body.extend_from_slice(line.as_bytes());
                body.push(b'\n');
            }
            parts.push(Part {
                resource_type: resource_type.to_owned(),
                file_no: *file_no,
                part_no: *next,
                lines: taken.len() as i32,
                body,
            });
            *held += taken.len() as u32;
            *next += 1;
            rest = after;
        }
        parts
    }
}

/// Runs `claim`'s export. False when the run lost it (cancelled, or taken over).
async fn export(state: &AppState, claim: &Claim) -> anyhow::Result<bool> {
    let user = caller_of(claim);
    let max = state.export_settings.max_resources_per_file.max(1);
    let wanted = |body: &Value, changed: Option<chrono::DateTime<chrono::Utc>>| {
        let name = body["resourceType"].as_str().unwrap_or_default();
        claim.types.iter().any(|t| t == name)
            && match (claim.since, changed) {
                (Some(since), Some(changed)) => changed >= since,
                _ => true,
            }
    };
    if !caught_up(state, claim).await? {
        return Ok(false);
    }
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'Patient'
          ORDER BY aggregate_id",
    )
    .fetch_all(&state.pool)
    .await?;
    let total = i32::try_from(ids.len()).unwrap_or(i32::MAX);
    let mut files = Files::default();
    let mut disclosed: Vec<Uuid> = Vec::new();
    for (done, raw) in ids.iter().enumerate() {
        if done % RENEW_EVERY == 0 {
            let done = i32::try_from(done).unwrap_or(i32::MAX);
            if !state
                .exports
                .renew(claim, (done, Some(total)), ((state.clock)(), LEASE))
                .await?
            {
                return Ok(false);
            }
        }
        let Ok(id) = PatientId::parse("id", raw) else {
            continue;
        };
        let Some((patient, version)) = state.store.load(id).await? else {
            continue;
        };
        let decision = access::decide(
            &user,
            Action::ReadMedicalRecord,
            id,
            Some(&patient),
            state.home_organization.as_deref(),
        );
        if decision != Decision::Granted || patient.record().is_none() {
            continue;
        }
        let compartment =
            application::compartment::gather(state.services(), &user, id, (patient, version))
                .await?;
        let Some(record) = compartment.patient.record() else {
            continue;
        };
        let mut by_type: Vec<(String, Vec<String>)> = Vec::new();
        for (body, changed) in resources_of(&compartment, record) {
            if !wanted(&body, changed) {
                continue;
            }
            let name = body["resourceType"].as_str().unwrap_or_default().to_owned();
            let line = body.to_string();
            match by_type.iter_mut().find(|(t, _)| *t == name) {
                Some((_, lines)) => lines.push(line),
                None => by_type.push((name, vec![line])),
            }
        }
        if by_type.is_empty() {
            continue;
        }
        let parts: Vec<Part> = by_type
            .iter()
            .flat_map(|(name, lines)| files.parts(name, lines, max))
            .collect();
        if state.exports.write(claim, Some(raw), parts).await? {
            disclosed.push(id.as_uuid());
        }
    }
    if claim.level == "system" {
        let reference = application::resources::resources(
            state.services(),
            application::resources::ResourceFilter {
                kind: None,
                specialty: None,
                room_type: None,
            },
        )
        .await?;
        let mut by_type: HashMap<&str, Vec<String>> = HashMap::new();
        for resource in &reference {
            let mut bodies = vec![super::reference::to_fhir(resource)];
            if resource.kind == "practitioner" {
                bodies.push(super::schedule::to_schedule(resource));
            }
            for body in bodies {
                if let Some(name) = REFERENCE_TYPES
                    .iter()
                    .find(|t| body["resourceType"] == **t)
                    .filter(|t| claim.types.iter().any(|w| w == **t))
                {
                    by_type.entry(name).or_default().push(body.to_string());
                }
            }
        }
        let mut parts = Vec::new();
        for name in REFERENCE_TYPES {
            if let Some(lines) = by_type.get(name) {
                parts.extend(files.parts(name, lines, max));
            }
        }
        if !state.exports.write(claim, None, parts).await? {
            return Ok(false);
        }
    }
    let now = (state.clock)();
    if !state
        .exports
        .renew(claim, (total, Some(total)), (now, LEASE))
        .await?
    {
        return Ok(false);
    }
    for chunk in disclosed.chunks(1_000) {
        state
            .access
            .record(&user, ACCESS, chunk, Decision::Granted, now)
            .await?;
    }
    Ok(state
        .exports
        .complete(claim, (now, now + expiry(state)))
        .await?)
}

/// The longest a run waits for the read models to hold what the store held when it started.
const CATCH_UP: Duration = Duration::from_secs(300);

/// Waits until the read models a compartment is read from (medical record items,
/// appointments) hold every event stored before the export started: an export holds what
/// was committed before its `transactionTime`. False when the run lost the export meanwhile.
///
/// # Errors
///
/// The database error; the read models still behind after [`CATCH_UP`].
async fn caught_up(state: &AppState, claim: &Claim) -> anyhow::Result<bool> {
    let position: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(&state.pool)
        .await?;
    let deadline = std::time::Instant::now() + CATCH_UP;
    loop {
        let behind = projections::runtime::behind(
            &state.pool,
            "medical_records",
            &["MedicalRecord", "ClinicalEntry"],
            position,
        )
        .await?
            + projections::runtime::behind(&state.pool, "appointments", &["Appointment"], position)
                .await?;
        if behind == 0 {
            return Ok(true);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the read models are {behind} aggregates behind the store"
        );
        if !state
            .exports
            .renew(claim, (0, None), ((state.clock)(), LEASE))
            .await?
        {
            return Ok(false);
        }
        // Each look scans the stored events of those aggregates: not too often.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_holds_more_lines_than_the_most_and_parts_number_from_zero_in_each() {
        let mut files = Files::default();
        let lines = |n: usize| (0..n).map(|i| format!("{{\"n\":{i}}}")).collect::<Vec<_>>();
        let first = files.parts("Observation", &lines(3), 4);
        let second = files.parts("Observation", &lines(6), 4);
        let other = files.parts("Patient", &lines(1), 4);
        let placed: Vec<(i32, i32, i32)> = first
            .iter()
            .chain(&second)
            .map(|p| (p.file_no, p.part_no, p.lines))
            .collect();
        assert_eq!(placed, [(0, 0, 3), (0, 1, 1), (1, 0, 4), (2, 0, 1)]);
        assert_eq!((other[0].file_no, other[0].part_no), (0, 0));
        assert_eq!(
            String::from_utf8(first[0].body.clone()).unwrap(),
            "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
        );
    }
}
