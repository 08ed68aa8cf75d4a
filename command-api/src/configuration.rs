//! Layered configuration: the compiled-in `configuration/base.yaml`, then
//! `configuration/<APP_ENVIRONMENT>.yaml` if present, then `APP_<SECTION>__<KEY>` environment
//! variables, then the conventional `DATABASE_URL` and `KAFKA_BROKERS`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

use event_store::chain::ChainKey;
use event_store::keys::{KeyStore, MasterKey, MasterKeys};

const BASE: &str = include_str!("../../configuration/base.yaml");

/// The secret `base.yaml` ships with; the service warns while it is in use.
pub const DEVELOPMENT_SECRET: &str = "development-only-secret-do-not-use-in-production";

/// The largest document accepted unless configured otherwise: 10 MiB.
pub const DEFAULT_DOCUMENT_MAX_BYTES: usize = 10 * 1024 * 1024;

/// Ten years, unless configured otherwise.
pub const DEFAULT_RETENTION_DAYS: u32 = 3650;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    #[serde(default)]
    pub health: HealthSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub auth: AuthSettings,
    pub security: SecuritySettings,
    pub retention: RetentionSettings,
    pub documents: DocumentSettings,
    pub scheduling: SchedulingSettings,
    pub export: ExportSettings,
    pub log: LogSettings,
}

/// The health checks of the processes without the API (`relay`, `project`, `background`).
#[derive(Debug, Clone, Deserialize)]
pub struct HealthSettings {
    /// The port such a process answers `/health/live`, `/health/ready` and `/metrics` on (at
    /// `http.host`); unset, it answers none. A process with the API answers them on the API's.
    pub port: Option<u16>,
    /// Such a process reports not ready once a reader it runs (the relay, a read model fed from
    /// the event store, a process manager) has left an event unread this long.
    pub stuck_after_secs: u64,
}

impl Default for HealthSettings {
    /// As `configuration/base.yaml` has them.
    fn default() -> Self {
        Self {
            port: None,
            stuck_after_secs: 300,
        }
    }
}

/// FHIR Bulk Data exports (`$export`): how long their files are kept and how they are cut.
#[derive(Debug, Clone, Deserialize)]
pub struct ExportSettings {
    /// A completed (or failed) export is deleted, files and all, this long after it ended.
    pub expire_after_secs: u64,
    /// The most resources one file holds; a type with more is cut into several files.
    pub max_resources_per_file: u32,
    /// What `Retry-After` tells a client polling an export still running, in seconds.
    pub retry_after_secs: u32,
}

impl Default for ExportSettings {
    /// As `configuration/base.yaml` has them.
    fn default() -> Self {
        Self {
            expire_after_secs: 86_400,
            max_resources_per_file: 10_000,
            retry_after_secs: 2,
        }
    }
}

pub use application::settings::SchedulingSettings;

/// Where document contents are stored, and how large they may be.
#[derive(Debug, Clone, Deserialize)]
pub struct DocumentSettings {
    /// The largest document accepted, in bytes.
    pub max_bytes: usize,
    /// `database` (the `document_blobs` table) or `directory`.
    pub storage: String,
    /// With `storage: directory`: where (local disk, or a mounted object store).
    pub directory: Option<PathBuf>,
    /// How long text extraction from one document may take, in milliseconds. Past it the
    /// extracting process is killed and the upload refused.
    pub extraction_timeout_ms: u64,
    /// The program run as `<program> extract-text` to extract text in a process of its own;
    /// this binary when unset.
    pub extractor_path: Option<PathBuf>,
    /// How many uploads are read at once; one more is answered 503 with `Retry-After` at once
    /// (each holds up to `max_bytes` in memory while it is read).
    #[serde(default = "default_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
}

fn default_concurrent_uploads() -> usize {
    4
}

impl DocumentSettings {
    /// How long text extraction from one document may take.
    pub fn extraction_timeout(&self) -> Duration {
        Duration::from_millis(self.extraction_timeout_ms)
    }

