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
        endpoint(
            "record-allergy",
            "POST",
            "/v1/patients/{id}/allergies",
            json!({}),
        ),
        endpoint(
            "list-allergies",
            "GET",
            "/v1/patients/{id}/allergies",
            Value::Null,
        ),
        endpoint(
            "read-allergy",
            "GET",
            "/v1/patients/{id}/allergies/00000000-0000-4000-8000-000000000001",
            Value::Null,
        ),
        endpoint(
            "revise-allergy",
            "PUT",
            "/v1/patients/{id}/allergies/00000000-0000-4000-8000-000000000001",
            json!({}),
        ),
        endpoint(
            "allergy-entered-in-error",
            "POST",
            "/v1/patients/{id}/allergies/00000000-0000-4000-8000-000000000001/entered-in-error",
            reason.clone(),
        ),
        endpoint(
            "allergy-versions",
            "GET",
            "/v1/patients/{id}/allergies/00000000-0000-4000-8000-000000000001/versions",
            Value::Null,
        ),
        endpoint(
            "allergy-diff",
            "GET",
            "/v1/patients/{id}/allergies/00000000-0000-4000-8000-000000000001/diff?from=1&to=2",
            Value::Null,
        ),
        endpoint(
            "upload-document",
            "POST",
            "/v1/patients/{id}/documents",
            json!({}),
        ),
        endpoint(
            "document-content",
            "GET",
            "/v1/patients/{id}/documents/00000000-0000-4000-8000-000000000001/content",
            Value::Null,
        ),
        endpoint(
            "medical-record",
            "GET",
            "/v1/patients/{id}/medical-record",
            Value::Null,
        ),
        endpoint(
            "medical-record-search",
            "GET",
            "/v1/patients/{id}/medical-record/search?q=penicillin",
            Value::Null,
        ),
        endpoint(
            "medical-records-search",
            "GET",
            "/v1/medical-records/search?kind=allergy&active=true",
            Value::Null,
        ),
        endpoint("put-resource", "PUT", "/v1/resources/dr-x", json!({})),
        endpoint("list-resources", "GET", "/v1/resources", Value::Null),
        endpoint("block", "POST", "/v1/resources/dr-x/blocks", json!({})),
        endpoint("put-service", "PUT", "/v1/services/consult", json!({})),
        endpoint(
            "availability",
            "GET",
            "/v1/availability?service=consult&from=2026-11-30T00:00:00Z&to=2026-12-01T00:00:00Z",
            Value::Null,
        ),
        endpoint("book", "POST", "/v1/appointments", json!({})),
        endpoint(
            "read-appointment",
            "GET",
            "/v1/appointments/00000000-0000-4000-8000-000000000001",
            Value::Null,
        ),
        endpoint(
            "appointment-action",
            "POST",
            "/v1/appointments/00000000-0000-4000-8000-000000000001/arrive",
            json!({}),
        ),
        endpoint(
            "revoke-session",
            "POST",
            "/v1/sessions/somebody-else/revoke",
            json!({}),
        ),
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
    let record_reads = [
        "list-allergies",
        "read-allergy",
        "allergy-versions",
        "allergy-diff",
        "document-content",
        "medical-record",
        "medical-record-search",
    ];
    let record_writes = [
        "record-allergy",
        "revise-allergy",
        "allergy-entered-in-error",
        "upload-document",
    ];
    let scheduling_reads = ["list-resources", "availability", "read-appointment"];
    let booking = ["book", "appointment-action"];
    match caller {
        "admin" => !["data-key"].contains(&endpoint) && !record_writes.contains(&endpoint),
        "registrar" => {
            admin_registrar.contains(&endpoint)
                || ["search", "read", "read-as-of"].contains(&endpoint)
                || scheduling_reads.contains(&endpoint)
                || booking.contains(&endpoint)
        }
        // Appointments are clinical: an unknown one is refused to whoever reaches patients
        // only through their care.
        "clinician-in-care" => {
            ["search", "read", "read-as-of", "medical-records-search"].contains(&endpoint)
                || record_reads.contains(&endpoint)
                || record_writes.contains(&endpoint)
                || ["list-resources", "availability"].contains(&endpoint)
        }
        "clinician" => [
            "search",
            "medical-records-search",
            "list-resources",
            "availability",
        ]
        .contains(&endpoint),
        "scheduler" => {
            ["search", "read", "read-as-of", "block"].contains(&endpoint)
                || scheduling_reads.contains(&endpoint)
                || booking.contains(&endpoint)
        }
        "auditor" => ["read", "read-as-of", "audit-stream", "audit-entries"].contains(&endpoint),
        "patient-self" => {
            [
                "read",
                "read-as-of",
                "preferences",
                "grant-consent",
                "withdraw-consent",
                "disclosures",
            ]
            .contains(&endpoint)
                || record_reads.contains(&endpoint)
        }
        "patient-other" => false,
        // Staff of another organization, every staff role, the patient not sharing with them:
        // only the schedule, which holds no patient data.
        "other-organization" => ["list-resources", "availability"].contains(&endpoint),
        "service" => endpoint == "data-key",
        other => unreachable!("{other}"),
    }
}

