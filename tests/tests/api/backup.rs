//! `patient-service backup` and `restore` (pg_dump and pg_restore): a backup restored into an
//! empty database holds what was written before it and nothing after, its read models are
//! rebuilt from it, and its audit chains verify; a restore over a database in use is refused.

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

    // Act: the store restored from before the erasure, against the same topics.
    let (_, restored_url) = create_database().await;
    assert_success(
        &service(
            &["restore", "--from", file.to_str().unwrap()],
            &restored_url,
        ),
        "restore",
    );
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
    // The erasure's own event is on the topic and not in the restored store.
    assert!(out.contains("on the topic, not in the store"), "{out}");
    app.stop().await;
    std::fs::remove_file(&file).ok();
}
