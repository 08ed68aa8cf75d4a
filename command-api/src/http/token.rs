//! `POST /auth/token`: the token endpoint of SMART Backend Services ([`crate::auth::backend`]).
//! A registered backend client sends the client credentials grant with a JWT assertion as a
//! form (`application/x-www-form-urlencoded`) and gets an access token, or an OAuth 2.0 error
//! (RFC 6749 section 5.2) as JSON: `invalid_client` answers 401, the others 400. 404 while no
//! backend client is registered.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;

use crate::auth::backend::{OAuthError, TokenRequest, TOKEN_PATH};
use crate::http::openapi::{self as doc, Routes};
use crate::http::{origin, ApiError, AppState};

/// An access token (RFC 6749 section 5.1).
#[derive(Serialize, JsonSchema)]
struct Token<'a> {
    access_token: &'a str,
    token_type: Bearer,
    /// Seconds.
    expires_in: i64,
    scope: &'a str,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Bearer {
    Bearer,
}

/// An OAuth 2.0 error (RFC 6749 section 5.2).
#[derive(Serialize, JsonSchema)]
struct TokenError<'a> {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type` or `invalid_scope`.
    error: &'a str,
    error_description: &'a str,
}

pub fn router() -> Routes {
    Routes::new().route(
        TOKEN_PATH,
        post(token),
        [
            doc::post("A backend client's access token (SMART Backend Services)")
                .body_as(
                    "application/x-www-form-urlencoded",
                    json!({
                        "type": "object",
                        "required": ["grant_type", "client_assertion_type", "client_assertion"],
                        "properties": {
                            "grant_type": { "const": "client_credentials" },
                            "client_assertion_type": {
                                "const": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                            },
                            "client_assertion": { "type": "string" },
                            "scope": { "type": "string" },
                        },
                    }),
                )
                .answers(200, "The token")
                .returns::<Token>()
                .also_returns::<TokenError>(400, "An OAuth error")
                .also_returns::<TokenError>(401, "The client is not known or its assertion fails")
                .also_returns::<TokenError>(404, "No backend client is registered here"),
        ],
    )
}

/// The URL assertions must name as their audience.
pub fn token_url(state: &AppState, headers: &HeaderMap) -> String {
    state
        .backend_token_url
        .clone()
        .unwrap_or_else(|| format!("{}{TOKEN_PATH}", origin(state, headers)))
}

async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(backend) = state.auth.backend() else {
        return Ok(oauth_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "no backend client is registered here (auth.backend_clients)",
        ));
    };
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the request as application/x-www-form-urlencoded",
        ));
    }
    let Some(request) = parsed(&body) else {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a parameter is sent twice, or the form is not UTF-8",
        ));
    };
    let issued = backend
        .issue(&request, &token_url(&state, &headers), (state.clock)())
        .await;
    Ok(match issued {
        Ok(issued) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            Json(Token {
                access_token: &issued.access_token,
                token_type: Bearer::Bearer,
                expires_in: issued.expires_in,
                scope: &issued.scope,
            }),
        )
            .into_response(),
        Err(OAuthError::Database(e)) => return Err(ApiError::from(e)),
        Err(e) => {
            tracing::info!(error.message = %e, "backend token request refused");
            let (status, code, description) = match &e {
                OAuthError::InvalidClient(why) => {
                    (StatusCode::UNAUTHORIZED, "invalid_client", *why)
                }
                OAuthError::InvalidRequest(why) => {
                    (StatusCode::BAD_REQUEST, "invalid_request", *why)
                }
                OAuthError::UnsupportedGrantType => (
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only client_credentials is supported",
                ),
                OAuthError::InvalidScope | OAuthError::Database(_) => (
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "no scope asked for is a system/ scope the client is registered for",
                ),
            };
            oauth_error(status, code, description)
        }
    })
}

/// The form's fields; `None` when one is sent twice (RFC 6749 section 3.2) or is not UTF-8.
fn parsed(body: &[u8]) -> Option<TokenRequest> {
    std::str::from_utf8(body).ok()?;
    let mut request = TokenRequest::default();
    for (name, value) in form_urlencoded::parse(body) {
        let slot = match name.as_ref() {
            "grant_type" => &mut request.grant_type,
            "scope" => &mut request.scope,
            "client_assertion_type" => &mut request.client_assertion_type,
            "client_assertion" => &mut request.client_assertion,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return None;
        }
    }
    Some(request)
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Json(TokenError {
            error: code,
            error_description: description,
        }),
    )
        .into_response()
}
