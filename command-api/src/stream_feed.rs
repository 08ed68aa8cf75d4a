//! Feeding the read models from the event store's own stream (without Kafka): one reader for
//! all of them ([`Feed`]). Each round reads the events committed after the read model furthest
//! behind once, verifies their chain once, opens them with one read of the data keys, maps them
//! to their wire form once, and hands every read model the part it has not applied yet, each in
//! one transaction of its own (side by side). `serve` without brokers, `rebuild` and the tools
//! feed read models this way.
//!
//! Each read model's place in the stream is its checkpoint, written in the transaction that
//! applies its events; the feed keeps a copy in memory, which is exact because it holds every
//! model's stream lock ([`Projector::try_lock_stream`]) while it feeds.

use std::collections::HashMap;

use futures::future::BoxFuture;

use event_store::chain::{ChainKey, Finding};
use event_store::keys::KeyStore;
use event_store::stream::{self, Cursor, StoredEvent};
use projections::{Applied, ProjectionError, StreamLock, StreamPosition};
use projections::{Projector, ReadModel};
use schemas::sealed::DataKey;
use schemas::PublishedEvent;
use sqlx::PgPool;

/// The most events one round reads.
const ROUND: i64 = 1000;

/// A read model's projector as the feed drives it, whatever the read model's type.
pub trait Fed: Send + Sync {
    fn name(&self) -> &'static str;
    /// [`ReadModel::tables`].
    fn tables(&self) -> &'static [&'static str];
    /// [`ReadModel::indexes_for_writes`].
    fn indexes_for_writes(&self) -> &'static [&'static str];
    /// Whether the read model reads the events of `aggregate_type`.
    fn wants(&self, aggregate_type: &str) -> bool;
    fn lock(&self) -> BoxFuture<'_, Result<Option<StreamLock>, sqlx::Error>>;
    fn position(&self) -> BoxFuture<'_, Result<StreamPosition, sqlx::Error>>;
    fn reset(&self) -> BoxFuture<'_, Result<(), sqlx::Error>>;
    /// [`Projector::apply_batch_from_stream`].
    fn apply_batch<'a>(
        &'a self,
        batch: &'a [(Option<&'a PublishedEvent>, StreamPosition)],
        keys: &'a HashMap<String, DataKey>,
    ) -> BoxFuture<'a, Result<bool, ProjectionError>>;
    /// [`Projector::apply_from_stream`].
    fn apply_one<'a>(
        &'a self,
        event: &'a PublishedEvent,
        at: StreamPosition,
    ) -> BoxFuture<'a, Result<Applied, ProjectionError>>;
    /// [`Projector::park_in_stream`].
    fn park<'a>(
        &'a self,
        event_type: &'a str,
        at: StreamPosition,
        error: &'a ProjectionError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    /// [`Projector::skip_in_stream`].
    fn skip(&self, at: StreamPosition) -> BoxFuture<'_, Result<(), sqlx::Error>>;
}

impl<M: ReadModel> Fed for Projector<M> {
    fn name(&self) -> &'static str {
        self.model().name()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.model().tables()
    }

    fn indexes_for_writes(&self) -> &'static [&'static str] {
        self.model().indexes_for_writes()
    }

    fn wants(&self, aggregate_type: &str) -> bool {
        schemas::topics::for_aggregate_type(aggregate_type)
            .is_some_and(|topic| self.model().topics().contains(&topic))
    }

    fn lock(&self) -> BoxFuture<'_, Result<Option<StreamLock>, sqlx::Error>> {
        Box::pin(self.try_lock_stream())
    }

    fn position(&self) -> BoxFuture<'_, Result<StreamPosition, sqlx::Error>> {
        Box::pin(self.stream_position())
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(Projector::reset(self))
    }

    fn apply_batch<'a>(
        &'a self,
        batch: &'a [(Option<&'a PublishedEvent>, StreamPosition)],
        keys: &'a HashMap<String, DataKey>,
    ) -> BoxFuture<'a, Result<bool, ProjectionError>> {
        Box::pin(self.apply_batch_from_stream(batch, keys))
    }

    fn apply_one<'a>(
        &'a self,
        event: &'a PublishedEvent,
        at: StreamPosition,
    ) -> BoxFuture<'a, Result<Applied, ProjectionError>> {
        Box::pin(self.apply_from_stream(event, at))
    }

    fn park<'a>(
        &'a self,
        event_type: &'a str,
        at: StreamPosition,
        error: &'a ProjectionError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(self.park_in_stream(event_type, at, error))
    }

    fn skip(&self, at: StreamPosition) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(self.skip_in_stream(at))
    }
}

