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

#[tokio::test]
async fn roles_get_exactly_what_the_policy_table_allows() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = app.register_ok("Ada", "Lovelace", "1990-12-10").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let endpoints: Vec<(&str, &str, String, Value)> = vec![
        (
            "register",
            "POST",
            "/v1/patients".into(),
            patient("New", "Patient", "1990-01-01"),
        ),
        ("read", "GET", format!("/v1/patients/{id}"), Value::Null),
        (
            "match",
            "POST",
            "/v1/patients/$match".into(),
            json!({ "name": { "given": [], "family": "Lovelace" } }),
        ),
        (
            "search",
            "GET",
            "/v1/patients?family=love".into(),
            Value::Null,
        ),
        (
            "correct",
            "POST",
            format!("/v1/patients/{id}/correct-demographics"),
            json!({ "gender": "other", "reason": "r" }),
        ),
        (
            "archive",
            "POST",
            format!("/v1/patients/{id}/archive"),
            json!({ "reason": "r" }),
        ),
        (
            "restore",
            "POST",
            format!("/v1/patients/{id}/restore"),
            json!({ "reason": "r" }),
        ),
    ];
    // Every role against every endpoint: allowed (not 401/403) or 403.
    let allowed = |role: &str, endpoint: &str| match endpoint {
        "register" | "correct" | "archive" | "restore" => ["admin", "registrar"].contains(&role),
        "read" => ["admin", "registrar", "clinician", "scheduler", "auditor"].contains(&role),
        "search" => ["admin", "registrar", "clinician", "scheduler"].contains(&role),
        "match" => ["admin", "registrar"].contains(&role),
        _ => unreachable!(),
    };
    let events_before = app.event_count().await;

    for role in ["patient", "service", "auditor", "scheduler", "clinician"] {
        let token = app.token(&format!("user-{role}"), &[role]);
        for (endpoint, method, path, body) in &endpoints {
            // Act
            let request = match *method {
                "GET" => app.client.get(format!("{}{path}", app.address)),
                _ => app
                    .client
                    .post(format!("{}{path}", app.address))
                    .json(body)
                    .header("if-match", "\"1\""),
            };
            let status = request.bearer_auth(&token).send().await.unwrap().status();

            // Assert
            if allowed(role, endpoint) {
                assert!(status.is_success(), "{role} {endpoint}: {status}");
            } else {
                assert_eq!(status, 403, "{role} {endpoint}");
            }
        }
    }
    // None of the roles above may write, so nothing was written.
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
