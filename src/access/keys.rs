//! Server API keys as an instance holds them: the secrets' digests, looked up
//! on every request without a round trip.
//!
//! A secret is `tdk_` and 43 characters of base64url (32 random bytes from
//! the operating system). It is stored only as its SHA-256 digest: the
//! secret has 256 bits of entropy, so a fast hash is as safe as a slow one
//! and costs nothing per request (slow hashes are for guessable passwords).
//!
//! The ring has two sources: the keys of the `TIDINGS_API_KEYS` setting, and
//! the `ApiKey` streams of the event log, which every instance re-reads every
//! `REFRESH` (keys are few, and the read is one index range). A key created
//! or revoked on this instance is in the ring at once; on the others within
//! one refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use cqrs_es::Aggregate;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::domain::{parse_scopes, ApiKey, ApiKeyEvent, KeyName, Scope, Timestamp};
use crate::storage::{EventLog, StorageError};

/// How often the ring re-reads the keys in the log.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What every secret starts with: a leaked one is recognisable (secret
/// scanners match prefixes).
pub const SECRET_PREFIX: &str = "tdk_";

/// Characters of the secret shown in lists.
const SHOWN: usize = 12;

/// The most keys the ring reads from the log.
const MAX_STORED_EVENTS: usize = 100_000;

/// A new secret and what is stored of it.
pub struct NewSecret {
    pub secret: String,
    pub digest: String,
    pub prefix: String,
}

impl NewSecret {
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        let secret = format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        Ok(Self {
            digest: digest(&secret),
            prefix: secret[..SHOWN].to_owned(),
            secret,
        })
    }
}

/// Hex SHA-256 of a secret, as stored.
pub fn digest(secret: &str) -> String {
    use std::fmt::Write;
    let mut hex = String::with_capacity(64);
    for b in raw_digest(secret) {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The SHA-256 of a secret, as the ring looks it up (no hex on the
/// request path).
fn raw_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A stored hex digest as bytes; None when it is not 64 hex digits.
fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `TIDINGS_API_KEYS`: changed by changing the setting.
    Setting,
    /// Created by a command; revoked by one.
    Store,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Setting => "setting",
            Self::Store => "store",
        }
    }
}

/// One key as the ring knows it. A setting key's id is `setting:{name}`: a
/// new secret under the same name (a rotation of the setting) keeps what the
/// key sent, its idempotency keys and its rate allowance.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    pub name: KeyName,
    pub scopes: Vec<Scope>,
    pub prefix: String,
    pub created_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub source: Source,
    /// Milliseconds since 1970 of the last request it authenticated; 0: none
    /// on this instance.
    last_used_ms: AtomicI64,
}

impl KeyEntry {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn last_used(&self) -> Option<Timestamp> {
        match self.last_used_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => chrono::DateTime::from_timestamp_millis(ms),
        }
    }

    /// Records a use; at most once a second, so that the clients sharing
    /// a key do not all write one cache line on every request.
    fn touch(&self) {
        let now = Utc::now().timestamp_millis();
        if now - self.last_used_ms.load(Ordering::Relaxed) >= 1_000 {
            self.last_used_ms.store(now, Ordering::Relaxed);
        }
    }
}

/// Why a secret was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Unknown,
    Revoked,
}

/// A bad `TIDINGS_API_KEYS` entry, named.
#[derive(Debug, thiserror::Error)]
#[error("TIDINGS_API_KEYS entry {index}: {problem}")]
pub struct BadKeySetting {
    index: usize,
    problem: String,
}

