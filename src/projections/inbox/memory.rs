//! The inbox read model in memory: rows by id plus, per recipient, the in-app
//! rows ordered by inbox position. Rows and checkpoint change under one lock,
//! so a reader never sees a page half applied.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;

use super::{
    counts_update, cut_page, fold_page, ids_in, page_updates, remember, InboxPage, InboxQuery,
    InboxReader, InboxRow, PageUpdates, ReadFilter, NAME,
};
use crate::domain::{NotificationId, UserId};
use crate::projections::rebuild::{RebuildState, Rebuildable, Rebuilds, BUILD_PAGE};
use crate::projections::{Projection, ProjectionError};
use crate::storage::{EventLog, Position, SharedEvent, StorageError};
use crate::streams::feed::Feed;
use crate::streams::updates::MemoryUpdateLog;

/// B-trees rather than hash maps: they grow a node at a time, where a hash
/// map's resize moves every row at once while writers wait on the lock.
#[derive(Default)]
struct State {
    rows: BTreeMap<NotificationId, InboxRow>,
    by_recipient: HashMap<UserId, BTreeMap<Position, NotificationId>>,
    checkpoint: Position,
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

impl State {
    /// Folds a page in and moves the checkpoint; what changed, for streams.
    /// Nothing changes when an event fails.
    fn apply_page(&mut self, events: &[SharedEvent]) -> Result<PageUpdates, ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(PageUpdates {
                rows: vec![],
                touched: vec![],
            });
        };
        let ids = ids_in(events)?;
        // Fold copies so that a failing event leaves the page unapplied.
        let mut rows: HashMap<_, _> = ids
            .iter()
            .map(|id| (*id, self.rows.get(id).cloned()))
            .collect();
        let before = remember(&rows);
        fold_page(&mut rows, events)?;
        let updates = page_updates(&before, &rows, last.position);
        for (id, row) in rows {
            if let Some(old) = self.rows.remove(&id) {
                self.unindex(&old);
            }
            if let Some(row) = row {
                self.index(id, &row);
                self.rows.insert(id, row);
            }
        }
        self.checkpoint = last.position;
        Ok(updates)
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
    fn counts(&self, recipient: &UserId) -> (u64, u64) {
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

pub struct MemoryInbox {
    state: RwLock<State>,
    /// The live version: 1, then one more per rebuild.
    version: std::sync::atomic::AtomicU32,
    /// Stream updates, numbered as pages are applied.
    updates: Arc<MemoryUpdateLog>,
    /// Where numbered updates go live (set once the feed runs).
    feed: OnceLock<Feed>,
}

impl MemoryInbox {
    pub fn new(updates: Arc<MemoryUpdateLog>) -> Self {
        Self {
            state: RwLock::default(),
            version: std::sync::atomic::AtomicU32::new(1),
            updates,
            feed: OnceLock::new(),
        }
    }

    /// Connects the live feed; updates numbered before are read from the log.
    pub fn set_feed(&self, feed: Feed) {
        let _ = self.feed.set(feed);
    }

    // Writers replace whole rows, so a poisoned lock still guards a consistent state.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Projection for MemoryInbox {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        Ok(self.read().checkpoint)
    }

    async fn apply(
        &self,
        expected: Position,
        events: &[SharedEvent],
    ) -> Result<Position, ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(expected);
        };
        let mut state = self.write();
        if state.checkpoint != expected {
            return Err(ProjectionError::CheckpointMoved { expected });
        }
        let updates = state.apply_page(events)?;
        let mut new_updates = updates.rows;
        for recipient in &updates.touched {
            let (unread, unseen) = state.counts(recipient);
            new_updates.push(counts_update(recipient, unread, unseen, last.position));
        }
        // Numbered under the inbox lock, so numbers follow the pages.
        let numbered = self.updates.append(new_updates);
        drop(state);
        if let Some(feed) = self.feed.get() {
            feed.offer(numbered);
        }
        Ok(last.position)
    }
}

#[async_trait]
impl Rebuildable for MemoryInbox {
    async fn version(&self) -> Result<u32, ProjectionError> {
        Ok(self.version.load(std::sync::atomic::Ordering::Acquire))
    }

