//! `patient-service-tools fuzz`: Schemathesis (PyPI) against the OpenAPI document the service
//! serves at `/openapi.json`, with a token of each role in turn.
//!
//! The service starts in this process on the configured database. A patient is registered, in
//! a clinician's care, with an allergy on their record; Schemathesis draws half of the ids it
//! puts in paths from these, so its cases reach the record's rules and not only "not found".
//! Each role runs the examples, coverage and fuzzing phases from one seed, bounded by a number
//! of cases per operation and by time, with these checks: no 5xx, every status, content type,
//! header and body as the document says, schema-invalid requests refused, and no answer slower
//! than ten seconds (a hang). Logging out is left out: it would end the run's own session.
//!
//! The run ends with one line: `fuzz: roles=7 cases=... failures=... seconds=... seed=...`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use chrono::Utc;
use command_api::auth::{Authenticator, Role, TokenExtras};
use command_api::configuration::Settings;
use command_api::http::system_clock;
use command_api::startup::{Roles, Service};
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// The longest Schemathesis runs with each role's token, in seconds.
    #[arg(long, default_value_t = 300)]
    pub seconds_per_role: u64,
    /// The most test cases per operation and phase.
    #[arg(long, default_value_t = 100)]
    pub examples: u64,
    /// The seed of the generated cases: a failure is replayed with the same seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The Schemathesis executable (the test script installs it into its Python tools).
    #[arg(long, env = "SCHEMATHESIS", default_value = "schemathesis")]
    pub schemathesis: PathBuf,
}

/// The clinician the seeded patient is in the care of.
const CLINICIAN: &str = "fuzz-clinician";

/// What one role's run found.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    cases: u64,
    failures: u64,
}

/// Runs the fuzzing and prints what each role's run found, then the closing line.
///
/// # Errors
///
/// When the service cannot start, the seeding fails, Schemathesis cannot run, or it found
/// failures (its report of them is in the error).
pub async fn run(settings: &Settings, args: FuzzArgs) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    settings.http.port = 0;
    let service = Service::start(&settings, Roles::ALL, system_clock()).await?;
    let result = fuzz(&settings, &service, &args).await;
    service.stop().await?;
    result
}

