//! Maintenance of the memory inbox: re-driving and skipping parked events,
//! and rebuilding without downtime. Each holds the maintenance lock, so none
//! runs beside another; each changes the state under its lock, so the live
//! projector never sees half of one.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;

use super::fold::{fold_events, ids_in, Held};
use super::memory::{MemoryInbox, State};
use super::{page_updates, remember, PageUpdates, NAME};
use crate::projections::parked::{ParkedEvent, Parking, ParkingError, RedriveReport};
use crate::projections::rebuild::{RebuildState, Rebuildable, Rebuilds, BUILD_PAGE};
use crate::projections::ProjectionError;
use crate::storage::{EventLog, Position, SharedEvent, StorageError};

impl State {
    /// Re-drives every parked event of `streams` (aggregate ids): applies
    /// them in order where they now apply, parks again what is still refused.
    /// Returns the stream updates and how many were applied.
    fn redrive(&mut self, streams: &BTreeSet<String>) -> (PageUpdates, u64, Position) {
        let taken: Vec<(ParkedEvent, SharedEvent)> = {
            let positions: Vec<Position> = self
                .parked
                .iter()
                .filter(|(_, (p, _))| streams.contains(&p.aggregate_id))
                .map(|(pos, _)| *pos)
                .collect();
            positions
                .iter()
                .filter_map(|pos| self.parked.remove(pos))
                .collect()
        };
        for stream in streams {
            self.held.remove(stream);
        }
        let events: Vec<SharedEvent> = taken.iter().map(|(_, e)| e.clone()).collect();
        let page_end = events.last().map_or(self.checkpoint, |e| e.position);
        let mut rows: HashMap<_, _> = ids_in(&events)
            .into_iter()
            .map(|id| (id, self.rows.get(&id).cloned()))
            .collect();
        let before = remember(&rows);
        let refused = fold_events(&mut rows, &events, &mut Held::new(), &self.skipped);
        let updates = page_updates(&before, &rows, page_end);
        self.store_rows(rows);
        let previous: HashMap<Position, &ParkedEvent> =
            taken.iter().map(|(p, _)| (p.position, p)).collect();
        let now = chrono::Utc::now();
        for refusal in &refused {
            let old = previous.get(&refusal.event.position);
            let mut entry = refusal.parked(old.map_or(0, |o| o.attempts) + 1);
            entry.parked_at = old.map_or(now, |o| o.parked_at);
            self.park(entry, &events);
        }
        let applied = (events.len() - refused.len()) as u64;
        (updates, applied, page_end)
    }
}

impl MemoryInbox {
    /// Re-drives `streams` under the state's lock and publishes the changes.
    fn redrive_streams(&self, streams: &BTreeSet<String>) -> RedriveReport {
        let mut state = self.write();
        let (updates, applied, end) = state.redrive(streams);
        let numbered = self.number(&state, updates, end);
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
impl Parking for MemoryInbox {
    async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, ProjectionError> {
        use std::ops::Bound::{Excluded, Unbounded};
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
            .map_err(|_| ParkingError::Busy(NAME))?;
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
            .map_err(|_| ParkingError::Busy(NAME))?;
        let (entry, _) = {
            let mut state = self.write();
            let taken = state
                .parked
                .remove(&position)
                .ok_or(ParkingError::NotParked(position))?;
            state.skipped.insert(position);
            taken
        };
        tracing::warn!(projection = NAME, cursor = %position.to_cursor(), event_type = %entry.event_type,
            aggregate_id = %entry.aggregate_id, error = %entry.error, by, "parked event skipped for good");
        // The events held behind it (and any other refusal of its stream)
        // are tried again now.
        Ok(self.redrive_streams(&BTreeSet::from([entry.aggregate_id])))
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
        let _maintenance = self.maintenance.lock().await;
        let version = self.version.load(std::sync::atomic::Ordering::Acquire) + 1;
        let (total, _) = log.behind(Position::START).await?;
        progress.plan(version, total);
        // Beside the live state: nothing here is visible until the switch.
        // What it cannot apply it parks at once (retrying is the live
        // projector's business); skips hold for it as for the live state.
        let mut fresh = State {
            skipped: self.read().skipped.clone(),
            ..State::default()
        };
        loop {
            let page = log.read_after(fresh.checkpoint, BUILD_PAGE).await?;
            if page.is_empty() {
                break;
            }
            fresh.apply_page(&page, false)?;
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
                fresh.apply_page(&page, false)?;
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
        Err(StorageError::defect("the live inbox kept moving; the rebuild could not switch").into())
    }
}
