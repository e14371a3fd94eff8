//! The projection store in memory: any fold's rows by key and by sort, its
//! checkpoint and parked events, changed under one lock, so a reader never
//! sees a page half applied.

use std::collections::{BTreeMap, BTreeSet};
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

struct State<R> {
    rows: BTreeMap<String, (i64, R)>,
    by_sort: BTreeSet<(i64, String)>,
    checkpoint: Position,
    /// Parked events, with the event itself (re-driven from here: a memory
    /// log never changes shape while the process lives).
    parked: BTreeMap<Position, (ParkedEvent, SharedEvent)>,
    /// Aggregate id -> the parked event that holds its stream back.
    held: Held,
    /// Events given up on for good; a rebuild passes them over too.
    skipped: BTreeSet<Position>,
}

impl<R> Default for State<R> {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            by_sort: BTreeSet::new(),
            checkpoint: Position::START,
            parked: BTreeMap::new(),
            held: Held::new(),
            skipped: BTreeSet::new(),
        }
    }
}

impl<R: Clone> State<R> {
    /// Folds `events` and keeps what changed; their stream updates and refusals.
    fn fold<F: Fold<Row = R>>(
        &mut self,
        fold: &F,
        events: &[SharedEvent],
        held: &mut Held,
    ) -> (Vec<NewUpdate>, Vec<Refusal>, Rows<R>) {
        let (reads, keys) = read_page(fold, events);
        let mut rows = Rows::new(keys.into_iter().map(|k| {
            let value = self.rows.get(&k).cloned();
            (k, value)
        }));
        let refused = fold_page(fold, &mut rows, reads, held, &self.skipped);
        let updates = rows.take_updates();
        (updates, refused, rows)
    }

    fn store(&mut self, rows: &Rows<R>) {
        for (key, value) in rows.changes() {
            if let Some((sort, _)) = self.rows.remove(key) {
                self.by_sort.remove(&(sort, key.to_owned()));
            }
            if let Some((sort, row)) = value {
                self.by_sort.insert((*sort, key.to_owned()));
                self.rows.insert(key.to_owned(), (*sort, row.clone()));
            }
        }
    }

    /// Folds a page in and moves the checkpoint. `strict`: an event that
    /// fails fails the page and nothing changes (the live projector retries
    /// it); otherwise it is parked at once (a rebuild).
    fn apply_page<F: Fold<Row = R>>(
        &mut self,
        fold: &F,
        events: &[SharedEvent],
        strict: bool,
    ) -> Result<Vec<NewUpdate>, ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(vec![]);
        };
        let mut held = held_among(&self.held, events);
        let (updates, refused, rows) = self.fold(fold, events, &mut held);
        if strict {
            if let Some(failure) = first_failure(&refused) {
                return Err(failure);
            }
        }
        self.store(&rows);
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
    /// them in order where they now apply, parks again what is still refused.
    fn redrive<F: Fold<Row = R>>(
        &mut self,
        fold: &F,
        streams: &BTreeSet<String>,
    ) -> (Vec<NewUpdate>, u64) {
        let positions: Vec<Position> = self
            .parked
            .iter()
            .filter(|(_, (p, _))| streams.contains(&p.aggregate_id))
            .map(|(pos, _)| *pos)
            .collect();
        let taken: Vec<(ParkedEvent, SharedEvent)> = positions
            .iter()
            .filter_map(|pos| self.parked.remove(pos))
            .collect();
        for stream in streams {
            self.held.remove(stream);
        }
        let events: Vec<SharedEvent> = taken.iter().map(|(_, e)| e.clone()).collect();
        let (updates, refused, rows) = self.fold(fold, &events, &mut Held::new());
        self.store(&rows);
        let now = chrono::Utc::now();
        for refusal in &refused {
            let old = taken
                .iter()
                .find(|(p, _)| p.position == refusal.event.position)
                .map(|(p, _)| p);
            let mut entry = refusal.parked(old.map_or(0, |o| o.attempts) + 1);
            entry.parked_at = old.map_or(now, |o| o.parked_at);
            self.park(entry, &events);
        }
        (updates, (events.len() - refused.len()) as u64)
    }
}

