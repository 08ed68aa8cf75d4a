//! The HTTP API: routes, shared state, and the middleware every request passes through
//! (request id, trace context, timeout, body limit, problem+json for every error).

mod audit;
mod data_keys;
mod extractors;
pub mod fhir;
mod governance;
pub mod health;
mod idempotency;
pub mod input;
pub mod json;
mod medical_records;
mod metrics;
pub mod openapi;
mod params;
mod patient_commands;
mod patients;
mod problem;
mod record;
mod scheduling;
pub mod server;
mod sessions;
pub mod tls;
pub(crate) mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use event_store::documents::{DocumentStorage, DocumentStore};
use event_store::idempotency::IdempotencyKeys;
use event_store::records::{ClinicalEntryStore, MedicalRecordStore};
use event_store::schedule::AppointmentStore;
use event_store::store::PatientStore;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

use crate::auth::access::AccessLog;
use crate::auth::Authenticator;
use crate::configuration::Secrets;
pub use problem::{ApiError, Problem, PROBLEM_JSON};

pub use application::clock::{system_clock, Clock};
use application::services::Services;

/// A list answered whole: `{"items": [...]}`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "ItemsOf{T}")]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// What every handler can reach: the application layer's [`Services`] (reached through
/// `Deref`: `state.pool`, `state.store`, ...), and what only the transport needs.
#[derive(Clone)]
pub struct AppState {
    services: Services,
    pub idempotency: IdempotencyKeys,
    pub auth: Arc<Authenticator>,
    /// The largest document accepted, in bytes.
    pub document_max_bytes: usize,
    /// Uploads being read now, at most `documents.max_concurrent_uploads`.
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Requests being handled now, at most `http.max_in_flight`.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Whether the API is served over HTTPS: absolute URLs (FHIR's) name the scheme.
    pub https: bool,
    /// SMART on FHIR's authorization server, when configured.
    pub smart: Option<Arc<crate::configuration::SmartSettings>>,
    /// The identity provider's issuer and key set URL, for SMART discovery.
    pub identity: (Option<String>, Option<String>),
    /// The public URL of the backend clients' token endpoint (their assertions' audience),
    /// when configured; else the URL a request reached.
    pub backend_token_url: Option<String>,
    /// FHIR Bulk Data exports: where they are kept, how they are cut and kept, and the bell
    /// that wakes this process's export runner when one is asked for.
    pub exports: event_store::exports::ExportStore,
    pub export_settings: crate::configuration::ExportSettings,
    pub export_bell: Arc<tokio::sync::Notify>,
    /// How long this process's requests took, for `/metrics`.
    pub http_metrics: metrics::HttpMetrics,
    /// In a process without the API: the readers its readiness answers for.
    pub duties: health::Duties,
    /// The brokers, when configured: `/metrics` reads the projectors' consumer group lag there.
    pub kafka: Option<crate::configuration::KafkaSettings>,
    /// Each Kafka-fed read model's committed offsets as readiness last saw them, and since when.
    pub consumer_progress:
        Arc<std::sync::Mutex<std::collections::HashMap<String, (i64, std::time::Instant)>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl AppState {
    /// This state bound to a unit of work, so that the commands of one request are stored
    /// together: the unit it is bound to already (a FHIR transaction's, committed with the
    /// transaction), or a new one, returned for the caller to commit.
    #[must_use]
    pub fn in_some_unit(&self) -> (Self, Option<event_store::command::UnitOfWork>) {
        if self.services.store.unit().is_some() {
            return (self.clone(), None);
        }
        let unit = event_store::command::UnitOfWork::default();
        (self.in_unit(&unit), Some(unit))
    }

    /// This state with its stores staging their commands in `unit` ([`Services::in_unit`]).
    #[must_use]
    pub fn in_unit(&self, unit: &event_store::command::UnitOfWork) -> Self {
        Self {
            services: self.services.in_unit(unit),
            ..self.clone()
        }
    }

    pub fn new(pool: PgPool, auth: Authenticator, clock: Clock, secrets: Secrets) -> Self {
        let services = Services {
            home_organization: auth.organization().map(str::to_owned),
            access: AccessLog::new(pool.clone(), secrets.chain.clone()),
            records: MedicalRecordStore::new(
                pool.clone(),
                secrets.keys.clone(),
                secrets.chain.clone(),
            ),
            entries: ClinicalEntryStore::new(
                pool.clone(),
                secrets.keys.clone(),
                secrets.chain.clone(),
            ),
            documents: DocumentStore::new(
                pool.clone(),
                secrets.keys.clone(),
                DocumentStorage::Database,
            ),
            appointments: AppointmentStore::new(
                pool.clone(),
                secrets.keys.clone(),
                secrets.chain.clone(),
            ),
            scheduling: crate::configuration::SchedulingSettings::default(),
            extractor: Arc::new(crate::extraction::Extractor::default()),
            store: PatientStore::new(pool.clone(), secrets.keys.clone(), secrets.chain),
            pool: pool.clone(),
            clock,
            retention_days: crate::configuration::DEFAULT_RETENTION_DAYS,
        };
        Self {
            exports: event_store::exports::ExportStore::new(pool.clone(), secrets.keys),
            export_settings: crate::configuration::ExportSettings::default(),
            export_bell: Arc::new(tokio::sync::Notify::new()),
            backend_token_url: None,
            http_metrics: metrics::HttpMetrics::default(),
            duties: health::Duties::default(),
            kafka: None,
            consumer_progress: Arc::default(),
            services,
            idempotency: IdempotencyKeys::new(pool),
            auth: Arc::new(auth),
            document_max_bytes: crate::configuration::DEFAULT_DOCUMENT_MAX_BYTES,
            uploads: Arc::new(tokio::sync::Semaphore::new(4)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(256)),
            https: false,
            smart: None,
            identity: (None, None),
        }
    }

    /// What the use cases of the application layer reach.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Lets one user open at most `limit` patients an hour under break-the-glass.
    #[must_use]
    pub fn with_emergency_limit(mut self, limit: u32) -> Self {
        self.services.access = self.services.access.with_emergency_limit(limit);
        self
    }

    /// SMART on FHIR discovery: the authorization server, and the identity provider's issuer
    /// and key set URL.
    #[must_use]
    pub fn with_smart(mut self, auth: &crate::configuration::AuthSettings) -> Self {
        self.smart = auth.smart.clone().map(Arc::new);
        self.identity = (auth.issuer.clone(), auth.jwks_url.clone());
        self.backend_token_url = auth.backend_token_url.clone();
        self
    }

    /// How exports are cut and how long they are kept.
    #[must_use]
    pub fn with_exports(mut self, settings: &crate::configuration::ExportSettings) -> Self {
        self.export_settings = settings.clone();
        self
    }

    /// The brokers whose consumer group lag `/metrics` reports (when configured).
    #[must_use]
    pub fn with_kafka(mut self, kafka: &crate::configuration::KafkaSettings) -> Self {
        self.kafka = kafka.client_config().is_some().then(|| kafka.clone());
        self
    }

    /// At most `limit` requests handled at once (`http.max_in_flight`).
    #[must_use]
    pub fn with_max_in_flight(mut self, limit: usize) -> Self {
        self.in_flight = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
        self
    }

    #[must_use]
    pub fn with_https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    pub fn with_retention_days(mut self, days: u32) -> Self {
        self.services.retention_days = days;
        self
    }

    /// The scheduling policy.
    pub fn with_scheduling(mut self, scheduling: crate::configuration::SchedulingSettings) -> Self {
        self.services.scheduling = scheduling;
        self
    }

    /// Where documents are stored and the largest accepted.
    pub fn with_documents(
        mut self,
        settings: &crate::configuration::DocumentSettings,
    ) -> anyhow::Result<Self> {
        self.services.documents = DocumentStore::new(
            self.services.pool.clone(),
            self.services.store.keys().clone(),
            settings.storage()?,
        );
        self.document_max_bytes = settings.max_bytes;
        self.uploads = Arc::new(tokio::sync::Semaphore::new(
            settings.max_concurrent_uploads.max(1),
        ));
        self.services.extractor = Arc::new(crate::extraction::Extractor::new(settings));
        Ok(self)
    }
}

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Answers 413 at once to a request whose `Content-Length` is over `limit`, before its body is
/// read (or anything else done): a body is never read only to be refused at its end.
pub async fn refuse_declared_over(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u128>().ok());
    if declared.is_some_and(|length| length > limit as u128) {
        return axum::response::IntoResponse::into_response(ApiError::PayloadTooLarge);
    }
    next.run(req).await
}

/// Answers 503 with `Retry-After` at once when `in_flight` has no place left, rather than
/// letting requests queue into their timeouts; the health checks and `/metrics` always pass
/// (an orchestrator must see the process alive while it sheds load).
async fn shed_load(
    axum::extract::State(in_flight): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path.starts_with("/health") || path == "/metrics" {
        return next.run(req).await;
    }
    let Ok(_place) = in_flight.try_acquire_owned() else {
        tracing::warn!("overloaded: a request was shed");
        return axum::response::IntoResponse::into_response(ApiError::Overloaded);
    };
    next.run(req).await
}

/// The scheme and authority requests reach this service at (`Host`, checked).
pub fn origin(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if state.https { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// The native API's routes, each with what describes it.
fn native_routes(document_limit: usize) -> openapi::Routes {
    patients::router()
        .merge(record::router())
        .merge(medical_records::router(document_limit))
        .merge(scheduling::router())
        .merge(audit::router())
        .merge(data_keys::router())
        .merge(governance::router())
        .merge(sessions::router())
        .merge(token::router())
        .merge(health::router())
        .merge(metrics::router())
}

/// What a process without the API serves (on `health.port`): its health checks and metrics,
/// their readiness answering for `duties`.
pub fn operations_router(state: AppState, duties: health::Duties) -> Router {
    let (routes, _) = health::router().merge(metrics::router()).into_parts();
    routes
        .with_state(AppState { duties, ..state })
        .layer(axum::middleware::from_fn(problem_for_plain_errors))
}

/// The OpenAPI 3.1 document of the native API, as `/openapi.json` serves it.
pub fn openapi_document() -> serde_json::Value {
    native_routes(crate::configuration::DEFAULT_DOCUMENT_MAX_BYTES)
        .into_parts()
        .1
}

/// The router with every route and layer.
pub fn router(state: AppState, request_timeout: Duration, body_limit: usize) -> Router {
    let document_limit = state.document_max_bytes;
    let in_flight = state.in_flight.clone();
    let http_metrics = state.http_metrics.clone();
    // The largest body any route takes: a document's upload, or a FHIR Bundle.
    let largest = body_limit
        .max(document_limit.saturating_add(medical_records::MULTIPART_OVERHEAD))
        .max(fhir::MAX_BUNDLE_BYTES);
    let (native, description) = native_routes(document_limit).into_parts();
    let description = Arc::new(description);
    Router::new()
        .merge(native)
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(description.as_ref().clone()) }),
        )
        .merge(fhir::router())
        .with_state(state)
        .layer(axum::middleware::from_fn(refuse_nul_in_uri))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            largest,
            refuse_declared_over,
        ))
        .layer(axum::middleware::from_fn_with_state(in_flight, shed_load))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        // A panic answers a plain 500 problem: its message may hold anything, so it is not sent.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                )
                .into_response_with(&[])
            },
        ))
        // Outside the timeout, so a timed-out request answers problem+json too.
        .layer(axum::middleware::from_fn(problem_for_plain_errors))
        .layer(axum::middleware::from_fn(fhir_errors_in_fhir))
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            metrics::observe,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let request_id = req
                .extensions()
                .get::<RequestContext>()
                .map(|c| c.request_id.as_str())
                .unwrap_or_default();
            // The route template, not the path: a path may carry anything a caller typed in
            // place of an id. Never the query either, which holds search terms.
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            tracing::info_span!("http", method = %req.method(), route, request_id)
        }))
        .layer(axum::middleware::from_fn(request_context))
}

