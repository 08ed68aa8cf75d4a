//! Wires the roles of the service together: database (configured or embedded), migrations,
//! the HTTP API, the relay and the projectors, and their orderly shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use event_store::relay::{Relay, RelaySettings};
use event_store::schedule::AppointmentStore;
use event_store::store::PatientStore;
use event_store::stream::{self, COMMIT_CHANNEL};
use projections::{Projector, ReadModel};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::configuration::Settings;
use crate::embedded_postgres::EmbeddedPostgres;
use crate::http::{self, AppState, Clock};
use crate::read_models::{ReadModelVisitor, ReadModels};

/// How long a start waits for the brokers to create the topics before going on without them
/// (the relay and projectors keep trying).
const TOPICS_AT_START: Duration = Duration::from_secs(3);

/// Which parts of the service run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub relay: bool,
    pub projectors: bool,
    /// The process managers, reminders, wait list and notification outbox
    /// ([`application::background`]): one instance active at a time, the others standing by.
    pub background: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        relay: true,
        projectors: true,
        background: true,
    };

    /// No role: a start point for a process of some roles (`Roles { relay: true, ..NONE }`).
    pub const NONE: Roles = Roles {
        api: false,
        relay: false,
        projectors: false,
        background: false,
    };
}

/// A running service.
#[derive(Debug)]
pub struct Service {
    /// The port the API listens on, when it runs (else the health checks', on `health.port`).
    pub port: Option<u16>,
    pub pool: PgPool,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    embedded: Option<EmbeddedPostgres>,
}

/// Opens the database pool: the configured database, or (when `allow_embedded`) the embedded
/// cluster in the data folder.
///
/// # Errors
///
/// When the database cannot be reached or the embedded cluster cannot start.
/// The API's router over `pool`, configured as `settings` say (what `serve` listens with, and
/// what the import sends its requests through in its own process).
///
/// # Errors
///
/// The identity provider's key set cannot be loaded, or the document storage is misconfigured.
pub async fn api_router(
    settings: &Settings,
    pool: PgPool,
    (clock, secrets): (Clock, crate::configuration::Secrets),
) -> anyhow::Result<axum::Router> {
    let state = api_state(settings, pool, (clock, secrets)).await?;
    Ok(http::router(
        state,
        Duration::from_secs(settings.http.request_timeout_secs),
        settings.http.body_limit_bytes,
    ))
}

/// The API's state: its services, authentication and settings.
///
/// # Errors
///
/// When a key set cannot be read or the document settings are wrong.
pub async fn api_state(
    settings: &Settings,
    pool: PgPool,
    (clock, secrets): (Clock, crate::configuration::Secrets),
) -> anyhow::Result<AppState> {
    let authenticator = Authenticator::new(&settings.auth)
        .with_jwks(crate::auth::jwks::Jwks::load(&settings.auth).await?)
        .with_backend(
            crate::auth::backend::BackendServices::load(&settings.auth, pool.clone()).await?,
        );
    let state = AppState::new(pool, authenticator, clock, secrets)
        .with_retention_days(settings.retention.archived_days)
        .with_emergency_limit(settings.auth.break_glass_patients_per_hour)
        .with_documents(&settings.documents)?
        .with_scheduling(settings.scheduling.clone())
        .with_smart(&settings.auth)
        .with_exports(&settings.export)
        .with_max_in_flight(settings.http.max_in_flight)
        .with_kafka(&settings.kafka)
        .with_https(settings.http.tls_cert_path.is_some());
    Ok(state)
}

