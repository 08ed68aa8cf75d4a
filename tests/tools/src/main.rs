//! `patient-service-tools`: see `patient-service-tools --help`.

fn main() -> anyhow::Result<()> {
    patient_service_tools::cli::main()
}
