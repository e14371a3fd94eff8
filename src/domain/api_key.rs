//! API keys: server credentials with scopes, one event stream per key. A key
//! is created and revoked by commands like any other aggregate, so the audit
//! trail says who could act and who granted or withdrew it, not only who
//! acted. The secret itself is never recorded: only its SHA-256 digest and a
//! short prefix that lets an operator tell keys apart.

use serde::{Deserialize, Serialize};

use super::values::{KeyName, Scope};
use super::Timestamp;

/// The payload version of key events.
pub const KEY_EVENT_VERSION: &str = "1.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyCommand {
    Create {
        name: KeyName,
        scopes: Vec<Scope>,
        /// Hex SHA-256 of the secret.
        digest: String,
        /// The secret's first characters, shown in lists.
        prefix: String,
        at: Timestamp,
    },
    Revoke {
        at: Timestamp,
    },
}

impl ApiKeyCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "CreateApiKey",
            Self::Revoke { .. } => "RevokeApiKey",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiKeyEvent {
    ApiKeyCreated {
        name: KeyName,
        scopes: Vec<Scope>,
        digest: String,
        prefix: String,
        created_at: Timestamp,
    },
    ApiKeyRevoked {
        revoked_at: Timestamp,
    },
}

impl ApiKeyEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::ApiKeyCreated { .. } => "ApiKeyCreated",
            Self::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("no API key with this id exists")]
    NotFound,
    #[error("an API key with this id already exists")]
    AlreadyExists,
}

/// One key as its events leave it. `created_at` None: no such key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub name: Option<KeyName>,
    pub scopes: Vec<Scope>,
    pub digest: String,
    pub prefix: String,
    pub created_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    pub fn exists(&self) -> bool {
        self.created_at.is_some()
    }

    /// The events `command` causes; none when things are already so
    /// (revoking a revoked key).
    pub fn decide(&self, command: ApiKeyCommand) -> Result<Vec<ApiKeyEvent>, ApiKeyError> {
        match command {
            ApiKeyCommand::Create {
                name,
                scopes,
                digest,
                prefix,
                at,
            } => {
                if self.exists() {
                    return Err(ApiKeyError::AlreadyExists);
                }
                Ok(vec![ApiKeyEvent::ApiKeyCreated {
                    name,
                    scopes,
                    digest,
                    prefix,
                    created_at: at,
                }])
            }
            ApiKeyCommand::Revoke { at } => match (self.created_at, self.revoked_at) {
                (None, _) => Err(ApiKeyError::NotFound),
                (Some(_), Some(_)) => Ok(vec![]),
                // Never before its creation, whatever the clocks say.
                (Some(created), None) => Ok(vec![ApiKeyEvent::ApiKeyRevoked {
                    revoked_at: at.max(created),
                }]),
            },
        }
    }

    pub fn apply(&mut self, event: ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyCreated {
                name,
                scopes,
                digest,
                prefix,
                created_at,
            } => {
                self.name = Some(name);
                self.scopes = scopes;
                self.digest = digest;
                self.prefix = prefix;
                self.created_at = Some(created_at);
            }
            ApiKeyEvent::ApiKeyRevoked { revoked_at } => self.revoked_at = Some(revoked_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn create(secs: i64) -> ApiKeyCommand {
        ApiKeyCommand::Create {
            name: KeyName::parse("billing").unwrap(),
            scopes: vec![Scope::Send],
            digest: "ab".repeat(32),
            prefix: "tdk_abcd".into(),
            at: at(secs),
        }
    }

    fn given(events: Vec<ApiKeyEvent>) -> ApiKey {
        let mut key = ApiKey::default();
        for e in events {
            key.apply(e);
        }
        key
    }

    #[test]
    fn a_created_key_is_revoked_once_and_a_second_revoke_records_nothing() {
        let mut key = given(ApiKey::default().decide(create(0)).unwrap());
        let revoked = key.decide(ApiKeyCommand::Revoke { at: at(5) }).unwrap();
        assert_eq!(
            revoked,
            vec![ApiKeyEvent::ApiKeyRevoked { revoked_at: at(5) }]
        );
        key.apply(revoked[0].clone());
        assert_eq!(key.decide(ApiKeyCommand::Revoke { at: at(9) }), Ok(vec![]));
        assert_eq!(key.revoked_at, Some(at(5)));
    }

    #[test]
    fn creating_a_key_twice_or_revoking_one_that_does_not_exist_is_refused() {
        let key = given(ApiKey::default().decide(create(0)).unwrap());
        assert_eq!(key.decide(create(1)), Err(ApiKeyError::AlreadyExists));
        assert_eq!(
            ApiKey::default().decide(ApiKeyCommand::Revoke { at: at(0) }),
            Err(ApiKeyError::NotFound)
        );
    }

    #[test]
    fn a_revoke_stamped_before_the_creation_is_recorded_at_the_creation() {
        let key = given(ApiKey::default().decide(create(10)).unwrap());
        assert_eq!(
            key.decide(ApiKeyCommand::Revoke { at: at(3) }),
            Ok(vec![ApiKeyEvent::ApiKeyRevoked { revoked_at: at(10) }])
        );
    }
}
