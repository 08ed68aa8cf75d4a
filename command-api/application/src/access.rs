//! Data permissions: which patient's data a caller may touch, on top of what their roles allow,
//! and the access entry every read (or refused attempt) leaves behind.
//!
//! The role table ([`crate::policy`]) says what a role may do at all. For one patient:
//!
//! - `patient`: only the patient named by the token's `patient_id` claim.
//! - `clinician`: reading a record, and reading or writing its medical record, needs a care relationship with the patient, a consent
//!   directive sharing the record with all clinicians, or emergency access (break-the-glass:
//!   the `X-Break-Glass-Reason` header with a reason code). Emergency access is granted,
//!   flagged and published as `EmergencyAccessGranted`.
//! - every other role the table allows: any patient.
//! - A user of another organization (token `org` claim differing from `auth.organization`)
//!   only reads ([`external_may`]), and only patients whose consent shares their record with
//!   that organization. With `auth.organization` set, a token must name its organization.
//! - Consent (sharing with a role or an organization) grants reading only: writing a
//!   medical record needs the care team or break-the-glass.
//! - Purpose of use `research` (`X-Purpose-Of-Use`) is refused for patients who opted out.
//!
//! A caller refused for a patient who exists gets the same 403 as for one who does not; only
//! a caller who could read any patient learns that an id is unknown (404) or erased (410).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::patient::{Patient, PatientId};
use event_store::chain::ChainKey;
use schemas::access::v1::AccessEntry;
use sqlx::PgPool;
use uuid::Uuid;

use crate::caller::{AuthUser, Refused};
use crate::policy::{self, Action, Role};

pub use crate::caller::{BreakGlassReason, Purpose};

/// What a caller may do with one patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Granted,
    /// Granted under break-the-glass.
    Emergency(BreakGlassReason),
    Denied,
    NotFound,
    Gone,
}

impl Decision {
    /// The answer for a caller refused or pointed nowhere.
    ///
    /// # Errors
    ///
    /// 403, 404 or 410.
    pub fn into_result(self) -> Result<Option<BreakGlassReason>, Refused> {
        match self {
            Self::Granted => Ok(None),
            Self::Emergency(reason) => Ok(Some(reason)),
            Self::Denied => Err(Refused::Forbidden),
            Self::NotFound => Err(Refused::NotFound),
            Self::Gone => Err(Refused::Gone),
        }
    }
}

/// Actions whose data is clinical: clinicians need a relationship, consent or emergency.
fn clinical(action: Action) -> bool {
    matches!(
        action,
        Action::ReadPatient
            | Action::ReadMedicalRecord
            | Action::WriteMedicalRecord
            | Action::SearchMedicalRecords
            | Action::ReadAppointments
    )
}

/// Actions that change data. Consent never grants them, and users of other organizations never
/// do them.
pub fn writes(action: Action) -> bool {
    !matches!(
        action,
        Action::ReadPatient
            | Action::SearchPatients
            | Action::MatchPatients
            | Action::ReviewRetention
            | Action::ReadAuditTrail
            | Action::ReadDataKey
            | Action::ReadDisclosures
            | Action::ReadMedicalRecord
            | Action::SearchMedicalRecords
            | Action::ReadSchedule
            | Action::ReadAppointments
    )
}

/// What a user of another organization may ask for at all: reads that are decided patient by
/// patient (through that patient's consent), and the schedule, which holds no patient data.
/// Searching, matching and listing across patients, and every change, are for this
/// organization's users.
pub fn external_may(action: Action) -> bool {
    matches!(
        action,
        Action::ReadPatient
            | Action::ReadAuditTrail
            | Action::ReadDataKey
            | Action::ReadDisclosures
            | Action::ReadMedicalRecord
            | Action::ReadSchedule
            | Action::ReadAppointments
    )
}

/// How the caller's roles let them at this patient, before looking at the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Any patient.
    Any,
    /// Only if the record lets them (care team, consent or emergency).
    IfRecordAllows,
    /// Nobody.
    None,
}

