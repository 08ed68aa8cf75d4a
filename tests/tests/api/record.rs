//! The rest of the record over HTTP: contact information, identifiers, preferences,
//! emergency contacts and coverages, each with If-Match, its rules and its event on the topic.

use serde_json::{json, Value};

use crate::helpers::*;

/// A registered patient's id and current version.
async fn registered(app: &TestApp) -> (String, u64) {
    let body = app.register_ok("Ada", "Lovelace", "1990-12-10").await;
    (body["id"].as_str().unwrap().to_owned(), 1)
}

/// Sends `method path` with If-Match `version` as a registrar; returns status and body.
async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    version: u64,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", app.address);
    let request = match method {
        "PUT" => app.client.put(url),
        "DELETE" => app.client.delete(url),
        _ => app.client.post(url),
    }
    .bearer_auth(app.registrar())
    .header("if-match", format!("\"{version}\""));
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.unwrap();
    let response = app.described(method, path, response).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn contact_information_is_replaced_and_searchable_by_phone_email_and_postal_code() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let (id, version) = registered(&app).await;

    // Act
    let (status, body) = send(
        &app,
        "PUT",
        &format!("/v1/patients/{id}/contact"),
        version,
        Some(json!({
            "phones": [{ "number": "+41 79 123 45 67", "use": "mobile" }],
            "emails": [{ "address": "ada@example.org" }],
            "addresses": [{ "lines": ["Bahnhofstrasse 1"], "city": "Zürich", "postal_code": "8001", "country": "CH" }]
        })),
    )
    .await;

    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["contact"]["phones"][0]["number"], "+41791234567");
    for query in [
        "phone=%2B41791234567",
        "email=ADA@example.org",
        "postal_code=8001",
    ] {
        let found = app.search_until(query, 1).await;
        assert_eq!(found[0]["id"], id.as_str(), "{query}");
    }
    app.stop().await;
}

#[tokio::test]
async fn identifiers_are_added_once_removed_with_a_reason_and_searchable() {
    let app = TestApp::without_kafka().await;
    let (id, _) = registered(&app).await;
    let path = format!("/v1/patients/{id}/identifiers");
    let insurance = json!({ "system": "urn:oid:2.16.756.5.32", "value": "7560000000001" });

    let (added, _) = send(&app, "POST", &path, 1, Some(insurance.clone())).await;
    let (again, problem) = send(&app, "POST", &path, 2, Some(insurance)).await;
    let found = app
        .search_until("identifier=urn:oid:2.16.756.5.32%7C7560000000001", 1)
        .await;
    let (removed, body) = send(
        &app,
        "POST",
        &format!("{path}/remove"),
        2,
        Some(json!({ "system": "urn:oid:2.16.756.5.32", "value": "7560000000001", "reason": "issued in error" })),
    )
    .await;

    assert_eq!(added, 200);
    assert_eq!(again, 409);
    assert_eq!(problem["code"], "identifier-already-recorded");
    assert_eq!(found[0]["id"], id.as_str());
    assert_eq!(removed, 200);
    assert_eq!(body["identifiers"], json!([]));
    app.search_until("identifier=urn:oid:2.16.756.5.32%7C7560000000001", 0)
        .await;
    app.stop().await;
}

#[tokio::test]
async fn preferences_are_validated_field_by_field_and_kept() {
    let app = TestApp::without_kafka().await;
    let (id, _) = registered(&app).await;
    let path = format!("/v1/patients/{id}/preferences");

    let (bad, problem) = send(
        &app,
        "PUT",
        &path,
        1,
        Some(json!({ "communication_language": "german", "preferred_channel": "fax", "quiet_hours": { "start": "22:00", "end": "25:00" }, "reminder_opt_in": "yes" })),
    )
    .await;
    let (good, body) = send(
        &app,
        "PUT",
        &path,
        1,
        Some(json!({ "communication_language": "de-CH", "preferred_channel": "sms", "reminder_opt_in": true, "quiet_hours": { "start": "22:00", "end": "07:00" }, "interpreter_needed": true })),
    )
    .await;

    assert_eq!(bad, 422);
    let fields = error_fields(&problem);
    assert_eq!(
        fields,
        [
            "communication_language",
            "preferred_channel",
            "reminder_opt_in",
            "quiet_hours.end"
        ]
    );
    assert_eq!(good, 200);
    assert_eq!(body["preferences"]["preferred_channel"], "sms");
    assert_eq!(body["preferences"]["interpreter_needed"], true);
    app.stop().await;
}

