//! The HL7 FHIR R4 (4.0.1) REST API under `/fhir/R4`, over the same use cases, access rules and
//! access log as the native API.
//!
//! JSON only: a request for XML (`_format`, `Accept` or `Content-Type`) answers 415. Every error
//! is an `OperationOutcome`: the native API's problem+json answers (which its extractors and use
//! cases produce) are turned into one here, one issue per bad field, the field in `expression`.

mod appointment;
mod audit;
mod batch;
mod capability;
mod clinical;
pub use clinical::ACKNOWLEDGE;
pub use patient::DUPLICATE_OVERRIDE;
mod clinical_input;
mod consent;
mod coverage;
mod document;
mod everything;
mod export;
pub mod export_runner;
mod patient;
mod patient_contacts;
mod patient_update;
mod record_part;
mod reference;
mod schedule;
mod smart;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::{ApiError, AppState, RequestContext, PROBLEM_JSON};
use crate::auth::{AuthUser, Authorized, Permission};
use axum::http::HeaderMap;
use domain::patient::PatientId;
use domain::{FieldError, FieldErrors};

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Where the FHIR API is served.
pub const BASE: &str = "/fhir/R4";

/// Every resource type the FHIR API serves in some way (what SMART scopes can name here).
pub const RESOURCE_TYPES: &[&str] = &[
    "Patient",
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Immunization",
    "Condition",
    "Observation",
    "Procedure",
    "Encounter",
    "DocumentReference",
    "Coverage",
    "Consent",
    "Appointment",
    "Schedule",
    "Slot",
    "Practitioner",
    "Location",
    "Device",
    "AuditEvent",
    "Provenance",
];

/// The largest error body turned into an `OperationOutcome`; problem+json answers are small.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    let api = Router::new()
        .route("/", axum::routing::post(batch::bundle))
        .route("/metadata", get(capability::metadata))
        .route(
            "/.well-known/smart-configuration",
            get(smart::configuration),
        )
        .merge(patient::router())
        .route("/Patient/{id}/$everything", get(everything::everything))
        .merge(export::router())
        .merge(patient_update::router())
        .merge(clinical::router())
        .merge(document::router())
        .merge(appointment::router())
        .merge(reference::router())
        .merge(coverage::router())
        .merge(consent::router())
        .merge(schedule::router())
        .merge(audit::router())
        .fallback(unknown)
        .layer(axum::middleware::from_fn(operation_outcomes))
        .layer(axum::middleware::from_fn(json_only))
        .layer(axum::middleware::from_fn(mark));
    // Clients post Bundles to the base with a trailing slash too (fhir-kit-client does).
    // The layers go on this one route: on a router they would reach every unknown path of
    // the service through its fallback once merged.
    let base_with_slash = Router::new().route(
        &format!("{BASE}/"),
        axum::routing::post(batch::bundle)
            .layer(axum::middleware::from_fn(operation_outcomes))
            .layer(axum::middleware::from_fn(json_only)),
    );
    Router::new().nest(BASE, api).merge(base_with_slash)
}

/// Marks a request as one to the FHIR API (whose router is nested: the path a handler sees is
/// the one within it). The token's SMART scopes are checked against it.
#[derive(Debug, Clone, Copy)]
pub struct FhirApi;

async fn mark(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(FhirApi);
    next.run(req).await
}

async fn unknown() -> Response {
    outcome(
        StatusCode::NOT_FOUND,
        &[Issue::new(
            "not-found",
            "no such resource type or interaction",
        )],
    )
}

/// One issue of an `OperationOutcome`.
#[derive(Debug, Clone)]
pub struct Issue {
    code: &'static str,
    diagnostics: String,
    expression: Option<String>,
    /// `warning` for an issue that is not itself the error (the answer's status says that).
    warning: bool,
}

impl Issue {
    pub fn new(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            code,
            diagnostics: diagnostics.into(),
            expression: None,
            warning: false,
        }
    }

    /// An issue of severity `warning`.
    pub fn warning(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            warning: true,
            ..Self::new(code, diagnostics)
        }
    }

    #[must_use]
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    fn to_json(&self, severity: &str) -> Value {
        let severity = if self.warning { "warning" } else { severity };
        let mut issue = json!({
            "severity": severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if let Some(expression) = &self.expression {
            issue["expression"] = json!([expression]);
        }
        issue
    }
}

/// An `OperationOutcome` answer with `issues` (errors).
pub fn outcome(status: StatusCode, issues: &[Issue]) -> Response {
    let severity = if status.is_server_error() {
        "fatal"
    } else {
        "error"
    };
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(|i| i.to_json(severity)).collect::<Vec<_>>(),
    });
    resource(status, &body)
}