impl<F: Fed + ?Sized> Fed for &F {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn tables(&self) -> &'static [&'static str] {
        (**self).tables()
    }
    fn indexes_for_writes(&self) -> &'static [&'static str] {
        (**self).indexes_for_writes()
    }
    fn wants(&self, aggregate_type: &str) -> bool {
        (**self).wants(aggregate_type)
    }
    fn lock(&self) -> BoxFuture<'_, Result<Option<StreamLock>, sqlx::Error>> {
        (**self).lock()
    }
    fn position(&self) -> BoxFuture<'_, Result<StreamPosition, sqlx::Error>> {
        (**self).position()
    }
    fn reset(&self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        (**self).reset()
    }
    fn apply_batch<'a>(
        &'a self,
        batch: &'a [(Option<&'a PublishedEvent>, StreamPosition)],
        keys: &'a HashMap<String, DataKey>,
    ) -> BoxFuture<'a, Result<bool, ProjectionError>> {
        (**self).apply_batch(batch, keys)
    }
    fn apply_one<'a>(
        &'a self,
        event: &'a PublishedEvent,
        at: StreamPosition,
    ) -> BoxFuture<'a, Result<Applied, ProjectionError>> {
        (**self).apply_one(event, at)
    }
    fn park<'a>(
        &'a self,
        event_type: &'a str,
        at: StreamPosition,
        error: &'a ProjectionError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        (**self).park(event_type, at, error)
    }
    fn skip(&self, at: StreamPosition) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        (**self).skip(at)
    }
}

/// The events of one round, read, verified and opened once for every read model.
struct Round {
    /// Where the round was read from: it holds the events committed after this.
    after: Cursor,
    events: Vec<StoredEvent>,
    /// The events that do not verify, by index: parked, never opened or applied.
    rejected: HashMap<usize, Finding>,
    /// The wire form of each verified event, by index.
    published: Vec<Option<PublishedEvent>>,
    keys: HashMap<String, DataKey>,
}

impl Round {
    fn at(&self, index: usize) -> StreamPosition {
        let event = &self.events[index];
        StreamPosition {
            transaction_id: event.transaction_id,
            position: event.position,
        }
    }
}

fn cursor(at: StreamPosition) -> Cursor {
    Cursor {
        transaction_id: at.transaction_id,
        position: at.position,
    }
}

/// One reader of the event store's stream feeding read models (see the module docs).
pub struct Feed<'a> {
    pool: PgPool,
    keys: KeyStore,
    chain: ChainKey,
    models: Vec<Box<dyn Fed + 'a>>,
    /// Each model's checkpoint, as written in its last transaction.
    positions: Vec<StreamPosition>,
    /// Per model, when it may be tried again after a failure, and how long it waits the next
    /// time: a model that keeps failing (its store or document storage down) waits apart, so
    /// the others go on.
    retry: Vec<(Option<tokio::time::Instant>, std::time::Duration)>,
    /// Whether a model's failure is waited out apart (`serve`) rather than returned (`rebuild`).
    isolate_failures: bool,
    locks: Vec<StreamLock>,
}

