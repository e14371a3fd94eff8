//! Creating and revoking API keys: commands on the `ApiKey` aggregate (so
//! the log records who did it and when), after which this instance's ring
//! is re-read at once; the other instances' within `keys::REFRESH`. The
//! HTTP endpoints and `tidings keys` share these.

use std::sync::Arc;

use super::keys::{KeyRing, NewSecret};
use crate::commands::{CommandError, CommandMetadata, Commands};
use crate::domain::{ApiKey, ApiKeyCommand, ApiKeyError, KeyName, Scope};
use crate::storage::{Position, StorageError};

/// A key just made: the only time its secret is shown.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub secret: String,
    pub prefix: String,
    pub position: Position,
}

/// Why a key command failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyCommandError {
    #[error(transparent)]
    Command(#[from] CommandError<ApiKeyError>),
    #[error("the operating system gave no random bytes for the secret: {0}")]
    Random(#[from] std::io::Error),
}

/// What creating and revoking needs.
pub struct KeyAdmin {
    pub commands: Arc<Commands<ApiKey>>,
    pub ring: Arc<KeyRing>,
}

impl KeyAdmin {
    pub async fn create(
        &self,
        name: KeyName,
        scopes: Vec<Scope>,
        meta: &CommandMetadata,
    ) -> Result<Created, KeyCommandError> {
        let secret = NewSecret::generate()?;
        let id = uuid::Uuid::now_v7().to_string();
        let decided = self
            .commands
            .execute(
                &id,
                |at| ApiKeyCommand::Create {
                    name: name.clone(),
                    scopes: scopes.clone(),
                    digest: secret.digest.clone(),
                    prefix: secret.prefix.clone(),
                    at,
                },
                meta,
                true,
            )
            .await?;
        self.reread().await;
        Ok(Created {
            id,
            secret: secret.secret,
            prefix: secret.prefix,
            position: decided.position,
        })
    }

    /// Revokes key `id`; Ok(false) when it already was.
    pub async fn revoke(
        &self,
        id: &str,
        meta: &CommandMetadata,
    ) -> Result<(bool, Position), CommandError<ApiKeyError>> {
        let decided = self
            .commands
            .execute(id, |at| ApiKeyCommand::Revoke { at }, meta, false)
            .await?;
        self.reread().await;
        Ok((decided.changed, decided.position))
    }

    /// Re-reads the ring now; a failure leaves it to the next refresh.
    async fn reread(&self) {
        if let Err(e) = self.ring.refresh().await {
            tracing::warn!(error = %e, "re-reading the API keys after a change failed; the next refresh retries");
        }
    }
}

impl From<StorageError> for KeyCommandError {
    fn from(e: StorageError) -> Self {
        Self::Command(e.into())
    }
}
