//! The audit key rotated: rows hashed before the rotation verify with the previous key and
//! chain on into rows of the new one, in one stream and in the audit log; `keys rotate-audit`
//! retires the previous key after its last row; afterwards a row hashed with the retired key
//! (as whoever holds a leaked key could write) and a retirement widened in the database are
//! both named by `audit verify`.

use std::process::Output;

use base64::Engine as _;
use event_store::chain::{ChainKey, EventFields};
use secrecy::SecretString;

use crate::helpers::*;

/// The new audit key (base64 of 32 bytes).
const NEW_AUDIT_KEY: &str = "bmV3IGF1ZGl0IGtleSBvZiAzMiBieXRlcywgdGVzdCE=";

fn key_bytes(base64: &str) -> [u8; 32] {
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap()
        .try_into()
        .unwrap()
}

/// `patient-service <args>` on `database_url` with the audit key `audit_key` and the previous
/// ones `previous`.
fn run(args: &[&str], database_url: &str, audit_key: &str, previous: &str) -> Output {
    service_command(args[0])
        .args(&args[1..])
        .env("DATABASE_URL", database_url)
        .env("APP_SECURITY__MASTER_KEY", MASTER_KEY)
        .env("APP_SECURITY__AUDIT_KEY", audit_key)
        .env("APP_SECURITY__PREVIOUS_AUDIT_KEYS", previous)
        .env_remove("KAFKA_BROKERS")
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_audit_key_rotates_and_a_retired_key_cannot_vouch_for_new_rows() {
    // Arrange: a patient written under the first key; then the service restarted with the new
    // key and the first as previous, which reads that patient, archives them (their stream now
    // crosses the rotation) and registers another.
    let app = TestApp::without_kafka().await;
    let first = id_of(&app.register_ok("Ola", "Before", "1980-01-02").await);
    audit_log_complete(&app).await;
    let mut settings = app.settings.clone();
    app.stop().await;
    settings.security.audit_key = Some(SecretString::from(NEW_AUDIT_KEY));
    settings.security.previous_audit_keys = vec![SecretString::from(AUDIT_KEY)];
    let app = TestApp::start(settings, command_api::startup::Roles::ALL).await;
    let read = app
        .get(&format!("/v1/patients/{first}"), &app.registrar())
        .await;
    assert_eq!(
        read.status(),
        200,
        "a patient hashed with the previous key loads"
    );
    let archived = app
        .command(
            &first,
            "archive",
            1,
            &serde_json::json!({ "reason": "moved" }),
        )
        .await;
    assert_eq!(archived.status(), 200);
    let second = id_of(&app.register_ok("Nia", "After", "1981-02-03").await);
    audit_log_complete(&app).await;
    let url = app.database_url.clone();
    let pool = app.pool.clone();
    let old_id = ChainKey::new(key_bytes(AUDIT_KEY)).key_id(0).unwrap();

    // Act 1: verify before the rotation, rotate, verify after it, and verify without the
    // previous key.
    let before = run(&["audit", "verify"], &url, NEW_AUDIT_KEY, AUDIT_KEY);
    let rotated = run(&["keys", "rotate-audit"], &url, NEW_AUDIT_KEY, AUDIT_KEY);
    let after = run(&["audit", "verify"], &url, NEW_AUDIT_KEY, AUDIT_KEY);
    let without_previous = run(&["audit", "verify"], &url, NEW_AUDIT_KEY, "");

    // Assert 1
    assert!(!before.status.success(), "{}", stdout(&before));
    assert!(
        stdout(&before).contains(&format!("audit key {old_id}: a previous key not retired")),
        "{}",
        stdout(&before)
    );
    assert!(
        rotated.status.success(),
        "{}{}",
        stdout(&rotated),
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(
        stdout(&rotated).contains(&format!("retired audit key {old_id}:")),
        "{}",
        stdout(&rotated)
    );
    assert!(after.status.success(), "{}", stdout(&after));
    assert!(
        stdout(&after).contains("rows verified by retired keys, each within its retirement"),
        "{}",
        stdout(&after)
    );
    assert!(!without_previous.status.success());
    assert!(
        stdout(&without_previous).contains(&format!(
            "events Patient/{first} sequence 1: altered or inserted"
        )),
        "{}",
        stdout(&without_previous)
    );

    // Act 2: a row hashed with the retired key, written after its retirement, as whoever holds
    // that key could (the triggers switched off, as a superuser can).
    let (event_version, payload, metadata, previous): (
        String,
        serde_json::Value,
        serde_json::Value,
        Vec<u8>,
    ) = sqlx::query_as(
        "SELECT event_version, payload, metadata, hash FROM events
          WHERE aggregate_type = 'Patient' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(&second)
    .fetch_one(&pool)
    .await
    .unwrap();
    let forged_hash = ChainKey::new(key_bytes(AUDIT_KEY)).event_hash(
        &previous,
        EventFields {
            aggregate_type: "Patient",
            aggregate_id: &second,
            sequence: 2,
            event_type: "PatientRegistered",
            event_version: &event_version,
            payload: &payload,
            metadata: &metadata,
        },
    );
    app.stop().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, hash)
         VALUES ('Patient', $1, 2, 'PatientRegistered', $2, $3, $4, $5)",
    )
    .bind(&second)
    .bind(&event_version)
    .bind(&payload)
    .bind(&metadata)
    .bind(&forged_hash)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let forged_row = run(&["audit", "verify"], &url, NEW_AUDIT_KEY, AUDIT_KEY);
    // Act 3: the retirement widened to cover that row.
    sqlx::query("UPDATE audit_key_retirements SET last_position = last_position + 1000000")
        .execute(&pool)
        .await
        .unwrap();
    let widened = run(&["audit", "verify"], &url, NEW_AUDIT_KEY, AUDIT_KEY);

    // Assert 2 and 3
    assert!(!forged_row.status.success());
    assert!(
        stdout(&forged_row).contains(&format!(
            "events Patient/{second} sequence 2: hashed with the audit key {old_id} after its retirement"
        )),
        "{}",
        stdout(&forged_row)
    );
    assert!(!widened.status.success());
    assert!(
        stdout(&widened).contains(&format!(
            "audit key retirement of {old_id}: not signed by its successor, ignored"
        )),
        "{}",
        stdout(&widened)
    );
}