pub async fn connect(
    settings: &Settings,
    allow_embedded: bool,
) -> anyhow::Result<(PgPool, Option<EmbeddedPostgres>)> {
    let (options, embedded) = match settings.database.connect_options()? {
        Some(options) => (options, None),
        None if allow_embedded => {
            let cluster = EmbeddedPostgres::start(&settings.database.data_dir).await?;
            (cluster.connect_options(), Some(cluster))
        }
        None => anyhow::bail!("no database configured: set DATABASE_URL (or APP_DATABASE__URL)"),
    };
    // The server notices a vanished client within about 90 s rather than hours, so the
    // advisory locks of a relay or projector cut off by the network pass to a standby.
    //
    // No transaction of the service waits on anything but its own statements; one left idle
    // (its task cancelled mid-way, say) would hold the cluster-wide xmin horizon, and with it
    // every relay and stream projector. The server ends such a session after 10 s.
    let options = options.options([
        ("tcp_keepalives_idle", "60"),
        ("tcp_keepalives_interval", "10"),
        ("tcp_keepalives_count", "3"),
        ("idle_in_transaction_session_timeout", "10000"),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(settings.database.acquire_timeout())
        // Pinging every connection before use halves throughput; a dead connection fails
        // its query instead (answered 503) and is dropped.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    Ok((pool, embedded))
}

/// Connects (starting the embedded cluster if no database is configured), migrates, runs
/// `work`, then closes the pool and stops the cluster whatever `work` returned.
///
/// # Errors
///
/// Whatever connecting, migrating or `work` fails with.
pub async fn with_database<T, F, Fut>(settings: &Settings, work: F) -> anyhow::Result<T>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let (pool, embedded) = connect(settings, true).await?;
    let result = match migrate(&pool).await {
        Ok(()) => work(pool.clone()).await,
        Err(e) => Err(e),
    };
    pool.close().await;
    if let Some(cluster) = embedded {
        cluster.stop()?;
    }
    result
}

/// Applies the event store's and the read models' migrations.
///
/// # Errors
///
/// The migration error.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    event_store::MIGRATOR
        .run(pool)
        .await
        .context("event store migrations")?;
    projections::migrate(pool)
        .await
        .context("read model migrations")?;
    Ok(())
}

/// Whether every migration of both sets is applied.
///
/// # Errors
///
/// The database error.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    Ok(
        latest_applied(pool, "public", &event_store::MIGRATOR).await?
            && latest_applied(pool, "projections", &projections::MIGRATOR).await?,
    )
}

/// Whether the newest migration of `migrator` is recorded in `schema`'s `_sqlx_migrations`.
async fn latest_applied(
    pool: &PgPool,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<bool, sqlx::Error> {
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(version) FROM {schema}._sqlx_migrations WHERE success"
    ))
    .fetch_one(pool)
    .await
    .or_else(|e| match &e {
        // undefined_table: nothing migrated yet
        sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => Ok(None),
        _ => Err(e),
    })?;
    Ok(applied == Some(latest))
}

impl Service {
    /// The embedded cluster this service runs on, if it does.
    pub fn embedded(&self) -> Option<&EmbeddedPostgres> {
        self.embedded.as_ref()
    }

    /// Starts `roles` against the configured (or embedded) database.
    ///
    /// # Errors
    ///
    /// When the database, the listener or the Kafka clients cannot be set up.
    pub async fn start(settings: &Settings, roles: Roles, clock: Clock) -> anyhow::Result<Self> {
        let (pool, embedded) = connect(settings, roles == Roles::ALL).await?;
        let result = Self::start_with_pool(settings, roles, clock, pool.clone()).await;
        match result {
            Ok(mut service) => {
                service.embedded = embedded;
                Ok(service)
            }
            Err(e) => {
                if let Some(cluster) = embedded {
                    pool.close().await;
                    cluster.stop()?;
                }
                Err(e)
            }
        }
    }