/// The first wait of a model after a failure; it doubles up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for Feed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("models", &self.names())
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl<'a> Feed<'a> {
    /// A feed of `models`, holding their stream locks ([`lock_all`]); `None` while another
    /// process (a running projector, a rebuild) feeds one of them.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn lock(
        parts: (PgPool, KeyStore, ChainKey),
        models: Vec<Box<dyn Fed + 'a>>,
    ) -> Result<Option<Self>, sqlx::Error> {
        match lock_all(&models).await? {
            Some(locks) => Ok(Some(Self::with_locks(parts, models, locks).await?)),
            None => Ok(None),
        }
    }

    /// A feed of `models` whose stream `locks` the caller took ([`lock_all`]).
    ///
    /// # Errors
    ///
    /// The database error reading where the models stand.
    pub async fn with_locks(
        (pool, keys, chain): (PgPool, KeyStore, ChainKey),
        models: Vec<Box<dyn Fed + 'a>>,
        locks: Vec<StreamLock>,
    ) -> Result<Self, sqlx::Error> {
        let mut positions = Vec::with_capacity(models.len());
        for model in &models {
            positions.push(model.position().await?);
        }
        let retry = vec![(None, FIRST_RETRY_WAIT); models.len()];
        Ok(Self {
            pool,
            keys,
            chain,
            models,
            positions,
            retry,
            isolate_failures: false,
            locks,
        })
    }

    /// A feed on which a model's failure is logged and waited out apart, with backoff, while
    /// the other models go on (what `serve` wants), rather than returned.
    #[must_use]
    pub fn isolating_failures(mut self) -> Self {
        self.isolate_failures = true;
        self
    }

    /// Whether model `index` is waiting out a failure now.
    fn waiting(&self, index: usize) -> bool {
        self.retry[index]
            .0
            .is_some_and(|at| tokio::time::Instant::now() < at)
    }

    /// How long until a model waiting out a failure is tried again, if one is.
    pub fn next_retry(&self) -> Option<std::time::Duration> {
        self.retry
            .iter()
            .filter_map(|(at, _)| *at)
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
            .min()
    }

    /// Releases the models' stream locks now, for the next feeder (a rebuild after a
    /// catch-up) to take at once.
    ///
    /// # Errors
    ///
    /// The database error while closing a lock's connection.
    pub async fn release(self) -> Result<(), sqlx::Error> {
        for lock in self.locks {
            lock.release().await?;
        }
        Ok(())
    }

    /// The names of the models fed.
    pub fn names(&self) -> Vec<&'static str> {
        self.models.iter().map(|m| m.name()).collect()
    }

    /// Empties every model and its bookkeeping, so it is rebuilt from the start of the stream.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn reset(&mut self) -> Result<(), sqlx::Error> {
        for model in &self.models {
            model.reset().await?;
        }
        self.positions.fill(StreamPosition::default());
        Ok(())
    }

    /// Where the model furthest behind stands (of those not waiting out a failure, unless all
    /// are).
    pub fn behind(&self) -> Cursor {
        let ready = (0..self.models.len())
            .filter(|&i| !self.waiting(i))
            .map(|i| cursor(self.positions[i]))
            .min();
        ready
            .or_else(|| self.positions.iter().copied().map(cursor).min())
            .unwrap_or_default()
    }

    /// Applies every event committed so far, waiting out transactions still running that
    /// hold the stream back (one in any database of the cluster can, for a moment); returns
    /// how many events were read (each once, for every model). What `rebuild` and the tools
    /// use to be sure the read models hold everything.
    ///
    /// # Errors
    ///
    /// As [`Feed::feed_available`].
    pub async fn feed_all(&mut self) -> anyhow::Result<usize> {
        // Everything stored when this starts, and no more: writers that go on meanwhile must
        // not keep it from finishing.
        let Some(end) = stream::newest(&self.pool).await? else {
            return Ok(0);
        };
        let mut total = 0;
        let mut ahead: Option<(Cursor, Round)> = None;
        while self.behind() < end {
            let from = self.behind();
            let round = match ahead.take() {
                // Read from where every model stands now (not so after a model failed apart).
                Some((after, round)) if after == from => round,
                _ => self.read(from).await?,
            };
            let Some(last) = round.events.last().map(StoredEvent::cursor) else {
                // An older transaction still running holds the stream back: wait it out.
                tokio::time::sleep(stream::HELD_BACK_POLL).await;
                continue;
            };
            // The next round is read, verified and opened while the models apply this one.
            let read_ahead = async {
                if last < end {
                    self.read(last).await.map(|round| Some((last, round)))
                } else {
                    Ok(None)
                }
            };
            let (results, next) = tokio::join!(self.apply_round(&round), read_ahead);
            total += self.settle(&round, results)?;
            ahead = next?;
        }
        Ok(total)
    }

    /// One round: the events committed after the model furthest behind (at most [`ROUND`]),
    /// applied to every model that has not applied them; returns how many were read.
    ///
    /// # Errors
    ///
    /// The first failure; the models that did not fail keep what they applied.
    pub async fn feed_available(&mut self) -> anyhow::Result<usize> {
        let round = self.read(self.behind()).await?;
        if round.events.is_empty() {
            return Ok(0);
        }
        let results = self.apply_round(&round).await;
        self.settle(&round, results)
    }

    /// Applies `round` to every model not waiting out a failure, side by side: where each
    /// stands then, `None` for one passed over.
    async fn apply_round(&self, round: &Round) -> Vec<Option<anyhow::Result<StreamPosition>>> {
        futures::future::join_all(self.models.iter().zip(&self.positions).enumerate().map(
            |(index, (model, &from))| async move {
                // A model waiting out a failure, or one whose wait ended after the round was
                // read past it, takes no part: it would miss the events before the round.
                if (self.isolate_failures && self.waiting(index)) || cursor(from) < round.after {
                    return None;
                }
                Some(apply(model.as_ref(), round, from).await)
            },
        ))
        .await
    }

    /// Takes in what [`Feed::apply_round`] did with `round`: the models' new places, and the
    /// failures, waited out apart when failures are isolated; returns how many events the
    /// round read.
    fn settle(
        &mut self,
        round: &Round,
        results: Vec<Option<anyhow::Result<StreamPosition>>>,
    ) -> anyhow::Result<usize> {
        let mut failure = None;
        let mut failed = 0;
        let mut tried = 0;
        for (index, result) in results.into_iter().enumerate() {
            let Some(result) = result else { continue };
            tried += 1;
            match result {
                Ok(at) => {
                    self.positions[index] = at;
                    self.retry[index] = (None, FIRST_RETRY_WAIT);
                }
                Err(e) => {
                    failed += 1;
                    let (_, wait) = self.retry[index];
                    tracing::warn!(
                        projector = self.models[index].name(),
                        retry_in_ms = wait.as_millis() as u64,
                        error.message = %e,
                        "a read model failed; the others go on"
                    );
                    self.retry[index] = (
                        Some(tokio::time::Instant::now() + wait),
                        (wait * 2).min(MAX_RETRY_WAIT),
                    );
                    failure = failure.or(Some(e));
                }
            }
        }
        match failure {
            Some(e) if !self.isolate_failures || failed == tried => Err(e),
            _ => Ok(round.events.len()),
        }
    }

    /// Whether events are committed after the model furthest behind that cannot be read yet
    /// ([`stream::is_held_back`]).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn is_held_back(&self) -> Result<bool, sqlx::Error> {
        stream::is_held_back(&self.pool, self.behind()).await
    }

    async fn read(&self, after: Cursor) -> anyhow::Result<Round> {
        let events = stream::read_after(&self.pool, after, ROUND).await?;
        let rejected: HashMap<usize, Finding> =
            stream::unverified(&self.pool, &self.chain, &events)
                .await?
                .into_iter()
                .collect();
        let mut verified: Vec<StoredEvent> = events
            .iter()
            .enumerate()
            .filter(|(index, _)| !rejected.contains_key(index))
            .map(|(_, event)| event.clone())
            .collect();
        let keys = stream::open(&self.keys, &self.pool, &mut verified).await?;
        let mut opened = verified.iter();
        let mut published = Vec::with_capacity(events.len());
        for index in 0..events.len() {
            if rejected.contains_key(&index) {
                published.push(None);
                continue;
            }
            let Some(event) = opened.next() else { break };
            let wanted = self.models.iter().any(|m| m.wants(&event.aggregate_type));
            published.push(if wanted {
                Some(event_store::wire::to_published(event, keys.get(event.key_owner()))?.1)
            } else {
                None
            });
        }
        Ok(Round {
            after,
            events,
            rejected,
            published,
            keys,
        })
    }
}