    async fn rebuild(
        &self,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError> {
        let version = self.version.load(std::sync::atomic::Ordering::Acquire) + 1;
        let (total, _) = log.behind(Position::START).await?;
        progress.plan(version, total);
        // Beside the live state: nothing here is visible until the switch.
        let mut fresh = State::default();
        loop {
            let page = log.read_after(fresh.checkpoint, BUILD_PAGE).await?;
            if page.is_empty() {
                break;
            }
            fresh.apply_page(&page)?;
            progress.advance(page.len() as u64);
        }
        progress.set_state(RebuildState::Switching);
        // Catch up to exactly where the live state is, then swap under its
        // lock; if it moved meanwhile, catch up again. No event past the live
        // checkpoint is applied here: those are the live projector's, with
        // their stream updates.
        for _ in 0..10_000 {
            let live = self.read().checkpoint;
            while fresh.checkpoint < live {
                let page = log.read_after(fresh.checkpoint, BUILD_PAGE).await?;
                let page: Vec<_> = page.into_iter().filter(|e| e.position <= live).collect();
                if page.is_empty() {
                    break;
                }
                fresh.apply_page(&page)?;
                progress.advance(page.len() as u64);
            }
            {
                let mut state = self.write();
                if state.checkpoint == fresh.checkpoint {
                    *state = std::mem::take(&mut fresh);
                    self.version
                        .store(version, std::sync::atomic::Ordering::Release);
                    return Ok(version);
                }
            }
            // The live state is behind the new one (or just moved): let it go on.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Err(StorageError::Backend(
            "the live inbox kept moving; the rebuild could not switch".into(),
        )
        .into())
    }
}

#[async_trait]
impl InboxReader for MemoryInbox {
    async fn page(&self, q: &InboxQuery) -> Result<InboxPage, StorageError> {
        let state = self.read();
        let Some(index) = state.by_recipient.get(&q.recipient) else {
            return Ok(InboxPage {
                items: vec![],
                next: None,
                unread_count: 0,
                unseen_count: 0,
            });
        };
        let (unread, unseen) = state.counts(&q.recipient);
        let upper = q
            .before
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let items: Vec<InboxRow> = index
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .filter_map(|(_, id)| state.rows.get(id))
            .filter(|r| r.state.is_archived() == q.archived)
            .filter(|r| match q.status {
                Some(ReadFilter::Read) => r.state.is_read(),
                Some(ReadFilter::Unread) => !r.state.is_read(),
                None => true,
            })
            .filter(|r| {
                q.category
                    .as_ref()
                    .is_none_or(|c| r.state.content.as_ref().is_some_and(|n| &n.category == c))
            })
            .take(q.limit + 1)
            .cloned()
            .collect();
        let (items, next) = cut_page(items, q.limit);
        Ok(InboxPage {
            items,
            next,
            unread_count: unread,
            unseen_count: unseen,
        })
    }

    async fn get(&self, id: NotificationId) -> Result<Option<InboxRow>, StorageError> {
        Ok(self.read().rows.get(&id).cloned())
    }

    async fn unread_ids(&self, recipient: &UserId) -> Result<Vec<NotificationId>, StorageError> {
        let state = self.read();
        Ok(state
            .by_recipient
            .get(recipient)
            .map(|index| {
                index
                    .values()
                    .filter(|id| state.rows.get(id).is_some_and(|r| !r.state.is_read()))
                    .copied()
                    .collect()
            })
            .unwrap_or_default())
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
    use crate::storage::memory::MemoryEventStore;
    use crate::storage::{AppendSignal, EventLog};

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
    async fn catch_up(inbox: &MemoryInbox, log: &MemoryEventStore, page: usize) {
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
                    Arc::new(events.clone()),
                    signal,
                    3,
                );
                let meta = CommandMetadata::default();
                let live = MemoryInbox::new(Arc::new(MemoryUpdateLog::new(10_000)));
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
                let rebuilt = MemoryInbox::new(Arc::new(MemoryUpdateLog::new(10_000)));
                catch_up(&rebuilt, &events, 100_000).await;
                let (a, b) = (live.read(), rebuilt.read());
                prop_assert_eq!(&a.rows, &b.rows);
                prop_assert_eq!(&a.by_recipient, &b.by_recipient);
                prop_assert_eq!(&a.counts, &b.counts);
                prop_assert_eq!(a.checkpoint, b.checkpoint);
                Ok(())
            })?;
        }
    }
}