async fn call(app: &TestApp, token: &str, endpoint: &Endpoint, id: &str) -> reqwest::Response {
    let path = endpoint.path.replace("{id}", id);
    let url = format!("{}{path}", app.address);
    let request = match endpoint.method {
        "GET" => app.client.get(url),
        "DELETE" => app.client.delete(url),
        "PUT" => app.client.put(url).json(&endpoint.body),
        _ => app.client.post(url).json(&endpoint.body),
    };
    let response = request
        .bearer_auth(token)
        .header("if-match", "\"999\"")
        .send()
        .await
        .unwrap();
    app.described(endpoint.method, &path, response).await
}

#[tokio::test]
async fn every_endpoint_answers_every_caller_exactly_as_documented() {
    // Arrange
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        organization: Some("general-hospital".into()),
        ..AppOptions::default()
    })
    .await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let other = id_of(&app.register_ok("Grace", "Hopper", "1906-12-09").await);
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
        (
            "other-organization",
            app.token_with(
                "partner-staff-1",
                &["admin", "registrar", "clinician", "scheduler", "auditor"],
                &command_api::auth::TokenExtras {
                    organization: Some("partner-clinic".into()),
                    ..Default::default()
                },
            ),
        ),
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
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
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

/// A key pair made with the machine's `openssl`: the private key (PKCS#8 PEM) and its JWK.
struct KeyPair {
    private_pem: Vec<u8>,
    jwk: Value,
}

fn openssl(args: &[&str], dir: &std::path::Path) -> Vec<u8> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_key(dir: &std::path::Path, kid: &str) -> KeyPair {
    let file = format!("{kid}.pem");
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &file,
        ],
        dir,
    );
    let modulus =
        String::from_utf8(openssl(&["rsa", "-in", &file, "-noout", "-modulus"], dir)).unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    KeyPair {
        private_pem: std::fs::read(dir.join(&file)).unwrap(),
        jwk: json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(&n), "e": "AQAB" }),
    }
}

fn ec_key(dir: &std::path::Path, kid: &str) -> KeyPair {
    let file = format!("{kid}.pem");
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &file,
        ],
        dir,
    );
    // The public key's DER ends with the uncompressed point: 0x04, x, y.
    let der = openssl(&["pkey", "-in", &file, "-pubout", "-outform", "DER"], dir);
    let point = &der[der.len() - 64..];
    KeyPair {
        private_pem: std::fs::read(dir.join(&file)).unwrap(),
        jwk: json!({ "kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256", "x": b64url(&point[..32]), "y": b64url(&point[32..]) }),
    }
}

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "patient-service";

/// A token signed by `key`, with claims `overrides` merged over valid ones.
fn idp_token(key: &KeyPair, overrides: Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "sub": "idp-user", "roles": ["registrar"], "iss": ISSUER, "aud": AUDIENCE,
        "iat": now, "exp": now + 600, "sid": uuid::Uuid::new_v4().to_string(),
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    let kid = key.jwk["kid"].as_str().unwrap().to_owned();
    let (algorithm, encoding) = if key.jwk["kty"] == "RSA" {
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&key.private_pem).unwrap(),
        )
    } else {
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&key.private_pem).unwrap(),
        )
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid);
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

async fn status_with(app: &TestApp, token: &str) -> u16 {
    app.get("/v1/patients?family=love", token)
        .await
        .status()
        .as_u16()
}

fn jwks_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jwks-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn rs256_and_es256_tokens_of_a_jwks_file_are_checked_for_issuer_audience_and_expiry() {
    // Arrange
    let dir = jwks_dir();
    let rsa = rsa_key(&dir, "rsa-1");
    let ec = ec_key(&dir, "ec-1");
    let impostor = rsa_key(&dir, "impostor");
    let forged = rsa_key(&dir, "rsa-forged");
    let set = json!({ "keys": [rsa.jwk, ec.jwk] });
    std::fs::write(dir.join("jwks.json"), set.to_string()).unwrap();
    let path = dir.join("jwks.json");
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(std::sync::Arc::new(move |settings| {
            settings.auth.jwks_path = Some(path.clone());
            settings.auth.issuer = Some(ISSUER.into());
            settings.auth.audience = Some(AUDIENCE.into());
        })),
        ..AppOptions::default()
    })
    .await;
    let hour_ago = chrono::Utc::now().timestamp() - 3600;
    let forged_token = {
        let mut key = forged;
        key.jwk["kid"] = json!("rsa-1");
        idp_token(&key, json!({}))
    };

    // Act and assert
    assert_eq!(
        status_with(&app, &idp_token(&rsa, json!({}))).await,
        200,
        "RS256"
    );
    assert_eq!(
        status_with(&app, &idp_token(&ec, json!({}))).await,
        200,
        "ES256"
    );
    assert_eq!(
        status_with(
            &app,
            &idp_token(&rsa, json!({ "aud": [AUDIENCE, "another-service"] }))
        )
        .await,
        200,
        "an audience list naming this service"
    );
    for (case, token) in [
        (
            "other issuer",
            idp_token(&rsa, json!({ "iss": "https://evil.test" })),
        ),
        (
            "other audience",
            idp_token(&rsa, json!({ "aud": "another-service" })),
        ),
        ("no audience", idp_token(&rsa, json!({ "aud": null }))),
        (
            "expired",
            idp_token(&rsa, json!({ "iat": hour_ago, "exp": hour_ago + 60 })),
        ),
        ("unknown key", idp_token(&impostor, json!({}))),
        ("forged with a known kid", forged_token.clone()),
        ("development HS256", app.registrar()),
    ] {
        assert_eq!(status_with(&app, &token).await, 401, "{case}");
    }
    app.stop().await;
    let _removed = std::fs::remove_dir_all(&dir);
}

