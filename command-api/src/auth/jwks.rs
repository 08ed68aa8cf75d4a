//! Tokens from an identity provider: RS256 or ES256, verified against its JSON Web Key Set
//! (a file, or a URL fetched at start and again when a token names a key not yet known). The
//! key sets of SMART backend clients ([`super::backend`]) are read the same way.
//!
//! With a key set configured, issuer and audience are required and checked, as is expiry; the
//! development HS256 secret is no longer accepted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Claims, TokenError};
use crate::configuration::AuthSettings;

/// Where a key set is read from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    /// The source of a `path` or a `url`, exactly one of them; `None` for neither.
    ///
    /// # Errors
    ///
    /// When both are given.
    pub fn of(
        path: Option<&PathBuf>,
        url: Option<&String>,
        what: &str,
    ) -> anyhow::Result<Option<Self>> {
        match (path, url) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => anyhow::bail!("set {what}jwks_path or {what}jwks_url, not both"),
            (Some(path), None) => Ok(Some(Self::File(path.clone()))),
            (None, Some(url)) => Ok(Some(Self::Url(url.clone()))),
        }
    }
}

/// The kind of a key, which decides the algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl KeyKind {
    fn verifies(self, algorithm: Algorithm) -> bool {
        match self {
            Self::Rsa => matches!(
                algorithm,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
            ),
            Self::P256 => algorithm == Algorithm::ES256,
            Self::P384 => algorithm == Algorithm::ES384,
        }
    }
}

type Keys = HashMap<String, (KeyKind, DecodingKey)>;

/// A JSON Web Key Set by key id: a file, or a URL fetched at start and again (at most every
/// `refetch_after`) when a token names a key not yet known.
pub struct KeySet {
    source: Source,
    keys: RwLock<Arc<Keys>>,
    fetched: Mutex<Instant>,
    client: reqwest::Client,
    refetch_after: Duration,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// The key set of `source`, read now.
    ///
    /// # Errors
    ///
    /// When it cannot be read or holds no usable key.
    pub async fn load(source: Source, refetch_after: Duration) -> anyhow::Result<Self> {
        let set = Self {
            source,
            keys: RwLock::new(Arc::new(Keys::new())),
            fetched: Mutex::new(Instant::now()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            refetch_after,
        };
        let keys = set.fetch().await?;
        anyhow::ensure!(
            !keys.is_empty(),
            "the JWKS holds no RSA, P-256 or P-384 key with a kid"
        );
        set.store(keys);
        Ok(set)
    }

    /// The URL the set is fetched from, if it is one.
    pub fn url(&self) -> Option<&str> {
        match &self.source {
            Source::Url(url) => Some(url),
            Source::File(_) => None,
        }
    }

    async fn fetch(&self) -> anyhow::Result<Keys> {
        let text = match &self.source {
            Source::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the JWKS {}", path.display()))?,
            Source::Url(url) => {
                self.client
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .with_context(|| format!("fetching the JWKS {url}"))?
                    .text()
                    .await?
            }
        };
        parse(&text)
    }

    fn store(&self, keys: Keys) {
        if let Ok(mut current) = self.keys.write() {
            *current = Arc::new(keys);
        }
    }

    fn key(&self, kid: &str) -> Option<(KeyKind, DecodingKey)> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    /// The key `kid`, for verifying `algorithm`.
    ///
    /// # Errors
    ///
    /// [`TokenError::UnknownKey`] when the set has no such key (after fetching it again, if
    /// allowed now), [`TokenError::Algorithm`] when the key is of another kind.
    pub async fn key_for(
        &self,
        kid: &str,
        algorithm: Algorithm,
    ) -> Result<DecodingKey, TokenError> {
        let mut found = self.key(kid);
        if found.is_none() && matches!(self.source, Source::Url(_)) && self.may_refetch() {
            match self.fetch().await {
                // A set with no usable key (a broken or hostile answer) must not replace the
                // keys that work: every user would be locked out.
                Ok(keys) if keys.is_empty() => tracing::warn!(
                    alert = "jwks-refresh-refused",
                    "the refreshed JWKS holds no usable key; keeping the current keys"
                ),
                Ok(keys) => {
                    self.store(keys);
                    found = self.key(kid);
                }
                Err(e) => tracing::warn!(error.message = %e, "could not refresh the JWKS"),
            }
        }
        let (kind, key) = found.ok_or(TokenError::UnknownKey)?;
        if !kind.verifies(algorithm) {
            return Err(TokenError::Algorithm);
        }
        Ok(key)
    }

    fn may_refetch(&self) -> bool {
        let Ok(mut fetched) = self.fetched.lock() else {
            return false;
        };
        if fetched.elapsed() < self.refetch_after {
            return false;
        }
        *fetched = Instant::now();
        true
    }
}

/// The identity provider's public keys, and the issuer and audience its tokens must name.
pub struct Jwks {
    keys: KeySet,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// The key set of `settings` (`jwks_path` or `jwks_url`), or `None` when neither is set.
    ///
    /// # Errors
    ///
    /// When both or neither of issuer and audience are missing, the set cannot be read, or it
    /// holds no usable key.
    pub async fn load(settings: &AuthSettings) -> anyhow::Result<Option<Self>> {
        let Some(source) = Source::of(
            settings.jwks_path.as_ref(),
            settings.jwks_url.as_ref(),
            "auth.",
        )?
        else {
            return Ok(None);
        };
        let (Some(issuer), Some(audience)) = (&settings.issuer, &settings.audience) else {
            anyhow::bail!(
                "a JWKS needs auth.issuer and auth.audience: tokens are checked against both"
            );
        };
        let keys = KeySet::load(
            source,
            Duration::from_secs(settings.jwks_refetch_interval_secs),
        )
        .await?;
        Ok(Some(Self {
            keys,
            issuer: issuer.clone(),
            audience: audience.clone(),
        }))
    }

    /// The claims of `token`, verified against the key its header names.
    ///
    /// # Errors
    ///
    /// [`TokenError`] for another algorithm, an unknown key, a bad signature, expiry, or
    /// another issuer or audience.
    pub async fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.key_for(&kid, header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = super::CLOCK_SKEW_SECS as u64;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        Ok(jsonwebtoken::decode::<Claims>(token, &key, &validation)?.claims)
    }
}

/// The RSA, P-256 and P-384 keys of a key set, by key id; other keys are skipped.
fn parse(text: &str) -> anyhow::Result<Keys> {
    let set: JwkSet = serde_json::from_str(text).context("the JWKS is not a JSON Web Key Set")?;
    let mut keys = Keys::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                KeyKind::P256
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                KeyKind::P384
            }
            _ => continue,
        };
        // One unusable key must not lock out the tokens of the others.
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, (kind, key));
            }
            Err(e) => tracing::warn!(kid, error.message = %e, "JWKS key skipped"),
        }
    }
    Ok(keys)
}
