//! The findings of the security review, each shown closed against the running service: other
//! organizations, the development secret, erasure, rows the service did not write, consent
//! and break-the-glass.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use command_api::auth::TokenExtras;
use serde_json::{json, Value};

use crate::helpers::*;

const HOME: &str = "general-hospital";
const PARTNER: &str = "partner-clinic";

fn home_app() -> AppOptions {
    AppOptions {
        kafka: false,
        organization: Some(HOME.into()),
        ..AppOptions::default()
    }
}

fn partner(app: &TestApp, user: &str, roles: &[&str]) -> String {
    app.token_with(
        user,
        roles,
        &TokenExtras {
            organization: Some(PARTNER.into()),
            ..Default::default()
        },
    )
}

async fn status_of(response: reqwest::Response) -> u16 {
    response.status().as_u16()
}

/// Access entries of `patient` refused for `action`.
async fn denied_entries(app: &TestApp, patient: &str, action: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE aggregate_type = 'Access' AND payload->>'patient_id' = $1
            AND payload->>'action' = $2 AND payload->>'outcome' = 'denied'",
    )
    .bind(patient)
    .bind(action)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn another_organisations_staff_read_only_what_the_patient_shares_and_never_change_it() {
    // Arrange
    let app = TestApp::spawn_with(home_app()).await;
    let a = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let b = id_of(&app.register_ok("Grace", "Hopper", "1906-12-09").await);
    let registrar = partner(&app, "partner-registrar", &["registrar"]);
    let auditor = partner(&app, "partner-auditor", &["auditor"]);
    let merge = |token: String| {
        let (app, a, b) = (&app, a.clone(), b.clone());
        async move {
            app.post(
                &format!("/v1/patients/{a}/merge"),
                &token,
                &json!({ "target_id": b, "reason": "duplicate" }),
                &[("if-match", "\"1\"")],
            )
            .await
        }
    };
    let unmerge = |token: String| {
        let (app, a) = (&app, a.clone());
        async move {
            app.post(
                &format!("/v1/patients/{a}/unmerge"),
                &token,
                &json!({ "reason": "not a duplicate" }),
                &[("if-match", "\"1\"")],
            )
            .await
        }
    };
    let matched = |token: String| {
        let app = &app;
        async move {
            app.post(
                "/v1/patients/$match",
                &token,
                &json!({ "name": { "given": ["Ada"], "family": "Lovelace" }, "birth_date": "1990-12-10" }),
                &[],
            )
            .await
        }
    };
    let events_before = app.event_count().await;

    // Act and assert: before any consent, every route to the patients is closed to them.
    assert_eq!(status_of(merge(registrar.clone()).await).await, 403);
    assert_eq!(status_of(unmerge(registrar.clone()).await).await, 403);
    assert_eq!(status_of(matched(registrar.clone()).await).await, 403);
    for path in [
        format!("/v1/patients/{a}"),
        format!("/v1/audit/streams/patient/{a}"),
        format!("/v1/audit/streams/medical-record/{a}"),
        format!("/v1/audit/entries?patient={a}"),
        "/v1/audit/entries".to_owned(),
    ] {
        assert_eq!(
            status_of(app.get(&path, &auditor).await).await,
            403,
            "{path}"
        );
    }
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing merged or absorbed"
    );
    assert!(
        denied_entries(&app, &a, "MergePatients").await >= 2,
        "refused merges and unmerges are access entries"
    );

    // The patient shares their record with the partner organization.
    let shared = app
        .post(
            &format!("/v1/patients/{a}/consents"),
            &app.patient_token(&a),
            &json!({ "directive": { "kind": "share-with-organization", "organization": PARTNER } }),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(shared.status(), 200);

    // Reading what is shared is now allowed, and recorded; changing it still is not.
    assert_eq!(
        status_of(app.get(&format!("/v1/patients/{a}"), &registrar).await).await,
        200
    );
    let history = app
        .get(&format!("/v1/audit/streams/patient/{a}"), &auditor)
        .await;
    assert_eq!(history.status(), 200);
    let entries = app
        .get(&format!("/v1/audit/entries?patient={a}"), &auditor)
        .await;
    assert_eq!(entries.status(), 200);
    assert_eq!(
        status_of(app.get("/v1/audit/entries", &auditor).await).await,
        403,
        "the whole log stays this organization's"
    );
    assert_eq!(
        status_of(
            app.get(&format!("/v1/audit/streams/patient/{b}"), &auditor)
                .await
        )
        .await,
        403,
        "a patient who shares nothing stays closed"
    );
    let merged = merge(registrar.clone()).await;
    assert_eq!(merged.status(), 403);
    assert_eq!(status_of(matched(registrar).await).await, 403);
    let (survivor, _) = app
        .get(&format!("/v1/patients/{b}"), &app.registrar())
        .await
        .json::<Value>()
        .await
        .map(|v| (v, ()))
        .unwrap();
    assert_eq!(survivor["version"], 1, "the survivor absorbed nothing");
    app.stop().await;
}

