use std::time::{Duration, Instant};

use command_api::startup::Roles;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn live_and_ready_answer_without_a_token() {
    let app = TestApp::without_kafka().await;

    let live = app
        .client
        .get(format!("{}/health/live", app.address))
        .send()
        .await
        .unwrap();
    let ready = app
        .client
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(live.status(), 200);
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    app.stop().await;
}

#[tokio::test]
async fn ready_is_503_while_migrations_are_missing() {
    let app = TestApp::without_kafka().await;
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let ready = app
        .client
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(ready.status(), 503);
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_plain_one_is_echoed() {
    let app = TestApp::without_kafka().await;

    let echoed = app
        .client
        .get(format!("{}/health/live", app.address))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    let generated = app
        .client
        .get(format!("{}/health/live", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(echoed.headers()["x-request-id"], "req-42");
    assert_eq!(generated.headers()["x-request-id"].len(), 36);
    app.stop().await;
}

/// `GET /health/ready` of the process at `address`: its status and body.
async fn readiness(client: &reqwest::Client, address: &str) -> (u16, Value) {
    let response = client
        .get(format!("{address}/health/ready"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A broker address nothing listens on.
const NO_BROKER: &str = "127.0.0.1:9";

#[tokio::test]
async fn an_api_stays_ready_and_takes_commands_while_the_broker_is_down() {
    let app = TestApp::spawn_with(AppOptions {
        brokers: Some(NO_BROKER.to_owned()),
        message_timeout_ms: 1_000,
        ..AppOptions::default()
    })
    .await;

    let registered = app.register(&patient("Broker", "Down", "1980-01-02")).await;

    assert_eq!(registered.status(), 201);
    let (status, body) = readiness(&app.client, &app.address).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &Value::from("ready")),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_relay_process_is_not_ready_while_stuck_and_ready_once_it_caught_up() {
    // An API alone stores an event that no relay publishes yet.
    let api = TestApp::spawn_with(AppOptions {
        roles: Roles {
            api: true,
            ..Roles::NONE
        },
        ..AppOptions::default()
    })
    .await;
    assert_eq!(
        api.register(&patient("Stuck", "Relay", "1980-01-02"))
            .await
            .status(),
        201
    );
    let relay_alone = Roles {
        relay: true,
        ..Roles::NONE
    };
    let mut settings = api.settings.clone();
    settings.health.port = Some(0);
    settings.health.stuck_after_secs = 1;

    // A relay that cannot reach its broker: not ready once the event waits past a second.
    let mut unreachable = settings.clone();
    unreachable.kafka.brokers = Some(NO_BROKER.to_owned());
    unreachable.kafka.message_timeout_ms = 1_000;
    let stuck = TestApp::start(unreachable, relay_alone).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = readiness(&stuck.client, &stuck.address).await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "never reported stuck: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["reason"], "stuck", "{body}");
    assert!(
        body["stuck"][0].as_str().unwrap().starts_with("relay"),
        "{body}"
    );
    // Its metrics are served beside it.
    let metrics = stuck
        .client
        .get(format!("{}/metrics", stuck.address))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("patient_service_xmin_horizon_age_seconds"));
    stuck.stop().await;

    // A relay with its broker publishes the event and is ready.
    let relay = TestApp::start(settings, relay_alone).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readiness(&relay.client, &relay.address).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_project_process_is_not_ready_while_a_kafka_fed_read_model_is_stuck() {
    // An API and a relay; the read models are fed by a `project` process alone.
    let api = TestApp::spawn_with(AppOptions {
        roles: Roles {
            api: true,
            relay: true,
            ..Roles::NONE
        },
        ..AppOptions::default()
    })
    .await;
    let mut settings = api.settings.clone();
    settings.health.port = Some(0);
    settings.health.stuck_after_secs = 1;
    let project = TestApp::start(
        settings,
        Roles {
            projectors: true,
            ..Roles::NONE
        },
    )
    .await;
    api.register(&patient("First", "Projected", "1980-01-02"))
        .await;
    api.search_until("family=Projected", 1).await;
    let (status, body) = readiness(&project.client, &project.address).await;
    assert_eq!(status, 200, "{body}");

    // The search read model cannot write (a constraint its rows break: every try fails and
    // is retried): its consumer has records and makes no progress.
    sqlx::query(
        "ALTER TABLE projections.patient_search
           ADD CONSTRAINT blocked_for_the_test CHECK (family <> 'Blocked')",
    )
    .execute(&api.pool)
    .await
    .unwrap();
    assert_eq!(
        api.register(&patient("Second", "Blocked", "1981-02-03"))
            .await
            .status(),
        201
    );
    // (Other read models that read the search table wait too, and may be named first.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = readiness(&project.client, &project.address).await;
        let named = body["stuck"]
            .as_array()
            .is_some_and(|s| s.contains(&Value::from("read model patient_search (Kafka)")));
        if status == 503 && named {
            break body;
        }
        assert!(Instant::now() < deadline, "never reported stuck: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["reason"], "stuck", "{body}");

    // Unblocked, it catches up and is ready again.
    sqlx::query("ALTER TABLE projections.patient_search DROP CONSTRAINT blocked_for_the_test")
        .execute(&api.pool)
        .await
        .unwrap();
    api.search_until("family=Blocked", 1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readiness(&project.client, &project.address).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready again: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    project.stop().await;
    api.stop().await;
}
