//! The inbox read model in memory: rows by id plus, per recipient, the in-app
//! rows ordered by inbox position, with the counts kept in step. The
//! projection store (`MemoryStore`) keeps it with its checkpoint and parked
//! events under one lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;

use super::fold::{fold_events, ids_in, Held, Refusal};
use super::{
    bulk_marks, counts_update, cut_page, page_updates, remember, InboxPage, InboxQuery,
    InboxReader, InboxRow, PageUpdates, RowView, Selection, NAME,
};
use crate::domain::{NotificationId, UserId};
use crate::projections::store::memory::{MemoryModel, MemoryStore};
use crate::storage::{Position, SharedEvent, StorageError};
use crate::streams::updates::NewUpdate;

/// The inbox as the memory projection store folds it; `view` renders the
/// rows its stream updates carry.
pub struct MemoryInbox {
    pub view: RowView,
}

/// B-trees rather than hash maps: they grow a node at a time, where a hash
/// map's resize moves every row at once while writers wait on the lock.
#[derive(Default)]
pub struct InboxState {
    rows: BTreeMap<NotificationId, InboxRow>,
    by_recipient: HashMap<UserId, BTreeMap<Position, NotificationId>>,
    /// Per recipient (unread, unseen), kept in step by index/unindex: every
    /// row change passes through both, so the counts stay exact.
    counts: HashMap<UserId, (u64, u64)>,
}

/// What an inbox row adds to its recipient's (unread, unseen) counts.
fn contribution(row: &InboxRow) -> (u64, u64) {
    if row.state.is_archived() {
        (0, 0)
    } else {
        (
            u64::from(!row.state.is_read()),
            u64::from(!row.state.is_seen()),
        )
    }
}

/// A folded page: the rows it touched as they are after it, and the updates.
pub struct InboxChanges {
    rows: HashMap<NotificationId, Option<InboxRow>>,
    updates: PageUpdates,
    page_end: Position,
}

impl MemoryModel for MemoryInbox {
    const NAME: &'static str = NAME;
    type State = InboxState;
    type Page = InboxChanges;

    fn fold(
        &self,
        state: &InboxState,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> (InboxChanges, Vec<Refusal>) {
        let page_end = events.last().map_or(Position::START, |e| e.position);
        // Fold copies, so that a failing event can leave the page unapplied.
        let mut rows: HashMap<_, _> = ids_in(events)
            .into_iter()
            .map(|id| (id, state.rows.get(&id).cloned()))
            .collect();
        let before = remember(&rows);
        let refused = fold_events(&mut rows, events, held, skipped);
        let updates = page_updates(&before, &rows, page_end, &self.view, &bulk_marks(events));
        (
            InboxChanges {
                rows,
                updates,
                page_end,
            },
            refused,
        )
    }

    fn keep(&self, state: &mut InboxState, page: InboxChanges) -> Vec<NewUpdate> {
        state.store_rows(page.rows);
        let mut updates = page.updates.rows;
        for recipient in &page.updates.touched {
            let (unread, unseen) = state.counts(recipient);
            updates.push(counts_update(recipient, unread, unseen, page.page_end));
        }
        updates
    }
}

impl InboxState {
    fn store_rows(&mut self, rows: HashMap<NotificationId, Option<InboxRow>>) {
        for (id, row) in rows {
            if let Some(old) = self.rows.remove(&id) {
                self.unindex(&old);
            }
            if let Some(row) = row {
                self.index(id, &row);
                self.rows.insert(id, row);
            }
        }
    }

    fn unindex(&mut self, row: &InboxRow) {
        if let (Some(pos), Some(content)) = (row.inbox_position, &row.state.content) {
            if let Some(index) = self.by_recipient.get_mut(&content.recipient) {
                index.remove(&pos);
            }
            if row.in_inbox() {
                let (unread, unseen) = contribution(row);
                let counts = self.counts.entry(content.recipient.clone()).or_default();
                counts.0 = counts.0.saturating_sub(unread);
                counts.1 = counts.1.saturating_sub(unseen);
            }
            // An empty inbox leaves no trace, as if it had never had a row.
            if self
                .by_recipient
                .get(&content.recipient)
                .is_some_and(BTreeMap::is_empty)
            {
                self.by_recipient.remove(&content.recipient);
                self.counts.remove(&content.recipient);
            }
        }
    }

    /// (unread, unseen) among the recipient's unarchived inbox rows.
    pub(super) fn counts(&self, recipient: &UserId) -> (u64, u64) {
        self.counts.get(recipient).copied().unwrap_or_default()
    }

    fn index(&mut self, id: NotificationId, row: &InboxRow) {
        if let (true, Some(pos), Some(content)) =
            (row.in_inbox(), row.inbox_position, &row.state.content)
        {
            self.by_recipient
                .entry(content.recipient.clone())
                .or_default()
                .insert(pos, id);
            let (unread, unseen) = contribution(row);
            let counts = self.counts.entry(content.recipient.clone()).or_default();
            counts.0 += unread;
            counts.1 += unseen;
        }
    }
}

#[async_trait]
impl InboxReader for MemoryStore<MemoryInbox> {
    async fn page(&self, q: &InboxQuery) -> Result<InboxPage, StorageError> {
        Ok(self.with(|state| state.page(q)))
    }

    async fn get(&self, id: NotificationId) -> Result<Option<InboxRow>, StorageError> {
        Ok(self.with(|state| state.rows.get(&id).cloned()))
    }

    async fn unread_ids(&self, recipient: &UserId) -> Result<Vec<NotificationId>, StorageError> {
        Ok(self.with(|state| state.unread_ids(recipient)))
    }

