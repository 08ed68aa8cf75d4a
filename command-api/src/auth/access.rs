//! Data permissions: which patient's data a caller may touch, on top of what their roles allow,
//! and the access entry every read (or refused attempt) leaves behind.
//!
//! The role table ([`super::policy`]) says what a role may do at all. For one patient:
//!
//! - `patient`: only the patient named by the token's `patient_id` claim.
//! - `clinician`: reading a record, and reading or writing its medical record, needs a care relationship with the patient, a consent
//!   directive sharing the record with all clinicians, or emergency access (break-the-glass:
//!   the `X-Break-Glass-Reason` header with a reason code). Emergency access is granted,
//!   flagged and published as `EmergencyAccessGranted`.
//! - every other role the table allows: any patient.
//! - A user of another organization (token `org` claim differing from `auth.organization`)
//!   reaches only patients whose consent shares their record with that organization.
//! - Purpose of use `research` (`X-Purpose-Of-Use`) is refused for patients who opted out.
//!
//! A caller refused for a patient who exists gets the same 403 as for one who does not; only
//! a caller who could read any patient learns that an id is unknown (404) or erased (410).

use chrono::{DateTime, Utc};
use domain::patient::{Patient, PatientId};
use event_store::chain::ChainKey;
use schemas::access::v1::AccessEntry;
use sqlx::PgPool;
use uuid::Uuid;

use super::policy::{self, Action, Role};
use super::AuthUser;
use crate::http::ApiError;

domain::code_enum!(
    /// Why of a request: HL7 purpose-of-use, simplified.
    Purpose {
        Treatment = "treatment",
        Payment = "payment",
        Operations = "operations",
        Research = "research",
    }
);

domain::code_enum!(
    /// The reason codes accepted for break-the-glass. Codes, never free text, so the audit
    /// log stays free of patient data.
    BreakGlassReason {
        EmergencyTreatment = "emergency-treatment",
        PatientUnableToConsent = "patient-unable-to-consent",
        UrgentClinicalNeed = "urgent-clinical-need",
        ImminentThreat = "imminent-threat",
    }
);

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
    pub fn into_result(self) -> Result<Option<BreakGlassReason>, ApiError> {
        match self {
            Self::Granted => Ok(None),
            Self::Emergency(reason) => Ok(Some(reason)),
            Self::Denied => Err(ApiError::Forbidden),
            Self::NotFound => Err(ApiError::NotFound),
            Self::Gone => Err(ApiError::Gone),
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

/// Whether the caller belongs to another organization than this service's.
pub fn is_external(user: &AuthUser, home: Option<&str>) -> bool {
    matches!((home, user.organization.as_deref()), (Some(home), Some(org)) if home != org)
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
        Reach::IfRecordAllows
            if governance.cares_for(&user.id) || governance.shared_with_role("clinician") =>
        {
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

/// Appends access entries to the event store.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pool: PgPool,
    chain: ChainKey,
}

impl AccessLog {
    pub fn new(pool: PgPool, chain: ChainKey) -> Self {
        Self { pool, chain }
    }

    /// Records that `user` did `what` with each of `patients`, granted or not, at `at`.
    ///
    /// # Errors
    ///
    /// [`ApiError::Unavailable`] or [`ApiError::Internal`] when the entry cannot be stored:
    /// the caller must then not answer the data.
    pub async fn record(
        &self,
        user: &AuthUser,
        what: &str,
        patients: &[Uuid],
        decision: Decision,
        at: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let granted = matches!(decision, Decision::Granted | Decision::Emergency(_));
        let emergency = match decision {
            Decision::Emergency(reason) => Some(reason.code().to_owned()),
            _ => None,
        };
        if let Some(reason) = &emergency {
            tracing::warn!(user_id = %user.id, patients = patients.len(), reason, "emergency access granted");
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
        event_store::access::record(&self.pool, &self.chain, &entries)
            .await
            .map_err(ApiError::from)
    }
}