/// A caller inside this process (the import, which sends its requests through the router
/// without a network): set as a request extension, which no client can set, and taken as the
/// authenticated caller.
#[derive(Debug, Clone)]
pub struct TrustedCaller(pub crate::auth::AuthUser);

/// The id an in-process import gives what a create makes (derived from the source's id, so a
/// second run finds it taken): a request extension, as [`TrustedCaller`].
#[derive(Debug, Clone, Copy)]
pub struct ImportedId(pub uuid::Uuid);

/// The request id and W3C trace context of a request, as recorded with its events.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub traceparent: String,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| RequestContext::new(None, None)))
    }
}

impl RequestContext {
    fn new(request_id: Option<&str>, traceparent: Option<&str>) -> Self {
        // A caller's id is kept only if it is short and plain, since it goes into logs,
        // events and Kafka headers.
        let request_id = request_id
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            })
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let traceparent = traceparent.filter(|tp| is_traceparent(tp)).map_or_else(
            || {
                let trace = uuid::Uuid::new_v4().simple().to_string();
                let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
                format!("00-{trace}-{span}-01")
            },
            str::to_owned,
        );
        Self {
            request_id,
            traceparent,
        }
    }
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

async fn request_context(mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let context = RequestContext::new(
        headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()),
        headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
    );
    let request_id = HeaderValue::from_str(&context.request_id).ok();
    req.extensions_mut().insert(context);
    let mut response = next.run(req).await;
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// Where a request's path or query holds a NUL character (`%00`), by the parameter's name (the
/// path: `path`): PostgreSQL's text cannot hold one, so no parameter with one goes further.
pub fn nul_in_uri(uri: &axum::http::Uri) -> Option<String> {
    if uri.path().to_ascii_lowercase().contains("%00") {
        return Some("path".into());
    }
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        .map(|(name, _)| name.replace('\0', "\\0"))
}

