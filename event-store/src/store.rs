//! The patient store: executes patient commands ([`crate::command`]) and loads patients from
//! their event streams.

use cqrs_es::persist::{PersistedEventStore, PersistenceError, SerializedEvent};
use cqrs_es::EventStore;
use domain::patient::{Patient, PatientCommand, PatientError, PatientId};
use futures::future::BoxFuture;
use sqlx::PgPool;

use crate::chain::ChainKey;
use crate::command::UnitOfWork;
use crate::command::{classify, execute_on, sqlx_error, CommandError, CommandMetadata, Fresh};
use crate::keys::KeyStore;
use crate::repository::{SealedRepository, TransactionEffect, SHREDDING_EVENT_TYPE};

/// The patient event store.
#[derive(Clone)]
pub struct PatientStore {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
    /// Medical record numbers reserved for this process and not yet given out.
    mrns: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    /// The unit of work commands are staged in, when bound to one ([`Self::in_unit`]).
    unit: Option<UnitOfWork>,
}

/// How many medical record numbers one read of their sequence reserves.
const MRN_BLOCK: i64 = 32;

impl std::fmt::Debug for PatientStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientStore").finish_non_exhaustive()
    }
}

/// What the service keeps beside a patient's events goes in the transaction that forgets the
/// patient (the data key itself is destroyed by the repository there): idempotency records
/// (keyed hashes of their requests), stored document contents (sealed, but named by the hash
/// of the plain bytes), sealed snapshots of their medical record, their parts of bulk export files, and scheduling's claimed times, reminders, wait-list entries and unsent
/// notifications.
#[derive(Debug, Clone, Copy)]
pub struct Erasure;

impl TransactionEffect for Erasure {
    fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        events: &'a [SerializedEvent],
        _keys: &'a crate::repository::SealingKeys,
    ) -> BoxFuture<'a, Result<(), PersistenceError>> {
        Box::pin(async move {
            let Some(forgotten) = events.iter().find(|e| e.event_type == SHREDDING_EVENT_TYPE)
            else {
                return Ok(());
            };
            let id = forgotten.aggregate_id.as_str();
            let field = |name: &str| forgotten.metadata.get(name).and_then(|v| v.as_str());
            let keeping = field("user_id").zip(field("idempotency_key"));
            let erased = async {
                crate::idempotency::forget(&mut *tx, id, keeping).await?;
                crate::documents::forget_stored(&mut *tx, id).await?;
                crate::registration_guard::forget(&mut *tx, id).await?;
                crate::snapshots::forget(&mut *tx, id).await?;
                crate::exports::forget(&mut *tx, id).await?;
                crate::states::forget(id);
                if let Ok(patient) = PatientId::parse("id", id) {
                    crate::schedule::forget_patient(&mut *tx, patient).await?;
                }
                Ok::<_, sqlx::Error>(())
            };
            erased.await.map_err(crate::repository::persistence_error)
        })
    }
}