    /// The configured storage.
    ///
    /// # Errors
    ///
    /// When the storage is unknown, or `directory` without a directory.
    pub fn storage(&self) -> anyhow::Result<event_store::documents::DocumentStorage> {
        use event_store::documents::DocumentStorage;
        match (self.storage.as_str(), &self.directory) {
            ("database", _) => Ok(DocumentStorage::Database),
            ("directory", Some(dir)) => Ok(DocumentStorage::Directory(dir.clone())),
            ("directory", None) => {
                anyhow::bail!("documents.storage is directory: set documents.directory")
            }
            (other, _) => {
                anyhow::bail!("documents.storage must be database or directory, not {other}")
            }
        }
    }
}

/// The keys of encryption at rest and of the hash chains.
#[derive(Debug, Clone, Deserialize)]
pub struct SecuritySettings {
    pub master_key: Option<SecretString>,
    #[serde(default)]
    pub previous_master_keys: Vec<SecretString>,
    pub audit_key: Option<SecretString>,
    /// Audit keys used before `audit_key`: they still verify the rows they hashed (see
    /// `keys rotate-audit`).
    #[serde(default)]
    pub previous_audit_keys: Vec<SecretString>,
}

/// The keys the service runs with.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub keys: KeyStore,
    pub chain: ChainKey,
}

impl Settings {
    /// The configured keys; with the embedded database, unset keys are read from (or created
    /// in) `<data_dir>/keys`.
    ///
    /// # Errors
    ///
    /// When a key is malformed, or unset with a configured database.
    pub fn secrets(&self) -> anyhow::Result<Secrets> {
        let security = &self.security;
        let key_dir = self
            .database
            .url
            .is_none()
            .then(|| self.database.data_dir.join("keys"));
        let resolve = |name: &str, value: Option<&SecretString>| -> anyhow::Result<[u8; 32]> {
            match (value, &key_dir) {
                (Some(value), _) => decode_key(name, value.expose_secret()),
                (None, Some(dir)) => key_file(dir, name),
                (None, None) => anyhow::bail!(
                    "security.{name} is not set: with a configured database set APP_SECURITY__{}",
                    name.to_uppercase()
                ),
            }
        };
        let master = MasterKey::new(resolve("master_key", security.master_key.as_ref())?);
        let previous = security
            .previous_master_keys
            .iter()
            .map(|k| decode_key("previous_master_keys", k.expose_secret()).map(MasterKey::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Secrets {
            keys: KeyStore::new(MasterKeys::new(master, previous)),
            chain: ChainKey::new(resolve("audit_key", security.audit_key.as_ref())?).with_previous(
                security
                    .previous_audit_keys
                    .iter()
                    .map(|k| decode_key("previous_audit_keys", k.expose_secret()))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        })
    }
}

fn decode_key(name: &str, base64: &str) -> anyhow::Result<[u8; 32]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(base64.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| anyhow::anyhow!("security.{name} must be base64 of exactly 32 bytes"))
}

/// Reads the key in `dir/<name>`, creating it (owner-only) on first use.
fn key_file(dir: &Path, name: &str) -> anyhow::Result<[u8; 32]> {
    use base64::Engine as _;
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => return decode_key(name, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let key = schemas::sealed::random_key();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::Error::new(e).context(format!("creating {}", path.display())))?;
    file.write_all(
        base64::engine::general_purpose::STANDARD
            .encode(key)
            .as_bytes(),
    )?;
    tracing::info!(path = %path.display(), "generated a new {name}");
    Ok(key)
}

/// Data retention rules.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Days after archiving when a patient becomes eligible for purge.
    pub archived_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub request_timeout_secs: u64,
    /// How long a client may take to send a request's head (request line and headers), and
    /// to finish the TLS handshake; past it the connection is closed.
    #[serde(default = "default_head_timeout_ms")]
    pub head_timeout_ms: u64,
    /// How many requests are handled at once; one more is answered 503 with `Retry-After`
    /// at once rather than queued into a timeout (health checks and metrics excepted).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    pub body_limit_bytes: usize,
    /// PEM certificate chain and private key: with both, the API is served over HTTPS only.
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
}

