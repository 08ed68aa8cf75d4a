//! `patient-service-tools`: every benchmark runs end to end on small figures and prints its
//! summary (`match-eval` is in `matching`).

use std::process::Command;

use crate::helpers::*;

/// Runs the tools binary with `args` on a fresh database; returns its stdout.
async fn tools(args: &[&str]) -> String {
    tools_with(args, &[]).await
}

/// [`tools`] with more environment.
async fn tools_with(args: &[&str], envs: &[(&str, String)]) -> String {
    let (_, database_url) = create_database().await;
    let output = Command::new(env!("CARGO_BIN_EXE_patient-service-tools-under-test"))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DATABASE_URL", database_url)
        .env("APP_AUTH__JWT_SECRET", SECRET)
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_registration_benchmark_prints_its_ratios() {
    let out = tools(&[
        "bench",
        "--requests",
        "20",
        "--concurrency",
        "1,4",
        "--lag-samples",
        "3",
        "--pgbench-seconds",
        "1",
    ])
    .await;
    assert!(out.contains("HTTP/raw"), "{out}");
    assert!(out.contains("projection lag"), "{out}");
}

#[tokio::test]
async fn the_medical_record_benchmark_extracts_documents_in_its_own_binary() {
    let out = tools(&[
        "bench-records",
        "--patients",
        "2",
        "--items",
        "20",
        "--documents",
        "10",
        "--searches",
        "2",
        "--concurrency",
        "2",
    ])
    .await;
    assert!(
        out.contains("documents uploaded, extracted and indexed"),
        "{out}"
    );
    assert!(out.contains("structured search across patients"), "{out}");
}

#[tokio::test]
async fn the_scheduling_benchmark_prints_latency_and_bookings() {
    let out = tools(&[
        "bench-schedule",
        "--practitioners",
        "2",
        "--days",
        "2",
        "--samples",
        "3",
        "--bookings",
        "10",
        "--concurrency",
        "1,2",
    ])
    .await;
    assert!(out.contains("p99"), "{out}");
}

#[tokio::test]
async fn the_week_simulation_compares_best_and_first_fit() {
    let out = tools(&["simulate-week", "--weeks", "1"]).await;
    assert!(out.contains("best fit / first fit utilization"), "{out}");
}

#[tokio::test]
async fn the_pipeline_benchmark_ends_with_the_summary_line_runs_are_compared_by() {
    let out = tools(&["bench-pipeline", "--scale", "tiny"]).await;
    let summary = out
        .lines()
        .last()
        .unwrap_or_default()
        .strip_prefix("summary: ")
        .unwrap_or_else(|| panic!("no summary line last: {out}"));
    let keys: Vec<&str> = summary
        .split(' ')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{pair}");
            key
        })
        .collect();
    assert_eq!(
        keys,
        [
            "reg_ratio_c1",
            "reg_ratio_c16",
            "lag_p99_ms",
            "catchup_events_per_s",
            "relay_events_per_s",
            "rebuild_events_per_s",
            "availability_p99_ms",
            "bookings_per_s_c8",
            "chart1000_p99_ratio"
        ]
    );
}

#[tokio::test]
async fn with_a_broker_the_pipeline_benchmark_measures_the_relay_and_the_catch_up_from_kafka() {
    let out = tools_with(
        &["bench-pipeline", "--scale", "tiny"],
        &[("KAFKA_BROKERS", brokers())],
    )
    .await;
    assert!(out.contains("projectors catching up from Kafka"), "{out}");
    let relay: f64 = out
        .lines()
        .last()
        .and_then(|l| {
            l.split(' ')
                .find_map(|p| p.strip_prefix("relay_events_per_s="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no relay figure: {out}"));
    assert!(relay > 0.0, "{out}");
}

/// Schemathesis (PyPI) against the served OpenAPI document, with a token of each role, from one
/// seed and bounded in cases and time: no 5xx, nothing that contradicts the document, no
/// answer slower than ten seconds. `patient-service-tools fuzz` with its defaults is the
/// longer run.
#[tokio::test]
async fn the_fuzzing_finds_nothing_with_any_role() {
    let python = std::env::var("TEST_PYTHON").expect("TEST_PYTHON: run with scripts/test");
    let schemathesis = std::path::Path::new(&python).with_file_name("schemathesis");
    let out = tools_with(
        &["fuzz", "--seconds-per-role", "20", "--examples", "10"],
        &[("SCHEMATHESIS", schemathesis.display().to_string())],
    )
    .await;
    let summary = out
        .lines()
        .find(|l| l.starts_with("fuzz: "))
        .unwrap_or_else(|| panic!("no closing line: {out}"));
    // Shown with `--nocapture`, for the figures of a run.
    println!("{summary}");
    assert!(summary.contains(" failures=0 "), "{out}");
    assert!(summary.starts_with("fuzz: roles=7 cases="), "{out}");
    let cases: u64 = summary["fuzz: roles=7 cases=".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cases > 1000, "{out}");
}

/// The service killed under load (`patient-service-tools soak`, bounded here): two APIs, a
/// relay and two projectors, each killed by a seeded schedule and started again, PostgreSQL and
/// the broker (durable) restarted once; nothing acknowledged lost, every event on its topic,
/// read models equal to a rebuild, the audit chains verified, no resource booked twice.
#[tokio::test]
async fn the_service_killed_under_load_loses_nothing() {
    let out = tools(&[
        "soak",
        "--seconds",
        "60",
        "--seed",
        "20261130",
        "--service-bin",
        env!("CARGO_BIN_EXE_patient-service-under-test"),
    ])
    .await;
    let summary = out
        .lines()
        .find(|l| l.starts_with("soak: seed="))
        .unwrap_or_else(|| panic!("no closing line: {out}"));
    println!("{summary}");
    let figure = |name: &str| -> u64 {
        summary
            .split(' ')
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name}: {summary}"))
            .parse()
            .unwrap()
    };
    assert_eq!(figure("acknowledged"), figure("found"), "{summary}");
    assert_eq!(figure("events"), figure("on_topics"), "{summary}");
    assert!(figure("acknowledged") > 100, "{summary}");
    assert!(figure("kills") >= 3, "{summary}");
    assert_eq!(figure("pg_restarts"), 1, "{summary}");
    assert_eq!(figure("broker_restarts"), 1, "{summary}");
}
