//! Bearer JWT authentication and the policy table, over HTTP.

use serde_json::{json, Value};

use crate::helpers::*;

fn token_signed_with(secret: &str, exp_offset_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims =
        json!({ "sub": "mallory", "roles": ["admin"], "iat": now, "exp": now + exp_offset_secs });
    jsonwebtoken_encode(secret, &claims)
}

fn jsonwebtoken_encode(secret: &str, claims: &Value) -> String {
    // The service's own minting with another secret stands in for a forged token.
    let mut settings = command_api::configuration::Settings::base().unwrap().auth;
    settings.jwt_secret = secrecy::SecretString::from(secret.to_owned());
    settings.token_ttl_secs = 0;
    let auth = command_api::auth::Authenticator::new(&settings);
    let exp = claims["exp"].as_i64().unwrap();
    let issued = chrono::DateTime::from_timestamp(exp, 0).unwrap();
    auth.mint("mallory", &[command_api::auth::Role::Admin], issued)
        .unwrap()
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_and_write_nothing() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let url = format!("{}/v1/patients", app.address);
    let body = patient("Ada", "Lovelace", "1990-12-10");
    let cases = [
        ("no token", None),
        ("not a JWT", Some("garbage".to_owned())),
        (
            "wrong signature",
            Some(token_signed_with("another-secret", 3600)),
        ),
        ("expired", Some(token_signed_with(SECRET, -3600))),
    ];

    for (case, token) in cases {
        // Act
        let mut request = app.client.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();

        // Assert
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    assert_eq!(app.event_count().await, 0);
    app.stop().await;
}

/// One route of the API, as the matrix walks it.
struct Endpoint {
    name: &'static str,
    method: &'static str,
    /// `{id}` stands for the patient.
    path: &'static str,
    body: Value,
}

fn endpoint(name: &'static str, method: &'static str, path: &'static str, body: Value) -> Endpoint {
    Endpoint {
        name,
        method,
        path,
        body,
    }
}

/// Every route that takes a bearer token. Commands go with a stale `If-Match` and registration
/// with an empty body, so an allowed caller is answered 412 or 422 and nothing is written.
fn every_endpoint() -> Vec<Endpoint> {
    let item = "00000000-0000-4000-8000-000000000001";
    let reason = json!({ "reason": "r" });
    vec![
        endpoint("register", "POST", "/v1/patients", json!({})),
        endpoint("search", "GET", "/v1/patients?family=love", Value::Null),
        endpoint(
            "match",
            "POST",
            "/v1/patients/$match",
            json!({ "name": { "given": [], "family": "Lovelace" } }),
        ),
        endpoint(
            "retention",
            "GET",
            "/v1/patients/retention-candidates",
            Value::Null,
        ),
        endpoint("read", "GET", "/v1/patients/{id}", Value::Null),
        endpoint(
            "read-as-of",
            "GET",
            "/v1/patients/{id}?as_of=2100-01-01T00:00:00Z",
            Value::Null,
        ),
        endpoint(
            "correct",
            "POST",
            "/v1/patients/{id}/correct-demographics",
            json!({ "gender": "other", "reason": "r" }),
        ),
        endpoint(
            "archive",
            "POST",
            "/v1/patients/{id}/archive",
            reason.clone(),
        ),
        endpoint(
            "restore",
            "POST",
            "/v1/patients/{id}/restore",
            reason.clone(),
        ),
        endpoint(
            "merge",
            "POST",
            "/v1/patients/{id}/merge",
            json!({ "target_id": item, "reason": "r" }),
        ),
        endpoint(
            "unmerge",
            "POST",
            "/v1/patients/{id}/unmerge",
            reason.clone(),
        ),
        endpoint(
            "contact",
            "PUT",
            "/v1/patients/{id}/contact",
            json!({ "phones": [] }),
        ),
        endpoint(
            "add-identifier",
            "POST",
            "/v1/patients/{id}/identifiers",
            json!({ "system": "urn:x", "value": "1" }),
        ),
        endpoint(
            "remove-identifier",
            "POST",
            "/v1/patients/{id}/identifiers/remove",
            json!({ "system": "urn:x", "value": "1", "reason": "r" }),
        ),
        endpoint(
            "preferences",
            "PUT",
            "/v1/patients/{id}/preferences",
            json!({ "channels": ["sms"] }),
        ),
        endpoint(
            "add-emergency-contact",
            "POST",
            "/v1/patients/{id}/emergency-contacts",
            json!({}),
        ),
        endpoint(
            "change-emergency-contact",
            "PUT",
            "/v1/patients/{id}/emergency-contacts/00000000-0000-4000-8000-000000000001",
            json!({}),
        ),
        endpoint(
            "remove-emergency-contact",
            "DELETE",
            "/v1/patients/{id}/emergency-contacts/00000000-0000-4000-8000-000000000001",
            Value::Null,
        ),
        endpoint(
            "add-coverage",
            "POST",
            "/v1/patients/{id}/coverages",
            json!({}),
        ),
        endpoint(
            "change-coverage",
            "PUT",
            "/v1/patients/{id}/coverages/00000000-0000-4000-8000-000000000001",
            json!({}),
        ),
        endpoint(
            "end-coverage",
            "POST",
            "/v1/patients/{id}/coverages/00000000-0000-4000-8000-000000000001/end",
            json!({}),
        ),
        endpoint(
            "start-care",
            "POST",
            "/v1/patients/{id}/care-relationships",
            json!({ "practitioner": "dr-x", "role": "attending" }),
        ),
        endpoint(
            "end-care",
            "POST",
            "/v1/patients/{id}/care-relationships/dr-x/end",
            reason.clone(),
        ),
        endpoint(
            "grant-consent",
            "POST",
            "/v1/patients/{id}/consents",
            json!({ "directive": { "kind": "research-opt-out" } }),
        ),
        endpoint(
            "withdraw-consent",
            "POST",
            "/v1/patients/{id}/consents/00000000-0000-4000-8000-000000000001/withdraw",
            reason.clone(),
        ),
        endpoint(
            "legal-hold",
            "POST",
            "/v1/patients/{id}/legal-hold",
            reason.clone(),
        ),
        endpoint(
            "release-legal-hold",
            "POST",
            "/v1/patients/{id}/legal-hold/release",
            reason.clone(),
        ),
        endpoint(
            "forget",
            "POST",
            "/v1/patients/{id}/forget",
            json!({ "reason": "patient-request" }),
        ),
        endpoint(
            "disclosures",
            "GET",
            "/v1/patients/{id}/disclosures",
            Value::Null,
        ),
        endpoint("data-key", "GET", "/v1/patients/{id}/data-key", Value::Null),
        endpoint(
            "audit-stream",
            "GET",
            "/v1/audit/streams/patient/{id}",
            Value::Null,
        ),
        endpoint("audit-entries", "GET", "/v1/audit/entries", Value::Null),
    ]
}

/// The documented answer: may this caller use this endpoint on the patient?
fn documented(caller: &str, endpoint: &str) -> bool {
    let admin_registrar = [
        "register",
        "match",
        "correct",
        "archive",
        "restore",
        "merge",
        "unmerge",
        "contact",
        "add-identifier",
        "remove-identifier",
        "preferences",
        "add-emergency-contact",
        "change-emergency-contact",
        "remove-emergency-contact",
        "add-coverage",
        "change-coverage",
        "end-coverage",
        "start-care",
        "end-care",
        "grant-consent",
        "withdraw-consent",
    ];
    match caller {
        "admin" => !["data-key"].contains(&endpoint),
        "registrar" => {
            admin_registrar.contains(&endpoint)
                || ["search", "read", "read-as-of"].contains(&endpoint)
        }
        "clinician-in-care" => ["search", "read", "read-as-of"].contains(&endpoint),
        "clinician" => endpoint == "search",
        "scheduler" => ["search", "read", "read-as-of"].contains(&endpoint),
        "auditor" => ["read", "read-as-of", "audit-stream", "audit-entries"].contains(&endpoint),
        "patient-self" => [
            "read",
            "read-as-of",
            "preferences",
            "grant-consent",
            "withdraw-consent",
            "disclosures",
        ]
        .contains(&endpoint),
        "patient-other" => false,
        "service" => endpoint == "data-key",
        other => unreachable!("{other}"),
    }
}

async fn call(app: &TestApp, token: &str, endpoint: &Endpoint, id: &str) -> reqwest::Response {
    let url = format!("{}{}", app.address, endpoint.path.replace("{id}", id));
    let request = match endpoint.method {
        "GET" => app.client.get(url),
        "DELETE" => app.client.delete(url),
        "PUT" => app.client.put(url).json(&endpoint.body),
        _ => app.client.post(url).json(&endpoint.body),
    };
    request
        .bearer_auth(token)
        .header("if-match", "\"999\"")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_endpoint_answers_every_caller_exactly_as_documented() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = app.register_ok("Ada", "Lovelace", "1990-12-10").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = app.register_ok("Grace", "Hopper", "1906-12-09").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let care = app
        .command(
            &id,
            "care-relationships",
            1,
            &json!({ "practitioner": "clinician-in-care", "role": "attending" }),
        )
        .await;
    assert_eq!(care.status(), 200, "{:?}", care.text().await);
    let unknown = uuid::Uuid::new_v4().to_string();
    let callers = [
        ("admin", app.token("admin-1", &["admin"])),
        ("registrar", app.registrar()),
        ("clinician", app.token("clinician-1", &["clinician"])),
        (
            "clinician-in-care",
            app.token("clinician-in-care", &["clinician"]),
        ),
        ("scheduler", app.token("scheduler-1", &["scheduler"])),
        ("auditor", app.token("auditor-1", &["auditor"])),
        ("patient-self", app.patient_token(&id)),
        ("patient-other", app.patient_token(&other)),
        ("service", app.token("service-1", &["service"])),
    ];
    let events_before = app.event_count().await;

    for (caller, token) in &callers {
        for endpoint in every_endpoint() {
            // Act
            let response = call(&app, token, &endpoint, &id).await;
            let status = response.status();

            // Assert
            if documented(caller, endpoint.name) {
                assert!(
                    ![401, 403].contains(&status.as_u16()) && status.as_u16() < 500,
                    "{caller} {}: {status}",
                    endpoint.name
                );
            } else {
                assert_eq!(status, 403, "{caller} {}", endpoint.name);
                // Refused at a record that exists and at one that does not: the same answer.
                let problem: Value = response.json().await.unwrap();
                if endpoint.path.contains("{id}") {
                    let elsewhere = call(&app, token, &endpoint, &unknown).await;
                    assert_eq!(
                        elsewhere.status(),
                        403,
                        "{caller} {} unknown",
                        endpoint.name
                    );
                    let elsewhere: Value = elsewhere.json().await.unwrap();
                    assert_eq!(problem, elsewhere, "{caller} {}", endpoint.name);
                }
            }
        }
    }
    // Every allowed command met a stale If-Match or an invalid body: nothing was written.
    assert_eq!(app.event_count().await, events_before);
    app.stop().await;
}

#[tokio::test]
async fn a_token_with_no_known_role_is_forbidden_everywhere() {
    let app = TestApp::without_kafka().await;
    let token = app.token("nobody", &[]);

    let register = app
        .post(
            "/v1/patients",
            &token,
            &patient("A", "B", "1990-01-01"),
            &[],
        )
        .await;
    let search = app.get("/v1/patients?family=b", &token).await;

    assert_eq!(register.status(), 403);
    assert_eq!(search.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn a_caller_without_the_role_gets_403_before_the_body_is_looked_at() {
    let app = TestApp::without_kafka().await;
    let id = app.register_ok("Ada", "Lovelace", "1990-12-10").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = app.token("c", &["clinician"]);

    let not_json = app
        .client
        .post(format!("{}/v1/patients/{id}/archive", app.address))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("nonsense")
        .send()
        .await
        .unwrap();
    let invalid = app
        .post("/v1/patients", &token, &json!({ "name": 5 }), &[])
        .await;

    assert_eq!(not_json.status(), 403);
    assert_eq!(invalid.status(), 403);
    app.stop().await;
}