    /// Starts `roles` on an existing pool.
    ///
    /// # Errors
    ///
    /// When the listener or the Kafka clients cannot be set up, or migrations fail.
    pub async fn start_with_pool(
        settings: &Settings,
        roles: Roles,
        clock: Clock,
        pool: PgPool,
    ) -> anyhow::Result<Self> {
        if settings.database.auto_migrate {
            migrate(&pool).await?;
        }
        let secrets = settings.secrets()?;
        for warning in settings.transport_warnings() {
            tracing::warn!("{warning}");
        }
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let kafka = settings.kafka.client_config();
        if let (Some(kafka), true) = (&kafka, roles.relay || roles.projectors) {
            // Create the topics before anyone subscribes when the brokers are up; when they are
            // not, the relay and projector tasks keep trying (Kafka down must not stop a start).
            // A broker that does not answer within a few seconds does not hold up the start.
            match tokio::time::timeout(TOPICS_AT_START, ensure_topics(kafka, &settings.kafka)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error.message = %e, "cannot create topics now; will retry");
                }
                Err(_) => tracing::warn!("the brokers do not answer; topics will be created later"),
            }
        }
        if roles.relay {
            match &kafka {
                Some(kafka) => {
                    let relay = Relay::new(
                        pool.clone(),
                        secrets.keys.clone(),
                        secrets.chain.clone(),
                        kafka,
                        RelaySettings {
                            topic_prefix: settings.kafka.topic_prefix.clone(),
                            message_timeout: settings.kafka.message_timeout(),
                            batch_size: settings.kafka.relay_batch_size.max(1),
                            ..RelaySettings::default()
                        },
                    )?;
                    let heads = projections::audit_head::HeadPublisher::new(
                        pool.clone(),
                        secrets.chain.clone(),
                        kafka,
                        settings.kafka.topic(schemas::topics::AUDIT_HEAD),
                        Duration::from_secs(settings.kafka.audit_head_interval_secs.max(1)),
                    )?;
                    let (kafka, kafka_settings, token) =
                        (kafka.clone(), settings.kafka.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        if topics_ready(&kafka, &kafka_settings, &token).await {
                            tokio::join!(relay.run(token.clone()), heads.run(token));
                        }
                    });
                }
                None if roles == Roles::ALL => {
                    tracing::info!(
                        "no Kafka brokers configured: relay off, projectors read the event store"
                    );
                }
                None => anyhow::bail!(
                    "the relay needs Kafka: set KAFKA_BROKERS (or APP_KAFKA__BROKERS)"
                ),
            }
        }
        if roles.projectors {
            let read_models =
                ReadModels::new(pool.clone(), &secrets, settings.documents.storage()?);
            if settings.kafka.client_config().is_some() {
                read_models
                    .visit_each(&mut Spawner {
                        tasks: &mut tasks,
                        settings,
                        shutdown: &shutdown,
                    })
                    .await?;
            } else {
                tasks.spawn(run_stream_feed(read_models, shutdown.clone()));
            }
        }
        // Commits of this process wake the readers of other processes (the relay, projectors
        // elsewhere) by one notification sent outside the writing transactions.
        if roles.api || roles.background {
            tasks.spawn(event_store::bell::forward(pool.clone(), shutdown.clone()));
        }
        if roles.background {
            tasks.spawn(application::background::run(
                PatientStore::new(pool.clone(), secrets.keys.clone(), secrets.chain.clone()),
                AppointmentStore::new(pool.clone(), secrets.keys.clone(), secrets.chain.clone()),
                settings.scheduling.clone(),
                clock.clone(),
                shutdown.clone(),
            ));
        }
        let mut port = None;
        if roles.api {
            // The embedded default, answering only this machine, is for development; anything
            // with a database of its own, or listening beyond loopback, is a deployment.
            let loopback = settings.http.host == "localhost"
                || settings
                    .http
                    .host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            let development = settings.database.url.is_none() && loopback;
            settings.auth.check_secret(development)?;
            if !settings.auth.uses_jwks() {
                if settings.auth.uses_development_secret() {
                    tracing::warn!("the development JWT secret is in use: set APP_AUTH__JWT_SECRET outside development");
                }
                if settings.auth.issuer.is_none() || settings.auth.audience.is_none() {
                    tracing::warn!("HS256 tokens are accepted without an issuer and audience: set auth.issuer and auth.audience");
                }
            }
            if !settings.auth.backend_clients.is_empty()
                && settings.auth.backend_token_url.is_none()
            {
                tracing::warn!("backend clients' assertions are checked against the URL each request names (its Host): set auth.backend_token_url to the token endpoint's public URL");
            }
            let state = api_state(settings, pool.clone(), (clock.clone(), secrets)).await?;
            tasks.spawn(http::fhir::export_runner::run(
                state.clone(),
                shutdown.clone(),
            ));
            let router = http::router(
                state,
                Duration::from_secs(settings.http.request_timeout_secs),
                settings.http.body_limit_bytes,
            );
            let tls = match (&settings.http.tls_cert_path, &settings.http.tls_key_path) {
                (Some(cert), Some(key)) => Some(http::tls::server_config(cert, key)?),
                (None, None) => None,
                _ => anyhow::bail!("set both http.tls_cert_path and http.tls_key_path, or neither"),
            };
            let address: SocketAddr = format!("{}:{}", settings.http.host, settings.http.port)
                .parse()
                .context("http.host and http.port must form a socket address")?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?;
            let bound = listener.local_addr()?;
            port = Some(bound.port());
            tracing::info!(address = %bound, https = tls.is_some(), "API listening");
            let token = shutdown.clone();
            let head_timeout = Duration::from_millis(settings.http.head_timeout_ms.max(1));
            tasks.spawn(http::server::serve(
                listener,
                router,
                (tls, head_timeout),
                token,
            ));
        }
        if let (false, Some(health_port)) = (roles.api, settings.health.port) {
            // No API here: its health checks and metrics on a port of their own, readiness
            // answering for the readers this process runs.
            let duties = http::health::Duties {
                relay: roles.relay,
                read_models: roles.projectors && kafka.is_none(),
                kafka_read_models: roles.projectors && kafka.is_some(),
                process_managers: roles.background,
                stuck_after: Duration::from_secs(settings.health.stuck_after_secs),
            };
            // Nothing here takes a token: no key set is fetched.
            let state = AppState::new(
                pool.clone(),
                Authenticator::new(&settings.auth),
                clock,
                settings.secrets()?,
            )
            .with_kafka(&settings.kafka);
            let address: SocketAddr = format!("{}:{health_port}", settings.http.host)
                .parse()
                .context("http.host and health.port must form a socket address")?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?;
            let bound = listener.local_addr()?;
            port = Some(bound.port());
            tracing::info!(address = %bound, "health checks and metrics listening");
            let head_timeout = Duration::from_millis(settings.http.head_timeout_ms.max(1));
            tasks.spawn(http::server::serve(
                listener,
                http::operations_router(state, duties),
                (None, head_timeout),
                shutdown.clone(),
            ));
        }
        Ok(Self {
            port,
            pool,
            shutdown,
            tasks,
            embedded: None,
        })
    }

    /// A token that stops the service when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every role, waits for them, closes the pool and stops the embedded cluster.
    ///
    /// # Errors
    ///
    /// When the embedded cluster does not stop cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.pool.close().await;
        if let Some(cluster) = self.embedded.take() {
            cluster.stop()?;
        }
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM (or a role ends), then stops.
    ///
    /// # Errors
    ///
    /// As [`Service::stop`].
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = terminate.recv() => tracing::info!("terminated; shutting down"),
            Some(_) = self.tasks.join_next() => tracing::warn!("a role stopped; shutting down"),
        }
        self.stop().await
    }
}

