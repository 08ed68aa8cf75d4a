//! Authentication (bearer JWT) and authorization (one policy table).
//!
//! Every request but the health checks carries `Authorization: Bearer <jwt>`. The token's `sub`
//! is the user's unique identity, recorded with every command; `roles` decide what the user may
//! do, through [`policy::allows`] only.

pub mod backend;
pub mod jwks;
pub mod sessions;

pub use application::access;
// The caller, the policy table and the access decisions are the application layer's; the
// transport names them here, beside the token checks that produce the caller.
pub use application::caller::{AuthUser, Refused};
pub use application::policy::{self, permission, Action, Permission, Role};

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::configuration::AuthSettings;

/// The clock skew allowed between the identity provider and this service, in seconds: for a
/// token's expiry, not-before and issue times.
pub const CLOCK_SKEW_SECS: i64 = 30;

/// The claims of a token this service accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (identity providers send either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// For the `patient` role: the patient the user is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<uuid::Uuid>,
    /// The user's organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The session the token belongs to (revocation and idle timeout apply to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// SMART on FHIR scopes (space-separated, or a list): they narrow what the roles allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeClaim>,
    /// The SMART launch context's patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// A token's `scope`: space-separated, or a list (some identity providers send one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn scopes(&self) -> application::smart::Scopes {
        match self {
            Self::Text(text) => application::smart::Scopes::parse(text),
            Self::List(list) => application::smart::Scopes::parse(&list.join(" ")),
        }
    }
}

/// A token's `aud`: one audience or a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Optional claims of a minted token.
#[derive(Debug, Clone, Default)]
pub struct TokenExtras {
    /// For the `patient` role: the patient the user is.
    pub patient_id: Option<uuid::Uuid>,
    pub organization: Option<String>,
    pub session_id: Option<String>,
    /// SMART scopes (the `scope` claim).
    pub scope: Option<String>,
    /// The SMART launch context's patient (the `patient` claim).
    pub launch_patient: Option<uuid::Uuid>,
}