/// Serves `body()` as JSON on every request, until the test ends.
async fn serve_json(body: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = [0_u8; 4096];
                let _read = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _written = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/.well-known/jwks.json")
}

#[tokio::test]
async fn a_jwks_url_is_fetched_again_when_a_token_names_a_new_key() {
    // Arrange: the provider publishes one key, then rotates in a second.
    let dir = jwks_dir();
    let first = rsa_key(&dir, "rsa-2026-11");
    let second = ec_key(&dir, "ec-2026-12");
    let published = std::sync::Arc::new(std::sync::Mutex::new(
        json!({ "keys": [first.jwk] }).to_string(),
    ));
    let url = serve_json(published.clone()).await;
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(std::sync::Arc::new(move |settings| {
            settings.auth.jwks_url = Some(url.clone());
            settings.auth.jwks_refetch_interval_secs = 0;
            settings.auth.issuer = Some(ISSUER.into());
            settings.auth.audience = Some(AUDIENCE.into());
        })),
        ..AppOptions::default()
    })
    .await;

    // Act and assert
    assert_eq!(status_with(&app, &idp_token(&first, json!({}))).await, 200);
    assert_eq!(
        status_with(&app, &idp_token(&second, json!({}))).await,
        401,
        "not published yet"
    );
    *published.lock().unwrap() = json!({ "keys": [first.jwk, second.jwk] }).to_string();
    assert_eq!(
        status_with(&app, &idp_token(&second, json!({}))).await,
        200,
        "fetched again"
    );
    // A refreshed set with no usable key does not replace the keys that work.
    *published.lock().unwrap() = json!({ "keys": [] }).to_string();
    let unpublished = rsa_key(&dir, "rsa-unpublished");
    assert_eq!(
        status_with(&app, &idp_token(&unpublished, json!({}))).await,
        401
    );
    assert_eq!(
        status_with(&app, &idp_token(&first, json!({}))).await,
        200,
        "the working keys stay"
    );
    app.stop().await;
    let _removed = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sessions_end_on_logout_on_revocation_and_after_the_idle_timeout() {
    // Arrange: a clock the test moves.
    let offset = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let moved = offset.clone();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        clock: Some(std::sync::Arc::new(move || {
            fixed_now() + chrono::Duration::seconds(moved.load(std::sync::atomic::Ordering::SeqCst))
        })),
        ..AppOptions::default()
    })
    .await;
    let session = |sid: &str| {
        app.token_with(
            "registrar-7",
            &["registrar"],
            &command_api::auth::TokenExtras {
                session_id: Some(sid.to_owned()),
                ..Default::default()
            },
        )
    };
    let admin = app.token("admin-1", &["admin"]);
    let (laptop, phone, desk) = (session("s-laptop"), session("s-phone"), session("s-desk"));
    let advance = |secs: i64| offset.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    for token in [&laptop, &phone, &desk] {
        assert_eq!(status_with(&app, token).await, 200);
    }

    // Act and assert: logout ends only that session.
    let logout = app
        .post("/v1/sessions/current/revoke", &laptop, &json!({}), &[])
        .await;
    assert_eq!(logout.status(), 204);
    assert_eq!(status_with(&app, &laptop).await, 401);
    assert_eq!(status_with(&app, &phone).await, 200);
    // An admin cuts a session off; nobody else may.
    let by_registrar = app
        .post("/v1/sessions/s-phone/revoke", &desk, &json!({}), &[])
        .await;
    assert_eq!(by_registrar.status(), 403);
    let by_admin = app
        .post("/v1/sessions/s-phone/revoke", &admin, &json!({}), &[])
        .await;
    assert_eq!(by_admin.status(), 204);
    assert_eq!(status_with(&app, &phone).await, 401);
    // Idle: 14 minutes between requests keep the session; 16 end it.
    advance(14 * 60);
    assert_eq!(status_with(&app, &desk).await, 200);
    advance(14 * 60);
    assert_eq!(status_with(&app, &desk).await, 200);
    advance(16 * 60);
    assert_eq!(status_with(&app, &desk).await, 401, "idle too long");
    assert_eq!(
        status_with(&app, &session("s-new")).await,
        200,
        "a new login works"
    );
    app.stop().await;
}