fn default_head_timeout_ms() -> u64 {
    10_000
}

fn default_max_in_flight() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Option<SecretString>,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub data_dir: PathBuf,
    pub auto_migrate: bool,
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; overrides the URL's
    /// `sslmode`.
    pub ssl_mode: Option<String>,
    /// PEM file of the certificate authorities trusted for the server's certificate.
    pub ssl_root_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    pub brokers: Option<String>,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication: i32,
    pub consumer_group_prefix: String,
    pub message_timeout_ms: u64,
    pub relay_batch_size: i64,
    /// How often the relay's process publishes the audit chain's head (when it moved).
    pub audit_head_interval_secs: u64,
    pub fetch_wait_max_ms: u64,
    pub security_protocol: Option<String>,
    pub ssl_ca_location: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<SecretString>,
    /// Client certificate and key (PEM) for brokers that require mutual TLS.
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub token_ttl_secs: u64,
    /// This service's organization. Tokens whose `org` claim names another one reach only
    /// patients whose consent shares their record with it.
    pub organization: Option<String>,
    /// The identity provider's JSON Web Key Set, as a file or a URL: RS256 and ES256 tokens
    /// signed by its keys are accepted (and HS256 development tokens no longer are).
    pub jwks_path: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// The soonest `jwks_url` is fetched again when a token names a key not in the set.
    pub jwks_refetch_interval_secs: u64,
    /// A session unused this long ends (automatic logoff).
    pub idle_timeout_secs: u64,
    /// How many patients one user may open under break-the-glass in an hour; past it, 429.
    pub break_glass_patients_per_hour: u32,
    /// SMART on FHIR: the identity provider's authorization server, which apps are sent to
    /// (`/fhir/R4/.well-known/smart-configuration` tells them where). Unset, that document
    /// answers 404; scopes in tokens are honoured either way.
    #[serde(default)]
    pub smart: Option<SmartSettings>,
    /// SMART Backend Services: the systems (an analytics service, say) allowed to get access
    /// tokens at `POST /auth/token` by a JWT assertion signed with a key of their registered
    /// key set.
    #[serde(default)]
    pub backend_clients: Vec<BackendClient>,
    /// How long an access token issued to a backend client lasts.
    pub backend_token_ttl_secs: u64,
    /// The public URL of `POST /auth/token`, which backend clients' assertions must name as
    /// their audience. Unset: the URL the request was sent to (its `Host`), which lets an
    /// assertion made for another server that shares the client's keys be replayed here.
    pub backend_token_url: Option<String>,
}

/// A backend client registered for SMART Backend Services.
#[derive(Debug, Clone, Deserialize)]
pub struct BackendClient {
    /// The client's id: the `iss` and `sub` of its assertions.
    pub client_id: String,
    /// The client's public keys (RS384 or ES384, also RS256 and ES256), as a file or a URL.
    pub jwks_path: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// The most the client may be granted: `system/` scopes (space-separated).
    pub scope: String,
    /// The roles its tokens act with (narrowed by the scopes granted).
    pub roles: Vec<String>,
    /// The client's organization (required when `auth.organization` is set).
    pub organization: Option<String>,
}

/// Where SMART apps get their tokens: the identity provider's endpoints and what it supports.
#[derive(Debug, Clone, Deserialize)]
pub struct SmartSettings {
    /// Where apps are sent to log in (unset for an authorization server of backend clients
    /// only).
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    /// The grant types the authorization server supports.
    #[serde(default = "default_grant_types")]
    pub grant_types_supported: Vec<String>,
    /// How clients authenticate at the token endpoint.
    #[serde(default = "default_token_auth_methods")]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The SMART capabilities of the authorization server (launch modes, client types); the
    /// permission capabilities this service honours are added to them.
    #[serde(default = "default_smart_capabilities")]
    pub capabilities: Vec<String>,
}

fn default_grant_types() -> Vec<String> {
    vec!["authorization_code".into()]
}

fn default_token_auth_methods() -> Vec<String> {
    vec!["client_secret_basic".into(), "private_key_jwt".into()]
}

