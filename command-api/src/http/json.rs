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

/// Whether a `Content-Type` names no charset, or UTF-8 (JSON is UTF-8, RFC 8259): a body said
/// to be in another is refused rather than read as UTF-8.
pub fn charset_is_utf8(content_type: &str) -> bool {
    content_type.split(';').skip(1).all(|parameter| {
        let Some((name, value)) = parameter.split_once('=') else {
            return true;
        };
        if !name.trim().eq_ignore_ascii_case("charset") {
            return true;
        }
        let value = value.trim().trim_matches('"');
        value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
    })
}

/// Where in `value` text holds a NUL character (U+0000), as a field path (`contact.lines[1]`):
/// PostgreSQL's text cannot hold one, so it is refused where text enters, naming the field.
pub fn nul_in(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let before = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(before);
                }
                found
            }),
            Value::Object(object) => object.iter().any(|(key, item)| {
                let before = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                if key.contains('\0') {
                    path.push_str(&key.replace('\0', "\\0"));
                    return true;
                }
                path.push_str(key);
                let found = walk(item, path);
                if !found {
                    path.truncate(before);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then_some(path)
}

/// [`nul_in`] as the error that names the field.
///
/// # Errors
///
/// [`ApiError::Validation`] naming where the NUL character is.
pub fn refuse_nul(value: &Value) -> Result<(), ApiError> {
    match nul_in(value) {
        Some(path) => Err(ApiError::Validation(
            FieldError::new(path, "must not contain the NUL character (U+0000)").into(),
        )),
        None => Ok(()),
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| charset_is_utf8(v))
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
        refuse_nul(&value)?;
        match value {
            Value::Object(object) => Ok(Self { raw, object }),
            _ => Err(ApiError::Validation(
                FieldError::new("", "the body must be a JSON object").into(),
            )),
        }
    }
}
