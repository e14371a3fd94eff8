//! A connection's credential over its life: the `auth` message (first, or a
//! refresh), the wait for it, and the warning and close when it expires.

use serde_json::json;

use super::{Connection, End, CLOSE_UNAUTHORIZED};

impl Connection<'_> {
    /// An `auth` message: the first credential, or a fresh one for the same
    /// principal. A bad one closes the connection.
    pub(super) async fn authenticate(&mut self, token: &str) -> Result<(), End> {
        let credential = self
            .access
            .authenticator
            .authenticate(token)
            .await
            .map_err(|why| End::Close(CLOSE_UNAUTHORIZED, truncate(why)))?;
        if let Some(current) = &self.access.credential {
            if current.who() != credential.who() {
                return self
                    .error("a refreshed credential must be for the same principal; open another connection for another")
                    .await;
            }
        }
        let expires_at = credential.expires_at();
        self.access.credential = Some(credential);
        self.close_at = None;
        self.send_json(json!({"type": "authenticated", "expires_at": expires_at}))
            .await?;
        match self.held.take() {
            Some((topics, cursor)) if !topics.is_empty() => {
                self.subscribe(topics, cursor.as_deref()).await
            }
            _ => Ok(()),
        }
    }

    /// When the credential must be acted on: the end of the wait for `auth`,
    /// its expiry (warn), or the end of the grace after it (close).
    pub(super) fn credential_deadline(
        &self,
        opened: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        let Some(credential) = &self.access.credential else {
            return Some(opened + self.auth_wait);
        };
        if self.close_at.is_some() {
            return self.close_at;
        }
        let expires_at = credential.expires_at()?;
        let left = (expires_at - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }

    /// The credential's deadline came.
    pub(super) async fn credential_due(&mut self) -> Result<(), End> {
        match &self.access.credential {
            None => Err(End::Close(
                CLOSE_UNAUTHORIZED,
                format!("no auth message within {} ms", self.auth_wait.as_millis()),
            )),
            Some(_) if self.close_at.is_some() => Err(End::Close(
                CLOSE_UNAUTHORIZED,
                "the credential expired; reconnect with a fresh one and the last cursor".into(),
            )),
            Some(_) => {
                self.close_at = Some(tokio::time::Instant::now() + self.expiry_grace);
                self.send_json(json!({
                    "type": "error",
                    "reason": "token_expired",
                    "detail": format!("the credential expired: send {{\"type\":\"auth\",\"token\":\"...\"}} with a fresh one within {} ms, or the connection closes ({CLOSE_UNAUTHORIZED})", self.expiry_grace.as_millis()),
                }))
                .await
            }
        }
    }
}

/// A close reason fits in a control frame (123 bytes).
fn truncate(mut why: String) -> String {
    if why.len() > 120 {
        let mut cut = 120;
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        why.truncate(cut);
    }
    why
}