/// `body` as a FHIR answer.
pub fn resource(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        body.to_string(),
    )
        .into_response()
}

/// A version's weak ETag, as FHIR writes it: `W/"3"`.
pub fn weak_etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("W/\"{version}\""))
        .unwrap_or(HeaderValue::from_static("W/\"0\""))
}

/// The header a client may give an update's reason in; else [`DEFAULT_REASON`].
pub const CHANGE_REASON: &str = "x-change-reason";
pub const DEFAULT_REASON: &str = "updated through the FHIR API";

/// The version an `If-Match` names: `W/"3"` (FHIR's) or `"3"`.
pub fn expected_version(headers: &HeaderMap) -> Result<u64, ApiError> {
    let value = headers
        .get(header::IF_MATCH)
        .ok_or(ApiError::PreconditionRequired)?
        .to_str()
        .unwrap_or_default()
        .trim();
    value
        .strip_prefix("W/")
        .unwrap_or(value)
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::invalid_parameter("If-Match", "must be an ETag such as W/\"3\""))
}

/// `body` as a FHIR answer at `version`: its `ETag` is `W/"version"`.
pub fn versioned(status: StatusCode, body: &Value, version: u64) -> Response {
    let mut answer = resource(status, body);
    answer
        .headers_mut()
        .insert(header::ETAG, weak_etag(version));
    answer
}

/// The answer to a vread of version `vid` of a resource now at `current`: the resource as
/// `at` gives it for that version, or 404 when the version is not one of it (or is gone).
///
/// # Errors
///
/// What `at` fails with.
pub async fn vread<Fut>(
    vid: &str,
    current: u64,
    at: impl FnOnce(u64) -> Fut,
) -> Result<Response, ApiError>
where
    Fut: std::future::Future<Output = Result<Option<Value>, ApiError>>,
{
    let version = vid
        .parse::<u64>()
        .ok()
        .filter(|v| (1..=current).contains(v));
    let then = match version {
        Some(version) => at(version).await?,
        None => None,
    };
    Ok(match (version, then) {
        (Some(version), Some(body)) => versioned(StatusCode::OK, &body, version),
        _ => outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such version")],
        ),
    })
}

/// Names where the answer's resource is (`Location`).
pub fn locate(answer: &mut Response, url: &str) {
    if let Ok(location) = HeaderValue::from_str(url) {
        answer.headers_mut().insert(header::LOCATION, location);
    }
}

/// A FHIR write: who sends it, and what.
pub struct Write<P> {
    pub user: AuthUser,
    pub ctx: RequestContext,
    pub headers: HeaderMap,
    pub resource: Value,
    /// The id an in-process import gives what this creates ([`crate::http::ImportedId`]).
    pub imported_id: Option<uuid::Uuid>,
    permission: std::marker::PhantomData<P>,
}

impl<P> std::fmt::Debug for Write<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The resource holds patient data: never in a log.
        f.debug_struct("Write")
            .field("user", &self.user.id)
            .finish_non_exhaustive()
    }
}

impl<P: Permission + Send> FromRequest<AppState> for Write<P> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Authorized(user, _) = Authorized::<P>::from_request_parts(&mut parts, state).await?;
        let ctx = RequestContext::from_request_parts(&mut parts, state)
            .await
            .unwrap_or_else(|never| match never {});
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let v = v.to_ascii_lowercase();
                (v.starts_with("application/fhir+json") || v.starts_with("application/json"))
                    && crate::http::json::charset_is_utf8(&v)
            });
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = axum::body::to_bytes(Body::new(body), MAX_RESOURCE_BYTES)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?;
        let resource: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::MalformedJson("the body is not JSON".into()))?;
        if !resource.is_object() {
            return Err(ApiError::MalformedJson(
                "the body must be a resource".into(),
            ));
        }
        crate::http::json::refuse_nul(&resource)?;
        let imported_id = parts
            .extensions
            .get::<crate::http::ImportedId>()
            .map(|id| id.0);
        Ok(Self {
            user,
            ctx,
            headers: parts.headers,
            resource,
            imported_id,
            permission: std::marker::PhantomData,
        })
    }
}

/// The largest resource accepted.
pub const MAX_RESOURCE_BYTES: usize = 1024 * 1024;

/// The largest Bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = MAX_RESOURCE_BYTES * 16;

