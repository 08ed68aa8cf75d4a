//! `patient-service backup` and `restore` (pg_dump and pg_restore): a backup restored into an
//! empty database holds what was written before it and nothing after, its read models are
//! rebuilt from it, and its audit chains verify; a restore over a database in use is refused;
//! a restore starts an epoch that enters the identity of the events written after it, and
//! forgets again whoever the topic says was forgotten since the backup.

use std::process::{Command, Output};

use sqlx::PgPool;

use crate::helpers::*;

/// The service binary's `args` on the database at `database_url`.
fn service(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap()
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A backup of `app`'s database, in a file of its own.
fn back_up(app: &TestApp) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("backup-{}.dump", uuid::Uuid::new_v4().simple()));
    assert_success(
        &service(
            &["backup", "--to", file.to_str().unwrap()],
            &app.database_url,
        ),
        "backup",
    );
    file
}

/// Whether the store holds the data key of `patient` (it was not forgotten).
async fn data_key_held(pool: &PgPool, patient: &str) -> bool {
    sqlx::query_scalar(
        "SELECT wrapped_key IS NOT NULL FROM patient_data_keys WHERE patient_id = $1",
    )
    .bind(patient)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_backup_restored_into_an_empty_database_rebuilds_and_verifies() {
    // Arrange: two patients before the backup, one after.
    let app = TestApp::without_kafka().await;
    let before = [
        id_of(&app.register_ok("Ada", "Backup", "1980-01-02").await),
        id_of(&app.register_ok("Ben", "Backup", "1981-02-03").await),
    ];
    let file = back_up(&app);
    let after = id_of(&app.register_ok("Cy", "Later", "1982-03-04").await);
    app.stop().await;

    // Act
    let (_, restored_url) = create_database().await;
    let restored = service(
        &["restore", "--from", file.to_str().unwrap()],
        &restored_url,
    );

    // Assert
    assert_success(&restored, "restore");
    let again = service(
        &["restore", "--from", file.to_str().unwrap()],
        &restored_url,
    );
    assert!(!again.status.success(), "a restore over a database in use");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("only into an empty database"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_success(&service(&["rebuild"], &restored_url), "rebuild");
    assert_success(
        &service(&["audit", "verify"], &restored_url),
        "audit verify",
    );
    let pool = PgPool::connect(&restored_url).await.unwrap();
    for (id, expected) in [(&before[0], 1), (&before[1], 1), (&after, 0)] {
        let found: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projections.patient_search WHERE patient_id::text = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(found, expected, "patient {id} in the restored search");
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'Patient' AND aggregate_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(events > 0, expected == 1, "patient {id}'s events");
    }
    std::fs::remove_file(&file).ok();
}

#[tokio::test]
async fn reconcile_flags_an_erasure_done_after_the_backup_a_store_was_restored_from() {
    // Arrange: a backup, then a patient forgotten (the erasure published).
    let app = TestApp::spawn().await;
    let kept = id_of(&app.register_ok("Kim", "Kept", "1980-01-02").await);
    let erased = id_of(&app.register_ok("Eve", "Erased", "1981-02-03").await);
    crate::reconcile::published(&app).await;
    let file = back_up(&app);
    let admin = app.token("admin-1", &["admin"]);
    let forgotten = app
        .post(
            &format!("/v1/patients/{erased}/forget"),
            &admin,
            &serde_json::json!({ "reason": "patient-request" }),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(forgotten.status(), 200);
    crate::reconcile::published(&app).await;

    // Act: the store restored from before the erasure by a restore that cannot read the topics
    // (no Kafka configured), so cannot forget the patient again; reconcile against the topics.
    let (_, restored_url) = create_database().await;
    let restored = service(
        &["restore", "--from", file.to_str().unwrap()],
        &restored_url,
    );
    assert_success(&restored, "restore");
    let reconciled = crate::reconcile::reconcile_on(&app, &restored_url);

    // Assert: the erasure is named, to be done again; the kept patient is not.
    let out = String::from_utf8_lossy(&reconciled.stdout).into_owned();
    assert!(!reconciled.status.success(), "{out}");
    let at = out
        .find("whose data the store still holds: forget them again")
        .unwrap_or_else(|| panic!("{out}"));
    let named: Vec<&str> = out[at..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(named, [erased.as_str()], "{out}");
    assert!(!named.contains(&kept.as_str()));
    // The erasure's own event is on the topic, lost by the restore.
    assert!(
        out.contains(&format!(
            "{}: published before the store's restore to epoch 1 and lost by it (not differences): 1\n",
            app.topic()
        )),
        "{out}"
    );
    let restore_out = String::from_utf8_lossy(&restored.stdout).into_owned();
    assert!(
        restore_out
            .contains("no Kafka configured: the erasures done since the backup cannot be found"),
        "{restore_out}"
    );
    app.stop().await;
    std::fs::remove_file(&file).ok();
}

/// `restore` of `file` into the database at `database_url`, reading the topics of `settings`.
fn restore_with_topics(
    settings: &command_api::configuration::Settings,
    file: &std::path::Path,
    database_url: &str,
) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .args(["restore", "--from", file.to_str().unwrap()])
        .env("DATABASE_URL", database_url)
        .env("KAFKA_BROKERS", settings.kafka.brokers.as_deref().unwrap())
        .env("APP_KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_restore_starts_an_epoch_and_forgets_again_whoever_was_forgotten_since_the_backup() {
    // Arrange: two patients, published, then backed up. After the backup one is archived and
    // the other forgotten, both published: their sequence 2 is on the topic and will be lost
    // by the restore.
    let app = TestApp::spawn().await;
    let kept = id_of(&app.register_ok("Kim", "Kept", "1980-01-02").await);
    let erased = id_of(&app.register_ok("Eve", "Erased", "1981-02-03").await);
    crate::reconcile::published(&app).await;
    let file = back_up(&app);
    let archived = app
        .command(
            &kept,
            "archive",
            1,
            &serde_json::json!({ "reason": "moved" }),
        )
        .await;
    assert_eq!(archived.status(), 200);
    let forgotten = app
        .post(
            &format!("/v1/patients/{erased}/forget"),
            &app.token("admin-1", &["admin"]),
            &serde_json::json!({ "reason": "legal-order", "reference": "CASE-7" }),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(forgotten.status(), 200);
    crate::reconcile::published(&app).await;
    // And a PatientForgotten of the kept patient produced by someone other than the relay: its
    // ce_id is not the one its type, subject and sequence make.
    let forged_id = uuid::Uuid::from_u128(0xf0).to_string();
    let headers: Vec<(String, String)> = [
        ("ce_id", forged_id.as_str()),
        (
            "ce_type",
            "org.nextgen-medtech.patients.PatientForgotten.v1",
        ),
        ("ce_time", "2026-11-30T00:00:00Z"),
        ("ce_subject", kept.as_str()),
        ("ce_sequence", "3"),
        ("ce_position", "1"),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let data = serde_json::json!({
        "patient_id": kept, "reason": "patient-request", "forgotten_at": "2026-11-30T00:00:00Z",
    });
    crate::untrusted_records::produce(&app, &kept, &headers, data.to_string().as_bytes()).await;
    let mut settings = app.settings.clone();
    app.stop().await;

    // Act: the store restored from the backup against the same topics; then the service on
    // it archives the kept patient again, with another reason, at the same sequence.
    let (_, restored_url) = create_database().await;
    let restored = restore_with_topics(&settings, &file, &restored_url);
    assert_success(&restored, "restore");
    assert_success(&service(&["rebuild"], &restored_url), "rebuild");
    settings.database.url = Some(restored_url.clone().into());
    let app = TestApp::start(settings, command_api::startup::Roles::ALL).await;
    let again = app
        .command(
            &kept,
            "archive",
            1,
            &serde_json::json!({ "reason": "deceased" }),
        )
        .await;
    assert_eq!(again.status(), 200);
    crate::reconcile::published(&app).await;

    // Assert: the restore started epoch 1 and forgot the erased patient again, with the
    // erasure's reason and reference.
    let out = String::from_utf8_lossy(&restored.stdout).into_owned();
    assert!(out.contains("the store is in epoch 1"), "{out}");
    assert!(
        out.contains(&format!("applied again: 1\n  {erased}\n")),
        "{out}"
    );
    assert!(
        out.contains("1 PatientForgotten records on the topic are not genuine"),
        "{out}"
    );
    assert!(
        data_key_held(&app.pool, &kept).await,
        "a forged erasure record destroyed a patient's key"
    );
    let (user, payload): (String, serde_json::Value) = sqlx::query_as(
        "SELECT metadata->>'user_id', payload FROM events
          WHERE aggregate_type = 'Patient' AND aggregate_id = $1 AND sequence = 2",
    )
    .bind(&erased)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(user, "restore");
    assert_eq!(payload["PatientForgotten"]["reason"], "legal-order");
    assert_eq!(payload["PatientForgotten"]["reference"], "CASE-7");
    assert!(
        !data_key_held(&app.pool, &erased).await,
        "the erased patient's data key is back"
    );
    // Both sequence-2 events of each patient are on the topic, under two identities (7 records
    // with the forged one).
    let consumer = app.consumer();
    let records = consume(&consumer, 7).await;
    let second: Vec<(String, String, Option<String>)> = records
        .iter()
        .filter(|r| header(r, "ce_sequence").as_deref() == Some("2"))
        .map(|r| {
            (
                header(r, "ce_subject").unwrap(),
                header(r, "ce_id").unwrap(),
                header(r, "ce_epoch"),
            )
        })
        .collect();
    for patient in [&kept, &erased] {
        let mut ids: Vec<(String, Option<String>)> = second
            .iter()
            .filter(|(subject, _, _)| subject == patient)
            .map(|(_, id, epoch)| (id.clone(), epoch.clone()))
            .collect();
        ids.sort();
        let mut expected = vec![
            (
                schemas::envelope::event_id("Patient", patient, 2).to_string(),
                None,
            ),
            (
                schemas::envelope::event_id_in_epoch("Patient", patient, 2, 1).to_string(),
                Some("1".to_owned()),
            ),
        ];
        expected.sort();
        assert_eq!(ids, expected, "patient {patient}");
    }
    // reconcile finds no identity with two contents; the lost events are named apart, and the
    // forged record is not taken for one of them: it is the one difference.
    let reconciled = crate::reconcile::reconcile_on(&app, &restored_url);
    let out = String::from_utf8_lossy(&reconciled.stdout).into_owned();
    assert!(out.ends_with("reconcile: differences=1\n"), "{out}");
    assert!(
        out.contains(&format!(
            "1 on the topic, not in the store:\n  {forged_id}\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}: published before the store's restore to epoch 1 and lost by it (not differences): 2\n",
            app.topic()
        )),
        "{out}"
    );
    assert!(!out.contains("another content"), "{out}");
    assert_success(
        &service(&["audit", "verify"], &restored_url),
        "audit verify",
    );
    app.stop().await;
    std::fs::remove_file(&file).ok();
}