/// Starts every read model's Kafka-fed projector (see [`spawn_projector`]).
struct Spawner<'a> {
    tasks: &'a mut JoinSet<()>,
    settings: &'a Settings,
    shutdown: &'a CancellationToken,
}

impl ReadModelVisitor for Spawner<'_> {
    async fn visit<M: ReadModel>(&mut self, projector: Projector<M>) -> anyhow::Result<()> {
        spawn_projector(self.tasks, projector, self.settings, self.shutdown);
        Ok(())
    }
}

/// Runs a projector as a member of its Kafka consumer group.
fn spawn_projector<M: ReadModel>(
    tasks: &mut JoinSet<()>,
    projector: Projector<M>,
    settings: &Settings,
    shutdown: &CancellationToken,
) {
    let token = shutdown.clone();
    let Some(mut kafka) = settings.kafka.client_config() else {
        return;
    };
    // How long the broker may hold an empty fetch: an upper bound on projection lag with
    // brokers that do not answer a waiting fetch as data arrives.
    kafka.set(
        "fetch.wait.max.ms",
        settings.kafka.fetch_wait_max_ms.to_string(),
    );
    let group = format!(
        "{}{}.{}",
        settings.kafka.topic_prefix,
        settings.kafka.consumer_group_prefix,
        projector.model().name()
    );
    let kafka_settings = settings.kafka.clone();
    tasks.spawn(async move {
        if !topics_ready(&kafka, &kafka_settings, &token).await {
            return;
        }
        let prefix = &kafka_settings.topic_prefix;
        if let Err(e) = projections::kafka::run(projector, &kafka, &group, prefix, token).await {
            tracing::error!(error.message = %e, "projector could not start");
        }
    });
}

