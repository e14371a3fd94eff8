//! The inbox read model in memory: rows by id plus, per recipient, the in-app
//! rows ordered by inbox position. Rows, checkpoint and parked events change
//! under one lock, so a reader never sees a page half applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;

use super::fold::{first_failure, fold_events, ids_in, Held, Refusal};
use super::{
    counts_update, cut_page, page_updates, remember, InboxPage, InboxQuery, InboxReader, InboxRow,
    PageUpdates, ReadFilter, NAME,
};
use crate::domain::{NotificationId, UserId};
use crate::projections::parked::ParkedEvent;
use crate::projections::{Projection, ProjectionError};
use crate::storage::{Position, SharedEvent, StorageError};
use crate::streams::feed::Feed;
use crate::streams::updates::{MemoryUpdateLog, NewUpdate};

/// B-trees rather than hash maps: they grow a node at a time, where a hash
/// map's resize moves every row at once while writers wait on the lock.
#[derive(Default)]
pub(super) struct State {
    pub(super) rows: BTreeMap<NotificationId, InboxRow>,
    pub(super) by_recipient: HashMap<UserId, BTreeMap<Position, NotificationId>>,
    pub(super) checkpoint: Position,
    /// Per recipient (unread, unseen), kept in step by index/unindex: every
    /// row change passes through both, so the counts stay exact.
    pub(super) counts: HashMap<UserId, (u64, u64)>,
    /// Parked events, with the event itself (re-driven from here: a memory
    /// log never changes shape while the process lives).
    pub(super) parked: BTreeMap<Position, (ParkedEvent, SharedEvent)>,
    /// Aggregate id -> the parked event that holds its stream back.
    pub(super) held: Held,
    /// Events given up on for good; a rebuild passes them over too.
    pub(super) skipped: BTreeSet<Position>,
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
    /// Events of held streams are parked behind their cause. `strict`: an
    /// event that fails fails the page and nothing changes (the live
    /// projector retries it); otherwise it is parked at once (a rebuild).
    pub(super) fn apply_page(
        &mut self,
        events: &[SharedEvent],
        strict: bool,
    ) -> Result<PageUpdates, ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(PageUpdates {
                rows: vec![],
                touched: vec![],
            });
        };
        // Fold copies so that a failing event leaves the page unapplied.
        let mut rows: HashMap<_, _> = ids_in(events)
            .into_iter()
            .map(|id| (id, self.rows.get(&id).cloned()))
            .collect();
        let before = remember(&rows);
        let mut held: Held = events
            .iter()
            .filter_map(|e| {
                self.held
                    .get(&e.aggregate_id)
                    .map(|cause| (e.aggregate_id.clone(), *cause))
            })
            .collect();
        let refused = fold_events(&mut rows, events, &mut held, &self.skipped);
        if strict {
            if let Some(failure) = first_failure(&refused) {
                return Err(failure);
            }
        }
        let updates = page_updates(&before, &rows, last.position);
        self.store_rows(rows);
        self.park_refused(&refused, events, 1);
        self.checkpoint = last.position;
        Ok(updates)
    }

    pub(super) fn store_rows(&mut self, rows: HashMap<NotificationId, Option<InboxRow>>) {
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

    /// Parks refused events (found in `events`, in log order): a failure
    /// with `attempts` tries, a held event with none.
    pub(super) fn park_refused(
        &mut self,
        refused: &[Refusal],
        events: &[SharedEvent],
        attempts: u32,
    ) {
        for refusal in refused {
            self.park(refusal.parked(attempts), events);
        }
    }

    /// Parks one event, kept with its logged event (found in `events`).
    pub(super) fn park(&mut self, parked: ParkedEvent, events: &[SharedEvent]) {
        let Ok(i) = events.binary_search_by_key(&parked.position, |e| e.position) else {
            return; // refusals come from `events`: always found
        };
        let cause = parked.held_behind.unwrap_or(parked.position);
        self.held.insert(parked.aggregate_id.clone(), cause);
        self.parked
            .insert(parked.position, (parked, events[i].clone()));
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

pub struct MemoryInbox {
    pub(super) state: RwLock<State>,
    /// The live version: 1, then one more per rebuild.
    pub(super) version: std::sync::atomic::AtomicU32,
    /// Stream updates, numbered as pages are applied.
    updates: Arc<MemoryUpdateLog>,
    /// Where numbered updates go live (set once the feed runs).
    feed: OnceLock<Feed>,
    /// Held by a rebuild; re-drives and skips do not run beside one.
    pub(super) maintenance: tokio::sync::Mutex<()>,
}

impl MemoryInbox {
    pub fn new(updates: Arc<MemoryUpdateLog>) -> Self {
        Self {
            state: RwLock::default(),
            version: std::sync::atomic::AtomicU32::new(1),
            updates,
            feed: OnceLock::new(),
            maintenance: tokio::sync::Mutex::new(()),
        }
    }

    /// Connects the live feed; updates numbered before are read from the log.
    pub fn set_feed(&self, feed: Feed) {
        let _ = self.feed.set(feed);
    }

    // Writers replace whole rows, so a poisoned lock still guards a consistent state.
    pub(super) fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the updates of a change (plus the counts of every touched
    /// inbox) under the state's lock, so numbers follow the changes; the
    /// caller offers them to the feed once the lock is released.
    pub(super) fn number(
        &self,
        state: &State,
        updates: PageUpdates,
        position: Position,
    ) -> Vec<Arc<crate::streams::updates::StreamUpdate>> {
        let mut new_updates: Vec<NewUpdate> = updates.rows;
        for recipient in &updates.touched {
            let (unread, unseen) = state.counts(recipient);
            new_updates.push(counts_update(recipient, unread, unseen, position));
        }
        self.updates.append(new_updates)
    }

    pub(super) fn offer(&self, numbered: Vec<Arc<crate::streams::updates::StreamUpdate>>) {
        if let Some(feed) = self.feed.get() {
            feed.offer(numbered);
        }
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
        let updates = state.apply_page(events, true)?;
        let numbered = self.number(&state, updates, last.position);
        drop(state);
        self.offer(numbered);
        Ok(last.position)
    }

    async fn park(
        &self,
        expected: Position,
        event: &SharedEvent,
        error: &str,
        attempts: u32,
    ) -> Result<Position, ProjectionError> {
        let mut state = self.write();
        if state.checkpoint != expected {
            return Err(ProjectionError::CheckpointMoved { expected });
        }
        let refusal = Refusal::failed(event, error);
        state.park_refused(&[refusal], std::slice::from_ref(event), attempts);
        state.checkpoint = event.position;
        Ok(event.position)
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
