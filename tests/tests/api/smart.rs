//! SMART on FHIR: scopes narrow what the roles allow (patient scopes to the launch patient),
//! discovery at `/fhir/R4/.well-known/smart-configuration`, and a SMART app from the npm
//! registry (`fhirclient`) launched against a token issuer from the registry
//! (`oauth2-mock-server`).

use command_api::auth::TokenExtras;
use serde_json::{json, Value};

use crate::fhir::{fhir_get, fhir_send};
use crate::helpers::{id_of, TestApp};
use crate::medical_records::{allergy, patient_in_care, CARE};

/// A clinician's token (the care team's) carrying `scope`, launched on `patient` if given.
fn scoped(app: &TestApp, scope: &str, patient: Option<&str>) -> String {
    app.token_with(
        CARE,
        &["clinician"],
        &TokenExtras {
            scope: Some(scope.into()),
            launch_patient: patient.map(|p| p.parse().unwrap()),
            ..TokenExtras::default()
        },
    )
}

async fn status_of(app: &TestApp, path: &str, token: &str) -> u16 {
    let (status, _, _) = fhir_get(app, path, Some(token), &[]).await;
    status
}

#[tokio::test]
async fn scopes_narrow_the_roles_and_patient_scopes_reach_the_launch_patient_only() {
    // Arrange: two patients in the clinician's care, each with an allergy.
    let app = TestApp::without_kafka().await;
    let ada = patient_in_care(&app, 9960).await;
    let bob = patient_in_care(&app, 9961).await;
    let clinician = app.token(CARE, &["clinician"]);
    for id in [&ada, &bob] {
        let response = app
            .post(
                &format!("/v1/patients/{id}/allergies"),
                &clinician,
                &allergy("Penicillin"),
                &[],
            )
            .await;
        assert_eq!(response.status(), 201);
    }
    let app_token = scoped(
        &app,
        "openid fhirUser launch/patient patient/AllergyIntolerance.rs patient/Patient.r",
        Some(&ada),
    );

    // Act and assert: the launch patient's allergies and record, read and searched.
    assert_eq!(
        status_of(
            &app,
            &format!("/AllergyIntolerance?patient={ada}"),
            &app_token
        )
        .await,
        200
    );
    assert_eq!(
        status_of(&app, &format!("/Patient/{ada}"), &app_token).await,
        200
    );
    // Another patient, though the role reaches them: refused.
    assert_eq!(
        status_of(
            &app,
            &format!("/AllergyIntolerance?patient={bob}"),
            &app_token
        )
        .await,
        403
    );
    assert_eq!(
        status_of(&app, &format!("/Patient/{bob}"), &app_token).await,
        403
    );
    // A type or an interaction no scope grants: refused.
    assert_eq!(
        status_of(&app, &format!("/Condition?patient={ada}"), &app_token).await,
        403
    );
    let condition = json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "91935009", "display": "Allergy to peanut" }] },
        "patient": { "reference": format!("Patient/{ada}") }
    });
    let (status, _, _) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/AllergyIntolerance",
        &app_token,
        &condition,
        &[],
    )
    .await;
    assert_eq!(status, 403, "no scope grants creating");
    // Searching across patients, and the native API, are beyond patient scopes.
    assert_eq!(
        status_of(&app, "/Patient?family=Smith", &app_token).await,
        403
    );
    let native = app.get(&format!("/v1/patients/{ada}"), &app_token).await;
    assert_eq!(native.status(), 403);
    // $everything holds only the types the scopes let the app read.
    let (status, _, everything) = fhir_get(
        &app,
        &format!("/Patient/{ada}/$everything"),
        Some(&app_token),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{everything}");
    let mut types: Vec<&str> = everything["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(types, ["AllergyIntolerance", "Patient"]);

    // Patient scopes without a launch patient reach no one.
    let unlaunched = scoped(&app, "patient/*.rs", None);
    assert_eq!(
        status_of(&app, &format!("/Patient/{ada}"), &unlaunched).await,
        403
    );

    // User scopes reach as far as the roles: both patients, and writing when granted.
    let user_token = scoped(&app, "user/*.cruds", None);
    assert_eq!(
        status_of(&app, &format!("/Patient/{bob}"), &user_token).await,
        200
    );
    let (status, _, created) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/AllergyIntolerance",
        &user_token,
        &condition,
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");

    // A scope never widens a role: a scheduler reads no medical record, whatever it says.
    let scheduler = app.token_with(
        "scheduler-1",
        &["scheduler"],
        &TokenExtras {
            scope: Some("user/*.cruds".into()),
            ..TokenExtras::default()
        },
    );
    assert_eq!(
        status_of(
            &app,
            &format!("/AllergyIntolerance?patient={ada}"),
            &scheduler
        )
        .await,
        403
    );

    // A Bundle's entries are each held to the scopes.
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            { "request": { "method": "GET", "url": format!("Patient/{ada}") } },
            { "request": { "method": "GET", "url": format!("Patient/{bob}") } }
        ]
    });
    let (status, _, answer) =
        fhir_send(&app, reqwest::Method::POST, "", &app_token, &bundle, &[]).await;
    assert_eq!(status, 200, "{answer}");
    let statuses: Vec<&str> = answer["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert!(statuses[0].starts_with("200"), "{answer}");
    assert!(statuses[1].starts_with("403"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn a_token_whose_launch_context_names_no_patient_is_refused() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_person(9962, None).await);
    // Minted by hand: the claim is not a patient id.
    let claims = json!({
        "sub": CARE, "roles": ["clinician"], "iat": chrono::Utc::now().timestamp(),
        "exp": chrono::Utc::now().timestamp() + 600, "scope": "patient/*.rs", "patient": "not-an-id"
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
    )
    .unwrap();
    let response = app.get(&format!("/v1/patients/{id}"), &token).await;
    assert_eq!(response.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn smart_discovery_names_the_authorization_server_and_404s_without_one() {
    let app = TestApp::without_kafka().await;
    let response = app
        .client
        .get(format!(
            "{}/fhir/R4/.well-known/smart-configuration",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;

    let app = TestApp::spawn_with(crate::helpers::AppOptions {
        kafka: false,
        configure: Some(std::sync::Arc::new(|settings| {
            settings.auth.issuer = Some("https://idp.test".into());
            settings.auth.smart = Some(command_api::configuration::SmartSettings {
                authorization_endpoint: Some("https://idp.test/authorize".into()),
                token_endpoint: "https://idp.test/token".into(),
                grant_types_supported: vec!["authorization_code".into()],
                token_endpoint_auth_methods_supported: vec!["private_key_jwt".into()],
                capabilities: vec!["launch-standalone".into(), "client-public".into()],
            });
        })),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let response = app
        .client
        .get(format!(
            "{}/fhir/R4/.well-known/smart-configuration",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["authorization_endpoint"], "https://idp.test/authorize");
    assert_eq!(body["token_endpoint"], "https://idp.test/token");
    assert_eq!(body["issuer"], "https://idp.test");
    assert_eq!(body["code_challenge_methods_supported"], json!(["S256"]));
    let capabilities: Vec<&str> = body["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for expected in ["launch-standalone", "permission-v2", "permission-patient"] {
        assert!(capabilities.contains(&expected), "{capabilities:?}");
    }
    app.stop().await;
}

/// A token from the test issuer's token endpoint (client credentials) for `sub` with `roles`.
async fn issued(client: &reqwest::Client, issuer: &str, sub: &str, roles: &str) -> String {
    let response = client
        .post(format!("{issuer}/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "patient-service-tests"),
            ("sub", sub),
            ("roles", roles),
            ("audience", AUDIENCE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

const AUDIENCE: &str = "patient-service";

#[tokio::test]
async fn a_smart_app_from_the_registry_launches_against_a_registry_token_issuer() {
    use tokio::io::AsyncWriteExt as _;
    // Arrange: oauth2-mock-server (npm) as the identity provider, the service trusting its
    // key set, and SMART discovery naming its endpoints.
    let crate::helpers::NodeTool {
        child: mut node,
        mut stdin,
        lines: mut stdout,
        started,
    } = crate::helpers::NodeTool::start("smart.mjs").await;
    let issuer = started["issuer"].as_str().unwrap().to_owned();
    let configured = issuer.clone();
    let app = TestApp::spawn_with(crate::helpers::AppOptions {
        kafka: false,
        configure: Some(std::sync::Arc::new(move |settings| {
            settings.auth.jwks_url = Some(format!("{configured}/jwks"));
            settings.auth.issuer = Some(configured.clone());
            settings.auth.audience = Some(AUDIENCE.into());
            settings.auth.smart = Some(command_api::configuration::SmartSettings {
                authorization_endpoint: Some(format!("{configured}/authorize")),
                token_endpoint: format!("{configured}/token"),
                grant_types_supported: vec!["authorization_code".into()],
                token_endpoint_auth_methods_supported: vec!["none".into()],
                capabilities: vec!["launch-standalone".into(), "client-public".into()],
            });
        })),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    // Two patients in the clinician's care, one allergy each, set up with issued tokens.
    let registrar = issued(&app.client, &issuer, "registrar-smart", "registrar").await;
    let clinician = issued(&app.client, &issuer, CARE, "clinician").await;
    let mut patients = Vec::new();
    for n in [9970, 9971] {
        let response = app
            .post(
                "/v1/patients",
                &registrar,
                &synthetic::registration(n, None),
                &[],
            )
            .await;
        assert_eq!(response.status(), 201);
        let id = id_of(&response.json().await.unwrap());
        let care = app
            .post(
                &format!("/v1/patients/{id}/care-relationships"),
                &registrar,
                &json!({ "practitioner": CARE, "role": "attending" }),
                &[("if-match", "\"1\"")],
            )
            .await;
        assert_eq!(care.status(), 200, "{:?}", care.text().await);
        let recorded = app
            .post(
                &format!("/v1/patients/{id}/allergies"),
                &clinician,
                &allergy("Penicillin"),
                &[],
            )
            .await;
        assert_eq!(recorded.status(), 201);
        patients.push(id);
    }

    // Act: the app (fhirclient, npm) launched standalone on the first patient by the
    // clinician, with patient scopes for the Patient and allergies.
    let ask = json!({
        "base": format!("{}/fhir/R4", app.address),
        "patient": patients[0],
        "other": patients[1],
        "user": CARE,
        "roles": ["clinician"],
        "audience": AUDIENCE,
        "scope": "openid fhirUser launch/patient patient/Patient.r patient/AllergyIntolerance.rs",
    });
    stdin
        .write_all(format!("{ask}\n").as_bytes())
        .await
        .unwrap();
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), stdout.next_line())
        .await
        .expect("the SMART app finished")
        .unwrap()
        .unwrap_or_default();
    let status = node.wait().await.unwrap();

    // Assert: discovery led the app to the issuer and back; the app read its patient and
    // their allergies, and the scopes kept it from the rest.
    assert!(status.success(), "{line}");
    let outcome: Value = serde_json::from_str(&line).unwrap();
    let visited: Vec<&str> = outcome["visited"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(visited, ["/launch", "/authorize", "/callback"], "{outcome}");
    let seen = &outcome["seen"];
    assert_eq!(seen["patient"], patients[0].as_str());
    assert_eq!(seen["read"], patients[0].as_str());
    assert_eq!(seen["allergies"], 1);
    assert_eq!(
        seen["allergyPatients"],
        json!([format!("Patient/{}", patients[0])])
    );
    assert_eq!(
        seen["everythingTypes"],
        json!(["AllergyIntolerance", "Patient"])
    );
    assert_eq!(seen["other"], 403, "another patient: {outcome}");
    assert_eq!(seen["conditions"], 403, "a type no scope names: {outcome}");
    assert_eq!(
        seen["create"], 403,
        "an interaction no scope grants: {outcome}"
    );
    app.stop().await;
}