async fn fuzz(settings: &Settings, service: &Service, args: &FuzzArgs) -> anyhow::Result<()> {
    let port = service.port.context("the API did not start")?;
    let base = format!("http://127.0.0.1:{port}");
    let auth = Authenticator::new(&settings.auth);
    let (patient, item) = seed(&base, &auth).await?;
    let folder = std::env::temp_dir().join(format!("fuzz-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&folder)?;
    let config = folder.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[dictionaries.ids]\nvalues = [\"{patient}\", \"{item}\"]\n\n[parameters]\n\
             \"path.id\" = {{ dictionary = \"ids\", probability = 0.5 }}\n\
             \"path.item\" = {{ dictionary = \"ids\", probability = 0.5 }}\n"
        ),
    )?;
    let started = Instant::now();
    let mut total = Outcome {
        cases: 0,
        failures: 0,
    };
    let mut reports = Vec::new();
    for role in Role::ALL {
        let extras = TokenExtras {
            patient_id: (role == Role::Patient).then_some(patient),
            session_id: Some(format!("fuzz-{}", role.as_str())),
            ..TokenExtras::default()
        };
        let user = if role == Role::Clinician {
            CLINICIAN.to_owned()
        } else {
            format!("fuzz-{}", role.as_str())
        };
        let token = auth.mint_with(&user, &[role], Utc::now(), &extras)?;
        let output = tokio::process::Command::new(&args.schemathesis)
            .current_dir(&folder)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("{base}/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--exclude-path", "/v1/sessions/current/revoke"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance,\
                 negative_data_rejection",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", &args.examples.to_string()])
            .args(["--max-time", &args.seconds_per_role.to_string()])
            .args(["--max-response-time", "10"])
            .args(["--seed", &args.seed.to_string()])
            .args([
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--no-color",
            ])
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {}", args.schemathesis.display()))?;
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        let outcome = outcome(&report).with_context(|| {
            format!(
                "Schemathesis ({}) printed no count of its cases: {report}{}",
                role.as_str(),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        println!(
            "fuzz {}: {} cases, {} failures",
            role.as_str(),
            outcome.cases,
            outcome.failures
        );
        if outcome.failures > 0 || !output.status.success() {
            reports.push(format!("== {}\n{report}", role.as_str()));
        }
        total.cases += outcome.cases;
        total.failures += outcome.failures;
    }
    std::fs::remove_dir_all(&folder).ok();
    println!(
        "fuzz: roles={} cases={} failures={} seconds={:.0} seed={}",
        Role::ALL.len(),
        total.cases,
        total.failures,
        started.elapsed().as_secs_f64(),
        args.seed
    );
    anyhow::ensure!(reports.is_empty(), "{}", reports.join("\n"));
    Ok(())
}

/// Registers a patient in the fuzzing clinician's care, with an allergy; returns the patient's
/// id and the allergy's.
async fn seed(base: &str, auth: &Authenticator) -> anyhow::Result<(uuid::Uuid, uuid::Uuid)> {
    let client = reqwest::Client::new();
    let registrar = auth.mint("fuzz-seed", &[Role::Registrar], Utc::now())?;
    let clinician = auth.mint(CLINICIAN, &[Role::Clinician], Utc::now())?;
    let call = |path: &str, token: &str, body: Value, version: Option<&str>| {
        let mut request = client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body);
        if let Some(version) = version {
            request = request.header("if-match", version);
        }
        async move {
            let response = request.send().await?;
            let status = response.status();
            let body: Value = response.json().await?;
            anyhow::ensure!(status.is_success(), "seeding {status}: {body}");
            anyhow::Ok(body)
        }
    };
    let registered = call(
        "/v1/patients",
        &registrar,
        json!({
            "name": { "given": ["Fuzz"], "family": "Target" },
            "gender": "female",
            "birth_date": "1980-01-02",
        }),
        None,
    )
    .await?;
    let patient: uuid::Uuid = registered["id"]
        .as_str()
        .context("registration answered no id")?
        .parse()?;
    call(
        &format!("/v1/patients/{patient}/care-relationships"),
        &registrar,
        json!({ "practitioner": CLINICIAN, "role": "attending" }),
        Some("\"1\""),
    )
    .await?;
    let allergy = call(
        &format!("/v1/patients/{patient}/allergies"),
        &clinician,
        json!({ "substance": { "text": "peanut" }, "clinical_status": "active" }),
        None,
    )
    .await?;
    let item = allergy["item_id"]
        .as_str()
        .context("the allergy answered no id")?
        .parse()?;
    Ok((patient, item))
}

/// The counts in Schemathesis' summary: `Test cases:` then `N generated, N passed` or
/// `N generated, N found M unique failures`.
fn outcome(report: &str) -> Option<Outcome> {
    let line = report
        .lines()
        .skip_while(|l| l.trim() != "Test cases:")
        .nth(1)?;
    let number = |word: &str| -> Option<u64> {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words.iter().position(|w| w.starts_with(word))?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    let cases = number("generated")?;
    let failures = if line.contains("unique failure") {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "unique")?;
        words.get(at.checked_sub(1)?)?.parse().ok()?
    } else {
        0
    };
    Some(Outcome { cases, failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_are_read() {
        let passed = "Test cases:\n  20861 generated, 20861 passed\n\nSeed: 1\n";
        assert_eq!(
            outcome(passed),
            Some(Outcome {
                cases: 20861,
                failures: 0
            })
        );
        let failed = "Test cases:\n  26725 generated, 1 found 1 unique failure\n";
        assert_eq!(
            outcome(failed),
            Some(Outcome {
                cases: 26725,
                failures: 1
            })
        );
        let many = "Test cases:\n  500 generated, 4 found 3 unique failures, 2 skipped\n";
        assert_eq!(
            outcome(many),
            Some(Outcome {
                cases: 500,
                failures: 3
            })
        );
        assert_eq!(outcome("no summary"), None);
    }
}
