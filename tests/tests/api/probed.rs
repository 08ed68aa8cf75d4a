//! Defects found by probing the running service from outside, each shown fixed: NUL characters
//! where text enters, images that are not images, declared lengths over the limit, uploads
//! without a cap, slow request heads, tokens issued in the future, bodies in another charset,
//! repeated multipart parts, and `null` where a list goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{id_of, AppOptions, TestApp};
use crate::medical_records::{clinician, multipart, patient_in_care, upload};

/// The fields a problem+json names, in order.
async fn fields_named(response: reqwest::Response) -> (u16, Vec<String>) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let fields = body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (status, fields)
}

/// The events stored but the access entries (a refused request is an access too).
async fn stored_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Access'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_nul_character_is_refused_where_text_enters_naming_the_field_and_changes_nothing() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 9980).await;
    let admin = app.token("admin-1", &["admin"]);
    let auditor = app.token("auditor-1", &["auditor"]);
    let scheduler = app.token("scheduler-1", &["scheduler"]);
    let before = stored_events(&app).await;

    // Act and assert: every parameter the probe found answering 500, and a path.
    for (path, token, field) in [
        (
            format!("/v1/patients/{id}/medical-record/search?q=pain%00"),
            clinician(&app),
            "q",
        ),
        (
            "/v1/medical-records/search?q=a%00b".to_owned(),
            clinician(&app),
            "q",
        ),
        (
            "/v1/audit/entries?action=read%00".to_owned(),
            auditor.clone(),
            "action",
        ),
        (
            "/v1/audit/entries?user=u%00".to_owned(),
            auditor.clone(),
            "user",
        ),
        (
            "/v1/resources?room_type=exam%00".to_owned(),
            admin.clone(),
            "room_type",
        ),
        (
            "/v1/availability?service=consult%00&from=2026-11-30&to=2026-12-01".to_owned(),
            scheduler.clone(),
            "service",
        ),
        ("/v1/resources/dr%00x".to_owned(), admin.clone(), "path"),
    ] {
        let (status, fields) = fields_named(app.get(&path, &token).await).await;
        assert_eq!((status, fields), (400, vec![field.to_owned()]), "{path}");
    }
    for (path, body, token) in [
        (
            "/v1/appointments",
            json!({ "patient_id": id, "service": "consult\u{0}", "start": "2026-12-01T08:00:00Z" }),
            scheduler.clone(),
        ),
        (
            "/v1/waitlist",
            json!({ "patient_id": id, "service": "consult\u{0}",
                    "window": { "start": "2026-12-01T08:00:00Z", "end": "2026-12-02T08:00:00Z" } }),
            scheduler.clone(),
        ),
    ] {
        let (status, fields) = fields_named(app.post(path, &token, &body, &[]).await).await;
        assert_eq!(
            (status, fields),
            (422, vec!["service".to_owned()]),
            "{path}"
        );
    }
    // Deep in a body, and in a member's name.
    let mut registration = synthetic::registration(9981, None);
    registration["contact"]["addresses"] =
        json!([{ "lines": ["Main St", "Flat\u{0}2"], "city": "Bern", "country": "CH" }]);
    let (status, fields) = fields_named(app.register(&registration).await).await;
    assert_eq!(
        (status, fields),
        (422, vec!["contact.addresses[0].lines[1]".to_owned()])
    );
    // The FHIR API answers in its own words.
    let response = app
        .get("/fhir/R4/Patient?name=Ada%00", &app.registrar())
        .await;
    assert_eq!(response.status(), 400);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["expression"][0], "name");
    assert_eq!(stored_events(&app).await - before, 0, "nothing stored");
    app.stop().await;
}

#[tokio::test]
async fn an_image_whose_bytes_are_not_an_image_is_refused_naming_file() {
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 9982).await;
    let token = clinician(&app);
    for media_type in ["image/png", "image/jpeg", "image/tiff"] {
        let (status, body) = upload(&app, &token, &id, "Scan", media_type, b"not a png").await;
        assert_eq!(status, 422, "{media_type}: {body}");
        assert_eq!(body["errors"][0]["field"], "file", "{media_type}: {body}");
    }
    for (media_type, bytes) in [
        ("image/png", &b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..]),
        ("image/jpeg", &b"\xff\xd8\xff\xe0\0\x10JFIF"[..]),
        ("image/tiff", &b"II*\0\x08\0\0\0"[..]),
    ] {
        let (status, body) = upload(&app, &token, &id, "Scan", media_type, bytes).await;
        assert_eq!(status, 201, "{media_type}: {body}");
    }
    app.stop().await;
}

