//! Executes medical record commands and loads records. A patient's medical record is one
//! aggregate, stored under the patient's id and sealed with the patient's data key, so
//! forgetting the patient erases it too.

use cqrs_es::persist::PersistedEventStore;
use domain::medical_record::{
    ClinicalEntry, ClinicalEntryCommand, MedicalRecord, MedicalRecordCommand, MedicalRecordError,
};
use domain::patient::PatientId;
use sqlx::PgPool;

use crate::chain::ChainKey;
use crate::command::UnitOfWork;
use crate::command::{execute_on, CommandError, CommandMetadata, Fresh};
use crate::keys::KeyStore;
use crate::repository::SealedRepository;

/// Every how many events a medical record's sealed snapshot is taken: a command reads at most
/// this many events after the latest one, however long the chart.
pub const SNAPSHOT_EVERY: usize = 50;

/// The medical record event store.
#[derive(Clone)]
pub struct MedicalRecordStore {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
    /// The unit of work commands are staged in, when bound to one.
    unit: Option<UnitOfWork>,
}

impl std::fmt::Debug for MedicalRecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MedicalRecordStore").finish_non_exhaustive()
    }
}

impl MedicalRecordStore {
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey) -> Self {
        Self {
            pool,
            keys,
            chain,
            unit: None,
        }
    }

    /// This store, staging its commands in `unit` instead of storing them, and loading what
    /// the unit holds as staged.
    #[must_use]
    pub fn in_unit(&self, unit: &UnitOfWork) -> Self {
        Self {
            unit: Some(unit.clone()),
            ..self.clone()
        }
    }

    /// The sealing repository of medical records, with a sealed snapshot every
    /// [`SNAPSHOT_EVERY`] events.
    fn repository(&self) -> SealedRepository {
        crate::command::repository(&self.pool, &self.keys, &self.chain)
            .with_snapshots(SNAPSHOT_EVERY)
    }

    /// Executes `command` on the medical record of patient `id` (who must be registered: the
    /// caller checks). Returns the record and its version after the command.
    ///
    /// # Errors
    ///
    /// [`CommandError`]: the broken rule, a lost race after retries, or the store failing.
    #[tracing::instrument(skip_all, fields(patient_id = %id))]
    pub async fn execute(
        &self,
        id: PatientId,
        command: MedicalRecordCommand,
        metadata: CommandMetadata,
    ) -> Result<(MedicalRecord, u64), CommandError<MedicalRecordError>> {
        execute_on(
            (self.repository(), self.unit.as_ref()),
            (&id.to_string(), Fresh::Unknown),
            None,
            |_, _| Ok(()),
            |record: &MedicalRecord| record.decide(command.clone()),
            metadata,
        )
        .await
    }

    /// The medical record of patient `id` as its first `version` events left it.
    ///
    /// # Errors
    ///
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`] when the store fails.
    pub async fn load_version(
        &self,
        id: PatientId,
        version: u64,
    ) -> Result<Option<MedicalRecord>, CommandError<MedicalRecordError>> {
        crate::command::load_version(
            crate::command::repository(&self.pool, &self.keys, &self.chain),
            &id.to_string(),
            version,
        )
        .await
    }

    /// The medical record of patient `id` and its version (0 and empty when nothing was ever
    /// recorded, or the patient was forgotten).
    ///
    /// # Errors
    ///
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`] when the store fails.
    pub async fn load(
        &self,
        id: PatientId,
    ) -> Result<(MedicalRecord, u64), CommandError<MedicalRecordError>> {
        if let Some(unit) = &self.unit {
            if let Some(staged) = unit.staged(&id.to_string()).await {
                return Ok(staged);
            }
        }
        let context = crate::states::load(&self.repository(), &id.to_string())
            .await
            .map_err(crate::command::classify)?;
        let version = context.current_sequence as u64;
        Ok((context.aggregate, version))
    }
}

/// The clinical entry event store: observations, procedures and encounters, each a stream of
/// its own under the entry's id, sealed with its patient's data key (so forgetting the patient
/// erases them too). No snapshots: a stream holds one item's few versions.
#[derive(Clone)]
pub struct ClinicalEntryStore {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
    /// The unit of work commands are staged in, when bound to one.
    unit: Option<UnitOfWork>,
}

impl std::fmt::Debug for ClinicalEntryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClinicalEntryStore").finish_non_exhaustive()
    }
}

impl ClinicalEntryStore {
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey) -> Self {
        Self {
            pool,
            keys,
            chain,
            unit: None,
        }
    }

    /// This store, staging its commands in `unit` instead of storing them, and loading what
    /// the unit holds as staged.
    #[must_use]
    pub fn in_unit(&self, unit: &UnitOfWork) -> Self {
        Self {
            unit: Some(unit.clone()),
            ..self.clone()
        }
    }

    fn repository(&self) -> SealedRepository {
        crate::command::repository(&self.pool, &self.keys, &self.chain)
    }

    /// Executes `command` on entry `id` of patient `patient` (who must be registered: the
    /// caller checks); its events are sealed with the patient's data key. Returns the entry
    /// and its version after the command.
    ///
    /// # Errors
    ///
    /// [`CommandError`]: the broken rule (another patient's entry among them), a lost race
    /// after retries, or the store failing.
    #[tracing::instrument(skip_all, fields(patient_id = %patient, entry_id = %id))]
    pub async fn execute(
        &self,
        id: uuid::Uuid,
        patient: PatientId,
        command: MedicalRecordCommand,
        mut metadata: CommandMetadata,
    ) -> Result<(ClinicalEntry, u64), CommandError<MedicalRecordError>> {
        metadata.data_key_owner = Some(patient.to_string());
        // A new entry is made under an id made for it.
        let fresh = match command {
            MedicalRecordCommand::Record { .. } => Fresh::Expected,
            _ => Fresh::Unknown,
        };
        let command = ClinicalEntryCommand {
            patient_id: patient,
            command,
        };
        execute_on(
            (self.repository(), self.unit.as_ref()),
            (&id.to_string(), fresh),
            None,
            |_, _| Ok(()),
            |entry: &ClinicalEntry| entry.decide(command.clone()),
            metadata,
        )
        .await
    }

    /// Entry `id` as its first `version` events left it.
    ///
    /// # Errors
    ///
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`] when the store fails.
    pub async fn load_version(
        &self,
        id: uuid::Uuid,
        version: u64,
    ) -> Result<Option<ClinicalEntry>, CommandError<MedicalRecordError>> {
        crate::command::load_version(self.repository(), &id.to_string(), version).await
    }

    /// Entry `id` and its version (empty and 0 when nothing was recorded under it, or its
    /// patient was forgotten).
    ///
    /// # Errors
    ///
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`] when the store fails.
    pub async fn load(
        &self,
        id: uuid::Uuid,
    ) -> Result<(ClinicalEntry, u64), CommandError<MedicalRecordError>> {
        use cqrs_es::EventStore;
        if let Some(unit) = &self.unit {
            if let Some(staged) = unit.staged(&id.to_string()).await {
                return Ok(staged);
            }
        }
        let store: PersistedEventStore<SealedRepository, ClinicalEntry> =
            self.repository().into_store();
        let context = store
            .load_aggregate(&id.to_string())
            .await
            .map_err(crate::command::classify)?;
        let version = context.current_sequence as u64;
        Ok((context.aggregate, version))
    }
}
