//! `patient-service`: see `patient-service --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    command_api::cli::run(command_api::cli::Cli::parse()).await
}
