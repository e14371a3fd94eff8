//! Who asked for a command and why; recorded on every event it produces.

use std::collections::HashMap;

/// Request-scoped facts carried into each event's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandMetadata {
    /// `X-Request-Id`: this HTTP request.
    pub request_id: String,
    /// `X-Correlation-Id`: the wider operation it belongs to.
    pub correlation_id: String,
    /// What caused this command when it was not a request of its own
    /// (read-all fans out one command per notification).
    pub causation_id: Option<String>,
    /// Who acted: the authenticated principal (`key:{id}`, `user:{user}`,
    /// `anonymous` where no credentials are configured, `tidings:{reactor}`
    /// for a reaction, `cli:{user}` for the command line).
    pub actor: String,
    /// The key's name beside its id.
    pub actor_name: Option<String>,
    /// Whom an admin acted for (`X-Actor`).
    pub on_behalf_of: Option<String>,
    /// `Idempotency-Key` and the hash of the request body it was sent with.
    pub idempotency: Option<(String, String)>,
    /// The command's own id when its sender derives it (a reaction's): an
    /// aggregate records a command id once, so sending it again changes
    /// nothing. None: each command gets a new one.
    pub command_id: Option<String>,
    /// Part of one operation over many notifications, appended in
    /// batches: `more` on every batch. The inbox holds their counts back
    /// until the operation's own event (`InboxBulkApplied`) announces them
    /// once. (Earlier releases marked the last batch `last` instead.)
    pub bulk: Option<&'static str>,
}

pub const REQUEST_ID: &str = "request_id";
pub const CORRELATION_ID: &str = "correlation_id";
pub const CAUSATION_ID: &str = "causation_id";
pub const ACTOR: &str = "actor";
pub const ACTOR_NAME: &str = "actor_name";
pub const ON_BEHALF_OF: &str = "on_behalf_of";
pub const COMMAND: &str = "command";
pub const COMMAND_ID: &str = "command_id";
pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
pub const REQUEST_HASH: &str = "request_hash";
pub const BULK: &str = "bulk";
/// `BULK` on every batch of an operation.
pub const BULK_MORE: &str = "more";

impl CommandMetadata {
    /// The map cqrs-es stores with each event of one command.
    pub fn to_map(&self, command: &str, command_id: &str) -> HashMap<String, String> {
        let mut map = HashMap::from([
            (REQUEST_ID.to_owned(), self.request_id.clone()),
            (CORRELATION_ID.to_owned(), self.correlation_id.clone()),
            (ACTOR.to_owned(), self.actor.clone()),
            (COMMAND.to_owned(), command.to_owned()),
            (COMMAND_ID.to_owned(), command_id.to_owned()),
        ]);
        if let Some(name) = &self.actor_name {
            map.insert(ACTOR_NAME.to_owned(), name.clone());
        }
        if let Some(whom) = &self.on_behalf_of {
            map.insert(ON_BEHALF_OF.to_owned(), whom.clone());
        }
        if let Some(causation) = &self.causation_id {
            map.insert(CAUSATION_ID.to_owned(), causation.clone());
        }
        if let Some((key, hash)) = &self.idempotency {
            map.insert(IDEMPOTENCY_KEY.to_owned(), key.clone());
            map.insert(REQUEST_HASH.to_owned(), hash.clone());
        }
        if let Some(bulk) = self.bulk {
            map.insert(BULK.to_owned(), bulk.to_owned());
        }
        map
    }
}
