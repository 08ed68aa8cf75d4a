//! Every read model of the service, named once: `serve` and `project` feed each of them,
//! `rebuild` rebuilds each of them, from this one list. A new read model is added here and
//! nowhere else.

use event_store::chain::ChainKey;
use event_store::documents::{DocumentStorage, DocumentStore};

use crate::configuration::Secrets;
use crate::stream_feed::{self, Fed, Feed};
use event_store::keys::KeyStore;
use projections::appointments::Appointments;
use projections::audit_log::AuditLog;
use projections::medical_records::MedicalRecords;
use projections::patient_match::PatientMatch;
use projections::patient_search::PatientSearch;
use projections::rebuild::Rebuild;
use projections::{Projector, ReadModel, Tables};
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
    tables: Tables,
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
            tables: Tables::Live,
        }
    }

    /// These read models with their projectors writing `tables`.
    #[must_use]
    pub fn writing(&self, tables: Tables) -> Self {
        Self {
            tables,
            ..self.clone()
        }
    }

    /// The database the read models are in.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn projector<M: ReadModel>(&self, model: M) -> Projector<M> {
        Projector::new(self.pool.clone(), self.keys.clone(), model).writing(self.tables)
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
        visitor.visit(self.projector(Appointments)).await?;
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

    /// Rebuilds every read model from the whole event store, in one pass, into fresh tables
    /// swapped in when whole ([`rebuild`]); returns the events read (each once).
    ///
    /// # Errors
    ///
    /// When a projector is feeding a model from the event store (stop serve/project first),
    /// or the database fails; the live read models are then as they were.
    pub async fn rebuild_all(&self) -> anyhow::Result<usize> {
        let parts = (self.pool.clone(), self.keys.clone(), self.chain.clone());
        rebuild(parts, self.writing(Tables::Rebuild).fed().await?).await
    }

    /// Builds every read model afresh from the event store, as [`ReadModels::rebuild_all`]
    /// does, but compares the fresh tables with the live ones instead of swapping them in;
    /// returns the tables that differ, each with its live and fresh row counts. Bookkeeping is
    /// not compared, nor where the audit log's entries stand in its chain (a log fed from
    /// Kafka chains them in the order they arrived): its entries are.
    ///
    /// # Errors
    ///
    /// As [`ReadModels::rebuild_all`].
    pub async fn compare_with_rebuild(&self) -> anyhow::Result<Vec<(String, i64, i64)>> {
        let parts = (self.pool.clone(), self.keys.clone(), self.chain.clone());
        let models = self.writing(Tables::Rebuild).fed().await?;
        let tables: Vec<&'static str> = models.iter().flat_map(|m| m.tables()).copied().collect();
        let pool = self.pool.clone();
        rebuild_then(parts, models, |fresh| async move {
            let differing = differing(&pool, &tables).await;
            fresh.abandon().await?;
            differing
        })
        .await
        .map(|(differing, _)| differing)
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

/// Rebuilds `models` (projectors writing [`Tables::Rebuild`]) from the whole event store in one
/// pass: fresh tables, filled by one feed, indexed and swapped in whole
/// ([`projections::rebuild`]), all under the models' stream locks. Returns the events read.
///
/// # Errors
///
/// When another process feeds one of the models, or feeding or swapping fails; the live
/// read models are then as they were and the fresh tables are dropped.
pub async fn rebuild(
    parts: (PgPool, KeyStore, ChainKey),
    models: Vec<Box<dyn Fed>>,
) -> anyhow::Result<usize> {
    rebuild_then(parts, models, |fresh| async move {
        fresh.swap_in().await?;
        Ok(())
    })
    .await
    .map(|((), read)| read)
}

/// The tables among `tables` whose live rows differ from the fresh ones, with both counts.
async fn differing(
    pool: &PgPool,
    tables: &[&'static str],
) -> anyhow::Result<Vec<(String, i64, i64)>> {
    let mut differing = Vec::new();
    for &table in tables {
        if BOOKKEEPING.contains(&table) {
            continue;
        }
        let rows = if table == "audit_log" {
            "entry_id::text || kind || action || coalesce(patient_id::text, '') \
             || coalesce(user_id, '') || recorded_at::text || detail::text"
        } else {
            "t::text"
        };
        let digest = |schema: &str| {
            format!(
                "SELECT count(*), md5(string_agg({rows}, '|' ORDER BY {rows}))
                   FROM {schema}.{table} t"
            )
        };
        let (live, live_digest): (i64, Option<String>) = sqlx::query_as(&digest("projections"))
            .fetch_one(pool)
            .await?;
        let (built, built_digest): (i64, Option<String>) =
            sqlx::query_as(&digest(projections::rebuild::SCHEMA))
                .fetch_one(pool)
                .await?;
        if live_digest != built_digest {
            differing.push((table.to_owned(), live, built));
        }
    }
    Ok(differing)
}

/// The tables of a read model's bookkeeping (how far it has read), not its content.
const BOOKKEEPING: &[&str] = &[
    "applied_sequences",
    "stream_checkpoints",
    "parked_messages",
    "audit_chain_head",
];

/// Builds `models` afresh from the whole event store into fresh tables, then hands those to
/// `finish` (which swaps them in, or compares and abandons them); returns what `finish`
/// answered and the events read. A failure before `finish` abandons the fresh tables.
async fn rebuild_then<T, F, Fut>(
    parts: (PgPool, KeyStore, ChainKey),
    models: Vec<Box<dyn Fed>>,
    finish: F,
) -> anyhow::Result<(T, usize)>
where
    F: FnOnce(Rebuild) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let Some(locks) = stream_feed::lock_all(&models).await? else {
        anyhow::bail!(
            "a projector is feeding a read model from the event store; stop serve/project first"
        );
    };
    let names = models.iter().map(|m| m.name()).collect();
    let tables = models.iter().flat_map(|m| m.tables()).copied().collect();
    let for_writes = models
        .iter()
        .flat_map(|m| m.indexes_for_writes())
        .copied()
        .collect();
    let pool = parts.0.clone();
    let fresh = Rebuild::prepare(&pool, names, (tables, for_writes)).await?;
    let mut feed = Feed::with_locks(parts, models, locks).await?;
    // Each model's tables as a fresh model's (rows a migration put in, such as the audit
    // chain's head).
    let started = std::time::Instant::now();
    let outcome = match feed.reset().await {
        Ok(()) => feed.feed_all().await,
        Err(e) => Err(e.into()),
    };
    if let Ok(read) = &outcome {
        tracing::info!(
            events = read,
            feed_ms = started.elapsed().as_millis() as u64,
            "the store replayed into fresh read models"
        );
    }
    let outcome = match outcome {
        Ok(read) => finish(fresh).await.map(|done| (done, read)),
        Err(e) => {
            fresh.abandon().await?;
            Err(e)
        }
    };
    feed.release().await?;
    outcome
}

/// Collects the projector of each read model it visits.
struct Collect(Vec<Box<dyn Fed>>);

impl ReadModelVisitor for Collect {
    async fn visit<M: ReadModel>(&mut self, projector: Projector<M>) -> anyhow::Result<()> {
        self.0.push(Box::new(projector));
        Ok(())
    }
}