fn default_smart_capabilities() -> Vec<String> {
    [
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "context-standalone-patient",
    ]
    .into_iter()
    .map(Into::into)
    .collect()
}

/// The shortest HS256 secret accepted outside the embedded development default.
pub const MIN_SECRET_BYTES: usize = 32;

impl AuthSettings {
    /// Whether tokens are checked against an identity provider's keys (not the HS256 secret).
    pub fn uses_jwks(&self) -> bool {
        self.jwks_path.is_some() || self.jwks_url.is_some()
    }

    /// Whether the HS256 secret is the public one `base.yaml` ships with.
    pub fn uses_development_secret(&self) -> bool {
        self.jwt_secret.expose_secret() == DEVELOPMENT_SECRET
    }

    /// Refuses an HS256 secret anyone could know or guess, unless `development` (the embedded
    /// default, on one machine): the development secret is public, and a short one can be
    /// found by trying.
    ///
    /// # Errors
    ///
    /// Saying which setting to change.
    pub fn check_secret(&self, development: bool) -> anyhow::Result<()> {
        if self.uses_jwks() || development {
            return Ok(());
        }
        if self.uses_development_secret() {
            anyhow::bail!(
                "refusing to start: auth.jwt_secret is the public development secret; set \
                 APP_AUTH__JWT_SECRET (at least {MIN_SECRET_BYTES} random bytes) or a JWKS"
            );
        }
        if self.jwt_secret.expose_secret().len() < MIN_SECRET_BYTES {
            anyhow::bail!(
                "refusing to start: auth.jwt_secret is shorter than {MIN_SECRET_BYTES} bytes"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Settings {
    /// The compiled-in defaults alone, ignoring files and environment (tests start here).
    ///
    /// # Errors
    ///
    /// Only if the compiled-in file is broken, which a unit test rules out.
    pub fn base() -> Result<Self, config::ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(BASE, config::FileFormat::Yaml))
            .build()?
            .try_deserialize()
    }

    /// Loads every layer, reading environment files from `dir` (default `configuration`).
    ///
    /// # Errors
    ///
    /// A [`config::ConfigError`] naming the bad key.
    pub fn load(dir: Option<&Path>) -> Result<Self, config::ConfigError> {
        let dir = dir.unwrap_or_else(|| Path::new("configuration"));
        let environment = std::env::var("APP_ENVIRONMENT").unwrap_or_else(|_| "local".into());
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(BASE, config::FileFormat::Yaml))
            .add_source(config::File::from(dir.join(format!("{environment}.yaml"))).required(false))
            .add_source(
                config::Environment::with_prefix("APP")
                    .prefix_separator("_")
                    .separator("__"),
            );
        // Lists from the environment: comma-separated (base64 has no commas).
        for (variable, key) in [
            (
                "APP_SECURITY__PREVIOUS_MASTER_KEYS",
                "security.previous_master_keys",
            ),
            (
                "APP_SECURITY__PREVIOUS_AUDIT_KEYS",
                "security.previous_audit_keys",
            ),
        ] {
            if let Ok(keys) = std::env::var(variable) {
                let keys: Vec<String> = keys
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect();
                builder = builder.set_override(key, keys)?;
            }
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            builder = builder.set_override("database.url", url)?;
        }
        if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
            builder = builder.set_override("kafka.brokers", brokers)?;
        }
        builder.build()?.try_deserialize()
    }
}

impl Settings {
    /// What in this configuration sends data or trusts keys over connections nobody checks:
    /// the service starts, and logs each at start.
    pub fn transport_warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        let database_tls_set = self.database.ssl_mode.is_some()
            || self
                .database
                .url
                .as_ref()
                .is_some_and(|url| url.expose_secret().contains("sslmode="));
        if self.database.url.is_some() && !database_tls_set {
            warnings.push(
                "database TLS is left at the driver default (prefer: unverified, and plaintext \
                 when the server offers no TLS); set database.ssl_mode to verify-full",
            );
        }
        let kafka_plaintext = matches!(
            self.kafka
                .security_protocol
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            None | Some("plaintext" | "sasl_plaintext")
        );
        if self.kafka.brokers.is_some() && kafka_plaintext {
            warnings.push(
                "Kafka is reached in plaintext: set kafka.security_protocol to ssl or sasl_ssl",
            );
        }
        if self
            .auth
            .jwks_url
            .as_deref()
            .is_some_and(|url| url.to_ascii_lowercase().starts_with("http://"))
        {
            warnings.push(
                "the JWKS is fetched over http://: anyone on the path could swap the keys tokens \
                 are checked with; use https://",
            );
        }
        warnings
    }
}

