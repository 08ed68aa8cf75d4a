//! The `patient-service` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
            let (pool, embedded) = startup::connect(&settings, true).await?;
            startup::migrate(&pool).await?;
            pool.close().await;
            if let Some(cluster) = embedded {
                cluster.stop()?;
            }
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Rebuild => {
            let (pool, embedded) = startup::connect(&settings, true).await?;
            startup::migrate(&pool).await?;
            let projector = projections::Projector::new(
                pool.clone(),
                projections::patient_search::PatientSearch,
            );
            projector.reset().await?;
            let mut total = 0;
            loop {
                let n = startup::project_available(&projector).await?;
                if n == 0 {
                    break;
                }
                total += n;
            }
            tracing::info!(events = total, "read models rebuilt");
            pool.close().await;
            if let Some(cluster) = embedded {
                cluster.stop()?;
            }
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
    }
}