#[tokio::test]
async fn a_token_naming_no_organization_is_refused_where_the_service_has_one() {
    // Arrange
    let app = TestApp::spawn_with(home_app()).await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let now = chrono::Utc::now().timestamp();
    let claims = |org: Option<&str>| {
        let mut claims =
            json!({ "sub": "registrar-x", "roles": ["registrar"], "iat": now, "exp": now + 600 });
        if let Some(org) = org {
            claims["org"] = json!(org);
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };

    // Act
    let without = app.get(&format!("/v1/patients/{id}"), &claims(None)).await;
    let with = app
        .get(&format!("/v1/patients/{id}"), &claims(Some(HOME)))
        .await;

    // Assert
    assert_eq!(
        without.status(),
        401,
        "no claim is not the home organization"
    );
    assert_eq!(with.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn outside_the_embedded_default_a_public_or_short_secret_stops_the_start() {
    use command_api::startup::{Roles, Service};

    // Arrange: a configured database, as in any deployment.
    let (_, database_url) = create_database().await;
    let settings_with = |secret: &str| {
        let mut settings = command_api::configuration::Settings::base().unwrap();
        settings.http.port = 0;
        settings.database.url = Some(secrecy::SecretString::from(database_url.clone()));
        settings.auth.jwt_secret = secrecy::SecretString::from(secret.to_owned());
        settings.security.master_key = Some(secrecy::SecretString::from(MASTER_KEY));
        settings.security.audit_key = Some(secrecy::SecretString::from(AUDIT_KEY));
        settings
    };
    let api = Roles {
        api: true,
        relay: false,
        projectors: false,
        background: false,
    };

    for (case, secret) in [
        (
            "development",
            command_api::configuration::DEVELOPMENT_SECRET,
        ),
        ("short", "0123456789abcdef0123456789abcde"),
    ] {
        // Act
        let started = Service::start(&settings_with(secret), api, Arc::new(fixed_now)).await;

        // Assert
        let error = started.err().unwrap_or_else(|| panic!("{case}: started"));
        assert!(
            format!("{error:#}").contains("refusing to start"),
            "{case}: {error:#}"
        );
    }
    let long_enough = Service::start(&settings_with(SECRET), api, Arc::new(fixed_now)).await;
    long_enough
        .expect("a long secret starts")
        .stop()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_token_command_says_which_secret_it_signs_with() {
    let token = |secret: Option<&str>| {
        let mut command =
            std::process::Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"));
        command.args(["token", "--user", "u-1", "--role", "registrar"]);
        command.env_remove("APP_AUTH__JWT_SECRET");
        if let Some(secret) = secret {
            command.env("APP_AUTH__JWT_SECRET", secret);
        }
        let output = command.output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stderr).unwrap()
    };

    assert!(
        token(None).contains("public development secret"),
        "{}",
        token(None)
    );
    assert!(token(Some(SECRET)).contains("configured secret auth.jwt_secret"));
}

/// A clock the test moves.
fn movable_clock() -> (command_api::http::Clock, Arc<AtomicI64>) {
    let offset = Arc::new(AtomicI64::new(0));
    let seen = offset.clone();
    let clock: command_api::http::Clock =
        Arc::new(move || fixed_now() + chrono::Duration::seconds(seen.load(Ordering::SeqCst)));
    (clock, offset)
}

#[tokio::test]
async fn idempotency_records_hold_keyed_hashes_expire_and_go_with_the_patient() {
    // Arrange
    let (clock, offset) = movable_clock();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        clock: Some(clock),
        ..AppOptions::default()
    })
    .await;
    let token = app.registrar();
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let body = r#"{"system":"urn:oid:2.16.840.1.113883.4.1","value":"123-45-6789"}"#;
    let path = format!("/v1/patients/{id}/identifiers");
    // The body sent as these very bytes, so the test knows what was hashed.
    let add_identifier = |token: String| {
        let (app, path) = (&app, &path);
        async move {
            app.client
                .post(format!("{}{path}", app.address))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("if-match", "\"1\"")
                .header("idempotency-key", "ssn-1")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let added = add_identifier(token.clone()).await;
    assert_eq!(added.status(), 200, "{:?}", added.text().await);

    // Assert: the stored hash is not the plain SHA-256 anyone could recompute from a guess.
    let (stored, plain): (String, String) = sqlx::query_as(
        "SELECT request_hash, encode(sha256(convert_to($1, 'UTF8')), 'hex')
           FROM idempotency_keys WHERE key = 'ssn-1'",
    )
    .bind(format!("POST {path}\n{body}"))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_ne!(stored, plain);
    assert_eq!(stored.len(), 64);

    // A different request under the key is refused while the key lives.
    let archived = app
        .post(
            &format!("/v1/patients/{id}/archive"),
            &token,
            &json!({ "reason": "moved" }),
            &[("if-match", "\"2\""), ("idempotency-key", "ssn-1")],
        )
        .await;
    assert_eq!(archived.status(), 422, "the key is still in use");
    // A day later its record is swept (the background role does so every minute).
    let keys = event_store::idempotency::IdempotencyKeys::new(app.pool.clone());
    assert_eq!(
        keys.sweep(fixed_now()).await.unwrap(),
        0,
        "nothing expired yet"
    );
    offset.store(25 * 3600, Ordering::SeqCst);
    assert!(
        keys.sweep(fixed_now() + chrono::Duration::hours(25))
            .await
            .unwrap()
            >= 1
    );
    let added_again = add_identifier(app.token_with(
        "registrar-1",
        &["registrar"],
        &TokenExtras {
            session_id: Some("a-day-later".into()),
            ..Default::default()
        },
    ))
    .await;
    assert_eq!(
        added_again.status(),
        412,
        "past its lifetime a key is free: the repeat is a new request, on a stale version"
    );
    assert!(added_again.headers().get("idempotent-replayed").is_none());

    // Erasure deletes the patient's records in its own transaction.
    let forgotten = app
        .post(
            &format!("/v1/patients/{id}/forget"),
            &app.token("admin-1", &["admin"]),
            &json!({ "reason": "patient-request" }),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(forgotten.status(), 200, "{:?}", forgotten.text().await);
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE aggregate_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_row_written_into_the_event_store_without_the_key_is_refused_not_acted_on() {
    // Arrange: a clinician outside the patient's care is refused.
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let mallory = app.token("dr-mallory", &["clinician"]);
    let read = |token: String| {
        let (app, id) = (&app, id.clone());
        async move { app.get(&format!("/v1/patients/{id}"), &token).await }
    };
    assert_eq!(read(mallory.clone()).await.status(), 403);

    // Act: a plaintext care relationship for mallory, inserted straight into PostgreSQL (the
    // append-only trigger lets INSERTs through).
    let payload = json!({ "CareRelationshipStarted": {
        "practitioner": "dr-mallory", "role": "attending", "started_at": "2026-11-27T12:00:00Z"
    }});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('Patient', $1, 2, 'CareRelationshipStarted', '1.0', $2, '{\"user_id\": \"x\"}')",
    )
    .bind(&id)
    .bind(&payload)
    .execute(&app.pool)
    .await
    .unwrap();

    // Assert: nobody is answered on the strength of that row: an error, never the record.
    for (who, token) in [("mallory", mallory), ("registrar", app.registrar())] {
        let response = read(token).await;
        assert_eq!(response.status(), 500, "{who}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            !problem.to_string().contains("Lovelace"),
            "{who}: {problem}"
        );
    }
    let as_of = app
        .get(
            &format!("/v1/patients/{id}?as_of=2100-01-01T00:00:00Z"),
            &app.registrar(),
        )
        .await;
    assert_eq!(as_of.status(), 500);
    let history = app
        .get(
            &format!("/v1/audit/streams/patient/{id}"),
            &app.token("auditor-1", &["auditor"]),
        )
        .await;
    assert_eq!(history.status(), 500);
    let changed = app
        .command(&id, "archive", 2, &json!({ "reason": "moved" }))
        .await;
    assert_eq!(changed.status(), 500, "no command is decided on it either");
    app.stop().await;
}

#[tokio::test]
async fn a_sealed_row_copied_to_a_new_sequence_is_refused() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, hash)
         SELECT aggregate_type, aggregate_id, 2, event_type, event_version, payload, metadata, hash
           FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .unwrap();

    let response = app
        .get(&format!("/v1/patients/{id}"), &app.registrar())
        .await;

    assert_eq!(response.status(), 500);
    app.stop().await;
}

#[tokio::test]
async fn consent_to_share_with_clinicians_opens_the_medical_record_for_reading_only() {
    // Arrange: the patient shares their record with every clinician.
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let shared = app
        .post(
            &format!("/v1/patients/{id}/consents"),
            &app.patient_token(&id),
            &json!({ "directive": { "kind": "share-with-role", "role": "clinician" } }),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(shared.status(), 200);
    let clinician = app.token("dr-any", &["clinician"]);
    let allergy = json!({
        "substance": { "system": "http://snomed.info/sct", "code": "764146007", "text": "Penicillin" },
        "category": "medication",
        "criticality": "high",
        "clinical_status": "active",
        "verification_status": "confirmed"
    });

    // Act
    let read = app
        .get(&format!("/v1/patients/{id}/allergies"), &clinician)
        .await;
    let written = app
        .post(
            &format!("/v1/patients/{id}/allergies"),
            &clinician,
            &allergy,
            &[],
        )
        .await;
    let emergency = app
        .post(
            &format!("/v1/patients/{id}/allergies"),
            &clinician,
            &allergy,
            &[("x-break-glass-reason", "emergency-treatment")],
        )
        .await;

    // Assert
    assert_eq!(read.status(), 200);
    assert_eq!(written.status(), 403, "consent does not let them write");
    assert_eq!(
        emergency.status(),
        201,
        "break-the-glass does: {:?}",
        emergency.text().await
    );
    app.stop().await;
}

#[tokio::test]
async fn break_the_glass_is_limited_per_user_counted_and_alerted() {
    // Arrange: two patients an hour at most.
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|settings| {
            settings.auth.break_glass_patients_per_hour = 2;
        })),
        ..AppOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(id_of(&app.register_person(n, None).await));
    }
    let clinician = app.token("dr-er", &["clinician"]);
    let emergency_read = |id: String| {
        let (app, clinician) = (&app, clinician.clone());
        async move {
            app.client
                .get(format!("{}/v1/patients/{id}", app.address))
                .bearer_auth(clinician)
                .header("x-break-glass-reason", "emergency-treatment")
                .send()
                .await
                .unwrap()
        }
    };

    // Act
    let first = emergency_read(ids[0].clone()).await.status().as_u16();
    let second = emergency_read(ids[1].clone()).await.status().as_u16();
    let first_again = emergency_read(ids[0].clone()).await.status().as_u16();
    let third = emergency_read(ids[2].clone()).await;

    // Assert
    assert_eq!((first, second, first_again), (200, 200, 200));
    assert_eq!(third.status(), 429);
    let unknown = emergency_read(uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(
        unknown.status(),
        429,
        "the same answer for an id nobody has: the limit tells no existence"
    );
    let problem: Value = third.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/emergency-access-limit");
    assert_eq!(
        denied_entries(&app, &ids[2], "read").await,
        1,
        "the refusal is an access entry"
    );
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("patient_service_emergency_access_granted_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patient_service_emergency_access_refused_total 2"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn rows_written_without_the_key_never_reach_the_topics_or_the_audit_log() {
    // Arrange: a patient, then two rows written straight into PostgreSQL by someone without
    // the audit key: a care relationship in the clear, and an access entry (those are stored
    // in the clear) with a made-up hash.
    let app = TestApp::spawn().await;
    let patients = app.consumer();
    let forged = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let forged_entry = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, hash)
         VALUES ('Patient', $1, 2, 'CareRelationshipStarted', '1.0', $2, '{\"user_id\": \"x\"}', NULL),
                ('Access', $3, 1, 'AccessRecorded', '1.0', $4, '{\"user_id\": \"x\"}', '\\x00')",
    )
    .bind(&forged)
    .bind(json!({ "CareRelationshipStarted": {
        "practitioner": "dr-mallory", "role": "attending", "started_at": "2026-11-27T12:00:00Z"
    }}))
    .bind(forged_entry.to_string())
    .bind(json!({
        "entry_id": forged_entry, "patient_id": forged, "user_id": "mallory",
        "roles": ["clinician"], "action": "read", "purpose": "treatment",
        "outcome": "granted", "accessed_at": "2026-11-27T12:00:00Z"
    }))
    .execute(&app.pool)
    .await
    .unwrap();

    // Act: a genuine event after them, so the relay has passed them once it is published.
    let later = id_of(&app.register_ok("Grace", "Hopper", "1906-12-09").await);
    let records = consume_until(&patients, |records| records.iter().any(|r| key(r) == later)).await;

    // Assert: the relay went on past the forged row (its checkpoint passed the later event,
    // so everything before it was acknowledged or passed by) and published only the two
    // registrations.
    let later_position: i64 =
        sqlx::query_scalar("SELECT position FROM events WHERE aggregate_id = $1 AND sequence = 1")
            .bind(&later)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    eventually("the relay's checkpoint to pass the later event", || async {
        let at: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM relay_checkpoints")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        at.is_some_and(|at| at >= later_position)
    })
    .await;
    assert_eq!(records_on_topic(&app), 2, "only the genuine registrations");
    assert!(records
        .iter()
        .filter(|r| key(r) == forged)
        .all(|r| published(r).sequence == 1));
    let auditor = app.token("auditor-1", &["auditor"]);
    eventually("the genuine registration in the audit log", || async {
        let body: Value = app
            .get(
                &format!("/v1/audit/entries?patient={later}&kind=event"),
                &auditor,
            )
            .await
            .json()
            .await
            .unwrap();
        !body["items"].as_array().unwrap().is_empty()
    })
    .await;
    let entries: Value = app
        .get("/v1/audit/entries?user=mallory", &auditor)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(entries["items"], json!([]), "no forged access entry");
    app.stop().await;
}
