//! The projection store in memory: a read model's state, its checkpoint
//! and its parked events change under one lock, so a reader never sees a
//! page half applied. Re-drives, skips and rebuilds are the store's; the
//! model only folds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;

use super::{fold_page, held_among, read_page, Fold, Keyed, RowReader, Rows};
use crate::projections::inbox::fold::{first_failure, Held, Refusal};
use crate::projections::parked::{ParkedEvent, Parking, ParkingError, RedriveReport};
use crate::projections::rebuild::{RebuildState, Rebuildable, Rebuilds, BUILD_PAGE};
use crate::projections::{Projection, ProjectionError};
use crate::storage::{EventLog, Position, SharedEvent, StorageError};
use crate::streams::feed::Feed;
use crate::streams::updates::{MemoryUpdateLog, NewUpdate, StreamUpdate};

/// A read model in memory, as the store drives it: a fold in two steps, so
/// that a page with a failing event can be left unapplied.
pub trait MemoryModel: Send + Sync + 'static {
    const NAME: &'static str;
    type State: Default + Send + Sync;
    /// What folding a page would change, not kept yet.
    type Page;

    /// Folds `events` (in log order) against `state` without changing it.
    /// Events of streams in `held` are refused as held, events at `skipped`
    /// positions passed over, an event that cannot apply is refused and
    /// holds its stream back from then on.
    fn fold(
        &self,
        state: &Self::State,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> (Self::Page, Vec<Refusal>);

    /// Keeps what `fold` changed; the page's stream updates.
    fn keep(&self, state: &mut Self::State, page: Self::Page) -> Vec<NewUpdate>;
}

struct Inner<S> {
    model: S,
    checkpoint: Position,
    /// Parked events, with the event itself (re-driven from here: a memory
    /// log never changes shape while the process lives).
    parked: BTreeMap<Position, (ParkedEvent, SharedEvent)>,
    /// Aggregate id -> the parked event that holds its stream back.
    held: Held,
    /// Events given up on for good; a rebuild passes them over too.
    skipped: BTreeSet<Position>,
}

impl<S: Default> Inner<S> {
    fn fresh(skipped: BTreeSet<Position>) -> Self {
        Self {
            model: S::default(),
            checkpoint: Position::START,
            parked: BTreeMap::new(),
            held: Held::new(),
            skipped,
        }
    }

    /// Folds a page in and moves the checkpoint. `strict`: an event that
    /// fails fails the page and nothing changes (the live projector retries
    /// it); otherwise it is parked at once (a rebuild).
    fn apply_page<M: MemoryModel<State = S>>(
        &mut self,
        model: &M,
        events: &[SharedEvent],
        strict: bool,
    ) -> Result<Vec<NewUpdate>, ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(vec![]);
        };
        let mut held = held_among(&self.held, events);
        let (page, refused) = model.fold(&self.model, events, &mut held, &self.skipped);
        if strict {
            if let Some(failure) = first_failure(&refused) {
                return Err(failure);
            }
        }
        let updates = model.keep(&mut self.model, page);
        for refusal in &refused {
            self.park(refusal.parked(1), events);
        }
        self.checkpoint = last.position;
        Ok(updates)
    }

    /// Parks one event, kept with its logged event (found in `events`).
    fn park(&mut self, parked: ParkedEvent, events: &[SharedEvent]) {
        let Ok(i) = events.binary_search_by_key(&parked.position, |e| e.position) else {
            return; // refusals come from `events`: always found
        };
        let cause = parked.held_behind.unwrap_or(parked.position);
        self.held.insert(parked.aggregate_id.clone(), cause);
        self.parked
            .insert(parked.position, (parked, events[i].clone()));
    }

    /// Re-drives every parked event of `streams` (aggregate ids): applies
    /// them in order where they now apply, parks again what is still
    /// refused. The stream updates, and how many applied.
    fn redrive<M: MemoryModel<State = S>>(
        &mut self,
        model: &M,
        streams: &BTreeSet<String>,
    ) -> (Vec<NewUpdate>, u64) {
        let positions: Vec<Position> = self
            .parked
            .iter()
            .filter(|(_, (p, _))| streams.contains(&p.aggregate_id))
            .map(|(pos, _)| *pos)
            .collect();
        let taken: HashMap<Position, (ParkedEvent, SharedEvent)> = positions
            .iter()
            .filter_map(|pos| self.parked.remove(pos).map(|t| (*pos, t)))
            .collect();
        for stream in streams {
            self.held.remove(stream);
        }
        let events: Vec<SharedEvent> = positions
            .iter()
            .filter_map(|p| taken.get(p).map(|(_, e)| e.clone()))
            .collect();
        let (page, refused) = model.fold(&self.model, &events, &mut Held::new(), &self.skipped);
        let updates = model.keep(&mut self.model, page);
        let now = chrono::Utc::now();
        for refusal in &refused {
            let old = taken.get(&refusal.event.position).map(|(p, _)| p);
            let mut entry = refusal.parked(old.map_or(0, |o| o.attempts) + 1);
            entry.parked_at = old.map_or(now, |o| o.parked_at);
            self.park(entry, &events);
        }
        (updates, (events.len() - refused.len()) as u64)
    }
}