/// Refuses a request whose path or query holds a NUL character, naming the parameter (400).
async fn refuse_nul_in_uri(req: Request, next: Next) -> Response {
    let Some(name) = nul_in_uri(req.uri()) else {
        return next.run(req).await;
    };
    axum::response::IntoResponse::into_response(ApiError::InvalidParameters(
        domain::FieldError::new(name, "must not contain the NUL character (U+0000)").into(),
    ))
}

/// Error answers to requests of the FHIR API that the outer layers gave (load shed, a length
/// over the limit, a NUL in the query, a timeout) as OperationOutcomes, like the API's own.
async fn fhir_errors_in_fhir(req: Request, next: Next) -> Response {
    let fhir = req.uri().path().starts_with(fhir::BASE);
    let response = next.run(req).await;
    if fhir {
        fhir::as_operation_outcome(response).await
    } else {
        response
    }
}

/// Rewrites error answers produced outside our handlers (unknown route, wrong method, a
/// timeout) as problem+json, so every error a client sees has one shape.
async fn problem_for_plain_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    // Our own errors are problem+json already (FHIR's are OperationOutcomes); health answers
    // are plain JSON on purpose.
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes() == PROBLEM_JSON.as_bytes()
                || v.as_bytes() == b"application/json"
                || v.as_bytes() == fhir::FHIR_JSON.as_bytes()
        });
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let slug = title.to_ascii_lowercase().replace(' ', "-");
    let mut extra = Vec::new();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            extra.push((name, value.clone()));
        }
    }
    Problem::new(status, &slug, title).into_response_with(&extra)
}

