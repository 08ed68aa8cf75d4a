//! Commands of the patient aggregate, built only from validated value types. Each carries the
//! instant it was issued, so deciding never reads a clock.

use chrono::{DateTime, Utc};

use super::contact::{ContactInformation, Identifier};
use super::events::DuplicateOverride;
use super::values::{AdministrativeGender, BirthDate, Mrn, PatientId, PersonName, Reason};

#[derive(Debug, Clone, PartialEq)]
pub enum PatientCommand {
    Register(RegisterPatient),
    CorrectDemographics(CorrectDemographics),
    Archive(ArchivePatient),
    Restore(RestorePatient),
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
