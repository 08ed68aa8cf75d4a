//! Tokens from an identity provider: RS256 or ES256, verified against its JSON Web Key Set
//! (a file, or a URL fetched at start and again when a token names a key not yet known).
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

enum Source {
    File(PathBuf),
    Url(String),
}

type Keys = HashMap<String, (Algorithm, DecodingKey)>;

/// The identity provider's public keys, by key id.
pub struct Jwks {
    source: Source,
    keys: RwLock<Arc<Keys>>,
    fetched: Mutex<Instant>,
    client: reqwest::Client,
    /// The soonest the URL is fetched again for a token naming an unknown key.
    refetch_after: Duration,
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
        let source = match (&settings.jwks_path, &settings.jwks_url) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => anyhow::bail!("set auth.jwks_path or auth.jwks_url, not both"),
            (Some(path), None) => Source::File(path.clone()),
            (None, Some(url)) => Source::Url(url.clone()),
        };
        let (Some(issuer), Some(audience)) = (&settings.issuer, &settings.audience) else {
            anyhow::bail!(
                "a JWKS needs auth.issuer and auth.audience: tokens are checked against both"
            );
        };
        let jwks = Self {
            source,
            keys: RwLock::new(Arc::new(Keys::new())),
            fetched: Mutex::new(Instant::now()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            refetch_after: Duration::from_secs(settings.jwks_refetch_interval_secs),
            issuer: issuer.clone(),
            audience: audience.clone(),
        };
        let keys = jwks.fetch().await?;
        anyhow::ensure!(
            !keys.is_empty(),
            "the JWKS holds no RS256 or ES256 key with a kid"
        );
        jwks.store(keys);
        Ok(Some(jwks))
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

    fn key(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        self.keys.read().ok()?.get(kid).cloned()
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
        let mut found = self.key(&kid);
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
                    found = self.key(&kid);
                }
                Err(e) => tracing::warn!(error.message = %e, "could not refresh the JWKS"),
            }
        }
        let (algorithm, key) = found.ok_or(TokenError::UnknownKey)?;
        if algorithm != header.alg {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = super::CLOCK_SKEW_SECS as u64;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        Ok(jsonwebtoken::decode::<Claims>(token, &key, &validation)?.claims)
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

/// The RS256 and ES256 keys of a key set, by key id; other keys are skipped.
fn parse(text: &str) -> anyhow::Result<Keys> {
    let set: JwkSet = serde_json::from_str(text).context("the JWKS is not a JSON Web Key Set")?;
    let mut keys = Keys::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        // One unusable key must not lock out the tokens of the others.
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, (algorithm, key));
            }
            Err(e) => tracing::warn!(kid, error.message = %e, "JWKS key skipped"),
        }
    }
    Ok(keys)
}
