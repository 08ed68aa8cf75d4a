//! The `patient-service` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use sqlx::PgPool;

use crate::auth::{Authenticator, Role, TokenExtras};
use crate::configuration::Settings;
use crate::http::{system_clock, Clock};
use crate::read_models::ReadModels;
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
    /// API, relay, projectors and the background work in one process. With no database configured, runs a private
    /// PostgreSQL cluster in the data folder; with no Kafka, projectors read the event store.
    Serve,
    /// The HTTP API alone (needs DATABASE_URL).
    Api,
    /// The relay alone: publishes committed events to Kafka (needs DATABASE_URL and KAFKA_BROKERS).
    Relay,
    /// The projectors (a Kafka consumer group, or the event store's stream without Kafka) and
    /// the background work.
    Project,
    /// The background work alone: process managers, reminders, the wait list, the notification
    /// outbox and sweeps (needs DATABASE_URL). One instance is active at a time; others stand
    /// by and take over when it stops.
    Background,
    /// Applies the database migrations and exits.
    Migrate,
    /// Rebuilds the read models into fresh tables and swaps them in, then exits.
    Rebuild,
    /// Imports FHIR R4 Bundles and bulk NDJSON files (a file, or a folder of them) through the
    /// API's use cases, and prints `imported=N skipped=N refused=N` and the counts per type and
    /// reason.
    Import {
        /// A Bundle (.json), an NDJSON file (.ndjson), or a folder of them.
        path: std::path::PathBuf,
        /// The source's name: recorded as the reason of overrides and acknowledgements, and in
        /// the identifier system its patient ids are kept under. The folder's or file's name
        /// by default.
        #[arg(long)]
        source: Option<String>,
    },
    /// Mints a development token signed with the configured secret.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// A role: admin, registrar, clinician, scheduler, auditor, patient, service. Repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// For the patient role: the patient the user is.
        #[arg(long)]
        patient_id: Option<uuid::Uuid>,
        /// The user's organization (the `org` claim).
        #[arg(long)]
        org: Option<String>,
        /// The session id (the `sid` claim), for revocation and idle timeout.
        #[arg(long)]
        session: Option<String>,
        /// SMART on FHIR scopes (the `scope` claim, space-separated), narrowing the roles.
        #[arg(long)]
        scope: Option<String>,
        /// The SMART launch context's patient (the `patient` claim).
        #[arg(long)]
        launch_patient: Option<uuid::Uuid>,
    },
    /// Streams the event history as NDJSON on stdout (progress on stderr), in commit order.
    Replay(crate::replay::ReplayArgs),
    /// Writes a backup of the database to a file (pg_dump's custom format): the event store,
    /// the audit chain, the wrapped data keys. The master and audit keys are not in it.
    Backup {
        /// The file to write.
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Restores a backup into an empty database, starts a new epoch of the store (it enters the
    /// published identity of the events written from now on) and, with Kafka, forgets again the
    /// patients the patient topic says were forgotten since the backup; then run `rebuild` and
    /// `audit verify`.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: std::path::PathBuf,
    },
    /// Compares the event store with its topics and names every difference (exit 1 if any).
    Reconcile {
        /// Also builds every read model afresh from the store and names each table that
        /// differs from the live one (stop `project`/`serve` first).
        #[arg(long)]
        read_models: bool,
    },
    /// Audit tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Data retention.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recomputes the hash chains of the event store and of the audit log and checks every
    /// audited event against the store; names each altered, deleted or inserted row, and each
    /// stored event the audit log passed without an entry. Exits non-zero if anything does not
    /// verify.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Erases (forgets, reason retention-expired) every archived patient past
    /// `retention.archived_days`; patients on legal hold are kept.
    Purge(crate::retention::PurgeArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Rewraps every patient data key with the active master key (`security.master_key`);
    /// keys wrapped by a previous one must have it in `security.previous_master_keys`. Events
    /// are not touched.
    Rotate,
    /// Retires each previous audit key (`security.previous_audit_keys`) after the last row it
    /// hashed, once both hash chains verify; run it once every process hashes with the new
    /// `security.audit_key`. Afterwards a row hashed with a retired key past that point fails
    /// `audit verify`.
    RotateAudit,
}

/// The binary's entry: parses the command line and runs it on a multi-threaded tokio runtime,
/// unless this process is the text-extraction child the service runs
/// ([`crate::extraction::run_child_if_asked`]), which must run before any runtime exists.
///
/// # Errors
///
/// Whatever the chosen command fails with.
pub fn main() -> anyhow::Result<()> {
    main_with_clock(system_clock())
}

/// [`main`] with the service's time taken from `clock`: the end-to-end tests start the binary
/// on the same fixed clock as the service they run in their own process.
///
/// # Errors
///
/// Whatever the chosen command fails with.
pub fn main_with_clock(clock: Clock) -> anyhow::Result<()> {
    if let Some(child) = crate::extraction::run_child_if_asked() {
        return child;
    }
    let cli = Cli::parse();
    runtime()?.block_on(run(cli, clock))
}

/// The multi-threaded tokio runtime every command of the service's binaries runs on.
///
/// # Errors
///
/// When the runtime cannot be built.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Runs the command line, the service roles on `clock`.
///
/// # Errors
///
/// Whatever the chosen command fails with.
pub async fn run(cli: Cli, clock: Clock) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config_dir.as_deref())?;
    if !matches!(cli.command, Command::Token { .. }) {
        telemetry::init_subscriber(telemetry::get_subscriber(&settings.log, std::io::stderr));
    }
    let roles = |api, relay, projectors, background| Roles {
        api,
        relay,
        projectors,
        background,
    };
    match cli.command {
        Command::Serve => {
            Service::start(&settings, Roles::ALL, clock)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Api => {
            Service::start(&settings, roles(true, false, false, false), clock)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Relay => {
            Service::start(&settings, roles(false, true, false, false), clock)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Project => {
            Service::start(&settings, roles(false, false, true, true), clock)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Background => {
            Service::start(&settings, roles(false, false, false, true), clock)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Migrate => {
            startup::with_database(&settings, |_| async { Ok(()) }).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Import { path, source } => {
            let source = source.unwrap_or_else(|| {
                path.file_stem()
                    .map_or_else(|| "import".to_owned(), |s| s.to_string_lossy().into_owned())
            });
            let secrets = settings.secrets()?;
            let started = std::time::Instant::now();
            let report = startup::with_database(&settings, |pool| {
                let (settings, path, source) = (&settings, &path, &source);
                async move {
                    let router = startup::api_router(settings, pool, (clock, secrets)).await?;
                    let home = settings.auth.organization.clone();
                    crate::import::import(router, (path, source), home).await
                }
            })
            .await?;
            for line in report.details() {
                println!("{line}");
            }
            for (id, candidates) in &report.review {
                println!(
                    "review: Patient/{id} registered beside {}",
                    candidates.join(", ")
                );
            }
            for (source_id, id) in &report.merged {
                println!(
                    "merged: source patient {source_id} into Patient/{id} (identifiers agree)"
                );
            }
            println!("took {:.1} s", started.elapsed().as_secs_f64());
            println!("{}", report.line());
            Ok(())
        }
        Command::Rebuild => {
            let secrets = settings.secrets()?;
            let storage = settings.documents.storage()?;
            let events = startup::with_database(&settings, |pool| async move {
                ReadModels::new(pool, &secrets, storage).rebuild_all().await
            })
            .await?;
            tracing::info!(events, "read models rebuilt");
            Ok(())
        }
        Command::Token {
            user,
            roles,
            patient_id,
            org,
            session,
            scope,
            launch_patient,
        } => {
            let parsed: Vec<Role> = roles
                .iter()
                .map(|r| Role::parse(r).ok_or_else(|| anyhow::anyhow!("unknown role {r}")))
                .collect::<anyhow::Result<_>>()?;
            let extras = TokenExtras {
                patient_id,
                organization: org,
                session_id: session,
                scope,
                launch_patient,
            };
            let token = Authenticator::new(&settings.auth).mint_with(
                &user,
                &parsed,
                chrono::Utc::now(),
                &extras,
            )?;
            // Which secret: a token of the public development secret is accepted only by a
            // service on the embedded default, and none is by a service checking a JWKS.
            if settings.auth.uses_development_secret() {
                eprintln!("signed (HS256) with the public development secret of configuration/base.yaml: only the embedded development service accepts it");
            } else {
                eprintln!("signed (HS256) with the configured secret auth.jwt_secret (APP_AUTH__JWT_SECRET)");
            }
            if settings.auth.uses_jwks() {
                eprintln!("note: this configuration checks tokens against a JWKS, so the service refuses HS256 tokens");
            }
            println!("{token}");
            Ok(())
        }
        Command::Replay(args) => crate::replay::run(&settings, args).await,
        Command::Reconcile { read_models } => {
            let differences = crate::reconcile::run(&settings, read_models).await?;
            if differences > 0 {
                anyhow::bail!("the event store and its topics differ ({differences})");
            }
            Ok(())
        }
        Command::Backup { to } => {
            crate::backup::backup(&settings, &to).await?;
            tracing::info!(file = %to.display(), "backup written");
            Ok(())
        }
        Command::Restore { from } => {
            let restored = crate::backup::restore(&settings, &from).await?;
            println!("restored: the store is in epoch {}", restored.epoch);
            if restored.erasures_checked {
                println!(
                    "erasures since the backup applied again: {}",
                    restored.forgotten_again.len()
                );
                for id in &restored.forgotten_again {
                    println!("  {id}");
                }
                if restored.unverified_erasures > 0 {
                    println!(
                        "{} PatientForgotten records on the topic are not genuine (their ce_id does not recompute) or do not decode: not acted on",
                        restored.unverified_erasures
                    );
                }
                for (id, code) in &restored.refused {
                    println!("not forgotten again ({code}): {id}: forget this patient by hand");
                }
            } else {
                println!(
                    "no Kafka configured: the erasures done since the backup cannot be found; \
                     forget those patients again"
                );
            }
            println!("now run `patient-service rebuild`, then `patient-service audit verify`");
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let chain = settings.secrets()?.chain;
            // The heads published to the audit head topic, read before the database is.
            let published = match settings.kafka.client_config() {
                Some(kafka) => {
                    let topic = settings.kafka.topic(schemas::topics::AUDIT_HEAD);
                    Some(
                        tokio::task::spawn_blocking(move || {
                            projections::audit_head::read_published(&kafka, &topic)
                        })
                        .await??,
                    )
                }
                None => None,
            };
            let clean = startup::with_database(&settings, |pool| async move {
                verify(&pool, &chain, published).await
            })
            .await?;
            if clean {
                Ok(())
            } else {
                anyhow::bail!("the audit trail does not verify")
            }
        }
        Command::Retention {
            command: RetentionCommand::Purge(args),
        } => crate::retention::run(&settings, args).await,
        Command::Keys {
            command: KeysCommand::RotateAudit,
        } => {
            let key = settings.secrets()?.chain;
            let retired = startup::with_database(&settings, |pool| async move {
                crate::audit_keys::rotate(&pool, &key).await
            })
            .await?;
            for r in &retired {
                println!(
                    "retired audit key {}: it vouches for events up to position {} and audit log entries up to {}; the active key is {}",
                    r.kid, r.last_position, r.last_audit_seq, r.successor
                );
            }
            println!("{} audit keys retired", retired.len());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let keys = settings.secrets()?.keys;
            let rotated =
                startup::with_database(
                    &settings,
                    |pool| async move { Ok(keys.rotate(&pool).await?) },
                )
                .await?;
            tracing::info!(rotated, "data keys rewrapped with the active master key");
            println!("{rotated} data keys rewrapped");
            Ok(())
        }
    }
}

/// Verifies the event store's and the audit log's chains, and the audit log against the heads
/// `published` to the audit head topic (when Kafka is configured), printing every finding and
/// a summary on stdout. Returns whether everything verified.
async fn verify(
    pool: &PgPool,
    chain: &event_store::chain::ChainKey,
    published: Option<Vec<schemas::audit_head::v1::AuditChainHead>>,
) -> anyhow::Result<bool> {
    let checked = crate::audit_keys::check(pool, chain).await?;
    let findings = checked.findings();
    for finding in &findings {
        println!("{finding}");
    }
    let (events, audit) = (&checked.events, &checked.audit);
    let mut problems = findings.len();
    let retired_rows = events.keys.within_retirement + audit.keys.within_retirement;
    if retired_rows > 0 {
        println!(
            "audit keys: {retired_rows} rows verified by retired keys, each within its retirement"
        );
    }
    match published {
        Some(published) => {
            let heads = projections::audit_head::check(pool, chain, published).await?;
            for finding in &heads.findings {
                println!("{finding}");
            }
            problems += heads.findings.len();
            match &heads.against {
                Some(head) => println!(
                    "audit head: the chain holds entry {} as published at {}",
                    head.seq, head.read_at
                ),
                None => println!("audit head: none published for this chain yet"),
            }
            if heads.forged > 0 {
                println!(
                    "audit head: {} records on the topic without the audit key's MAC, ignored",
                    heads.forged
                );
            }
        }
        None => println!("audit head: not checked (no Kafka configured)"),
    }
    println!(
        "verified {} events in {} streams and {} audit log entries: {}",
        events.rows,
        events.streams,
        audit.entries,
        if problems == 0 {
            "no tampering found".to_owned()
        } else {
            format!("{problems} problems")
        }
    );
    Ok(problems == 0)
}
