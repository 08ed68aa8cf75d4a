//! `patient-service`: see `patient-service --help`.

fn main() -> anyhow::Result<()> {
    command_api::cli::main()
}
