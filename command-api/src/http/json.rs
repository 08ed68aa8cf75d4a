//! A JSON object body with its raw bytes (kept for idempotency hashes); what it must hold is
//! read by the types of [`crate::http::input`].

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use domain::FieldError;
use serde_json::{Map, Value};

use crate::http::ApiError;

/// A JSON object body, with its raw bytes (for idempotency hashes).
pub struct JsonObject {
    pub raw: Bytes,
    pub object: Map<String, Value>,
}

impl std::fmt::Debug for JsonObject {
    // The body holds patient data: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonObject")
            .field("bytes", &self.raw.len())
            .finish_non_exhaustive()
    }
}

impl JsonObject {
    /// The empty object, for commands without a body.
    pub fn empty() -> Self {
        Self {
            raw: Bytes::new(),
            object: Map::new(),
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let raw = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedJson("the body could not be read".into())
            }
        })?;
        let value: Value = serde_json::from_slice(&raw).map_err(|e| {
            // serde_json's message quotes no input, only the position and the kind of error.
            ApiError::MalformedJson(format!(
                "invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        match value {
            Value::Object(object) => Ok(Self { raw, object }),
            _ => Err(ApiError::Validation(
                FieldError::new("", "the body must be a JSON object").into(),
            )),
        }
    }
}
