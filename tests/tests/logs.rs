//! No patient data in logs: the service is driven with recognisable patient data through
//! every kind of request (including bad ones and a likely duplicate), at debug level, with
//! Kafka, and the captured log output is searched for that data. Its own test binary, so the
//! log capture sees this test alone.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tracing_subscriber::fmt::MakeWriter;

#[path = "api/described.rs"]
mod described;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Patient data that must never reach a log line, as sent and as the service may store it.
const PHI: &[&str] = &[
    "Xylophonia",
    "Quenby",
    "1977-07-17",
    "+41791112233",
    "79 111 22 33",
    "quenby.x@example.org",
    "Zwetschgenweg",
    "qzx 4711",
    "756.1234.5678.97",
    "7561234567897",
    "allergic to the registrar",
    "Emergencia",
    "Quokkafruit",
    "Xylonote",
    "Zanzibarine",
];

#[tokio::test]
async fn recognisable_patient_data_never_reaches_the_logs() {
    // Arrange: every log line at debug level goes to the capture.
    let capture = Capture::default();
    let mut settings = command_api::configuration::Settings::base().unwrap().log;
    settings.level = "debug".into();
    command_api::telemetry::init_subscriber(command_api::telemetry::get_subscriber(
        &settings,
        capture.clone(),
    ));
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let patient = json!({
        "name": { "given": ["Quenby"], "family": "Xylophonia" },
        "birth_date": "1977-07-17",
        "gender": "other",
        "identifiers": [{ "system": "urn:oid:2.16.756.5.32", "value": "756.1234.5678.97", "national": true }],
        "contact": {
            "phones": [{ "number": "+41 79 111 22 33" }],
            "emails": [{ "address": "quenby.x@example.org" }],
            "addresses": [{ "lines": ["Zwetschgenweg 3"], "city": "Zürich", "postal_code": "QZX 4711", "country": "CH" }]
        }
    });
    let registrar = app.registrar();
    let clinician = app.token("c", &["clinician"]);

    // Act: the good, the bad and the duplicate.
    let created: serde_json::Value = app.register(&patient).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    app.get(&format!("/v1/patients/{id}"), &clinician).await;
    for query in [
        "family=Xylophonia",
        "name=Xylophnia%20Quenby",
        "phone=%2B41791112233",
        "email=quenby.x@example.org",
        "identifier=urn:oid:2.16.756.5.32%7C756.1234.5678.97",
        "postal_code=QZX%204711",
        "birth_date=1977-07-17",
    ] {
        app.get(&format!("/v1/patients?{query}"), &clinician).await;
    }
    app.search_until("family=xylophonia", 1).await;
    eventually("the matcher to know the patient", || async {
        let found: serde_json::Value = app
            .post("/v1/patients/$match", &registrar, &patient, &[])
            .await
            .json()
            .await
            .unwrap();
        found["candidates"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    let duplicate = app.register(&patient).await;
    assert_eq!(duplicate.status(), 409);
    let mut bad = patient.clone();
    bad["birth_date"] = json!("Xylophonia");
    bad["gender"] = json!("Quenby");
    assert_eq!(app.register(&bad).await.status(), 422);
    app.get("/v1/patients/Xylophonia-Quenby-1977-07-17", &clinician)
        .await;
    app.command(
        &id,
        "correct-demographics",
        1,
        &json!({ "gender": "unknown", "reason": "allergic to the registrar" }),
    )
    .await;
    app.post(
        &format!("/v1/patients/{id}/emergency-contacts"),
        &registrar,
        &json!({ "name": { "given": [], "family": "Emergencia" }, "relationship": "friend", "phones": [{ "number": "+41791112233" }] }),
        &[("if-match", "\"2\"")],
    )
    .await;
    // The medical record: items, a safety warning, a bad body, a document, searches, versions.
    let current = app.get(&format!("/v1/patients/{id}"), &registrar).await;
    let etag = current.headers()["etag"].to_str().unwrap().to_owned();
    let care = app
        .post(
            &format!("/v1/patients/{id}/care-relationships"),
            &registrar,
            &json!({ "practitioner": "c", "role": "attending" }),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(care.status(), 200);
    let allergy = json!({ "substance": { "text": "Quokkafruit" }, "category": "food", "criticality": "high",
                          "clinical_status": "active", "verification_status": "confirmed", "note": "Xylonote rash" });
    let recorded: serde_json::Value = app
        .post(
            &format!("/v1/patients/{id}/allergies"),
            &clinician,
            &allergy,
            &[],
        )
        .await
        .json()
        .await
        .unwrap();
    let allergy_id = recorded["item_id"].as_str().unwrap().to_owned();
    let mut order = json!({ "medication": { "text": "Quokkafruit extract" }, "dose": { "value": "1", "unit": "mL" },
                            "route": "oral", "frequency": { "count": 1, "period": 1, "period_unit": "d" },
                            "start": "2026-11-01", "status": "active", "prescriber": "c" });
    let warned = app
        .post(
            &format!("/v1/patients/{id}/medications"),
            &clinician,
            &order,
            &[],
        )
        .await;
    assert_eq!(warned.status(), 409);
    order["acknowledge_allergy_warnings"] = json!([allergy_id]);
    let prescribed = app
        .post(
            &format!("/v1/patients/{id}/medications"),
            &clinician,
            &order,
            &[],
        )
        .await;
    assert_eq!(prescribed.status(), 201);
    let mut bad_allergy = allergy.clone();
    bad_allergy["category"] = json!("Quokkafruit");
    let refused = app
        .post(
            &format!("/v1/patients/{id}/allergies"),
            &clinician,
            &bad_allergy,
            &[],
        )
        .await;
    assert_eq!(refused.status(), 422);
    let boundary = "log-test-boundary";
    let upload = app
        .client
        .post(format!("{}/v1/patients/{id}/documents", app.address))
        .bearer_auth(&clinician)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"Zanzibarine.txt\"\r\nContent-Type: text/plain\r\n\r\nZanzibarine letter about Xylonote\r\n--{boundary}--\r\n",
            json!({ "title": "Zanzibarine", "document_type": { "text": "Letter" }, "author": "c", "date": "2026-11-01" })
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 201);
    eventually("the record to be searchable", || async {
        let hits: serde_json::Value = app
            .get(
                &format!("/v1/patients/{id}/medical-record/search?q=Zanzibarine"),
                &clinician,
            )
            .await
            .json()
            .await
            .unwrap();
        hits["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    app.get(
        "/v1/medical-records/search?kind=allergy&text=Quokkafruit",
        &clinician,
    )
    .await;
    app.get(
        &format!("/v1/patients/{id}/allergies/{allergy_id}/versions"),
        &clinician,
    )
    .await;
    app.get(
        &format!("/v1/patients/{id}/allergies/{allergy_id}/diff?from=1&to=1"),
        &clinician,
    )
    .await;
    // Security paths: break-the-glass, the audit trail, data keys, consent, legal hold, erasure.
    let emergency = app
        .client
        .get(format!("{}/v1/patients/{id}", app.address))
        .bearer_auth(&clinician)
        .header("x-break-glass-reason", "emergency-treatment")
        .send()
        .await
        .unwrap();
    assert_eq!(emergency.status(), 200);
    let auditor = app.token("auditor-1", &["auditor"]);
    app.get(&format!("/v1/audit/streams/patient/{id}"), &auditor)
        .await;
    app.get(&format!("/v1/audit/entries?patient={id}"), &auditor)
        .await;
    app.get(
        &format!("/v1/patients/{id}/data-key"),
        &app.token("downstream", &["service"]),
    )
    .await;
    let admin = app.token("admin-1", &["admin"]);
    let steps = [
        (
            "legal-hold",
            admin.clone(),
            json!({ "reason": "Xylophonia v. Quenby" }),
        ),
        (
            "legal-hold/release",
            admin.clone(),
            json!({ "reason": "settled with Quenby" }),
        ),
        (
            "consents",
            app.patient_token(&id),
            json!({ "directive": { "kind": "research-opt-out" } }),
        ),
        (
            "forget",
            admin.clone(),
            json!({ "reason": "patient-request", "reference": "DSR-1" }),
        ),
    ];
    for (action, token, body) in steps {
        let current = app.get(&format!("/v1/patients/{id}"), &registrar).await;
        let etag = current.headers()["etag"].to_str().unwrap().to_owned();
        let response = app
            .post(
                &format!("/v1/patients/{id}/{action}"),
                &token,
                &body,
                &[("if-match", &etag)],
            )
            .await;
        assert_eq!(response.status(), 200, "{action}");
    }
    app.get(&format!("/v1/patients/{id}/disclosures"), &admin)
        .await;
    consume(&consumer, 3).await;
    app.stop().await;

    // Assert
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_lowercase();
    assert!(logs.contains("patient registered"), "the capture works");
    assert!(logs.contains(&id), "ids are logged");
    let leaked: Vec<&&str> = PHI
        .iter()
        .filter(|p| logs.contains(&p.to_lowercase()))
        .collect();
    assert!(leaked.is_empty(), "patient data in the logs: {leaked:?}");
}
