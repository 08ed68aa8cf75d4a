//! The `patient-service` binary, built inside this package so the end-to-end tests can start it
//! as a real process.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    command_api::cli::run(command_api::cli::Cli::parse()).await
}
