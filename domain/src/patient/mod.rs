//! Patient data management: who a patient is (identity and demographics) and whether their record
//! is active or archived.
//!
//! [`Patient`] is the aggregate; [`PatientCommand`]s go in, [`PatientEvent`]s come out, and the
//! decision between them is the pure function [`Patient::decide`].

mod aggregate;
mod commands;
pub mod contact;
mod events;
mod values;

pub use aggregate::{Patient, PatientRecord, PatientStatus};
pub use commands::{
    ArchivePatient, CorrectDemographics, PatientCommand, RegisterPatient, RestorePatient,
};
pub use events::{
    DemographicsCorrected, DuplicateOverride, PatientArchived, PatientEvent, PatientRegistered,
    PatientRestored,
};
pub use values::{AdministrativeGender, BirthDate, Mrn, PatientId, PersonName, Reason};

/// Errors of the patient aggregate: one variant per business rule, each message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatientError {
    #[error("a patient with this id is already registered")]
    AlreadyRegistered,
    #[error("no patient is registered with this id")]
    NotRegistered,
    #[error("the patient is archived; restore them before correcting demographics")]
    ArchivedPatientCannotBeCorrected,
    #[error("the patient is already archived")]
    AlreadyArchived,
    #[error("the patient is not archived")]
    NotArchived,
    #[error("the correction changes nothing")]
    CorrectionChangesNothing,
}

impl PatientError {
    /// A stable machine-readable code for the rule that was broken.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "already-registered",
            Self::NotRegistered => "not-registered",
            Self::ArchivedPatientCannotBeCorrected => "archived-patient-cannot-be-corrected",
            Self::AlreadyArchived => "already-archived",
            Self::NotArchived => "not-archived",
            Self::CorrectionChangesNothing => "correction-changes-nothing",
        }
    }
}
