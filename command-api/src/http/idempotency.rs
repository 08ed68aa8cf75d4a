//! `Idempotency-Key`, the same way for every creating or changing request.
//!
//! A repeat of a key (per user) answers as the first request did, marked
//! `idempotent-replayed: true`; the same key with a different request (method, path, body) is
//! 422 `idempotency-key-reused`. The key is reserved in the command's own transaction
//! ([`event_store::idempotency::Reservation`]), so a repeat running beside the first request
//! waits for it and answers with its answer, and a first request that died stored nothing (its
//! key is free). Refusals the command itself gave ([`ApiError::is_refusal`]: 404, 409, 410,
//! 412, 422 by a rule) are recorded too and replayed: the honest answer to the same request. A
//! caller who wants to try again sends a new key. Records live
//! [`event_store::idempotency::KEY_LIFETIME`].

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;

use crate::auth::AuthUser;
use crate::http::{ApiError, AppState};
use event_store::idempotency::{Answer, Recorded, Reservation};

/// A request's `Idempotency-Key`, with the keyed hash of the request: what a command reserves.
#[derive(Debug, Clone)]
pub(super) struct Keyed {
    user_id: String,
    key: String,
    request_hash: String,
    at: chrono::DateTime<chrono::Utc>,
}

impl Keyed {
    /// The reservation of a command that answers `status` when it succeeds.
    pub(super) fn answering(&self, status: StatusCode) -> Reservation {
        Reservation {
            user_id: self.user_id.clone(),
            key: self.key.clone(),
            request_hash: self.request_hash.clone(),
            response_status: status.as_u16(),
            item_id: None,
            at: self.at,
        }
    }

    /// The reservation of a command about one item that answers `status` when it succeeds.
    pub(super) fn answering_item(&self, status: StatusCode, item: impl ToString) -> Reservation {
        Reservation {
            item_id: Some(item.to_string()),
            ..self.answering(status)
        }
    }
}

/// What a replay rebuilds the first answer from.
pub(super) struct Stored<'a> {
    pub(super) status: StatusCode,
    pub(super) aggregate_id: &'a str,
    pub(super) version: u64,
    pub(super) item_id: Option<&'a str>,
}

/// Rebuilds a resource's first answer from the store (the handler module's renderer).
pub(super) type Replay =
    for<'a> fn(&'a AppState, Stored<'a>) -> BoxFuture<'a, Result<Response, ApiError>>;

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// Runs a creating or changing request under its `Idempotency-Key`, if it has one: a repeat
/// gets the first answer (rebuilt by `replay`), a different request under the key 422. `run`
/// reserves the key in its command's transaction through [`Keyed::answering`].
pub(super) async fn idempotent<F, Fut>(
    state: &AppState,
    user: &AuthUser,
    headers: &HeaderMap,
    (method, path, body): (&str, &str, &[u8]),
    replay: Replay,
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Option<Keyed>) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let Some(key) = idempotency_key(headers)? else {
        return run(None).await;
    };
    let request_hash = event_store::idempotency::request_hash(
        &state.store.keys().request_hash_key(),
        method,
        path,
        body,
    );
    let now = (state.clock)();
    if let Some(first) = state.idempotency.find(&user.id, &key, now).await? {
        return answer(state, first, &request_hash, replay).await;
    }
    let keyed = Keyed {
        user_id: user.id.clone(),
        key: key.clone(),
        request_hash: request_hash.clone(),
        at: now,
    };
    let error = match run(Some(keyed)).await {
        Ok(response) => return Ok(response),
        Err(error) => error,
    };
    // A repeat that ran beside the first request (and lost the key to it, or failed on what
    // the first one changed) answers as the first.
    if let Some(first) = state.idempotency.find(&user.id, &key, now).await? {
        return answer(state, first, &request_hash, replay).await;
    }
    if !error.is_refusal() {
        return Err(error);
    }
    let (problem, extra) = error.into_problem();
    let document = serde_json::to_value(&problem).unwrap_or_default();
    let recorded = state
        .idempotency
        .record_refusal(
            (&user.id, &key),
            &request_hash,
            (problem.status, &document),
            now,
        )
        .await?;
    if !recorded {
        if let Some(first) = state.idempotency.find(&user.id, &key, now).await? {
            return answer(state, first, &request_hash, replay).await;
        }
    }
    Ok(problem.into_response_with(&extra))
}

/// The first answer of a key, for a request whose hash is `request_hash`.
async fn answer(
    state: &AppState,
    first: Recorded,
    request_hash: &str,
    replay: Replay,
) -> Result<Response, ApiError> {
    if first.request_hash != request_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let status = StatusCode::from_u16(first.response_status).unwrap_or(StatusCode::OK);
    let mut response = match &first.answer {
        Answer::Stored {
            aggregate_id,
            version,
            item_id,
            ..
        } => {
            replay(
                state,
                Stored {
                    status,
                    aggregate_id,
                    version: *version,
                    item_id: item_id.as_deref(),
                },
            )
            .await?
        }
        Answer::Refused(problem) => {
            let mut response = (status, axum::Json(problem)).into_response();
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static(crate::http::PROBLEM_JSON),
            );
            response
        }
    };
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}