/// A history Bundle of `versions` (newest first) of resource `name/id`.
pub fn history_bundle(
    base: &str,
    name: &str,
    id: &str,
    versions: impl Iterator<Item = (Value, u32, Option<chrono::DateTime<chrono::Utc>>)>,
) -> Value {
    let entries: Vec<Value> = versions
        .map(|(resource, version, at)| {
            let (method, url, status) = if version == 1 {
                ("POST", name.to_owned(), "201 Created")
            } else {
                ("PUT", format!("{name}/{id}"), "200 OK")
            };
            let mut response = json!({ "status": status, "etag": format!("W/\"{version}\"") });
            if let Some(at) = at {
                response["lastModified"] =
                    json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            }
            json!({
                "fullUrl": format!("{base}/{name}/{id}"),
                "resource": resource,
                "request": { "method": method, "url": url },
                "response": response,
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": entries.len(),
        "link": [{ "relation": "self", "url": format!("{base}/{name}/{id}/_history") }],
        "entry": entries,
    })
}

/// A search's match: `resource` under its absolute URL (`{base}/{type}/{id}`).
pub fn match_entry(base: &str, resource: Value) -> Value {
    json!({
        "fullUrl": format!(
            "{base}/{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        ),
        "resource": resource,
        "search": { "mode": "match" },
    })
}

/// A `searchset` Bundle of `entries`, all the matches there are (`total` their count).
pub fn searchset(entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    })
}

/// Where a page of search results stands: its size (`_count`), its start (`_offset`), and
/// whether results follow it.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub count: usize,
    pub offset: usize,
    pub has_more: bool,
}

/// A searchset Bundle of one page of `name` results: `entries`, the `total` when known, and
/// `self`, `previous` and `next` links repeating the search's `query` (its paging left out).
pub fn page_bundle(
    (base, name): (&str, &str),
    query: &[(String, String)],
    paging: Paging,
    total: Option<u64>,
    entries: Vec<Value>,
) -> Value {
    let mut query: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| k != "_count" && k != "_offset")
        .cloned()
        .collect();
    query.sort();
    let link = |offset: usize| {
        let mut query = query.clone();
        query.push(("_count".into(), paging.count.to_string()));
        query.push(("_offset".into(), offset.to_string()));
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        format!("{base}/{name}?{encoded}")
    };
    let mut links = vec![json!({ "relation": "self", "url": link(paging.offset) })];
    if paging.offset > 0 {
        let previous = paging.offset.saturating_sub(paging.count);
        links.push(json!({ "relation": "previous", "url": link(previous) }));
    }
    if paging.has_more {
        links.push(json!({ "relation": "next", "url": link(paging.offset + paging.count) }));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    if let Some(total) = total {
        bundle["total"] = json!(total);
    }
    bundle
}

/// The search parameters of `resource_type` in `params` that are not among `known`, refused
/// by name.
/// An instant parameter `name` (`_since`): RFC 3339 with its time zone.
///
/// # Errors
///
/// A [`FieldError`] naming `name` when `raw` is not one.
pub fn instant(name: &str, raw: &str) -> Result<chrono::DateTime<chrono::Utc>, FieldError> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&chrono::Utc))
        .map_err(|_| {
            FieldError::new(
                name,
                "must be an instant with its time zone, such as 2024-01-31T08:00:00Z",
            )
        })
}

pub fn refuse_unknown<'a>(
    params: impl IntoIterator<Item = &'a String>,
    known: &[&str],
    resource_type: &str,
    errors: &mut FieldErrors,
) {
    for key in params {
        if !known.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key.clone(),
                format!(
                    "is not a search parameter of {resource_type} here (see /fhir/R4/metadata)"
                ),
            ));
        }
    }
}

/// The patient a per-patient search names under the first of `keys` given (`Patient/<id>` or
/// `<id>`); none given is an error on the first key.
pub fn patient_param(
    params: &std::collections::HashMap<String, String>,
    keys: &[&str],
    errors: &mut FieldErrors,
) -> Option<PatientId> {
    let Some(raw) = keys.iter().find_map(|k| params.get(*k)) else {
        errors.push(FieldError::new(
            keys.first().copied().unwrap_or("patient"),
            "is required: searches are per patient",
        ));
        return None;
    };
    errors.check(PatientId::parse(
        keys.first().copied().unwrap_or("patient"),
        raw.strip_prefix("Patient/").unwrap_or(raw),
    ))
}

/// What a use case found, or `None` where it found nothing (answered as FHIR's 404 by the
/// caller, with its own words).
pub fn found<T>(
    result: Result<T, application::services::UseCaseError>,
) -> Result<Option<T>, ApiError> {
    match result {
        Ok(found) => Ok(Some(found)),
        Err(application::services::UseCaseError::Refused(
            application::caller::Refused::NotFound,
        )) => Ok(None),
        Err(other) => Err(other.into()),
    }
}

