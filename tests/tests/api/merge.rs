//! Merging a duplicate into a survivor, and undoing it.

use serde_json::{json, Value};

use crate::helpers::*;

async fn post(app: &TestApp, path: &str, version: u64, body: Value) -> (u16, Value) {
    let response = app
        .post(
            path,
            &app.registrar(),
            &body,
            &[("if-match", &format!("\"{version}\""))],
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn read(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/patients/{id}"), &app.registrar())
        .await
        .json()
        .await
        .unwrap()
}

/// A survivor with one identifier and phone, and a duplicate with another identifier and an
/// e-mail address, registered with an override.
async fn survivor_and_duplicate(app: &TestApp) -> (String, String) {
    let mut body = patient("Ada", "Lovelace", "1990-12-10");
    body["identifiers"] = json!([{ "system": "urn:x", "value": "X-1" }]);
    body["contact"] = json!({ "phones": [{ "number": "+41791234567" }] });
    let survivor: Value = app.register(&body).await.json().await.unwrap();
    let mut dup = patient("Ada", "Lovelace", "1990-12-10");
    dup["identifiers"] = json!([{ "system": "urn:y", "value": "Y-2" }]);
    dup["contact"] = json!({ "emails": [{ "address": "ada@example.org" }] });
    dup["duplicate_override"] = json!({ "reason": "registered at another site" });
    let duplicate = app.register(&dup).await;
    assert_eq!(duplicate.status(), 201);
    let duplicate: Value = duplicate.json().await.unwrap();
    (
        survivor["id"].as_str().unwrap().to_owned(),
        duplicate["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_merged_duplicate_points_to_the_survivor_which_gains_what_it_lacked_and_unmerge_restores_both(
) {
    // Arrange
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let (survivor, duplicate) = survivor_and_duplicate(&app).await;
    app.search_until("family=lovelace", 2).await;

    // Act: merge
    let (status, merged) = post(
        &app,
        &format!("/v1/patients/{duplicate}/merge"),
        1,
        json!({ "target_id": survivor, "reason": "same person, registered twice" }),
    )
    .await;

    // Assert
    assert_eq!(status, 200, "{merged}");
    assert_eq!(merged["status"], "merged");
    assert_eq!(
        merged["merged_into"]["href"],
        format!("/v1/patients/{survivor}")
    );
    let source = read(&app, &duplicate).await;
    assert_eq!(source["merged_into"]["id"], survivor.as_str());
    let target = read(&app, &survivor).await;
    let systems: Vec<&str> = target["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems, ["urn:x", "urn:y"]);
    assert_eq!(target["contact"]["emails"][0]["address"], "ada@example.org");
    assert_eq!(target["replaces"][0]["id"], duplicate.as_str());
    let found = app.search_until("family=lovelace", 1).await;
    assert_eq!(
        found[0]["id"],
        survivor.as_str(),
        "search shows the survivor only"
    );
    assert_eq!(
        app.search_until("identifier=urn:y%7CY-2", 1).await[0]["id"],
        survivor.as_str()
    );
    let changed = post(
        &app,
        &format!("/v1/patients/{duplicate}/archive"),
        2,
        json!({ "reason": "r" }),
    )
    .await;
    assert_eq!(changed.0, 409);
    assert_eq!(changed.1["code"], "merged-patient-cannot-be-changed");

    // Act: unmerge
    let (status, unmerged) = post(
        &app,
        &format!("/v1/patients/{duplicate}/unmerge"),
        2,
        json!({ "reason": "different people after all" }),
    )
    .await;

    // Assert
    assert_eq!(status, 200, "{unmerged}");
    assert_eq!(unmerged["status"], "active");
    let target = read(&app, &survivor).await;
    assert_eq!(target["identifiers"].as_array().unwrap().len(), 1);
    assert_eq!(target["contact"]["emails"], json!([]));
    assert!(target.get("replaces").is_none());
    app.search_until("family=lovelace", 2).await;
    let records = consume(&consumer, 6).await;
    let mut types = Vec::new();
    for record in &records {
        let ce_type = header(record, "ce_type").unwrap();
        let (event_type, _) = schemas::envelope::parse_ce_type(&ce_type).unwrap();
        assert_matches_schema(event_type, &app.open(record).await);
        types.push(event_type.to_owned());
    }
    types.sort();
    assert_eq!(
        types,
        [
            "AbsorptionReverted",
            "PatientAbsorbed",
            "PatientMerged",
            "PatientRegistered",
            "PatientRegistered",
            "PatientUnmerged"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn merging_into_oneself_an_archived_a_merged_away_or_an_unknown_patient_is_refused() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let (survivor, duplicate) = survivor_and_duplicate(&app).await;
    let third = id_of(&app.register_person(77, None).await);
    let archived = id_of(&app.register_person(78, None).await);
    post(
        &app,
        &format!("/v1/patients/{archived}/archive"),
        1,
        json!({ "reason": "left" }),
    )
    .await;
    let merge = |source: &str, target: &str| {
        (
            format!("/v1/patients/{source}/merge"),
            json!({ "target_id": target, "reason": "duplicate" }),
        )
    };
    let before = app.event_count().await;

    // Act
    let (path, body) = merge(&duplicate, &duplicate);
    let into_self = post(&app, &path, 1, body).await;
    let (path, body) = merge(&duplicate, &archived);
    let into_archived = post(&app, &path, 1, body).await;
    let (path, body) = merge(&duplicate, &uuid::Uuid::new_v4().to_string());
    let into_unknown = post(&app, &path, 1, body).await;
    let (path, body) = merge(&duplicate, &survivor);
    assert_eq!(post(&app, &path, 1, body).await.0, 200);
    let (path, body) = merge(&third, &duplicate);
    let into_merged_away = post(&app, &path, 1, body).await;

    // Assert
    assert_eq!(
        (into_self.0, into_self.1["code"].as_str()),
        (409, Some("merge-into-self"))
    );
    assert_eq!(
        (into_archived.0, into_archived.1["code"].as_str()),
        (409, Some("target-archived"))
    );
    assert_eq!(into_unknown.0, 422);
    assert_eq!(into_unknown.1["errors"][0]["field"], "target_id");
    assert_eq!(
        (into_merged_away.0, into_merged_away.1["code"].as_str()),
        (409, Some("target-merged-away"))
    );
    assert_eq!(
        app.event_count().await,
        before + 2,
        "only the successful merge wrote"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_survivor_of_a_merge_is_not_merged_away_until_that_merge_is_undone() {
    let app = TestApp::without_kafka().await;
    let (survivor, duplicate) = survivor_and_duplicate(&app).await;
    let third = id_of(&app.register_person(79, None).await);
    let merged = post(
        &app,
        &format!("/v1/patients/{duplicate}/merge"),
        1,
        json!({ "target_id": survivor, "reason": "duplicate" }),
    )
    .await;
    assert_eq!(merged.0, 200);

    let chained = post(
        &app,
        &format!("/v1/patients/{survivor}/merge"),
        2,
        json!({ "target_id": third, "reason": "duplicate" }),
    )
    .await;

    assert_eq!(chained.0, 409);
    assert_eq!(chained.1["code"], "has-merged-duplicates");
    app.stop().await;
}

#[tokio::test]
async fn merges_killed_midway_are_whole_or_absent_never_half_done() {
    // Arrange: pairs of a survivor and its duplicate, and an API process of its own to kill.
    let app = TestApp::without_kafka().await;
    let mut pairs = Vec::new();
    for n in 0..40u64 {
        let survivor = id_of(&app.register_person(7000 + 2 * n, None).await);
        let duplicate = id_of(&app.register_person(7001 + 2 * n, None).await);
        pairs.push((duplicate, survivor));
    }
    // A user of its own, whose session only these merges use.
    let token = app.token("merger-1", &["registrar"]);
    for round in pairs.chunks(20) {
        let (mut serve, base) = api_process(&app, &[]).await;

        // Act: twenty merges at once; the process dies with SIGKILL once some have committed.
        let merges = round.iter().map(|(duplicate, survivor)| {
            app.client
                .post(format!("{base}/v1/patients/{duplicate}/merge"))
                .bearer_auth(&token)
                .header("if-match", "\"1\"")
                .json(&serde_json::json!({ "target_id": survivor, "reason": "same person" }))
                .send()
        });
        let requests = tokio::spawn(futures::future::join_all(merges));
        eventually("some merges to commit", || async {
            let merged: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE event_type = 'PatientMerged'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            merged > 0
        })
        .await;
        serve.kill().unwrap();
        serve.wait().unwrap();
        requests.await.unwrap();
    }

    // Assert: each duplicate is merged exactly when its survivor absorbed it.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, event_type FROM events
          WHERE event_type IN ('PatientMerged', 'PatientAbsorbed')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let has = |id: &str, event_type: &str| rows.iter().any(|(a, t)| a == id && t == event_type);
    let halves: Vec<_> = pairs
        .iter()
        .filter(|(duplicate, survivor)| {
            has(duplicate, "PatientMerged") != has(survivor, "PatientAbsorbed")
        })
        .collect();
    assert!(halves.is_empty(), "half-done merges: {halves:?}");
    app.stop().await;
}