/// The keys of the setting: entries separated by `;`, each
/// `name:scope,scope:secret` or `name:scope,scope:sha256:<hex digest>`
/// (so the setting need not hold the secret itself).
pub fn parse_setting(setting: &str) -> Result<Vec<(KeyName, Vec<Scope>, String)>, BadKeySetting> {
    let mut keys = Vec::new();
    for (index, entry) in setting.split(';').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let bad = |problem: String| BadKeySetting {
            index: index + 1,
            problem,
        };
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(scopes), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "is not `name:scopes:secret` (or `name:scopes:sha256:<hex>`)".into(),
            ));
        };
        let name = KeyName::parse(name).map_err(|e| bad(format!("name {}", e.0)))?;
        let scopes = parse_scopes(scopes).map_err(|e| bad(e.0))?;
        let digest = match secret.strip_prefix("sha256:") {
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                hex.to_ascii_lowercase()
            }
            Some(_) => return Err(bad("a sha256 digest is 64 hex digits".into())),
            None if !secret.starts_with(SECRET_PREFIX) => {
                return Err(bad(format!(
                    "the secret does not start with `{SECRET_PREFIX}`; make one with `tidings keys create`"
                )))
            }
            None if secret.len() < 32 => {
                return Err(bad(
                    "the secret is shorter than 32 characters; make one with `tidings keys create`"
                        .into(),
                ))
            }
            None => digest(secret),
        };
        if keys.iter().any(|(n, _, _): &(KeyName, _, _)| n == &name) {
            return Err(bad(format!("the name `{name}` is used twice")));
        }
        keys.push((name, scopes, digest));
    }
    Ok(keys)
}

#[derive(Default)]
struct Ring {
    by_digest: HashMap<[u8; 32], Arc<KeyEntry>>,
    by_id: HashMap<String, Arc<KeyEntry>>,
    /// Every key, revoked ones too, setting keys first.
    keys: Vec<Arc<KeyEntry>>,
}

