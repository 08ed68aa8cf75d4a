//! FHIR Bulk Data export: kick-off, polling, manifest and NDJSON files, `_type` and `_since`,
//! cancellation, expiry, a forgotten patient's lines removed, files sealed at rest, every
//! patient disclosed; and a SMART Backend Services client (ES384 assertions signed by npm
//! `jose`) running an export end to end, its lines checked by Medplum's validateResource and
//! HL7's JSON schema.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::{
    assert_valid_fhir, eventually, fixed_now, AppOptions, NodeTool, TestApp, DEADLINE,
};
use crate::medical_records::{allergy, clinician, patient_in_care};

const ADMIN: &str = "admin-export";

/// Kicks off `path` (under the FHIR base) as `token`: the status URL.
pub(crate) async fn kick_off(app: &TestApp, token: &str, path: &str) -> String {
    let response = app
        .client
        .get(format!("{}/fhir/R4{path}", app.address))
        .bearer_auth(token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    response.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Polls `status_url` as `token` until the manifest comes (within the deadline).
pub(crate) async fn completed(app: &TestApp, token: &str, status_url: &str) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let response = app
            .client
            .get(status_url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            202 => {
                assert!(response.headers().contains_key("retry-after"));
                assert!(
                    std::time::Instant::now() < deadline,
                    "the export never completed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => return response.json().await.unwrap(),
            other => panic!("{other}: {:?}", response.text().await),
        }
    }
}

/// The resources of a manifest's file.
async fn lines_of(app: &TestApp, token: &str, url: &str) -> Vec<Value> {
    let response = app.client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/fhir+ndjson"
    );
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every resource of a manifest, by type, each checked against HL7's schema.
pub(crate) async fn exported(app: &TestApp, token: &str, manifest: &Value) -> Vec<Value> {
    let mut all = Vec::new();
    for output in manifest["output"].as_array().unwrap() {
        let lines = lines_of(app, token, output["url"].as_str().unwrap()).await;
        assert_eq!(lines.len() as u64, output["count"].as_u64().unwrap());
        for resource in &lines {
            assert_eq!(resource["resourceType"], output["type"]);
            assert_valid_fhir(resource);
        }
        all.extend(lines);
    }
    all
}

fn of_type<'a>(resources: &'a [Value], name: &str) -> Vec<&'a Value> {
    resources
        .iter()
        .filter(|r| r["resourceType"] == name)
        .collect()
}

/// The status `url` answers a GET with `token`.
async fn status_of(app: &TestApp, url: &str, token: &str) -> u16 {
    let response = app.client.get(url).bearer_auth(token).send().await.unwrap();
    response.status().as_u16()
}

/// Patients `ns` in the care team's care, with an allergy each; their ids.
async fn with_an_allergy(app: &TestApp, ns: &[u64]) -> Vec<String> {
    let mut patients = Vec::new();
    for &n in ns {
        let id = patient_in_care(app, n).await;
        let recorded = app
            .post(
                &format!("/v1/patients/{id}/allergies"),
                &clinician(app),
                &allergy("Penicillin"),
                &[],
            )
            .await;
        assert_eq!(recorded.status(), 201);
        patients.push(id);
    }
    patients
}

async fn forget(app: &TestApp, id: &str) {
    let read = app
        .get(&format!("/v1/patients/{id}"), &app.token(ADMIN, &["admin"]))
        .await;
    let etag = read.headers()["etag"].to_str().unwrap().to_owned();
    let forgotten = app
        .post(
            &format!("/v1/patients/{id}/forget"),
            &app.token(ADMIN, &["admin"]),
            &json!({ "reason": "patient-request" }),
            &[("if-match", etag.as_str())],
        )
        .await;
    assert_eq!(forgotten.status(), 200, "{:?}", forgotten.text().await);
}