#[tokio::test]
async fn emergency_contacts_are_added_changed_and_removed() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let (id, _) = registered(&app).await;
    let path = format!("/v1/patients/{id}/emergency-contacts");
    let charles = json!({ "name": { "given": ["Charles"], "family": "Babbage" }, "relationship": "friend", "phones": [{ "number": "+441632960000" }] });

    // Act and assert
    let (no_phone, problem) = send(&app, "POST", &path, 1, Some(json!({ "name": { "given": ["Charles"], "family": "Babbage" }, "relationship": "friend" }))).await;
    assert_eq!(no_phone, 422);
    assert_eq!(problem["errors"][0]["field"], "phones");

    let (added, body) = send(&app, "POST", &path, 1, Some(charles)).await;
    assert_eq!(added, 200);
    let contact_id = body["emergency_contacts"][0]["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (changed, body) = send(
        &app,
        "PUT",
        &format!("{path}/{contact_id}"),
        2,
        Some(json!({ "name": { "given": ["Charles"], "family": "Babbage" }, "relationship": "partner", "phones": [{ "number": "+441632960001" }] })),
    )
    .await;
    assert_eq!(changed, 200);
    assert_eq!(body["emergency_contacts"][0]["relationship"], "partner");

    let (unknown, problem) = send(
        &app,
        "DELETE",
        &format!("{path}/{}", uuid::Uuid::new_v4()),
        3,
        None,
    )
    .await;
    assert_eq!(unknown, 409);
    assert_eq!(problem["code"], "emergency-contact-not-found");

    let (removed, body) = send(&app, "DELETE", &format!("{path}/{contact_id}"), 3, None).await;
    assert_eq!(removed, 200);
    assert_eq!(body["emergency_contacts"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn coverages_of_one_priority_do_not_overlap_and_ended_ones_stay_on_record() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let (id, _) = registered(&app).await;
    let path = format!("/v1/patients/{id}/coverages");
    let coverage = |start: &str, priority: &str| json!({ "payer": "Helsana", "plan": "Basic", "member_id": "M-123", "start": start, "priority": priority });

    // Act and assert
    let (added, body) = send(
        &app,
        "POST",
        &path,
        1,
        Some(coverage("2026-01-01", "primary")),
    )
    .await;
    assert_eq!(added, 200, "{body}");
    let first = body["coverages"][0]["coverage_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (overlap, problem) = send(
        &app,
        "POST",
        &path,
        2,
        Some(coverage("2026-06-01", "primary")),
    )
    .await;
    assert_eq!(overlap, 409);
    assert_eq!(problem["code"], "coverage-overlaps");

    let (secondary, _) = send(
        &app,
        "POST",
        &path,
        2,
        Some(coverage("2026-06-01", "secondary")),
    )
    .await;
    assert_eq!(secondary, 200);

    let (bad_end, problem) = send(
        &app,
        "POST",
        &format!("{path}/{first}/end"),
        3,
        Some(json!({ "end": "2025-12-31", "reason": "moved" })),
    )
    .await;
    assert_eq!(bad_end, 409);
    assert_eq!(problem["code"], "coverage-ends-before-it-starts");

    let (ended, body) = send(
        &app,
        "POST",
        &format!("{path}/{first}/end"),
        3,
        Some(json!({ "end": "2026-06-30", "reason": "changed insurer" })),
    )
    .await;
    assert_eq!(ended, 200);
    let kept = body["coverages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["coverage_id"] == first.as_str())
        .unwrap()
        .clone();
    assert_eq!(kept["ended"], true);
    assert_eq!(kept["end"], "2026-06-30");

    let (next, _) = send(
        &app,
        "POST",
        &path,
        4,
        Some(coverage("2026-07-01", "primary")),
    )
    .await;
    assert_eq!(next, 200, "the ended coverage frees its priority");

    let (invalid, problem) = send(
        &app,
        "POST",
        &path,
        5,
        Some(json!({ "payer": "", "start": "01.01.2026", "priority": "first" })),
    )
    .await;
    assert_eq!(invalid, 422);
    let fields = error_fields(&problem);
    assert_eq!(fields, ["payer", "member_id", "start", "priority"]);
    app.stop().await;
}

#[tokio::test]
async fn record_changes_need_if_match_and_the_registrar_role() {
    let app = TestApp::without_kafka().await;
    let (id, _) = registered(&app).await;
    let url = format!("{}/v1/patients/{id}/preferences", app.address);

    let without = app
        .client
        .put(&url)
        .bearer_auth(app.registrar())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let clinician = app
        .client
        .put(&url)
        .bearer_auth(app.token("c", &["clinician"]))
        .header("if-match", "\"1\"")
        .json(&json!({ "reminder_opt_in": true }))
        .send()
        .await
        .unwrap();

    assert_eq!(without.status(), 428);
    assert_eq!(clinician.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn fuzzy_name_search_finds_typos_and_transpositions_best_first() {
    let app = TestApp::without_kafka().await;
    let ada = app.register_ok("Ada", "Lovelace", "1990-12-10").await;
    app.register_ok("Grace", "Hopper", "1906-12-09").await;
    app.register_person(3, Some("Lovell")).await;
    app.search_until("family=l", 2).await;

    let token = app.token("c", &["clinician"]);
    let first = |query: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            let body: Value = app
                .get(&format!("/v1/patients?{query}"), token)
                .await
                .json()
                .await
                .unwrap();
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].clone())
                .collect::<Vec<_>>()
        }
    };

    let typo_and_transposition = first("name=Lovelcae%20Adda").await;
    let one_word = first("name=lovelase").await;
    let nobody = first("name=zzyzx").await;

    assert_eq!(
        typo_and_transposition.first(),
        Some(&ada["id"]),
        "best first"
    );
    assert_eq!(one_word.first(), Some(&ada["id"]));
    assert!(nobody.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn every_record_change_is_published_valid_against_its_schema() {
    // Arrange
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let (id, _) = registered(&app).await;
    let base = format!("/v1/patients/{id}");
    let steps: Vec<(&str, String, Option<Value>)> = vec![
        (
            "PUT",
            format!("{base}/contact"),
            Some(json!({ "phones": [{ "number": "+41791234567" }] })),
        ),
        (
            "POST",
            format!("{base}/identifiers"),
            Some(json!({ "system": "urn:x", "value": "1" })),
        ),
        (
            "POST",
            format!("{base}/identifiers/remove"),
            Some(json!({ "system": "urn:x", "value": "1", "reason": "typo" })),
        ),
        (
            "PUT",
            format!("{base}/preferences"),
            Some(
                json!({ "preferred_channel": "email", "quiet_hours": { "start": "21:00", "end": "08:00" } }),
            ),
        ),
        (
            "POST",
            format!("{base}/emergency-contacts"),
            Some(
                json!({ "name": { "given": [], "family": "Babbage" }, "relationship": "friend", "phones": [{ "number": "+441632960000" }] }),
            ),
        ),
        (
            "POST",
            format!("{base}/coverages"),
            Some(
                json!({ "payer": "Helsana", "member_id": "M-1", "start": "2026-01-01", "priority": "primary", "subscriber_name": { "given": ["Anne"], "family": "Byron" }, "relationship": "child" }),
            ),
        ),
    ];

    // Act
    let mut version = 1;
    let mut last = Value::Null;
    for (method, path, body) in steps {
        let (status, answer) = send(&app, method, &path, version, body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        version += 1;
        last = answer;
    }
    let contact_id = last["emergency_contacts"][0]["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let coverage_id = last["coverages"][0]["coverage_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let more: Vec<(&str, String, Option<Value>)> = vec![
        (
            "PUT",
            format!("{base}/emergency-contacts/{contact_id}"),
            Some(
                json!({ "name": { "given": [], "family": "Babbage" }, "relationship": "other", "phones": [{ "number": "+441632960000" }] }),
            ),
        ),
        (
            "DELETE",
            format!("{base}/emergency-contacts/{contact_id}"),
            None,
        ),
        (
            "PUT",
            format!("{base}/coverages/{coverage_id}"),
            Some(
                json!({ "payer": "Helsana", "member_id": "M-2", "start": "2026-01-01", "priority": "primary" }),
            ),
        ),
        (
            "POST",
            format!("{base}/coverages/{coverage_id}/end"),
            Some(json!({ "end": "2026-12-31", "reason": "moved abroad" })),
        ),
    ];
    for (method, path, body) in more {
        let (status, answer) = send(&app, method, &path, version, body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        version += 1;
    }

    // Assert
    let records = consume(&consumer, version as usize).await;
    let mut types = Vec::new();
    for record in &records {
        let ce_type = header(record, "ce_type").unwrap();
        let (event_type, _) = schemas::envelope::parse_ce_type(&ce_type).unwrap();
        assert_matches_schema(event_type, &app.open(record).await);
        types.push(event_type.to_owned());
    }
    assert_eq!(
        types,
        [
            "PatientRegistered",
            "ContactInformationChanged",
            "IdentifierAdded",
            "IdentifierRemoved",
            "PreferencesUpdated",
            "EmergencyContactAdded",
            "CoverageAdded",
            "EmergencyContactChanged",
            "EmergencyContactRemoved",
            "CoverageChanged",
            "CoverageEnded",
        ]
    );
    app.stop().await;
}
