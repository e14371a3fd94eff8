//! Events: facts about a notification, in the past tense. Stored forever, so
//! a shape only ever gains versions (upcast on read), never changes in place.

use serde::{Deserialize, Serialize};

use super::values::{Body, Category, Channel, GroupKey, NotificationId, Priority, Title, UserId};
use super::{Data, Timestamp};

/// Events are facts, in the past tense. Version "1.0" for all of them so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NotificationEvent {
    NotificationCreated {
        id: NotificationId,
        recipient: UserId,
        category: Category,
        title: Title,
        body: Body,
        data: Data,
        priority: Priority,
        channels: Vec<Channel>,
        group_key: Option<GroupKey>,
        deliver_at: Option<Timestamp>,
        created_at: Timestamp,
    },
    NotificationScheduled {
        deliver_at: Timestamp,
        scheduled_at: Timestamp,
    },
    NotificationDelivered {
        channel: Channel,
        delivered_at: Timestamp,
    },
    NotificationSeen {
        seen_at: Timestamp,
    },
    NotificationRead {
        read_at: Timestamp,
    },
    NotificationUnread {
        unread_at: Timestamp,
    },
    NotificationClicked {
        clicked_at: Timestamp,
    },
    NotificationArchived {
        archived_at: Timestamp,
    },
    NotificationUnarchived {
        unarchived_at: Timestamp,
    },
    NotificationCancelled {
        cancelled_at: Timestamp,
    },
    NotificationDeleted {
        deleted_at: Timestamp,
    },
}

pub const EVENT_VERSION: &str = "1.0";

impl NotificationEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::NotificationCreated { .. } => "NotificationCreated",
            Self::NotificationScheduled { .. } => "NotificationScheduled",
            Self::NotificationDelivered { .. } => "NotificationDelivered",
            Self::NotificationSeen { .. } => "NotificationSeen",
            Self::NotificationRead { .. } => "NotificationRead",
            Self::NotificationUnread { .. } => "NotificationUnread",
            Self::NotificationClicked { .. } => "NotificationClicked",
            Self::NotificationArchived { .. } => "NotificationArchived",
            Self::NotificationUnarchived { .. } => "NotificationUnarchived",
            Self::NotificationCancelled { .. } => "NotificationCancelled",
            Self::NotificationDeleted { .. } => "NotificationDeleted",
        }
    }

    /// When the fact happened.
    pub fn occurred_at(&self) -> Timestamp {
        match self {
            Self::NotificationCreated { created_at: t, .. }
            | Self::NotificationScheduled {
                scheduled_at: t, ..
            }
            | Self::NotificationDelivered {
                delivered_at: t, ..
            }
            | Self::NotificationSeen { seen_at: t }
            | Self::NotificationRead { read_at: t }
            | Self::NotificationUnread { unread_at: t }
            | Self::NotificationClicked { clicked_at: t }
            | Self::NotificationArchived { archived_at: t }
            | Self::NotificationUnarchived { unarchived_at: t }
            | Self::NotificationCancelled { cancelled_at: t }
            | Self::NotificationDeleted { deleted_at: t } => *t,
        }
    }
}