    async fn select(&self, selection: &Selection) -> Result<Vec<InboxRow>, StorageError> {
        Ok(self.with(|state| {
            let Some(index) = state.by_recipient.get(&selection.recipient) else {
                return Vec::new();
            };
            index
                .values()
                .filter_map(|id| state.rows.get(id))
                .filter(|r| selection.matches(r))
                .take(selection.limit + 1)
                .cloned()
                .collect()
        }))
    }
}

impl InboxState {
    fn page(&self, q: &InboxQuery) -> InboxPage {
        let Some(index) = self.by_recipient.get(&q.recipient) else {
            return InboxPage {
                items: vec![],
                next: None,
                unread_count: 0,
                unseen_count: 0,
            };
        };
        let (unread, unseen) = self.counts(&q.recipient);
        let upper = q
            .before
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let items: Vec<InboxRow> = index
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .filter_map(|(_, id)| self.rows.get(id))
            .filter(|r| q.matches(r))
            .take(q.limit + 1)
            .cloned()
            .collect();
        let (items, next) = cut_page(items, q.limit);
        InboxPage {
            items,
            next,
            unread_count: unread,
            unseen_count: unseen,
        }
    }

    fn unread_ids(&self, recipient: &UserId) -> Vec<NotificationId> {
        self.by_recipient
            .get(recipient)
            .map(|index| {
                index
                    .values()
                    .filter(|id| self.rows.get(id).is_some_and(|r| !r.state.is_read()))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{Duration, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::commands::{CommandMetadata, CommandService, NotificationStore};
    use crate::domain::{
        Body, Category, Channel, Data, NewNotification, NotificationCommand, Priority, Title,
    };
    use crate::projections::Projection;
    use crate::storage::memory::MemoryEventStore;
    use crate::storage::{AppendSignal, EventLog};
    use crate::streams::updates::MemoryUpdateLog;

    fn content(recipient: &str, email_too: bool, scheduled: bool) -> NewNotification {
        NewNotification {
            recipient: UserId::parse(recipient).unwrap(),
            category: Category::parse("comment").unwrap(),
            title: Title::parse("t").unwrap(),
            body: Body::parse("b").unwrap(),
            data: Data::new(),
            priority: Priority::Normal,
            channels: if email_too {
                vec![Channel::InApp, Channel::Email]
            } else {
                vec![Channel::InApp]
            },
            group_key: None,
            deliver_at: scheduled.then(|| Utc::now() + Duration::days(1)),
            tenant: None,
            template: None,
            experiment: None,
        }
    }

    fn command(action: u8) -> impl Fn(chrono::DateTime<Utc>) -> NotificationCommand {
        move |at| match action {
            0 => NotificationCommand::MarkRead { at },
            1 => NotificationCommand::MarkUnread { at },
            2 => NotificationCommand::MarkSeen { at },
            3 => NotificationCommand::Click { at },
            4 => NotificationCommand::Archive { at },
            5 => NotificationCommand::Unarchive { at },
            6 => NotificationCommand::Delete { at },
            7 => NotificationCommand::Cancel { at },
            _ => NotificationCommand::Deliver {
                channel: Channel::Email,
                at,
            },
        }
    }

    /// Applies everything after the projection's checkpoint in pages of `page`.
    async fn catch_up(inbox: &MemoryStore<MemoryInbox>, log: &MemoryEventStore, page: usize) {
        loop {
            let cp = inbox.checkpoint().await.unwrap();
            let events = log.read_after(cp, page).await.unwrap();
            if events.is_empty() {
                return;
            }
            inbox.apply(cp, &events).await.unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Invariant 4: folding the log from zero in one go gives the read
        /// model that live processing, page by page, built.
        #[test]
        fn rebuilding_from_zero_gives_the_live_read_model(
            script in proptest::collection::vec((any::<bool>(), 0usize..8, 0u8..9, 0u8..4), 1..60),
            page in 1usize..40,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let signal = AppendSignal::default();
                let events = MemoryEventStore::new(signal.clone());
                let service = CommandService::new(
                    NotificationStore::memory(events.clone()),
                    Arc::new(crate::commands::audience::Everyone),
                    signal,
                    3,
                );
                let meta = CommandMetadata::default();
                let live = MemoryStore::new(
                    MemoryInbox { view: Arc::new(|_| None) },
                    Arc::new(MemoryUpdateLog::new(10_000)),
                );
                let mut ids = Vec::new();
                for (create, target, action, shape) in script {
                    if create || ids.is_empty() {
                        let id = NotificationId(uuid::Uuid::now_v7());
                        let recipient = ["ann", "bob"][usize::from(shape % 2)];
                        let new = content(recipient, shape & 1 == 1, shape == 3);
                        if service.create(id, new, &meta).await.is_ok() {
                            ids.push(id);
                        }
                    } else {
                        let id = ids[target % ids.len()];
                        // Refusals are part of the story: they record nothing.
                        let _ = service.execute(id, command(action), &meta).await;
                    }
                    catch_up(&live, &events, page).await;
                }
                let rebuilt = MemoryStore::new(
                    MemoryInbox { view: Arc::new(|_| None) },
                    Arc::new(MemoryUpdateLog::new(10_000)),
                );
                catch_up(&rebuilt, &events, 100_000).await;
                let parts = |s: &InboxState| (s.rows.clone(), s.by_recipient.clone(), s.counts.clone());
                let (a, b) = (live.with(parts), rebuilt.with(parts));
                prop_assert_eq!(&a.0, &b.0);
                prop_assert_eq!(&a.1, &b.1);
                prop_assert_eq!(&a.2, &b.2);
                prop_assert_eq!(live.checkpoint().await.unwrap(), rebuilt.checkpoint().await.unwrap());
                Ok(())
            })?;
        }
    }
}