fn reach(user: &AuthUser, action: Action, id: PatientId) -> Reach {
    // A request granted by SMART patient scopes reaches the launch patient only.
    if user
        .confined_to
        .is_some_and(|patient| patient != id.as_uuid())
    {
        return Reach::None;
    }
    let mut reach = Reach::None;
    for &role in &user.roles {
        if !policy::allows(role, action) {
            continue;
        }
        let this = match role {
            Role::Patient if user.patient_id == Some(id.as_uuid()) => Reach::Any,
            Role::Patient => Reach::None,
            Role::Clinician if clinical(action) => Reach::IfRecordAllows,
            _ => Reach::Any,
        };
        reach = match (reach, this) {
            (Reach::Any, _) | (_, Reach::Any) => Reach::Any,
            (Reach::IfRecordAllows, _) | (_, Reach::IfRecordAllows) => Reach::IfRecordAllows,
            _ => Reach::None,
        };
    }
    reach
}

/// Whether the caller belongs to another organization than this service's. With an
/// organization configured, a caller naming none is not of it (tokens without the claim are
/// refused before this, see the service's token check).
pub fn is_external(user: &AuthUser, home: Option<&str>) -> bool {
    home.is_some_and(|home| user.organization.as_deref() != Some(home))
}

/// Decides whether `user` may do `action` on patient `id`, loaded as `patient` (`None` when
/// the decision needs no record: the caller's roles reach any patient, or none).
pub fn decide(
    user: &AuthUser,
    action: Action,
    id: PatientId,
    patient: Option<&Patient>,
    home_organization: Option<&str>,
) -> Decision {
    let reach = reach(user, action, id);
    let external = is_external(user, home_organization);
    if reach == Reach::None {
        return Decision::Denied;
    }
    let Some(patient) = patient else {
        // Not loaded (or nobody there): only a caller reaching any patient learns so.
        return if reach == Reach::Any && !external {
            Decision::NotFound
        } else {
            Decision::Denied
        };
    };
    if patient.forgotten().is_some() {
        return if reach == Reach::Any && !external {
            Decision::Gone
        } else {
            Decision::Denied
        };
    }
    let Some(record) = patient.record() else {
        return if reach == Reach::Any && !external {
            Decision::NotFound
        } else {
            Decision::Denied
        };
    };
    let governance = &record.governance;
    if external && writes(action) {
        return Decision::Denied;
    }
    if external
        && !user
            .organization
            .as_deref()
            .is_some_and(|org| governance.shared_with_organization(org))
    {
        return Decision::Denied;
    }
    if user.purpose == Purpose::Research && governance.research_opt_out() {
        return Decision::Denied;
    }
    match reach {
        Reach::Any => Decision::Granted,
        Reach::IfRecordAllows if governance.cares_for(&user.id) => Decision::Granted,
        // Consent shares the record for reading; writing needs the care team or emergency.
        Reach::IfRecordAllows if !writes(action) && governance.shared_with_role("clinician") => {
            Decision::Granted
        }
        Reach::IfRecordAllows => match user.break_glass {
            Some(reason) => Decision::Emergency(reason),
            None => Decision::Denied,
        },
        Reach::None => Decision::Denied,
    }
}

/// Whether deciding about `user` and `action` on `id` needs the patient's record: the caller
/// reaches the patient only through it, or comes from another organization, or for research.
pub fn needs_record(
    user: &AuthUser,
    action: Action,
    id: PatientId,
    home_organization: Option<&str>,
) -> bool {
    match reach(user, action, id) {
        Reach::None => false,
        Reach::IfRecordAllows => true,
        Reach::Any => is_external(user, home_organization) || user.purpose == Purpose::Research,
    }
}

/// Whether `user` may change patient `id` with `action` without the record being looked at:
/// their roles reach any patient (a patient: themself), and they are of this organization.
pub fn may_change(
    user: &AuthUser,
    action: Action,
    id: PatientId,
    home_organization: Option<&str>,
) -> bool {
    reach(user, action, id) == Reach::Any && !is_external(user, home_organization)
}

