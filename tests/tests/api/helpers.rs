//! The test harness: a fresh database per test, the real service on port 0, typed request
//! helpers, and an independent Kafka consumer. Time is fixed through the service's clock; waits
//! poll with a deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use command_api::auth::{Authenticator, Role};
use command_api::configuration::Settings;
use command_api::startup::{Roles, Service};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::ClientConfig;
use secrecy::SecretString;

use crate::described::Description;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};

pub const DEADLINE: Duration = Duration::from_secs(60);

/// The instant the service believes it is, in every test.
pub fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .expect("TEST_DATABASE_URL is not set: run the end-to-end tests with scripts/test")
}

pub fn brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS")
        .expect("TEST_KAFKA_BROKERS is not set: run the end-to-end tests with scripts/test")
}

fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let settings = Settings::base().unwrap().log;
            command_api::telemetry::init_subscriber(command_api::telemetry::get_subscriber(
                &settings,
                std::io::stdout,
            ));
        }
    });
}

/// Creates an empty database and returns its connection options and URL.
pub async fn create_database() -> (PgConnectOptions, String) {
    let admin: PgConnectOptions = admin_url().parse().unwrap();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect().await.expect("connect to the test cluster");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0);
    (admin.database(&name), url)
}

/// Changes settings before a test service starts.
pub type Configure = Arc<dyn Fn(&mut Settings) + Send + Sync>;

#[derive(Clone)]
pub struct AppOptions {
    pub kafka: bool,
    pub brokers: Option<String>,
    pub roles: Roles,
    pub relay_batch_size: i64,
    pub retention_days: u32,
    /// `auth.organization`: users of other organizations need the patient's consent.
    pub organization: Option<String>,
    /// `kafka.message_timeout_ms`: short only where a test waits for a broker outage, so a
    /// busy machine's slow acknowledgements do not make librdkafka resend.
    pub message_timeout_ms: u64,
    /// The service's clock; [`fixed_now`] when not given.
    pub clock: Option<command_api::http::Clock>,
    /// Changes to the settings before the service starts.
    pub configure: Option<Configure>,
}

impl std::fmt::Debug for AppOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppOptions")
            .field("kafka", &self.kafka)
            .field("organization", &self.organization)
            .finish_non_exhaustive()
    }
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            kafka: true,
            brokers: None,
            roles: Roles::ALL,
            relay_batch_size: 500,
            retention_days: 3650,
            organization: None,
            message_timeout_ms: 10_000,
            clock: None,
            configure: None,
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub settings: Settings,
    pub database_url: String,
    service: Option<Service>,
    pub client: reqwest::Client,
    auth: Authenticator,
    /// The served OpenAPI document, fetched at the first answer to check.
    description: tokio::sync::OnceCell<Description>,
}

pub const SECRET: &str = "end-to-end-test-secret-of-32-bytes-or-more";

/// The master key and the audit key of every test service (base64 of 32 bytes).
pub const MASTER_KEY: &str = "dGVzdCBtYXN0ZXIga2V5IG9mIDMyIGJ5dGVzIGxvbmc=";
pub const AUDIT_KEY: &str = "dGVzdCBhdWRpdCBrZXkgb2YgMzIgYnl0ZXMgbG9uZyE=";