/// Any fold's read model in memory.
pub struct MemoryStore<F: Fold> {
    fold: F,
    state: RwLock<State<F::Row>>,
    /// The live version: 1, then one more per rebuild.
    version: AtomicU32,
    /// Stream updates, numbered as pages are applied.
    updates: Arc<MemoryUpdateLog>,
    /// Where numbered updates go live (set once the feed runs).
    feed: OnceLock<Feed>,
    /// Held by a rebuild, a re-drive or a skip: none runs beside another.
    maintenance: tokio::sync::Mutex<()>,
}

impl<F: Fold> MemoryStore<F> {
    pub fn new(fold: F, updates: Arc<MemoryUpdateLog>) -> Self {
        Self {
            fold,
            state: RwLock::new(State::default()),
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

    // Writers replace whole rows, so a poisoned lock still guards a consistent state.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<F::Row>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<F::Row>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn offer(&self, numbered: Vec<Arc<StreamUpdate>>) {
        if let Some(feed) = self.feed.get() {
            feed.offer(numbered);
        }
    }

    fn redrive_streams(&self, streams: &BTreeSet<String>) -> RedriveReport {
        let mut state = self.write();
        let (updates, applied) = state.redrive(&self.fold, streams);
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
impl<F: Fold> Projection for MemoryStore<F> {
    fn name(&self) -> &'static str {
        F::NAME
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
        let updates = state.apply_page(&self.fold, events, true)?;
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
impl<F: Fold> RowReader<F::Row> for MemoryStore<F> {
    async fn get(&self, key: &str) -> Result<Option<Keyed<F::Row>>, StorageError> {
        Ok(self.read().rows.get(key).map(|(sort, row)| Keyed {
            key: key.to_owned(),
            sort: *sort,
            row: row.clone(),
        }))
    }

    async fn range(
        &self,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Keyed<F::Row>>, StorageError> {
        let state = self.read();
        let start = match after {
            Some(after) => Excluded(after),
            None => Included((from, String::new())),
        };
        Ok(state
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
            .collect())
    }
}

#[async_trait]
impl<F: Fold> Parking for MemoryStore<F> {
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
            .map_err(|_| ParkingError::Busy(F::NAME))?;
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
            .map_err(|_| ParkingError::Busy(F::NAME))?;
        let (entry, _) = {
            let mut state = self.write();
            let taken = state
                .parked
                .remove(&position)
                .ok_or(ParkingError::NotParked(position))?;
            state.skipped.insert(position);
            taken
        };
        tracing::warn!(projection = F::NAME, cursor = %position.to_cursor(), event_type = %entry.event_type,
            aggregate_id = %entry.aggregate_id, error = %entry.error, by, "parked event skipped for good");
        Ok(self.redrive_streams(&BTreeSet::from([entry.aggregate_id])))
    }
}

#[async_trait]
impl<F: Fold> Rebuildable for MemoryStore<F> {
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
        let mut fresh = State {
            skipped: self.read().skipped.clone(),
            ..State::default()
        };
        loop {
            let page = log.read_after(fresh.checkpoint, BUILD_PAGE).await?;
            if page.is_empty() {
                break;
            }
            fresh.apply_page(&self.fold, &page, false)?;
            progress.advance(page.len() as u64);
        }
        progress.set_state(RebuildState::Switching);
        // Catch up to exactly where the live state is, then swap under its
        // lock; if it moved meanwhile, catch up again.
        for _ in 0..10_000 {
            let live = self.read().checkpoint;
            while fresh.checkpoint < live {
                let page = log.read_after(fresh.checkpoint, BUILD_PAGE).await?;
                let page: Vec<_> = page.into_iter().filter(|e| e.position <= live).collect();
                if page.is_empty() {
                    break;
                }
                fresh.apply_page(&self.fold, &page, false)?;
                progress.advance(page.len() as u64);
            }
            {
                let mut state = self.write();
                if state.checkpoint == fresh.checkpoint {
                    *state = std::mem::take(&mut fresh);
                    self.version.store(version, Ordering::Release);
                    return Ok(version);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Err(StorageError::defect(format!(
            "the live {} kept moving; the rebuild could not switch",
            F::NAME
        ))
        .into())
    }
}
