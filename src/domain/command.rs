//! Commands: what a caller asks of a notification, imperative, each carrying
//! the time it is executed at (the domain never reads a clock).

use serde::{Deserialize, Serialize};

use super::contact::TenantId;
use super::experiment::ExperimentUse;
use super::preferences::Audience;
use super::template::TemplateUse;
use super::values::{
    Body, Category, Channel, FailureReason, GroupKey, NotificationId, Priority, Title, UserId,
};
use super::{Data, Timestamp};

/// Everything a sender says about a new notification, already validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewNotification {
    pub recipient: UserId,
    pub category: Category,
    pub title: Title,
    pub body: Body,
    pub data: Data,
    pub priority: Priority,
    /// Non-empty and without repeats (the edge dedups).
    pub channels: Vec<Channel>,
    pub group_key: Option<GroupKey>,
    pub deliver_at: Option<Timestamp>,
    /// The tenant whose defaults apply (absent: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The template it is rendered from, in every locale: the create
    /// takes the recipient's (`title` and `body` hold the default
    /// locale's). None: `title` and `body` as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<TemplateUse>>,
    /// The experiment it is sent under and the recipient's variant
    /// (none: held out); never batched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentUse>,
}

/// Commands are imperative; each carries the time it is executed at.
#[derive(Debug, Clone, PartialEq)]
pub enum NotificationCommand {
    Create {
        id: NotificationId,
        content: Box<NewNotification>,
        /// The audience, when the sender read it already (a fan-out reads a
        /// page's in a few reads); None: the aggregate's service reads it.
        audience: Option<Box<Audience>>,
        /// False for a digest: never held in a batch itself.
        batchable: bool,
        at: Timestamp,
    },
    /// Out of batch `batch_id`, delivered on its own now.
    Release {
        batch_id: String,
        at: Timestamp,
    },
    /// Carried by digest `digest_id` of batch `batch_id`.
    MarkDigested {
        batch_id: String,
        digest_id: NotificationId,
        at: Timestamp,
    },
    Deliver {
        channel: Channel,
        at: Timestamp,
    },
    /// A channel worker could not deliver it.
    FailDelivery {
        channel: Channel,
        reason: FailureReason,
        at: Timestamp,
    },
    MarkSeen {
        at: Timestamp,
    },
    MarkRead {
        at: Timestamp,
    },
    MarkUnread {
        at: Timestamp,
    },
    Click {
        at: Timestamp,
    },
    Archive {
        at: Timestamp,
    },
    Unarchive {
        at: Timestamp,
    },
    Delete {
        at: Timestamp,
    },
    Cancel {
        at: Timestamp,
    },
}

impl NotificationCommand {
    /// The command's name, as recorded in event metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "Create",
            Self::Release { .. } => "Release",
            Self::MarkDigested { .. } => "MarkDigested",
            Self::Deliver { .. } => "Deliver",
            Self::FailDelivery { .. } => "FailDelivery",
            Self::MarkSeen { .. } => "MarkSeen",
            Self::MarkRead { .. } => "MarkRead",
            Self::MarkUnread { .. } => "MarkUnread",
            Self::Click { .. } => "Click",
            Self::Archive { .. } => "Archive",
            Self::Unarchive { .. } => "Unarchive",
            Self::Delete { .. } => "Delete",
            Self::Cancel { .. } => "Cancel",
        }
    }

    pub fn at(&self) -> Timestamp {
        match self {
            Self::Create { at, .. }
            | Self::Release { at, .. }
            | Self::MarkDigested { at, .. }
            | Self::Deliver { at, .. }
            | Self::FailDelivery { at, .. } => *at,
            Self::MarkSeen { at }
            | Self::MarkRead { at }
            | Self::MarkUnread { at }
            | Self::Click { at }
            | Self::Archive { at }
            | Self::Unarchive { at }
            | Self::Delete { at }
            | Self::Cancel { at } => *at,
        }
    }
}