/// Verifies tokens and, for development, mints them.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    organization: Option<String>,
    ttl_secs: i64,
    /// The identity provider's keys; when set, only its tokens are accepted.
    jwks: Option<jwks::Jwks>,
    /// SMART backend clients, and the access tokens issued to them here.
    backend: Option<backend::BackendServices>,
    idle_timeout: chrono::Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// Why a token was refused. Shown to the caller only as "invalid token".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is invalid or expired")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token has no usable subject")]
    BadSubject,
    #[error("the token is signed with an algorithm this service does not accept")]
    Algorithm,
    #[error("the token names a key the identity provider does not publish")]
    UnknownKey,
    /// This service has an organization (`auth.organization`) and the token names none: it
    /// must not count as one of ours by default.
    #[error("the token has no organization claim")]
    NoOrganization,
    #[error("the token's launch context names no patient id")]
    BadLaunchContext,
    #[error("the token is issued later than now")]
    IssuedInTheFuture,
    #[error("the access token was not issued here, or has expired")]
    UnknownToken,
    #[error("the token store failed: {0}")]
    Store(String),
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_SECS as u64;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present in the token, not only right when
        // present: a token minted for another service sharing the key would pass otherwise.
        let mut required = vec!["exp", "sub"];
        if settings.issuer.is_some() {
            required.push("iss");
        }
        if settings.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &settings.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            organization: settings.organization.clone(),
            jwks: None,
            backend: None,
            idle_timeout: chrono::Duration::seconds(
                i64::try_from(settings.idle_timeout_secs).unwrap_or(i64::MAX / 1000),
            ),
            ttl_secs: i64::try_from(settings.token_ttl_secs).unwrap_or(i64::MAX),
        }
    }

    /// Accepts only tokens signed by the identity provider's keys, when given.
    #[must_use]
    pub fn with_jwks(mut self, jwks: Option<jwks::Jwks>) -> Self {
        self.jwks = jwks;
        self
    }

    /// Accepts the access tokens issued here to SMART backend clients, when any is registered.
    #[must_use]
    pub fn with_backend(mut self, backend: Option<backend::BackendServices>) -> Self {
        self.backend = backend;
        self
    }

    /// The registered SMART backend clients, if any.
    pub fn backend(&self) -> Option<&backend::BackendServices> {
        self.backend.as_ref()
    }

    /// How long a session may stay unused before it ends.
    pub fn idle_timeout(&self) -> chrono::Duration {
        self.idle_timeout
    }

    /// This service's organization, if configured.
    pub fn organization(&self) -> Option<&str> {
        self.organization.as_deref()
    }

    /// The user a bearer token stands for.
    ///
    /// # Errors
    ///
    /// [`TokenError`] when the token is malformed, badly signed, expired, for another issuer or
    /// audience, or has no subject.
    pub async fn verify(&self, token: &str) -> Result<AuthUser, TokenError> {
        let claims = match &self.jwks {
            Some(jwks) => jwks.decode(token).await?,
            None => jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?.claims,
        };
        // Issued later than now (beyond the clock skew allowed for expiry): minted by a
        // wrong clock or for later use, never good now.
        if claims.iat > Utc::now().timestamp().saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::IssuedInTheFuture);
        }
        let sub = claims.sub.trim().to_owned();
        // `backend-client/` names the SMART backend clients' tokens issued here: no user's.
        if sub.is_empty()
            || sub.len() > 200
            || sub.chars().any(char::is_control)
            || sub.starts_with(backend::CLIENT_USER_PREFIX)
        {
            return Err(TokenError::BadSubject);
        }
        if self.organization.is_some() && claims.org.is_none() {
            return Err(TokenError::NoOrganization);
        }
        // A launch context that names no patient's id is no context: the token is refused
        // rather than read as reaching nobody or everybody.
        let launch_patient = match &claims.patient {
            Some(id) => Some(uuid::Uuid::parse_str(id).map_err(|_| TokenError::BadLaunchContext)?),
            None => None,
        };
        Ok(AuthUser {
            id: sub,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            patient_id: claims.patient_id,
            organization: claims.org,
            session_id: sessions::session_of(claims.sid.or(claims.jti).as_deref(), token),
            purpose: access::Purpose::Treatment,
            break_glass: None,
            request_id: None,
            traceparent: None,
            scopes: claims.scope.as_ref().map(ScopeClaim::scopes),
            launch_patient,
            confined_to: None,
        })
    }

    /// Mints a token for `user` with `roles`, issued at `now`.
    ///
    /// # Errors
    ///
    /// The encoding error (not expected with an HMAC key).
    pub fn mint(
        &self,
        user: &str,
        roles: &[Role],
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_with(user, roles, now, &TokenExtras::default())
    }

    /// Mints a token for `user` with `roles` and the optional claims in `extras`.
    ///
    /// # Errors
    ///
    /// The encoding error (not expected with an HMAC key).
    pub fn mint_with(
        &self,
        user: &str,
        roles: &[Role],
        now: DateTime<Utc>,
        extras: &TokenExtras,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            iat: now.timestamp(),
            exp: now.timestamp().saturating_add(self.ttl_secs),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
            patient_id: extras.patient_id,
            // Minted by this service: of its organization unless told otherwise.
            org: extras
                .organization
                .clone()
                .or_else(|| self.organization.clone()),
            sid: extras.session_id.clone(),
            jti: None,
            scope: extras.scope.clone().map(ScopeClaim::Text),
            patient: extras.launch_patient.map(|p| p.to_string()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

/// The authenticated caller, allowed `P`: 401 without a valid token, 403 without the role.
#[derive(Debug)]
pub struct Authorized<P>(pub AuthUser, pub std::marker::PhantomData<P>);

/// Shared authenticator.
pub type SharedAuthenticator = Arc<Authenticator>;
