use std::collections::HashMap;

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn registering_a_patient_stores_the_event_publishes_it_and_makes_it_searchable() {
    // Arrange
    let app = TestApp::spawn().await;
    let consumer = app.consumer();

    // Act
    let response = app.register(&patient("Zoë", "Müller", "1990-12-10")).await;

    // Assert: the answer
    assert_eq!(response.status(), 201);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/patients/{id}"));
    assert_eq!(
        body["name"],
        json!({ "given": ["Zoë"], "family": "Müller" })
    );
    assert_eq!(body["status"], "active");
    assert_eq!(body["mrn"].as_str().unwrap().len(), 10);

    // (a) the event row, with who and which request in its metadata
    let (event_type, sequence, metadata): (String, i64, Value) = sqlx::query_as(
        "SELECT event_type, sequence, metadata FROM events WHERE aggregate_type = 'Patient' AND aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((event_type.as_str(), sequence), ("PatientRegistered", 1));
    assert_eq!(metadata["user_id"], "registrar-1");
    assert_eq!(metadata["request_id"], request_id.as_str());

    // (b) the record on the topic: key, CloudEvents headers, payload valid against the schema
    let records = consume(&consumer, 1).await;
    let record = &records[0];
    assert_eq!(key(record), id);
    assert_eq!(header(record, "ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(
        header(record, "ce_type").as_deref(),
        Some("org.nextgen-medtech.patients.PatientRegistered.v1")
    );
    assert_eq!(
        header(record, "ce_id").unwrap(),
        schemas::envelope::event_id("Patient", &id, 1).to_string()
    );
    assert_eq!(
        header(record, "ce_source").as_deref(),
        Some(schemas::envelope::SOURCE)
    );
    assert_eq!(header(record, "ce_subject").as_deref(), Some(id.as_str()));
    assert_eq!(header(record, "ce_sequence").as_deref(), Some("1"));
    assert!(
        header(record, "ce_position")
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    assert!(chrono::DateTime::parse_from_rfc3339(&header(record, "ce_time").unwrap()).is_ok());
    assert_eq!(
        header(record, "content-type").as_deref(),
        Some(schemas::sealed::SEALED_CONTENT_TYPE),
        "patient events are published sealed"
    );
    assert_eq!(
        header(record, "ce_requestid").as_deref(),
        Some(request_id.as_str())
    );
    assert!(header(record, "traceparent").unwrap().starts_with("00-"));
    let data = app.open(record).await;
    assert_matches_schema("PatientRegistered", &data);
    let data: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(data["patient_id"], id.as_str());
    assert_eq!(data["birth_date"], "1990-12-10");

    // (c) found through search, accent- and case-insensitively
    let found = app.search_until("family=muller", 1).await;
    assert_eq!(found[0]["id"], id.as_str());
    app.stop().await;
}

#[tokio::test]
async fn every_patient_event_type_is_published_valid_against_its_schema() {
    // Arrange
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1915-12-10").await);

    // Act
    let corrected = app
        .command(
            &id,
            "correct-demographics",
            1,
            &json!({ "name": { "given": ["Ada"], "family": "King" }, "reason": "married name" }),
        )
        .await;
    let archived = app
        .command(&id, "archive", 2, &json!({ "reason": "duplicate record" }))
        .await;
    let restored = app
        .command(
            &id,
            "restore",
            3,
            &json!({ "reason": "archived by mistake" }),
        )
        .await;

    // Assert
    assert_eq!(
        [
            corrected.status().as_u16(),
            archived.status().as_u16(),
            restored.status().as_u16()
        ],
        [200, 200, 200]
    );
    let records = consume(&consumer, 4).await;
    let mut types = Vec::new();
    for record in &records {
        let ce_type = header(record, "ce_type").unwrap();
        let (event_type, version) = schemas::envelope::parse_ce_type(&ce_type).unwrap();
        assert_eq!(version, 1);
        assert_matches_schema(event_type, &app.open(record).await);
        types.push(event_type.to_owned());
    }
    assert_eq!(
        types,
        [
            "PatientRegistered",
            "DemographicsCorrected",
            "PatientArchived",
            "PatientRestored"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn get_returns_the_current_record_with_its_etag() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Grace", "Hopper", "1906-12-09").await);
    app.command(
        &id,
        "correct-demographics",
        1,
        &json!({ "gender": "other", "reason": "patient request" }),
    )
    .await;

    // Act
    let response = app
        .get(
            &format!("/v1/patients/{id}"),
            &app.token("r", &["registrar"]),
        )
        .await;

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["gender"], "other");
    assert_eq!(body["version"], 2);
    app.stop().await;
}

#[tokio::test]
async fn get_of_an_unknown_patient_is_404_and_of_a_malformed_id_is_400() {
    let app = TestApp::without_kafka().await;
    let token = app.token("r", &["registrar"]);

    let unknown = app
        .get(&format!("/v1/patients/{}", uuid::Uuid::new_v4()), &token)
        .await;
    let malformed = app.get("/v1/patients/not-a-uuid", &token).await;

    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(malformed.status(), 400);
    let problem: Value = malformed.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "id");
    app.stop().await;
}

#[tokio::test]
async fn medical_record_numbers_are_unique_and_carry_a_check_digit() {
    let app = TestApp::without_kafka().await;
    let mut seen = HashMap::new();
    for i in 0..5 {
        let body = app.register_person(i, None).await;
        let mrn = body["mrn"].as_str().unwrap().to_owned();
        assert!(domain::patient::Mrn::parse("mrn", &mrn).is_ok(), "{mrn}");
        assert!(seen.insert(mrn, i).is_none());
    }
    app.stop().await;
}

#[tokio::test]
async fn contact_information_and_identifiers_are_kept_and_national_ids_shown_masked() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let mut body = patient("Ada", "Lovelace", "1990-12-10");
    body["identifiers"] = json!([
        { "system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789", "national": true },
        { "system": "https://hospital.example/ids", "value": "H-42" }
    ]);
    body["contact"] = json!({
        "phones": [{ "number": "+41 44 668 18 00", "use": "work", "preferred": true }, { "number": "+41791234567" }],
        "emails": [{ "address": "Ada@Example.ORG" }],
        "addresses": [{ "use": "home", "lines": ["12 Church Street"], "city": "Bondi", "postal_code": "2026", "country": "au" }]
    });

    // Act
    let created = app.register(&body).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read: Value = app
        .get(
            &format!("/v1/patients/{id}"),
            &app.token("r", &["registrar"]),
        )
        .await
        .json()
        .await
        .unwrap();

    // Assert
    assert_eq!(read["identifiers"][0]["value"], "*******6789");
    assert_eq!(read["identifiers"][1]["value"], "H-42");
    assert!(
        !read.to_string().contains("123-45"),
        "the national id is never shown in full"
    );
    assert_eq!(read["contact"]["phones"][0]["number"], "+41446681800");
    assert_eq!(read["contact"]["phones"][1]["preferred"], false);
    assert_eq!(read["contact"]["emails"][0]["address"], "Ada@example.org");
    assert_eq!(
        read["contact"]["emails"][0]["preferred"], true,
        "a single entry is preferred"
    );
    assert_eq!(read["contact"]["addresses"][0]["country"], "AU");
    app.stop().await;
}

#[tokio::test]
async fn a_patient_known_by_one_name_and_without_a_known_birth_date_can_be_registered() {
    let app = TestApp::without_kafka().await;

    let response = app
        .register(&json!({ "name": { "given": [], "family": "Suharto" }, "gender": "male" }))
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"]["given"], json!([]));
    assert!(body.get("birth_date").is_none());
    app.stop().await;
}

#[tokio::test]
async fn the_full_demographics_are_kept_corrected_and_validated() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let mut body = patient("Augusta", "King", "1990-12-10");
    body["name"]["prefix"] = json!(["Dr."]);
    body["name"]["suffix"] = json!(["PhD"]);
    body["name"]["preferred"] = json!("Ada");
    body["marital_status"] = json!("M");
    body["languages"] = json!(["en-GB", "fr"]);

    // Act
    let created = app.register(&body).await;
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let corrected = app
        .command(
            &id,
            "correct-demographics",
            1,
            &json!({ "marital_status": "W", "reason": "husband died" }),
        )
        .await;
    let mut bad = patient("Grace", "Hopper", "1906-12-09");
    bad["marital_status"] = json!("married");
    bad["languages"] = json!(["english", "fr", "fr"]);
    bad["name"]["prefix"] = json!(["a very long academic title indeed"]);
    let refused = app.register(&bad).await;

    // Assert
    assert_eq!(created["name"]["prefix"], json!(["Dr."]));
    assert_eq!(created["name"]["preferred"], "Ada");
    assert_eq!(created["languages"], json!(["en-GB", "fr"]));
    assert_eq!(corrected.status(), 200);
    let corrected: Value = corrected.json().await.unwrap();
    assert_eq!(corrected["marital_status"], "W");
    assert_eq!(
        corrected["languages"],
        json!(["en-GB", "fr"]),
        "fields not given keep their value"
    );
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    let fields = error_fields(&problem);
    assert_eq!(
        fields,
        [
            "name.prefix[0]",
            "marital_status",
            "languages[0]",
            "languages[2]"
        ]
    );
    app.stop().await;
}
