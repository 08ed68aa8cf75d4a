//! SMART Backend Services (the authorization FHIR Bulk Data asks for): a registered system
//! (`auth.backend_clients`) gets an access token at `POST /auth/token` by the client
//! credentials grant, authenticating with a JWT assertion (RFC 7523) signed by a key of its
//! registered key set.
//!
//! The assertion is checked as the SMART specification says: `iss` and `sub` are the client's
//! id, `aud` is this token endpoint's URL, it expires within five minutes, its `jti` is used
//! once, it is signed with RS384 or ES384 (RS256 and ES256 too) by a key of the client's set,
//! and a `jku` header, if any, names the client's registered set URL. The token carries the
//! `system/` scopes asked for that the registration covers, and acts with the registered roles
//! and organization, narrowed by those scopes as any SMART token is.
//!
//! Tokens are opaque: random, handed out once, stored only as their SHA-256
//! (`backend_access_tokens`), and valid for `auth.backend_token_ttl_secs`.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::{URL_SAFE_NO_PAD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::jwks::{KeySet, Source};
use super::{AuthUser, Role, TokenError, CLOCK_SKEW_SECS};
use crate::configuration::AuthSettings;
use application::smart::Scopes;

/// The `client_assertion_type` of a JWT assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What every access token this service issues starts with (a JWT never does).
pub const TOKEN_PREFIX: &str = "psb_";

/// The longest an assertion may be valid for, from now (the SMART specification's limit).
const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/auth/token";

/// A registered backend client.
struct Client {
    keys: KeySet,
    allowed: Scopes,
    roles: Vec<Role>,
    organization: Option<String>,
}

/// The registered backend clients and the tokens issued to them.
pub struct BackendServices {
    clients: HashMap<String, Client>,
    pool: PgPool,
    ttl: chrono::Duration,
}

impl std::fmt::Debug for BackendServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendServices")
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A token request's form fields (`application/x-www-form-urlencoded`).
#[derive(Debug, Default, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub scope: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// An access token issued.
#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: String,
}