/// The stream locks of `models`, taken in the order given (so two processes asking for the
/// same models cannot each hold some of them for long); `None` while another process (a
/// running projector, a rebuild) feeds one of them.
///
/// # Errors
///
/// The database error.
pub async fn lock_all(
    models: &[Box<dyn Fed + '_>],
) -> Result<Option<Vec<StreamLock>>, sqlx::Error> {
    let mut locks = Vec::with_capacity(models.len());
    for model in models {
        match model.lock().await? {
            Some(lock) => locks.push(lock),
            None => return Ok(None),
        }
    }
    Ok(Some(locks))
}

/// Applies the events of `round` after `from` to `model`; returns where the model stands
/// then. Usually in one transaction; a round holding a row that does not verify, or an event
/// the model cannot use, goes event by event, parking that one.
async fn apply(
    model: &dyn Fed,
    round: &Round,
    from: StreamPosition,
) -> anyhow::Result<StreamPosition> {
    let first = round.events.partition_point(|e| e.cursor() <= cursor(from));
    if first == round.events.len() {
        return Ok(from);
    }
    let wanted = |index: usize| model.wants(&round.events[index].aggregate_type);
    let last = round.at(round.events.len() - 1);
    if !(first..round.events.len()).any(|i| round.rejected.contains_key(&i)) {
        let batch: Vec<(Option<&PublishedEvent>, StreamPosition)> = (first..round.events.len())
            .map(|i| {
                let event = if wanted(i) {
                    round.published[i].as_ref()
                } else {
                    None
                };
                (event, round.at(i))
            })
            .collect();
        if model.apply_batch(&batch, &round.keys).await? {
            return Ok(last);
        }
    }
    for index in first..round.events.len() {
        let at = round.at(index);
        let stored = &round.events[index];
        if let Some(finding) = round.rejected.get(&index) {
            tracing::error!(
                alert = "event-store-tampering",
                projector = model.name(),
                position = stored.position,
                finding = %finding,
                "a stored event does not verify; parked"
            );
            if wanted(index) {
                let error = ProjectionError::Unverified(finding.to_string());
                model.park(&stored.event_type, at, &error).await?;
            } else {
                model.skip(at).await?;
            }
            continue;
        }
        match round.published[index].as_ref() {
            Some(event) if wanted(index) => {
                model.apply_one(event, at).await?;
            }
            _ => model.skip(at).await?,
        }
    }
    Ok(last)
}

/// Applies every event committed so far to one read model (see [`Feed::feed_all`]); returns
/// how many were read.
///
/// # Errors
///
/// When another process feeds the model, or as [`Feed::feed_all`].
pub async fn project_all<M: ReadModel>(
    projector: &Projector<M>,
    chain: &ChainKey,
) -> anyhow::Result<usize> {
    let parts = (
        projector.pool().clone(),
        projector.keys().clone(),
        chain.clone(),
    );
    let mut feed = Feed::lock(parts, vec![Box::new(projector)])
        .await?
        .ok_or_else(|| anyhow::anyhow!("another process feeds {}", projector.model().name()))?;
    let fed = feed.feed_all().await;
    feed.release().await?;
    fed
}
