//! `patient-service backup` and `restore`: PostgreSQL's own `pg_dump` and `pg_restore` (custom
//! format) on the service's database, which holds everything that counts: the event store,
//! the audit chain's inputs, the wrapped data keys, the relay's and read models' bookkeeping.
//! The master and audit keys are not in it: keep them apart, in the secret store.
//!
//! A restore goes only into an empty database (a restore over live data would mix two
//! histories). After `pg_restore` it
//! - applies the migrations (a backup may be older than the binary);
//! - starts a new epoch of the store (`store_epochs`; past any epoch already on the topics): the events written from now on take
//!   again sequences whose events were published before the restore, with other content, and
//!   the epoch enters their published identity (`ce_id`, `ce_epoch`), so the topics never hold
//!   two contents under one `ce_id`;
//! - applies again every erasure done since the backup: with Kafka configured, it reads the
//!   patient topic's genuine `PatientForgotten` records (their `ce_id` recomputes) and forgets again (same reason and reference,
//!   user `restore`) each of those patients whose data key the restored store holds. A patient
//!   on legal hold in the restored store is named and left for the operator; without Kafka the
//!   erasures cannot be found and the restore says so. `reconcile` names any still missing.
//!
//! Then `rebuild` makes the read models from the restored events and `audit verify` checks
//! them.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use secrecy::ExposeSecret as _;
use sqlx::ConnectOptions as _;

use domain::patient::governance::{ErasureReason, GovernanceChange, Principal};
use domain::patient::{PatientCommand, PatientId};
use event_store::command::{CommandError, CommandMetadata};
use event_store::store::PatientStore;
use sqlx::PgPool;

use crate::configuration::Settings;
use crate::embedded_postgres::{find_bindir, EmbeddedPostgres};
use crate::startup;

/// The user id of the events a restore writes (the erasures it applies again).
pub const RESTORE_USER: &str = "restore";

/// The database's URL, and the embedded cluster started for it (without a configured one).
async fn database(settings: &Settings) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    match &settings.database.url {
        Some(url) => Ok((url.expose_secret().to_owned(), None)),
        None => {
            let cluster = EmbeddedPostgres::start(&settings.database.data_dir).await?;
            Ok((cluster.database_url(), Some(cluster)))
        }
    }
}

/// `program` of PostgreSQL's binaries, with the database's TLS settings.
fn tool(settings: &Settings, program: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(find_bindir()?.join(program));
    if let Some(mode) = &settings.database.ssl_mode {
        command.env("PGSSLMODE", mode);
    }
    if let Some(root) = &settings.database.ssl_root_cert {
        command.env("PGSSLROOTCERT", root);
    }
    Ok(command)
}

/// Runs `command` to its end; its stderr (which names no patient data) on failure.
fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a backup of the database to `to`.
///
/// # Errors
///
/// When the database cannot be reached or `pg_dump` fails.
pub async fn backup(settings: &Settings, to: &Path) -> anyhow::Result<()> {
    let (url, cluster) = database(settings).await?;
    let mut command = tool(settings, "pg_dump")?;
    command
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(to)
        .arg("--dbname")
        .arg(&url);
    let result = run(command, "pg_dump");
    if let Some(cluster) = cluster {
        cluster.stop()?;
    }
    result
}

