//! The identity provider the benchmarks' callers sign in with, as in production: an RSA key
//! (made with `openssl`), its JSON Web Key Set in a file the service reads as it would read a
//! provider's, and RS256 tokens signed with it, carrying issuer, audience and a session. The
//! service verifies each request's token against the key set, as it does in production.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use command_api::auth::{Authenticator, Role};
use command_api::configuration::Settings;

const ISSUER: &str = "https://idp.bench.invalid";
const AUDIENCE: &str = "patient-service";
const KID: &str = "bench-rsa-1";

/// A signing key and the folder its key set is written to.
#[derive(Debug)]
pub struct Idp {
    dir: PathBuf,
    private_pem: Vec<u8>,
}

impl Idp {
    /// A fresh 2048-bit RSA key and its key set, in a folder of their own.
    ///
    /// # Errors
    ///
    /// When `openssl` is missing or fails, or the folder cannot be written.
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("bench-idp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let openssl = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
            let output = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .context("running openssl")?;
            anyhow::ensure!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(output.stdout)
        };
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ])?;
        let modulus =
            String::from_utf8(openssl(&["rsa", "-in", "key.pem", "-noout", "-modulus"])?)?;
        let n = hex::decode(modulus.trim().trim_start_matches("Modulus="))?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let set = serde_json::json!({ "keys": [{
            "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
            "n": b64.encode(n), "e": "AQAB",
        }]});
        std::fs::write(dir.join("jwks.json"), set.to_string())?;
        let private_pem = std::fs::read(dir.join("key.pem"))?;
        Ok(Self { dir, private_pem })
    }

    /// Points `settings` at this provider: tokens are verified against its key set, with its
    /// issuer and audience.
    pub fn configure(&self, settings: &mut Settings) {
        settings.auth.jwks_path = Some(self.dir.join("jwks.json"));
        settings.auth.jwks_url = None;
        settings.auth.issuer = Some(ISSUER.to_owned());
        settings.auth.audience = Some(AUDIENCE.to_owned());
    }

    /// A token for `subject` with `roles`, valid for an hour, in a session of its own.
    ///
    /// # Errors
    ///
    /// When the key does not sign.
    pub fn token(&self, subject: &str, roles: &[Role]) -> anyhow::Result<String> {
        let roles: Vec<&str> = roles.iter().map(Role::as_str).collect();
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "sub": subject, "roles": roles, "iss": ISSUER, "aud": AUDIENCE,
            "iat": now, "exp": now + 3600, "sid": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.to_owned());
        Ok(jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(&self.private_pem)?,
        )?)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a benchmark's tokens come from.
#[derive(Debug)]
pub enum Tokens {
    /// The development secret (HS256), as the embedded default accepts.
    Development(Box<Authenticator>),
    /// An identity provider's key set (RS256), as production does.
    Provider(Idp),
}

impl Tokens {
    /// A token for `subject` with `roles`.
    ///
    /// # Errors
    ///
    /// When the key does not sign.
    pub fn mint(&self, subject: &str, roles: &[Role]) -> anyhow::Result<String> {
        match self {
            Self::Development(auth) => Ok(auth.mint(subject, roles, chrono::Utc::now())?),
            Self::Provider(idp) => idp.token(subject, roles),
        }
    }
}
