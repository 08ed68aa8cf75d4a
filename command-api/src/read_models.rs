//! Every read model of the service, named once: `serve` and `project` feed each of them,
//! `rebuild` rebuilds each of them, from this one list. A new read model is added here and
//! nowhere else.

use event_store::chain::ChainKey;
use event_store::documents::DocumentStore;
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
    pub fn new(pool: PgPool, keys: KeyStore, chain: ChainKey, documents: DocumentStore) -> Self {
        Self {
            pool,
            keys,
            chain,
            documents,
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
}
