//! The native API's OpenAPI 3.1 document, served at `/openapi.json`: valid by an outside
//! validator (PyPI openapi-spec-validator), and true to what is served: every operation it
//! lists answers at its method and path, and refuses the roles the policy does not allow. The
//! fuzzing against it is in `tools` (`patient-service-tools fuzz`).

use command_api::auth::Role;
use serde_json::Value;

use crate::described::named;
use crate::helpers::*;

async fn served(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Every operation of `document`: method, path and the operation object.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            found.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    found
}

/// `path` with a value of the right shape in each parameter: a UUID, a slug, a number, or the
/// first value a closed list allows.
fn filled(path: &str, op: &Value) -> String {
    let mut filled = path.to_owned();
    for parameter in op["parameters"].as_array().unwrap() {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().unwrap();
        let schema = &parameter["schema"];
        let value = if let Some(first) = schema["enum"].get(0) {
            first.as_str().unwrap().to_owned()
        } else if schema["format"] == "uuid" {
            uuid::Uuid::new_v4().to_string()
        } else if schema["type"] == "integer" {
            "1".to_owned()
        } else {
            "probe-1".to_owned()
        };
        filled = filled.replace(&format!("{{{name}}}"), &value);
    }
    filled
}

/// Sends `method` to `path` with `token`, and a body of the content type the operation takes.
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    op: &Value,
    token: &str,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method.parse().unwrap(), format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(content) = op["requestBody"]["content"].as_object() {
        if content.contains_key("application/json") {
            request = request.json(&serde_json::json!({}));
        } else if content.contains_key("multipart/form-data") {
            let body = "--probe\r\ncontent-disposition: form-data; name=\"metadata\"\r\n\r\n{}\r\n--probe--\r\n";
            request = request
                .header("content-type", "multipart/form-data; boundary=probe")
                .body(body);
        } else {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials");
        }
    }
    request.send().await.unwrap()
}

/// What PyPI's openapi-spec-validator says of `document`.
fn validate(document: &Value) -> std::process::Output {
    let python = std::env::var("TEST_PYTHON").expect("TEST_PYTHON: run with scripts/test");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/validate_openapi.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        document.to_string().as_bytes(),
    )
    .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn the_served_description_is_valid_openapi_3_1_by_an_outside_validator() {
    let app = TestApp::without_kafka().await;
    let document = served(&app).await;
    let output = validate(&document);
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "valid");

    // The validator catches what is malformed; this, that a broken document is refused.
    let mut broken = document.clone();
    broken["paths"]["/v1/patients"]["post"]["responses"] = Value::Null;
    assert!(!validate(&broken).status.success());

    assert_eq!(document["openapi"], "3.1.0");
    let ops = operations(&document);
    assert!(ops.len() > 100, "{} operations", ops.len());
    // A request body is described by the schema the API checks it against.
    let registration = &document["paths"]["/v1/patients"]["post"];
    let schema = &registration["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(schema["additionalProperties"], false, "{schema}");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["name", "gender"]);
    assert_eq!(
        registration["x-roles"],
        serde_json::json!(["admin", "registrar"])
    );
    // Every problem is described, its types listed.
    let problem = &document["components"]["schemas"]["Problem"];
    let types = problem["properties"]["type"]["enum"].as_array().unwrap();
    assert!(types.contains(&Value::from("/problems/validation-error")));
    assert!(types.contains(&Value::from("/problems/stale-version")));
    let correction = &document["paths"]["/v1/patients/{id}/correct-demographics"]["post"];
    for status in ["412", "422", "428"] {
        assert_eq!(
            named(&document, &correction["responses"][status])["content"]
                ["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{status}"
        );
    }
    assert!(correction["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "If-Match" && p["required"] == true));

    // Every success answer is described by the type its handler serializes, never as a bare
    // "JSON object" (what each test reads is checked against it: `described`).
    for (method, path, op) in &ops {
        for (status, answer) in op["responses"].as_object().unwrap() {
            let Some(contents) = answer["content"]
                .as_object()
                .filter(|_| status.starts_with('2'))
            else {
                continue;
            };
            for (media_type, content) in contents {
                let schema = named(&document, &content["schema"]);
                let shaped = ["properties", "anyOf", "oneOf", "items", "contentMediaType"]
                    .iter()
                    .any(|k| schema.get(*k).is_some())
                    || (!media_type.ends_with("json") && schema["type"] == "string");
                assert!(shaped, "{method} {path} {status} {media_type}: {schema}");
            }
        }
    }
    let answer = named(
        &document,
        &registration["responses"]["201"]["content"]["application/json"]["schema"],
    );
    let shapes = answer["anyOf"]
        .as_array()
        .expect("a record, or a forgotten patient");
    let record = shapes
        .iter()
        .map(|s| named(&document, s))
        .find(|s| s["properties"]["mrn"].is_object())
        .expect("the record's shape");
    for field in [
        "id",
        "mrn",
        "name",
        "gender",
        "identifiers",
        "contact",
        "status",
        "version",
    ] {
        assert!(
            record["required"]
                .as_array()
                .unwrap()
                .contains(&Value::from(field)),
            "{field}: {record}"
        );
    }
}

#[tokio::test]
async fn every_described_operation_is_served_and_refuses_the_roles_the_policy_does_not_allow() {
    let app = TestApp::without_kafka().await;
    let document = served(&app).await;
    let mut checked = 0;
    for (method, path, op) in operations(&document) {
        let target = filled(&path, &op);
        let Some(roles) = op["x-roles"].as_array() else {
            // Open to anyone: served at this method (no 404 of an unknown route, no 405).
            if path == "/auth/token" {
                continue; // no backend client is registered here: it answers 404 by design
            }
            let response = app
                .client
                .request(method.parse().unwrap(), format!("{}{target}", app.address))
                .send()
                .await
                .unwrap();
            assert!(
                ![404, 405].contains(&response.status().as_u16()),
                "{method} {path}: {}",
                response.status()
            );
            continue;
        };
        let allowed: Vec<&str> = roles.iter().map(|r| r.as_str().unwrap()).collect();
        if let Some(denied) = Role::ALL.iter().find(|r| !allowed.contains(&r.as_str())) {
            let token = app.token(&format!("probe-{}", denied.as_str()), &[denied.as_str()]);
            let response = call(&app, &method, &target, &op, &token).await;
            assert_eq!(
                response.status(),
                403,
                "{method} {path} as {}: {}",
                denied.as_str(),
                response.text().await.unwrap()
            );
        }
        let role = allowed[0];
        // A user of its own: logging out ends the session of the user who does it.
        let token = app.token(&format!("probe-{role}-{checked}"), &[role]);
        let response = call(&app, &method, &target, &op, &token).await;
        let status = response.status().as_u16();
        // Allowed by role, a caller may still be out of a patient's reach (no care
        // relationship, another patient's portal): 403 there, and only there.
        let out_of_reach = status == 403 && path.starts_with("/v1/patients/{id}");
        assert!(
            ![401, 405].contains(&status) && status < 500 && (status != 403 || out_of_reach),
            "{method} {path} as {role}: {status} {}",
            response.text().await.unwrap()
        );
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}