/// Why a token request was refused: OAuth 2.0's error codes (RFC 6749 section 5.2). The
/// description names the rule, never a value sent.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("invalid_client: {0}")]
    InvalidClient(&'static str),
    #[error("invalid_scope")]
    InvalidScope,
    #[error("the token store failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// The claims of an assertion.
#[derive(Debug, Deserialize)]
struct Assertion {
    sub: String,
    exp: i64,
    jti: String,
}

impl BackendServices {
    /// The clients of `settings`, their key sets read now; `None` when none is registered.
    ///
    /// # Errors
    ///
    /// When a client's key set cannot be read, a role is unknown, its scope grants no
    /// `system/` scope, or it names no organization while `auth.organization` is set.
    pub async fn load(settings: &AuthSettings, pool: PgPool) -> anyhow::Result<Option<Self>> {
        if settings.backend_clients.is_empty() {
            return Ok(None);
        }
        let mut clients = HashMap::new();
        for client in &settings.backend_clients {
            let what = format!("auth.backend_clients ({}): ", client.client_id);
            let source = Source::of(client.jwks_path.as_ref(), client.jwks_url.as_ref(), &what)?
                .ok_or_else(|| anyhow::anyhow!("{what}set jwks_path or jwks_url"))?;
            let keys = KeySet::load(
                source,
                Duration::from_secs(settings.jwks_refetch_interval_secs),
            )
            .await?;
            let roles = client
                .roles
                .iter()
                .map(|name| {
                    Role::parse(name).ok_or_else(|| anyhow::anyhow!("{what}unknown role {name:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let allowed = Scopes::parse(&client.scope);
            anyhow::ensure!(
                !allowed.system_scopes_within(&client.scope).is_empty(),
                "{what}scope grants no system/ scope"
            );
            anyhow::ensure!(
                settings.organization.is_none() || client.organization.is_some(),
                "{what}name the client's organization: auth.organization is set"
            );
            anyhow::ensure!(
                !clients.contains_key(&client.client_id),
                "{what}registered twice"
            );
            clients.insert(
                client.client_id.clone(),
                Client {
                    keys,
                    allowed,
                    roles,
                    organization: client.organization.clone(),
                },
            );
        }
        Ok(Some(Self {
            clients,
            pool,
            // At most a day: a backend token is short-lived by design.
            ttl: chrono::Duration::seconds(
                i64::try_from(settings.backend_token_ttl_secs.min(86_400)).unwrap_or(300),
            ),
        }))
    }

    /// An access token for the client whose assertion `request` carries, audience
    /// `token_url`, at `now`.
    ///
    /// # Errors
    ///
    /// [`OAuthError`] naming the rule broken; the database error.
    pub async fn issue(
        &self,
        request: &TokenRequest,
        token_url: &str,
        now: DateTime<Utc>,
    ) -> Result<Issued, OAuthError> {
        if request.grant_type.as_deref() != Some("client_credentials") {
            return Err(match request.grant_type {
                None => OAuthError::InvalidRequest("grant_type is required"),
                Some(_) => OAuthError::UnsupportedGrantType,
            });
        }
        if request.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
            return Err(OAuthError::InvalidRequest(
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let Some(assertion) = request.client_assertion.as_deref() else {
            return Err(OAuthError::InvalidRequest("client_assertion is required"));
        };
        let Some(requested) = request.scope.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Err(OAuthError::InvalidRequest("scope is required"));
        };
        let (client_id, claims) = self.verified(assertion, token_url, now).await?;
        let client = &self.clients[&client_id];
        // Used once: a replayed assertion is refused while it could still be valid.
        sqlx::query("DELETE FROM backend_assertions WHERE expires_at < $1")
            .bind(now - chrono::Duration::seconds(CLOCK_SKEW_SECS))
            .execute(&self.pool)
            .await?;
        let first_use: Option<bool> = sqlx::query_scalar(
            "INSERT INTO backend_assertions (client_id, jti, expires_at)
             VALUES ($1, $2, to_timestamp($3)) ON CONFLICT DO NOTHING RETURNING true",
        )
        .bind(&client_id)
        .bind(&claims.jti)
        .bind(claims.exp as f64)
        .fetch_optional(&self.pool)
        .await?;
        if first_use.is_none() {
            return Err(OAuthError::InvalidClient(
                "the assertion's jti was used before",
            ));
        }
        let granted = client.allowed.system_scopes_within(requested);
        if granted.is_empty() {
            return Err(OAuthError::InvalidScope);
        }
        let scope = granted.join(" ");
        let token = format!(
            "{TOKEN_PREFIX}{}",
            B64.encode(schemas::sealed::random_key())
        );
        sqlx::query("DELETE FROM backend_access_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO backend_access_tokens (token_hash, client_id, scope, issued_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Sha256::digest(token.as_bytes()).to_vec())
        .bind(&client_id)
        .bind(&scope)
        .bind(now)
        .bind(now + self.ttl)
        .execute(&self.pool)
        .await?;
        tracing::info!(client_id, scope, "backend access token issued");
        Ok(Issued {
            access_token: token,
            expires_in: self.ttl.num_seconds(),
            scope,
        })
    }

    /// The client and claims of `assertion`, checked.
    async fn verified(
        &self,
        assertion: &str,
        token_url: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, Assertion), OAuthError> {
        let bad = OAuthError::InvalidClient;
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|_| bad("the client_assertion is not a JWT"))?;
        if !matches!(
            header.alg,
            Algorithm::RS384 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(bad("the assertion must be signed with RS384 or ES384"));
        }
        // Which client: its `iss`, read before the signature is checked only to find its keys.
        let issuer = assertion
            .split('.')
            .nth(1)
            .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .and_then(|claims| claims["iss"].as_str().map(str::to_owned))
            .ok_or(bad("the assertion names no issuer"))?;
        let Some(client) = self.clients.get(&issuer) else {
            tracing::info!("token request of an unregistered client");
            return Err(bad("the client is not registered"));
        };
        if let Some(jku) = &header.jku {
            if client.keys.url() != Some(jku.as_str()) {
                return Err(bad("the jku header is not the client's registered key set"));
            }
        }
        let kid = header
            .kid
            .ok_or(bad("the assertion's header names no kid"))?;
        let key = client
            .keys
            .key_for(&kid, header.alg)
            .await
            .map_err(|_| bad("the assertion's key is not in the client's key set"))?;
        let mut validation = Validation::new(header.alg);
        // Expiry is checked below against the service's clock, as everything else is.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[token_url]);
        let claims = jsonwebtoken::decode::<Assertion>(assertion, &key, &validation)
            .map_err(|e| {
                tracing::info!(client_id = issuer, error.message = %e, "client assertion refused");
                bad("the assertion's signature, audience or expiry is not valid")
            })?
            .claims;
        if claims.sub != issuer {
            return Err(bad("the assertion's sub must be its iss, the client id"));
        }
        if claims.exp > now.timestamp() + MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS {
            return Err(bad("the assertion must expire within five minutes"));
        }
        if claims.exp < now.timestamp() - CLOCK_SKEW_SECS {
            return Err(bad("the assertion has expired"));
        }
        if claims.jti.is_empty() || claims.jti.len() > 256 {
            return Err(bad("the assertion needs a jti of at most 256 characters"));
        }
        Ok((issuer, claims))
    }

    /// The caller an access token issued here stands for, at `now`.
    ///
    /// # Errors
    ///
    /// [`TokenError::UnknownToken`] for a token not issued, expired, or of a client no longer
    /// registered; [`TokenError::Store`] when the database fails.
    pub async fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AuthUser, TokenError> {
        let hash = Sha256::digest(token.as_bytes());
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT client_id, scope FROM backend_access_tokens
              WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(hash.to_vec())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| TokenError::Store(e.to_string()))?;
        let (client_id, scope) = row.ok_or(TokenError::UnknownToken)?;
        let client = self
            .clients
            .get(&client_id)
            .ok_or(TokenError::UnknownToken)?;
        Ok(AuthUser {
            id: client_user(&client_id),
            roles: client.roles.clone(),
            patient_id: None,
            organization: client.organization.clone(),
            session_id: format!("backend:{}", hex::encode(&hash[..16])),
            purpose: application::access::Purpose::Treatment,
            break_glass: None,
            request_id: None,
            traceparent: None,
            // As the registration stands now: narrowing it narrows the tokens issued before.
            scopes: Some(Scopes::parse(
                &client.allowed.system_scopes_within(&scope).join(" "),
            )),
            launch_patient: None,
            confined_to: None,
        })
    }
}

/// What the user id of every backend client starts with; no user token may name one.
pub const CLIENT_USER_PREFIX: &str = "backend-client/";

/// The user id a backend client acts as: prefixed, so that audit entries tell it from users.
pub fn client_user(client_id: &str) -> String {
    format!("{CLIENT_USER_PREFIX}{client_id}")
}
