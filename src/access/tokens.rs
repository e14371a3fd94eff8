//! Per-user tokens: JWTs with `sub` = the user and `exp`, verified with a
//! configured HS256 secret or an RS256, ES256 or EdDSA public key (so an
//! application's backend can sign them without calling tidings). tidings
//! issues them itself (`POST /v1/users/{user}/token`) when it holds the
//! signing key: the HS256 secret, or a configured private key.
//!
//! Only the configured algorithm is accepted (no `alg` confusion), `exp` and
//! `sub` are required, and there is no leeway: a token is refused the second
//! it expires.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Grant, UserToken};
use crate::domain::{Timestamp, UserId};

/// The fewest bytes an HS256 secret may have (RFC 7518 §3.2: at least the
/// hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    /// What the token may do; absent: everything a user may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grants: Option<Vec<Grant>>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// tidings cannot sign tokens: it holds only a public key.
#[derive(Debug, thiserror::Error)]
#[error("tidings holds no signing key (set TIDINGS_JWT_SECRET, or TIDINGS_JWT_PRIVATE_KEY beside the public key); sign user tokens in your backend")]
pub struct CannotSign;

/// What a token must say of where it comes from and whom it is for.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// How tokens are checked and made.
pub struct Tokens {
    binding: Binding,
    algorithm: Algorithm,
    verify: DecodingKey,
    sign: Option<EncodingKey>,
    validation: Validation,
    /// How long an issued token lives.
    pub ttl: Duration,
}

/// PEM text, or the path of a file that holds it.
fn pem(setting: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    if setting.trim_start().starts_with("-----BEGIN") {
        return Ok(setting.as_bytes().to_vec());
    }
    std::fs::read(setting).map_err(|e| anyhow::anyhow!("{what}: cannot read `{setting}`: {e}"))
}

