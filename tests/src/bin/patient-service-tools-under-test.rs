//! The `patient-service-tools` binary, built inside this package so the end-to-end tests can
//! run it as a real process (`match-eval`).

fn main() -> anyhow::Result<()> {
    patient_service_tools::cli::main()
}
