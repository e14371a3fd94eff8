//! The in-memory event store: zero set-up, gone at exit.
//!
//! cqrs-es's own `MemStore` has no optimistic-concurrency check, so this is a
//! store of ours: an append checks the stream's version under the same lock
//! that assigns global positions, so positions are commit order and a stale
//! writer gets `OptimisticLockError`. Aggregates load through the log
//! reader, as on PostgreSQL (`storage::repository`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde_json::Value;

use super::{AppendSignal, EventLog, LoggedEvent, Position, SharedEvent, StorageError};

/// Events per chunk. The log grows chunk by chunk, so an append never copies
/// the whole log (a single growing Vec would, stalling writers for
/// milliseconds once it holds millions of events).
const CHUNK: usize = 4096;

#[derive(Default)]
struct Log {
    chunks: Vec<Vec<SharedEvent>>,
    len: usize,
    /// (aggregate type, aggregate id) -> global indexes, in sequence order. A
    /// B-tree grows a node at a time; a hash map's resize would move every
    /// stream at once under the write lock.
    streams: BTreeMap<(String, String), Vec<usize>>,
    /// Recipient -> the notifications created for them: what time travel
    /// reads, without walking the whole log under the lock.
    recipients: BTreeMap<String, Vec<String>>,
}

impl Log {
    fn get(&self, index: usize) -> &SharedEvent {
        &self.chunks[index / CHUNK][index % CHUNK]
    }

