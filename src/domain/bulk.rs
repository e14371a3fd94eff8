//! A bulk inbox operation, recorded once it has run: which action on whose
//! inbox, how many notifications its filter named and how many it changed.
//! The notifications' own events carry the changes (marked as part of a
//! bulk operation, so the inbox holds their counts back); this event ends
//! the operation, and the inbox announces the counts with it, once,
//! whatever the last batch changed. One stream per operation.

use serde::{Deserialize, Serialize};

use super::{NotificationCommand, Timestamp, UserId};

pub const BULK_EVENT_VERSION: &str = "1.0";
/// Its aggregate type in the log.
pub const BULK_TYPE: &str = "InboxBulk";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    Seen,
    Read,
    Archive,
    Delete,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seen => "seen",
            Self::Read => "read",
            Self::Archive => "archive",
            Self::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Seen, Self::Read, Self::Archive, Self::Delete]
            .into_iter()
            .find(|a| a.as_str() == s)
    }

    /// What it does to one notification.
    pub fn command(self, at: Timestamp) -> NotificationCommand {
        match self {
            Self::Seen => NotificationCommand::MarkSeen { at },
            Self::Read => NotificationCommand::MarkRead { at },
            Self::Archive => NotificationCommand::Archive { at },
            Self::Delete => NotificationCommand::Delete { at },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkCommand {
    Record {
        user: UserId,
        action: BulkAction,
        matched: u64,
        changed: u64,
        at: Timestamp,
    },
}

impl BulkCommand {
    pub fn name(&self) -> &'static str {
        "RecordInboxBulk"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkEvent {
    InboxBulkApplied {
        user: UserId,
        action: BulkAction,
        matched: u64,
        changed: u64,
        applied_at: Timestamp,
    },
}

impl BulkEvent {
    pub fn event_type(&self) -> &'static str {
        "InboxBulkApplied"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {}

/// One operation: recorded once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxBulk {
    pub recorded: bool,
}

impl InboxBulk {
    pub fn decide(&self, command: BulkCommand) -> Result<Vec<BulkEvent>, BulkError> {
        if self.recorded {
            return Ok(vec![]);
        }
        let BulkCommand::Record {
            user,
            action,
            matched,
            changed,
            at,
        } = command;
        Ok(vec![BulkEvent::InboxBulkApplied {
            user,
            action,
            matched,
            changed,
            applied_at: at,
        }])
    }

    pub fn apply(&mut self, _event: BulkEvent) {
        self.recorded = true;
    }
}
