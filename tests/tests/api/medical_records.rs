//! Medical records over HTTP: every item type through its lifecycle (create, revise,
//! entered-in-error, versions, as-of, diff), the clinical safety checks, documents with text
//! extraction and full-text search, structured search across patients, erasure, and the topic.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use serde_json::{json, Value};

use crate::helpers::{
    assert_matches_schema_in, consume_until, consumer_for, error_fields, eventually, fixed_now,
    header, id_of, key, AppOptions, TestApp,
};

pub(crate) const CARE: &str = "dr-care";

/// Registers a patient whose care team includes [`CARE`]; returns the patient id.
pub(crate) async fn patient_in_care(app: &TestApp, n: u64) -> String {
    let id = id_of(&app.register_person(n, None).await);
    let care = app
        .command(
            &id,
            "care-relationships",
            1,
            &json!({ "practitioner": CARE, "role": "attending" }),
        )
        .await;
    assert_eq!(care.status(), 200, "{:?}", care.text().await);
    id
}

pub(crate) fn clinician(app: &TestApp) -> String {
    app.token(CARE, &["clinician"])
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
    if_match: Option<u64>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = app
        .client
        .request(method.clone(), format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(version) = if_match {
        request = request.header("if-match", format!("\"{version}\""));
    }
    let response = request.send().await.unwrap();
    let response = app.described(method.as_str(), path, response).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, headers)
}