/// The strong ETag of an aggregate version.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The version an `If-Match` header names: `"3"`. Weak tags (`W/"3"`) are refused: If-Match
/// compares strongly (RFC 9110, section 13.1.1).
///
/// # Errors
///
/// [`ApiError::PreconditionRequired`] when absent, [`ApiError::InvalidParameters`] when it is
/// not one of our ETags.
pub fn if_match(headers: &axum::http::HeaderMap) -> Result<u64, ApiError> {
    let value = headers
        .get(header::IF_MATCH)
        .ok_or(ApiError::PreconditionRequired)?
        .to_str()
        .map_err(|_| ApiError::invalid_parameter("If-Match", "must be an ETag"))?
        .trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::invalid_parameter("If-Match", "must be an ETag such as \"3\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_strong_etags_only() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(matches!(
            if_match(&headers),
            Err(ApiError::PreconditionRequired)
        ));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"3\""));
        assert_eq!(if_match(&headers).unwrap(), 3);
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"4\""));
        assert!(matches!(
            if_match(&headers),
            Err(ApiError::InvalidParameters(_))
        ));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("3"));
        assert!(matches!(
            if_match(&headers),
            Err(ApiError::InvalidParameters(_))
        ));
    }

    #[test]
    fn request_ids_from_callers_are_kept_only_when_plain() {
        assert_eq!(
            RequestContext::new(Some("abc-123"), None).request_id,
            "abc-123"
        );
        let replaced = RequestContext::new(Some("has space\n"), None).request_id;
        assert_ne!(replaced, "has space\n");
        assert_eq!(replaced.len(), 36);
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_generated_otherwise() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(RequestContext::new(None, Some(tp)).traceparent, tp);
        let generated = RequestContext::new(None, Some("garbage")).traceparent;
        assert!(is_traceparent(&generated), "{generated}");
    }
}
