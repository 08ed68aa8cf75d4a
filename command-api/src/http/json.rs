//! Reading JSON bodies field by field, so every bad field is reported (by its path) rather than
//! only the first one serde trips on, and unknown fields are refused instead of dropped.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use domain::{FieldError, FieldErrors};
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

/// Walks an object's fields, collecting errors.
pub struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: String,
    known: &'static [&'static str],
    pub errors: FieldErrors,
}

impl std::fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fields")
            .field("prefix", &self.prefix)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl<'a> Fields<'a> {
    pub fn new(
        object: &'a Map<String, Value>,
        prefix: &str,
        known: &'static [&'static str],
    ) -> Self {
        let mut fields = Self {
            object,
            prefix: prefix.to_owned(),
            known,
            errors: FieldErrors::new(),
        };
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                let path = fields.path(key);
                fields.errors.push(FieldError::new(path, "unknown field"));
            }
        }
        fields
    }

    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        debug_assert!(self.known.contains(&key), "{key} is not a known field");
        self.object.get(key).filter(|v| !v.is_null())
    }

    pub fn present(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A required string.
    pub fn string(&mut self, key: &str) -> Option<&'a str> {
        match self.get(key) {
            None => {
                self.errors
                    .push(FieldError::new(self.path(key), "is required"));
                None
            }
            Some(_) => self.optional_string(key),
        }
    }

    pub fn optional_string(&mut self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => {
                self.errors
                    .push(FieldError::new(self.path(key), "must be a string"));
                None
            }
        }
    }

    pub fn optional_string_array(&mut self, key: &str) -> Option<Vec<String>> {
        let Value::Array(items) = self.get(key)? else {
            self.errors.push(FieldError::new(
                self.path(key),
                "must be an array of strings",
            ));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                _ => self.errors.push(FieldError::new(
                    format!("{}[{i}]", self.path(key)),
                    "must be a string",
                )),
            }
        }
        Some(out)
    }

    pub fn optional_array(&mut self, key: &str) -> Option<&'a Vec<Value>> {
        match self.get(key)? {
            Value::Array(items) => Some(items),
            _ => {
                self.errors
                    .push(FieldError::new(self.path(key), "must be an array"));
                None
            }
        }
    }

    /// The length of the array under `key`, if it is one.
    pub fn object_array_len(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(Value::as_array).map(Vec::len)
    }

    /// A whole number from `range`, if present.
    pub fn optional_whole(
        &mut self,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<u32> {
        let value = self.get(key)?;
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                self.errors.push(FieldError::new(
                    self.path(key),
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
        }
    }

    pub fn optional_bool(&mut self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.errors
                    .push(FieldError::new(self.path(key), "must be true or false"));
                None
            }
        }
    }

    pub fn optional_object(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        match self.get(key)? {
            Value::Object(o) => Some(o),
            _ => {
                self.errors
                    .push(FieldError::new(self.path(key), "must be an object"));
                None
            }
        }
    }

    pub fn object(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        if self.get(key).is_none() {
            self.errors
                .push(FieldError::new(self.path(key), "is required"));
            return None;
        }
        self.optional_object(key)
    }

    /// Keeps a parsed value or records its error.
    pub fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        self.errors.check(result)
    }

    pub fn absorb(&mut self, errors: FieldErrors) {
        for e in errors.into_vec() {
            self.errors.push(e);
        }
    }

    /// # Errors
    ///
    /// [`ApiError::Validation`] with every collected error.
    pub fn finish(self) -> Result<(), ApiError> {
        self.errors.into_result().map_err(ApiError::Validation)
    }
}
