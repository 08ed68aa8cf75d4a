//! Patient data management: who a patient is (identity and demographics) and whether their record
//! is active or archived.
//!
//! [`Patient`] is the aggregate; [`PatientCommand`]s go in, [`PatientEvent`]s come out, and the
//! decision between them is the pure function [`Patient::decide`].

mod aggregate;
mod commands;
pub mod contact;
mod events;
pub mod governance;
mod merge;
pub mod record;
mod state;
mod values;

pub use aggregate::Patient;
pub use commands::{
    ArchivePatient, CorrectDemographics, EndCoverage, PatientCommand, RecordChange,
    RegisterPatient, RemoveIdentifier, RestorePatient,
};
pub use events::{
    AbsorptionReverted, ContactInformationChanged, CoverageAdded, CoverageChanged, CoverageEnded,
    DemographicsCorrected, DuplicateOverride, EmergencyContactAdded, EmergencyContactChanged,
    EmergencyContactRemoved, IdentifierAdded, IdentifierRemoved, PatientAbsorbed, PatientArchived,
    PatientEvent, PatientMerged, PatientRegistered, PatientRestored, PatientUnmerged,
    PreferencesUpdated,
};
pub use state::{Absorption, PatientRecord, PatientStatus};
pub use values::{
    AdministrativeGender, BirthDate, MaritalStatus, Mrn, NameExtras, PatientId, PersonName, Reason,
};

/// Errors of the patient aggregate: one variant per business rule, each message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatientError {
    #[error("a patient with this id is already registered")]
    AlreadyRegistered,
    #[error("no patient is registered with this id")]
    NotRegistered,
    #[error("the patient is archived; restore them before changing their record")]
    ArchivedPatientCannotBeCorrected,
    #[error("the patient is already archived")]
    AlreadyArchived,
    #[error("the patient is not archived")]
    NotArchived,
    #[error("the correction changes nothing")]
    CorrectionChangesNothing,
    #[error("the patient already has this identifier")]
    IdentifierAlreadyRecorded,
    #[error("the patient has no such identifier")]
    IdentifierNotFound,
    #[error("another active coverage of the same priority overlaps this period")]
    CoverageOverlaps,
    #[error("the patient has no such coverage")]
    CoverageNotFound,
    #[error("the coverage is already ended")]
    CoverageAlreadyEnded,
    #[error("a coverage cannot end before it starts")]
    CoverageEndsBeforeItStarts,
    #[error("the patient has no such emergency contact")]
    EmergencyContactNotFound,
    #[error("the patient has the most emergency contacts allowed")]
    TooManyEmergencyContacts,
    #[error("a patient cannot be merged into themselves")]
    MergeIntoSelf,
    #[error("the surviving patient is archived")]
    TargetArchived,
    #[error("the surviving patient is itself merged into another")]
    TargetMergedAway,
    #[error("the patient is already merged into another")]
    AlreadyMerged,
    #[error("the patient is not merged")]
    NotMerged,
    #[error("the patient is merged into another; change the survivor instead")]
    MergedPatientCannotBeChanged,
    #[error("duplicates were merged into this patient; unmerge them before merging it away")]
    HasMergedDuplicates,
    #[error("the emergency contact needs at least one phone")]
    EmergencyContactWithoutPhone,
    #[error("an item with this id is already on the record")]
    ItemIdInUse,
    #[error("the patient's data was erased")]
    Forgotten,
    #[error("the record is already on legal hold")]
    AlreadyOnLegalHold,
    #[error("the record is not on legal hold")]
    NotOnLegalHold,
    #[error("the record is on legal hold and cannot be erased; release the hold first")]
    LegalHoldPreventsErasure,
    #[error("the practitioner already cares for this patient")]
    CareRelationshipExists,
    #[error("the practitioner does not care for this patient")]
    CareRelationshipNotFound,
    #[error("an identical consent directive is already in force")]
    ConsentAlreadyInForce,
    #[error("no consent directive with this id is in force")]
    ConsentNotFound,
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
            Self::IdentifierAlreadyRecorded => "identifier-already-recorded",
            Self::IdentifierNotFound => "identifier-not-found",
            Self::CoverageOverlaps => "coverage-overlaps",
            Self::CoverageNotFound => "coverage-not-found",
            Self::CoverageAlreadyEnded => "coverage-already-ended",
            Self::CoverageEndsBeforeItStarts => "coverage-ends-before-it-starts",
            Self::EmergencyContactNotFound => "emergency-contact-not-found",
            Self::TooManyEmergencyContacts => "too-many-emergency-contacts",
            Self::MergeIntoSelf => "merge-into-self",
            Self::TargetArchived => "target-archived",
            Self::TargetMergedAway => "target-merged-away",
            Self::AlreadyMerged => "already-merged",
            Self::NotMerged => "not-merged",
            Self::MergedPatientCannotBeChanged => "merged-patient-cannot-be-changed",
            Self::HasMergedDuplicates => "has-merged-duplicates",
            Self::EmergencyContactWithoutPhone => "emergency-contact-without-phone",
            Self::ItemIdInUse => "item-id-in-use",
            Self::Forgotten => "forgotten",
            Self::AlreadyOnLegalHold => "already-on-legal-hold",
            Self::NotOnLegalHold => "not-on-legal-hold",
            Self::LegalHoldPreventsErasure => "legal-hold-prevents-erasure",
            Self::CareRelationshipExists => "care-relationship-exists",
            Self::CareRelationshipNotFound => "care-relationship-not-found",
            Self::ConsentAlreadyInForce => "consent-already-in-force",
            Self::ConsentNotFound => "consent-not-found",
        }
    }
}