#[tokio::test]
async fn an_export_holds_what_was_asked_for_its_caller_only_and_is_disclosed() {
    // Arrange: two patients with an allergy each, and a practitioner.
    let app = TestApp::without_kafka().await;
    let admin = app.token(ADMIN, &["admin"]);
    let patients = with_an_allergy(&app, &[9980, 9981]).await;
    crate::scheduling::clinic(&app).await;

    // Act: a system-level export of everything.
    let status_url = kick_off(&app, &admin, "/$export").await;
    let manifest = completed(&app, &admin, &status_url).await;
    let resources = exported(&app, &admin, &manifest).await;

    // Assert: both patients' compartments and the reference data, in a manifest as the
    // specification has it.
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["request"]
        .as_str()
        .unwrap()
        .ends_with("/fhir/R4/$export"));
    let mut ids: Vec<&str> = of_type(&resources, "Patient")
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = patients.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert_eq!(of_type(&resources, "AllergyIntolerance").len(), 2);
    assert_eq!(of_type(&resources, "Practitioner").len(), 2);
    assert_eq!(of_type(&resources, "Schedule").len(), 2);
    assert_eq!(of_type(&resources, "Location").len(), 1);

    // Another admin learns nothing of it: not its status, not its files.
    let other = app.token("admin-other", &["admin"]);
    assert_eq!(status_of(&app, &status_url, &other).await, 404);
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(status_of(&app, file, &other).await, 404);
    let anonymous = app.client.get(file).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // Its caller only while they hold the role, and a SMART token of theirs only for the
    // types its scopes let it read.
    let demoted = app.token(ADMIN, &["clinician"]);
    assert_eq!(status_of(&app, &status_url, &demoted).await, 403);
    let scoped = |scope: &str| {
        app.token_with(
            ADMIN,
            &["admin"],
            &command_api::auth::TokenExtras {
                scope: Some(scope.into()),
                ..command_api::auth::TokenExtras::default()
            },
        )
    };
    let allergies = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "AllergyIntolerance")
        .unwrap()["url"]
        .as_str()
        .unwrap();
    assert_eq!(
        status_of(&app, allergies, &scoped("system/Patient.rs")).await,
        403
    );
    assert_eq!(
        status_of(&app, allergies, &scoped("system/*.rs")).await,
        200
    );
    // A patient-scoped token finds nothing through a path that merely ends in $export.
    let launched = app.token_with(
        ADMIN,
        &["admin"],
        &command_api::auth::TokenExtras {
            scope: Some("patient/*.rs".into()),
            launch_patient: Some(patients[0].parse().unwrap()),
            ..command_api::auth::TokenExtras::default()
        },
    );
    let elsewhere = format!(
        "{}/fhir/R4/Patient/{}/_history/$export",
        app.address, patients[1]
    );
    assert_eq!(status_of(&app, &elsewhere, &launched).await, 403);
    // No user's token may act as a backend client.
    let posing = app.token("backend-client/analytics", &["admin"]);
    assert_eq!(status_of(&app, &status_url, &posing).await, 401);

    // Every patient in it is disclosed to its caller.
    for id in &patients {
        disclosed(&app, id, ADMIN).await;
    }

    // _type and _since keep to what was asked; the Patient level holds no reference data.
    let status_url = kick_off(&app, &admin, "/Patient/$export?_type=Patient").await;
    let only = exported(&app, &admin, &completed(&app, &admin, &status_url).await).await;
    assert!(only.iter().all(|r| r["resourceType"] == "Patient"));
    assert_eq!(only.len(), 2);
    let later = (fixed_now() + chrono::Duration::days(1)).to_rfc3339();
    let status_url = kick_off(
        &app,
        &admin,
        &format!(
            "/$export?_type=AllergyIntolerance&_since={}",
            later.replace('+', "%2B")
        ),
    )
    .await;
    let since = completed(&app, &admin, &status_url).await;
    assert_eq!(since["output"], json!([]), "{since}");

    // Cancelling removes it and its files.
    let cancelled = app
        .client
        .delete(&status_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    assert_eq!(status_of(&app, &status_url, &admin).await, 404);
    app.stop().await;
}

