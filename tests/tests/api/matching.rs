//! Duplicate detection over HTTP: `$match`, the 409 on registration, the recorded override,
//! and `patient-service-tools match-eval`.

use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::*;

fn ada() -> Value {
    json!({
        "name": { "given": ["Ada"], "family": "Lovelace" },
        "birth_date": "1990-12-10",
        "gender": "female",
        "identifiers": [{ "system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789", "national": true }],
        "contact": {
            "phones": [{ "number": "+41 44 668 18 00", "use": "mobile" }],
            "emails": [{ "address": "ada@example.org" }],
            "addresses": [{ "lines": ["12 Church Street"], "city": "Bondi", "postal_code": "2026", "country": "AU" }]
        }
    })
}

async fn match_candidates(app: &TestApp, candidate: &Value) -> Vec<Value> {
    let response = app
        .post("/v1/patients/$match", &app.registrar(), candidate, &[])
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["candidates"].as_array().unwrap().clone()
}

/// Waits until the matcher's read model knows `n` patients.
async fn matcher_knows(app: &TestApp, n: i64) {
    eventually("the match read model", || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM projections.patient_match")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        count == n
    })
    .await;
}

#[tokio::test]
async fn match_grades_the_same_person_certain_a_near_miss_probable_and_a_stranger_not_at_all() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let registered = app.register(&ada()).await;
    assert_eq!(registered.status(), 201);
    let id = registered.json::<Value>().await.unwrap()["id"].clone();
    matcher_knows(&app, 1).await;
    // The candidates' summaries come from the search read model, its own projector.
    app.search_until("family=lovelace", 1).await;

    // Act
    let same = match_candidates(&app, &ada()).await;
    let near = match_candidates(
        &app,
        &json!({ "name": { "given": ["Adda"], "family": "Lovelcae" }, "birth_date": "1990-10-12" }),
    )
    .await;
    let stranger = match_candidates(
        &app,
        &json!({ "name": { "given": ["Grace"], "family": "Hopper" }, "birth_date": "1906-12-09" }),
    )
    .await;

    // Assert
    assert_eq!(same[0]["grade"], "certain");
    assert_eq!(same[0]["patient"]["id"], id);
    assert_eq!(
        same[0]["href"],
        format!("/v1/patients/{}", id.as_str().unwrap())
    );
    assert_eq!(near[0]["grade"], "probable", "{near:?}");
    assert!(stranger.is_empty(), "{stranger:?}");
    app.stop().await;
}