/// Counts of access decisions since the process started, for the `/metrics` endpoint.
#[derive(Debug, Default)]
pub struct AccessCounters {
    /// Break-the-glass grants (each also an `EmergencyAccessGranted` event).
    pub emergency_granted: AtomicU64,
    /// Break-the-glass requests refused by the per-user limit.
    pub emergency_refused: AtomicU64,
    /// Refused accesses to a patient's data.
    pub denied: AtomicU64,
}

/// The default of `auth.break_glass_patients_per_hour`.
pub const DEFAULT_EMERGENCY_LIMIT: u32 = 5;

/// Appends access entries to the event store, and keeps break-the-glass within its limit.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pool: PgPool,
    chain: ChainKey,
    /// Patients one user may open under break-the-glass per hour.
    emergency_limit: u32,
    counters: Arc<AccessCounters>,
}

impl AccessLog {
    pub fn new(pool: PgPool, chain: ChainKey) -> Self {
        Self {
            pool,
            chain,
            emergency_limit: DEFAULT_EMERGENCY_LIMIT,
            counters: Arc::default(),
        }
    }

    /// Lets one user open at most `limit` patients an hour under break-the-glass.
    #[must_use]
    pub fn with_emergency_limit(mut self, limit: u32) -> Self {
        self.emergency_limit = limit;
        self
    }

    pub fn counters(&self) -> &AccessCounters {
        &self.counters
    }

    /// Whether `user`'s break-the-glass access to patient `id` at `at` stays within the
    /// per-user limit (a patient already opened in the last hour counts once), recording it
    /// when `grant`; a refusal is counted and alerted.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn allow_emergency(
        &self,
        user: &AuthUser,
        id: PatientId,
        at: DateTime<Utc>,
        grant: bool,
    ) -> Result<bool, sqlx::Error> {
        let allowed = event_store::access::allow_emergency(
            &self.pool,
            &user.id,
            id.as_uuid(),
            at,
            self.emergency_limit,
            grant,
        )
        .await?;
        if !allowed {
            self.counters
                .emergency_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                alert = "break-the-glass-limit",
                user_id = %user.id,
                patient_id = %id,
                limit = self.emergency_limit,
                "emergency access refused: the user reached the hourly limit"
            );
        }
        Ok(allowed)
    }

    /// Records that `user` did `what` with each of `patients`, granted or not, at `at`.
    ///
    /// # Errors
    ///
    /// The database error when the entry cannot be stored:
    /// the caller must then not answer the data.
    pub async fn record(
        &self,
        user: &AuthUser,
        what: &str,
        patients: &[Uuid],
        decision: Decision,
        at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let granted = matches!(decision, Decision::Granted | Decision::Emergency(_));
        let emergency = match decision {
            Decision::Emergency(reason) => Some(reason.code().to_owned()),
            _ => None,
        };
        if let Some(reason) = &emergency {
            self.counters
                .emergency_granted
                .fetch_add(patients.len() as u64, Ordering::Relaxed);
            tracing::warn!(alert = "break-the-glass", user_id = %user.id, patients = patients.len(), reason, "emergency access granted");
        }
        if !granted {
            self.counters
                .denied
                .fetch_add(patients.len() as u64, Ordering::Relaxed);
        }
        let entries: Vec<AccessEntry> = patients
            .iter()
            .map(|&patient_id| AccessEntry {
                entry_id: Uuid::new_v4(),
                patient_id,
                user_id: user.id.clone(),
                roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                organization: user.organization.clone(),
                action: what.to_owned(),
                purpose: if emergency.is_some() {
                    "emergency".to_owned()
                } else {
                    user.purpose.code().to_owned()
                },
                outcome: if granted { "granted" } else { "denied" }.to_owned(),
                emergency_reason: emergency.clone(),
                request_id: user.request_id.clone(),
                accessed_at: at,
            })
            .collect();
        event_store::access::record(
            &self.pool,
            &self.chain,
            (&entries, user.traceparent.as_deref()),
        )
        .await
    }
}