impl PatientStore {
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey) -> Self {
        Self {
            pool,
            keys,
            chain,
            mrns: std::sync::Arc::default(),
            unit: None,
        }
    }

    /// The unit of work this store stages its commands in, if bound to one.
    pub fn unit(&self) -> Option<&UnitOfWork> {
        self.unit.as_ref()
    }

    /// This store, staging its commands in `unit` instead of storing them, and loading the
    /// patients the unit holds as staged.
    #[must_use]
    pub fn in_unit(&self, unit: &UnitOfWork) -> Self {
        Self {
            unit: Some(unit.clone()),
            ..self.clone()
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn chain(&self) -> &ChainKey {
        &self.chain
    }

    /// The key store the events are sealed with.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    fn repository(&self) -> SealedRepository {
        SealedRepository::new(self.pool.clone(), self.keys.clone(), self.chain.clone())
            .with_effect(Erasure)
    }

    fn event_store(&self) -> PersistedEventStore<SealedRepository, Patient> {
        PersistedEventStore::new_event_store(self.repository())
    }

    /// Executes `command` against patient `id`, refusing it unless the patient is at
    /// `expected_version` (when given). Returns the patient and their version after the
    /// command.
    ///
    /// # Errors
    ///
    /// [`CommandError`]: the broken rule, a stale version, a lost race after retries, or the
    /// store being unreachable or failing.
    #[tracing::instrument(skip_all, fields(patient_id = %id))]
    pub async fn execute(
        &self,
        id: PatientId,
        expected_version: Option<u64>,
        command: PatientCommand,
        metadata: CommandMetadata,
    ) -> Result<(Patient, u64), CommandError> {
        let is_registration = matches!(command, PatientCommand::Register(_));
        execute_on(
            (self.repository(), self.unit.as_ref()),
            (&id.to_string(), Fresh::Unknown),
            expected_version,
            |patient: &Patient, current| {
                if current == 0 && !is_registration {
                    // Nobody here: say so, rather than that the version is stale.
                    return Err(PatientError::NotRegistered);
                }
                if patient.forgotten().is_some() {
                    // Erased: say so, whatever version the caller expected.
                    return Err(PatientError::Forgotten);
                }
                Ok(())
            },
            |patient| patient.decide(command.clone()),
            metadata,
        )
        .await
    }

    /// Registers a patient (`command` is their registration) unless a registration the
    /// matcher grades `certain` or `probable` against `record` was stored meanwhile, one the
    /// match read model may not know yet ([`crate::registration_guard`]); `overridden` lets it
    /// pass anyway (the caller gave a reason).
    ///
    /// # Errors
    ///
    /// [`CommandError::LikelyDuplicates`], or as [`Self::execute`].
    #[tracing::instrument(skip_all, fields(patient_id = %id))]
    pub async fn register(
        &self,
        id: PatientId,
        command: PatientCommand,
        (record, overridden): (domain::matching::MatchRecord, bool),
        metadata: CommandMetadata,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Patient, u64), CommandError> {
        let guard = crate::registration_guard::RegistrationGuard {
            patient_id: id,
            record,
            overridden,
            keys: self.keys.clone(),
            at,
        };
        execute_on(
            (self.repository().with_effect(guard), self.unit.as_ref()),
            (&id.to_string(), Fresh::Expected),
            None,
            |_, _| Ok(()),
            |patient: &Patient| patient.decide(command.clone()),
            metadata,
        )
        .await
    }

    /// Executes commands on several patients as one unit of work (a merge: the duplicate and
    /// the survivor), each refused unless the patient is at its expected version (when given):
    /// every patient changes, or none does. Returns the patients and their versions after the
    /// commands, in the order given.
    ///
    /// # Errors
    ///
    /// As [`Self::execute`], for whichever patient refuses first.
    #[tracing::instrument(skip_all)]
    pub async fn execute_together(
        &self,
        commands: Vec<(PatientId, Option<u64>, PatientCommand)>,
        metadata: CommandMetadata,
    ) -> Result<Vec<(Patient, u64)>, CommandError> {
        let parts = commands
            .into_iter()
            .map(|(id, expected_version, command)| crate::command::Part {
                aggregate_id: id.to_string(),
                expected_version,
                precheck: Box::new(|patient: &Patient, current| {
                    if current == 0 {
                        return Err(PatientError::NotRegistered);
                    }
                    if patient.forgotten().is_some() {
                        return Err(PatientError::Forgotten);
                    }
                    Ok(())
                }),
                decide: Box::new(move |patient: &Patient| patient.decide(command.clone())),
            })
            .collect();
        crate::command::execute_together((self.repository(), self.unit.as_ref()), parts, metadata)
            .await
    }

    /// The patient and their version, or `None` if nobody is registered under `id`.
    ///
    /// # Errors
    ///
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`] when the store fails.
    #[tracing::instrument(skip_all, fields(patient_id = %id))]
    pub async fn load(&self, id: PatientId) -> Result<Option<(Patient, u64)>, CommandError> {
        if let Some(unit) = &self.unit {
            if let Some(staged) = unit.staged::<Patient>(&id.to_string()).await {
                return Ok(Some(staged));
            }
        }
        let context = self
            .event_store()
            .load_aggregate(&id.to_string())
            .await
            .map_err(classify)?;
        if context.current_sequence == 0 {
            return Ok(None);
        }
        Ok(Some((context.aggregate, context.current_sequence as u64)))
    }

    /// The patient as they were at `version` (the first `version` events).
    ///
    /// # Errors
    ///
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`] when the store fails.
    pub async fn load_version(
        &self,
        id: PatientId,
        version: u64,
    ) -> Result<Option<Patient>, CommandError> {
        crate::command::load_version(self.repository(), &id.to_string(), version).await
    }

    /// The patient as each of their latest `newest` versions left them, newest first (the
    /// events read once).
    ///
    /// # Errors
    ///
    /// [`CommandError::Unavailable`] or [`CommandError::Internal`] when the store fails.
    pub async fn versions(
        &self,
        id: PatientId,
        newest: usize,
    ) -> Result<Vec<(u64, Patient)>, CommandError> {
        crate::command::load_versions(self.repository(), &id.to_string(), newest).await
    }

    /// Reserves the next medical record number: unique, though not in the order of
    /// registration (each process reserves a block of them at a time, one read of the
    /// sequence for [`MRN_BLOCK`] registrations; the unused rest of a block is skipped when the
    /// process stops, as a failed registration skips its own).
    ///
    /// # Errors
    ///
    /// [`CommandError`] when the database fails or the MRN serials are exhausted.
    pub async fn next_mrn(&self) -> Result<domain::patient::Mrn, CommandError> {
        let reserved = self.mrns.lock().ok().and_then(|mut mrns| mrns.pop());
        let serial = match reserved {
            Some(serial) => serial,
            None => {
                let block = sqlx::query_scalar(
                    "SELECT nextval('patient_mrn_serial') FROM generate_series(1, $1)",
                )
                .bind(MRN_BLOCK)
                .fetch_all(&self.pool)
                .await;
                let mut block: Vec<i64> = match block {
                    // Fewer than a block left: the last ones one at a time, until none is.
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("2200H") => {
                        sqlx::query_scalar("SELECT nextval('patient_mrn_serial')")
                            .fetch_all(&self.pool)
                            .await
                            .map_err(sqlx_error)?
                    }
                    other => other.map_err(sqlx_error)?,
                };
                // Given out lowest first.
                block.sort_unstable_by(|a, b| b.cmp(a));
                let serial = block.pop().ok_or_else(|| {
                    CommandError::Internal("the MRN sequence returned nothing".into())
                })?;
                if let Ok(mut mrns) = self.mrns.lock() {
                    mrns.extend(block);
                    mrns.sort_unstable_by(|a, b| b.cmp(a));
                }
                serial
            }
        };
        domain::patient::Mrn::from_serial(serial as u64)
            .map_err(|e| CommandError::Internal(e.to_string().into()))
    }
}
