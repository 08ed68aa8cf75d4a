//! The audit chain's head published to `patients.audit-head.v1` and `audit verify` checking
//! the database against it: the newest events removed together with their audit entries and
//! the chain head moved back verify by the chains alone, and are caught by the published head;
//! a head record produced without the audit key is ignored.

use std::process::{Command, Output};
use std::sync::Arc;

use rdkafka::message::Message;

use command_api::configuration::Settings;

use crate::helpers::*;

/// `audit verify` on the database and topics of `settings`, without the topics unless `kafka`.
fn audit_verify(settings: &Settings, kafka: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"));
    command
        .args(["audit", "verify"])
        .env("DATABASE_URL", app_url(settings))
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn");
    if kafka {
        command
            .env("KAFKA_BROKERS", settings.kafka.brokers.as_deref().unwrap())
            .env("APP_KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix);
    }
    command.output().unwrap()
}

/// Waits for a head at entry `seq` on the audit head topic; every record on the way matches
/// the contract's schema, closed.
async fn head_published(consumer: &rdkafka::consumer::StreamConsumer, seq: i64) {
    let records = consume_until(consumer, |records| {
        records.iter().any(|r| {
            r.payload()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .is_some_and(|head| head["seq"] == seq)
        })
    })
    .await;
    for record in &records {
        assert_matches_schema_in("audit-head/v1", "AuditChainHead", record.payload().unwrap());
    }
}

#[tokio::test]
async fn audit_verify_catches_the_newest_events_removed_with_their_audit_entries() {
    // Arrange: the head published each second; one patient audited and its head published,
    // then a second.
    let app = TestApp::spawn_with(AppOptions {
        configure: Some(Arc::new(|settings| {
            settings.kafka.audit_head_interval_secs = 1;
        })),
        ..AppOptions::default()
    })
    .await;
    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::AUDIT_HEAD
    );
    let heads = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    app.register_ok("Ann", "Audited", "1980-01-02").await;
    let first = audit_log_complete(&app).await;
    head_published(&heads, first).await;
    app.register_ok("Bea", "Removed", "1981-02-03").await;
    let second = audit_log_complete(&app).await;
    assert!(second > first);
    head_published(&heads, second).await;
    // A record produced by someone without the audit key, claiming a head far ahead.
    let chain_id: uuid::Uuid =
        sqlx::query_scalar("SELECT chain_id FROM projections.audit_chain_head")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let forged = serde_json::json!({
        "chain_id": chain_id, "seq": second + 100, "hash": "00".repeat(32),
        "read_at": "2026-11-30T00:00:00Z", "mac": "11".repeat(32),
    })
    .to_string();
    crate::untrusted_records::produce_to(
        &app,
        &topic,
        &chain_id.to_string(),
        &[],
        forged.as_bytes(),
    )
    .await;
    let settings = app.settings.clone();
    app.stop().await;
    let pool = sqlx::PgPool::connect(&app_url(&settings)).await.unwrap();
    let clean = audit_verify(&settings, true);
    let out = String::from_utf8_lossy(&clean.stdout).into_owned();
    assert!(clean.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "audit head: the chain holds entry {second} as published"
        )),
        "{out}"
    );
    assert!(
        out.contains("audit head: 1 records on the topic without the audit key's MAC, ignored"),
        "{out}"
    );

    // Act: the second patient's events removed with their audit entries, the head moved back
    // to the first's last entry (a superuser switching the triggers off).
    let mut tx = pool.begin().await.unwrap();
    for sql in [
        "SET LOCAL session_replication_role = replica".to_owned(),
        format!(
            "DELETE FROM events WHERE hash IN
               (SELECT event_hash FROM projections.audit_log WHERE seq > {first})"
        ),
        format!("DELETE FROM projections.audit_log WHERE seq > {first}"),
        format!(
            "UPDATE projections.audit_chain_head
                SET seq = {first}, hash = (SELECT hash FROM projections.audit_log WHERE seq = {first})"
        ),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();

    // Assert: the chains alone still verify; against the published head they do not.
    let alone = audit_verify(&settings, false);
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stdout)
    );
    let caught = audit_verify(&settings, true);
    let out = String::from_utf8_lossy(&caught.stdout).into_owned();
    assert!(!caught.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "audit chain {chain_id}: ends at entry {first}, but its head at entry {second} was published"
        )),
        "{out}"
    );

    // Act and assert: the same rollback under a chain of one's own, its id unsigned or signed
    // by someone without the key, is named too.
    for (change, named) in [
        (
            "SET chain_id = gen_random_uuid(), chain_mac = '\\x00'::bytea",
            "its id is not signed by an audit key",
        ),
        (
            "SET chain_mac = NULL",
            "its id is not signed while heads of",
        ),
    ] {
        sqlx::query(&format!("UPDATE projections.audit_chain_head {change}"))
            .execute(&pool)
            .await
            .unwrap();
        let caught = audit_verify(&settings, true);
        let out = String::from_utf8_lossy(&caught.stdout).into_owned();
        assert!(!caught.status.success(), "{change}: {out}");
        assert!(out.contains(named), "{change}: {out}");
    }
}

fn app_url(settings: &Settings) -> String {
    secrecy::ExposeSecret::expose_secret(settings.database.url.as_ref().unwrap()).to_owned()
}
