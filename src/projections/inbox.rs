//! The inbox projection: every live notification's state, and per recipient
//! the in-app ones newest first with unread and unseen counts.
//!
//! Both backends fold events with the aggregate's own `apply`, so the read
//! model cannot drift from the write side's rules.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::Deserialize;

use super::ProjectionError;
use crate::api::views::NotificationView;
use crate::domain::{Category, Channel, Notification, NotificationEvent, NotificationId, UserId};
use crate::storage::{LoggedEvent, Position, SharedEvent, StorageError};
use crate::streams::updates::{NewUpdate, Topic};

pub const NAME: &str = "inbox";

/// One notification as the read model holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxRow {
    pub state: Notification,
    /// Position of its in-app delivery: the inbox sort key (None: not in the inbox).
    pub inbox_position: Option<Position>,
    /// Position of the last event folded in; older events are not applied twice.
    pub last_position: Position,
}

impl InboxRow {
    pub fn in_inbox(&self) -> bool {
        self.inbox_position.is_some() && self.state.in_inbox()
    }
}

fn bad(event: &LoggedEvent, reason: impl Into<String>) -> ProjectionError {
    ProjectionError::BadEvent {
        position: event.position,
        event_type: event.event_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        reason: reason.into(),
    }
}

fn is_notification(event: &LoggedEvent) -> bool {
    event.aggregate_type == Notification::TYPE
}

