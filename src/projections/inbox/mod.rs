//! The inbox projection: every live notification's state, and per recipient
//! the in-app ones newest first with unread and unseen counts.
//!
//! Both backends fold events with the aggregate's own `apply`, so the read
//! model cannot drift from the write side's rules.

pub mod fold;
pub mod memory;
pub mod postgres;
mod postgres_build;
pub mod postgres_reader;
pub mod postgres_rebuild;
pub mod updates;

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;

pub use fold::{fold_events, ids_in};
pub use updates::{
    bulk_marks, counts_update, page_updates, remember, BulkMarks, PageUpdates, RowView,
};

use crate::domain::contact::TenantId;
use crate::domain::{Category, Notification, NotificationId, UserId};
use crate::storage::{Position, SharedEvent, StorageError};

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
    /// Only the notifications sent for this tenant.
    pub tenant: Option<TenantId>,
    /// false: the inbox proper; true: only archived notifications.
    pub archived: bool,
    /// Continue after this inbox position (from a previous page's `next`).
    pub before: Option<Position>,
    pub limit: usize,
}

impl InboxQuery {
    /// Whether `row` passes the filters on its state (archived, status,
    /// category, tenant); the recipient and the page bounds are the
    /// reader's.
    pub fn matches(&self, row: &InboxRow) -> bool {
        row.state.is_archived() == self.archived
            && passes(
                row,
                self.status,
                self.category.as_ref(),
                self.tenant.as_ref(),
            )
    }
}

/// Whether `row` passes the filters an inbox page and a bulk operation
/// share: read status, category, tenant (each when given).
fn passes(
    row: &InboxRow,
    status: Option<ReadFilter>,
    category: Option<&Category>,
    tenant: Option<&TenantId>,
) -> bool {
    let content = row.state.content.as_ref();
    let status_passes = match status {
        Some(ReadFilter::Read) => row.state.is_read(),
        Some(ReadFilter::Unread) => !row.state.is_read(),
        None => true,
    };
    status_passes
        && category.is_none_or(|c| content.is_some_and(|n| &n.category == c))
        && tenant.is_none_or(|t| content.is_some_and(|n| n.tenant.as_ref() == Some(t)))
}

/// Which of a recipient's inbox notifications (archived ones too) a bulk
/// operation acts on.
#[derive(Debug, Clone)]
pub struct Selection {
    pub recipient: UserId,
    pub status: Option<ReadFilter>,
    pub category: Option<Category>,
    pub tenant: Option<TenantId>,
    /// Created before this time.
    pub created_before: Option<crate::domain::Timestamp>,
    /// At most this many (the reader answers one more when there are more).
    pub limit: usize,
}

impl Selection {
    pub fn matches(&self, row: &InboxRow) -> bool {
        let content = row.state.content.as_ref();
        row.in_inbox()
            && content.is_some_and(|c| c.recipient == self.recipient)
            && passes(
                row,
                self.status,
                self.category.as_ref(),
                self.tenant.as_ref(),
            )
            && self
                .created_before
                .is_none_or(|b| row.state.created_at.is_some_and(|c| c < b))
    }
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
    /// The inbox rows `selection` names, oldest first, at most its limit + 1.
    async fn select(&self, selection: &Selection) -> Result<Vec<InboxRow>, StorageError>;
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

/// The inbox as it was: folded from the recipient's history (events up to
/// the chosen point), filtered and paged like the live inbox. Events the
/// inbox refuses hold their notification back, and skipped events are passed
/// over, as in the live read model.
pub fn page_from_history(
    history: &[SharedEvent],
    skipped: &BTreeSet<Position>,
    q: &InboxQuery,
) -> InboxPage {
    let mut rows: HashMap<NotificationId, Option<InboxRow>> = HashMap::new();
    fold_events(&mut rows, history, &mut fold::Held::new(), skipped);
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
        q.matches(r)
            && q.before
                .is_none_or(|b| r.inbox_position.is_some_and(|p| p < b))
    });
    inbox.sort_by_key(|r| std::cmp::Reverse(r.inbox_position));
    inbox.truncate(q.limit + 1);
    let (items, next) = cut_page(inbox, q.limit);
    InboxPage {
        items,
        next,
        unread_count: unread,
        unseen_count: unseen,
    }
}