/// A read model in memory with everything around its fold.
pub struct MemoryStore<M: MemoryModel> {
    model: M,
    state: RwLock<Inner<M::State>>,
    /// The live version: 1, then one more per rebuild.
    version: AtomicU32,
    /// Stream updates, numbered as pages are applied.
    updates: Arc<MemoryUpdateLog>,
    /// Where numbered updates go live (set once the feed runs).
    feed: OnceLock<Feed>,
    /// Held by a rebuild, a re-drive or a skip: none runs beside another.
    maintenance: tokio::sync::Mutex<()>,
}

impl<M: MemoryModel> MemoryStore<M> {
    pub fn new(model: M, updates: Arc<MemoryUpdateLog>) -> Self {
        Self {
            model,
            state: RwLock::new(Inner::fresh(BTreeSet::new())),
            version: AtomicU32::new(1),
            updates,
            feed: OnceLock::new(),
            maintenance: tokio::sync::Mutex::new(()),
        }
    }

    /// Connects the live feed; updates numbered before are read from the log.
    pub fn set_feed(&self, feed: Feed) {
        let _ = self.feed.set(feed);
    }

    /// Reads the model's state (queries answer from here).
    pub fn with<T>(&self, read: impl FnOnce(&M::State) -> T) -> T {
        read(&self.read().model)
    }

    // Writers replace whole rows, so a poisoned lock still guards a consistent state.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<M::State>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<M::State>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn offer(&self, numbered: Vec<Arc<StreamUpdate>>) {
        if let Some(feed) = self.feed.get() {
            feed.offer(numbered);
        }
    }

    /// Re-drives `streams` under the state's lock and publishes the changes.
    fn redrive_streams(&self, streams: &BTreeSet<String>) -> RedriveReport {
        let mut state = self.write();
        let (updates, applied) = state.redrive(&self.model, streams);
        let numbered = self.updates.append(updates);
        let still_parked = state.parked.len() as u64;
        drop(state);
        self.offer(numbered);
        RedriveReport {
            applied,
            still_parked,
        }
    }
}

#[async_trait]
impl<M: MemoryModel> Projection for MemoryStore<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        Ok(self.read().checkpoint)
    }

    async fn apply(
        &self,
        expected: Position,
        events: &[SharedEvent],
    ) -> Result<Position, ProjectionError> {
        let mut state = self.write();
        if state.checkpoint != expected {
            return Err(ProjectionError::CheckpointMoved { expected });
        }
        let updates = state.apply_page(&self.model, events, true)?;
        // Numbered under the state's lock, so numbers follow the changes.
        let numbered = self.updates.append(updates);
        let checkpoint = state.checkpoint;
        drop(state);
        self.offer(numbered);
        Ok(checkpoint)
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
        state.park(
            Refusal::failed(event, error).parked(attempts),
            std::slice::from_ref(event),
        );
        state.checkpoint = event.position;
        Ok(event.position)
    }
}

#[async_trait]
impl<M: MemoryModel> Parking for MemoryStore<M> {
    async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, ProjectionError> {
        Ok(self
            .read()
            .parked
            .range((Excluded(after), Unbounded))
            .take(limit)
            .map(|(_, (p, _))| p.clone())
            .collect())
    }

    async fn parked_count(&self) -> Result<u64, ProjectionError> {
        Ok(self.read().parked.len() as u64)
    }

    async fn skipped(&self) -> Result<BTreeSet<Position>, ProjectionError> {
        Ok(self.read().skipped.clone())
    }

    async fn redrive(&self, _log: &dyn EventLog) -> Result<RedriveReport, ParkingError> {
        let _maintenance = self
            .maintenance
            .try_lock()
            .map_err(|_| ParkingError::Busy(M::NAME))?;
        let streams: BTreeSet<String> = self
            .read()
            .parked
            .values()
            .map(|(p, _)| p.aggregate_id.clone())
            .collect();
        Ok(self.redrive_streams(&streams))
    }

