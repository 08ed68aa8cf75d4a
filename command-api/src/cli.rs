//! The `patient-service` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use projections::patient_match::PatientMatch;
use projections::patient_search::PatientSearch;
use projections::{Projector, ReadModel};
use sqlx::PgPool;

use crate::auth::{Authenticator, Role};
use crate::configuration::Settings;
use crate::http::system_clock;
use crate::startup::{self, Roles, Service};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "patient-service",
    version,
    about = "Event-sourced patient service"
)]
pub struct Cli {
    /// Folder of the <APP_ENVIRONMENT>.yaml configuration files.
    #[arg(long, global = true, env = "APP_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// API, relay and projectors in one process. With no database configured, runs a private
    /// PostgreSQL cluster in the data folder; with no Kafka, projectors read the event store.
    Serve,
    /// The HTTP API alone (needs DATABASE_URL).
    Api,
    /// The relay alone: publishes committed events to Kafka (needs DATABASE_URL and KAFKA_BROKERS).
    Relay,
    /// The projectors alone: a Kafka consumer group, or the event store's stream without Kafka.
    Project,
    /// Applies the database migrations and exits.
    Migrate,
    /// Empties the read models and rebuilds them from the event store, then exits.
    Rebuild,
    /// Mints a development token signed with the configured secret.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// A role: admin, registrar, clinician, scheduler, auditor, patient, service. Repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Measures registrations per second, raw insert transactions per second and projection
    /// lag on one database, and prints the figures.
    Bench(crate::bench::BenchArgs),
    /// Evaluates duplicate detection on a FEBRL-format CSV: precision, recall, F1 and match
    /// latency.
    MatchEval(crate::match_eval::MatchEvalArgs),
    /// Streams the event history as NDJSON on stdout (progress on stderr), in commit order.
    Replay(crate::replay::ReplayArgs),
}

/// Runs the command line.
///
/// # Errors
///
/// Whatever the chosen command fails with.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config_dir.as_deref())?;
    if !matches!(cli.command, Command::Token { .. }) {
        telemetry::init_subscriber(telemetry::get_subscriber(&settings.log, std::io::stderr));
    }
    let roles = |api, relay, projectors| Roles {
        api,
        relay,
        projectors,
    };
    match cli.command {
        Command::Serve => {
            Service::start(&settings, Roles::ALL, system_clock())
                .await?
                .run_until_stopped()
                .await
        }
        Command::Api => {
            Service::start(&settings, roles(true, false, false), system_clock())
                .await?
                .run_until_stopped()
                .await
        }
        Command::Relay => {
            Service::start(&settings, roles(false, true, false), system_clock())
                .await?
                .run_until_stopped()
                .await
        }
        Command::Project => {
            Service::start(&settings, roles(false, false, true), system_clock())
                .await?
                .run_until_stopped()
                .await
        }
        Command::Migrate => {
            with_database(&settings, |_| async { Ok(()) }).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Rebuild => {
            let keys = settings.secrets()?.keys;
            let events = with_database(&settings, |pool| async move {
                Ok(
                    rebuild(Projector::new(pool.clone(), keys.clone(), PatientSearch)).await?
                        + rebuild(Projector::new(pool, keys, PatientMatch)).await?,
                )
            })
            .await?;
            tracing::info!(events, "read models rebuilt");
            Ok(())
        }
        Command::Token { user, roles } => {
            let parsed: Vec<Role> = roles
                .iter()
                .map(|r| Role::parse(r).ok_or_else(|| anyhow::anyhow!("unknown role {r}")))
                .collect::<anyhow::Result<_>>()?;
            let token =
                Authenticator::new(&settings.auth).mint(&user, &parsed, chrono::Utc::now())?;
            println!("{token}");
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(&settings, args).await,
        Command::MatchEval(args) => crate::match_eval::run(&settings, args).await,
        Command::Replay(args) => crate::replay::run(&settings, args).await,
    }
}

/// Connects (starting the embedded cluster if no database is configured), migrates, runs
/// `work`, then closes the pool and stops the cluster whatever `work` returned.
async fn with_database<T, F, Fut>(settings: &Settings, work: F) -> anyhow::Result<T>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let (pool, embedded) = startup::connect(settings, true).await?;
    let result = match startup::migrate(&pool).await {
        Ok(()) => work(pool.clone()).await,
        Err(e) => Err(e),
    };
    pool.close().await;
    if let Some(cluster) = embedded {
        cluster.stop()?;
    }
    result
}

/// Empties one read model and replays the whole event store into it; returns the events read.
async fn rebuild<M: ReadModel>(projector: Projector<M>) -> anyhow::Result<usize> {
    let _lock = projector.try_lock_stream().await?.ok_or_else(|| {
        anyhow::anyhow!(
            "a projector is feeding {} from the event store; stop serve/project first",
            projector.model().name()
        )
    })?;
    projector.reset().await?;
    let mut total = 0;
    loop {
        match startup::project_available(&projector).await? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}