impl DatabaseSettings {
    /// Connection options from the configured URL, if any.
    ///
    /// # Errors
    ///
    /// The parse error of a malformed URL.
    pub fn connect_options(&self) -> Result<Option<PgConnectOptions>, sqlx::Error> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut options = url.expose_secret().parse::<PgConnectOptions>()?;
        if let Some(mode) = &self.ssl_mode {
            options = options.ssl_mode(mode.parse()?);
        }
        if let Some(root) = &self.ssl_root_cert {
            options = options.ssl_root_cert(root);
        }
        Ok(Some(options))
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

impl KafkaSettings {
    /// The librdkafka client settings (brokers and security), if brokers are configured.
    pub fn client_config(&self) -> Option<ClientConfig> {
        let brokers = self.brokers.as_deref().filter(|b| !b.trim().is_empty())?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        let optional = [
            ("security.protocol", self.security_protocol.as_deref()),
            ("ssl.ca.location", self.ssl_ca_location.as_deref()),
            (
                "ssl.certificate.location",
                self.ssl_certificate_location.as_deref(),
            ),
            ("ssl.key.location", self.ssl_key_location.as_deref()),
            ("sasl.mechanism", self.sasl_mechanism.as_deref()),
            ("sasl.username", self.sasl_username.as_deref()),
            (
                "sasl.password",
                self.sasl_password.as_ref().map(ExposeSecret::expose_secret),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
        Some(config)
    }

    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }

    /// The name of the topic `name` (one of [`schemas::topics`]) with the configured prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_defaults_parse() {
        let settings = Settings::base().unwrap();
        assert_eq!(settings.http.port, 8080);
        assert!(settings.database.url.is_none());
        assert!(settings.kafka.client_config().is_none());
        assert_eq!(settings.auth.jwt_secret.expose_secret(), DEVELOPMENT_SECRET);
        assert!(
            settings.transport_warnings().is_empty(),
            "the embedded default talks to nothing"
        );
    }

    #[test]
    fn kafka_client_config_carries_brokers_and_security() {
        let mut settings = Settings::base().unwrap().kafka;
        settings.brokers = Some("127.0.0.1:9092".into());
        settings.security_protocol = Some("ssl".into());
        let config = settings.client_config().unwrap();
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("sasl.password"), None);
    }

    #[test]
    fn unchecked_transports_and_guessable_secrets_are_named() {
        let mut settings = Settings::base().unwrap();
        settings.database.url = Some(SecretString::from("postgres://db.internal/ps"));
        settings.kafka.brokers = Some("kafka.internal:9092".into());
        settings.auth.jwks_url = Some("http://idp.internal/jwks.json".into());
        let warnings = settings.transport_warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");

        settings.database.ssl_mode = Some("verify-full".into());
        settings.kafka.security_protocol = Some("SASL_SSL".into());
        settings.auth.jwks_url = Some("https://idp.internal/jwks.json".into());
        assert!(settings.transport_warnings().is_empty());

        let mut auth = Settings::base().unwrap().auth;
        assert!(
            auth.check_secret(true).is_ok(),
            "the embedded default may use it"
        );
        assert!(auth.check_secret(false).is_err(), "a deployment may not");
        auth.jwt_secret = SecretString::from("x".repeat(MIN_SECRET_BYTES - 1));
        assert!(auth.check_secret(false).is_err());
        auth.jwt_secret = SecretString::from("x".repeat(MIN_SECRET_BYTES));
        assert!(auth.check_secret(false).is_ok());
    }
}