/// The issue type for an HTTP status (FHIR's `IssueType` value set).
fn issue_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        401 => "login",
        403 => "forbidden",
        404 | 410 => "not-found",
        405 | 406 | 415 | 501 => "not-supported",
        409 | 412 | 428 => "conflict",
        413 => "too-costly",
        422 => "business-rule",
        429 | 503 => "throttled",
        504 => "timeout",
        _ => "exception",
    }
}

/// Turns the native API's problem+json answers (and any other error without a FHIR body)
/// into `OperationOutcome`s: one issue per field error, its field as `expression`; else one
/// issue with the problem's detail or title.
async fn operation_outcomes(req: Request, next: Next) -> Response {
    as_operation_outcome(next.run(req).await).await
}

/// An error answer to a request of the FHIR API as an OperationOutcome (the answers of the
/// service's outer layers, such as load shedding or a declared length over the limit, are
/// problem+json until this): each problem field an issue at that expression.
pub async fn as_operation_outcome(response: Response) -> Response {
    let status = response.status();
    let is_fhir = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/fhir+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_fhir {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    let (parts, body) = response.into_parts();
    let problem: Value = if is_problem {
        axum::body::to_bytes(body, MAX_PROBLEM_BYTES)
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let code = issue_code(status);
    let mut issues: Vec<Issue> = problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let field = e["field"].as_str().unwrap_or_default();
                    let issue = Issue::new(code, e["message"].as_str().unwrap_or("invalid"));
                    if field.is_empty() {
                        issue
                    } else {
                        issue.at(field)
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if issues.is_empty() {
        let text = problem["detail"]
            .as_str()
            .or_else(|| problem["title"].as_str())
            .or_else(|| status.canonical_reason())
            .unwrap_or("error");
        let mut issue = Issue::new(code, text);
        if let Some(rule) = problem["code"].as_str() {
            // The native rule's code, for a client to act on (e.g. `allergy-warning`).
            issue.diagnostics = format!("{rule}: {}", issue.diagnostics);
        }
        issues.push(issue);
    }
    let mut answer = outcome(status, &issues);
    for name in [
        header::ALLOW,
        header::RETRY_AFTER,
        header::WWW_AUTHENTICATE,
        header::ETAG,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// Whether a `_format` value, `Accept` or `Content-Type` names XML.
fn names_xml(value: &str) -> bool {
    let value = value.to_ascii_lowercase();
    value == "xml" || value.contains("/xml") || value.contains("+xml")
}

/// Whether a `_format` value names FHIR JSON.
fn names_json(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().split(';').next().map(str::trim),
        Some("json" | "application/json" | "application/fhir+json")
    )
}

/// JSON only: XML asked for in `_format`, `Accept` (with no JSON alternative) or sent as
/// `Content-Type` answers 415; `_format` is taken off the query once honoured.
async fn json_only(mut req: Request, next: Next) -> Response {
    let refused = |what: &str| {
        outcome(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &[Issue::new(
                "not-supported",
                format!("{what}: this server speaks FHIR JSON only (application/fhir+json)"),
            )
            .at(what)],
        )
    };
    let headers = req.headers();
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let accept = header_text(header::ACCEPT);
    if names_xml(&accept)
        && !accept.to_ascii_lowercase().contains("json")
        && !accept.contains("*/*")
    {
        return refused("Accept");
    }
    let content_type = header_text(header::CONTENT_TYPE);
    if names_xml(&content_type) || !crate::http::json::charset_is_utf8(&content_type) {
        return refused("Content-Type");
    }
    if let Some(query) = req.uri().query() {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if let Some((_, format)) = pairs.iter().find(|(k, _)| k == "_format") {
            if !names_json(format) {
                return refused("_format");
            }
            let kept: Vec<(String, String)> =
                pairs.into_iter().filter(|(k, _)| k != "_format").collect();
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish();
            let path = req.uri().path();
            let rebuilt = if query.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{query}")
            };
            if let Ok(uri) = rebuilt.parse::<Uri>() {
                *req.uri_mut() = uri;
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart() {
        assert!(names_xml("xml"));
        assert!(names_xml("application/fhir+xml"));
        assert!(names_xml("text/xml"));
        assert!(!names_xml("application/fhir+json"));
        assert!(names_json("json"));
        assert!(names_json("application/fhir+json; fhirVersion=4.0"));
        assert!(!names_json("turtle"));
    }
}
