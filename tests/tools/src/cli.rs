//! The `patient-service-tools` command line: benchmarks and evaluations, configured like the
//! service (`configuration/`, `APP_*` variables, `DATABASE_URL`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use command_api::configuration::Settings;
use command_api::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "patient-service-tools",
    version,
    about = "Benchmarks and evaluations of the patient service"
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
    /// Measures registrations per second against pgbench on the same cluster, and projection
    /// lag, on one database, and prints the figures.
    Bench(crate::bench::BenchArgs),
    /// Measures the whole pipeline in one run (registrations against pgbench, lag under load,
    /// scheduling, long charts, projector catch-up, rebuild, relay) and ends with one
    /// `summary:` line for comparing runs.
    BenchPipeline(crate::bench_pipeline::BenchPipelineArgs),
    /// Measures medical records: clinical items recorded per second, documents uploaded and
    /// indexed per second, and search latency (p50, p99), and prints the figures.
    BenchRecords(crate::bench_records::BenchRecordsArgs),
    /// Measures scheduling: availability latency (p50, p99) over many practitioners and days,
    /// and bookings per second, and prints the figures.
    BenchSchedule(crate::bench_schedule::BenchScheduleArgs),
    /// Evaluates duplicate detection on a FEBRL-format CSV: precision, recall, F1 and match
    /// latency.
    MatchEval(crate::match_eval::MatchEvalArgs),
    /// Fuzzes the native API with Schemathesis (PyPI) against its served OpenAPI document,
    /// with a token of each role, and ends with one `fuzz:` line of counts.
    Fuzz(crate::fuzz::FuzzArgs),
    /// Kills the service's processes under a mixed load (and restarts PostgreSQL and the
    /// broker once), then checks that nothing acknowledged was lost; ends with one `soak:`
    /// line of counts.
    Soak(crate::soak::SoakArgs),
    /// Books generated clinic weeks with best-fit and with first-fit assignment and prints
    /// the share of requests served and the utilization of each, in one run.
    SimulateWeek {
        /// Weeks simulated (each from its own seed).
        #[arg(long, default_value_t = 20)]
        weeks: u64,
    },
}

/// Parses the command line and runs it on a multi-threaded tokio runtime.
///
/// # Errors
///
/// Whatever the chosen command fails with.
pub fn main() -> anyhow::Result<()> {
    // The benchmarks start the service inside this binary, and the service extracts text by
    // running its own binary again.
    if let Some(child) = command_api::extraction::run_child_if_asked() {
        return child;
    }
    let cli = Cli::parse();
    command_api::cli::runtime()?.block_on(run(cli))
}

/// Runs the command line.
///
/// # Errors
///
/// Whatever the chosen command fails with.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config_dir.as_deref())?;
    telemetry::init_subscriber(telemetry::get_subscriber(&settings.log, std::io::stderr));
    match cli.command {
        Command::Bench(args) => crate::bench::run(&settings, args).await,
        Command::BenchPipeline(args) => crate::bench_pipeline::run(&settings, args).await,
        Command::BenchRecords(args) => crate::bench_records::run(&settings, args).await,
        Command::BenchSchedule(args) => crate::bench_schedule::run(&settings, args).await,
        Command::MatchEval(args) => crate::match_eval::run(&settings, args).await,
        Command::Fuzz(args) => crate::fuzz::run(&settings, args).await,
        Command::Soak(args) => crate::soak::run(&settings, args).await,
        Command::SimulateWeek { weeks } => {
            crate::simulate_week::run(weeks);
            Ok(())
        }
    }
}
