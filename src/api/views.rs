//! What the API answers with: the notification view shared by REST (and, in a
//! later issue, the streams), command receipts and inbox pages.

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use poem_openapi::Object;

use super::params::{ChannelRule, LifecycleRule, PriorityRule, ReadStatusRule, Text};
use crate::domain::template::Rendered;
use crate::domain::{Notification, Timestamp};
use crate::storage::Position;

/// RFC 3339 in UTC with microseconds and a `Z`, e.g. `2026-11-22T08:15:30.123456Z`.
pub fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// How the inbox renders the rows its stream updates carry: exactly as
/// REST returns them.
pub fn row_view() -> crate::projections::inbox::RowView {
    std::sync::Arc::new(|row| {
        NotificationView::from_state(&row.state, row.last_position)
            .and_then(|v| serde_json::to_string(&v).ok())
    })
}

/// One delivery of a notification on one channel.
#[derive(Object, serde::Serialize, Debug, Clone, PartialEq)]
pub struct DeliveryView {
    pub channel: Text<ChannelRule>,
    /// RFC 3339 UTC.
    pub delivered_at: String,
}

/// A notification and where it is in its lifecycle.
#[derive(Object, serde::Serialize, Debug, Clone, PartialEq)]
#[oai(rename = "Notification")]
pub struct NotificationView {
    pub id: String,
    pub recipient: String,
    pub category: String,
    pub title: String,
    pub body: String,
    /// The sender's JSON object, as sent.
    pub data: serde_json::Value,
    pub priority: Text<PriorityRule>,
    pub channels: Vec<Text<ChannelRule>>,
    #[oai(nullable)]
    pub group_key: Option<String>,
    /// The tenant it was sent for.
    #[oai(nullable)]
    pub tenant: Option<String>,
    /// RFC 3339 UTC; set when the notification was scheduled.
    #[oai(nullable)]
    pub deliver_at: Option<String>,
    /// `pending` (awaiting a channel), `scheduled`, `delivered`, `suppressed` (every
    /// channel was; see `explain`), `cancelled` or `deleted`.
    pub lifecycle: Text<LifecycleRule>,
    pub status: Text<ReadStatusRule>,
    pub seen: bool,
    pub archived: bool,
    pub clicked: bool,
    pub created_at: String,
    #[oai(nullable)]
    pub delivered_at: Option<String>,
    pub deliveries: Vec<DeliveryView>,
    #[oai(nullable)]
    pub seen_at: Option<String>,
    #[oai(nullable)]
    pub read_at: Option<String>,
    #[oai(nullable)]
    pub clicked_at: Option<String>,
    #[oai(nullable)]
    pub archived_at: Option<String>,
    #[oai(nullable)]
    pub cancelled_at: Option<String>,
    #[oai(nullable)]
    pub deleted_at: Option<String>,
    /// The template version its title and body were rendered from, and
    /// in which locale (null: they are as sent).
    #[oai(nullable)]
    pub template: Option<TemplateRefView>,
    /// Each channel's own title and body, where its template gives one
    /// (`email`: a subject of its own); other channels use `title` and
    /// `body`.
    pub channel_content: BTreeMap<String, RenderedView>,
    /// The experiment it was sent under and the variant (`variant` null:
    /// held out, nothing sent); null: none.
    #[oai(nullable)]
    pub experiment: Option<ExperimentUsedView>,
    /// Position of the latest event reflected here; pass it as `min_position`.
    pub cursor: String,
}

/// The experiment a notification was sent under.
#[derive(Object, serde::Serialize, Debug, Clone, PartialEq)]
#[oai(rename = "ExperimentUsed")]
pub struct ExperimentUsedView {
    pub experiment: String,
    #[oai(nullable)]
    pub variant: Option<String>,
}

/// Which template version a notification was rendered from.
#[derive(Object, serde::Serialize, Debug, Clone, PartialEq)]
#[oai(rename = "TemplateUsed")]
pub struct TemplateRefView {
    pub key: String,
    pub version: u64,
    pub locale: String,
}

