//! `patient-service backup` and `restore`: PostgreSQL's own `pg_dump` and `pg_restore` (custom
//! format) on the service's database, which holds everything that counts: the event store,
//! the audit chain's inputs, the wrapped data keys, the relay's and read models' bookkeeping.
//! The master and audit keys are not in it: keep them apart, in the secret store.
//!
//! A restore goes only into an empty database (a restore over live data would mix two
//! histories); then `rebuild` makes the read models from the restored events and `audit
//! verify` checks them. What a restore does not do yet: keep the topics consistent with the
//! restored store (events written after the restore point reuse aggregate sequences whose
//! events were published before it, under the same `ce_id`), and apply again the erasures done
//! since the backup. Until it does, a restore is for a new deployment of topics, and the
//! patients forgotten since the backup must be forgotten again.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use secrecy::ExposeSecret as _;
use sqlx::ConnectOptions as _;

use crate::configuration::Settings;
use crate::embedded_postgres::{find_bindir, EmbeddedPostgres};

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

/// Restores the backup `from` into the database, which must be empty.
///
/// # Errors
///
/// When the database is not empty, cannot be reached, or `pg_restore` fails.
pub async fn restore(settings: &Settings, from: &Path) -> anyhow::Result<()> {
    let (url, cluster) = database(settings).await?;
    let result = restore_into(settings, &url, from).await;
    if let Some(cluster) = cluster {
        cluster.stop()?;
    }
    result
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
