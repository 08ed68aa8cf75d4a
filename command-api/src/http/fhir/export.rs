//! FHIR Bulk Data Access (the `$export` operation, asynchronous request pattern):
//!
//! - `GET /$export` (system level: every patient's compartment and the reference data) and
//!   `GET /Patient/$export` (every patient's compartment), with `Prefer: respond-async`:
//!   202 with `Content-Location`, the export's status URL. Parameters: `_type` (resource
//!   types, comma-separated or repeated), `_since` (resources changed at or after it),
//!   `_outputFormat` (NDJSON only). Others are refused.
//! - `GET` on the status URL: 202 with `Retry-After` and `X-Progress` while it runs, then 200
//!   with the manifest (one `application/fhir+ndjson` file per type, several for large types),
//!   or 500 with an `OperationOutcome` when it failed. `DELETE` cancels it and removes its files
//!   (202). Only the caller who asked may poll, download or cancel (and only while they hold
//!   the role; a SMART token only the types its scopes let it read); anyone else gets 404.
//! - `GET` on a file's URL: its lines, streamed, with the bearer token.
//!
//! Who may export: the `admin` role (a SMART backend client registered with it, or a user),
//! narrowed by the token's scopes to the types they let it read (`system/*.rs`). Which
//! patients: those the caller may read. Files are sealed at rest, expire after
//! `export.expire_after_secs`, and lose a patient's lines when the patient is forgotten; every
//! patient in an export is recorded as disclosed to its caller ([`super::export_runner`]).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::{FieldError, FieldErrors};
use event_store::exports::{NewExport, Progress};
use serde_json::json;
use uuid::Uuid;

use application::smart::{Grant, Interaction};

use super::export_runner::{requester, REFERENCE_TYPES};
use super::patient::base_url;
use super::{outcome, resource, Issue};
use crate::auth::{permission, Authorized};
use crate::http::{ApiError, AppState};

/// The output formats asked for by any of their names: NDJSON only.
const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// The kick-off's parameters, for the CapabilityStatement.
pub const PARAMS: &[(&str, &str, &str)] = &[
    (
        "_outputFormat",
        "string",
        "application/fhir+ndjson (the default; application/ndjson and ndjson name it too)",
    ),
    (
        "_since",
        "instant",
        "only resources changed at or after this instant",
    ),
    (
        "_type",
        "string",
        "resource types to export, comma-separated (all by default)",
    ),
];

/// Where the status URLs and files are, under the FHIR base.
const STATUS: &str = "bulk-export";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/$export", get(system_export))
        .route("/Patient/$export", get(patient_export))
        .route(&format!("/{STATUS}/{{id}}"), get(status).delete(cancel))
        .route(&format!("/{STATUS}/{{id}}/{{file}}"), get(file))
}

/// The types an export of `level` may hold.
pub fn types_of(level: &str) -> Vec<&'static str> {
    let mut types: Vec<&'static str> = super::everything::TYPES.to_vec();
    if level == "system" {
        types.extend(REFERENCE_TYPES);
    }
    types
}

async fn system_export(
    state: State<AppState>,
    caller: Authorized<permission::BulkExport>,
    headers: HeaderMap,
    query: Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    kick_off("system", state, caller, headers, query).await
}

async fn patient_export(
    state: State<AppState>,
    caller: Authorized<permission::BulkExport>,
    headers: HeaderMap,
    query: Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    kick_off("patient", state, caller, headers, query).await
}

/// What a kick-off asks for: the types (all when `None`) and the instant.
struct Asked {
    types: Option<Vec<String>>,
    since: Option<DateTime<Utc>>,
}

