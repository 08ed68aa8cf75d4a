//! The baseline the write path is compared with: PostgreSQL's own `pgbench` inserting one
//! ~500-byte JSON event per transaction into an events-shaped table (`sql/raw_schema.sql`,
//! `sql/raw_insert.sql`, the project's shared baseline), in a scratch database on the cluster
//! the service runs on, in the same run.

use std::io::Write;

use anyhow::Context;
use std::process::Command;

use command_api::embedded_postgres::find_bindir;
use command_api::startup::Service;

/// The scratch database the baseline runs in, one per run (runs on one cluster at once, as the
/// test suite's, do not meet).
fn scratch() -> String {
    format!(
        "bench_raw_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
const SCHEMA: &str = include_str!("../sql/raw_schema.sql");
const INSERT: &str = include_str!("../sql/raw_insert.sql");

/// Transactions per second `pgbench -n -M prepared -f raw_insert.sql -c clients -j 2 -T
/// seconds` reaches on the service's cluster.
///
/// # Errors
///
/// When the service runs on a database other than its embedded cluster, or `pgbench` fails.
pub async fn tps(service: &Service, clients: usize, seconds: u32) -> anyhow::Result<f64> {
    let scratch = scratch();
    let scratch = scratch.as_str();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {scratch}"))
        .execute(&service.pool)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&service.pool)
        .await?;
    // A client of the scratch database, and its connection string when it is not the
    // embedded cluster's (given last, as the program's database argument).
    let client = |program: &str| -> anyhow::Result<(Command, Option<String>)> {
        Ok(match service.embedded() {
            Some(cluster) => (cluster.client(program, scratch), None),
            None => {
                // The configured database's server, the scratch database on it.
                let url = std::env::var("DATABASE_URL")
                    .or_else(|_| std::env::var("APP_DATABASE__URL"))
                    .context("the pgbench baseline needs the embedded cluster or DATABASE_URL")?;
                (
                    Command::new(find_bindir()?.join(program)),
                    Some(on_database(&url, scratch)?),
                )
            }
        })
    };
    let dir = tempfile_dir()?;
    let script = dir.join("raw_insert.sql");
    std::fs::File::create(&script)?.write_all(INSERT.as_bytes())?;
    let (mut psql, database) = client("psql")?;
    let schema = psql
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", SCHEMA])
        .args(database)
        .output()?;
    anyhow::ensure!(
        schema.status.success(),
        "creating the baseline table failed: {}",
        String::from_utf8_lossy(&schema.stderr)
    );
    let output = tokio::task::spawn_blocking({
        let (mut command, database) = client("pgbench")?;
        command
            .args(["-n", "-M", "prepared", "-f"])
            .arg(&script)
            .args(["-c", &clients.to_string(), "-j", "2"])
            .args(["-T", &seconds.to_string()])
            .args(database);
        move || command.output()
    })
    .await??;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!(
            "the pgbench script folder {} stays behind: {e}",
            dir.display()
        );
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {scratch}"))
        .execute(&service.pool)
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_tps(&String::from_utf8_lossy(&output.stdout)).context("pgbench printed no tps")
}

/// `url` (a `postgres://` URL) naming `database` instead of its own.
fn on_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").context("DATABASE_URL is not a URL")?;
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{database}{query}"))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The `tps = N (without initial connection time)` of pgbench's report.
fn parse_tps(report: &str) -> Option<f64> {
    report
        .lines()
        .filter(|l| l.starts_with("tps = "))
        .find(|l| l.contains("without initial connection time"))
        .or_else(|| report.lines().find(|l| l.starts_with("tps = ")))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::parse_tps;

    #[test]
    fn the_scratch_database_replaces_the_configured_one() {
        assert_eq!(
            super::on_database("postgres://u:p@h:5432/service?sslmode=disable", "bench_raw")
                .unwrap(),
            "postgres://u:p@h:5432/bench_raw?sslmode=disable"
        );
        assert_eq!(
            super::on_database("postgresql://h/db", "x").unwrap(),
            "postgresql://h/x"
        );
    }

    #[test]
    fn the_tps_without_connection_time_is_read_from_the_report() {
        let report = "transaction type: raw_insert.sql\nnumber of clients: 16\n\
                      latency average = 0.705 ms\ninitial connection time = 12.345 ms\n\
                      tps = 22675.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(report), Some(22_675.123_456));
        assert_eq!(parse_tps("no figures"), None);
    }
}
