//! Projectors take nothing on a topic on trust: a record produced by anyone with produce rights
//! is applied only if it verifies (its `ce_id` is the identity of type, subject and sequence,
//! its value is sealed where the contract seals it, and a sealed value opens bound to that
//! identity). What does not verify is parked, counted, and never shadows the genuine event.

use std::time::Duration;

use projections::runtime::{parked_counts, ParkedCount, STREAM_PARTITION};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use schemas::envelope::event_id;
use schemas::PublishedEvent;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// Writes a record to the app's patient topic as any client with produce rights could.
pub(crate) async fn produce(
    app: &TestApp,
    key: &str,
    headers: &[(String, String)],
    payload: &[u8],
) {
    produce_to(app, &app.topic(), key, headers, payload).await;
}

/// Writes a record to `topic` as any client with produce rights could.
pub(crate) async fn produce_to(
    app: &TestApp,
    topic: &str,
    key: &str,
    headers: &[(String, String)],
    payload: &[u8],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set(
            "bootstrap.servers",
            app.settings.kafka.brokers.as_deref().unwrap(),
        )
        .create()
        .unwrap();
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name.as_str(),
            value: Some(value.as_bytes()),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The headers of a consumed record, as sent.
fn headers_of(record: &OwnedMessage) -> Vec<(String, String)> {
    record
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap(),
            )
        })
        .collect()
}

/// `headers` with `name` set to `value`.
fn with_header(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let v = if k == name { value } else { v.as_str() };
            (k.clone(), v.to_owned())
        })
        .collect()
}

