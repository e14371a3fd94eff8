//! The stream updates a page of inbox changes causes: what WebSocket
//! subscribers of `notification:{id}` and `inbox:{user}` receive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::InboxRow;
use crate::commands::metadata::{BULK, BULK_MORE};
use crate::domain::bulk::{BulkEvent, BULK_TYPE};
use crate::domain::{NotificationId, UserId};
use crate::storage::{Position, SharedEvent};
use crate::streams::updates::{NewUpdate, Topic};

/// The stream updates one page causes: per changed notification one update on
/// `notification:{id}` and, when it is or was in an inbox, one on
/// `inbox:{user}`; the caller adds the counts of each recipient in `touched`.
pub struct PageUpdates {
    pub rows: Vec<NewUpdate>,
    /// Recipients whose inbox changed: their counts follow the rows.
    pub touched: Vec<UserId>,
}

/// How a row reads on the streams: exactly as REST returns it, as JSON
/// text. The API supplies it (`api::views::row_view`): the read model does
/// not know the API's views.
pub type RowView = Arc<dyn Fn(&InboxRow) -> Option<String> + Send + Sync>;

fn view_json(view: &RowView, row: &InboxRow) -> Arc<str> {
    Arc::from(view(row).unwrap_or_else(|| "null".to_owned()))
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

/// What a page holds of bulk operations (`domain::bulk`).
#[derive(Debug, Default)]
pub struct BulkMarks {
    /// Notifications whose every event in the page is part of one: their
    /// counts wait for its end.
    pub deferred: HashSet<NotificationId>,
    /// Users whose bulk operation ended in the page: their counts are
    /// announced with it.
    pub ended: Vec<UserId>,
}

pub fn bulk_marks(events: &[SharedEvent]) -> BulkMarks {
    let mut marks = BulkMarks::default();
    let mut announced = HashSet::new();
    for event in events {
        if event.aggregate_type == BULK_TYPE {
            if let Ok(BulkEvent::InboxBulkApplied { user, .. }) = event.decode::<BulkEvent>() {
                marks.ended.push(user);
            }
            continue;
        }
        let Ok(uuid) = uuid::Uuid::parse_str(&event.aggregate_id) else {
            continue;
        };
        let id = NotificationId(uuid);
        if event.metadata.get(BULK).and_then(|v| v.as_str()) == Some(BULK_MORE) {
            if !announced.contains(&id) {
                marks.deferred.insert(id);
            }
        } else {
            marks.deferred.remove(&id);
            announced.insert(id);
        }
    }
    marks
}

/// Compares each row before and after the page. The counts of a recipient
/// whose only changes are deferred are not announced with this page; those
/// of one whose bulk operation ended in it are.
pub fn page_updates(
    before: &HashMap<NotificationId, Option<Before>>,
    after: &HashMap<NotificationId, Option<InboxRow>>,
    page_end: Position,
    view: &RowView,
    bulk: &BulkMarks,
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
            (None, Some(n)) => ("created", view_json(view, n)),
            (Some(o), Some(n)) if o.last_position == n.last_position => continue,
            (Some(_), Some(n)) => ("changed", view_json(view, n)),
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
        if !bulk.deferred.contains(id) && seen_recipients.insert(recipient.clone()) {
            touched.push(recipient);
        }
    }
    for user in &bulk.ended {
        if seen_recipients.insert(user.clone()) {
            touched.push(user.clone());
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