    async fn skip(
        &self,
        _log: &dyn EventLog,
        position: Position,
        by: &str,
    ) -> Result<RedriveReport, ParkingError> {
        let _maintenance = self
            .maintenance
            .try_lock()
            .map_err(|_| ParkingError::Busy(M::NAME))?;
        let (entry, _) = {
            let mut state = self.write();
            let taken = state
                .parked
                .remove(&position)
                .ok_or(ParkingError::NotParked(position))?;
            state.skipped.insert(position);
            taken
        };
        tracing::warn!(projection = M::NAME, cursor = %position.to_cursor(), event_type = %entry.event_type,
            aggregate_id = %entry.aggregate_id, error = %entry.error, by, "parked event skipped for good");
        // The events held behind it (and any other refusal of its stream)
        // are tried again now.
        Ok(self.redrive_streams(&BTreeSet::from([entry.aggregate_id])))
    }
}

#[async_trait]
impl<M: MemoryModel> Rebuildable for MemoryStore<M> {
    async fn version(&self) -> Result<u32, ProjectionError> {
        Ok(self.version.load(Ordering::Acquire))
    }

    async fn rebuild(
        &self,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError> {
        let _maintenance = self.maintenance.lock().await;
        let version = self.version.load(Ordering::Acquire) + 1;
        let (total, _) = log.behind(Position::START).await?;
        progress.plan(version, total);
        // Beside the live state: nothing here is visible until the switch.
        // What it cannot apply it parks at once (retrying is the live
        // projector's business); skips hold for it as for the live state.
        let mut fresh = Inner::fresh(self.read().skipped.clone());
        loop {
            let page = log.read_after(fresh.checkpoint, BUILD_PAGE).await?;
            if page.is_empty() {
                break;
            }
            fresh.apply_page(&self.model, &page, false)?;
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
                fresh.apply_page(&self.model, &page, false)?;
                progress.advance(page.len() as u64);
            }
            {
                let mut state = self.write();
                if state.checkpoint == fresh.checkpoint {
                    *state = fresh;
                    self.version.store(version, Ordering::Release);
                    return Ok(version);
                }
            }
            // The live state is behind the new one (or just moved): let it go on.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Err(StorageError::defect(format!(
            "the live {} kept moving; the rebuild could not switch",
            M::NAME
        ))
        .into())
    }
}

/// Any fold's rows in memory: by key, and by sort value for ranges.
pub struct MemoryRows<F: Fold>(pub F);

pub struct RowState<R> {
    rows: BTreeMap<String, (i64, R)>,
    by_sort: BTreeSet<(i64, String)>,
}

impl<R> Default for RowState<R> {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            by_sort: BTreeSet::new(),
        }
    }
}

impl<F: Fold> MemoryModel for MemoryRows<F> {
    const NAME: &'static str = F::NAME;
    type State = RowState<F::Row>;
    type Page = Rows<F::Row>;

    fn fold(
        &self,
        state: &Self::State,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> (Rows<F::Row>, Vec<Refusal>) {
        let (reads, keys) = read_page(&self.0, events);
        let mut rows = Rows::new(keys.with(|k| state.rows.get(k).cloned()));
        let refused = fold_page(&self.0, &mut rows, reads, held, skipped);
        (rows, refused)
    }

    fn keep(&self, state: &mut Self::State, rows: Rows<F::Row>) -> Vec<NewUpdate> {
        let (updates, changes) = rows.finish();
        for (key, value) in changes {
            let before = state.rows.get(&key).map(|(sort, _)| *sort);
            let after = value.as_ref().map(|(sort, _)| *sort);
            if before != after {
                if let Some(sort) = before {
                    state.by_sort.remove(&(sort, key.clone()));
                }
                if let Some(sort) = after {
                    state.by_sort.insert((sort, key.clone()));
                }
            }
            match value {
                Some(value) => {
                    state.rows.insert(key, value);
                }
                None => {
                    state.rows.remove(&key);
                }
            }
        }
        updates
    }
}

#[async_trait]
impl<F: Fold> RowReader<F::Row> for MemoryStore<MemoryRows<F>> {
    async fn get(&self, key: &str) -> Result<Option<Keyed<F::Row>>, StorageError> {
        Ok(self.with(|state| {
            state.rows.get(key).map(|(sort, row)| Keyed {
                key: key.to_owned(),
                sort: *sort,
                row: row.clone(),
            })
        }))
    }

    async fn range(
        &self,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Keyed<F::Row>>, StorageError> {
        let start = match after {
            Some(after) => Excluded(after),
            None => Included((from, String::new())),
        };
        Ok(self.with(|state| {
            state
                .by_sort
                .range((start, Unbounded))
                .take_while(|(sort, _)| *sort < to)
                .filter(|(sort, _)| *sort >= from)
                .take(limit)
                .filter_map(|(sort, key)| {
                    state.rows.get(key).map(|(_, row)| Keyed {
                        key: key.clone(),
                        sort: *sort,
                        row: row.clone(),
                    })
                })
                .collect()
        }))
    }
}