/// Creates the topics, retrying while the brokers are unreachable (Kafka being down must not
/// stop the service from starting: commands go on and the relay catches up later). Returns
/// false if shut down first.
async fn topics_ready(
    kafka: &rdkafka::ClientConfig,
    settings: &crate::configuration::KafkaSettings,
    shutdown: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        // An unreachable broker holds the request until the client's own timeout: a stop
        // does not wait for it.
        let created = tokio::select! {
            () = shutdown.cancelled() => return false,
            created = ensure_topics(kafka, settings) => created,
        };
        match created {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error.message = %e, "cannot create topics yet; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn ensure_topics(
    kafka: &rdkafka::ClientConfig,
    settings: &crate::configuration::KafkaSettings,
) -> Result<(), rdkafka::error::KafkaError> {
    event_store::relay::ensure_topics(
        kafka,
        &settings.topic_prefix,
        settings.partitions,
        settings.replication,
    )
    .await
}

/// How long the feed gathers commits before it reads them, once it is woken: under load a
/// round then applies many events in each read model's transaction instead of one, at the
/// cost of this much projection lag.
const GATHER: Duration = Duration::from_millis(5);

/// Feeds every read model from the event store's ordered stream (no Kafka), from one reader
/// ([`crate::stream_feed::Feed`]): the embedded default. Stands by while another process (a
/// running `serve` or `project`, a rebuild) feeds them.
pub async fn run_stream_feed(read_models: ReadModels, shutdown: CancellationToken) {
    let mut feed = loop {
        match read_models.feed().await {
            Ok(Some(feed)) => break feed.isolating_failures(),
            Ok(None) => {
                tracing::debug!("another process feeds the read models; standing by");
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "cannot take the projector locks; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    let mut listener = None;
    let mut delay = Duration::from_millis(100);
    let mut held_back_wait = stream::HELD_BACK_POLL;
    // Commits of this process ring at once; other processes' arrive by notification.
    let mut rung = event_store::bell::subscribe();
    while !shutdown.is_cancelled() {
        if listener.is_none() {
            match PgListener::connect_with(read_models.pool()).await {
                Ok(mut l) => {
                    if l.listen(COMMIT_CHANNEL).await.is_ok() {
                        listener = Some(l);
                    }
                }
                Err(e) => tracing::warn!(error.message = %e, "cannot listen for commits; polling"),
            }
        }
        // Rung from here on means committed after this read began: read again.
        rung.mark_unchanged();
        match feed.feed_available().await {
            Ok(n) if n > 0 => {
                delay = Duration::from_millis(100);
                continue;
            }
            Ok(_) => {
                delay = Duration::from_millis(100);
                let held_back = feed.is_held_back().await.unwrap_or(false);
                // Held back by an older transaction: look again soon, then less often the
                // longer it stays open.
                let timeout = if held_back {
                    held_back_wait = (held_back_wait * 2).min(Duration::from_millis(500));
                    held_back_wait
                } else {
                    held_back_wait = stream::HELD_BACK_POLL;
                    Duration::from_millis(500)
                };
                // A model waiting out a failure is tried again when its wait ends.
                let timeout = feed
                    .next_retry()
                    .map_or(timeout, |retry| timeout.min(retry));
                let wait = async {
                    loop {
                        match listener.as_mut() {
                            Some(l) => match l.recv().await {
                                // This process's own commits ring the bell already.
                                Ok(n) if n.payload() == event_store::bell::this_process() => {}
                                Ok(_) => return,
                                Err(_) => {
                                    listener = None;
                                    return;
                                }
                            },
                            None => {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                return;
                            }
                        }
                    }
                };
                let woken = tokio::select! {
                    () = shutdown.cancelled() => false,
                    _ = tokio::time::timeout(timeout, wait) => true,
                    _ = rung.changed() => true,
                };
                if woken && !held_back {
                    tokio::time::sleep(GATHER).await;
                }
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "stream projection failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
