//! `POST /fhir/R4` with a `batch` or a `transaction` Bundle.
//!
//! Each entry is a request (read, search, create, update) run through this same API under the
//! caller's credentials. In a `batch` each entry stands alone: it is answered in order in a
//! `batch-response`, one failing fails only itself. A `transaction` is all or nothing: its
//! entries run against stores bound to one unit of work ([`event_store::command::UnitOfWork`]), creates first
//! (each after the creates its `urn:uuid:` references name), then updates, then reads; the
//! first entry to fail fails the whole Bundle with its `OperationOutcome`, and nothing is
//! stored; otherwise every event of every entry is stored in one database transaction and the
//! answer is a `transaction-response`. A transaction writes patients (with their coverages and
//! consents) and clinical data; a booking (an `Appointment`) claims time outside the unit and
//! is refused in one.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::HashMap;
use tower::ServiceExt;

use super::{outcome, resource, Issue, BASE, MAX_RESOURCE_BYTES};
use crate::http::{ApiError, AppState};

/// The most entries one batch or transaction runs.
const MAX_ENTRIES: usize = 200;

/// Runs one entry as a request to this API; answers its `response` and `resource`.
async fn run_entry(state: &AppState, authorization: Option<&HeaderValue>, entry: &Value) -> Value {
    let failed = |status: StatusCode, diagnostics: &str| {
        json!({ "response": {
            "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
            "outcome": { "resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "invalid", "diagnostics": diagnostics }] },
        } })
    };
    let request = &entry["request"];
    let Some(method) = request["method"]
        .as_str()
        .and_then(|m| m.parse::<Method>().ok())
        .filter(|m| [Method::GET, Method::POST, Method::PUT].contains(m))
    else {
        return failed(
            StatusCode::BAD_REQUEST,
            "request.method must be GET, POST or PUT",
        );
    };
    let url = request["url"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/');
    if url.is_empty() || url.starts_with('?') || url.contains("://") {
        return failed(
            StatusCode::BAD_REQUEST,
            "request.url must name a resource type, relative to the base",
        );
    }
    let mut builder = axum::http::Request::builder()
        .method(method.clone())
        .uri(format!("{BASE}/{url}"))
        .header(header::CONTENT_TYPE, "application/fhir+json");
    if let Some(authorization) = authorization {
        builder = builder.header(header::AUTHORIZATION, authorization);
    }
    for (element, name) in [("ifMatch", "if-match"), ("ifNoneExist", "if-none-exist")] {
        if let Some(value) = request[element].as_str() {
            builder = builder.header(name, value);
        }
    }
    let body = if method == Method::GET {
        Body::empty()
    } else {
        Body::from(entry["resource"].to_string())
    };
    let Ok(inner) = builder.body(body) else {
        return failed(
            StatusCode::BAD_REQUEST,
            "request.url is not a valid address",
        );
    };
    let answer = match super::router()
        .with_state(state.clone())
        .oneshot(inner)
        .await
    {
        Ok(answer) => answer,
        Err(never) => match never {},
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = axum::body::to_bytes(answer.into_body(), MAX_RESOURCE_BYTES * 16)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    let mut response = json!({
        "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
    });
    for (name, element) in [(header::LOCATION, "location"), (header::ETAG, "etag")] {
        if let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) {
            response[element] = json!(value);
        }
    }
    if body["resourceType"] == "OperationOutcome" {
        response["outcome"] = body;
        json!({ "response": response })
    } else if body.is_object() {
        json!({ "resource": body, "response": response })
    } else {
        json!({ "response": response })
    }
}

/// The resource types a transaction may write: those whose use cases run on the stores a unit
/// of work binds.
const TRANSACTION_WRITES: &[&str] = &[
    "Patient",
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Immunization",
    "Condition",
    "Observation",
    "Procedure",
    "Encounter",
    "Coverage",
    "Consent",
];

/// `POST /fhir/R4`: a `batch` or a `transaction` Bundle.
pub(super) async fn bundle(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let bytes = axum::body::to_bytes(request.into_body(), super::MAX_BUNDLE_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let bundle: Value = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::MalformedJson("the body is not JSON".into()))?;
    if bundle["resourceType"] != "Bundle" {
        return Ok(outcome(
            StatusCode::BAD_REQUEST,
            &[
                Issue::new("invalid", "the base accepts a batch or transaction Bundle")
                    .at("Bundle.resourceType"),
            ],
        ));
    }
    let kind = bundle["type"].as_str();
    if !matches!(kind, Some("batch" | "transaction")) {
        return Ok(outcome(
            StatusCode::BAD_REQUEST,
            &[Issue::new("invalid", "must be batch or transaction").at("Bundle.type")],
        ));
    }
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    if entries.len() > MAX_ENTRIES {
        return Ok(outcome(
            StatusCode::PAYLOAD_TOO_LARGE,
            &[
                Issue::new("too-costly", format!("at most {MAX_ENTRIES} entries"))
                    .at("Bundle.entry"),
            ],
        ));
    }
    let answers = if kind == Some("transaction") {
        match transaction(&state, authorization.as_ref(), &entries).await? {
            Ok(answers) => answers,
            Err(refused) => return Ok(refused),
        }
    } else {
        let mut answers = Vec::with_capacity(entries.len());
        for entry in &entries {
            answers.push(run_entry(&state, authorization.as_ref(), entry).await);
        }
        answers
    };
    let kind = if kind == Some("transaction") {
        "transaction-response"
    } else {
        "batch-response"
    };
    Ok(resource(
        StatusCode::OK,
        &json!({ "resourceType": "Bundle", "type": kind, "entry": answers }),
    ))
}

/// The method of an entry, and the resource type its `request.url` names.
fn method_and_type(entry: &Value) -> (Option<&str>, &str) {
    let url = entry["request"]["url"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/');
    let resource_type = url.split(['/', '?']).next().unwrap_or_default();
    (entry["request"]["method"].as_str(), resource_type)
}

/// The `urn:uuid:` references in `value`.
fn placeholders(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map {
                match inner {
                    Value::String(reference)
                        if name == "reference" && reference.starts_with("urn:uuid:") =>
                    {
                        found.push(reference.clone());
                    }
                    _ => placeholders(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| placeholders(i, found)),
        _ => {}
    }
}

/// `value` with each `urn:uuid:` reference `resolved` names replaced by what it resolved to.
fn resolve(value: &mut Value, resolved: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map.iter_mut() {
                match inner {
                    Value::String(reference) if name == "reference" => {
                        if let Some(to) = resolved.get(reference.as_str()) {
                            *reference = to.clone();
                        }
                    }
                    _ => resolve(inner, resolved),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| resolve(i, resolved)),
        _ => {}
    }
}

/// The entries of a transaction in the order they run: creates (each after those whose
/// `fullUrl` its references name), updates, reads. `Err` names the entry that cannot run.
fn transaction_order(entries: &[Value]) -> Result<Vec<usize>, Issue> {
    let mut creates = Vec::new();
    let mut updates = Vec::new();
    let mut reads = Vec::new();
    let mut full_urls: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let (method, resource_type) = method_and_type(entry);
        let at = format!("Bundle.entry[{i}].request");
        match method {
            Some("POST") => creates.push(i),
            Some("PUT") => updates.push(i),
            Some("GET") => reads.push(i),
            _ => {
                return Err(Issue::new(
                    "not-supported",
                    "a transaction entry's method must be POST, PUT or GET",
                )
                .at(format!("{at}.method")))
            }
        }
        if method != Some("GET") && !TRANSACTION_WRITES.contains(&resource_type) {
            return Err(Issue::new(
                "not-supported",
                format!(
                    "a transaction writes {}; {resource_type} is written on its own (a batch)",
                    TRANSACTION_WRITES.join(", ")
                ),
            )
            .at(format!("{at}.url")));
        }
        if let Some(full_url) = entry["fullUrl"].as_str() {
            if full_url.starts_with("urn:uuid:") && full_urls.insert(full_url, i).is_some() {
                return Err(Issue::new("invalid", "two entries have this fullUrl")
                    .at(format!("Bundle.entry[{i}].fullUrl")));
            }
        }
    }
    let mut ordered = Vec::with_capacity(entries.len());
    let mut waiting = creates;
    while !waiting.is_empty() {
        let ready = waiting.iter().position(|&i| {
            let mut named = Vec::new();
            placeholders(&entries[i]["resource"], &mut named);
            named.iter().all(|reference| {
                full_urls
                    .get(reference.as_str())
                    .is_none_or(|&target| target == i || ordered.contains(&target))
            })
        });
        match ready {
            Some(position) => ordered.push(waiting.remove(position)),
            None => {
                return Err(Issue::new(
                    "invalid",
                    "the entries' references form a cycle: none of them can be created first",
                )
                .at(format!("Bundle.entry[{}].resource", waiting[0])))
            }
        }
    }
    ordered.extend(updates);
    ordered.extend(reads);
    Ok(ordered)
}

/// An entry's failure as the transaction's answer: its status, and its issues located in the
/// Bundle (`Observation.code` of entry 2 is `Bundle.entry[2].resource.code`).
fn entry_failed(index: usize, answer: &Value) -> Response {
    let status = answer["response"]["status"]
        .as_str()
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let mut issues: Vec<Value> = answer["response"]["outcome"]["issue"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let entry = format!("Bundle.entry[{index}]");
    for issue in &mut issues {
        if let Some(expressions) = issue["expression"].as_array_mut() {
            for expression in expressions {
                if let Some(path) = expression.as_str() {
                    let rest = path.split_once('.').map_or("", |(_, rest)| rest);
                    *expression = json!(if rest.is_empty() {
                        format!("{entry}.resource")
                    } else {
                        format!("{entry}.resource.{rest}")
                    });
                }
            }
        } else if let Some(object) = issue.as_object_mut() {
            object.insert("expression".into(), json!([entry]));
        }
    }
    if issues.is_empty() {
        issues.push(json!({ "severity": "error", "code": "processing",
                            "diagnostics": "the entry failed", "expression": [entry] }));
    }
    resource(
        status,
        &json!({ "resourceType": "OperationOutcome", "issue": issues }),
    )
}

/// Runs a transaction's entries in one unit of work and commits it. `Ok(Err(answer))` is the
/// refusal of the whole Bundle (nothing stored).
async fn transaction(
    state: &AppState,
    authorization: Option<&HeaderValue>,
    entries: &[Value],
) -> Result<Result<Vec<Value>, Response>, ApiError> {
    let order = match transaction_order(entries) {
        Ok(order) => order,
        Err(issue) => return Ok(Err(outcome(StatusCode::BAD_REQUEST, &[issue]))),
    };
    let unit = event_store::command::UnitOfWork::default();
    let scoped = state.in_unit(&unit);
    let mut resolved: HashMap<String, String> = HashMap::new();
    let mut answers: Vec<Value> = vec![Value::Null; entries.len()];
    for index in order {
        let mut entry = entries[index].clone();
        resolve(&mut entry["resource"], &resolved);
        let mut unresolved = Vec::new();
        placeholders(&entry["resource"], &mut unresolved);
        if let Some(reference) = unresolved.first() {
            return Ok(Err(outcome(
                StatusCode::BAD_REQUEST,
                &[Issue::new(
                    "not-found",
                    format!("{reference} names no entry of this transaction"),
                )
                .at(format!("Bundle.entry[{index}].resource"))],
            )));
        }
        let answer = run_entry(&scoped, authorization, &entry).await;
        let succeeded = answer["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with('2'));
        if !succeeded {
            return Ok(Err(entry_failed(index, &answer)));
        }
        if let (Some(full_url), Some(location)) = (
            entries[index]["fullUrl"].as_str(),
            answer["response"]["location"].as_str(),
        ) {
            // `<base>/Patient/<id>/_history/1`, or relative: `Patient/<id>`.
            let relative = location
                .split_once(&format!("{BASE}/"))
                .map_or(location, |(_, rest)| rest);
            let reference = relative
                .split("/_history")
                .next()
                .unwrap_or(relative)
                .to_owned();
            resolved.insert(full_url.to_owned(), reference);
        }
        answers[index] = answer;
    }
    let stored = unit.commit().await?;
    tracing::info!(
        entries = entries.len(),
        events = stored,
        "FHIR transaction committed"
    );
    Ok(Ok(answers))
}
