//! Every read model of the service, named once: `serve` and `project` feed each of them,
//! `rebuild` rebuilds each of them, from this one list. A new read model is added here and
//! nowhere else.

use event_store::chain::ChainKey;
use event_store::documents::{DocumentStorage, DocumentStore};

use crate::configuration::Secrets;
use event_store::keys::KeyStore;
use projections::audit_log::AuditLog;
use projections::medical_records::MedicalRecords;
use projections::patient_match::PatientMatch;
use projections::patient_search::PatientSearch;
use projections::{Projector, ReadModel};
use sqlx::PgPool;

/// What is done with each read model's projector.
pub trait ReadModelVisitor {
    /// Does it with `projector`.
    ///
    /// # Errors
    ///
    /// Whatever doing it fails with; the remaining read models are not visited.
    fn visit<M: ReadModel>(
        &mut self,
        projector: Projector<M>,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// The read models, with what their projectors need.
#[derive(Debug, Clone)]
pub struct ReadModels {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
    documents: DocumentStore,
}

impl ReadModels {
    /// The read models of the database behind `pool`, opening events with `secrets` and
    /// reading documents from `storage`.
    pub fn new(pool: PgPool, secrets: &Secrets, storage: DocumentStorage) -> Self {
        Self {
            documents: DocumentStore::new(pool.clone(), secrets.keys.clone(), storage),
            pool,
            keys: secrets.keys.clone(),
            chain: secrets.chain.clone(),
        }
    }

    fn projector<M: ReadModel>(&self, model: M) -> Projector<M> {
        Projector::new(self.pool.clone(), self.keys.clone(), model)
    }

    /// Visits the projector of every read model, in turn.
    ///
    /// # Errors
    ///
    /// The first error of `visitor`.
    pub async fn visit_each(&self, visitor: &mut impl ReadModelVisitor) -> anyhow::Result<()> {
        visitor.visit(self.projector(PatientSearch)).await?;
        visitor.visit(self.projector(PatientMatch)).await?;
        visitor
            .visit(self.projector(MedicalRecords::new(self.documents.clone())))
            .await?;
        visitor
            .visit(self.projector(AuditLog::new(self.chain.clone())))
            .await
    }

    /// Empties every read model and replays the whole event store into each; returns the
    /// events read (each model reads the store once).
    ///
    /// # Errors
    ///
    /// When a projector is feeding a model from the event store (stop serve/project first),
    /// or the database fails.
    pub async fn rebuild_all(&self) -> anyhow::Result<usize> {
        let mut rebuilder = Rebuilder {
            chain: self.chain.clone(),
            events: 0,
        };
        self.visit_each(&mut rebuilder).await?;
        Ok(rebuilder.events)
    }

    /// Brings every read model up to the newest event stored when this starts, all models at
    /// once (as `serve` feeds them); returns the events applied over all models.
    ///
    /// # Errors
    ///
    /// The first projector's failure.
    pub async fn catch_up_all(&self) -> anyhow::Result<usize> {
        let mut catcher = CatchUp {
            chain: self.chain.clone(),
            tasks: tokio::task::JoinSet::new(),
        };
        self.visit_each(&mut catcher).await?;
        let mut applied = 0;
        while let Some(done) = catcher.tasks.join_next().await {
            applied += done??;
        }
        Ok(applied)
    }
}

/// Rebuilds every read model it visits, counting the events applied.
struct Rebuilder {
    chain: ChainKey,
    events: usize,
}

impl ReadModelVisitor for Rebuilder {
    async fn visit<M: ReadModel>(&mut self, projector: Projector<M>) -> anyhow::Result<()> {
        let _lock = projector.try_lock_stream().await?.ok_or_else(|| {
            anyhow::anyhow!(
                "a projector is feeding {} from the event store; stop serve/project first",
                projector.model().name()
            )
        })?;
        projector.reset().await?;
        self.events += crate::stream_feed::project_all(&projector, &self.chain).await?;
        Ok(())
    }
}

/// Starts bringing each read model it visits up to date, each in a task of its own.
struct CatchUp {
    chain: ChainKey,
    tasks: tokio::task::JoinSet<anyhow::Result<usize>>,
}

impl ReadModelVisitor for CatchUp {
    async fn visit<M: ReadModel>(&mut self, projector: Projector<M>) -> anyhow::Result<()> {
        let chain = self.chain.clone();
        self.tasks.spawn(async move {
            let _lock = projector.try_lock_stream().await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "a projector is feeding {} already",
                    projector.model().name()
                )
            })?;
            crate::stream_feed::project_all(&projector, &chain).await
        });
        Ok(())
    }
}