fn asked(level: &str, params: &[(String, String)]) -> Result<Asked, FieldErrors> {
    let mut errors = FieldErrors::default();
    let allowed = types_of(level);
    let mut types: Option<Vec<String>> = None;
    let mut since = None;
    for (name, value) in params {
        match name.as_str() {
            "_outputFormat" => {
                if !OUTPUT_FORMATS.contains(&value.as_str()) {
                    errors.push(FieldError::new(
                        "_outputFormat",
                        "must be application/fhir+ndjson: the only format exported here",
                    ));
                }
            }
            "_since" => match super::instant("_since", value) {
                Ok(at) if since.is_none() => since = Some(at),
                Ok(_) => errors.push(FieldError::new("_since", "is given more than once")),
                Err(e) => errors.push(e),
            },
            "_type" => {
                for name in value.split(',').map(str::trim) {
                    if allowed.contains(&name) {
                        types.get_or_insert_with(Vec::new).push(name.to_owned());
                    } else {
                        errors.push(FieldError::new(
                            "_type",
                            format!(
                                "names {name:?}, which this export does not hold: {}",
                                allowed.join(", ")
                            ),
                        ));
                    }
                }
            }
            other => errors.push(FieldError::new(
                other.to_owned(),
                "is not a parameter of $export here (_type, _since, _outputFormat)",
            )),
        }
    }
    errors.into_result()?;
    Ok(Asked { types, since })
}

async fn kick_off(
    level: &'static str,
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BulkExport>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let respond_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    if !respond_async {
        return Ok(outcome(
            StatusCode::BAD_REQUEST,
            &[Issue::new(
                "required",
                "an export is asynchronous: send Prefer: respond-async",
            )
            .at("Prefer")],
        ));
    }
    let Asked {
        types: asked_types,
        since,
    } = asked(level, &params).map_err(ApiError::InvalidParameters)?;
    let all = types_of(level);
    let mut types: Vec<String> = match &asked_types {
        Some(types) => types.clone(),
        None => all.iter().map(|t| (*t).to_owned()).collect(),
    };
    // A SMART token exports only what its scopes let it read across patients (user/ and
    // system/ scopes; patient/ scopes reach one patient, not a bulk export).
    if let Some(scopes) = &user.scopes {
        let readable = |t: &String| scopes.grant(t, Interaction::Read) == Grant::Roles;
        if let Some(refused) = asked_types.iter().flatten().find(|t| !readable(t)) {
            tracing::info!(user_id = %user.id, resource_type = %refused, "export of a type the scopes do not grant");
            return Err(ApiError::from(application::caller::Refused::Forbidden));
        }
        types.retain(readable);
        if types.is_empty() {
            return Err(ApiError::from(application::caller::Refused::Forbidden));
        }
    }
    let mut seen = std::collections::HashSet::new();
    types.retain(|t| seen.insert(t.clone()));
    let base = base_url(&state, &headers);
    let path = if level == "system" {
        "$export"
    } else {
        "Patient/$export"
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let request_url = if query.is_empty() {
        format!("{base}/{path}")
    } else {
        format!("{base}/{path}?{query}")
    };
    let export_id = Uuid::new_v4();
    state
        .exports
        .create(&NewExport {
            export_id,
            requested_by: user.id.clone(),
            requester: requester(&user),
            level,
            request_url,
            types,
            since,
            requested_at: (state.clock)(),
        })
        .await?;
    state.export_bell.notify_one();
    tracing::info!(user_id = %user.id, %export_id, level, "bulk export accepted");
    let mut answer = resource(
        StatusCode::ACCEPTED,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "information",
                "code": "informational",
                "diagnostics": "export accepted: poll the Content-Location URL for its status",
            }],
        }),
    );
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/{STATUS}/{export_id}")) {
        answer
            .headers_mut()
            .insert(header::CONTENT_LOCATION, location);
    }
    Ok(answer)
}

fn no_export() -> Response {
    outcome(
        StatusCode::NOT_FOUND,
        &[Issue::new(
            "not-found",
            "no export of yours has this id: it was cancelled, has expired, or never was",
        )],
    )
}