/// What a restore did after `pg_restore`.
#[derive(Debug, Default)]
pub struct Restored {
    /// The store's new epoch.
    pub epoch: i32,
    /// Whether the erasures since the backup could be looked for (Kafka is configured).
    pub erasures_checked: bool,
    /// `PatientForgotten` records that are not genuine (their `ce_id` does not recompute) or
    /// do not name the patient they are about: not acted on.
    pub unverified_erasures: u64,
    /// The patients forgotten again.
    pub forgotten_again: Vec<String>,
    /// The patients forgotten since the backup who could not be forgotten again, with the
    /// rule that refused it (a legal hold in the restored store, say).
    pub refused: Vec<(String, &'static str)>,
}

/// Restores the backup `from` into the database, which must be empty, starts a new epoch and
/// applies again the erasures done since the backup.
///
/// # Errors
///
/// When the database is not empty, cannot be reached, `pg_restore` fails, or the topics or the
/// event store fail while erasures are applied again.
pub async fn restore(settings: &Settings, from: &Path) -> anyhow::Result<Restored> {
    let (url, cluster) = database(settings).await?;
    let result = restore_into(settings, &url, from).await;
    if let Some(cluster) = cluster {
        cluster.stop()?;
    }
    result?;
    // The epoch first: whatever fails after it, the events written from now on have ids of
    // their own.
    let epoch =
        startup::with_database(settings, |pool| async move { start_epoch(&pool).await }).await?;
    let mut restored = Restored {
        epoch,
        ..Restored::default()
    };
    let Some(kafka) = settings.kafka.client_config() else {
        return Ok(restored);
    };
    let topics: Vec<String> = schemas::topics::ALL
        .iter()
        .map(|topic| settings.kafka.topic(topic))
        .collect();
    let published = tokio::task::spawn_blocking(move || {
        crate::reconcile::read_topics(&kafka, &topics)
    })
    .await
    .context("reading the topics")?
    .context("reading the topics (the store is restored and in its new epoch; forget again by hand the patients `reconcile` names)")?;
    restored.erasures_checked = true;
    restored.unverified_erasures = published.iter().map(|p| p.unverified_erasures).sum();
    // A restore of an older backup, or of the same one again, must not take an epoch a restore
    // before it already published under.
    let published_epoch = published
        .iter()
        .flat_map(|p| p.epochs.values().copied())
        .max()
        .unwrap_or(0);
    let erasures: Vec<_> = published
        .into_iter()
        .flat_map(|p| p.forgotten.into_values())
        .collect();
    let secrets = settings.secrets()?;
    startup::with_database(settings, |pool| async move {
        if let Ok(published_epoch) = i32::try_from(published_epoch) {
            if published_epoch >= restored.epoch {
                sqlx::query("UPDATE store_epochs SET epoch = $1 WHERE epoch = $2")
                    .bind(published_epoch + 1)
                    .bind(restored.epoch)
                    .execute(&pool)
                    .await?;
                restored.epoch = published_epoch + 1;
            }
        }
        let store = PatientStore::new(pool.clone(), secrets.keys, secrets.chain);
        for erasure in &erasures {
            forget_again(&pool, &store, erasure, &mut restored).await?;
        }
        Ok(restored)
    })
    .await
}

/// Starts the store's next epoch at the next event position, and answers it.
async fn start_epoch(pool: &PgPool) -> anyhow::Result<i32> {
    Ok(sqlx::query_scalar(
        "INSERT INTO store_epochs (epoch, from_position)
         SELECT coalesce(max(epoch), 0) + 1,
                nextval(pg_get_serial_sequence('events', 'position'))
           FROM store_epochs
         RETURNING epoch",
    )
    .fetch_one(pool)
    .await?)
}

/// Forgets the patient of `erasure` again, with its reason and reference, when the restored
/// store still holds their data key.
async fn forget_again(
    pool: &PgPool,
    store: &PatientStore,
    erasure: &schemas::patient::v1::PatientForgotten,
    restored: &mut Restored,
) -> anyhow::Result<()> {
    let id = erasure.patient_id.to_string();
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM patient_data_keys
                         WHERE patient_id = $1 AND wrapped_key IS NOT NULL)",
    )
    .bind(&id)
    .fetch_one(pool)
    .await?;
    if !held {
        // Registered after the backup, or forgotten before it: nothing of theirs is here.
        return Ok(());
    }
    let reason = ErasureReason::parse("reason", &erasure.reason)
        .map_err(|e| anyhow::anyhow!("PatientForgotten of {id}: {e}"))?;
    let reference = erasure
        .reference
        .as_deref()
        .map(|r| Principal::parse("reference", r))
        .transpose()
        .map_err(|e| anyhow::anyhow!("PatientForgotten of {id}: {e}"))?;
    let command = PatientCommand::Govern(GovernanceChange::Forget {
        reason,
        reference,
        at: chrono::Utc::now(),
    });
    let metadata = CommandMetadata {
        user_id: RESTORE_USER.to_owned(),
        ..CommandMetadata::default()
    };
    match store
        .execute(PatientId::new(erasure.patient_id), None, command, metadata)
        .await
    {
        Ok(_) => restored.forgotten_again.push(id),
        // A legal hold placed before the backup and lifted before the erasure, say.
        Err(CommandError::Rule(rule)) => restored.refused.push((id, rule.code())),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn restore_into(settings: &Settings, url: &str, from: &Path) -> anyhow::Result<()> {
    let mut options: sqlx::postgres::PgConnectOptions = url.parse()?;
    if let Some(mode) = &settings.database.ssl_mode {
        options = options.ssl_mode(mode.parse()?);
    }
    let mut conn = options.connect().await?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
          WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&mut conn)
    .await?;
    if tables > 0 {
        bail!(
            "a restore goes only into an empty database: this one has {tables} tables \
             (create a new database, or drop this one's schemas first)"
        );
    }
    let mut command = tool(settings, "pg_restore")?;
    command
        .args(["--no-owner", "--exit-on-error", "--dbname"])
        .arg(url)
        .arg(from);
    run(command, "pg_restore")
}