/// The keys an instance accepts.
pub struct KeyRing {
    setting: Vec<(Arc<KeyEntry>, String)>,
    log: Arc<dyn EventLog>,
    ring: RwLock<Arc<Ring>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl KeyRing {
    /// The keys of the setting; the log's are read by `refresh`.
    pub fn new(setting: Vec<(KeyName, Vec<Scope>, String)>, log: Arc<dyn EventLog>) -> Self {
        let setting = setting
            .into_iter()
            .map(|(name, scopes, digest)| {
                let entry = KeyEntry {
                    id: format!("setting:{name}"),
                    prefix: String::new(),
                    name,
                    scopes,
                    created_at: None,
                    revoked_at: None,
                    source: Source::Setting,
                    last_used_ms: AtomicI64::new(0),
                };
                (Arc::new(entry), digest)
            })
            .collect();
        let ring = Self {
            setting,
            log,
            ring: RwLock::default(),
            refreshing: tokio::sync::Mutex::new(()),
        };
        ring.install(Vec::new());
        ring
    }

    fn current(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key `secret` names, if it is one and not revoked.
    pub fn authenticate(&self, secret: &str) -> Result<Arc<KeyEntry>, KeyRefusal> {
        let digest = raw_digest(secret);
        let entry = {
            let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
            ring.by_digest.get(&digest).cloned()
        }
        .ok_or(KeyRefusal::Unknown)?;
        if entry.revoked_at.is_some() {
            return Err(KeyRefusal::Revoked);
        }
        entry.touch();
        Ok(entry)
    }

    /// Whether any key exists or ever did: with none, the service is open.
    pub fn any(&self) -> bool {
        !self.current().keys.is_empty()
    }

    /// Every key, revoked ones too.
    pub fn keys(&self) -> Vec<Arc<KeyEntry>> {
        self.current().keys.clone()
    }

    /// Re-reads the keys of the log. One refresh at a time: a read taken
    /// before a revocation is never installed after one taken since.
    pub async fn refresh(&self) -> Result<(), StorageError> {
        let _one = self.refreshing.lock().await;
        let events = self.log.of_type(ApiKey::TYPE, MAX_STORED_EVENTS).await?;
        let complete = events.len() < MAX_STORED_EVENTS;
        let mut stored: Vec<(String, Option<ApiKey>)> = Vec::new();
        for event in &events {
            if stored
                .last()
                .is_none_or(|(id, _)| *id != event.aggregate_id)
            {
                stored.push((event.aggregate_id.clone(), Some(ApiKey::default())));
            }
            let Some((_, slot)) = stored.last_mut() else {
                continue;
            };
            match (event.decode::<ApiKeyEvent>(), slot.as_mut()) {
                (Ok(decoded), Some(key)) => key.apply(decoded),
                (Ok(_), None) => {}
                // An event of a key that cannot be read could be its
                // revocation: the key grants nothing until it reads.
                (Err(problem), _) => {
                    warn!(key = %event.aggregate_id, %problem, "an API key event cannot be read; the key is refused");
                    *slot = None;
                }
            }
        }
        if !complete {
            // The last stream may be cut before its revocation.
            warn!(
                limit = MAX_STORED_EVENTS,
                "more API key events than the ring reads; the last key read is refused"
            );
            stored.pop();
        }
        self.install(
            stored
                .into_iter()
                .filter_map(|(id, key)| Some((id, key?)))
                .collect(),
        );
        Ok(())
    }

    /// Whether key `id` is still accepted (a stream checks its key so).
    pub fn in_force(&self, id: &str) -> bool {
        self.current()
            .by_id
            .get(id)
            .is_some_and(|k| k.revoked_at.is_none())
    }

    /// Makes `stored` (with the setting's keys) the ring, keeping what the
    /// old one knew of when each key was last used.
    fn install(&self, stored: Vec<(String, ApiKey)>) {
        let old = self.current();
        let used = |id: &str| {
            old.keys
                .iter()
                .find(|k| k.id == id)
                .map_or(0, |k| k.last_used_ms.load(Ordering::Relaxed))
        };
        let mut ring = Ring::default();
        for (entry, digest) in &self.setting {
            if let Some(digest) = from_hex(digest) {
                ring.by_digest.insert(digest, entry.clone());
            }
            ring.by_id.insert(entry.id.clone(), entry.clone());
            ring.keys.push(entry.clone());
        }
        for (id, key) in stored {
            let Some(name) = key.name else { continue };
            let entry = Arc::new(KeyEntry {
                last_used_ms: AtomicI64::new(used(&id)),
                id,
                name,
                scopes: key.scopes,
                prefix: key.prefix,
                created_at: key.created_at,
                revoked_at: key.revoked_at,
                source: Source::Store,
            });
            // A setting key with the same secret stays the one that answers.
            // A digest that does not read grants nothing.
            if let Some(digest) = from_hex(&key.digest) {
                ring.by_digest.entry(digest).or_insert(entry.clone());
            }
            ring.by_id.insert(entry.id.clone(), entry.clone());
            ring.keys.push(entry);
        }
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
    }

    /// Refreshes every `REFRESH` until `shutdown`; an outage keeps the keys
    /// last read (nothing can be revoked while the store is down either).
    pub async fn refresh_until(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        warn!(error = %e, "re-reading the API keys failed; the keys last read stay in force");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_distinct_and_stored_only_as_their_digest() {
        let a = NewSecret::generate().unwrap();
        let b = NewSecret::generate().unwrap();
        assert!(a.secret.starts_with(SECRET_PREFIX));
        assert_eq!(a.secret.len(), SECRET_PREFIX.len() + 43);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.digest, digest(&a.secret));
        assert_eq!(a.digest.len(), 64);
        assert!(!a.digest.contains(&a.secret[SECRET_PREFIX.len()..]));
        assert!(a.secret.starts_with(&a.prefix));
    }

    #[test]
    fn the_setting_takes_secrets_or_digests_and_names_what_is_wrong() {
        let secret = "tdk_0123456789abcdef0123456789abcdef";
        let hex = digest(secret);
        let keys = parse_setting(&format!(
            "billing:send:{secret}; ops:admin,read:sha256:{hex}"
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].2, hex);
        assert_eq!(keys[1].1, vec![Scope::Read, Scope::Admin]);
        assert_eq!(keys[1].2, hex);
        for (bad, says) in [
            ("billing:send", "name:scopes:secret"),
            ("bil ling:send:tdk_0123456789abcdef0123456789abcdef", "name"),
            (
                "billing:write:tdk_0123456789abcdef0123456789abcdef",
                "`write`",
            ),
            ("billing:send:tdk_short", "shorter than 32"),
            (
                "billing:send:0123456789abcdef0123456789abcdef",
                "start with `tdk_`",
            ),
            ("billing:send:sha256:abc", "64 hex digits"),
            (&format!("a:send:{secret};a:read:{secret}"), "used twice"),
        ] {
            let err = parse_setting(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