    fn push(&mut self, event: LoggedEvent) {
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(Arc::new(event));
            self.len += 1;
        }
    }

    /// The last event of each of `types` in `indexes` (a stream), in
    /// sequence order.
    fn latest_in(&self, indexes: &[usize], types: &[&str]) -> Vec<SharedEvent> {
        let mut found: Vec<SharedEvent> = Vec::with_capacity(types.len());
        for &i in indexes.iter().rev() {
            let event = self.get(i);
            if types.contains(&event.event_type.as_str())
                && !found.iter().any(|f| f.event_type == event.event_type)
            {
                found.push(event.clone());
                if found.len() == types.len() {
                    break;
                }
            }
        }
        found.reverse();
        found
    }

    fn stream(&self, aggregate_type: &str, aggregate_id: &str) -> &[usize] {
        self.streams
            .get(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
            .map_or(&[], Vec::as_slice)
    }
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
        // append checks everything before it pushes), so a poisoned lock is
        // still consistent.
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends events of one stream if the stream is still at the version the
    /// writer loaded, and returns their global positions.
    pub fn append(&self, events: Vec<SerializedEvent>) -> Result<Vec<Position>, PersistenceError> {
        self.append_streams(events)
    }

    /// Appends the events of one or more streams (each stream's events
    /// consecutive, from the version its writer loaded), all or nothing under
    /// one lock: one stale stream refuses the whole append. Returns the
    /// global positions, in the order given.
    pub fn append_streams(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<Position>, PersistenceError> {
        if events.is_empty() {
            return Ok(vec![]);
        }
        let positions = {
            let mut log = self.write();
            // Every stream's next sequence, checked before anything is pushed.
            let mut next: BTreeMap<(String, String), usize> = BTreeMap::new();
            for e in &events {
                let key = (e.aggregate_type.clone(), e.aggregate_id.clone());
                let expected = match next.get(&key) {
                    Some(n) => *n,
                    None => {
                        let current = log.streams.get(&key).map_or(0, Vec::len);
                        if e.sequence != current + 1 {
                            return Err(PersistenceError::OptimisticLockError);
                        }
                        current + 1
                    }
                };
                if e.sequence != expected {
                    return Err(PersistenceError::UnknownError(
                        "the events of a stream in one append must be consecutive".into(),
                    ));
                }
                next.insert(key, expected + 1);
            }
            // Microseconds, as PostgreSQL keeps them: a time read back from the
            // API then compares equal to the stored one.
            let recorded_at = Utc::now().trunc_subsecs(6);
            let mut metadata: Option<Arc<Value>> = None;
            let mut positions = Vec::with_capacity(events.len());
            for event in events {
                let index = log.len;
                let n = index as i64 + 1;
                positions.push(Position::new(n, n));
                if event.aggregate_type == "Notification"
                    && event.event_type == "NotificationCreated"
                {
                    if let Some(recipient) =
                        event.payload["NotificationCreated"]["recipient"].as_str()
                    {
                        log.recipients
                            .entry(recipient.to_owned())
                            .or_default()
                            .push(event.aggregate_id.clone());
                    }
                }
                log.streams
                    .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
                    .or_default()
                    .push(index);
                log.push(LoggedEvent {
                    position: Position::new(n, n),
                    aggregate_type: event.aggregate_type,
                    aggregate_id: event.aggregate_id,
                    sequence: event.sequence as i64,
                    event_type: event.event_type,
                    event_version: event.event_version,
                    payload: event.payload,
                    metadata: match &metadata {
                        Some(shared) if **shared == event.metadata => shared.clone(),
                        _ => metadata.insert(Arc::new(event.metadata)).clone(),
                    },
                    recorded_at,
                    unreadable: None,
                });
            }
            positions
        };
        self.signal.notify();
        Ok(positions)
    }
}

#[async_trait]
impl EventLog for MemoryEventStore {
    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let log = self.read();
        // Positions are 1..=len, so the next event after `after` is at index after.seq.
        let start = (after.seq.max(0) as usize).min(log.len);
        let end = start.saturating_add(limit).min(log.len);
        Ok((start..end).map(|i| log.get(i).clone()).collect())
    }

    async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<Position>, StorageError> {
        if sequence < 1 {
            return Ok(None);
        }
        let log = self.read();
        Ok(log
            .stream(aggregate_type, aggregate_id)
            .get(sequence as usize - 1)
            .map(|&i| log.get(i).position))
    }

    async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let log = self.read();
        Ok(log
            .stream(aggregate_type, aggregate_id)
            .iter()
            .skip(after.max(0) as usize)
            .take(limit)
            .map(|&i| log.get(i).clone())
            .collect())
    }

    async fn recipient_history(
        &self,
        recipient: &str,
        until: Position,
        recorded_by: chrono::DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        // Bounded work under the lock: the recipient's streams only, and no
        // more than `limit + 1` events (past that the caller refuses anyway).
        let log = self.read();
        let ids = log.recipients.get(recipient).map_or(&[][..], Vec::as_slice);
        let mut found = Vec::new();
        'streams: for id in ids {
            for &i in log.stream("Notification", id) {
                let e = log.get(i);
                if e.position <= until && e.recorded_at <= recorded_by {
                    found.push(i);
                    if found.len() > limit {
                        break 'streams;
                    }
                }
            }
        }
        found.sort_unstable();
        Ok(found.into_iter().map(|i| log.get(i).clone()).collect())
    }

    async fn streams(
        &self,
        aggregate_type: &str,
        aggregate_ids: &[String],
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let log = self.read();
        Ok(aggregate_ids
            .iter()
            .flat_map(|id| log.stream(aggregate_type, id))
            .map(|&i| log.get(i).clone())
            .collect())
    }

    async fn streams_since(
        &self,
        aggregate_type: &str,
        aggregate_ids: &[String],
        resume_at: &str,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        super::refuse_latest(aggregate_type)?;
        let log = self.read();
        Ok(aggregate_ids
            .iter()
            .flat_map(|id| {
                let stream = log.stream(aggregate_type, id);
                let since = stream
                    .iter()
                    .rposition(|&i| log.get(i).event_type == resume_at)
                    .unwrap_or(0);
                stream[since..].iter().map(|&i| log.get(i).clone())
            })
            .collect())
    }

    async fn latest(
        &self,
        aggregate_type: &str,
        aggregate_ids: Option<&[String]>,
        event_types: &[&str],
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        super::refuse_latest(aggregate_type)?;
        let log = self.read();
        Ok(match aggregate_ids {
            Some(ids) => ids
                .iter()
                .flat_map(|id| log.latest_in(log.stream(aggregate_type, id), event_types))
                .collect(),
            None => {
                let from = (aggregate_type.to_owned(), String::new());
                log.streams
                    .range(from..)
                    .take_while(|((t, _), _)| t == aggregate_type)
                    .flat_map(|(_, indexes)| log.latest_in(indexes, event_types))
                    .take(limit)
                    .collect()
            }
        })
    }

    async fn of_type(
        &self,
        aggregate_type: &str,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let log = self.read();
        let from = (aggregate_type.to_owned(), String::new());
        Ok(log
            .streams
            .range(from..)
            .take_while(|((t, _), _)| t == aggregate_type)
            .flat_map(|(_, indexes)| indexes)
            .take(limit)
            .map(|&i| log.get(i).clone())
            .collect())
    }

    async fn behind(
        &self,
        after: Position,
    ) -> Result<(u64, Option<chrono::DateTime<Utc>>), StorageError> {
        let log = self.read();
        let next = (after.seq.max(0) as usize).min(log.len);
        let oldest = (next < log.len).then(|| log.get(next).recorded_at);
        Ok(((log.len - next) as u64, oldest))
    }

    async fn reaches(&self, position: Position) -> Result<bool, StorageError> {
        let end = self.read().len as i64;
        Ok(position <= Position::new(end, end))
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, sequence: usize) -> SerializedEvent {
        SerializedEvent::new(
            stream.into(),
            sequence,
            "Test".into(),
            "Happened".into(),
            "1.0".into(),
            serde_json::json!({"n": sequence}),
            serde_json::json!({}),
        )
    }

    #[test]
    fn a_stale_append_is_refused_and_changes_nothing() {
        let store = MemoryEventStore::new(AppendSignal::default());
        store.append(vec![event("a", 1), event("a", 2)]).unwrap();
        let stale = store.append(vec![event("a", 2)]);
        assert!(matches!(stale, Err(PersistenceError::OptimisticLockError)));
        let gap = store.append(vec![event("a", 4)]);
        assert!(matches!(gap, Err(PersistenceError::OptimisticLockError)));
        assert_eq!(store.read().len, 2);
        assert_eq!(
            store.append(vec![event("a", 3)]).unwrap(),
            vec![Position::new(3, 3)]
        );
    }

    #[tokio::test]
    async fn positions_are_append_order_across_chunks() {
        let store = MemoryEventStore::new(AppendSignal::default());
        let total = CHUNK * 2 + 7;
        for i in 0..total {
            store.append(vec![event(&format!("s{i}"), 1)]).unwrap();
        }
        let mut after = Position::START;
        let mut seen = 0;
        loop {
            let page = store.read_after(after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            for (k, e) in page.iter().enumerate() {
                assert_eq!(e.position.seq, after.seq + 1 + k as i64);
            }
            seen += page.len();
            after = last.position;
        }
        assert_eq!(seen, total);
        let p = store
            .position_of("Test", &format!("s{}", CHUNK + 1), 1)
            .await
            .unwrap();
        assert_eq!(p, Some(Position::new(CHUNK as i64 + 2, CHUNK as i64 + 2)));
    }
}