/// The environment that gives a service process the test keys.
pub const SECURITY_ENV: [(&str, &str); 2] = [
    ("APP_SECURITY__MASTER_KEY", MASTER_KEY),
    ("APP_SECURITY__AUDIT_KEY", AUDIT_KEY),
];

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(AppOptions::default()).await
    }

    /// The service with projectors reading the event store (no broker involved).
    pub async fn without_kafka() -> Self {
        Self::spawn_with(AppOptions {
            kafka: false,
            ..AppOptions::default()
        })
        .await
    }

    pub async fn spawn_with(options: AppOptions) -> Self {
        init_logging();
        let (_, database_url) = create_database().await;
        let mut settings = Settings::base().unwrap();
        settings.http.port = 0;
        settings.database.url = Some(SecretString::from(database_url.clone()));
        settings.database.max_connections = 20;
        settings.kafka.brokers = options
            .kafka
            .then(|| options.brokers.clone().unwrap_or_else(brokers));
        settings.kafka.topic_prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
        // A consumer group of its own too: apps sharing the broker must not rebalance each
        // other's projectors.
        settings.kafka.consumer_group_prefix = format!("g{}", uuid::Uuid::new_v4().simple());
        settings.kafka.relay_batch_size = options.relay_batch_size;
        settings.retention.archived_days = options.retention_days;
        settings.kafka.message_timeout_ms = options.message_timeout_ms;
        settings.auth.jwt_secret = SecretString::from(SECRET);
        settings.auth.organization = options.organization.clone();
        settings.security.master_key = Some(SecretString::from(MASTER_KEY));
        settings.security.audit_key = Some(SecretString::from(AUDIT_KEY));
        if let Some(configure) = options.configure {
            configure(&mut settings);
        }
        let clock = options.clock.unwrap_or_else(|| Arc::new(fixed_now));
        Self::start_with_clock(settings, options.roles, clock).await
    }

    /// Starts the service with these settings (e.g. the settings of an app stopped earlier).
    pub async fn start(settings: Settings, roles: Roles) -> Self {
        Self::start_with_clock(settings, roles, Arc::new(fixed_now)).await
    }

    pub async fn start_with_clock(
        mut settings: Settings,
        roles: Roles,
        clock: command_api::http::Clock,
    ) -> Self {
        // Text is extracted by the service binary (`extract-text`), not by this test binary.
        settings
            .documents
            .extractor_path
            .get_or_insert_with(|| env!("CARGO_BIN_EXE_patient-service-under-test").into());
        let service = Service::start(&settings, roles, clock)
            .await
            .expect("the service starts");
        let address = format!("http://127.0.0.1:{}", service.port.unwrap_or(0));
        let auth = Authenticator::new(&settings.auth);
        Self {
            address,
            pool: service.pool.clone(),
            database_url: settings
                .database
                .url
                .as_ref()
                .map(|u| secrecy::ExposeSecret::expose_secret(u).to_owned())
                .unwrap_or_default(),
            settings,
            service: Some(service),
            client: reqwest::Client::new(),
            auth,
            description: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await.unwrap();
        }
    }

    pub fn topic(&self) -> String {
        format!(
            "{}{}",
            self.settings.kafka.topic_prefix,
            schemas::topics::PATIENT
        )
    }

    /// A token for `user` with `roles`. Tokens expire by the real clock (the JWT library reads
    /// it), so they are minted at the real now.
    /// The data of a consumed record, opened the way a downstream service opens it: with the
    /// patient's data key fetched from the API under the `service` role.
    pub async fn open(&self, record: &OwnedMessage) -> Vec<u8> {
        let event = published(record);
        if !event.sealed {
            return event.data;
        }
        let response = self
            .client
            .get(format!(
                "{}/v1/patients/{}/data-key",
                self.address,
                event.key_id().unwrap_or_else(|| event.subject.clone())
            ))
            .bearer_auth(self.token("downstream", &["service"]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "data key of {:?}", event.key_id());
        let body: Value = response.json().await.unwrap();
        let key = schemas::sealed::DataKey::from_base64(
            body["kid"].as_str().unwrap(),
            body["key"].as_str().unwrap(),
        )
        .unwrap();
        event.opened_with(&key).unwrap().data
    }

    pub fn token(&self, user: &str, roles: &[&str]) -> String {
        let roles: Vec<Role> = roles.iter().map(|r| Role::parse(r).unwrap()).collect();
        self.auth.mint(user, &roles, Utc::now()).unwrap()
    }

    /// A token with the optional claims of `extras` (patient id, organization, session).
    pub fn token_with(
        &self,
        user: &str,
        roles: &[&str],
        extras: &command_api::auth::TokenExtras,
    ) -> String {
        let roles: Vec<Role> = roles.iter().map(|r| Role::parse(r).unwrap()).collect();
        self.auth
            .mint_with(user, &roles, Utc::now(), extras)
            .unwrap()
    }

    /// A token of the `patient` role for the patient `patient_id`.
    pub fn patient_token(&self, patient_id: &str) -> String {
        self.token_with(
            &format!("portal-{patient_id}"),
            &["patient"],
            &command_api::auth::TokenExtras {
                patient_id: Some(patient_id.parse().unwrap()),
                ..Default::default()
            },
        )
    }

    pub fn registrar(&self) -> String {
        self.token("registrar-1", &["registrar"])
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        self.described("POST", path, response).await
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        self.described("GET", path, response).await
    }

    /// `response` to `method path` (the path as sent, query included), once checked against
    /// the served OpenAPI document ([`Description::check`]).
    pub async fn described(
        &self,
        method: &str,
        path: &str,
        response: reqwest::Response,
    ) -> reqwest::Response {
        let description = self
            .description
            .get_or_init(|| async {
                let document = self
                    .client
                    .get(format!("{}/openapi.json", self.address))
                    .send()
                    .await
                    .expect("request sent")
                    .json()
                    .await
                    .expect("the OpenAPI document is JSON");
                Description::new(document)
            })
            .await;
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("the answer's body arrives");
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        description.check(method, path, status.as_u16(), content_type, &body);
        let mut rebuilt = http::Response::new(body);
        *rebuilt.status_mut() = status;
        *rebuilt.version_mut() = version;
        *rebuilt.headers_mut() = headers;
        reqwest::Response::from(rebuilt)
    }

    pub async fn register(&self, body: &Value) -> reqwest::Response {
        self.post("/v1/patients", &self.registrar(), body, &[])
            .await
    }

    /// Registers a patient and returns the answer's body (asserting 201).
    pub async fn register_ok(&self, given: &str, family: &str, birth_date: &str) -> Value {
        let response = self.register(&patient(given, family, birth_date)).await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    /// Registers synthetic person `n` (distinct from every other `n`), with `family` as family
    /// name if given; returns the answer's body. People given one family name may look alike
    /// to the matcher (similar given names, close birth dates): they are registered with an
    /// override, as a registrar who checked would.
    pub async fn register_person(&self, n: u64, family: Option<&str>) -> Value {
        let mut body = synthetic::registration(n, family);
        if family.is_some() {
            body["duplicate_override"] =
                serde_json::json!({ "reason": "checked: different people, one family name" });
        }
        let response = self.register(&body).await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    /// Posts a command with the If-Match of `version`, as a registrar.
    pub async fn command(
        &self,
        id: &str,
        action: &str,
        version: u64,
        body: &Value,
    ) -> reqwest::Response {
        let etag = format!("\"{version}\"");
        self.post(
            &format!("/v1/patients/{id}/{action}"),
            &self.registrar(),
            body,
            &[("if-match", &etag)],
        )
        .await
    }

    /// How many patient events are stored (access entries not counted).
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Patient'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Ids found by a search as a clinician, waiting until `expected` many are found.
    pub async fn search_until(&self, query: &str, expected: usize) -> Vec<Value> {
        let token = self.token("clinician-1", &["clinician"]);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let response = self.get(&format!("/v1/patients?{query}"), &token).await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            let items = body["items"].as_array().unwrap().clone();
            if items.len() == expected {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "search {query} found {} patients, expected {expected}",
                items.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An independent consumer of the patient topic, from the beginning.
    pub fn consumer(&self) -> StreamConsumer {
        consumer_for(
            self.settings.kafka.brokers.as_deref().unwrap(),
            &self.topic(),
        )
    }
}

/// A consumed record as the event it carries (data still sealed).
pub fn published(record: &OwnedMessage) -> schemas::PublishedEvent {
    let headers: Vec<(&str, &[u8])> = record
        .headers()
        .map(|h| {
            h.iter()
                .filter_map(|h| h.value.map(|v| (h.key, v)))
                .collect()
        })
        .unwrap_or_default();
    schemas::PublishedEvent::from_headers(headers, record.payload().unwrap_or_default()).unwrap()
}

pub fn consumer_for(brokers: &str, topic: &str) -> StreamConsumer {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    consumer_with(config, topic)
}

/// A consumer of `topic` from its start, in a group of its own, with the client settings of
/// `config` (brokers, security).
pub fn consumer_with(mut config: ClientConfig, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = config
        .set(
            "group.id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Receives until `expected` records arrived (or panics at the deadline).
pub async fn consume(consumer: &StreamConsumer, expected: usize) -> Vec<OwnedMessage> {
    consume_until(consumer, |records| records.len() >= expected).await
}

/// Receives until `done` holds for what arrived so far (or panics at the deadline).
pub async fn consume_until(
    consumer: &StreamConsumer,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + DEADLINE;
    let mut records = Vec::new();
    while !done(&records) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let mut furthest: std::collections::BTreeMap<i32, i64> = Default::default();
            for r in &records {
                let at = furthest.entry(r.partition()).or_insert(-1);
                *at = (*at).max(r.offset());
            }
            let watermarks: Vec<(i32, (i64, i64))> = furthest
                .keys()
                .map(|p| {
                    (
                        *p,
                        consumer
                            .fetch_watermarks(r_topic(&records), *p, Duration::from_secs(5))
                            .unwrap_or((-1, -1)),
                    )
                })
                .collect();
            panic!(
                "only {} records arrived before the deadline; furthest offset per partition {furthest:?}, watermarks {watermarks:?}",
                records.len()
            );
        }
        if let Ok(Ok(message)) =
            tokio::time::timeout(remaining.min(Duration::from_secs(1)), consumer.recv()).await
        {
            records.push(message.detach());
        }
    }
    records
}

fn r_topic(records: &[OwnedMessage]) -> &str {
    records.first().map_or("", |r| r.topic())
}

pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

pub fn key(message: &OwnedMessage) -> String {
    String::from_utf8(message.key().unwrap().to_vec()).unwrap()
}

/// How many records the app's patient topic holds (the sum of its partitions' watermarks).
pub fn records_on_topic(app: &TestApp) -> i64 {
    let consumer = app.consumer();
    let metadata = consumer
        .fetch_metadata(Some(&app.topic()), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(&app.topic(), p.id(), Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// The `id` of a patient as the API answered them.
pub fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap().to_owned()
}

pub fn patient(given: &str, family: &str, birth_date: &str) -> Value {
    json!({
        "name": { "given": [given], "family": family },
        "birth_date": birth_date,
        "gender": "female"
    })
}

/// Validates a patient event's data against the checked-in JSON Schema of its type.
pub fn assert_matches_schema(event_type: &str, data: &[u8]) {
    assert_matches_schema_in("patient/v1", event_type, data);
}

/// Validates an event's data against the checked-in JSON Schema of its type under `dir` of
/// `schemas/json` (`patient/v1`, `medical-record/v1`).
pub fn assert_matches_schema_in(dir: &str, event_type: &str, data: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/json")
        .join(dir)
        .join(format!("{event_type}.schema.json"));
    let mut schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    // The producer holds itself to closed schemas: nothing it publishes may carry a property
    // the contract does not name (consumers, reading the open ones, tolerate added ones).
    closed(&mut schema);
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let instance: Value = serde_json::from_slice(data).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{event_type} does not match its schema: {errors:?}"
    );
}

/// `schema` with every object that names its properties closed to others
/// (`unevaluatedProperties: false`, which counts what the branches of a `oneOf` and a `$ref`
/// beside the properties evaluate). A definition some object extends by a `$ref` beside its
/// own properties (a tagged variant) is left open: the object extending it is closed.
fn closed(schema: &mut Value) {
    let mut extended = std::collections::HashSet::new();
    extended_definitions(schema, &mut extended);
    close(schema, &extended, None);
}

fn extended_definitions(schema: &Value, found: &mut std::collections::HashSet<String>) {
    match schema {
        Value::Object(object) => {
            if object.contains_key("properties") {
                if let Some(target) = object.get("$ref").and_then(Value::as_str) {
                    found.insert(target.trim_start_matches("#/$defs/").to_owned());
                }
            }
            object.values().for_each(|v| extended_definitions(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| extended_definitions(v, found)),
        _ => {}
    }
}

fn close(schema: &mut Value, extended: &std::collections::HashSet<String>, name: Option<&str>) {
    match schema {
        Value::Object(object) => {
            let open = name.is_some_and(|n| extended.contains(n));
            if object.contains_key("properties")
                && !open
                && !object.contains_key("additionalProperties")
                && !object.contains_key("unevaluatedProperties")
            {
                object.insert("unevaluatedProperties".into(), Value::Bool(false));
            }
            for (key, value) in object.iter_mut() {
                if key == "$defs" {
                    if let Value::Object(definitions) = value {
                        for (definition, schema) in definitions.iter_mut() {
                            close(schema, extended, Some(definition));
                        }
                    }
                } else {
                    close(value, extended, None);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| close(v, extended, None)),
        _ => {}
    }
}

/// Waits until the audit log holds an entry for every stored event of `app`; answers how many
/// entries it holds then.
pub async fn audit_log_complete(app: &TestApp) -> i64 {
    let counts = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM projections.audit_log)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    eventually("the audit log holds every event", || async {
        let (events, logged) = counts().await;
        logged >= events
    })
    .await;
    counts().await.1
}

/// Polls `check` until it returns true, or panics with `what` at the deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `field` of every error of a problem document, in order.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A process a test started, killed and reaped when the test ends, also when it fails: a
/// service left running would hold the test run's output open (and its harness waiting).
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

/// `patient-service <role>` for a process of its own beside the test's service: on the same
/// fixed clock ([`fixed_now`]), quiet but for warnings.
pub fn service_command(role: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"));
    command
        .arg(role)
        .env("PATIENT_SERVICE_UNDER_TEST_NOW", fixed_now().to_rfc3339())
        .env("APP_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null());
    command
}

/// Starts `patient-service api` (the API role alone) on `app`'s database in a process of its
/// own, with `envs` besides the test keys; returns it and its base URL once it is ready.
pub async fn api_process(app: &TestApp, envs: &[(&str, String)]) -> (Running, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Running(
        service_command("api")
            .env("DATABASE_URL", &app.database_url)
            .envs(SECURITY_ENV)
            .env("APP_AUTH__JWT_SECRET", SECRET)
            .env("APP_HTTP__PORT", port.to_string())
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("KAFKA_BROKERS")
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ready = app.client.get(format!("{base}/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return (child, base);
        }
        assert!(Instant::now() < deadline, "the API did not become ready");
        assert!(child.try_wait().unwrap().is_none(), "the API exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Validators of HL7's FHIR R4 JSON schema (`tests/data/fhir/fhir.schema.json`), one per
/// resource type, compiled once per test binary.
static FHIR_VALIDATORS: std::sync::LazyLock<
    std::sync::Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
> = std::sync::LazyLock::new(|| std::sync::Mutex::new(HashMap::new()));

/// Panics unless `resource` is valid against HL7's FHIR R4 JSON schema for its
/// `resourceType` (a Bundle's entries are checked by the schema too).
pub fn assert_valid_fhir(resource: &Value) {
    let kind = resource["resourceType"]
        .as_str()
        .unwrap_or_else(|| panic!("no resourceType: {resource}"))
        .to_owned();
    let validator = {
        let mut validators = FHIR_VALIDATORS.lock().unwrap();
        validators
            .entry(kind.clone())
            .or_insert_with(|| {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("data/fhir/fhir.schema.json");
                let mut schema: Value =
                    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
                let object = schema.as_object_mut().unwrap();
                object.remove("oneOf");
                object.remove("discriminator");
                object.insert("$ref".into(), json!(format!("#/definitions/{kind}")));
                Arc::new(jsonschema::validator_for(&schema).unwrap())
            })
            .clone()
    };
    let errors: Vec<String> = validator
        .iter_errors(resource)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{kind} is not valid FHIR R4: {errors:?}\n{resource}"
    );
    // scripts/test has Medplum's validator check every one of them after the run.
    if let Ok(dir) = std::env::var("FHIR_DUMP_DIR") {
        static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::path::Path::new(&dir).join(format!("{}-{n:05}-{kind}.json", std::process::id()));
        std::fs::write(path, resource.to_string()).unwrap();
    }
}

/// A node script of `tests/fhir-node` the test talks to over its stdin and stdout, one JSON
/// object a line: the running script, its stdin, its stdout's lines, and its first line.
pub struct NodeTool {
    pub child: tokio::process::Child,
    pub stdin: tokio::process::ChildStdin,
    pub lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pub started: Value,
}

impl NodeTool {
    /// Starts `script` and reads its first line.
    pub async fn start(script: &str) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let dir = std::env::var("FHIR_NODE_DIR").expect("FHIR_NODE_DIR: run with scripts/test");
        let mut child = tokio::process::Command::new("node")
            .arg(format!("{dir}/{script}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let started = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        Self {
            child,
            stdin,
            lines,
            started,
        }
    }
}
