//! Events of the patient aggregate. The Rust names may change; the `event_type` strings and
//! versions are part of the stored history and never do. A new shape gets a new version and an
//! upcaster, never a rewrite of stored events.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::contact::{ContactInformation, Identifier};
pub use super::governance::{
    CareRelationshipEnded, CareRelationshipStarted, ConsentGranted, ConsentWithdrawn,
    LegalHoldPlaced, LegalHoldReleased, PatientForgotten,
};
use super::record::LanguageTag;
use super::record::{Coverage, EmergencyContact, Preferences};
use super::state::PatientStatus;
use super::values::{
    AdministrativeGender, BirthDate, MaritalStatus, Mrn, PatientId, PersonName, Reason,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PatientEvent {
    PatientRegistered(PatientRegistered),
    DemographicsCorrected(DemographicsCorrected),
    PatientArchived(PatientArchived),
    PatientRestored(PatientRestored),
    ContactInformationChanged(ContactInformationChanged),
    IdentifierAdded(IdentifierAdded),
    IdentifierRemoved(IdentifierRemoved),
    PreferencesUpdated(PreferencesUpdated),
    EmergencyContactAdded(EmergencyContactAdded),
    EmergencyContactChanged(EmergencyContactChanged),
    EmergencyContactRemoved(EmergencyContactRemoved),
    CoverageAdded(CoverageAdded),
    CoverageChanged(CoverageChanged),
    CoverageEnded(CoverageEnded),
    PatientMerged(PatientMerged),
    PatientAbsorbed(PatientAbsorbed),
    PatientUnmerged(PatientUnmerged),
    AbsorptionReverted(AbsorptionReverted),
    CareRelationshipStarted(CareRelationshipStarted),
    CareRelationshipEnded(CareRelationshipEnded),
    ConsentGranted(ConsentGranted),
    ConsentWithdrawn(ConsentWithdrawn),
    LegalHoldPlaced(LegalHoldPlaced),
    LegalHoldReleased(LegalHoldReleased),
    PatientForgotten(PatientForgotten),
}

/// This patient was a duplicate and now points to `target_id`, the survivor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientMerged {
    pub target_id: PatientId,
    /// The status to return to on unmerge.
    pub previous_status: PatientStatus,
    pub reason: Reason,
    pub merged_at: DateTime<Utc>,
}

/// This patient survived a merge of `source_id` and gained what it lacked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientAbsorbed {
    pub source_id: PatientId,
    pub gained_identifiers: Vec<Identifier>,
    pub gained_contact: ContactInformation,
    pub reason: Reason,
    pub absorbed_at: DateTime<Utc>,
}

/// This patient's merge was undone; it stands on its own again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientUnmerged {
    pub target_id: PatientId,
    pub restored_status: PatientStatus,
    pub reason: Reason,
    pub unmerged_at: DateTime<Utc>,
}

/// What this patient gained from `source_id` was given back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbsorptionReverted {
    pub source_id: PatientId,
    pub removed_identifiers: Vec<Identifier>,
    pub removed_contact: ContactInformation,
    pub reason: Reason,
    pub reverted_at: DateTime<Utc>,
}

/// The contact information after the change, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactInformationChanged {
    pub contact: ContactInformation,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentifierAdded {
    pub identifier: Identifier,
    pub added_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentifierRemoved {
    pub identifier: Identifier,
    pub reason: Reason,
    pub removed_at: DateTime<Utc>,
}

/// The preferences after the update, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencesUpdated {
    pub preferences: Preferences,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmergencyContactAdded {
    pub contact: EmergencyContact,
    pub added_at: DateTime<Utc>,
}

/// The emergency contact after the change, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmergencyContactChanged {
    pub contact: EmergencyContact,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmergencyContactRemoved {
    pub contact_id: Uuid,
    pub removed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageAdded {
    pub coverage: Coverage,
    pub added_at: DateTime<Utc>,
}

/// The coverage after the change, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageChanged {
    pub coverage: Coverage,
    pub changed_at: DateTime<Utc>,
}

/// The coverage ends on `end`; it stays on record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageEnded {
    pub coverage_id: Uuid,
    pub end: NaiveDate,
    pub reason: Reason,
    pub ended_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientRegistered {
    pub patient_id: PatientId,
    pub mrn: Mrn,
    pub name: PersonName,
    #[serde(default)]
    pub birth_date: Option<BirthDate>,
    pub gender: AdministrativeGender,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marital_status: Option<MaritalStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<LanguageTag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "ContactInformation::is_empty")]
    pub contact: ContactInformation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_override: Option<DuplicateOverride>,
    pub registered_at: DateTime<Utc>,
}

/// Why a patient was registered although the matcher found them a likely duplicate, and of
/// whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicateOverride {
    pub reason: Reason,
    pub candidates: Vec<PatientId>,
}

/// The demographics after the correction, in full, so a consumer needs no earlier event to
/// know the current values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemographicsCorrected {
    pub name: PersonName,
    #[serde(default)]
    pub birth_date: Option<BirthDate>,
    pub gender: AdministrativeGender,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marital_status: Option<MaritalStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<LanguageTag>,
    pub reason: Reason,
    pub corrected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientArchived {
    pub reason: Reason,
    pub archived_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientRestored {
    pub reason: Reason,
    pub restored_at: DateTime<Utc>,
}

impl PatientEvent {
    pub const REGISTERED: &'static str = "PatientRegistered";
    pub const DEMOGRAPHICS_CORRECTED: &'static str = "DemographicsCorrected";
    pub const ARCHIVED: &'static str = "PatientArchived";
    pub const RESTORED: &'static str = "PatientRestored";
}

impl DomainEvent for PatientEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PatientRegistered(_) => Self::REGISTERED,
            Self::DemographicsCorrected(_) => Self::DEMOGRAPHICS_CORRECTED,
            Self::PatientArchived(_) => Self::ARCHIVED,
            Self::PatientRestored(_) => Self::RESTORED,
            Self::ContactInformationChanged(_) => "ContactInformationChanged",
            Self::IdentifierAdded(_) => "IdentifierAdded",
            Self::IdentifierRemoved(_) => "IdentifierRemoved",
            Self::PreferencesUpdated(_) => "PreferencesUpdated",
            Self::EmergencyContactAdded(_) => "EmergencyContactAdded",
            Self::EmergencyContactChanged(_) => "EmergencyContactChanged",
            Self::EmergencyContactRemoved(_) => "EmergencyContactRemoved",
            Self::CoverageAdded(_) => "CoverageAdded",
            Self::CoverageChanged(_) => "CoverageChanged",
            Self::CoverageEnded(_) => "CoverageEnded",
            Self::PatientMerged(_) => "PatientMerged",
            Self::PatientAbsorbed(_) => "PatientAbsorbed",
            Self::PatientUnmerged(_) => "PatientUnmerged",
            Self::AbsorptionReverted(_) => "AbsorptionReverted",
            Self::CareRelationshipStarted(_) => "CareRelationshipStarted",
            Self::CareRelationshipEnded(_) => "CareRelationshipEnded",
            Self::ConsentGranted(_) => "ConsentGranted",
            Self::ConsentWithdrawn(_) => "ConsentWithdrawn",
            Self::LegalHoldPlaced(_) => "LegalHoldPlaced",
            Self::LegalHoldReleased(_) => "LegalHoldReleased",
            Self::PatientForgotten(_) => "PatientForgotten",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
