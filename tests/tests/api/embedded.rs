//! The embedded default: a private PostgreSQL cluster in a data folder, and `serve` with no
//! configuration at all.

use std::process::{Command, Stdio};
use std::time::Instant;

use command_api::embedded_postgres::EmbeddedPostgres;
use serde_json::Value;
use sqlx::{ConnectOptions, Connection};

use crate::helpers::*;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("patient-service-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn the_embedded_cluster_initialises_keeps_its_data_and_stops_cleanly() {
    // Arrange
    let dir = TempDir::new();
    let cluster = EmbeddedPostgres::start(&dir.0).await.unwrap();
    let mut conn = cluster.connect_options().connect().await.unwrap();
    for statement in ["CREATE TABLE kept (n int)", "INSERT INTO kept VALUES (42)"] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    // Act
    cluster.stop().unwrap();
    let stopped = !dir.0.join("pgdata/postmaster.pid").exists();
    let again = EmbeddedPostgres::start(&dir.0).await.unwrap();
    let mut conn = again.connect_options().connect().await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    again.stop().unwrap();

    // Assert
    assert!(stopped, "postmaster.pid removed by a clean stop");
    assert_eq!(n, 42);
}

/// Starts `serve` with no configuration in `dir` and waits until it is ready; returns the
/// process and the API's base URL.
async fn start_serve(dir: &TempDir) -> (Running, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = Running(
        Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
            .arg("serve")
            .current_dir(&dir.0)
            .env_remove("DATABASE_URL")
            .env_remove("KAFKA_BROKERS")
            .env("APP_HTTP__PORT", port.to_string())
            .env("APP_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ready = client.get(format!("{base}/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "serve did not become ready");
        assert!(serve.try_wait().unwrap().is_none(), "serve exited early");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (serve, base)
}

/// Runs a one-shot `patient-service` command in `dir` on its embedded default; returns stdout.
fn run_in(dir: &TempDir, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .args(args)
        .current_dir(&dir.0)
        .env_remove("DATABASE_URL")
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn serve_with_no_configuration_serves_the_api_and_stops_its_database_on_sigterm() {
    // Arrange: an empty folder, no configuration files, no database or broker variables.
    let dir = TempDir::new();
    let (mut serve, base) = start_serve(&dir).await;
    let client = reqwest::Client::new();
    // The development secret is the compiled-in default.
    let settings = command_api::configuration::Settings::base().unwrap();
    let token = command_api::auth::Authenticator::new(&settings.auth)
        .mint(
            "dev",
            &[command_api::auth::Role::Registrar],
            chrono::Utc::now(),
        )
        .unwrap();

    // Act
    let created = client
        .post(format!("{base}/v1/patients"))
        .bearer_auth(&token)
        .json(&patient("Embedded", "Default", "1990-01-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    eventually("the patient in search", || async {
        let found: Value = client
            .get(format!("{base}/v1/patients?family=default"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        found["items"]
            .as_array()
            .is_some_and(|items| items.len() == 1)
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = serve.wait().unwrap();

    // Assert
    assert!(status.success(), "serve exited with {status}");
    assert!(
        dir.0.join(".patient-service/pgdata/PG_VERSION").exists(),
        "data kept in the data folder"
    );
    assert!(
        !dir.0
            .join(".patient-service/pgdata/postmaster.pid")
            .exists(),
        "PostgreSQL stopped"
    );
    assert!(
        dir.0.join(".patient-service/keys/master_key").exists(),
        "keys generated beside the embedded database"
    );
    // The embedded cluster starts again for a command, whose stdout stays its own: the
    // replay's NDJSON and nothing else, and the chains verify.
    let replayed = run_in(&dir, &["replay", "--aggregate-type", "Patient"]);
    let lines: Vec<Value> = replayed
        .lines()
        .map(|line| serde_json::from_str(line).expect("only NDJSON on stdout"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["data"]["name"]["family"], "Default");
    assert!(run_in(&dir, &["audit", "verify"]).contains("no tampering found"));
}

#[tokio::test]
async fn rebuild_is_refused_while_projectors_run_and_then_rebuilds_the_same_read_models() {
    // Arrange
    let app = TestApp::without_kafka().await;
    for n in 0..3 {
        let id = id_of(&app.register_person(n, Some("Rebuilt")).await);
        if n == 0 {
            app.command(&id, "archive", 1, &serde_json::json!({ "reason": "moved" }))
                .await;
        }
    }
    app.search_until("family=rebuilt", 2).await;
    let snapshot = |pool: sqlx::PgPool| async move {
        let rows: Vec<(uuid::Uuid, String, String, i64)> = sqlx::query_as(
            "SELECT patient_id, family, status, version FROM projections.patient_search ORDER BY patient_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM projections.patient_match_keys")
            .fetch_one(&pool)
            .await
            .unwrap();
        (rows, keys)
    };
    eventually("both read models current", || async {
        let (rows, _) = snapshot(app.pool.clone()).await;
        let matched: i64 = sqlx::query_scalar("SELECT count(*) FROM projections.patient_match")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        rows.iter().any(|r| r.2 == "archived") && matched == 3
    })
    .await;
    let before = snapshot(app.pool.clone()).await;
    let rebuild = || {
        Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
            .arg("rebuild")
            .env("DATABASE_URL", &app.database_url)
            .envs(SECURITY_ENV)
            .env("APP_LOG__LEVEL", "warn")
            .output()
            .unwrap()
    };

    // Act
    let while_running = rebuild();
    let database_url = app.database_url.clone();
    app.stop().await;
    let stopped = Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .arg("rebuild")
        .env("DATABASE_URL", &database_url)
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap();

    // Assert
    assert!(!while_running.status.success());
    assert!(String::from_utf8_lossy(&while_running.stderr).contains("stop serve/project first"));
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    assert_eq!(
        snapshot(pool).await,
        before,
        "a rebuilt read model equals the one it replaced"
    );
}

#[tokio::test]
async fn a_one_shot_command_beside_serve_leaves_the_embedded_database_running() {
    // Arrange: serve on the embedded default.
    let dir = TempDir::new();
    let (mut serve, base) = start_serve(&dir).await;
    let client = reqwest::Client::new();

    // Act: a one-shot command on the same data folder, while serve runs.
    run_in(&dir, &["replay"]);
    let ready = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap()
        .status();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = serve.wait().unwrap();

    // Assert: serve kept its database; the last user, serve, stopped it.
    assert_eq!(ready, 200, "the command stopped the database under serve");
    assert!(status.success(), "serve exited with {status}");
    assert!(
        !dir.0
            .join(".patient-service/pgdata/postmaster.pid")
            .exists(),
        "PostgreSQL stopped by its last user"
    );
}
