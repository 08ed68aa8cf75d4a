//! `POST /fhir/R4` with a `batch` Bundle: each entry is its own request (read, search, create,
//! update), run through this same API under the caller's credentials, and answered in a
//! `batch-response` Bundle in order; one entry failing fails only itself.
//!
//! A `transaction` Bundle (all or nothing) is refused as not supported yet: its entries may
//! touch patients, medical records and clinical entries at once, and the store's unit of work
//! spans one aggregate type today.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{outcome, resource, Issue, BASE, FHIR_JSON, MAX_RESOURCE_BYTES};
use crate::http::{ApiError, AppState};

/// The most entries one batch runs.
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

/// `POST /fhir/R4`: a `batch` Bundle.
pub(super) async fn batch(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let bytes = axum::body::to_bytes(request.into_body(), MAX_RESOURCE_BYTES * 16)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let bundle: Value = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::MalformedJson("the body is not JSON".into()))?;
    if bundle["resourceType"] != "Bundle" {
        return Ok(outcome(
            StatusCode::BAD_REQUEST,
            &[Issue::new("invalid", "the base accepts a batch Bundle").at("Bundle.resourceType")],
        ));
    }
    match bundle["type"].as_str() {
        Some("batch") => {}
        Some("transaction") => return Ok(outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            &[Issue::new(
                "not-supported",
                "transaction Bundles are not supported yet: send a batch (each entry on its own)",
            )
            .at("Bundle.type")],
        )),
        _ => {
            return Ok(outcome(
                StatusCode::BAD_REQUEST,
                &[Issue::new("invalid", "must be batch").at("Bundle.type")],
            ))
        }
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
    let mut answers = Vec::with_capacity(entries.len());
    for entry in &entries {
        answers.push(run_entry(&state, authorization.as_ref(), entry).await);
    }
    let mut answer = resource(
        StatusCode::OK,
        &json!({ "resourceType": "Bundle", "type": "batch-response", "entry": answers }),
    );
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Ok(answer)
}
