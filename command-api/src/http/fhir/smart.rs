//! SMART on FHIR discovery: `GET /fhir/R4/.well-known/smart-configuration` (SMART App Launch
//! 2.0), which tells an app where the identity provider's authorization server is and what
//! this server honours. The authorization server stays outside the service (the identity
//! provider's, whose keys verify the tokens); tokens' scopes narrow the roles
//! ([`application::smart`]).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{outcome, Issue};
use crate::http::AppState;

/// The scopes this server honours, as examples of their forms: resource scopes in SMART v2
/// (`cruds`) and v1 (`read`, `write`) syntax for patient, user and system contexts.
const SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "patient/*.rs",
    "patient/*.cruds",
    "patient/*.read",
    "user/*.rs",
    "user/*.cruds",
    "user/*.read",
    "user/*.write",
    "system/*.rs",
];

/// The permission capabilities this server honours, whatever the authorization server does.
const PERMISSIONS: &[&str] = &[
    "permission-v1",
    "permission-v2",
    "permission-patient",
    "permission-user",
];

/// `GET /.well-known/smart-configuration`: 404 while `auth.smart` is not configured.
pub async fn configuration(State(state): State<AppState>) -> Response {
    let Some(smart) = &state.smart else {
        return outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new(
                "not-found",
                "SMART on FHIR is not configured here (auth.smart)",
            )],
        );
    };
    let mut capabilities = smart.capabilities.clone();
    for permission in PERMISSIONS {
        if !capabilities.iter().any(|c| c == permission) {
            capabilities.push((*permission).to_owned());
        }
    }
    let mut body = json!({
        "authorization_endpoint": smart.authorization_endpoint,
        "token_endpoint": smart.token_endpoint,
        "grant_types_supported": smart.grant_types_supported,
        "token_endpoint_auth_methods_supported": smart.token_endpoint_auth_methods_supported,
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": capabilities,
    });
    let (issuer, jwks_uri) = &state.identity;
    if let Some(issuer) = issuer {
        body["issuer"] = json!(issuer);
    }
    if let Some(jwks_uri) = jwks_uri {
        body["jwks_uri"] = json!(jwks_uri);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
