//! What a stream connection acts as: the credential the API accepted for it
//! (what it may read, until when, whether it still holds), and how an `auth`
//! message's token becomes one. The API implements these (`api::stream`);
//! the socket only asks.

use std::sync::Arc;

/// Who a connection acts for, as the API decided: what it may read, until
/// when, and at what rate it may send messages.
#[async_trait::async_trait]
pub trait Credential: Send + Sync {
    /// Why this credential may not read one of `topics`; None: it may read all.
    async fn refuses(&self, topics: &[String]) -> Option<String>;
    /// When it stops being valid.
    fn expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>>;
    /// Who it is: a refreshed credential must be the same principal.
    fn who(&self) -> String;
    /// Takes one message from the principal's rate allowance.
    async fn admits_message(&self) -> bool;
    /// Whether it still holds (a key not revoked since): checked every
    /// `RECHECK`, and the connection closes when it does not.
    fn holds(&self) -> bool;
}

/// How often an open connection checks that its credential still holds.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Turns an `auth` message's token into a credential, or says why not.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, token: &str) -> Result<Arc<dyn Credential>, String>;
}

/// A connection's credential (None: it must send `auth`) and how to check one.
pub struct StreamAccess {
    pub credential: Option<Arc<dyn Credential>>,
    pub authenticator: Arc<dyn Authenticator>,
}
