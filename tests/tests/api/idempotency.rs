//! `Idempotency-Key`: a repeat gets the first answer and creates nothing twice.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_repeated_registration_with_the_same_key_returns_the_first_answer() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let body = patient("Ada", "Lovelace", "1990-12-10");
    let token = app.registrar();

    // Act
    let first = app
        .post("/v1/patients", &token, &body, &[("idempotency-key", "k-1")])
        .await;
    let first_location = first.headers()["location"].clone();
    assert!(
        first.headers().get("idempotent-replayed").is_none(),
        "the first answer is not a replay"
    );
    let first_body: Value = first.json().await.unwrap();
    let again = app
        .post("/v1/patients", &token, &body, &[("idempotency-key", "k-1")])
        .await;

    // Assert
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["location"], first_location);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again_body: Value = again.json().await.unwrap();
    assert_eq!(again_body, first_body);
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_repeats_of_one_key_register_one_patient() {
    let app = TestApp::without_kafka().await;
    let body = patient("Ada", "Lovelace", "1990-12-10");
    let token = app.registrar();

    let responses = futures::future::join_all((0..10).map(|_| {
        app.post(
            "/v1/patients",
            &token,
            &body,
            &[("idempotency-key", "same")],
        )
    }))
    .await;

    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_key_reused_for_a_different_request_is_refused() {
    let app = TestApp::without_kafka().await;
    let token = app.registrar();
    app.post(
        "/v1/patients",
        &token,
        &patient("Ada", "Lovelace", "1990-12-10"),
        &[("idempotency-key", "k")],
    )
    .await;

    let other = app
        .post(
            "/v1/patients",
            &token,
            &patient("Grace", "Hopper", "1906-12-09"),
            &[("idempotency-key", "k")],
        )
        .await;

    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn keys_are_per_user() {
    let app = TestApp::without_kafka().await;

    let a = app
        .post(
            "/v1/patients",
            &app.token("a", &["registrar"]),
            &patient("Ada", "Lovelace", "1990-12-10"),
            &[("idempotency-key", "k")],
        )
        .await;
    let b = app
        .post(
            "/v1/patients",
            &app.token("b", &["registrar"]),
            &patient("Grace", "Hopper", "1906-12-09"),
            &[("idempotency-key", "k")],
        )
        .await;

    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert_ne!(a.headers()["location"], b.headers()["location"]);
    assert_eq!(app.event_count().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_archive_with_the_same_key_returns_the_first_answer() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let path = format!("/v1/patients/{id}/archive");
    let body = serde_json::json!({ "reason": "duplicate" });
    let headers = [("if-match", "\"1\""), ("idempotency-key", "archive-1")];

    let first = app.post(&path, &app.registrar(), &body, &headers).await;
    let again = app.post(&path, &app.registrar(), &body, &headers).await;

    assert_eq!(
        (first.status().as_u16(), again.status().as_u16()),
        (200, 200)
    );
    assert_eq!(again.headers()["etag"], "\"2\"");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.event_count().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_repeats_of_a_change_under_one_key_all_answer_the_first_change() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let path = format!("/v1/patients/{id}/archive");
    let body = serde_json::json!({ "reason": "duplicate" });
    let headers = [("if-match", "\"1\""), ("idempotency-key", "archive-20")];
    let token = app.registrar();

    // Act
    let answers =
        futures::future::join_all((0..20).map(|_| app.post(&path, &token, &body, &headers))).await;
    let other = app
        .post(
            &path,
            &token,
            &serde_json::json!({ "reason": "moved abroad" }),
            &headers,
        )
        .await;

    // Assert
    let mut replays = 0;
    for answer in answers {
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
        assert_eq!(answer.headers()["etag"], "\"2\"");
        replays += usize::from(answer.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(replays, 19, "the first answer, then nineteen replays of it");
    assert_eq!(app.event_count().await, 2);
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    app.stop().await;
}

#[tokio::test]
async fn a_keys_record_commits_with_the_commands_events() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let path = format!("/v1/patients/{id}/archive");
    let body = serde_json::json!({ "reason": "duplicate" });
    let headers = [("if-match", "\"1\""), ("idempotency-key", "archive-tx")];

    let first = app.post(&path, &app.registrar(), &body, &headers).await;
    assert_eq!(first.status(), 200);

    // The record names the version the command's events left the patient at, and was written
    // in their transaction: same transaction id as the event's row.
    let (version, same_transaction): (i64, bool) = sqlx::query_as(
        "SELECT k.version, k.xmin = e.xmin FROM idempotency_keys k
           JOIN events e ON e.aggregate_id = k.aggregate_id AND e.sequence = k.version
          WHERE k.key = 'archive-tx'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((version, same_transaction), (2, true));
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_erasure_with_the_same_key_answers_as_the_first() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let path = format!("/v1/patients/{id}/forget");
    let body = serde_json::json!({ "reason": "patient-request" });
    let headers = [("if-match", "\"1\""), ("idempotency-key", "forget-1")];
    let admin = app.token("admin-1", &["admin"]);

    let first = app.post(&path, &admin, &body, &headers).await;
    let again = app.post(&path, &admin, &body, &headers).await;

    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    assert_eq!(again.status(), 200, "the erasure kept its own key's record");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replayed: Value = again.json().await.unwrap();
    assert_eq!(replayed["status"], "forgotten");
    assert_eq!(app.event_count().await, 2);
    app.stop().await;
}
