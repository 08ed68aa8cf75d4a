//! What the use cases reach: the patient store, the access log, this service's organization
//! and the clock; and the one error a use case refuses with.

use std::sync::Arc;

use domain::medical_record::{AllergyWarning, MedicalRecordError};
use domain::patient::PatientError;
use domain::FieldErrors;
use event_store::command::CommandError;
use event_store::command::UnitOfWork;
use event_store::documents::DocumentStore;
use event_store::records::{ClinicalEntryStore, MedicalRecordStore};
use event_store::schedule::AppointmentStore;
use event_store::store::PatientStore;
use sqlx::PgPool;

use crate::access::AccessLog;
use crate::caller::Refused;
use crate::clock::Clock;
use crate::extraction::TextExtractor;
use crate::planner::Placement;
use crate::settings::SchedulingSettings;

/// The stores and logs a use case works with. Cheap to clone (pools and keys are shared).
#[derive(Clone)]
pub struct Services {
    pub pool: PgPool,
    pub store: PatientStore,
    /// Where access entries go.
    pub access: AccessLog,
    /// This service's organization: users of others reach only patients who consented.
    pub home_organization: Option<String>,
    pub clock: Clock,
    pub appointments: AppointmentStore,
    pub scheduling: SchedulingSettings,
    pub records: MedicalRecordStore,
    /// Observations, procedures and encounters: each a stream of its own.
    pub entries: ClinicalEntryStore,
    /// Uploaded documents and their text, sealed with their patients' keys.
    pub documents: DocumentStore,
    pub extractor: Arc<dyn TextExtractor>,
    /// Days an archived patient is kept before the retention policy lists them for purge.
    pub retention_days: u32,
}

impl Services {
    /// These services with the patient, medical record and clinical entry stores staging their
    /// commands in `unit` (stored together by [`UnitOfWork::commit`], or not at all). The
    /// access log is not bound: an access is recorded whether or not the unit commits.
    /// Appointments are not bound either: a use case on them commits on its own, so a unit's
    /// caller must keep them out of it.
    #[must_use]
    pub fn in_unit(&self, unit: &UnitOfWork) -> Self {
        Self {
            store: self.store.in_unit(unit),
            records: self.records.in_unit(unit),
            entries: self.entries.in_unit(unit),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// Why a use case did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum UseCaseError {
    /// The caller may not, or the patient is unknown or erased (as the access decision says).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Break-the-glass asked for more patients than the hourly limit.
    #[error("emergency access limit reached")]
    EmergencyAccessLimit,
    /// Well-formed input naming something that does not hold (a patient that does not exist).
    #[error("invalid fields")]
    Invalid(FieldErrors),
    /// A parameter naming nothing there is (a service code no service has).
    #[error("unknown names")]
    Unknown(FieldErrors),
    /// A rule of the patient refuses it before any command runs.
    #[error(transparent)]
    Rule(PatientError),
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A medical record command refused or failed.
    #[error(transparent)]
    Record(#[from] CommandError<MedicalRecordError>),
    /// A medication meets active allergies: the warnings to acknowledge, and the order as
    /// given (clinical data: for the caller's answer only, never a log).
    #[error("allergy warning")]
    AllergyWarning {
        warnings: Vec<AllergyWarning>,
        order: serde_json::Value,
    },
    /// Too busy to do it now (every text extraction slot is taken): try again shortly.
    #[error("text extraction is busy")]
    Busy,
    /// The time is taken: by which appointment (when the caller may know), and where it could
    /// go instead.
    #[error("time taken")]
    TimeTaken {
        conflicting: Option<uuid::Uuid>,
        alternatives: Vec<Placement>,
    },
    /// A scheduling command refused or failed.
    #[error(transparent)]
    Scheduling(CommandError<domain::scheduling::SchedulingError>),
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<event_store::keys::KeyError> for UseCaseError {
    fn from(error: event_store::keys::KeyError) -> Self {
        match error {
            event_store::keys::KeyError::Database(e) => Self::Database(e),
            other => Self::Internal(Box::new(other)),
        }
    }
}
