//! The `patient-service` binary, built inside this package so the end-to-end tests can start it
//! as a real process.

fn main() -> anyhow::Result<()> {
    command_api::cli::main()
}
