//! `/metrics`, read as Prometheus reads it: parsed by the Prometheus client library's
//! OpenMetrics parser (PyPI `prometheus_client`), showing requests, commands, events, the pool,
//! the read models' lag, and a transaction held open elsewhere raising the xmin horizon's age.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TestApp, DEADLINE};

/// The metrics families `app` serves, as the Prometheus parser reads them.
async fn scrape(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    let python = std::env::var("TEST_PYTHON").expect("TEST_PYTHON: run with scripts/test");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/parse_metrics.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The families `app` serves once `done` holds of them (within the deadline).
async fn scrape_until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let families = scrape(app).await;
        if done(&families) {
            return families;
        }
        assert!(Instant::now() < deadline, "{what}: {families}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the first sample named `sample` of `family` whose labels include `labels`.
fn sample(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| {
            s[0] == sample
                && labels
                    .iter()
                    .all(|(name, value)| s[1][name].as_str() == Some(value))
        })
        .and_then(|s| s[2].as_f64())
}

#[tokio::test]
async fn metrics_parse_as_prometheus_and_show_a_held_back_horizon() {
    // Arrange: a registration through the API, and three allergies on another patient's chart
    // (the second keeps the chart's state in memory, the third loads it from there).
    let app = TestApp::without_kafka().await;
    app.register_person(9990, None).await;
    let charted = crate::medical_records::patient_in_care(&app, 9991).await;
    for (substance, code) in [
        ("Penicillin", "764146007"),
        ("Latex", "111088007"),
        ("Peanut", "256349002"),
    ] {
        let mut allergy = crate::medical_records::allergy(substance);
        allergy["substance"]["code"] = code.into();
        let recorded = app
            .post(
                &format!("/v1/patients/{charted}/allergies"),
                &crate::medical_records::clinician(&app),
                &allergy,
                &[],
            )
            .await;
        assert_eq!(recorded.status(), 201);
    }

    // Act: scraped once the read models have taken the registration in (a read model fed
    // from the store is listed once it has a place in the stream).
    let read_models = ["patient_search", "medical_records", "audit_log"];
    let listed = |families: &Value| {
        read_models.iter().all(|name| {
            sample(
                families,
                "patient_service_read_model_lag_events",
                "patient_service_read_model_lag_events",
                &[("name", name)],
            )
            .is_some()
        })
    };
    let families = scrape_until(&app, "every read model listed", listed).await;

    // Assert: the request, the command and its events, the pool, and each read model's lag.
    let requests = sample(
        &families,
        "patient_service_http_request_duration_seconds",
        "patient_service_http_request_duration_seconds_count",
        &[
            ("method", "POST"),
            ("route", "/v1/patients"),
            ("status", "201"),
        ],
    );
    assert_eq!(requests, Some(2.0), "{families}");
    assert_eq!(
        families["patient_service_http_request_duration_seconds"]["type"],
        "histogram"
    );
    let stored = sample(
        &families,
        "patient_service_commands",
        "patient_service_commands_total",
        &[("aggregate_type", "Patient"), ("outcome", "stored")],
    );
    assert!(stored >= Some(1.0), "{families}");
    let appended = sample(
        &families,
        "patient_service_events_appended",
        "patient_service_events_appended_total",
        &[("name", "Patient")],
    );
    assert!(appended >= Some(1.0), "{families}");
    let kept = sample(
        &families,
        "patient_service_state_cache_hits",
        "patient_service_state_cache_hits_total",
        &[],
    );
    assert!(kept >= Some(1.0), "{families}");
    assert_eq!(
        sample(
            &families,
            "patient_service_db_pool_max_connections",
            "patient_service_db_pool_max_connections",
            &[]
        ),
        Some(20.0)
    );
    assert_eq!(
        sample(
            &families,
            "patient_service_metrics_database_up",
            "patient_service_metrics_database_up",
            &[]
        ),
        Some(1.0)
    );
    // A transaction left open elsewhere holds the xmin horizon back: its age shows it, and
    // goes when the transaction ends.
    let mut held = app.pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *held)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM events")
        .execute(&mut *held)
        .await
        .unwrap();
    let horizon = |families: &Value| {
        sample(
            families,
            "patient_service_xmin_horizon_age_seconds",
            "patient_service_xmin_horizon_age_seconds",
            &[],
        )
        .unwrap_or_default()
    };
    scrape_until(&app, "the horizon's age rising", |f| horizon(f) >= 2.0).await;
    held.rollback().await.unwrap();
    scrape_until(&app, "the horizon's age falling", |f| horizon(f) < 2.0).await;
    app.stop().await;
}

#[tokio::test]
async fn with_kafka_each_read_models_consumer_group_lag_is_read_from_the_broker() {
    let app = TestApp::spawn().await;
    for n in 0..2 {
        app.register_person(n, Some("Lagging")).await;
    }
    app.search_until("family=Lagging", 2).await;

    // Every read model's group, each at 0 once it has read everything.
    let families = scrape_until(&app, "every consumer group caught up", |families| {
        let samples = &families["patient_service_read_model_kafka_lag_events"]["samples"];
        samples.as_array().is_some_and(|samples| {
            samples.len() >= 4 && samples.iter().all(|s| s[2].as_f64() == Some(0.0))
        })
    })
    .await;
    let names: Vec<&str> = families["patient_service_read_model_kafka_lag_events"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"patient_search"), "{names:?}");
    assert!(names.contains(&"audit_log"), "{names:?}");
    assert_eq!(
        families["patient_service_kafka_lag_up"]["samples"][0][2], 1.0,
        "{families}"
    );
    app.stop().await;
}
