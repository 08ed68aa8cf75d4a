//! SMART on FHIR discovery: `GET /fhir/R4/.well-known/smart-configuration` (SMART App Launch
//! 2.0), which tells an app where the identity provider's authorization server is and what
//! this server honours, and a backend client (SMART Backend Services) where it gets tokens. The authorization server stays outside the service (the identity
//! provider's, whose keys verify the tokens); tokens' scopes narrow the roles
//! ([`application::smart`]).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
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

/// `GET /.well-known/smart-configuration`: 404 while neither `auth.smart` nor a backend
/// client (`auth.backend_clients`) is configured. With backend clients, this service's own
/// token endpoint (`POST /auth/token`) is named when no authorization server is.
pub async fn configuration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let backend = state.auth.backend().is_some();
    let own_token_endpoint = crate::http::token::token_url(&state, &headers);
    let smart = match (&state.smart, backend) {
        (Some(smart), _) => (**smart).clone(),
        (None, true) => crate::configuration::SmartSettings {
            authorization_endpoint: None,
            token_endpoint: own_token_endpoint.clone(),
            grant_types_supported: Vec::new(),
            token_endpoint_auth_methods_supported: Vec::new(),
            capabilities: Vec::new(),
        },
        (None, false) => {
            return outcome(
                StatusCode::NOT_FOUND,
                &[Issue::new(
                    "not-found",
                    "SMART on FHIR is not configured here (auth.smart, auth.backend_clients)",
                )],
            );
        }
    };
    let mut smart = smart;
    if backend {
        for (list, item) in [
            (&mut smart.grant_types_supported, "client_credentials"),
            (
                &mut smart.token_endpoint_auth_methods_supported,
                "private_key_jwt",
            ),
            (&mut smart.capabilities, "client-confidential-asymmetric"),
        ] {
            if !list.iter().any(|i| i == item) {
                list.push(item.to_owned());
            }
        }
    }
    let mut capabilities = smart.capabilities.clone();
    for permission in PERMISSIONS {
        if !capabilities.iter().any(|c| c == permission) {
            capabilities.push((*permission).to_owned());
        }
    }
    let mut body = json!({
        "token_endpoint": smart.token_endpoint,
        "grant_types_supported": smart.grant_types_supported,
        "token_endpoint_auth_methods_supported": smart.token_endpoint_auth_methods_supported,
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": capabilities,
    });
    if let Some(authorization) = &smart.authorization_endpoint {
        body["authorization_endpoint"] = json!(authorization);
    }
    if backend {
        body["token_endpoint_auth_signing_alg_values_supported"] = json!(["RS384", "ES384"]);
        if smart.token_endpoint != own_token_endpoint {
            // Backend clients get their tokens here, whatever apps do.
            body["backend_services_token_endpoint"] = json!(own_token_endpoint);
        }
    }
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