/// Sends `head` (a request's head, no body) on a fresh connection and returns the status line
/// answered, waiting at most `within`.
async fn status_line(app: &TestApp, head: &str, within: Duration) -> String {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(within, stream.read(&mut answer))
        .await
        .expect("an answer before the body was sent")
        .unwrap();
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 9983).await;
    let token = clinician(&app);
    let host = app.address.trim_start_matches("http://").to_owned();
    for (path, content_type, length) in [
        (
            format!("/v1/patients/{id}/documents"),
            "multipart/form-data; boundary=x",
            1_099_511_627_776_u64,
        ),
        // Just over this route's limit (the document limit and room for the metadata).
        (
            format!("/v1/patients/{id}/documents"),
            "multipart/form-data; boundary=x",
            app.settings.documents.max_bytes as u64 + 64 * 1024 + 1,
        ),
        (
            "/v1/patients".to_owned(),
            "application/json",
            1_099_511_627_776,
        ),
        (
            "/fhir/R4/Patient".to_owned(),
            "application/fhir+json",
            1_099_511_627_776,
        ),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        );
        let line = status_line(&app, &head, Duration::from_secs(10)).await;
        assert!(line.contains(" 413 "), "{path} ({length}): {line}");
    }
    app.stop().await;
}

#[tokio::test]
async fn uploads_beyond_the_concurrent_limit_answer_503_with_retry_after_at_once() {
    // Arrange: one upload at a time, and one held open mid-body.
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|settings| {
            settings.documents.max_concurrent_uploads = 1;
        })),
        ..AppOptions::default()
    })
    .await;
    let id = patient_in_care(&app, 9984).await;
    let token = clinician(&app);
    let (mut slow, mut rest) = upload_held_open(&app, &id, &token).await;
    let (content_type, body) = multipart(
        &json!({
            "title": "Another",
            "document_type": { "system": "http://loinc.org", "code": "18842-5", "text": "Discharge summary" },
            "author": crate::medical_records::CARE,
            "date": "2026-11-20"
        }),
        "text/plain",
        b"another upload",
    );

    // Act: another upload while the first holds the only place. The held one takes it once
    // its request is authorized; should another get there first, the held one is the one
    // refused, and is opened again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        if answered(&slow) {
            (slow, rest) = upload_held_open(&app, &id, &token).await;
        }
        let response = app
            .client
            .post(format!("{}/v1/patients/{id}/documents", app.address))
            .bearer_auth(&token)
            .header("content-type", &content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if response.status() == 503 && !answered(&slow) {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "never refused: {}",
            response.status()
        );
    };

    // Assert: refused at once, told when to come back; the held upload goes on when finished.
    assert!(refused.headers().contains_key("retry-after"));
    slow.write_all(&rest).await.unwrap();
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let line = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(line.starts_with("HTTP/1.1 201"), "{line}");
    app.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_its_request_head_slowly_is_cut_off() {
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|settings| {
            settings.http.head_timeout_ms = 300;
        })),
        ..AppOptions::default()
    })
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    // Half a head, then nothing.
    stream
        .write_all(format!("GET /health/live HTTP/1.1\r\nHost: {address}\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = vec![0; 512];
    // The server answers 408 or simply closes; either way the connection ends.
    let mut ended = false;
    while started.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => {
                ended = true;
                break;
            }
            Ok(Ok(_)) => continue,
            Err(_) => break,
        }
    }
    assert!(ended, "the connection was held open");
    assert!(started.elapsed() < Duration::from_secs(5));
    app.stop().await;
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_person(9985, None).await);
    let token = |iat: i64| {
        let claims = json!({ "sub": "registrar-1", "roles": ["registrar"], "iat": iat,
                             "exp": iat + 3600 });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let now = chrono::Utc::now().timestamp();
    let later = app
        .get(&format!("/v1/patients/{id}"), &token(now + 3600))
        .await;
    assert_eq!(later.status(), 401);
    // Within the allowed clock skew, it is today's token.
    let skewed = app
        .get(&format!("/v1/patients/{id}"), &token(now + 10))
        .await;
    assert_eq!(skewed.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_body_in_another_charset_than_utf8_is_refused() {
    let app = TestApp::without_kafka().await;
    let body = synthetic::registration(9986, None).to_string();
    for content_type in [
        "application/json; charset=utf-16",
        "application/json;charset=\"ISO-8859-1\"",
    ] {
        let response = app
            .client
            .post(format!("{}/v1/patients", app.address))
            .bearer_auth(app.registrar())
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{content_type}");
    }
    let response = app
        .client
        .post(format!("{}/v1/patients", app.address))
        .bearer_auth(app.registrar())
        .header("content-type", "application/json; charset=UTF-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = app
        .client
        .post(format!("{}/fhir/R4/Patient", app.address))
        .bearer_auth(app.registrar())
        .header("content-type", "application/fhir+json; charset=utf-16")
        .body(json!({ "resourceType": "Patient" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    app.stop().await;
}

#[tokio::test]
async fn a_multipart_body_with_two_files_or_two_metadata_parts_is_refused() {
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 9987).await;
    let token = clinician(&app);
    let metadata =
        json!({ "title": "Twice", "author": crate::medical_records::CARE, "date": "2026-11-20" });
    let (content_type, once) = multipart(&metadata, "text/plain", b"first");
    let boundary = content_type.split("boundary=").nth(1).unwrap().to_owned();
    let part = |name: &str, body: &str, media_type: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"x\"\r\nContent-Type: {media_type}\r\n\r\n{body}\r\n"
        )
    };
    let before = stored_events(&app).await;
    for (twice, field) in [
        (part("file", "second", "text/plain"), "file"),
        (
            part("metadata", &metadata.to_string(), "application/json"),
            "metadata",
        ),
    ] {
        // The first two parts, then the repeated one before the closing boundary.
        let closing = format!("--{boundary}--\r\n");
        let mut body = once[..once.len() - closing.len()].to_vec();
        body.extend_from_slice(twice.as_bytes());
        body.extend_from_slice(closing.as_bytes());
        let response = app
            .client
            .post(format!("{}/v1/patients/{id}/documents", app.address))
            .bearer_auth(&token)
            .header("content-type", &content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, fields) = fields_named(response).await;
        assert_eq!((status, fields), (422, vec![field.to_owned()]), "{field}");
    }
    assert_eq!(stored_events(&app).await - before, 0, "nothing stored");
    app.stop().await;
}

#[tokio::test]
async fn null_where_a_list_goes_is_refused_naming_the_field() {
    let app = TestApp::without_kafka().await;
    let mut registration = synthetic::registration(9988, None);
    registration["languages"] = Value::Null;
    registration["contact"]["phones"] = Value::Null;
    let (status, fields) = fields_named(app.register(&registration).await).await;
    assert_eq!(status, 422);
    let mut fields = fields;
    fields.sort();
    assert_eq!(fields, ["contact.phones", "languages"]);
    // `null` where one value goes still reads as left out.
    let mut registration = synthetic::registration(9989, None);
    registration["marital_status"] = Value::Null;
    assert_eq!(app.register(&registration).await.status(), 201);
    app.stop().await;
}

/// Whether the server has answered on `stream` already (the request held open was refused).
fn answered(stream: &tokio::net::TcpStream) -> bool {
    let mut peek = [0; 1];
    // Nothing to read yet is `WouldBlock`: the request is still in flight.
    stream.try_read(&mut peek).is_ok()
}

/// Opens a connection and starts an upload whose body it holds back: the request stays in
/// flight (reading its body) until the returned stream sends the rest.
async fn upload_held_open(
    app: &TestApp,
    id: &str,
    token: &str,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let host = app.address.trim_start_matches("http://").to_owned();
    let metadata = json!({
        "title": "Held",
        "document_type": { "system": "http://loinc.org", "code": "18842-5", "text": "Discharge summary" },
        "author": crate::medical_records::CARE,
        "date": "2026-11-20"
    });
    let (content_type, body) = multipart(&metadata, "text/plain", b"held open");
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /v1/patients/{id}/documents HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..20]).await.unwrap();
    (stream, body[20..].to_vec())
}

#[tokio::test]
async fn beyond_the_requests_in_flight_the_service_answers_503_at_once_and_health_still_answers() {
    // Arrange: one request at a time, and one held in flight.
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|settings| {
            settings.http.max_in_flight = 1;
        })),
        ..AppOptions::default()
    })
    .await;
    let id = patient_in_care(&app, 9990).await;
    let token = clinician(&app);
    let (mut held, mut rest) = upload_held_open(&app, &id, &token).await;

    // Act: another request while the first is in flight. Should the other get there first,
    // the held one is the one shed, and is opened again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shed = loop {
        if answered(&held) {
            (held, rest) = upload_held_open(&app, &id, &token).await;
        }
        let response = app.get(&format!("/v1/patients/{id}"), &token).await;
        if response.status() == 503 && !answered(&held) {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "never shed: {}",
            response.status()
        );
    };

    // Assert: shed at once with Retry-After, as problem+json, and as an OperationOutcome in
    // the FHIR API; the health checks still answer.
    assert_eq!(shed.headers()["retry-after"], "1");
    let problem: Value = shed.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/overloaded");
    let fhir = app.get(&format!("/fhir/R4/Patient/{id}"), &token).await;
    assert_eq!(fhir.status(), 503);
    let outcome: Value = fhir.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let live = app
        .client
        .get(format!("{}/health/live", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    // The request in flight finishes, and the next is served.
    held.write_all(&rest).await.unwrap();
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), held.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 201"));
    let after = app.get(&format!("/v1/patients/{id}"), &token).await;
    assert_eq!(after.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_client_sending_its_body_slowly_or_idling_between_requests_is_cut_off() {
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|settings| {
            settings.http.request_timeout_secs = 1;
            settings.http.head_timeout_ms = 500;
        })),
        ..AppOptions::default()
    })
    .await;
    let id = patient_in_care(&app, 9991).await;
    let token = clinician(&app);

    // A body that never finishes: the request times out (503), the connection is not held.
    let started = Instant::now();
    let (mut held, _) = upload_held_open(&app, &id, &token).await;
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), held.read(&mut answer))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A kept-alive connection that sends nothing after its answer is closed.
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(format!("GET /health/live HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buffer = vec![0; 1024];
    let first = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..first]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match idle.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection was held open");
    app.stop().await;
}
