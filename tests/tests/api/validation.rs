//! Bad input of each kind gets the right problem+json, naming the field, and writes nothing.

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn each_kind_of_bad_registration_is_refused_naming_the_field_and_writes_nothing() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let good = patient("Ada", "Lovelace", "1990-12-10");
    let with = |pointer: &str, value: Value| {
        let mut body = good.clone();
        match body.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            None => {
                body[pointer.trim_start_matches('/')] = value;
            }
        }
        body
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "missing name",
            json!({ "birth_date": "1990-12-10", "gender": "female" }),
            "name",
            "is required",
        ),
        (
            "empty family name",
            with("/name/family", json!("  ")),
            "name.family",
            "must not be empty",
        ),
        (
            "family name not a string",
            with("/name/family", json!(5)),
            "name.family",
            "must be a string",
        ),
        (
            "given name not a string",
            with("/name/given", json!([1])),
            "name.given[0]",
            "must be a string",
        ),
        (
            "control character",
            with("/name/given", json!(["A\u{7}"])),
            "name.given[0]",
            "must not contain control characters",
        ),
        (
            "birth date in the future",
            with("/birth_date", json!("2026-11-28")),
            "birth_date",
            "must not be in the future",
        ),
        (
            "birth date before 1900",
            with("/birth_date", json!("1899-12-31")),
            "birth_date",
            "must not be before 1900-01-01",
        ),
        (
            "malformed birth date",
            with("/birth_date", json!("10/12/1990")),
            "birth_date",
            "must be a date in the form YYYY-MM-DD",
        ),
        (
            "impossible birth date",
            with("/birth_date", json!("1990-02-30")),
            "birth_date",
            "must be a date in the form YYYY-MM-DD",
        ),
        (
            "unknown gender",
            with("/gender", json!("F")),
            "gender",
            "must be one of male, female, other, unknown",
        ),
        (
            "unknown field",
            {
                let mut b = good.clone();
                b["ssn"] = json!("123");
                b
            },
            "ssn",
            "unknown field",
        ),
        (
            "not an object",
            json!(["Ada"]),
            "",
            "the body must be a JSON object",
        ),
        (
            "phone not E.164",
            with(
                "/contact",
                json!({ "phones": [{ "number": "044 668 18 00" }] }),
            ),
            "contact.phones[0].number",
            "must be an international number in E.164 form, e.g. +41446681800",
        ),
        (
            "unknown phone use",
            with(
                "/contact",
                json!({ "phones": [{ "number": "+41446681800", "use": "pager" }] }),
            ),
            "contact.phones[0].use",
            "must be one of home, work, mobile",
        ),
        (
            "malformed e-mail",
            with(
                "/contact",
                json!({ "emails": [{ "address": "ada.example.org" }] }),
            ),
            "contact.emails[0].address",
            "must be an e-mail address such as name@example.org",
        ),
        (
            "two preferred phones",
            with(
                "/contact",
                json!({ "phones": [
                { "number": "+41446681800", "preferred": true },
                { "number": "+41446681801", "preferred": true }
            ] }),
            ),
            "contact.phones",
            "exactly one entry must be preferred",
        ),
        (
            "unknown country",
            with(
                "/contact",
                json!({ "addresses": [{ "city": "Bondi", "country": "XX" }] }),
            ),
            "contact.addresses[0].country",
            "must be an ISO 3166-1 alpha-2 country code, e.g. CH",
        ),
        (
            "bad postal code",
            with(
                "/contact",
                json!({ "addresses": [{ "postal_code": "20_26" }] }),
            ),
            "contact.addresses[0].postal_code",
            "must be 1 to 16 letters, digits, spaces or dashes",
        ),
        (
            "empty address",
            with("/contact", json!({ "addresses": [{ "use": "home" }] })),
            "contact.addresses[0]",
            "give at least lines, a city or a postal code",
        ),
        (
            "unknown contact field",
            with("/contact", json!({ "fax": [] })),
            "contact.fax",
            "unknown field",
        ),
        (
            "identifier without system",
            with("/identifiers", json!([{ "system": "", "value": "A-1" }])),
            "identifiers[0].system",
            "must be a URI or OID of 1 to 200 characters without spaces",
        ),
        (
            "identifier twice",
            with(
                "/identifiers",
                json!([{ "system": "s", "value": "A-1" }, { "system": "s", "value": "a1" }]),
            ),
            "identifiers[1]",
            "the same identifier is given twice",
        ),
        (
            "override without reason",
            with("/duplicate_override", json!({})),
            "duplicate_override.reason",
            "is required",
        ),
    ];

    for (case, body, field, message) in cases {
        // Act
        let response = app.register(&body).await;

        // Assert
        assert_eq!(response.status(), 422, "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 422, "{case}");
        assert_eq!(problem["type"], "/problems/validation-error", "{case}");
        let errors = problem["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == field && e["message"] == message),
            "{case}: {errors:?}"
        );
    }
    assert_eq!(app.event_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn every_bad_field_is_reported_at_once() {
    let app = TestApp::without_kafka().await;

    let response = app
        .register(&json!({ "name": { "given": [""], "family": "" }, "birth_date": "3000-01-01", "gender": "x" }))
        .await;

    let problem: Value = response.json().await.unwrap();
    let fields = error_fields(&problem);
    assert_eq!(
        fields,
        ["name.given[0]", "name.family", "birth_date", "gender"]
    );
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_wrong_media_type_and_oversized_bodies_are_refused() {
    let app = TestApp::without_kafka().await;
    let url = format!("{}/v1/patients", app.address);
    let token = app.registrar();

    let malformed = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    let wrong_type = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let oversized = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"x\":\"{}\"}}", "a".repeat(100_000)))
        .send()
        .await
        .unwrap();

    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = malformed.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/malformed-json");
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(oversized.status(), 413);
    assert_eq!(
        oversized.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(app.event_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn bad_search_parameters_are_refused_naming_the_parameter() {
    let app = TestApp::without_kafka().await;
    let token = app.token("c", &["clinician"]);
    let cases = [
        ("family=a&limit=0", "limit"),
        ("family=a&limit=101", "limit"),
        ("family=a&offset=-1", "offset"),
        ("mrn=1234567890", "mrn"),
        ("birth_date=1990-13-01", "birth_date"),
        ("family=a&include_archived=yes", "include_archived"),
        ("family=a&nickname=b", "nickname"),
        ("", ""),
    ];
    for (query, field) in cases {
        let response = app.get(&format!("/v1/patients?{query}"), &token).await;
        assert_eq!(response.status(), 400, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{query}: {problem}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() {
    let app = TestApp::without_kafka().await;

    let missing = app.get("/v1/nothing-here", &app.registrar()).await;
    let method = app
        .client
        .delete(format!("{}/v1/patients", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(method.status(), 405);
    assert_eq!(method.headers()["content-type"], "application/problem+json");
    app.stop().await;
}

#[tokio::test]
async fn a_search_identifier_with_a_control_character_is_a_400_not_a_500() {
    let app = TestApp::without_kafka().await;
    let token = app.token("c", &["clinician"]);

    let nul = app.get("/v1/patients?identifier=%00%7C1", &token).await;
    let no_value = app.get("/v1/patients?identifier=urn:x%7C---", &token).await;

    assert_eq!(nul.status(), 400);
    assert_eq!(no_value.status(), 400);
    let problem: Value = nul.json().await.unwrap();
    assert_eq!(error_fields(&problem), ["identifier"]);
    app.stop().await;
}

#[tokio::test]
async fn a_change_to_an_unknown_patient_is_404_whatever_the_if_match() {
    let app = TestApp::without_kafka().await;

    let response = app
        .command(
            &uuid::Uuid::new_v4().to_string(),
            "archive",
            3,
            &json!({ "reason": "r" }),
        )
        .await;

    assert_eq!(response.status(), 404);
    app.stop().await;
}