/// The notification ids a page touches, each once.
pub fn ids_in(events: &[SharedEvent]) -> Result<Vec<NotificationId>, ProjectionError> {
    let mut ids = Vec::new();
    for event in events.iter().filter(|e| is_notification(e)) {
        let id = NotificationId::parse(&event.aggregate_id).map_err(|e| bad(event, e.0))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Folds a page into `rows`, which holds the current row (or None) of every id
/// in the page. Afterwards each entry is the row to store, or None to remove.
pub fn fold_page(
    rows: &mut HashMap<NotificationId, Option<InboxRow>>,
    events: &[SharedEvent],
) -> Result<(), ProjectionError> {
    for event in events.iter().filter(|e| is_notification(e)) {
        let id = NotificationId::parse(&event.aggregate_id).map_err(|e| bad(event, e.0))?;
        let payload = NotificationEvent::deserialize(&event.payload)
            .map_err(|e| bad(event, format!("payload does not parse: {e}")))?;
        let slot = rows.entry(id).or_insert(None);
        if slot
            .as_ref()
            .is_some_and(|r| r.last_position >= event.position)
        {
            continue; // already applied
        }
        let mut row = slot.take().unwrap_or(InboxRow {
            state: Notification::default(),
            inbox_position: None,
            last_position: Position::START,
        });
        let delivered_in_app = matches!(
            payload,
            NotificationEvent::NotificationDelivered {
                channel: Channel::InApp,
                ..
            }
        );
        row.state.apply(payload);
        row.last_position = event.position;
        if delivered_in_app {
            row.inbox_position = Some(event.position);
        }
        *slot = match row.state.lifecycle {
            crate::domain::Lifecycle::Deleted => None,
            _ => Some(row),
        };
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFilter {
    Unread,
    Read,
}

#[derive(Debug, Clone)]
pub struct InboxQuery {
    pub recipient: UserId,
    pub status: Option<ReadFilter>,
    pub category: Option<Category>,
    /// false: the inbox proper; true: only archived notifications.
    pub archived: bool,
    /// Continue after this inbox position (from a previous page's `next`).
    pub before: Option<Position>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct InboxPage {
    pub items: Vec<InboxRow>,
    /// Where the next page starts; None on the last page.
    pub next: Option<Position>,
    /// Unarchived in-app notifications not yet read / not yet seen.
    pub unread_count: u64,
    pub unseen_count: u64,
}

/// Queries over the inbox read model.
#[async_trait]
pub trait InboxReader: Send + Sync {
    async fn page(&self, query: &InboxQuery) -> Result<InboxPage, StorageError>;
    async fn get(&self, id: NotificationId) -> Result<Option<InboxRow>, StorageError>;
    /// Every unread notification in the recipient's inbox, archived ones too.
    async fn unread_ids(&self, recipient: &UserId) -> Result<Vec<NotificationId>, StorageError>;
}

/// Cuts a fetched run of `limit + 1` rows into a page and its continuation.
pub fn cut_page(mut items: Vec<InboxRow>, limit: usize) -> (Vec<InboxRow>, Option<Position>) {
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().and_then(|r| r.inbox_position);
        (items, next)
    } else {
        (items, None)
    }
}

/// The stream updates one page causes: per changed notification one update on
/// `notification:{id}` and, when it is or was in an inbox, one on
/// `inbox:{user}`; the caller adds the counts of each recipient in `touched`.
pub struct PageUpdates {
    pub rows: Vec<NewUpdate>,
    /// Recipients whose inbox changed: their counts follow the rows.
    pub touched: Vec<UserId>,
}

/// The row as REST returns it, as JSON text.
fn view_json(row: &InboxRow) -> Arc<str> {
    let text = NotificationView::from_state(&row.state, row.last_position)
        .and_then(|v| serde_json::to_string(&v).ok())
        .unwrap_or_else(|| "null".to_owned());
    Arc::from(text)
}

/// What page_updates needs to know of a row before the page: much less than
/// the row, so nothing has to be cloned to remember it.
#[derive(Debug, Clone, PartialEq)]
pub struct Before {
    pub last_position: Position,
    pub in_inbox: bool,
    /// Only for rows in an inbox: where a removal is announced.
    pub recipient: Option<UserId>,
}

/// Remembers each row's `Before` (None: it did not exist).
pub fn remember(
    rows: &HashMap<NotificationId, Option<InboxRow>>,
) -> HashMap<NotificationId, Option<Before>> {
    rows.iter()
        .map(|(id, row)| {
            let before = row.as_ref().map(|r| Before {
                last_position: r.last_position,
                in_inbox: r.in_inbox(),
                recipient: r
                    .in_inbox()
                    .then(|| r.state.content.as_ref().map(|c| c.recipient.clone()))
                    .flatten(),
            });
            (*id, before)
        })
        .collect()
}

/// Compares each row before and after the page.
pub fn page_updates(
    before: &HashMap<NotificationId, Option<Before>>,
    after: &HashMap<NotificationId, Option<InboxRow>>,
    page_end: Position,
) -> PageUpdates {
    let mut rows = Vec::new();
    let mut touched: Vec<UserId> = Vec::new();
    let mut seen_recipients = std::collections::HashSet::new();
    let mut ids: Vec<&NotificationId> = after.keys().collect();
    // Deterministic order: by the position of each row's last change.
    ids.sort_by_key(|id| {
        after
            .get(*id)
            .and_then(|r| r.as_ref().map(|r| r.last_position))
            .unwrap_or(page_end)
    });
    for id in ids {
        let old = before.get(id).and_then(Option::as_ref);
        let new = after.get(id).and_then(Option::as_ref);
        let position = new.map_or(page_end, |r| r.last_position);
        let removed: Arc<str> = Arc::from(format!(r#"{{"id":"{id}"}}"#));
        let (kind, data) = match (old, new) {
            (None, Some(n)) => ("created", view_json(n)),
            (Some(o), Some(n)) if o.last_position == n.last_position => continue,
            (Some(_), Some(n)) => ("changed", view_json(n)),
            (Some(_), None) => ("removed", removed.clone()),
            (None, None) => continue,
        };
        rows.push(NewUpdate {
            topic: Topic::Notification(*id).to_string(),
            kind,
            data: data.clone(),
            position,
        });
        let was = old.is_some_and(|o| o.in_inbox);
        let is = new.is_some_and(InboxRow::in_inbox);
        let inbox_kind = match (was, is) {
            (false, true) => "created",
            (true, true) => "changed",
            (true, false) => "removed",
            (false, false) => continue,
        };
        let Some(recipient) = new
            .and_then(|r| r.state.content.as_ref())
            .map(|c| c.recipient.clone())
            .or_else(|| old.and_then(|o| o.recipient.clone()))
        else {
            continue;
        };
        rows.push(NewUpdate {
            topic: Topic::Inbox(recipient.clone()).to_string(),
            kind: inbox_kind,
            data: if inbox_kind == "removed" {
                removed
            } else {
                data
            },
            position,
        });
        if seen_recipients.insert(recipient.clone()) {
            touched.push(recipient);
        }
    }
    PageUpdates { rows, touched }
}

/// The `counts` update of one recipient's inbox.
pub fn counts_update(
    recipient: &UserId,
    unread: u64,
    unseen: u64,
    position: Position,
) -> NewUpdate {
    NewUpdate {
        topic: Topic::Inbox(recipient.clone()).to_string(),
        kind: "counts",
        data: Arc::from(format!(
            r#"{{"unread_count":{unread},"unseen_count":{unseen}}}"#
        )),
        position,
    }
}

/// The inbox as it was: folded from the recipient's history (events up to
/// the chosen point), filtered and paged like the live inbox.
pub fn page_from_history(
    history: &[SharedEvent],
    q: &InboxQuery,
) -> Result<InboxPage, ProjectionError> {
    let mut rows: HashMap<NotificationId, Option<InboxRow>> = HashMap::new();
    fold_page(&mut rows, history)?;
    let mut inbox: Vec<InboxRow> = rows
        .into_values()
        .flatten()
        .filter(InboxRow::in_inbox)
        .collect();
    let (mut unread, mut unseen) = (0, 0);
    for row in inbox.iter().filter(|r| !r.state.is_archived()) {
        unread += u64::from(!row.state.is_read());
        unseen += u64::from(!row.state.is_seen());
    }
    inbox.retain(|r| {
        r.state.is_archived() == q.archived
            && match q.status {
                Some(ReadFilter::Read) => r.state.is_read(),
                Some(ReadFilter::Unread) => !r.state.is_read(),
                None => true,
            }
            && q.category
                .as_ref()
                .is_none_or(|c| r.state.content.as_ref().is_some_and(|n| &n.category == c))
            && q.before
                .is_none_or(|b| r.inbox_position.is_some_and(|p| p < b))
    });
    inbox.sort_by_key(|r| std::cmp::Reverse(r.inbox_position));
    inbox.truncate(q.limit + 1);
    let (items, next) = cut_page(inbox, q.limit);
    Ok(InboxPage {
        items,
        next,
        unread_count: unread,
        unseen_count: unseen,
    })
}
