//! The `patient-service-tools` binary, built inside this package so the end-to-end tests can
//! run every tool as a real process.

fn main() -> anyhow::Result<()> {
    patient_service_tools::cli::main()
}