/// `GET /bulk-export/{id}`: the export's status, or its manifest.
async fn status(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BulkExport>,
    headers: HeaderMap,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(export_id) = Uuid::parse_str(&raw_id) else {
        return Ok(no_export());
    };
    let progress = state
        .exports
        .progress(export_id, &user.id, (state.clock)())
        .await?;
    let base = base_url(&state, &headers);
    Ok(match progress {
        None => no_export(),
        Some(Progress::Running { done, total }) => {
            let progress = match total {
                Some(total) => format!("{done} of {total} patients"),
                None => "waiting for the read models to catch up".to_owned(),
            };
            let mut answer = StatusCode::ACCEPTED.into_response();
            let headers = answer.headers_mut();
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(state.export_settings.retry_after_secs),
            );
            if let Ok(progress) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", progress);
            }
            answer
        }
        Some(Progress::Failed { error }) => outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            &[Issue::new("exception", error)],
        ),
        Some(Progress::Completed {
            transaction_time,
            request_url,
            files,
        }) => {
            let output: Vec<_> = files
                .iter()
                .filter(|(_, _, count)| *count > 0)
                .map(|(resource_type, file_no, count)| {
                    json!({
                        "type": resource_type,
                        "url": format!("{base}/{STATUS}/{export_id}/{resource_type}-{file_no}.ndjson"),
                        "count": count,
                    })
                })
                .collect();
            let manifest = json!({
                "transactionTime": transaction_time.to_rfc3339_opts(SecondsFormat::Millis, true),
                "request": request_url,
                "requiresAccessToken": true,
                "output": output,
                "error": [],
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                manifest.to_string(),
            )
                .into_response()
        }
    })
}

/// `DELETE /bulk-export/{id}`: cancels the export and removes its files.
async fn cancel(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BulkExport>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(export_id) = Uuid::parse_str(&raw_id) else {
        return Ok(no_export());
    };
    if !state.exports.cancel(export_id, &user.id).await? {
        return Ok(no_export());
    }
    tracing::info!(user_id = %user.id, %export_id, "bulk export cancelled");
    Ok(resource(
        StatusCode::ACCEPTED,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "information",
                "code": "informational",
                "diagnostics": "export cancelled; its files are removed",
            }],
        }),
    ))
}

/// `GET /bulk-export/{id}/{Type}-{n}.ndjson`: a file's lines, streamed.
async fn file(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::BulkExport>,
    Path((raw_id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let named = name
        .strip_suffix(".ndjson")
        .and_then(|stem| stem.rsplit_once('-'))
        .and_then(|(resource_type, n)| Some((resource_type.to_owned(), n.parse::<i32>().ok()?)));
    let (Ok(export_id), Some((resource_type, file_no))) = (Uuid::parse_str(&raw_id), named) else {
        return Ok(no_export());
    };
    // A SMART token reads only the types its scopes let it read across patients.
    if let Some(scopes) = &user.scopes {
        if scopes.grant(&resource_type, Interaction::Read) != Grant::Roles {
            return Err(ApiError::from(application::caller::Refused::Forbidden));
        }
    }
    if !state
        .exports
        .has_file(
            export_id,
            &user.id,
            (&resource_type, file_no),
            (state.clock)(),
        )
        .await?
    {
        return Ok(no_export());
    }
    let exports = state.exports.clone();
    let (owner, clock) = (user.id.clone(), state.clock.clone());
    let parts = futures::stream::unfold(Some(-1), move |after| {
        let exports = exports.clone();
        let resource_type = resource_type.clone();
        let (owner, clock) = (owner.clone(), clock.clone());
        async move {
            let after = after?;
            // Cancelled or expired meanwhile: the download ends in an error, not as a file
            // that looks whole.
            if after >= 0 {
                match exports
                    .has_file(export_id, &owner, (&resource_type, file_no), clock())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) | Err(_) => {
                        return Some((Err(std::io::Error::other("the export is gone")), None))
                    }
                }
            }
            match exports
                .read(export_id, (&resource_type, file_no), after)
                .await
            {
                Ok(Some((last, lines))) => Some((Ok(lines), Some(last))),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(%export_id, error.message = %e, "an export file could not be read");
                    Some((
                        Err(std::io::Error::other("the export file could not be read")),
                        None,
                    ))
                }
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        Body::from_stream(parts),
    )
        .into_response())
}