#[tokio::test]
async fn a_kick_off_is_refused_unless_asynchronous_well_formed_and_by_an_admin() {
    let app = TestApp::without_kafka().await;
    let admin = app.token(ADMIN, &["admin"]);
    let ask = |path: &str, token: &str, prefer: bool| {
        let mut request = app
            .client
            .get(format!("{}/fhir/R4{path}", app.address))
            .bearer_auth(token.to_owned());
        if prefer {
            request = request.header("prefer", "respond-async");
        }
        request.send()
    };
    for (path, prefer, field) in [
        ("/$export", false, "Prefer"),
        ("/$export?_outputFormat=text/csv", true, "_outputFormat"),
        ("/$export?_type=Claim", true, "_type"),
        ("/Patient/$export?_type=Practitioner", true, "_type"),
        ("/$export?_since=yesterday", true, "_since"),
        (
            "/$export?_typeFilter=Observation%3Fcode%3D1",
            true,
            "_typeFilter",
        ),
    ] {
        let response = ask(path, &admin, prefer).await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert!(body.to_string().contains(field), "{path}: {body}");
    }
    let clinician = app.token("dr-no-export", &["clinician"]);
    assert_eq!(
        ask("/$export", &clinician, true).await.unwrap().status(),
        403
    );
    let unknown = app
        .client
        .get(format!(
            "{}/fhir/R4/bulk-export/{}",
            app.address,
            uuid::Uuid::nil()
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let exports: i64 = sqlx::query_scalar("SELECT count(*) FROM bulk_exports")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(exports, 0, "a refused kick-off records nothing");
    app.stop().await;
}

#[tokio::test]
async fn export_files_are_sealed_lose_a_forgotten_patient_and_expire() {
    // Arrange: a clock the test moves, two patients.
    let offset = Arc::new(AtomicI64::new(0));
    let seconds = offset.clone();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        clock: Some(Arc::new(move || {
            fixed_now() + chrono::Duration::seconds(seconds.load(Ordering::SeqCst))
        })),
        ..AppOptions::default()
    })
    .await;
    let admin = app.token(ADMIN, &["admin"]);
    let kept = patient_in_care(&app, 9982).await;
    let forgotten = patient_in_care(&app, 9983).await;
    let status_url = kick_off(&app, &admin, "/Patient/$export?_type=Patient").await;
    let manifest = completed(&app, &admin, &status_url).await;
    assert_eq!(manifest["output"][0]["count"], 2);

    // Sealed at rest: no name of either patient is in the stored parts.
    let family: String = app
        .get(&format!("/v1/patients/{forgotten}"), &admin)
        .await
        .json::<Value>()
        .await
        .unwrap()["name"]["family"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed FROM bulk_export_parts")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    for part in &stored {
        assert!(!part.windows(family.len()).any(|w| w == family.as_bytes()));
    }

    // Act: the patient is forgotten.
    forget(&app, &forgotten).await;

    // Assert: their lines are gone from the file and the manifest.
    let manifest = completed(&app, &admin, &status_url).await;
    assert_eq!(manifest["output"][0]["count"], 1);
    let url = manifest["output"][0]["url"].as_str().unwrap();
    let lines = lines_of(&app, &admin, url).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], kept.as_str());

    // And the export expires: gone for its caller, then swept from the database.
    offset.store(86_400 + 1, Ordering::SeqCst);
    // A session of the next day: the first one has long been idle.
    let admin = app.token_with(
        ADMIN,
        &["admin"],
        &command_api::auth::TokenExtras {
            session_id: Some("next-day".into()),
            ..command_api::auth::TokenExtras::default()
        },
    );
    assert_eq!(status_of(&app, &status_url, &admin).await, 404);
    assert_eq!(status_of(&app, url, &admin).await, 404);
    let swept = event_store::exports::sweep(&app.pool, fixed_now() + chrono::Duration::days(2))
        .await
        .unwrap();
    assert_eq!(swept, 1);
    let parts: i64 = sqlx::query_scalar("SELECT count(*) FROM bulk_export_parts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(parts, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_smart_backend_services_client_exports_and_every_line_validates() {
    // Arrange: the client's key pair made by the node script (npm jose), its key set
    // registered with the service, which runs on the system clock (the client signs with it).
    let NodeTool {
        child: mut node,
        mut stdin,
        lines: mut stdout,
        started,
    } = NodeTool::start("bulk.mjs").await;
    let jwks = tempfile_with(&started["jwks"].to_string());
    let path = jwks.clone();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        clock: Some(Arc::new(chrono::Utc::now)),
        configure: Some(Arc::new(move |settings| {
            settings.auth.backend_clients = vec![command_api::configuration::BackendClient {
                client_id: "analytics".into(),
                jwks_path: Some(path.clone()),
                jwks_url: None,
                scope: "system/*.rs".into(),
                roles: vec!["admin".into()],
                organization: None,
            }];
        })),
        ..AppOptions::default()
    })
    .await;
    let patients = with_an_allergy(&app, &[9984, 9985, 9986]).await;

    // Act: the client discovers the token endpoint, authenticates and exports.
    let ask = json!({ "base": format!("{}/fhir/R4", app.address), "clientId": "analytics" });
    stdin
        .write_all(format!("{ask}\n").as_bytes())
        .await
        .unwrap();
    let line = tokio::time::timeout(Duration::from_secs(120), stdout.next_line())
        .await
        .expect("the backend client finished")
        .unwrap()
        .unwrap_or_default();
    let status = tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("the backend client exited")
        .unwrap();
    assert!(status.success(), "{line}");
    let seen: Value = serde_json::from_str(&line).unwrap();

    // Assert: discovery, the refused assertions, the token, the export and its lines.
    let discovery = &seen["discovery"];
    assert!(discovery["grantTypes"]
        .as_array()
        .unwrap()
        .contains(&json!("client_credentials")));
    assert!(discovery["authMethods"]
        .as_array()
        .unwrap()
        .contains(&json!("private_key_jwt")));
    assert!(discovery["signingAlgs"]
        .as_array()
        .unwrap()
        .contains(&json!("ES384")));
    for refused in ["stranger", "wrongAudience", "replayed"] {
        assert_eq!(seen[refused]["status"], 401, "{refused}: {seen}");
        assert_eq!(
            seen[refused]["body"]["error"], "invalid_client",
            "{refused}"
        );
    }
    assert_eq!(seen["granted"]["status"], 200, "{seen}");
    assert_eq!(seen["granted"]["scope"], "system/*.rs");
    assert_eq!(seen["granted"]["tokenType"], "bearer");
    assert_eq!(seen["kickoff"], 202);
    assert_eq!(
        seen["polled"].as_array().unwrap().last().unwrap()["status"],
        200
    );
    assert_eq!(seen["medplumErrors"], json!([]), "{seen}");
    assert_eq!(seen["contentType"], "application/fhir+ndjson");
    assert_eq!(seen["withoutToken"], 401);
    assert_eq!(seen["lines"]["Patient"], 3, "{seen}");
    assert_eq!(seen["lines"]["AllergyIntolerance"], 3, "{seen}");
    // The same files through the schema (and Medplum again after the run), and the export
    // disclosed to the client.
    let token = seen["token"].as_str().unwrap();
    let resources = exported(&app, token, &seen["manifest"]).await;
    assert_eq!(of_type(&resources, "Patient").len(), 3);
    for id in &patients {
        disclosed(&app, id, "backend-client/analytics").await;
    }
    // The client's token is for the FHIR API and reading only.
    let native = app.get("/v1/patients", token).await;
    assert_eq!(native.status(), 403);
    app.stop().await;
    std::fs::remove_file(jwks).unwrap();
}

