//! `patient-service reconcile`: the event store against its topics, every difference named.

use std::process::{Command, Output};

use crate::helpers::*;

/// Waits until the relay has published every stored event of `app`.
pub(crate) async fn published(app: &TestApp) {
    eventually("every event published", || async {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e WHERE NOT EXISTS (
                SELECT 1 FROM relay_checkpoints c
                 WHERE (e.transaction_id, e.position) <= (c.transaction_id, c.position))",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        behind == 0
    })
    .await;
}

/// `patient-service reconcile` on `app`'s database and topics.
fn reconcile(app: &TestApp) -> Output {
    reconcile_on(app, &app.database_url)
}

/// `patient-service reconcile` on the database at `database_url` and `app`'s topics.
pub(crate) fn reconcile_on(app: &TestApp, database_url: &str) -> Output {
    reconcile_with(app, database_url, &[])
}

/// [`reconcile_on`] with more arguments.
fn reconcile_with(app: &TestApp, database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .arg("reconcile")
        .args(args)
        .env("DATABASE_URL", database_url)
        .env(
            "KAFKA_BROKERS",
            app.settings.kafka.brokers.as_deref().unwrap(),
        )
        .env("APP_KAFKA__TOPIC_PREFIX", &app.settings.kafka.topic_prefix)
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn reconcile_finds_the_topics_equal_to_the_store_and_names_each_difference() {
    // Arrange: three patients, published.
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(id_of(&app.register_person(n, Some("Reconciled")).await));
    }
    published(&app).await;
    let clean = reconcile(&app);
    let out = String::from_utf8_lossy(&clean.stdout).into_owned();
    assert!(
        clean.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(out.ends_with("reconcile: differences=0\n"), "{out}");
    assert!(
        out.contains("patients.patient.v1: 3 events published"),
        "{out}"
    );

    // Act: a record under a stored event's identity with another content, and one no stored
    // event has, as a producer other than the relay could write them.
    let taken = schemas::envelope::event_id("Patient", &ids[0], 1).to_string();
    let stranger = uuid::Uuid::new_v4().to_string();
    for (id, hash) in [(&taken, "00"), (&stranger, "11")] {
        let headers = vec![
            ("ce_id".to_owned(), id.clone()),
            ("ce_eventhash".to_owned(), hash.to_owned()),
        ];
        crate::untrusted_records::produce(&app, &ids[0], &headers, b"{}").await;
    }
    let differing = reconcile(&app);

    // Assert
    let out = String::from_utf8_lossy(&differing.stdout).into_owned();
    assert!(!differing.status.success(), "{out}");
    assert!(out.contains("reconcile: differences=2"), "{out}");
    let named = |what: &str| {
        let at = out.find(what).unwrap_or_else(|| panic!("{what}: {out}"));
        out[at..].lines().nth(1).unwrap().trim().to_owned()
    };
    assert_eq!(named("on the topic, not in the store"), stranger, "{out}");
    assert_eq!(named("with another content than stored"), taken, "{out}");
    app.stop().await;
}

#[tokio::test]
async fn reconcile_compares_the_read_models_with_a_rebuild_and_names_a_table_that_differs() {
    // Arrange: patients published and projected from the topics, then the projectors stopped.
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(id_of(&app.register_person(n, Some("Projected")).await));
    }
    published(&app).await;
    app.search_until("family=Projected", 3).await;
    audit_log_complete(&app).await;
    let database_url = app.database_url.clone();
    let settings = app.settings.clone();
    let stopped = TestApp::start(settings, command_api::startup::Roles::NONE).await;
    app.stop().await;
    let equal = reconcile_with(&stopped, &database_url, &["--read-models"]);
    let out = String::from_utf8_lossy(&equal.stdout).into_owned();
    assert!(
        equal.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&equal.stderr)
    );
    assert!(out.contains("read models: equal to a rebuild"), "{out}");

    // Act: a read model row changed behind the projectors' back.
    sqlx::query(
        "UPDATE projections.patient_search SET family = 'Tampered' WHERE patient_id::text = $1",
    )
    .bind(&ids[1])
    .execute(&stopped.pool)
    .await
    .unwrap();
    let differing = reconcile_with(&stopped, &database_url, &["--read-models"]);

    // Assert
    let out = String::from_utf8_lossy(&differing.stdout).into_owned();
    assert!(!differing.status.success(), "{out}");
    assert!(
        out.contains(
            "read model table patient_search: differs from a rebuild (3 rows live, 3 rebuilt)"
        ),
        "{out}"
    );
    assert!(out.contains("reconcile: differences=1"), "{out}");
    stopped.stop().await;
}
