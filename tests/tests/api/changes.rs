//! Corrections, archive and restore: If-Match, the business rules, and what search shows.

use serde_json::{json, Value};

use crate::helpers::*;

async fn registered(app: &TestApp) -> String {
    id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await)
}

#[tokio::test]
async fn a_correction_with_the_current_etag_changes_the_record_and_the_search() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = registered(&app).await;
    app.search_until("family=lovelace", 1).await;

    // Act
    let response = app
        .command(
            &id,
            "correct-demographics",
            1,
            &json!({
                "name": { "given": ["Augusta", "Ada"], "family": "King" },
                "birth_date": "1990-12-11",
                "reason": "registration typo"
            }),
        )
        .await;

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"]["family"], "King");
    assert_eq!(body["birth_date"], "1990-12-11");
    assert_eq!(
        body["gender"], "female",
        "fields not given keep their value"
    );
    let found = app.search_until("family=king&given=aug", 1).await;
    assert_eq!(found[0]["id"], id.as_str());
    app.search_until("family=lovelace", 0).await;
    let history: Value = app
        .client
        .get(format!("{}/v1/audit/streams/patient/{id}", app.address))
        .bearer_auth(app.token("auditor-1", &["auditor"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["events"][1]["reason"], "registration typo");
    app.stop().await;
}

#[tokio::test]
async fn a_stale_if_match_gets_412_with_the_current_etag_and_changes_nothing() {
    let app = TestApp::without_kafka().await;
    let id = registered(&app).await;
    app.command(
        &id,
        "correct-demographics",
        1,
        &json!({ "gender": "other", "reason": "r" }),
    )
    .await;

    let stale = app
        .command(
            &id,
            "correct-demographics",
            1,
            &json!({ "gender": "male", "reason": "r" }),
        )
        .await;

    assert_eq!(stale.status(), 412);
    assert_eq!(stale.headers()["etag"], "\"2\"");
    assert_eq!(app.event_count().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_change_without_if_match_gets_428() {
    let app = TestApp::without_kafka().await;
    let id = registered(&app).await;

    let response = app
        .post(
            &format!("/v1/patients/{id}/archive"),
            &app.registrar(),
            &json!({ "reason": "r" }),
            &[],
        )
        .await;

    assert_eq!(response.status(), 428);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/precondition-required");
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn archiving_hides_the_patient_from_default_search_and_restoring_brings_them_back() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = registered(&app).await;
    app.search_until("family=lovelace", 1).await;

    // Act and assert: archive
    let archived = app
        .command(
            &id,
            "archive",
            1,
            &json!({ "reason": "deceased record merged elsewhere" }),
        )
        .await;
    assert_eq!(archived.status(), 200);
    let body: Value = archived.json().await.unwrap();
    assert_eq!(body["status"], "archived");
    app.search_until("family=lovelace", 0).await;
    let with_archived = app
        .search_until("family=lovelace&include_archived=true", 1)
        .await;
    assert_eq!(with_archived[0]["status"], "archived");

    // Act and assert: restore
    let restored = app
        .command(&id, "restore", 2, &json!({ "reason": "archived in error" }))
        .await;
    assert_eq!(restored.status(), 200);
    let found = app.search_until("family=lovelace", 1).await;
    assert_eq!(found[0]["status"], "active");
    app.stop().await;
}

#[tokio::test]
async fn business_rules_answer_with_their_code_and_change_nothing() {
    let app = TestApp::without_kafka().await;
    let id = registered(&app).await;
    let nothing = app
        .command(
            &id,
            "correct-demographics",
            1,
            &json!({ "gender": "female", "reason": "r" }),
        )
        .await;
    let restore_active = app
        .command(&id, "restore", 1, &json!({ "reason": "r" }))
        .await;
    app.command(&id, "archive", 1, &json!({ "reason": "r" }))
        .await;
    let archive_twice = app
        .command(&id, "archive", 2, &json!({ "reason": "r" }))
        .await;
    let correct_archived = app
        .command(
            &id,
            "correct-demographics",
            2,
            &json!({ "gender": "male", "reason": "r" }),
        )
        .await;
    let unknown = app
        .command(
            &uuid::Uuid::new_v4().to_string(),
            "archive",
            0,
            &json!({ "reason": "r" }),
        )
        .await;

    let code = |body: Value| body["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(nothing.status(), 422);
    assert_eq!(
        code(nothing.json().await.unwrap()),
        "correction-changes-nothing"
    );
    assert_eq!(restore_active.status(), 409);
    assert_eq!(code(restore_active.json().await.unwrap()), "not-archived");
    assert_eq!(archive_twice.status(), 409);
    assert_eq!(
        code(archive_twice.json().await.unwrap()),
        "already-archived"
    );
    assert_eq!(correct_archived.status(), 409);
    assert_eq!(
        code(correct_archived.json().await.unwrap()),
        "archived-patient-cannot-be-corrected"
    );
    assert_eq!(unknown.status(), 404);
    assert_eq!(app.event_count().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_correction_needs_a_reason_and_something_to_correct() {
    let app = TestApp::without_kafka().await;
    let id = registered(&app).await;

    let response = app
        .command(&id, "correct-demographics", 1, &json!({}))
        .await;

    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    let fields = error_fields(&problem);
    assert_eq!(fields, ["reason", ""]);
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn the_retention_policy_lists_archived_patients_past_their_retention_period() {
    // Arrange: a policy of zero days, so a patient archived now is eligible now.
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        retention_days: 0,
        ..AppOptions::default()
    })
    .await;
    let archived = registered(&app).await;
    let kept = id_of(&app.register_person(5, None).await);
    let response = app
        .command(
            &archived,
            "archive",
            1,
            &json!({ "reason": "moved abroad" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    archived_in_search(&app).await;
    let admin = app.token("admin-1", &["admin"]);

    // Act
    let eligible: Value = app
        .get("/v1/patients/retention-candidates", &admin)
        .await
        .json()
        .await
        .unwrap();
    let as_registrar = app
        .get("/v1/patients/retention-candidates", &app.registrar())
        .await;

    // Assert
    let ids: Vec<&str> = eligible["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [archived.as_str()]);
    assert!(!ids.contains(&kept.as_str()));
    assert_eq!(eligible["policy"]["archived_days"], 0);
    assert_eq!(as_registrar.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn a_patient_archived_within_the_retention_period_is_not_listed() {
    let app = TestApp::without_kafka().await;
    let id = registered(&app).await;
    let response = app
        .command(&id, "archive", 1, &json!({ "reason": "moved abroad" }))
        .await;
    assert_eq!(response.status(), 200);
    archived_in_search(&app).await;

    let listed: Value = app
        .get(
            "/v1/patients/retention-candidates",
            &app.token("admin-1", &["admin"]),
        )
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(listed["items"], json!([]));
    app.stop().await;
}

/// Waits until search shows the Lovelace patient archived.
async fn archived_in_search(app: &TestApp) {
    let found = app
        .search_until("family=lovelace&include_archived=true", 1)
        .await;
    if found[0]["status"] != "archived" {
        eventually("the archive in the search read model", || async {
            let found = app
                .search_until("family=lovelace&include_archived=true", 1)
                .await;
            found[0]["status"] == "archived"
        })
        .await;
    }
}