/// Waits until patient `id`'s disclosures list one bulk export to `user`.
async fn disclosed(app: &TestApp, id: &str, user: &str) {
    let admin = app.token(ADMIN, &["admin"]);
    eventually("the export is disclosed", || async {
        let disclosures: Value = app
            .get(&format!("/v1/patients/{id}/disclosures"), &admin)
            .await
            .json()
            .await
            .unwrap();
        disclosures["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "bulk-export" && e["user_id"] == user)
            .count()
            == 1
    })
    .await;
}

/// A file holding `text`, for a setting that takes a path.
fn tempfile_with(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn an_export_stays_readable_across_a_master_key_rotation() {
    // Arrange: a system-level export (practitioners are sealed with the export's own key),
    // then the service restarted on a new master key, the old one still configured.
    let app = TestApp::without_kafka().await;
    crate::scheduling::clinic(&app).await;
    let admin = app.token(ADMIN, &["admin"]);
    let status_url = kick_off(&app, &admin, "/$export?_type=Practitioner").await;
    let manifest = completed(&app, &admin, &status_url).await;
    let url = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let mut settings = app.settings.clone();
    app.stop().await;
    settings.security.master_key = Some(secrecy::SecretString::from(
        "bmV3IG1hc3RlciBrZXkgb2YgdGhpcnR5LXR3byBieXQ=",
    ));
    settings.security.previous_master_keys =
        vec![secrecy::SecretString::from(crate::helpers::MASTER_KEY)];
    let app = TestApp::start(settings, command_api::startup::Roles::ALL).await;
    let admin = app.token(ADMIN, &["admin"]);
    // The port changed with the restart: the same file at the new address.
    let path = url.split_once("/fhir/R4").unwrap().1;
    let url = format!("{}/fhir/R4{path}", app.address);

    // Act
    let lines = lines_of(&app, &admin, &url).await;

    // Assert
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["resourceType"] == "Practitioner"));
    app.stop().await;
}
