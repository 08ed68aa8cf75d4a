//! Commands of the patient aggregate, built only from validated value types. Each carries the
//! instant it was issued, so deciding never reads a clock.

use chrono::{DateTime, Utc};

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
    pub birth_date: BirthDate,
    pub gender: AdministrativeGender,
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
