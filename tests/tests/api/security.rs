//! Encryption at rest, tamper evidence, erasure, access tracking and consent, against the real
//! database and broker.

use std::process::Command;

use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

use crate::helpers::*;

/// Patient data nobody could produce by accident: none of it may appear where it must not.
const NEEDLES: [&str; 9] = [
    "Zebediah",
    "Quartermaine",
    "1931-07-04",
    "+442079460321",
    "Marigold",
    "Puddleby",
    "PX9 4QQ",
    "QX99887766",
    "zeb.q@example.org",
];

fn recognisable_patient() -> Value {
    json!({
        "name": { "given": ["Zebediah"], "family": "Quartermaine" },
        "birth_date": "1931-07-04",
        "gender": "male",
        "identifiers": [{ "system": "https://hospital.example/ids", "value": "QX99887766" }],
        "contact": {
            "phones": [{ "number": "+442079460321" }],
            "emails": [{ "address": "zeb.q@example.org" }],
            "addresses": [{ "lines": ["17 Marigold Crescent"], "city": "Puddleby", "postal_code": "PX9 4QQ", "country": "GB" }]
        }
    })
}

fn leaked(haystack: &str) -> Vec<&'static str> {
    let haystack = haystack.to_lowercase();
    NEEDLES
        .iter()
        .copied()
        .filter(|n| haystack.contains(&n.to_lowercase()))
        .collect()
}

/// Runs `patient-service audit verify` against the app's database: (success, stdout).
fn audit_verify(app: &TestApp) -> (bool, String) {
    audit_verify_at(&app.database_url)
}

/// Runs `patient-service audit verify` against `database_url`: (success, stdout).
fn audit_verify_at(database_url: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .args(["audit", "verify"])
        .env("DATABASE_URL", database_url)
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

/// Waits until the audit log holds an entry for every stored event and access entry.
async fn audit_log_caught_up(app: &TestApp) {
    eventually("the audit log caught up with the event store", || async {
        let (stored, audited): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM projections.audit_log)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        stored == audited
    })
    .await;
}

