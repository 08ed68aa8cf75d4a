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