/// A title and a body, rendered.
#[derive(Object, serde::Serialize, Debug, Clone, PartialEq)]
#[oai(rename = "RenderedText")]
pub struct RenderedView {
    pub title: String,
    pub body: String,
}

impl From<&Rendered> for RenderedView {
    fn from(r: &Rendered) -> Self {
        Self {
            title: r.title.as_str().to_owned(),
            body: r.body.as_str().to_owned(),
        }
    }
}

impl NotificationView {
    /// None for a state with no creation event (never stored).
    pub fn from_state(state: &Notification, position: Position) -> Option<Self> {
        let content = state.content.as_ref()?;
        let id = state.id?;
        let ts = |t: Option<Timestamp>| t.map(rfc3339);
        Some(Self {
            id: id.to_string(),
            recipient: content.recipient.as_str().to_owned(),
            category: content.category.as_str().to_owned(),
            title: content.title.as_str().to_owned(),
            body: content.body.as_str().to_owned(),
            data: serde_json::Value::Object(content.data.clone()),
            priority: Text::new(content.priority.as_str()),
            channels: content
                .channels
                .iter()
                .map(|c| Text::new(c.as_str()))
                .collect(),
            group_key: content.group_key.as_ref().map(|g| g.as_str().to_owned()),
            tenant: content.tenant.as_ref().map(|t| t.to_string()),
            deliver_at: ts(content.deliver_at),
            lifecycle: Text::new(state.lifecycle.as_str()),
            status: Text::new(if state.is_read() { "read" } else { "unread" }),
            seen: state.is_seen(),
            archived: state.is_archived(),
            clicked: state.clicked_at.is_some(),
            created_at: state.created_at.map(rfc3339).unwrap_or_default(),
            delivered_at: ts(state.delivered_at),
            deliveries: state
                .deliveries
                .iter()
                .map(|(channel, at)| DeliveryView {
                    channel: Text::new(channel.as_str()),
                    delivered_at: rfc3339(*at),
                })
                .collect(),
            seen_at: ts(state.seen_at),
            read_at: ts(state.read_at),
            clicked_at: ts(state.clicked_at),
            archived_at: ts(state.archived_at),
            cancelled_at: ts(state.cancelled_at),
            deleted_at: ts(state.deleted_at),
            template: state.template.as_ref().map(|t| TemplateRefView {
                key: t.key.as_str().to_owned(),
                version: t.version,
                locale: t.locale.as_str().to_owned(),
            }),
            channel_content: state
                .channel_content
                .iter()
                .map(|(c, r)| (c.as_str().to_owned(), RenderedView::from(r)))
                .collect(),
            experiment: state.experiment.as_ref().map(|e| ExperimentUsedView {
                experiment: e.experiment.as_str().to_owned(),
                variant: e.variant.as_ref().map(|v| v.as_str().to_owned()),
            }),
            cursor: position.to_cursor(),
        })
    }
}

/// The answer to a create.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct CreatedView {
    pub id: String,
    /// Position of the create's last event; pass it as `min_position` to read your write.
    pub cursor: String,
}

/// The answer to a state-changing command.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct ReceiptView {
    pub id: String,
    /// Position of the notification's latest event after this command.
    pub cursor: String,
    /// False when the notification already was in the requested state (nothing recorded).
    pub changed: bool,
    /// The notification as the command left it.
    pub notification: NotificationView,
}

/// One page of an inbox, newest first.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "InboxPage")]
pub struct InboxPageView {
    pub items: Vec<NotificationView>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
    /// Unarchived notifications not yet read.
    pub unread_count: u64,
    /// Unarchived notifications not yet seen.
    pub unseen_count: u64,
}

/// The answer to read-all.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct ReadAllView {
    /// How many notifications were marked read.
    pub marked: u64,
    /// Pass as `min_position` to see the inbox with all of them read.
    pub cursor: String,
}