#[tokio::test]
async fn patient_data_is_sealed_in_the_event_store_and_on_the_topic() {
    // Arrange
    let app = TestApp::spawn().await;
    let consumer = app.consumer();

    // Act
    let created = app.register(&recognisable_patient()).await;
    assert_eq!(created.status(), 201);
    let id = id_of(&created.json().await.unwrap());
    let changed = app
        .client
        .put(format!("{}/v1/patients/{id}/contact", app.address))
        .bearer_auth(app.registrar())
        .header("if-match", "\"1\"")
        .json(&json!({ "addresses": [{ "lines": ["17 Marigold Crescent", "Flat 2"], "city": "Puddleby" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let records = consume(&consumer, 2).await;

    // Assert: the stored rows
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text || metadata::text FROM events WHERE aggregate_id = $1",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(leaked(row), Vec::<&str>::new(), "a stored event");
    }
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(snapshots, 0, "no snapshot holds the aggregate in the clear");
    // The raw Kafka messages: value and every header.
    for record in &records {
        let mut raw = String::from_utf8_lossy(record.payload().unwrap()).into_owned();
        for header in record.headers().unwrap().iter() {
            raw.push_str(&String::from_utf8_lossy(header.value.unwrap_or_default()));
        }
        assert_eq!(leaked(&raw), Vec::<&str>::new(), "a published record");
    }
    // Not vacuous: the data is there, for whoever holds the key.
    let opened = String::from_utf8(app.open(&records[0]).await).unwrap();
    assert!(opened.contains("Quartermaine"));
    let read: Value = app
        .get(&format!("/v1/patients/{id}"), &app.registrar())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["name"]["family"], "Quartermaine");
    app.stop().await;
}

#[tokio::test]
async fn audit_verify_names_every_altered_deleted_or_inserted_row() {
    // Arrange: three patients, two with a second event, all audited.
    let app = TestApp::without_kafka().await;
    let a = id_of(&app.register_person(1, None).await);
    let b = id_of(&app.register_person(2, None).await);
    let c = id_of(&app.register_person(3, None).await);
    for id in [&a, &b] {
        let archived = app
            .command(id, "archive", 1, &json!({ "reason": "moved" }))
            .await;
        assert_eq!(archived.status(), 200);
    }
    audit_log_caught_up(&app).await;
    let (clean, report) = audit_verify(&app);
    assert!(clean, "{report}");
    assert!(report.contains("no tampering found"), "{report}");
    let refused = sqlx::query("DELETE FROM events WHERE aggregate_id = $1")
        .bind(&a)
        .execute(&app.pool)
        .await;
    assert!(
        refused.is_err(),
        "the event store refuses to change what it holds"
    );
    let exec = |sql: String| {
        let pool = app.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            // A superuser can switch the triggers off: the chains must catch what follows.
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(&sql).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    };

    // Act: tamper directly in PostgreSQL.
    exec(format!(
        "UPDATE events SET metadata = jsonb_set(metadata, '{{user_id}}', '\"mallory\"')
          WHERE aggregate_id = '{a}' AND sequence = 1"
    ))
    .await;
    exec(format!(
        "DELETE FROM events WHERE aggregate_id = '{b}' AND sequence = 1"
    ))
    .await;
    exec(format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, hash)
         SELECT aggregate_type, aggregate_id, 2, 'PatientArchived', event_version, payload,
                metadata, hash
           FROM events WHERE aggregate_id = '{c}' AND sequence = 1"
    ))
    .await;
    exec("UPDATE projections.audit_log SET user_id = 'mallory' WHERE seq = 2".to_owned()).await;
    exec("DELETE FROM projections.audit_log WHERE seq = 4".to_owned()).await;
    exec(
        "INSERT INTO projections.audit_log (seq, entry_id, kind, recorded_at, action, detail, hash)
         SELECT max(seq) + 1, gen_random_uuid(), 'access', now(), 'read', '{}', '\\x00'
           FROM projections.audit_log"
            .to_owned(),
    )
    .await;
    let (clean, report) = audit_verify(&app);

    // Assert
    assert!(!clean, "tampering must fail the verification");
    let last_seq: i64 = sqlx::query_scalar("SELECT max(seq) FROM projections.audit_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    for expected in [
        format!("events Patient/{a} sequence 1: altered or inserted"),
        format!("events Patient/{b} sequence 1: deleted"),
        format!("events Patient/{c} sequence 2: altered or inserted"),
        "audit_log seq 2: altered or inserted".to_owned(),
        "audit_log seq 4: deleted".to_owned(),
        format!("audit_log seq {last_seq}: altered or inserted"),
    ] {
        assert!(
            report.lines().any(|l| l == expected),
            "missing `{expected}` in:\n{report}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_forgotten_patient_is_unreadable_everywhere_and_only_the_fact_remains() {
    // Arrange
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let admin = app.token("admin-1", &["admin"]);
    let created = app.register(&recognisable_patient()).await;
    let id = id_of(&created.json().await.unwrap());
    app.search_until("family=quartermaine", 1).await;
    let hold = |action: &'static str, version: u64| {
        let (app, admin, id) = (&app, &admin, &id);
        async move {
            app.post(
                &format!("/v1/patients/{id}/{action}"),
                admin,
                &json!({ "reason": "litigation 2026-117" }),
                &[("if-match", &format!("\"{version}\""))],
            )
            .await
        }
    };
    let forget = |version: u64| {
        let (app, admin, id) = (&app, &admin, &id);
        async move {
            app.post(
                &format!("/v1/patients/{id}/forget"),
                admin,
                &json!({ "reason": "patient-request", "reference": "DSR-2026-0042" }),
                &[("if-match", &format!("\"{version}\""))],
            )
            .await
        }
    };

    // Act
    assert_eq!(hold("legal-hold", 1).await.status(), 200);
    let refused = forget(2).await;
    let refused_status = refused.status();
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(hold("legal-hold/release", 2).await.status(), 200);
    let forgotten = forget(3).await;

    // Assert: refused under the hold, then done.
    assert_eq!(refused_status, 409);
    assert_eq!(refused["code"], "legal-hold-prevents-erasure");
    assert_eq!(forgotten.status(), 200);
    let forgotten: Value = forgotten.json().await.unwrap();
    assert_eq!(forgotten["status"], "forgotten");
    // The API answers 410 to those who could read it, and 403 (as for anyone else's record)
    // to those who could not.
    let read = app
        .get(&format!("/v1/patients/{id}"), &app.registrar())
        .await;
    assert_eq!(read.status(), 410);
    let stranger = app
        .get(
            &format!("/v1/patients/{id}"),
            &app.token("c", &["clinician"]),
        )
        .await;
    assert_eq!(stranger.status(), 403);
    let key = app
        .get(
            &format!("/v1/patients/{id}/data-key"),
            &app.token("downstream", &["service"]),
        )
        .await;
    assert_eq!(key.status(), 410, "the data key is destroyed");
    let again = app
        .command(&id, "archive", 5, &json!({ "reason": "x" }))
        .await;
    assert_eq!(again.status(), 410);
    // Read models purge the patient.
    app.search_until("family=quartermaine", 0).await;
    eventually("the matcher forgot the patient", || async {
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projections.patient_match WHERE patient_id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        rows == 0
    })
    .await;
    // The events stay, sealed for good; only the fact of erasure is readable.
    let key_row: (Option<Vec<u8>>, bool) = sqlx::query_as(
        "SELECT wrapped_key, destroyed_at IS NOT NULL FROM patient_data_keys WHERE patient_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(key_row, (None, true));
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows[..3].iter().all(|r| r.contains("\"sealed\"")));
    assert!(rows[3].contains("patient-request"));
    let records = consume(&consumer, 4).await;
    let last = records.last().unwrap();
    assert_eq!(
        header(last, "ce_type").unwrap(),
        "org.nextgen-medtech.patients.PatientForgotten.v1"
    );
    assert_eq!(
        header(last, "content-type").as_deref(),
        Some("application/json")
    );
    assert_matches_schema("PatientForgotten", last.payload().unwrap());
    // The auditor's history keeps every event, unreadable but for the fact of erasure.
    let history: Value = app
        .get(
            &format!("/v1/audit/streams/patient/{id}"),
            &app.token("auditor-1", &["auditor"]),
        )
        .await
        .json()
        .await
        .unwrap();
    let erased: Vec<bool> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["erased"].as_bool().unwrap())
        .collect();
    assert_eq!(erased, [true, true, true, false]);
    assert_eq!(leaked(&history.to_string()), Vec::<&str>::new());
    // The audit log keeps the fact, without patient data, and still verifies.
    audit_log_caught_up(&app).await;
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM projections.audit_log a")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(audit.iter().any(|row| row.contains("PatientForgotten")));
    assert_eq!(leaked(&audit.join("\n")), Vec::<&str>::new());
    let (clean, report) = audit_verify(&app);
    assert!(clean, "{report}");
    app.stop().await;
}

#[tokio::test]
async fn every_read_is_tracked_published_and_listed_in_the_accounting_of_disclosures() {
    // Arrange
    let app = TestApp::spawn().await;
    let access = consumer_for(
        app.settings.kafka.brokers.as_deref().unwrap(),
        &format!(
            "{}{}",
            app.settings.kafka.topic_prefix,
            schemas::topics::ACCESS
        ),
    );
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let clinician = app.token("dr-who", &["clinician"]);

    // Act
    let by_registrar = app
        .get(&format!("/v1/patients/{id}"), &app.registrar())
        .await;
    let refused = app.get(&format!("/v1/patients/{id}"), &clinician).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let emergency = app
        .client
        .get(format!("{}/v1/patients/{id}", app.address))
        .bearer_auth(&clinician)
        .header("x-break-glass-reason", "patient-unable-to-consent")
        .header("traceparent", trace)
        .send()
        .await
        .unwrap();
    let bad_reason = app
        .client
        .get(format!("{}/v1/patients/{id}", app.address))
        .bearer_auth(&clinician)
        .header("x-break-glass-reason", "curiosity")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(by_registrar.status(), 200);
    assert_eq!(refused.status(), 403);
    assert_eq!(
        emergency.status(),
        200,
        "break-the-glass lets the clinician in"
    );
    assert_eq!(bad_reason.status(), 400);
    let problem: Value = bad_reason.json().await.unwrap();
    assert_eq!(error_fields(&problem), ["X-Break-Glass-Reason"]);
    // Published: the emergency access as its own event type, for a notification service.
    let records = consume_until(&access, |records| {
        records.iter().any(|r| {
            header(r, "ce_type")
                .unwrap()
                .contains("EmergencyAccessGranted")
        })
    })
    .await;
    let flagged = records
        .iter()
        .find(|r| {
            header(r, "ce_type")
                .unwrap()
                .contains("EmergencyAccessGranted")
        })
        .unwrap();
    assert_eq!(key(flagged), id);
    // The access carries the trace context of the request that made it.
    assert_eq!(header(flagged, "traceparent").as_deref(), Some(trace));
    let data = flagged.payload().unwrap();
    let schema_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/json/access/v1/EmergencyAccessGranted.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let entry: Value = serde_json::from_slice(data).unwrap();
    assert!(jsonschema::is_valid(&schema, &entry));
    assert_eq!(entry["user_id"], "dr-who");
    assert_eq!(entry["purpose"], "emergency");
    assert_eq!(entry["emergency_reason"], "patient-unable-to-consent");
    // The patient sees who accessed their record, granted or not.
    let patient = app.patient_token(&id);
    let list = || async {
        let body: Value = app
            .get(&format!("/v1/patients/{id}/disclosures"), &patient)
            .await
            .json()
            .await
            .unwrap();
        body
    };
    eventually("the disclosures list the three reads", || async {
        let body = list().await;
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["action"] == "read")
            .count()
            == 3
    })
    .await;
    let disclosures = list().await;
    let reads: Vec<(String, String, Value)> = disclosures["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "read")
        .map(|i| {
            (
                i["user_id"].as_str().unwrap().to_owned(),
                i["outcome"].as_str().unwrap().to_owned(),
                i["emergency_reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        reads,
        [
            ("registrar-1".to_owned(), "granted".to_owned(), Value::Null),
            ("dr-who".to_owned(), "denied".to_owned(), Value::Null),
            (
                "dr-who".to_owned(),
                "granted".to_owned(),
                json!("patient-unable-to-consent")
            ),
        ]
    );
    // Another patient cannot list them; an admin can, on the patient's behalf.
    let other = app.patient_token(&uuid::Uuid::new_v4().to_string());
    let nosy = app
        .get(&format!("/v1/patients/{id}/disclosures"), &other)
        .await;
    assert_eq!(nosy.status(), 403);
    let admin = app
        .get(
            &format!("/v1/patients/{id}/disclosures"),
            &app.token("admin-1", &["admin"]),
        )
        .await;
    assert_eq!(admin.status(), 200);
    // Auditors query the log by user and action.
    let by_user: Value = app
        .get(
            "/v1/audit/entries?user=dr-who&action=read",
            &app.token("auditor-1", &["auditor"]),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_user["items"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn consent_directives_decide_what_partners_clinicians_and_researchers_may_read() {
    // Arrange
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        organization: Some("general-hospital".into()),
        ..AppOptions::default()
    })
    .await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let patient = app.patient_token(&id);
    let partner = app.token_with(
        "partner-1",
        &["registrar"],
        &command_api::auth::TokenExtras {
            organization: Some("partner-clinic".into()),
            ..Default::default()
        },
    );
    let clinician = app.token("dr-no-relationship", &["clinician"]);
    let partner_service = app.token_with(
        "partner-feed",
        &["service"],
        &command_api::auth::TokenExtras {
            organization: Some("partner-clinic".into()),
            ..Default::default()
        },
    );
    let data_key = |token: &str| {
        let (app, id, token) = (&app, &id, token.to_owned());
        async move {
            app.get(&format!("/v1/patients/{id}/data-key"), &token)
                .await
                .status()
                .as_u16()
        }
    };
    let registrar = app.registrar();
    let read = |token: &str, purpose: Option<&str>| {
        let (app, id, token) = (&app, &id, token.to_owned());
        let purpose = purpose.map(str::to_owned);
        async move {
            let mut request = app
                .client
                .get(format!("{}/v1/patients/{id}", app.address))
                .bearer_auth(token);
            if let Some(purpose) = purpose {
                request = request.header("x-purpose-of-use", purpose);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    let mut version = 1;
    let grant = |directive: Value, version: u64| {
        let (app, id, patient) = (&app, &id, &patient);
        async move {
            let response = app
                .post(
                    &format!("/v1/patients/{id}/consents"),
                    patient,
                    &json!({ "directive": directive }),
                    &[("if-match", &format!("\"{version}\""))],
                )
                .await;
            assert_eq!(response.status(), 200, "{:?}", response.text().await);
            let body: Value = response.json().await.unwrap();
            body["consents"].as_array().unwrap().last().unwrap()["consent_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };

    // Act and assert: before any consent
    assert_eq!(read(&partner, None).await, 403);
    assert_eq!(
        data_key(&partner_service).await,
        403,
        "nor its services' data keys"
    );
    assert_eq!(read(&clinician, None).await, 403);
    assert_eq!(read(&registrar, Some("research")).await, 200);
    let searched = app
        .client
        .get(format!("{}/v1/patients?family=lovelace", app.address))
        .bearer_auth(&partner)
        .send()
        .await
        .unwrap();
    assert_eq!(searched.status(), 403, "other organizations do not search");

    // The patient shares with the partner clinic, with all clinicians, and opts out of research.
    let shared = grant(
        json!({ "kind": "share-with-organization", "organization": "partner-clinic" }),
        version,
    )
    .await;
    version += 1;
    assert_eq!(read(&partner, None).await, 200);
    assert_eq!(data_key(&partner_service).await, 200);
    grant(
        json!({ "kind": "share-with-role", "role": "clinician" }),
        version,
    )
    .await;
    version += 1;
    assert_eq!(read(&clinician, None).await, 200);
    grant(json!({ "kind": "research-opt-out" }), version).await;
    version += 1;
    assert_eq!(read(&registrar, Some("research")).await, 403);
    assert_eq!(read(&registrar, Some("treatment")).await, 200);
    let research_search = |app: &TestApp| {
        app.client
            .get(format!("{}/v1/patients?family=lovelace", app.address))
            .bearer_auth(app.registrar())
            .header("x-purpose-of-use", "research")
            .send()
    };
    eventually(
        "research search leaves the opted-out patient out",
        || async {
            let body: Value = research_search(&app).await.unwrap().json().await.unwrap();
            body["items"].as_array().unwrap().is_empty()
        },
    )
    .await;

    // Withdrawing the share closes the partner's access again.
    let withdrawn = app
        .post(
            &format!("/v1/patients/{id}/consents/{shared}/withdraw"),
            &patient,
            &json!({ "reason": "changed my mind" }),
            &[("if-match", &format!("\"{version}\""))],
        )
        .await;
    assert_eq!(withdrawn.status(), 200);
    assert_eq!(read(&partner, None).await, 403);
    // Consents are the patient's own: nobody else's.
    let meddling = app
        .post(
            &format!("/v1/patients/{id}/consents"),
            &app.patient_token(&uuid::Uuid::new_v4().to_string()),
            &json!({ "directive": { "kind": "research-opt-out" } }),
            &[("if-match", "\"5\"")],
        )
        .await;
    assert_eq!(meddling.status(), 403);
    let invalid = app
        .post(
            &format!("/v1/patients/{id}/consents"),
            &patient,
            &json!({ "directive": { "kind": "share-with-everyone" } }),
            &[("if-match", "\"5\"")],
        )
        .await;
    assert_eq!(invalid.status(), 422);
    let problem: Value = invalid.json().await.unwrap();
    assert_eq!(error_fields(&problem), ["directive.kind"]);
    app.stop().await;
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_data_keys_without_touching_events() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_ok("Ada", "Lovelace", "1990-12-10").await);
    let events_before: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE aggregate_type = 'Patient' ORDER BY position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let wrapped_before: String =
        sqlx::query_scalar("SELECT master_key_id FROM patient_data_keys WHERE patient_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let new_master = "bmV3IG1hc3RlciBrZXkgb2YgdGhpcnR5LXR3byBieXQ=";
    let mut settings = app.settings.clone();
    let database_url = app.database_url.clone();
    app.stop().await;

    // Act
    let rotate = |previous: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"));
        command
            .args(["keys", "rotate"])
            .env("DATABASE_URL", &database_url)
            .env("APP_SECURITY__AUDIT_KEY", AUDIT_KEY)
            .env("APP_SECURITY__MASTER_KEY", new_master)
            .env("APP_LOG__LEVEL", "warn");
        if let Some(previous) = previous {
            command.env("APP_SECURITY__PREVIOUS_MASTER_KEYS", previous);
        }
        command.output().unwrap()
    };
    let without_old = rotate(None);
    let rotated = rotate(Some(MASTER_KEY));

    // Assert
    assert!(
        !without_old.status.success(),
        "the old master key is needed to unwrap"
    );
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&rotated.stdout),
        "1 data keys rewrapped\n"
    );
    settings.security.master_key = Some(secrecy::SecretString::from(new_master));
    settings.security.previous_master_keys = Vec::new();
    let app = TestApp::start(settings, command_api::startup::Roles::ALL).await;
    let read: Value = app
        .get(&format!("/v1/patients/{id}"), &app.registrar())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        read["name"]["family"], "Lovelace",
        "readable with the new key alone"
    );
    let events_after: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE aggregate_type = 'Patient' ORDER BY position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events_after, events_before);
    let wrapped_after: String =
        sqlx::query_scalar("SELECT master_key_id FROM patient_data_keys WHERE patient_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_ne!(wrapped_after, wrapped_before);
    app.stop().await;
}

#[tokio::test]
async fn the_retention_purge_forgets_patients_past_retention_except_those_on_legal_hold() {
    // Arrange: three archived patients (archived at the fixed clock's noon), one on legal hold,
    // and one active patient.
    let app = TestApp::without_kafka().await;
    let admin = app.token("admin-1", &["admin"]);
    let mut archived = Vec::new();
    for n in 0..3 {
        let id = id_of(&app.register_person(n, Some("Retired")).await);
        let response = app
            .command(&id, "archive", 1, &json!({ "reason": "left the practice" }))
            .await;
        assert_eq!(response.status(), 200);
        archived.push(id);
    }
    let held = app
        .post(
            &format!("/v1/patients/{}/legal-hold", archived[2]),
            &admin,
            &json!({ "reason": "records requested by a court" }),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(held.status(), 200);
    let active = id_of(&app.register_person(9, Some("Current")).await);
    eventually("the three archivals projected", || async {
        let archived: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projections.patient_search WHERE status = 'archived'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        archived == 3
    })
    .await;
    let purge = |dry_run: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"));
        command
            .args(["retention", "purge"])
            .env("DATABASE_URL", &app.database_url)
            .envs(SECURITY_ENV)
            .env("APP_RETENTION__ARCHIVED_DAYS", "0")
            .env("APP_LOG__LEVEL", "warn");
        if dry_run {
            command.arg("--dry-run");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    // Act
    let dry = purge(true);
    let after_dry = app
        .get(&format!("/v1/patients/{}", archived[0]), &admin)
        .await;
    let done = purge(false);

    // Assert
    assert_eq!(
        dry,
        "3 past retention; 0 forgotten; 0 on legal hold (dry run)\n"
    );
    assert_eq!(after_dry.status(), 200, "a dry run erases nobody");
    assert_eq!(done, "3 past retention; 2 forgotten; 1 on legal hold\n");
    for (id, expected) in [
        (&archived[0], 410),
        (&archived[1], 410),
        (&archived[2], 200),
        (&active, 200),
    ] {
        let status = app
            .get(&format!("/v1/patients/{id}"), &admin)
            .await
            .status();
        assert_eq!(status, expected, "{id}");
    }
    let reason: String = sqlx::query_scalar(
        "SELECT payload->'PatientForgotten'->>'reason' FROM events
          WHERE aggregate_id = $1 AND event_type = 'PatientForgotten'",
    )
    .bind(&archived[0])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reason, "retention-expired");
    app.stop().await;
}

#[tokio::test]
async fn audit_verify_fails_when_an_event_has_no_audit_entry() {
    // Arrange: two patients, both audited.
    let app = TestApp::without_kafka().await;
    app.register_person(1, None).await;
    let later = id_of(&app.register_person(2, None).await);
    audit_log_caught_up(&app).await;
    let (clean, report) = audit_verify(&app);
    assert!(clean, "{report}");
    let database_url = app.database_url.clone();
    app.stop().await;

    // Act: the newest entry removed and the chain head rolled back to the one before, so the
    // log's own chain still verifies: only the store shows the event unaudited.
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    let newest: (i64, String) = sqlx::query_as(
        "SELECT seq, detail->>'aggregate_id' FROM projections.audit_log ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        newest.1, later,
        "the newest entry is the later registration"
    );
    sqlx::query("DELETE FROM projections.audit_log WHERE seq = $1")
        .bind(newest.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE projections.audit_chain_head SET (seq, hash) =
           (SELECT seq, hash FROM projections.audit_log ORDER BY seq DESC LIMIT 1)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (clean, report) = audit_verify_at(&database_url);

    // Assert
    assert!(
        !clean,
        "an unaudited event must fail the verification: {report}"
    );
    let expected = format!("events Patient/{later} sequence 1: not in the audit log");
    assert!(
        report.lines().any(|l| l == expected),
        "missing `{expected}` in:\n{report}"
    );
}
