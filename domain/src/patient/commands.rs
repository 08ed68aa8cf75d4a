//! Commands of the patient aggregate, built only from validated value types. Each carries the
//! instant it was issued, so deciding never reads a clock.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::contact::{ContactInformation, Identifier};
use super::events::DuplicateOverride;
use super::governance::GovernanceChange;
use super::record::LanguageTag;
use super::record::{Coverage, EmergencyContact, Preferences};
use super::values::{
    AdministrativeGender, BirthDate, MaritalStatus, Mrn, PatientId, PersonName, Reason,
};

#[derive(Debug, Clone, PartialEq)]
pub enum PatientCommand {
    Register(RegisterPatient),
    CorrectDemographics(CorrectDemographics),
    Archive(ArchivePatient),
    Restore(RestorePatient),
    /// A change to an active patient's record other than demographics.
    Change(RecordChange),
    /// Care relationships, consent, legal holds and erasure.
    Govern(GovernanceChange),
    /// This patient is a duplicate of `target`, which survives.
    MergeInto {
        target: PatientId,
        reason: Reason,
        at: DateTime<Utc>,
    },
    /// This patient survives a merge of `source`, gaining the identifiers and contact
    /// points it lacks.
    Absorb {
        source: PatientId,
        identifiers: Vec<Identifier>,
        contact: ContactInformation,
        reason: Reason,
        at: DateTime<Utc>,
    },
    /// Undoes this patient's merge into another.
    Unmerge {
        reason: Reason,
        at: DateTime<Utc>,
    },
    /// Gives back what was gained from `source`.
    RevertAbsorption {
        source: PatientId,
        reason: Reason,
        at: DateTime<Utc>,
    },
}

/// The changes to a record besides demographics and its lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordChange {
    /// Replaces phones, e-mail addresses and postal addresses.
    ChangeContactInformation {
        contact: ContactInformation,
        at: DateTime<Utc>,
    },
    AddIdentifier {
        identifier: Identifier,
        at: DateTime<Utc>,
    },
    RemoveIdentifier(RemoveIdentifier),
    UpdatePreferences {
        preferences: Preferences,
        at: DateTime<Utc>,
    },
    AddEmergencyContact {
        contact: EmergencyContact,
        at: DateTime<Utc>,
    },
    /// Replaces the emergency contact with the same `contact_id`.
    ChangeEmergencyContact {
        contact: EmergencyContact,
        at: DateTime<Utc>,
    },
    RemoveEmergencyContact {
        contact_id: Uuid,
        at: DateTime<Utc>,
    },
    AddCoverage {
        coverage: Coverage,
        at: DateTime<Utc>,
    },
    /// Replaces the coverage with the same `coverage_id`.
    ChangeCoverage {
        coverage: Coverage,
        at: DateTime<Utc>,
    },
    EndCoverage(EndCoverage),
}

#[derive(Clone, PartialEq)]
pub struct RemoveIdentifier {
    pub system: String,
    pub value: String,
    pub reason: Reason,
    pub at: DateTime<Utc>,
}

impl std::fmt::Debug for RemoveIdentifier {
    // The value may be a national identifier.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoveIdentifier")
            .field("system", &self.system)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndCoverage {
    pub coverage_id: Uuid,
    pub end: NaiveDate,
    pub reason: Reason,
    pub at: DateTime<Utc>,
}

/// Registers a new patient under an id and an MRN the service has already chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterPatient {
    pub patient_id: PatientId,
    pub mrn: Mrn,
    pub name: PersonName,
    /// `None` when unknown (an unidentified emergency patient, a record without one).
    pub birth_date: Option<BirthDate>,
    pub gender: AdministrativeGender,
    pub marital_status: Option<MaritalStatus>,
    pub languages: Vec<LanguageTag>,
    pub identifiers: Vec<Identifier>,
    pub contact: ContactInformation,
    /// Set when the caller registers despite a `certain` or `probable` duplicate.
    pub duplicate_override: Option<DuplicateOverride>,
    pub at: DateTime<Utc>,
}

/// Corrects one or more demographic fields; fields left `None` keep their value.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrectDemographics {
    pub name: Option<PersonName>,
    pub birth_date: Option<BirthDate>,
    pub gender: Option<AdministrativeGender>,
    pub marital_status: Option<MaritalStatus>,
    pub languages: Option<Vec<LanguageTag>>,
    pub reason: Reason,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchivePatient {
    pub reason: Reason,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestorePatient {
    pub reason: Reason,
    pub at: DateTime<Utc>,
}
