//! Who may do what.
//!
//! A request's credential (`Authorization: Bearer …`) resolves to a
//! `Principal`: a server API key with scopes (`keys`), a user's token
//! (`tokens`), or, on a deployment with no credentials configured at all,
//! `Open`. Which principal may call which operation is `api::rules`; the
//! rate each may call at is `rate`.

pub mod keys;
pub mod lifecycle;
pub mod rate;
pub mod start;
pub mod tokens;
pub mod usage;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::keys::{KeyEntry, KeyRefusal, KeyRing};
use self::tokens::{TokenRefusal, Tokens};
use crate::domain::{Scope, Timestamp, UserId};

/// What a user token may be limited to (its `grants` claim; absent: both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Read the inbox, the user's notifications and their audit, and
    /// subscribe to the user's topics.
    Read,
    /// Change the user's notifications: seen, read, unread, click, archive,
    /// unarchive, delete, read-all.
    Write,
}

impl Grant {
    pub const ALL: [Grant; 2] = [Grant::Read, Grant::Write];
}

/// A verified user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserToken {
    pub user: UserId,
    pub expires_at: Timestamp,
    pub grants: Vec<Grant>,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No credential is configured (the service then listens on loopback
    /// only, or was started with `--allow-unauthenticated`): every right.
    Open,
    /// Not authenticated by the gate (what a request is until it is): no
    /// right at all, so that anything the gate did not see fails closed.
    Nobody,
    Key(Arc<KeyEntry>),
    User(Arc<UserToken>),
}

impl Principal {
    /// As recorded in event metadata (`actor`): `anonymous`, `key:{id}` or
    /// `user:{user}`.
    pub fn actor(&self) -> String {
        match self {
            Self::Open | Self::Nobody => "anonymous".to_owned(),
            Self::Key(key) => format!("key:{}", key.id),
            Self::User(token) => format!("user:{}", token.user.as_str()),
        }
    }

    /// The key's name, recorded beside its id.
    pub fn actor_name(&self) -> Option<&str> {
        match self {
            Self::Key(key) => Some(key.name.as_str()),
            _ => None,
        }
    }

    /// Whether the principal holds `scope` (Open holds every one).
    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Self::Open => true,
            Self::Key(key) => key.has(scope),
            Self::User(_) | Self::Nobody => false,
        }
    }

    /// The user a user token stands for.
    pub fn user(&self) -> Option<&UserToken> {
        match self {
            Self::User(token) => Some(token),
            _ => None,
        }
    }

    /// Whether the principal may touch one resource of `owner`'s, started by
    /// `origin` (the actor recorded on its first event): `Open`, a key
    /// holding `everything` (if any scope gives that), a `send` key on what
    /// it sent, or the owner's own token.
    pub fn reaches(&self, everything: Option<Scope>, owner: &UserId, origin: Option<&str>) -> bool {
        match self {
            Self::Open => true,
            Self::Key(key) => {
                everything.is_some_and(|s| key.has(s))
                    || (key.has(Scope::Send) && origin == Some(self.actor().as_str()))
            }
            Self::User(token) => token.user == *owner,
            Self::Nobody => false,
        }
    }

    /// What Idempotency-Keys are scoped to: the same key sent by two
    /// principals names two creates. None (Open): the key alone, as before
    /// credentials existed, so a retry across an upgrade still matches.
    pub fn idempotency_scope(&self) -> Option<String> {
        match self {
            Self::Open | Self::Nobody => None,
            other => Some(other.actor()),
        }
    }
}

/// Why a credential was not accepted: each is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this request has no credential; send `Authorization: Bearer <API key or user token>`"
    )]
    Missing,
    #[error("the Authorization header is not `Bearer <API key or user token>`")]
    Malformed,
    #[error("the API key is not known")]
    UnknownKey,
    #[error("the API key was revoked")]
    RevokedKey,
    #[error(
        "user tokens are not accepted here: no TIDINGS_JWT_SECRET or TIDINGS_JWT_PUBLIC_KEY is set"
    )]
    NoTokens,
    #[error(transparent)]
    Token(#[from] TokenRefusal),
}

/// What credentials an instance accepts.
pub struct Authority {
    pub keys: Arc<KeyRing>,
    pub tokens: Option<Tokens>,
    /// Started with `--allow-unauthenticated`: open even where a listener
    /// is not on loopback.
    pub allow_unauthenticated: bool,
}

impl Authority {
    /// Whether credentials are checked: once any key exists (or ever did),
    /// or user tokens are configured.
    pub fn enforced(&self) -> bool {
        self.tokens.is_some() || self.keys.any()
    }

    /// The principal a bearer credential names. Open when nothing is
    /// enforced (a credential sent anyway is then still checked, so a
    /// client finds a bad one before the deployment starts enforcing).
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, Refusal> {
        let Some(credential) = bearer else {
            return if self.enforced() {
                Err(Refusal::Missing)
            } else {
                Ok(Principal::Open)
            };
        };
        if credential.starts_with(keys::SECRET_PREFIX) {
            return match self.keys.authenticate(credential) {
                Ok(key) => Ok(Principal::Key(key)),
                Err(KeyRefusal::Unknown) => Err(Refusal::UnknownKey),
                Err(KeyRefusal::Revoked) => Err(Refusal::RevokedKey),
            };
        }
        let tokens = self.tokens.as_ref().ok_or(Refusal::NoTokens)?;
        Ok(Principal::User(Arc::new(tokens.verify(credential)?)))
    }
}

/// The credential of an `Authorization` header value: `Bearer <credential>`
/// (the scheme in any case, RFC 7235).
pub fn bearer(header: &str) -> Result<&str, Refusal> {
    let (scheme, credential) = header.split_once(' ').ok_or(Refusal::Malformed)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(credential)
}
