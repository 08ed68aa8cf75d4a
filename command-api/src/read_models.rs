//! Every read model of the service, named once: `serve` and `project` feed each of them,
//! `rebuild` rebuilds each of them, from this one list. A new read model is added here and
//! nowhere else.

use event_store::chain::ChainKey;
use event_store::documents::{DocumentStorage, DocumentStore};

use crate::configuration::Secrets;
use crate::stream_feed::{Fed, Feed};
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

    /// The database the read models are in.
    pub fn pool(&self) -> &PgPool {
        &self.pool
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

    /// Every read model's projector, as one stream feed drives them
    /// ([`crate::stream_feed::Feed`]).
    ///
    /// # Errors
    ///
    /// None today; visiting is fallible in general.
    pub async fn fed(&self) -> anyhow::Result<Vec<Box<dyn Fed>>> {
        let mut collect = Collect(Vec::new());
        self.visit_each(&mut collect).await?;
        Ok(collect.0)
    }

    /// The stream feed of every read model, or `None` while another process feeds one.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn feed(&self) -> anyhow::Result<Option<Feed<'static>>> {
        let parts = (self.pool.clone(), self.keys.clone(), self.chain.clone());
        Ok(Feed::lock(parts, self.fed().await?).await?)
    }

    async fn feed_or_fail(&self) -> anyhow::Result<Feed<'static>> {
        self.feed().await?.ok_or_else(|| {
            anyhow::anyhow!(
                "a projector is feeding a read model from the event store; stop serve/project first"
            )
        })
    }

    /// Empties every read model and replays the whole event store into all of them in one
    /// pass; returns the events read (each once).
    ///
    /// # Errors
    ///
    /// When a projector is feeding a model from the event store (stop serve/project first),
    /// or the database fails.
    pub async fn rebuild_all(&self) -> anyhow::Result<usize> {
        let mut feed = self.feed_or_fail().await?;
        feed.reset().await?;
        let fed = feed.feed_all().await;
        feed.release().await?;
        fed
    }

    /// Empties every read model and its bookkeeping, as a rebuild starts (for a feeder that is
    /// not the event store's stream, such as Kafka consumers, to fill them again).
    ///
    /// # Errors
    ///
    /// When a projector is feeding a model from the event store, or the database fails.
    pub async fn reset_all(&self) -> anyhow::Result<()> {
        let mut feed = self.feed_or_fail().await?;
        feed.reset().await?;
        feed.release().await?;
        Ok(())
    }

    /// Brings every read model up to the newest event stored when this starts, all models
    /// from one reader (as `serve` feeds them); returns the events read (each once, for every
    /// model).
    ///
    /// # Errors
    ///
    /// When another process feeds a model, or a projector fails.
    pub async fn catch_up_all(&self) -> anyhow::Result<usize> {
        let mut feed = self.feed_or_fail().await?;
        let fed = feed.feed_all().await;
        feed.release().await?;
        fed
    }
}

/// Collects the projector of each read model it visits.
struct Collect(Vec<Box<dyn Fed>>);

impl ReadModelVisitor for Collect {
    async fn visit<M: ReadModel>(&mut self, projector: Projector<M>) -> anyhow::Result<()> {
        self.0.push(Box::new(projector));
        Ok(())
    }
}
