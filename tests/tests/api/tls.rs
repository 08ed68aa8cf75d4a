//! Transport security: HTTPS for the API, TLS to PostgreSQL and to the Kafka broker, each
//! verifying the peer's certificate against the test certificate authority that
//! `scripts/test` makes (`TEST_TLS_DIR`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use serde_json::Value;

use crate::helpers::*;

fn tls_dir() -> PathBuf {
    std::env::var_os("TEST_TLS_DIR")
        .expect("TEST_TLS_DIR is not set: run the tests with scripts/test")
        .into()
}

#[tokio::test]
async fn the_api_is_served_over_https_only() {
    // Arrange
    let dir = tls_dir();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(move |settings| {
            settings.http.tls_cert_path = Some(dir.join("server.pem"));
            settings.http.tls_key_path = Some(dir.join("server.key"));
        })),
        ..AppOptions::default()
    })
    .await;
    let https = app.address.replace("http://", "https://");
    let ca = std::fs::read(tls_dir().join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let untrusting = reqwest::Client::new();

    // Act
    let registered = client
        .post(format!("{https}/v1/patients"))
        .bearer_auth(app.registrar())
        .json(&patient("Ada", "Lovelace", "1990-12-10"))
        .send()
        .await
        .unwrap();
    let plain = app
        .client
        .get(format!("{}/health/live", app.address))
        .send()
        .await;
    let unknown_ca = untrusting.get(format!("{https}/health/live")).send().await;

    // Assert
    assert_eq!(registered.status(), 201);
    let body: Value = registered.json().await.unwrap();
    assert_eq!(body["name"]["family"], "Lovelace");
    assert!(plain.is_err(), "plain HTTP is not answered");
    assert!(unknown_ca.is_err(), "the certificate is checked by clients");
    app.stop().await;
}

#[tokio::test]
async fn postgresql_connections_use_verified_tls() {
    // Arrange
    let ca = tls_dir().join("ca.pem");
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(move |settings| {
            settings.database.ssl_mode = Some("verify-full".into());
            settings.database.ssl_root_cert = Some(ca.clone());
        })),
        ..AppOptions::default()
    })
    .await;

    // Act
    app.register_ok("Ada", "Lovelace", "1990-12-10").await;
    let (connections, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname = current_database() AND a.backend_type = 'client backend'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // Assert
    assert!(connections > 0);
    assert_eq!(
        encrypted, connections,
        "every connection of the service is TLS"
    );
    app.stop().await;
}

/// A broker that accepts TLS connections only.
struct TlsBroker {
    port: u16,
    child: Child,
}

impl TlsBroker {
    fn start() -> Self {
        let nisshi = std::env::var("NISSHI_BIN")
            .expect("NISSHI_BIN is not set: run the tests with scripts/test");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listener = format!("tcp://127.0.0.1:{port}");
        let dir = tls_dir();
        let child = Command::new(nisshi)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--group-initial-rebalance-delay", "0s"])
            .args(["--storage-engine", "memory://nisshi/", "--silent"])
            .arg("--cert")
            .arg(dir.join("server.pem"))
            .arg("--key")
            .arg(dir.join("server.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _waited = self.child.wait();
    }
}

#[tokio::test]
async fn events_travel_to_and_from_kafka_over_tls() {
    // Arrange
    let broker = TlsBroker::start();
    let brokers = format!("127.0.0.1:{}", broker.port);
    let ca = tls_dir().join("ca.pem");
    let ca_for_app = ca.clone();
    let app = TestApp::spawn_with(AppOptions {
        brokers: Some(brokers.clone()),
        configure: Some(Arc::new(move |settings| {
            settings.kafka.security_protocol = Some("ssl".into());
            settings.kafka.ssl_ca_location = Some(ca_for_app.display().to_string());
        })),
        ..AppOptions::default()
    })
    .await;
    let mut tls_client = ClientConfig::new();
    tls_client
        .set("bootstrap.servers", &brokers)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.display().to_string());
    let consumer = consumer_with(tls_client, &app.topic());

    // Act
    let registered = app.register_ok("Ada", "Lovelace", "1990-12-10").await;

    // Assert: published through the TLS listener, consumed through it, and projected by the
    // service's own TLS consumer.
    let records = consume(&consumer, 1).await;
    assert_eq!(key(&records[0]), registered["id"].as_str().unwrap());
    let found = app.search_until("family=lovelace", 1).await;
    assert_eq!(found[0]["id"], registered["id"]);
    app.stop().await;
}