#[tokio::test]
async fn registering_a_likely_duplicate_answers_409_with_the_candidates_and_writes_nothing() {
    let app = TestApp::without_kafka().await;
    let first: Value = app.register(&ada()).await.json().await.unwrap();
    matcher_knows(&app, 1).await;

    let again = app.register(&ada()).await;

    assert_eq!(again.status(), 409);
    let problem: Value = again.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/possible-duplicate");
    assert_eq!(problem["candidates"][0]["id"], first["id"]);
    assert_eq!(problem["candidates"][0]["grade"], "certain");
    assert!(
        !problem.to_string().contains("Lovelace"),
        "no patient data in the problem"
    );
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_override_reason_registers_the_duplicate_and_the_event_records_reason_and_candidates() {
    // Arrange
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let first: Value = app.register(&ada()).await.json().await.unwrap();
    matcher_knows(&app, 1).await;
    let mut body = ada();
    body["duplicate_override"] = json!({ "reason": "twin sister, same details at the desk" });

    // Act
    let response = app.register(&body).await;

    // Assert
    assert_eq!(response.status(), 201);
    let records = consume(&consumer, 2).await;
    let second = records
        .iter()
        .find(|r| key(r) != first["id"].as_str().unwrap())
        .unwrap();
    let data = app.open(second).await;
    assert_matches_schema("PatientRegistered", &data);
    let event: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(
        event["duplicate_override"]["reason"],
        "twin sister, same details at the desk"
    );
    assert_eq!(
        event["duplicate_override"]["candidates"],
        json!([first["id"]])
    );
    assert_eq!(event["contact"]["phones"][0]["number"], "+41446681800");
    assert_eq!(event["identifiers"][0]["national"], true);
    app.stop().await;
}

#[tokio::test]
async fn the_matcher_follows_corrections() {
    let app = TestApp::without_kafka().await;
    let id = app.register(&ada()).await.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let corrected = app
        .command(
            &id,
            "correct-demographics",
            1,
            &json!({ "name": { "given": ["Augusta"], "family": "King" }, "birth_date": "1991-01-17", "reason": "identity documents" }),
        )
        .await;
    assert_eq!(corrected.status(), 200);

    let candidate =
        json!({ "name": { "given": ["Augusta"], "family": "King" }, "birth_date": "1991-01-17" });
    eventually("the corrected name to match", || async {
        match_candidates(&app, &candidate)
            .await
            .first()
            .is_some_and(|c| c["patient"]["id"] == id.as_str())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_match_candidate_needs_at_least_one_field_and_valid_ones() {
    let app = TestApp::without_kafka().await;

    let empty = app
        .post("/v1/patients/$match", &app.registrar(), &json!({}), &[])
        .await;
    let bad = app
        .post(
            "/v1/patients/$match",
            &app.registrar(),
            &json!({ "birth_date": "tomorrow", "contact": { "phones": [{ "number": "123" }] } }),
            &[],
        )
        .await;
    let clinician = app
        .post(
            "/v1/patients/$match",
            &app.token("c", &["clinician"]),
            &ada(),
            &[],
        )
        .await;

    assert_eq!(empty.status(), 422);
    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.unwrap();
    let fields = error_fields(&problem);
    assert_eq!(fields, ["birth_date", "contact.phones[0].number"]);
    assert_eq!(clinician.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn match_eval_prints_pair_counts_precision_recall_f1_and_latency() {
    // Arrange: a small FEBRL-format file: three people, two of them with a typo-ridden duplicate.
    let dir = std::env::temp_dir().join(format!("match-eval-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.csv");
    std::fs::write(
        &file,
        "rec_id, given_name, surname, street_number, address_1, address_2, suburb, postcode, state, date_of_birth, soc_sec_id\n\
         rec-1-org, michaela, neumann, 8, stanley street, miami, winston hills, 4223, nsw, 19151111, 5304218\n\
         rec-2-org, courtney, painter, 12, pinkerton circuit, bega flats, richlands, 4560, vic, 19161214, 4066625\n\
         rec-3-org, lachlan, berry, 69, giblin street, killarney, bittern, 4814, qld, 19990219, 7364009\n\
         rec-1-dup-0, michaela, nuemann, 8, stanley street, miami, winston hills, 4223, nsw, 19151111, 5304218\n\
         rec-2-dup-0, courtney, , 12, pinkerton circuit, bega flats, richlands, 4560, vic, 19161241, 4066652\n",
    )
    .unwrap();

    // Act
    let output = Command::new(env!("CARGO_BIN_EXE_patient-service-tools-under-test"))
        .args(["match-eval", "--dataset"])
        .arg(&file)
        .env("DATABASE_URL", admin_url())
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let _removed = std::fs::remove_dir_all(&dir);

    // Assert
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("records=5 refused=0"), "{stdout}");
    assert!(
        stdout.contains("pairs_true=2 pairs_found=2 precision=1.0000 recall=1.0000 f1=1.0000"),
        "{stdout}"
    );
    assert!(stdout.contains("match_latency_ms p50="), "{stdout}");
}

#[tokio::test]
async fn twenty_identical_registrations_at_once_create_one_patient_and_the_others_name_it() {
    // Arrange: no key, so nothing but the matcher can tell the twenty apart.
    let app = TestApp::without_kafka().await;
    let body = ada();

    // Act
    let answers = futures::future::join_all((0..20).map(|_| app.register(&body))).await;

    // Assert
    let mut created = Vec::new();
    let mut named = Vec::new();
    for answer in answers {
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        match status {
            201 => created.push(body["id"].as_str().unwrap().to_owned()),
            409 => {
                assert_eq!(body["type"], "/problems/possible-duplicate", "{body}");
                named.push(
                    body["candidates"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c["id"].as_str().unwrap().to_owned())
                        .collect::<Vec<_>>(),
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created.len(), 1, "one patient registered: {created:?}");
    assert_eq!(named.len(), 19);
    assert!(
        named
            .iter()
            .all(|candidates| candidates.contains(&created[0])),
        "every refusal names the registered patient: {named:?}"
    );
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}