/// GETs `path` until it answers 200 with a body `done` accepts (or panics at the deadline).
async fn poll(app: &TestApp, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    loop {
        let (status, body, _) = send(app, reqwest::Method::GET, path, token, None, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path}: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub(crate) fn allergy(substance: &str) -> Value {
    json!({
        "substance": { "system": "http://snomed.info/sct", "code": "764146007", "text": substance },
        "category": "medication",
        "criticality": "high",
        "reactions": [{ "manifestation": { "text": "Hives" }, "severity": "moderate" }],
        "clinical_status": "active",
        "verification_status": "confirmed",
        "onset": "2019-05-01",
        "note": "Rash within hours of the first dose"
    })
}

pub(crate) fn medication(text: &str) -> Value {
    json!({
        "medication": { "text": text },
        "dose": { "value": "500", "unit": "mg" },
        "route": "oral",
        "frequency": { "count": 3, "period": 1, "period_unit": "d" },
        "start": "2026-11-20",
        "status": "active",
        "prescriber": CARE,
        "reason_for_use": { "text": "Otitis media" }
    })
}

/// A body for each JSON kind, and the change its revision makes.
pub(crate) fn bodies() -> Vec<(&'static str, Value, (&'static str, Value))> {
    vec![
        (
            "allergies",
            allergy("Penicillin"),
            ("/criticality", json!("low")),
        ),
        (
            "medications",
            medication("Metformin 500 MG Oral Tablet"),
            ("/status", json!("on-hold")),
        ),
        (
            "immunizations",
            json!({
                "vaccine": { "system": "http://hl7.org/fhir/sid/cvx", "code": "208", "text": "COVID-19 mRNA" },
                "occurred_on": "2026-10-01",
                "lot_number": "EW0150",
                "site": "left-arm",
                "route": "intramuscular",
                "performer": "nurse-1",
                "status": "completed"
            }),
            ("/lot_number", json!("EW0151")),
        ),
        (
            "problems",
            json!({
                "condition": { "system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "text": "Type 2 diabetes mellitus" },
                "onset": "2018-03-01",
                "clinical_status": "active",
                "severity": "moderate"
            }),
            ("/severity", json!("mild")),
        ),
        (
            "history",
            json!({
                "category": "family",
                "description": { "text": "Breast cancer" },
                "relationship": "mother",
                "occurred_on": "2001-06-01"
            }),
            ("/relationship", json!("maternal aunt")),
        ),
    ]
}

fn with(body: &Value, pointer: &str, value: Value, reason: &str) -> Value {
    let mut body = body.clone();
    *body.pointer_mut(pointer).unwrap() = value;
    body["reason"] = json!(reason);
    body
}

#[tokio::test]
async fn every_item_type_is_recorded_revised_entered_in_error_versioned_and_diffed() {
    // Arrange: a clock the test moves a minute at a time, so versions have distinct times.
    let offset = Arc::new(AtomicI64::new(0));
    let moved = offset.clone();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        clock: Some(Arc::new(move || {
            fixed_now() + chrono::Duration::seconds(moved.load(Ordering::SeqCst))
        })),
        ..AppOptions::default()
    })
    .await;
    let id = patient_in_care(&app, 1).await;
    let token = clinician(&app);
    let minute = || offset.fetch_add(60, Ordering::SeqCst);

    for (segment, body, (pointer, changed)) in bodies() {
        let collection = format!("/v1/patients/{id}/{segment}");

        // Act: record.
        let (status, created, headers) = send(
            &app,
            reqwest::Method::POST,
            &collection,
            &token,
            Some(&body),
            None,
        )
        .await;

        // Assert
        assert_eq!(status, 201, "{segment}: {created}");
        assert_eq!(headers["etag"], "\"1\"");
        let item = created["item_id"].as_str().unwrap().to_owned();
        let href = format!("{collection}/{item}");
        assert_eq!(headers["location"], href.as_str());
        assert_eq!(created["version"], 1);
        let (status, read, _) = send(&app, reqwest::Method::GET, &href, &token, None, None).await;
        assert_eq!((status, &read), (200, &created), "{segment}");

        // Act: revise, with a stale version first.
        minute();
        let revision = with(&body, pointer, changed.clone(), "corrected after review");
        let (status, stale, _) = send(
            &app,
            reqwest::Method::PUT,
            &href,
            &token,
            Some(&revision),
            Some(7),
        )
        .await;
        assert_eq!(status, 412, "{segment}: {stale}");
        let (status, revised, headers) = send(
            &app,
            reqwest::Method::PUT,
            &href,
            &token,
            Some(&revision),
            Some(1),
        )
        .await;
        assert_eq!(status, 200, "{segment}: {revised}");
        assert_eq!(headers["etag"], "\"2\"");
        assert_eq!(revised.pointer(pointer), Some(&changed), "{segment}");
        let (status, unchanged, _) = send(
            &app,
            reqwest::Method::PUT,
            &href,
            &token,
            Some(&revision),
            Some(2),
        )
        .await;
        assert_eq!(status, 422, "{segment}: {unchanged}");
        assert_eq!(unchanged["code"], "revision-changes-nothing");

        // Act: entered in error.
        minute();
        let (status, marked, _) = send(
            &app,
            reqwest::Method::POST,
            &format!("{href}/entered-in-error"),
            &token,
            Some(&json!({ "reason": "recorded on the wrong patient" })),
            Some(2),
        )
        .await;
        assert_eq!(status, 200, "{segment}: {marked}");
        assert_eq!(marked["version"], 3);
        assert_eq!(
            marked["entered_in_error"]["reason"],
            "recorded on the wrong patient"
        );
        let (status, again, _) = send(
            &app,
            reqwest::Method::PUT,
            &href,
            &token,
            Some(&revision),
            Some(3),
        )
        .await;
        assert_eq!(
            (status, again["code"].as_str()),
            (409, Some("entered-in-error"))
        );
        let (_, list, _) = send(&app, reqwest::Method::GET, &collection, &token, None, None).await;
        assert_eq!(
            list["items"],
            json!([]),
            "{segment}: mistakes are not listed"
        );
        let (_, all, _) = send(
            &app,
            reqwest::Method::GET,
            &format!("{collection}?include_entered_in_error=true"),
            &token,
            None,
            None,
        )
        .await;
        assert_eq!(
            all["items"][0]["item_id"],
            item.as_str(),
            "{segment}: but kept"
        );

        // Assert: the versions read model.
        let versions = poll(&app, &format!("{href}/versions"), &token, |body| {
            body["versions"].as_array().is_some_and(|v| v.len() == 3)
        })
        .await;
        let v = &versions["versions"];
        assert_eq!(v[0]["changed_by"], CARE);
        assert_eq!(v[0]["reason"], Value::Null);
        assert_eq!(v[1]["reason"], "corrected after review");
        assert_eq!(v[2]["reason"], "recorded on the wrong patient");
        assert!(v[2]["event_type"]
            .as_str()
            .unwrap()
            .ends_with("EnteredInError"));
        assert_eq!(v[1]["item"].pointer(pointer), Some(&changed));
        let (status, second, _) = send(
            &app,
            reqwest::Method::GET,
            &format!("{href}/versions/2"),
            &token,
            None,
            None,
        )
        .await;
        assert_eq!((status, &second), (200, &v[1]));
        let (status, _, _) = send(
            &app,
            reqwest::Method::GET,
            &format!("{href}/versions/9"),
            &token,
            None,
            None,
        )
        .await;
        assert_eq!(status, 404);

        // Assert: the difference between versions as an RFC 6902 JSON Patch.
        let response = app.get(&format!("{href}/diff?from=1&to=2"), &token).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/json-patch+json"
        );
        let patch: Value = response.json().await.unwrap();
        assert_eq!(
            patch,
            json!([{ "op": "replace", "path": pointer, "value": changed }]),
            "{segment}"
        );
        let patch: Value = app
            .get(&format!("{href}/diff?from=2&to=3"), &token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(patch[0]["op"], "add");
        assert_eq!(patch[0]["path"], "/entered_in_error");
        let (status, problem, _) = send(
            &app,
            reqwest::Method::GET,
            &format!("{href}/diff?from=x"),
            &token,
            None,
            None,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(error_fields(&problem), ["to", "from"]);

        // Assert: as of a moment between the versions.
        let first_at = v[0]["changed_at"].as_str().unwrap();
        let as_of =
            chrono::DateTime::parse_from_rfc3339(first_at).unwrap() + chrono::Duration::seconds(30);
        let (status, then, _) = send(
            &app,
            reqwest::Method::GET,
            &format!("{href}?as_of={}", as_of.to_rfc3339().replace('+', "%2B")),
            &token,
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{then}");
        assert_eq!(then["version"], 1);
        assert_eq!(then["item"], v[0]["item"]);
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_items_are_refused_naming_every_field_and_nothing_is_written() {
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 2).await;
    let token = clinician(&app);
    let events = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE aggregate_type = 'MedicalRecord'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };

    let (status, problem, _) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/patients/{id}/allergies"),
        &token,
        Some(
            &json!({ "substance": { "code": "1" }, "category": "pets", "criticality": "high",
                      "clinical_status": "active", "verification_status": "confirmed",
                      "onset": "2030-01-01", "extra": true }),
        ),
        None,
    )
    .await;

    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "/problems/validation-error");
    let fields = error_fields(&problem);
    for field in [
        "extra",
        "substance.text",
        "substance.system",
        "category",
        "onset",
    ] {
        assert!(fields.contains(&field.to_owned()), "{field} in {fields:?}");
    }
    let (status, _, _) = send(
        &app,
        reqwest::Method::GET,
        &format!("/v1/patients/{id}/allergies/not-a-uuid"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(events().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn items_are_recorded_with_what_is_known_as_fhir_allows_and_still_meet_the_allergy_check() {
    // Arrange: what another system's lists and a patient's own account usually hold.
    let app = TestApp::spawn().await;
    let id = patient_in_care(&app, 4).await;
    let token = clinician(&app);
    let post = |segment: &'static str, body: Value| {
        let (app, token, id) = (&app, token.clone(), id.clone());
        async move {
            send(
                app,
                reqwest::Method::POST,
                &format!("/v1/patients/{id}/{segment}"),
                &token,
                Some(&body),
                None,
            )
            .await
        }
    };

    // Act
    let (status, allergy, _) = post(
        "allergies",
        json!({ "substance": { "text": "Penicillin" }, "clinical_status": "active" }),
    )
    .await;
    assert_eq!(status, 201, "{allergy}");
    let reported = json!({
        "medication": { "text": "Ibuprofen 200 MG Oral Tablet" },
        "status": "active",
        "source": "patient-reported",
    });
    let (status, ibuprofen, _) = post("medications", reported).await;
    let named = json!({
        "medication": { "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                        "code": "308182", "text": "Amoxicillin and penicillin 250 MG" },
        "status": "unknown",
        "source": "other-record",
    });
    let (warned, warning, _) = post("medications", named).await;

    // Assert: recorded as sent, nothing invented; the allergy check still applies.
    assert_eq!(status, 201, "{ibuprofen}");
    assert_eq!(ibuprofen["source"], "patient-reported");
    for absent in ["dose", "route", "frequency", "start", "prescriber"] {
        assert!(ibuprofen.get(absent).is_none(), "{absent}");
    }
    for absent in ["category", "criticality", "verification_status"] {
        assert!(allergy.get(absent).is_none(), "{absent}");
    }
    assert_eq!(warned, 409, "{warning}");
    assert_eq!(
        warning["warnings"],
        json!([{ "allergy_id": allergy["item_id"], "allergy_version": 1 }]),
        "no criticality where the allergy states none"
    );
    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::MEDICAL_RECORD
    );
    let consumer = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    let records = consume_until(&consumer, |r| {
        r.iter()
            .filter(|r| key(r) == id && r.payload().is_some())
            .count()
            >= 2
    })
    .await;
    for record in records.iter().filter(|r| key(r) == id) {
        let event_type = crate::helpers::published(record).event_type;
        let data = app.open(record).await;
        assert_matches_schema_in("medical-record/v1", &event_type, &data);
        let data: Value = serde_json::from_slice(&data).unwrap();
        if event_type == "MedicationRecorded" {
            assert_eq!(data["item"]["source"], "patient-reported", "{event_type}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_second_active_allergy_is_refused_and_a_matching_medication_needs_its_warning_acknowledged(
) {
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 3).await;
    let token = clinician(&app);
    let allergies = format!("/v1/patients/{id}/allergies");
    let medications = format!("/v1/patients/{id}/medications");
    let (status, first, _) = send(
        &app,
        reqwest::Method::POST,
        &allergies,
        &token,
        Some(&allergy("Penicillin")),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let allergy_id = first["item_id"].as_str().unwrap().to_owned();

    // Act + assert: the same substance again.
    let (status, problem, _) = send(
        &app,
        reqwest::Method::POST,
        &allergies,
        &token,
        Some(&allergy("penicillin")),
        None,
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "duplicate-allergy");
    assert_eq!(problem["existing_item_id"], allergy_id.as_str());

    // Act + assert: a medication the allergy names.
    let order = medication("Penicillin V Potassium 250 MG Oral Tablet");
    let (status, warning, _) = send(
        &app,
        reqwest::Method::POST,
        &medications,
        &token,
        Some(&order),
        None,
    )
    .await;
    assert_eq!(status, 409, "{warning}");
    assert_eq!(warning["type"], "/problems/allergy-warning");
    assert_eq!(
        warning["warnings"],
        json!([{ "allergy_id": allergy_id, "allergy_version": 1, "criticality": "high" }])
    );
    assert_eq!(
        warning["order"]["medication"]["text"],
        "Penicillin V Potassium 250 MG Oral Tablet"
    );
    let (_, list, _) = send(&app, reqwest::Method::GET, &medications, &token, None, None).await;
    assert_eq!(
        list["items"],
        json!([]),
        "nothing recorded without acknowledgement"
    );
    let mut wrong = order.clone();
    wrong["acknowledge_allergy_warnings"] = json!([uuid::Uuid::new_v4()]);
    let (status, problem, _) = send(
        &app,
        reqwest::Method::POST,
        &medications,
        &token,
        Some(&wrong),
        None,
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("acknowledged-warning-does-not-apply"))
    );

    let mut acknowledged = order.clone();
    acknowledged["acknowledge_allergy_warnings"] = json!([allergy_id]);
    let (status, recorded, _) = send(
        &app,
        reqwest::Method::POST,
        &medications,
        &token,
        Some(&acknowledged),
        None,
    )
    .await;
    assert_eq!(status, 201, "{recorded}");
    assert_eq!(
        recorded["acknowledged_warnings"],
        json!([{ "allergy_id": allergy_id, "allergy_version": 1, "acknowledged_by": CARE }])
    );
    // The acknowledgement is in the stored history, with who made it.
    let versions = format!(
        "{medications}/{}/versions",
        recorded["item_id"].as_str().unwrap()
    );
    eventually("the acknowledged order's version", || async {
        let (status, body, _) =
            send(&app, reqwest::Method::GET, &versions, &token, None, None).await;
        status == 200
            && body["versions"][0]["item"]["acknowledged_warnings"][0]["acknowledged_by"] == CARE
    })
    .await;
    // A medication no allergy names needs nothing.
    let (status, _, _) = send(
        &app,
        reqwest::Method::POST,
        &medications,
        &token,
        Some(&medication("Metformin")),
        None,
    )
    .await;
    assert_eq!(status, 201);
    // An allergy is never refused for what the patient takes; its answer names the
    // medications to review.
    let (status, late, _) = send(
        &app,
        reqwest::Method::POST,
        &allergies,
        &token,
        Some(
            &json!({ "substance": { "text": "Metformin" }, "category": "medication",
                      "criticality": "low", "clinical_status": "active",
                      "verification_status": "unconfirmed" }),
        ),
        None,
    )
    .await;
    assert_eq!(status, 201, "{late}");
    assert_eq!(
        late["medication_warnings"].as_array().unwrap().len(),
        1,
        "{late}"
    );
    // Auditors follow the record's history without its clinical content.
    let auditor = app.token("auditor-1", &["auditor"]);
    let (status, trail, _) = send(
        &app,
        reqwest::Method::GET,
        &format!("/v1/audit/streams/medical-record/{id}"),
        &auditor,
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    assert_eq!(trail["events"].as_array().unwrap().len(), 4);
    assert_eq!(trail["events"][0]["data"]["item_id"], allergy_id.as_str());
    assert!(!trail.to_string().contains("Penicillin"), "{trail}");
    app.stop().await;
}

/// A `multipart/form-data` body with the metadata part and a file part.
pub(crate) fn multipart(metadata: &Value, media_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("boundary-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"doc\"\r\nContent-Type: {media_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub(crate) async fn upload(
    app: &TestApp,
    token: &str,
    id: &str,
    title: &str,
    media_type: &str,
    bytes: &[u8],
) -> (u16, Value) {
    upload_to(
        &app.client,
        &app.address,
        token,
        id,
        title,
        media_type,
        bytes,
    )
    .await
}

/// [`upload`] to the service at `address`.
async fn upload_to(
    client: &reqwest::Client,
    address: &str,
    token: &str,
    id: &str,
    title: &str,
    media_type: &str,
    bytes: &[u8],
) -> (u16, Value) {
    let metadata = json!({
        "title": title,
        "document_type": { "system": "http://loinc.org", "code": "18842-5", "text": "Discharge summary" },
        "author": CARE,
        "date": "2026-11-20"
    });
    let (content_type, body) = multipart(&metadata, media_type, bytes);
    let response = client
        .post(format!("{address}/v1/patients/{id}/documents"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn documents_are_uploaded_extracted_searched_and_downloaded() {
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|settings| {
            settings.documents.max_bytes = 64 * 1024
        })),
        ..AppOptions::default()
    })
    .await;
    let id = patient_in_care(&app, 4).await;
    let token = clinician(&app);
    let pdf = synthetic::pdf(&["Discharge summary", "Severe anaphylaxis after amoxicillin"]);
    let documents: [(&str, &str, &[u8]); 4] = [
        ("Clinic letter", "text/plain", b"Seen today for hypertension follow-up. Blood pressure 128/82."),
        ("Care plan", "text/markdown", b"# Care plan\n\n* **Metformin** titration\n* Retinal screening"),
        ("Referral", "text/html", b"<html><body><h1>Referral</h1><p>Suspected <b>angina</b> &amp; dyspnoea<script>steal()</script></p></body></html>"),
        ("Discharge", "application/pdf", &pdf),
    ];
    let mut ids = Vec::new();
    for (title, media_type, bytes) in documents {
        let (status, body) = upload(&app, &token, &id, title, media_type, bytes).await;
        assert_eq!(status, 201, "{title}: {body}");
        assert_eq!(body["content"]["media_type"], media_type);
        assert_eq!(body["content"]["size"], bytes.len());
        assert!(
            body["content"]["text_length"].as_u64().unwrap() > 0,
            "{title}: {body}"
        );
        ids.push(body["item_id"].as_str().unwrap().to_owned());
    }

    // The bytes come back as uploaded, and never as a page of the API's origin.
    let response = app
        .get(
            &format!("/v1/patients/{id}/documents/{}/content", ids[3]),
            &token,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/pdf");
    assert_eq!(
        response.headers()["content-security-policy"],
        "sandbox; default-src 'none'"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), pdf.as_slice());

    // Full-text search over every format, ranked, with highlights.
    for (query, expected, mark) in [
        ("anaphylaxis", 3, "<mark>anaphylaxis</mark>"),
        ("angina", 2, "<mark>angina</mark>"),
        ("retinal screening", 1, "<mark>Retinal</mark>"),
        ("hypertension", 0, "<mark>hypertension</mark>"),
    ] {
        let path = format!(
            "/v1/patients/{id}/medical-record/search?q={}",
            query.replace(' ', "+")
        );
        let hits = poll(&app, &path, &token, |body| {
            body["items"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
        let top = &hits["items"][0];
        assert_eq!(top["item_id"], ids[expected].as_str(), "{query}: {hits}");
        assert_eq!(top["kind"], "document");
        let highlights = top["highlights"].to_string();
        assert!(highlights.contains(mark), "{query}: {highlights}");
        assert!(
            !highlights.contains("steal"),
            "{query}: scripts are not text"
        );
    }
    // Every result row counted as an access.
    let accesses: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Access'
            AND payload->>'action' = 'medical-record-search-result'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(accesses >= 4, "{accesses}");

    // Refusals: too large, a type not accepted, bytes that are not what they claim.
    let (status, _) = upload(
        &app,
        &token,
        &id,
        "Scan",
        "text/plain",
        &vec![b'a'; 70 * 1024],
    )
    .await;
    assert_eq!(status, 413);
    let (status, problem) =
        upload(&app, &token, &id, "Tool", "application/x-msdownload", b"MZ").await;
    assert_eq!(
        (status, error_fields(&problem)),
        (422, vec!["file".to_owned()])
    );
    let (status, problem) = upload(
        &app,
        &token,
        &id,
        "Fake",
        "application/pdf",
        b"%PDF-1.4 nothing",
    )
    .await;
    assert_eq!(
        (status, error_fields(&problem)),
        (422, vec!["file".to_owned()])
    );
    let (status, problem) = upload(&app, &token, &id, "", "text/plain", b"x").await;
    assert_eq!(
        (status, error_fields(&problem)),
        (422, vec!["metadata.title".to_owned()])
    );
    let (_, list, _) = send(
        &app,
        reqwest::Method::GET,
        &format!("/v1/patients/{id}/documents"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 4);

    // A document's description is revised; its content cannot be.
    let href = format!("/v1/patients/{id}/documents/{}", ids[0]);
    let (status, revised, _) = send(
        &app,
        reqwest::Method::PUT,
        &href,
        &token,
        Some(
            &json!({ "title": "Hypertension clinic letter", "document_type": { "text": "Letter" },
                      "author": CARE, "date": "2026-11-20", "reason": "clearer title" }),
        ),
        Some(1),
    )
    .await;
    assert_eq!(status, 200, "{revised}");
    let before = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item_id"] == ids[0].as_str())
        .unwrap();
    assert_eq!(revised["content"], before["content"]);
    app.stop().await;
}

#[tokio::test]
async fn structured_search_finds_patients_by_code_and_text_within_each_callers_reach() {
    let app = TestApp::without_kafka().await;
    let token = clinician(&app);
    let cared = patient_in_care(&app, 5).await;
    let other = id_of(&app.register_person(6, None).await);
    let nurse = app.token("dr-other", &["clinician"]);
    // `other` is cared for by dr-other.
    let care = app
        .command(
            &other,
            "care-relationships",
            1,
            &json!({ "practitioner": "dr-other", "role": "attending" }),
        )
        .await;
    assert_eq!(care.status(), 200);
    for (patient, who) in [(&cared, &token), (&other, &nurse)] {
        let (status, body, _) = send(
            &app,
            reqwest::Method::POST,
            &format!("/v1/patients/{patient}/allergies"),
            who,
            Some(&allergy("Penicillin")),
            None,
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut inactive = allergy("Latex");
    inactive["clinical_status"] = json!("resolved");
    let (status, _, _) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/patients/{cared}/allergies"),
        &token,
        Some(&inactive),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let problem = json!({ "condition": { "system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "text": "Type 2 diabetes" },
                          "clinical_status": "active" });
    let (status, _, _) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/patients/{other}/problems"),
        &nurse,
        Some(&problem),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let admin = app.token("admin-1", &["admin"]);

    let search = |token: String, query: &'static str| {
        let app = &app;
        async move {
            let (status, body, _) = send(
                app,
                reqwest::Method::GET,
                &format!("/v1/medical-records/search?{query}"),
                &token,
                None,
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let mut patients: Vec<String> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["patient_id"].as_str().unwrap().to_owned())
                .collect();
            patients.sort();
            patients
        }
    };
    let mut both = vec![cared.clone(), other.clone()];
    both.sort();
    eventually("both penicillin allergies indexed", || async {
        search(admin.clone(), "kind=allergy&text=penicillin&active=true").await == both
    })
    .await;
    // The resolved latex allergy was recorded last: wait until it is indexed too.
    eventually("the resolved latex allergy indexed", || async {
        search(admin.clone(), "kind=allergy&text=latex&status=resolved").await
            == vec![cared.clone()]
    })
    .await;
    assert_eq!(
        search(admin.clone(), "kind=allergy&text=latex&active=true").await,
        Vec::<String>::new()
    );
    eventually("the diabetes problem indexed", || async {
        search(
            admin.clone(),
            "kind=problem&system=http://hl7.org/fhir/sid/icd-10&code=E11.9",
        )
        .await
            == vec![other.clone()]
    })
    .await;
    // Pages and their cursors name only what the caller may see.
    let (status, page, _) = send(
        &app,
        reqwest::Method::GET,
        "/v1/medical-records/search?kind=allergy&text=penicillin&active=true&limit=1",
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["patient_id"], cared.as_str());
    let next = page["next"].as_str().unwrap().to_owned();
    assert!(!next.contains(&other), "{next}");
    let (status, rest, _) = send(&app, reqwest::Method::GET, &next, &token, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(rest["items"], json!([]));
    assert_eq!(rest.get("next"), None);
    let (status, problem, _) = send(
        &app,
        reqwest::Method::GET,
        "/v1/medical-records/search?kind=allergy&status=on-hold",
        &admin,
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, error_fields(&problem)),
        (400, vec!["status".to_owned()])
    );
    // A clinician sees only the patients they care for.
    assert_eq!(
        search(token.clone(), "kind=allergy&text=penicillin&active=true").await,
        vec![cared.clone()]
    );
    // Bad criteria name their parameter.
    let (status, problem, _) = send(
        &app,
        reqwest::Method::GET,
        "/v1/medical-records/search?kind=pets",
        &admin,
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_fields(&problem), ["kind", "code"]);
    let (status, _, _) = send(
        &app,
        reqwest::Method::GET,
        "/v1/medical-records/search?kind=allergy&active=true",
        &app.registrar(),
        None,
        None,
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn forgetting_a_patient_erases_their_medical_record_everywhere() {
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 7).await;
    let token = clinician(&app);
    let (status, _, _) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/patients/{id}/allergies"),
        &token,
        Some(&allergy("Penicillin")),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = upload(
        &app,
        &token,
        &id,
        "Letter",
        "text/plain",
        b"penicillin rash",
    )
    .await;
    assert_eq!(status, 201);
    let rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM projections.medical_record_versions WHERE patient_id = $1)
                  + (SELECT count(*) FROM projections.medical_record_items WHERE patient_id = $1)",
        )
        .bind(uuid::Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    eventually("the read model to hold the items", || async {
        rows().await == 4
    })
    .await;
    let admin = app.token("admin-1", &["admin"]);

    let (status, body, _) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/patients/{id}/forget"),
        &admin,
        Some(&json!({ "reason": "patient-request" })),
        Some(2),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    eventually("the read model to drop the patient", || async {
        rows().await == 0
    })
    .await;
    let (status, _, _) = send(
        &app,
        reqwest::Method::GET,
        &format!("/v1/patients/{id}/allergies"),
        &admin,
        None,
        None,
    )
    .await;
    assert_eq!(status, 410);
    // Sealed as they were, the stored contents named the hash of the plain bytes and their
    // size: they go in the erasure's transaction.
    let blobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM document_blobs WHERE patient_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        blobs, 0,
        "no stored document of a forgotten patient remains"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_medical_record_event_type_is_published_keyed_by_patient_and_matches_its_schema() {
    let app = TestApp::spawn().await;
    let id = patient_in_care(&app, 8).await;
    let token = clinician(&app);
    let mut kinds = bodies();
    kinds.push(("documents", Value::Null, ("/title", json!("Revised title"))));
    for (segment, body, (pointer, changed)) in kinds {
        let (status, created) = if segment == "documents" {
            upload(
                &app,
                &token,
                &id,
                "Letter",
                "text/plain",
                b"Follow-up in two weeks",
            )
            .await
        } else {
            let (s, b, _) = send(
                &app,
                reqwest::Method::POST,
                &format!("/v1/patients/{id}/{segment}"),
                &token,
                Some(&body),
                None,
            )
            .await;
            (s, b)
        };
        assert_eq!(status, 201, "{segment}: {created}");
        let href = format!(
            "/v1/patients/{id}/{segment}/{}",
            created["item_id"].as_str().unwrap()
        );
        let revision = if segment == "documents" {
            json!({ "title": changed, "document_type": { "text": "Letter" }, "author": CARE, "date": "2026-11-20", "reason": "typo" })
        } else {
            with(&body, pointer, changed, "typo")
        };
        let (status, revised, _) = send(
            &app,
            reqwest::Method::PUT,
            &href,
            &token,
            Some(&revision),
            Some(1),
        )
        .await;
        assert_eq!(status, 200, "{segment}: {revised}");
        let (status, _, _) = send(
            &app,
            reqwest::Method::POST,
            &format!("{href}/entered-in-error"),
            &token,
            Some(&json!({ "reason": "wrong chart" })),
            Some(2),
        )
        .await;
        assert_eq!(status, 200, "{segment}");
    }

    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::MEDICAL_RECORD
    );
    let consumer = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    let records = consume_until(&consumer, |r| r.len() >= 18).await;

    let mut types: Vec<String> = Vec::new();
    for record in &records {
        assert_eq!(key(record), id, "keyed by patient");
        assert_eq!(header(record, "ce_subject").as_deref(), Some(id.as_str()));
        let event_type = crate::helpers::published(record).event_type;
        let data = app.open(record).await;
        assert_matches_schema_in("medical-record/v1", &event_type, &data);
        let data: Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(data["patient_id"], id.as_str());
        types.push(event_type);
    }
    types.sort();
    let mut expected: Vec<String> = schemas::medical_record::v1::EVENT_TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    expected.sort();
    assert_eq!(types, expected);
    // Sealed on the wire: no clinical text in any record as sent.
    assert!(records
        .iter()
        .all(|r| !String::from_utf8_lossy(r.payload().unwrap()).contains("Penicillin")));
    app.stop().await;
}

#[tokio::test]
async fn documents_can_live_in_a_directory_sealed_and_addressed_by_their_hash() {
    let dir = std::env::temp_dir().join(format!("documents-{}", uuid::Uuid::new_v4().simple()));
    let configured = dir.clone();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(move |settings| {
            settings.documents.storage = "directory".into();
            settings.documents.directory = Some(configured.clone());
        })),
        ..AppOptions::default()
    })
    .await;
    let id = patient_in_care(&app, 9).await;
    let token = clinician(&app);
    let letter = b"Referral for cataract surgery";

    let (status, created) = upload(&app, &token, &id, "Referral", "text/plain", letter).await;

    assert_eq!(status, 201, "{created}");
    let sha256 = created["content"]["sha256"].as_str().unwrap();
    let stored = std::fs::read(dir.join(&id).join(sha256)).unwrap();
    assert!(
        !stored.windows(8).any(|w| w == b"cataract"),
        "sealed at rest"
    );
    let blobs: i64 = sqlx::query_scalar("SELECT count(*) FROM document_blobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(blobs, 0, "nothing in the database");
    let content = app
        .get(
            &format!(
                "/v1/patients/{id}/documents/{}/content",
                created["item_id"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(content.bytes().await.unwrap().as_ref(), letter);
    poll(
        &app,
        &format!("/v1/patients/{id}/medical-record/search?q=cataract"),
        &token,
        |body| body["items"].as_array().is_some_and(|i| i.len() == 1),
    )
    .await;

    // Forgetting the patient removes their folder too.
    let (status, body, _) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/patients/{id}/forget"),
        &app.token("admin-1", &["admin"]),
        Some(&json!({ "reason": "patient-request" })),
        Some(2),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually("the forgotten patient's folder to go", || async {
        !dir.join(&id).exists()
    })
    .await;
    app.stop().await;
    let _removed = std::fs::remove_dir_all(&dir);
}

/// The children of process `parent`, with their command lines (a zombie's is empty).
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Gone since the listing, or not ours to read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (name) state ppid ...`, where the name may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            children.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    children
}

#[tokio::test]
async fn a_document_past_its_extraction_time_limit_is_refused_and_costs_no_more_than_its_limit() {
    // Arrange: the API as a process of its own (extraction is configured per process) with a
    // 2 s limit, on a test app's database, and a document whose HTML parses in quadratic time:
    // 400,000 nested <div>s, 2 MB.
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 12).await;
    let token = clinician(&app);
    let limit = Duration::from_secs(2);
    let (mut service, address) = crate::helpers::api_process(
        &app,
        &[(
            "APP_DOCUMENTS__EXTRACTION_TIMEOUT_MS",
            limit.as_millis().to_string(),
        )],
    )
    .await;
    let pid = service.0.id();
    let nested = "<div>".repeat(400_000);
    let hostile = |title: &'static str| {
        upload_to(
            &app.client,
            &address,
            &token,
            &id,
            title,
            "text/html",
            nested.as_bytes(),
        )
    };

    // Act: two at once, enough to take every extraction slot; then an ordinary document.
    let started = Instant::now();
    let mut seen = Vec::new();
    let (first, second) = {
        let uploads = async { tokio::join!(hostile("Nested 1"), hostile("Nested 2")) };
        tokio::pin!(uploads);
        loop {
            tokio::select! {
                answers = &mut uploads => break answers,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    seen.extend(children_of(pid));
                }
            }
        }
    };
    let answered_in = started.elapsed();
    let (status, ordinary) = upload_to(
        &app.client,
        &address,
        &token,
        &id,
        "Letter",
        "text/html",
        b"<p>Follow-up in two weeks</p>",
    )
    .await;

    // Assert: refused as too slow, within a few times the limit, by a child process that is
    // gone, and the slots are free again.
    for (status, problem) in [first, second] {
        assert_eq!(
            (status, error_fields(&problem)),
            (422, vec!["file".to_owned()]),
            "{problem}"
        );
        assert_eq!(
            problem["errors"][0]["message"], "text extraction took too long",
            "{problem}"
        );
    }
    assert!(
        answered_in < limit * 5,
        "answered after {answered_in:?} with a limit of {limit:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, cmdline)| cmdline.contains("extract-text")),
        "extraction runs in a child process: {seen:?}"
    );
    let deadline = Instant::now() + limit;
    while !children_of(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "children left running or unreaped: {:?}",
            children_of(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 201, "{ordinary}");
    assert!(
        ordinary["content"]["text_length"].as_u64().unwrap() > 0,
        "{ordinary}"
    );
    // Nothing left running keeps the service from stopping.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + crate::helpers::DEADLINE;
    let stopped = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the API did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(stopped.success(), "the API exited with {stopped}");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_writers_to_one_medical_record_all_succeed() {
    // Arrange: one patient, ten different allergies and fifty documents, all sent at once and
    // without If-Match (the service reading all fifty uploads at once: this is about writers
    // racing for one record, not about the cap on uploads read at once).
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|settings| {
            settings.documents.max_concurrent_uploads = 64;
        })),
        ..AppOptions::default()
    })
    .await;
    let id = patient_in_care(&app, 11).await;
    let token = clinician(&app);
    let substances: Vec<String> = (0..10).map(|n| format!("Substance {n}")).collect();

    // Act
    let allergies = futures::future::join_all(substances.iter().map(|substance| {
        let mut body = allergy(substance);
        body["substance"] = json!({ "text": substance });
        let (app, id, token) = (&app, &id, &token);
        async move {
            send(
                app,
                reqwest::Method::POST,
                &format!("/v1/patients/{id}/allergies"),
                token,
                Some(&body),
                None,
            )
            .await
        }
    }))
    .await;
    let documents = futures::future::join_all((0..50).map(|n| {
        let (app, id, token) = (&app, &id, &token);
        async move {
            upload(
                app,
                token,
                id,
                &format!("Letter {n}"),
                "text/plain",
                format!("Follow-up letter number {n}").as_bytes(),
            )
            .await
        }
    }))
    .await;

    // Assert
    for (status, body, _) in &allergies {
        assert_eq!(*status, 201, "{body}");
    }
    for (status, body) in &documents {
        assert_eq!(*status, 201, "{body}");
    }
    let (status, record, _) = send(
        &app,
        reqwest::Method::GET,
        &format!("/v1/patients/{id}/medical-record"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(record["version"], 60, "{record}");
    app.stop().await;
}

/// A digest of every row of every read model table (bookkeeping times left out): equal
/// digests, equal read models.
async fn read_model_digests(pool: &sqlx::PgPool) -> Vec<(String, Option<String>)> {
    let mut digests = Vec::new();
    for table in [
        "patient_search",
        "patient_match",
        "patient_match_keys",
        "medical_record_versions",
        "medical_record_items",
        "medical_record_forgotten",
        "appointments",
        "audit_log",
        "audit_chain_head",
        "applied_sequences",
        "parked_messages",
    ] {
        // The audit chain's id is new with every build of the log, by design: its entries and
        // head are what must be equal.
        let row = if table == "audit_chain_head" {
            "(t.seq, t.hash)::text"
        } else {
            "t::text"
        };
        let digest: Option<String> = sqlx::query_scalar(&format!(
            "SELECT md5(string_agg({row}, '|' ORDER BY {row})) FROM projections.{table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        digests.push((table.to_owned(), digest));
    }
    digests
}

/// Every index and constraint of the read model tables, by name with its definition: what
/// later migrations rely on.
async fn read_model_catalog(pool: &sqlx::PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT c.relname::text, i.relname::text, pg_get_indexdef(i.oid)
           FROM pg_index x
           JOIN pg_class c ON c.oid = x.indrelid
           JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'projections'
         UNION ALL
         SELECT c.relname::text, k.conname::text, pg_get_constraintdef(k.oid)
           FROM pg_constraint k
           JOIN pg_class c ON c.oid = k.conrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'projections'
          ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_read_model_rebuilt_in_one_pass_equals_the_one_projected_as_events_came() {
    // Arrange: patients, every kind of item recorded, revised and some entered in error, a
    // patient archived, reads that leave access entries; projected as they came.
    let app = TestApp::without_kafka().await;
    let token = clinician(&app);
    let mut last = String::new();
    let mut first = String::new();
    for n in 0..3 {
        let id = patient_in_care(&app, 40 + n).await;
        if n == 0 {
            first = id.clone();
        }
        for (i, (segment, body, (pointer, changed))) in bodies().into_iter().enumerate() {
            let collection = format!("/v1/patients/{id}/{segment}");
            let (status, created, _) = send(
                &app,
                reqwest::Method::POST,
                &collection,
                &token,
                Some(&body),
                None,
            )
            .await;
            assert_eq!(status, 201, "{segment}: {created}");
            let href = format!("{collection}/{}", created["item_id"].as_str().unwrap());
            let revision = with(&body, pointer, changed, "corrected");
            let (status, _, _) = send(
                &app,
                reqwest::Method::PUT,
                &href,
                &token,
                Some(&revision),
                Some(1),
            )
            .await;
            assert_eq!(status, 200, "{segment}");
            if (i + n as usize) % 3 == 0 {
                let reason = json!({ "reason": "wrong patient" });
                let (status, _, _) = send(
                    &app,
                    reqwest::Method::POST,
                    &format!("{href}/entered-in-error"),
                    &token,
                    Some(&reason),
                    Some(2),
                )
                .await;
                assert_eq!(status, 200, "{segment}");
            }
            let (status, _, _) = send(&app, reqwest::Method::GET, &href, &token, None, None).await;
            assert_eq!(status, 200);
        }
        last = id;
    }
    // An appointment booked and one booked and cancelled, for the appointments model: for a
    // patient who stays active (archiving one cancels their appointments in the background,
    // which would race the digests below).
    let booked_for = first.clone();
    let admin = app.token("admin-1", &["admin"]);
    let template = json!({ "time_zone": "Europe/Zurich", "slot_minutes": 30,
        "hours": [{ "weekday": "mon", "start": "08:00", "end": "12:00" }] });
    for (path, body) in [
        (
            "/v1/resources/dr-rebuild",
            json!({ "kind": "practitioner", "name": "Dr Rebuild", "specialty": "general", "template": template }),
        ),
        (
            "/v1/services/checkup",
            json!({ "name": "Checkup", "minutes": 30, "specialty": "general" }),
        ),
    ] {
        let response = app
            .client
            .put(format!("{}{path}", app.address))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{path}");
    }
    let scheduler = app.token("scheduler-1", &["scheduler"]);
    for (start, cancel) in [
        ("2026-11-30T07:00:00Z", false),
        ("2026-11-30T07:30:00Z", true),
    ] {
        let booking = json!({ "patient_id": booked_for, "service": "checkup", "start": start });
        let response = app
            .post("/v1/appointments", &scheduler, &booking, &[])
            .await;
        assert_eq!(response.status(), 201);
        let booked: Value = response.json().await.unwrap();
        if cancel {
            let path = format!(
                "/v1/appointments/{}/cancel",
                booked["appointment_id"].as_str().unwrap()
            );
            let response = app
                .post(
                    &path,
                    &scheduler,
                    &json!({ "reason": "patient-sick" }),
                    &[("if-match", "\"1\"")],
                )
                .await;
            assert_eq!(response.status(), 200);
        }
    }
    let archived = app
        .command(&last, "archive", 2, &json!({ "reason": "moved away" }))
        .await;
    assert_eq!(archived.status(), 200);
    // Every read model has applied everything stored.
    eventually("every read model current", || async {
        let current: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projections.stream_checkpoints c
               JOIN (SELECT transaction_id::text::bigint AS x, position FROM events
                      ORDER BY transaction_id DESC, position DESC LIMIT 1) AS newest
                 ON (c.transaction_id, c.position) = (newest.x, newest.position)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        current == 5
    })
    .await;
    let projected = read_model_digests(&app.pool).await;
    let catalog = read_model_catalog(&app.pool).await;
    let database_url = app.database_url.clone();
    app.stop().await;

    // Act
    let rebuilt = std::process::Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .arg("rebuild")
        .env("DATABASE_URL", &database_url)
        .envs(crate::helpers::SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap();

    // Assert
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    for table in [
        "patient_search",
        "medical_record_items",
        "appointments",
        "audit_log",
    ] {
        assert!(
            projected
                .iter()
                .any(|(t, digest)| t == table && digest.is_some()),
            "{table} holds rows"
        );
    }
    assert_eq!(read_model_digests(&pool).await, projected);
    // The fresh tables were swapped in with the live ones' indexes and constraints, under
    // their names, and nothing of the rebuild is left beside them.
    assert_eq!(read_model_catalog(&pool).await, catalog);
    let leftover: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'projections_rebuild')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!leftover);
}

fn history(text: &str) -> Value {
    json!({
        "category": "family",
        "description": { "text": text },
        "relationship": "mother",
        "occurred_on": "2001-06-01"
    })
}

#[tokio::test]
async fn a_long_chart_is_loaded_from_a_sealed_snapshot_that_goes_with_the_patients_erasure() {
    // Arrange: a chart past its first snapshot.
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 60).await;
    let token = clinician(&app);
    let every = event_store::records::SNAPSHOT_EVERY;
    let mut first = String::new();
    for n in 0..every + 3 {
        let (status, created, _) = send(
            &app,
            reqwest::Method::POST,
            &format!("/v1/patients/{id}/history"),
            &token,
            Some(&history(&format!("Walks daily {n}"))),
            None,
        )
        .await;
        assert_eq!(status, 201, "{created}");
        if n == 0 {
            first = created["item_id"].as_str().unwrap().to_owned();
        }
    }

    // Assert: one snapshot (stored beside the command), after the last multiple of its
    // interval, sealed.
    let snapshot = || async {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT sequence, sealed::text FROM aggregate_snapshots
              WHERE aggregate_type = 'MedicalRecord' AND aggregate_id = $1",
        )
        .bind(&id)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    };
    eventually("the snapshot stored", || async {
        snapshot().await.is_some()
    })
    .await;
    let (sequence, sealed) = snapshot().await.unwrap();
    assert_eq!(sequence, every as i64);
    assert!(!sealed.contains("Walks daily"), "the snapshot is sealed");

    // Act: change an item recorded before the snapshot, and one after it; read the chart.
    // (This process keeps the chart's state between loads: dropped, so the load is the
    // snapshot's, as in a process that has not loaded this chart lately.)
    event_store::states::forget(&id);
    let revised = with(
        &history("Walks daily 0"),
        "/relationship",
        json!("father"),
        "corrected",
    );
    let (status, body, _) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/patients/{id}/history/{first}"),
        &token,
        Some(&revised),
        Some(1),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    let (status, stale, _) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/patients/{id}/history/{first}"),
        &token,
        Some(&revised),
        Some(1),
    )
    .await;
    assert_eq!(
        status, 412,
        "the snapshot knows the item's version: {stale}"
    );

    // Erasure takes the snapshot with the key, and the state kept in memory.
    let (status, _, _) = send(
        &app,
        reqwest::Method::GET,
        &format!("/v1/patients/{id}/history"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
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
        sqlx::query_scalar("SELECT count(*) FROM aggregate_snapshots WHERE aggregate_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
    assert!(
        !event_store::states::holds(&id),
        "the chart's opened state went with the key"
    );
}

#[tokio::test]
async fn observations_procedures_and_encounters_live_in_streams_of_their_own_with_the_item_lifecycle(
) {
    // Arrange
    let app = TestApp::spawn().await;
    let id = patient_in_care(&app, 31).await;
    let other = patient_in_care(&app, 32).await;
    let token = clinician(&app);
    let post = |segment: &'static str, body: Value| {
        let (app, token, id) = (&app, token.clone(), id.clone());
        async move {
            send(
                app,
                reqwest::Method::POST,
                &format!("/v1/patients/{id}/{segment}"),
                &token,
                Some(&body),
                None,
            )
            .await
        }
    };
    let glucose = json!({
        "code": { "system": "http://loinc.org", "code": "2339-0", "text": "Glucose [Mass/volume] in Blood" },
        "category": "laboratory",
        "status": "final",
        "effective": "2026-11-26T08:15:00+01:00",
        "value_quantity": { "value": "95", "unit": "mg/dL" },
        "interpretation": { "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N", "text": "Normal" },
        "reference_range": { "low": { "value": "70", "unit": "mg/dL" }, "high": { "value": "99", "unit": "mg/dL" } }
    });
    let pressure = json!({
        "code": { "system": "http://loinc.org", "code": "85354-9", "text": "Blood pressure panel" },
        "category": "vital-signs",
        "status": "final",
        "effective": "2026-11-26",
        "components": [
            { "code": { "system": "http://loinc.org", "code": "8480-6", "text": "Systolic" },
              "value_quantity": { "value": "118", "unit": "mm[Hg]" } },
            { "code": { "system": "http://loinc.org", "code": "8462-4", "text": "Diastolic" },
              "value_quantity": { "value": "76", "unit": "mm[Hg]" } }
        ]
    });
    let procedure = json!({
        "code": { "system": "http://snomed.info/sct", "code": "73761001", "text": "Colonoscopy" },
        "status": "completed",
        "performed_start": "2026-11-20T09:00:00Z",
        "performed_end": "2026-11-20T09:40:00Z",
        "performer": "dr-gastro"
    });
    let encounter = json!({
        "status": "finished",
        "class": "AMB",
        "encounter_type": { "system": "http://snomed.info/sct", "code": "185349003", "text": "Check up" },
        "start": "2026-11-26T08:00:00Z",
        "end": "2026-11-26T08:30:00Z",
        "practitioner": CARE,
        "location": "Room 4"
    });

    // Act
    let (status, observation, headers) = post("observations", glucose.clone()).await;
    let (bp_status, bp, _) = post("observations", pressure).await;
    let (p_status, performed, _) = post("procedures", procedure).await;
    let (e_status, visit, _) = post("encounters", encounter).await;

    // Assert: recorded, each in a stream of its own (never in the medical record's).
    assert_eq!(
        (status, bp_status, p_status, e_status),
        (201, 201, 201, 201),
        "{observation} {bp} {performed} {visit}"
    );
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(
        observation["value"],
        json!({ "type": "quantity", "value": "95", "unit": "mg/dL" })
    );
    assert_eq!(observation["effective"], "2026-11-26T07:15:00Z", "in UTC");
    assert_eq!(bp["components"][1]["value"]["value"], "76");
    let streams: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, count(*) FROM events
          WHERE aggregate_type IN ('MedicalRecord', 'ClinicalEntry')
          GROUP BY aggregate_type ORDER BY aggregate_type",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(streams, [("ClinicalEntry".to_owned(), 4)]);
    let entries: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'ClinicalEntry'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(entries, 4, "one stream each");

    // Read, listed, revised with a reason, entered in error, versioned.
    let href = observation["href"].as_str().unwrap().to_owned();
    let (status, read, _) = send(&app, reqwest::Method::GET, &href, &token, None, None).await;
    assert_eq!((status, &read), (200, &observation));
    let listed = poll(
        &app,
        &format!("/v1/patients/{id}/observations"),
        &token,
        |b| b["items"].as_array().is_some_and(|items| items.len() == 2),
    )
    .await;
    let mut listed: Vec<&Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["item_id"])
        .collect();
    listed.sort_by_key(|v| v.to_string());
    let mut expected = vec![&observation["item_id"], &bp["item_id"]];
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(listed, expected);
    let amended = with(&glucose, "/status", json!("amended"), "wrong sample");
    let (status, _, _) = send(
        &app,
        reqwest::Method::PUT,
        &href,
        &token,
        Some(&amended),
        Some(3),
    )
    .await;
    assert_eq!(status, 412);
    let (status, revised, _) = send(
        &app,
        reqwest::Method::PUT,
        &href,
        &token,
        Some(&amended),
        Some(1),
    )
    .await;
    assert_eq!((status, &revised["version"]), (200, &json!(2)), "{revised}");
    assert_eq!(revised["status"], "amended");
    let procedure_href = performed["href"].as_str().unwrap().to_owned();
    let (status, struck, _) = send(
        &app,
        reqwest::Method::POST,
        &format!("{procedure_href}/entered-in-error"),
        &token,
        Some(&json!({ "reason": "wrong patient" })),
        Some(1),
    )
    .await;
    assert_eq!(status, 200, "{struck}");
    assert_eq!(struck["entered_in_error"]["reason"], "wrong patient");
    let versions = poll(&app, &format!("{href}/versions"), &token, |b| {
        b["versions"].as_array().is_some_and(|v| v.len() == 2)
    })
    .await;
    assert_eq!(versions["versions"][1]["reason"], "wrong sample");

    // Another patient's path does not reach it.
    let elsewhere = href.replace(&id, &other);
    let (status, _, _) = send(&app, reqwest::Method::GET, &elsewhere, &token, None, None).await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        &app,
        reqwest::Method::PUT,
        &elsewhere,
        &token,
        Some(&amended),
        Some(2),
    )
    .await;
    assert_eq!(status, 404);

    // Published on their own topic, keyed by patient, sealed, matching their schemas.
    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::CLINICAL_ENTRY
    );
    let consumer = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    let records = consume_until(&consumer, |r| r.len() >= 6).await;
    let mut types = Vec::new();
    for record in &records {
        assert_eq!(key(record), id, "keyed by patient");
        let event = crate::helpers::published(record);
        assert!(event.sealed);
        let data = app.open(record).await;
        assert_matches_schema_in("clinical-entry/v1", &event.event_type, &data);
        types.push(event.event_type);
    }
    types.sort();
    assert_eq!(
        types,
        [
            "EncounterRecorded",
            "ObservationRecorded",
            "ObservationRecorded",
            "ObservationRevised",
            "ProcedureEnteredInError",
            "ProcedureRecorded"
        ]
    );
    app.stop().await;
}
