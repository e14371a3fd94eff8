//! The access settings: credentials, rate limits, CORS.

use std::time::Duration;

use clap::Args;

/// Credentials, rate limits and CORS (README: Access).
#[derive(Debug, Clone, Default, Args)]
pub struct Access {
    /// Server API keys taken from the setting, beside those created with
    /// `tidings keys create`: entries separated by `;`, each
    /// `name:scope,scope:secret` or `name:scope,scope:sha256:<hex digest>`.
    #[arg(long, env = "TIDINGS_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// HS256 secret (at least 32 bytes) that user tokens are signed and
    /// verified with.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA, Ed25519 or P-256), or the path of a file that
    /// holds one, that user tokens are verified with (RS256, EdDSA, ES256).
    #[arg(long, env = "TIDINGS_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,

    /// The PEM private key of TIDINGS_JWT_PUBLIC_KEY (or its file), for
    /// tidings to issue user tokens itself; absent: your backend signs them.
    #[arg(long, env = "TIDINGS_JWT_PRIVATE_KEY", hide_env_values = true)]
    pub jwt_private_key: Option<String>,

    /// The `iss` user tokens must carry (and that issued ones do); absent:
    /// not checked.
    #[arg(long, env = "TIDINGS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` user tokens must carry (and that issued ones do); absent:
    /// not checked. Set it when the signing key also signs tokens meant
    /// for other services.
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// How long a user token issued by `POST /v1/users/{user}/token` lives, in seconds.
    #[arg(long, env = "TIDINGS_TOKEN_TTL_SECS", default_value_t = 3_600,
          value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
    pub token_ttl_secs: u64,

    /// Serve without credentials on an address that is not loopback (behind
    /// a gateway that authenticates). Without it, tidings with no keys and
    /// no token key refuses to listen beyond loopback.
    #[arg(long, env = "TIDINGS_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Origins allowed to call from a browser (CORS), comma-separated
    /// (`https://app.example.com`); absent: no CORS headers at all.
    #[arg(long, env = "TIDINGS_CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Requests a second a key with `send` may make on average (0: no limit).
    #[arg(long, env = "TIDINGS_RATE_SEND", value_parser = clap::value_parser!(u32).range(0..=1_000_000), default_value_t = 500)]
    pub rate_send: u32,
    /// Requests a key with `send` may make at once.
    #[arg(long, env = "TIDINGS_RATE_SEND_BURST", default_value_t = 1_000)]
    pub rate_send_burst: u32,
    /// Requests a second a key with `read` may make on average (0: no limit).
    #[arg(long, env = "TIDINGS_RATE_READ", value_parser = clap::value_parser!(u32).range(0..=1_000_000), default_value_t = 500)]
    pub rate_read: u32,
    /// Requests a key with `read` may make at once.
    #[arg(long, env = "TIDINGS_RATE_READ_BURST", default_value_t = 1_000)]
    pub rate_read_burst: u32,
    /// Requests a second a key with `admin` may make on average (0: no limit).
    #[arg(long, env = "TIDINGS_RATE_ADMIN", value_parser = clap::value_parser!(u32).range(0..=1_000_000), default_value_t = 50)]
    pub rate_admin: u32,
    /// Requests a key with `admin` may make at once.
    #[arg(long, env = "TIDINGS_RATE_ADMIN_BURST", default_value_t = 100)]
    pub rate_admin_burst: u32,
    /// Requests a second one user's tokens may make on average (0: no limit).
    #[arg(long, env = "TIDINGS_RATE_USER", value_parser = clap::value_parser!(u32).range(0..=1_000_000), default_value_t = 20)]
    pub rate_user: u32,
    /// Requests one user's tokens may make at once.
    #[arg(long, env = "TIDINGS_RATE_USER_BURST", default_value_t = 40)]
    pub rate_user_burst: u32,
}

impl Access {
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    pub fn allowances(&self) -> crate::access::rate::Allowances {
        use crate::access::rate::Allowance;
        let of = |per_second, burst| Allowance { per_second, burst };
        crate::access::rate::Allowances {
            send: of(self.rate_send, self.rate_send_burst),
            read: of(self.rate_read, self.rate_read_burst),
            admin: of(self.rate_admin, self.rate_admin_burst),
            user: of(self.rate_user, self.rate_user_burst),
        }
    }

    /// The CORS origins, each `http(s)://host[:port]` (a browser's `Origin`).
    pub fn cors_origins(&self) -> anyhow::Result<Vec<String>> {
        let Some(list) = &self.cors_origins else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|origin| {
                let url = url::Url::parse(origin).ok().filter(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some()
                        && u.path() == "/"
                        && !origin.ends_with('/')
                        && u.query().is_none()
                        && u.username().is_empty()
                });
                match url {
                    Some(_) if origin.bytes().all(|b| b.is_ascii_graphic()) => Ok(origin.to_owned()),
                    _ => anyhow::bail!(
                        "TIDINGS_CORS_ORIGINS: `{origin}` is not an origin; write `https://app.example.com` (scheme, host, optional port, no path)"
                    ),
                }
            })
            .collect()
    }

    /// No limits: for tests and benchmarks that are not about them.
    pub fn unlimited() -> Self {
        Self {
            token_ttl_secs: 3_600,
            ..Self::default()
        }
    }
}
