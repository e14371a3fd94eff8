//! The in-memory event store: zero set-up, gone at exit.
//!
//! cqrs-es's own `MemStore` has no optimistic-concurrency check, so this is a
//! `PersistedEventRepository` of ours: an append checks the stream's version
//! under the same lock that assigns global positions, so positions are commit
//! order and a stale writer gets `OptimisticLockError`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::Utc;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use serde_json::Value;

use super::{AppendSignal, EventLog, LoggedEvent, Position, StorageError};

#[derive(Default)]
struct Log {
    events: Vec<LoggedEvent>,
    /// (aggregate type, aggregate id) -> indexes into `events`, in sequence order.
    streams: HashMap<(String, String), Vec<usize>>,
}

/// Cheap to clone: clones share one log.
#[derive(Clone)]
pub struct MemoryEventStore {
    log: Arc<RwLock<Log>>,
    signal: AppendSignal,
}

impl MemoryEventStore {
    pub fn new(signal: AppendSignal) -> Self {
        Self {
            log: Arc::default(),
            signal,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-written (an
        // append pushes whole events), so a poisoned lock is still consistent.
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }

    fn stream_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
    ) -> Vec<SerializedEvent> {
        let log = self.read();
        let key = (aggregate_type.to_owned(), aggregate_id.to_owned());
        log.streams
            .get(&key)
            .map(|idx| {
                idx.iter()
                    .map(|&i| &log.events[i])
                    .filter(|e| e.sequence > after)
                    .map(to_serialized)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Appends events of one stream if the stream is still at the version the
    /// writer loaded, and returns their global positions.
    pub fn append(&self, events: &[SerializedEvent]) -> Result<Vec<Position>, PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(vec![]);
        };
        let positions = {
            let mut log = self.write();
            let key = (first.aggregate_type.clone(), first.aggregate_id.clone());
            let current = log.streams.get(&key).map_or(0, Vec::len);
            if first.sequence != current + 1 {
                return Err(PersistenceError::OptimisticLockError);
            }
            for (offset, event) in events.iter().enumerate() {
                if event.sequence != current + 1 + offset
                    || event.aggregate_id != first.aggregate_id
                {
                    return Err(PersistenceError::UnknownError(
                        "events of one append must be consecutive in one stream".into(),
                    ));
                }
            }
            let recorded_at = Utc::now();
            let mut indexes = Vec::with_capacity(events.len());
            let mut positions = Vec::with_capacity(events.len());
            for event in events {
                indexes.push(log.events.len());
                let n = log.events.len() as i64 + 1;
                positions.push(Position::new(n, n));
                log.events.push(LoggedEvent {
                    position: Position::new(n, n),
                    aggregate_type: event.aggregate_type.clone(),
                    aggregate_id: event.aggregate_id.clone(),
                    sequence: event.sequence as i64,
                    event_type: event.event_type.clone(),
                    event_version: event.event_version.clone(),
                    payload: event.payload.clone(),
                    metadata: event.metadata.clone(),
                    recorded_at,
                });
            }
            log.streams.entry(key).or_default().extend(indexes);
            positions
        };
        self.signal.notify();
        Ok(positions)
    }
}

fn to_serialized(e: &LoggedEvent) -> SerializedEvent {
    SerializedEvent::new(
        e.aggregate_id.clone(),
        e.sequence as usize,
        e.aggregate_type.clone(),
        e.event_type.clone(),
        e.event_version.clone(),
        e.payload.clone(),
        e.metadata.clone(),
    )
}

async fn replay(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    for event in events {
        // The channel holds them all, so pushing cannot block or fail.
        let _ = feed.push(Ok(event)).await;
    }
    stream
}

impl PersistedEventRepository for MemoryEventStore {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.stream_events(A::TYPE, aggregate_id, 0))
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.stream_events(A::TYPE, aggregate_id, last_sequence as i64))
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.append(events).map(drop)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Ok(replay(self.stream_events(A::TYPE, aggregate_id, 0)).await)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let events: Vec<_> = self
            .read()
            .events
            .iter()
            .filter(|e| e.aggregate_type == A::TYPE)
            .map(to_serialized)
            .collect();
        Ok(replay(events).await)
    }
}

#[async_trait]
impl EventLog for MemoryEventStore {
    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, StorageError> {
        let log = self.read();
        // Positions are 1..=len, so the next event after `after` is at index after.seq.
        let start = (after.seq.max(0) as usize).min(log.events.len());
        let end = start.saturating_add(limit).min(log.events.len());
        Ok(log.events[start..end].to_vec())
    }

    async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<Position>, StorageError> {
        let log = self.read();
        let key = (aggregate_type.to_owned(), aggregate_id.to_owned());
        Ok(log
            .streams
            .get(&key)
            .and_then(|idx| idx.get((sequence - 1).max(0) as usize))
            .filter(|_| sequence >= 1)
            .map(|&i| log.events[i].position))
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