/// The reason and message of every record `projector` parked, oldest first.
async fn parked(app: &TestApp, projector: &str) -> Vec<(i32, String, String)> {
    sqlx::query_as(
        "SELECT partition, reason, error FROM projections.parked_messages
          WHERE projector = $1 ORDER BY parked_at, \"offset\"",
    )
    .bind(projector)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Waits until `projector` parked `n` records and returns them.
async fn parked_until(app: &TestApp, projector: &str, n: usize) -> Vec<(i32, String, String)> {
    eventually(&format!("{n} records parked by {projector}"), || async {
        parked(app, projector).await.len() >= n
    })
    .await;
    parked(app, projector).await
}

fn count(counts: &[ParkedCount], projector: &str, reason: &str) -> i64 {
    counts
        .iter()
        .find(|c| c.projector == projector && c.reason == reason)
        .map_or(0, |c| c.count)
}

#[tokio::test]
async fn a_plaintext_patient_event_produced_to_the_topic_is_parked_and_never_searchable() {
    // Arrange: projectors consuming, and a well-formed PatientRegistered in the clear, with the
    // ce_id it would have, as anyone with produce rights could write it.
    let app = TestApp::spawn().await;
    app.register_person(1, Some("Genuine")).await;
    app.search_until("family=genuine", 1).await;
    let forged = Uuid::new_v4();
    let data = serde_json::to_vec(&json!({
        "patient_id": forged, "mrn": "0000000018",
        "name": { "given": ["Mallory"], "family": "Forgedname" },
        "birth_date": "1980-01-01", "gender": "unknown",
        "registered_at": "2026-11-27T12:00:00Z"
    }))
    .unwrap();
    assert_matches_schema("PatientRegistered", &data);
    let event = PublishedEvent {
        id: event_id("Patient", &forged.to_string(), 1),
        event_type: "PatientRegistered".into(),
        major_version: 1,
        time: fixed_now(),
        subject: forged.to_string(),
        sequence: 1,
        position: 1,
        epoch: 0,
        request_id: None,
        traceparent: None,
        user_id: Some("mallory".into()),
        event_hash: None,
        sealed: false,
        data,
    };
    let headers: Vec<(String, String)> = event
        .headers()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();

    // Act
    produce(&app, &forged.to_string(), &headers, &event.data).await;

    // Assert: parked by every projector of the topic, with ids only, and applied by none.
    for projector in ["patient_search", "patient_match", "audit_log"] {
        let rows = parked_until(&app, projector, 1).await;
        let (_, reason, error) = &rows[0];
        assert_eq!(reason, "unverified", "{projector}: {error}");
        assert!(error.contains("in the clear"), "{projector}: {error}");
        assert!(
            !error.contains("Mallory") && !error.contains("Forgedname"),
            "{projector}: {error}"
        );
    }
    assert!(app.search_until("family=forgedname", 0).await.is_empty());
    let counts = parked_counts(&app.pool).await.unwrap();
    assert_eq!(count(&counts, "patient_search", "unverified"), 1);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projections.audit_log WHERE patient_id = $1")
            .bind(forged)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_old_sealed_event_replayed_at_a_new_sequence_is_parked_and_the_genuine_one_applied() {
    // Arrange: a patient with two events, and their sealed records as published.
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let body = app.register_person(2, Some("Replayed")).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let corrected = app
        .command(
            &id,
            "correct-demographics",
            1,
            &json!({ "gender": "other", "reason": "r" }),
        )
        .await;
    assert_eq!(corrected.status(), 200);
    let records = consume_until(&consumer, |rs| {
        rs.iter().filter(|r| key(r) == id).count() >= 2
    })
    .await;
    let first = records
        .iter()
        .find(|r| key(r) == id && header(r, "ce_sequence").as_deref() == Some("1"))
        .unwrap();
    let sealed_value = first.payload().unwrap().to_vec();
    let old_headers = headers_of(first);
    eventually("the search read model at version 2", || async {
        app.search_until("family=replayed", 1).await[0]["version"] == 2
    })
    .await;
    // Sequence 1's sealed value at sequence 3, once with the ce_id of 3 recomputed (headers
    // consistent, value bound to 1) and once with sequence 1's ce_id kept.
    let recomputed = with_header(
        &with_header(&old_headers, "ce_sequence", "3"),
        "ce_id",
        &event_id("Patient", &id, 3).to_string(),
    );
    let kept_id = with_header(&old_headers, "ce_sequence", "3");

    // Act: the replays arrive before the genuine sequence 3, which then comes.
    produce(&app, &id, &recomputed, &sealed_value).await;
    produce(&app, &id, &kept_id, &sealed_value).await;
    let search_parked = parked_until(&app, "patient_search", 2).await;
    let audit_parked = parked_until(&app, "audit_log", 2).await;
    let genuine = app
        .command(
            &id,
            "correct-demographics",
            2,
            &json!({ "gender": "male", "reason": "r" }),
        )
        .await;
    assert_eq!(genuine.status(), 200);

    // Assert: both replays parked; the genuine sequence 3 applied, not dropped as a repeat.
    let mut reasons: Vec<&str> = search_parked.iter().map(|(_, r, _)| r.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["unopenable", "unverified"], "{search_parked:?}");
    assert!(
        audit_parked.iter().all(|(_, r, _)| r == "unverified"),
        "{audit_parked:?}"
    );
    eventually(
        "the genuine sequence 3 in the search read model",
        || async {
            let found = app.search_until("family=replayed", 1).await;
            found[0]["version"] == 3 && found[0]["gender"] == "male"
        },
    )
    .await;
    let genuine_id = event_id("Patient", &id, 3);
    eventually("the genuine sequence 3 in the audit log", || async {
        let action: Option<String> =
            sqlx::query_scalar("SELECT action FROM projections.audit_log WHERE entry_id = $1")
                .bind(genuine_id)
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        action.as_deref() == Some("DemographicsCorrected")
    })
    .await;
    let counts = parked_counts(&app.pool).await.unwrap();
    assert_eq!(count(&counts, "patient_search", "unopenable"), 1);
    assert_eq!(count(&counts, "patient_search", "unverified"), 1);
    assert_eq!(count(&counts, "audit_log", "unverified"), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_plaintext_row_in_the_event_store_is_parked_by_the_stream_fed_projectors_without_stalling_them(
) {
    // Arrange: no broker; a PatientRegistered row in the clear and without a hash, written
    // straight into the event store by someone with database access.
    let app = TestApp::without_kafka().await;
    let planted = Uuid::new_v4();
    let payload: Value = json!({ "PatientRegistered": {
        "patient_id": planted, "mrn": "0000000018",
        "name": { "given": ["Planted"], "family": "Plaintext" },
        "birth_date": "1980-01-01", "gender": "unknown",
        "registered_at": "2026-11-27T12:00:00Z"
    }});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Patient', $1, 1, 'PatientRegistered', '1.0', $2, '{}')",
    )
    .bind(planted.to_string())
    .bind(&payload)
    .execute(&app.pool)
    .await
    .unwrap();

    // Act
    let rows = parked_until(&app, "patient_search", 1).await;
    app.register_person(3, Some("Afterwards")).await;

    // Assert: parked with the stream's partition, not applied, and the feed moved on.
    let (partition, reason, error) = &rows[0];
    assert_eq!(*partition, STREAM_PARTITION);
    assert_eq!(reason, "unverified", "{error}");
    assert!(!error.contains("Planted"), "{error}");
    app.search_until("family=afterwards", 1).await;
    assert!(app.search_until("family=plaintext", 0).await.is_empty());
    app.stop().await;
}