impl Tokens {
    /// From the settings; None when neither a secret nor a public key is set
    /// (user tokens are then refused).
    pub fn configure(
        secret: Option<&str>,
        public_key: Option<&str>,
        private_key: Option<&str>,
        ttl: Duration,
        binding: Binding,
    ) -> anyhow::Result<Option<Self>> {
        let (algorithm, verify, sign) = match (secret, public_key) {
            (None, None) => {
                if private_key.is_some() {
                    anyhow::bail!(
                        "TIDINGS_JWT_PRIVATE_KEY needs TIDINGS_JWT_PUBLIC_KEY, which verifies what it signs"
                    );
                }
                return Ok(None);
            }
            (Some(_), Some(_)) => anyhow::bail!(
                "set TIDINGS_JWT_SECRET (HS256) or TIDINGS_JWT_PUBLIC_KEY (RS256, ES256, EdDSA), not both"
            ),
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    anyhow::bail!(
                        "TIDINGS_JWT_SECRET is {} bytes; use at least {MIN_SECRET_BYTES} random bytes",
                        secret.len()
                    );
                }
                if private_key.is_some() {
                    anyhow::bail!("TIDINGS_JWT_PRIVATE_KEY goes with a public key, not with TIDINGS_JWT_SECRET");
                }
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                    Some(EncodingKey::from_secret(secret.as_bytes())),
                )
            }
            (None, Some(public)) => {
                let public = pem(public, "TIDINGS_JWT_PUBLIC_KEY")?;
                let (algorithm, verify) = if let Ok(k) = DecodingKey::from_rsa_pem(&public) {
                    (Algorithm::RS256, k)
                } else if let Ok(k) = DecodingKey::from_ed_pem(&public) {
                    (Algorithm::EdDSA, k)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&public) {
                    (Algorithm::ES256, k)
                } else {
                    anyhow::bail!(
                        "TIDINGS_JWT_PUBLIC_KEY is not a PEM public key of RSA, Ed25519 or P-256"
                    );
                };
                let sign = match private_key {
                    None => None,
                    Some(private) => {
                        let private = pem(private, "TIDINGS_JWT_PRIVATE_KEY")?;
                        let key = match algorithm {
                            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
                            Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
                            _ => EncodingKey::from_ec_pem(&private),
                        }
                        .map_err(|e| {
                            anyhow::anyhow!("TIDINGS_JWT_PRIVATE_KEY is not a {algorithm:?} private key: {e}")
                        })?;
                        Some(key)
                    }
                };
                (algorithm, verify, sign)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &binding.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &binding.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let tokens = Self {
            binding,
            algorithm,
            verify,
            sign,
            validation,
            ttl,
        };
        // A private key that does not match the public one would issue
        // tokens that are then refused: check the pair once, now.
        if tokens.sign.is_some() {
            let probe = UserId::parse("probe").map_err(|e| anyhow::anyhow!(e.0))?;
            let (token, _) = tokens.issue(&probe, None)?;
            tokens.verify(&token).map_err(|e| {
                anyhow::anyhow!(
                    "TIDINGS_JWT_PRIVATE_KEY does not match TIDINGS_JWT_PUBLIC_KEY: {e}"
                )
            })?;
        }
        Ok(Some(tokens))
    }

    /// The user `token` stands for.
    pub fn verify(&self, token: &str) -> Result<UserToken, TokenRefusal> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.verify, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenRefusal::Expired,
                    other => TokenRefusal::Invalid(format!("{other:?}")),
                }
            })?;
        let claims = data.claims;
        let user = UserId::parse(&claims.sub)
            .map_err(|e| TokenRefusal::Invalid(format!("`sub` {}", e.0)))?;
        let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
            .ok_or_else(|| TokenRefusal::Invalid("`exp` is out of range".into()))?;
        Ok(UserToken {
            user,
            expires_at,
            grants: claims.grants.unwrap_or_else(|| Grant::ALL.to_vec()),
        })
    }

    /// A token for `user`, valid for `ttl`, with `grants` (None: all).
    pub fn issue(
        &self,
        user: &UserId,
        grants: Option<Vec<Grant>>,
    ) -> Result<(String, Timestamp), CannotSign> {
        let key = self.sign.as_ref().ok_or(CannotSign)?;
        let now = Utc::now();
        let expires_at = now + chrono::Duration::from_std(self.ttl).unwrap_or_default();
        let claims = Claims {
            sub: user.as_str().to_owned(),
            exp: expires_at.timestamp(),
            iss: self.binding.issuer.clone(),
            aud: self.binding.audience.clone(),
            iat: Some(now.timestamp()),
            grants,
        };
        // Encoding our own claims with a key that verified as this
        // algorithm's cannot fail but on a broken key, which `configure`
        // has ruled out.
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|_| CannotSign)?;
        let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires_at);
        Ok((token, expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::configure(
            Some(SECRET),
            None,
            None,
            Duration::from_secs(60),
            Binding::default(),
        )
        .unwrap()
        .unwrap()
    }

    fn signed(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn an_issued_token_verifies_as_its_user_with_its_grants() {
        let t = tokens();
        let user = UserId::parse("alice").unwrap();
        let (token, expires_at) = t.issue(&user, Some(vec![Grant::Read])).unwrap();
        let verified = t.verify(&token).unwrap();
        assert_eq!(verified.user, user);
        assert_eq!(verified.grants, vec![Grant::Read]);
        assert_eq!(verified.expires_at, expires_at);
        let (all, _) = t.issue(&user, None).unwrap();
        assert_eq!(t.verify(&all).unwrap().grants, Grant::ALL.to_vec());
    }

    #[test]
    fn expired_forged_and_other_algorithm_tokens_are_refused() {
        let t = tokens();
        let now = Utc::now().timestamp();
        let expired = signed(
            serde_json::json!({"sub": "alice", "exp": now - 1}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(t.verify(&expired).unwrap_err(), TokenRefusal::Expired);
        let forged = signed(
            serde_json::json!({"sub": "alice", "exp": now + 60}),
            Algorithm::HS256,
            "another secret, 32 bytes or more!!",
        );
        assert!(matches!(t.verify(&forged), Err(TokenRefusal::Invalid(_))));
        let hs384 = signed(
            serde_json::json!({"sub": "alice", "exp": now + 60}),
            Algorithm::HS384,
            SECRET,
        );
        assert!(matches!(t.verify(&hs384), Err(TokenRefusal::Invalid(_))));
        let no_exp = signed(
            serde_json::json!({"sub": "alice"}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(matches!(t.verify(&no_exp), Err(TokenRefusal::Invalid(_))));
        let bad_sub = signed(
            serde_json::json!({"sub": "", "exp": now + 60}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(matches!(t.verify(&bad_sub), Err(TokenRefusal::Invalid(_))));
        assert!(matches!(
            t.verify("not.a.jwt"),
            Err(TokenRefusal::Invalid(_))
        ));
    }

    #[test]
    fn a_short_secret_or_both_kinds_of_key_are_refused_at_start() {
        let short = Tokens::configure(
            Some("short"),
            None,
            None,
            Duration::from_secs(1),
            Binding::default(),
        );
        assert!(short.err().unwrap().to_string().contains("at least 32"));
        let both = Tokens::configure(
            Some(SECRET),
            Some("-----BEGIN PUBLIC KEY-----"),
            None,
            Duration::from_secs(1),
            Binding::default(),
        );
        assert!(both.err().unwrap().to_string().contains("not both"));
        assert!(
            Tokens::configure(None, None, None, Duration::from_secs(1), Binding::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn with_an_issuer_and_audience_set_only_tokens_that_carry_them_pass() {
        let bound = Tokens::configure(
            Some(SECRET),
            None,
            None,
            Duration::from_secs(60),
            Binding {
                issuer: Some("https://app.example.com".into()),
                audience: Some("tidings".into()),
            },
        )
        .unwrap()
        .unwrap();
        let user = UserId::parse("alice").unwrap();
        let (issued, _) = bound.issue(&user, None).unwrap();
        assert_eq!(bound.verify(&issued).unwrap().user, user);
        let exp = Utc::now().timestamp() + 60;
        for claims in [
            serde_json::json!({"sub": "alice", "exp": exp}),
            serde_json::json!({"sub": "alice", "exp": exp, "iss": "https://app.example.com", "aud": "billing"}),
            serde_json::json!({"sub": "alice", "exp": exp, "iss": "https://evil.example", "aud": "tidings"}),
            serde_json::json!({"sub": "alice", "exp": exp, "iss": "https://app.example.com", "aud": "tidings", "nbf": exp}),
        ] {
            let token = signed(claims.clone(), Algorithm::HS256, SECRET);
            assert!(
                matches!(bound.verify(&token), Err(TokenRefusal::Invalid(_))),
                "{claims}"
            );
        }
    }
}
