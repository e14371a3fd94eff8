//! Events: facts about a notification, in the past tense. Stored forever, so
//! a shape only ever gains versions (upcast on read), never changes in place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::batching::BatchPolicy;
use super::contact::{TenantId, TimeZone};
use super::experiment::{ExperimentId, ExperimentUse, VariantName};
use super::preferences::{Level, SuppressionRule};
use super::template::{Rendered, TemplateRef};
use super::values::{
    Body, Category, Channel, FailureReason, GroupKey, NotificationId, Priority, Title, UserId,
};
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
        /// Absent in events from before tenants.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<TenantId>,
        /// The template version its title and body were rendered from,
        /// and in which locale.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<Box<TemplateRef>>,
        /// The title and body of each channel the template gives its own.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        channel_content: BTreeMap<Channel, Rendered>,
        /// The experiment it was sent under, and the variant (none: held
        /// out, every channel suppressed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        experiment: Option<Box<ExperimentUse>>,
    },
    /// Sent under an experiment's variant: a channel is used.
    NotificationExposed {
        experiment: ExperimentId,
        variant: VariantName,
        exposed_at: Timestamp,
    },
    NotificationScheduled {
        deliver_at: Timestamp,
        scheduled_at: Timestamp,
    },
    NotificationDelivered {
        channel: Channel,
        delivered_at: Timestamp,
    },
    /// A channel asked for is not delivered (`quiet_hours`: not before
    /// `until`), and what decided it: whose setting (`level`) at which
    /// version.
    ChannelSuppressed {
        channel: Channel,
        rule: SuppressionRule,
        level: Level,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
        suppressed_at: Timestamp,
    },
    /// A channel worker reported that delivery failed.
    DeliveryFailed {
        channel: Channel,
        reason: FailureReason,
        failed_at: Timestamp,
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
    /// Held for a digest instead of delivered: its category batches, and
    /// its batch key rendered to `key` (the batches of `stream`) under the
    /// policy at `policy_version`, which the batch it opens keeps.
    NotificationBatched {
        stream: String,
        key: String,
        policy: Box<BatchPolicy>,
        policy_version: u64,
        /// The recipient's, for a schedule.
        time_zone: TimeZone,
        batched_at: Timestamp,
    },
    /// Its category batches, but its batch key could not be made
    /// (`reason`): delivered on its own.
    BatchingSkipped {
        reason: String,
        policy_version: u64,
        skipped_at: Timestamp,
    },
    /// In batch `batch_id` (recorded with the batch's own event).
    /// `released`: the batch's first item, delivered at once.
    NotificationAddedToBatch {
        batch_id: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        released: bool,
        added_at: Timestamp,
    },
    /// Out of its batch to be delivered on its own (the first item, or a
    /// batch with fewer than `min_items`); its channels are decided now.
    NotificationReleased {
        batch_id: String,
        released_at: Timestamp,
    },
    /// Carried by digest `digest_id` of batch `batch_id` instead of
    /// delivered on its own.
    NotificationDigested {
        batch_id: String,
        digest_id: NotificationId,
        digested_at: Timestamp,
    },
}

pub const EVENT_VERSION: &str = "1.0";

impl NotificationEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::NotificationCreated { .. } => "NotificationCreated",
            Self::NotificationScheduled { .. } => "NotificationScheduled",
            Self::NotificationDelivered { .. } => "NotificationDelivered",
            Self::ChannelSuppressed { .. } => "ChannelSuppressed",
            Self::DeliveryFailed { .. } => "DeliveryFailed",
            Self::NotificationSeen { .. } => "NotificationSeen",
            Self::NotificationRead { .. } => "NotificationRead",
            Self::NotificationUnread { .. } => "NotificationUnread",
            Self::NotificationClicked { .. } => "NotificationClicked",
            Self::NotificationArchived { .. } => "NotificationArchived",
            Self::NotificationUnarchived { .. } => "NotificationUnarchived",
            Self::NotificationCancelled { .. } => "NotificationCancelled",
            Self::NotificationDeleted { .. } => "NotificationDeleted",
            Self::NotificationBatched { .. } => "NotificationBatched",
            Self::BatchingSkipped { .. } => "BatchingSkipped",
            Self::NotificationAddedToBatch { .. } => "NotificationAddedToBatch",
            Self::NotificationReleased { .. } => "NotificationReleased",
            Self::NotificationDigested { .. } => "NotificationDigested",
            Self::NotificationExposed { .. } => "NotificationExposed",
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
            | Self::ChannelSuppressed {
                suppressed_at: t, ..
            }
            | Self::DeliveryFailed { failed_at: t, .. }
            | Self::NotificationSeen { seen_at: t }
            | Self::NotificationRead { read_at: t }
            | Self::NotificationUnread { unread_at: t }
            | Self::NotificationClicked { clicked_at: t }
            | Self::NotificationArchived { archived_at: t }
            | Self::NotificationUnarchived { unarchived_at: t }
            | Self::NotificationCancelled { cancelled_at: t }
            | Self::NotificationDeleted { deleted_at: t }
            | Self::NotificationBatched { batched_at: t, .. }
            | Self::BatchingSkipped { skipped_at: t, .. }
            | Self::NotificationAddedToBatch { added_at: t, .. }
            | Self::NotificationReleased { released_at: t, .. }
            | Self::NotificationDigested { digested_at: t, .. }
            | Self::NotificationExposed { exposed_at: t, .. } => *t,
        }
    }
}
