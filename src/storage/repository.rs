//! cqrs-es's event repository over tidings' own log reader: how aggregates
//! are loaded, on both backends.
//!
//! postgres-es decodes rows with `row.get`, which panics on a payload it
//! cannot decode (JSON nested deeper than serde_json follows, which jsonb
//! stores happily): one such event would turn every command on its
//! notification into a panic. Loading instead reads the stream through the
//! same `EventLog` the projections read, where such an event is marked
//! unreadable, and refuses it with an error that names it. Appends do not
//! come through here (each backend's appender reports global positions).

use std::sync::Arc;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use serde_json::Value;

use super::{EventLog, LoggedEvent, StorageError};

/// Events read per statement while loading a stream.
const PAGE: usize = 1000;

/// An event in a stream that this release cannot read (a payload or
/// metadata that does not parse, a version it does not know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "event {sequence} of {aggregate_type} {aggregate_id} ({event_type}, cursor {cursor}) cannot be read by this release: {reason}"
)]
pub struct UnreadableEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    /// Its position in the global log.
    pub cursor: String,
    pub reason: String,
}

impl UnreadableEvent {
    pub fn of(event: &LoggedEvent, reason: String) -> Self {
        Self {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            event_type: event.event_type.clone(),
            cursor: event.position.to_cursor(),
            reason,
        }
    }
}

/// Loads streams through the log reader.
pub struct LogRepository {
    log: Arc<dyn EventLog>,
}

impl LogRepository {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log }
    }

    async fn events_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        mut after: i64,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let mut events = Vec::new();
        loop {
            let page = self
                .log
                .stream(aggregate_type, aggregate_id, after, PAGE)
                .await
                .map_err(persistence_error)?;
            for event in &page {
                if let Some(unreadable) = &event.unreadable {
                    return Err(PersistenceError::DeserializationError(Box::new(
                        UnreadableEvent::of(event, unreadable.error.clone()),
                    )));
                }
                events.push(serialized(event));
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = last.sequence,
                _ => return Ok(events),
            }
        }
    }
}

fn serialized(e: &LoggedEvent) -> SerializedEvent {
    SerializedEvent::new(
        e.aggregate_id.clone(),
        e.sequence.max(0) as usize,
        e.aggregate_type.clone(),
        e.event_type.clone(),
        e.event_version.clone(),
        e.payload.clone(),
        (*e.metadata).clone(),
    )
}

fn persistence_error(err: StorageError) -> PersistenceError {
    match err {
        StorageError::Unavailable(_) => PersistenceError::ConnectionError(Box::new(err)),
        StorageError::Backend(_) => PersistenceError::UnknownError(Box::new(err)),
    }
}

fn unsupported(what: &str) -> PersistenceError {
    PersistenceError::UnknownError(
        format!("{what} is not supported: tidings appends through its own appenders").into(),
    )
}

impl PersistedEventRepository for LogRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events_after(A::TYPE, aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events_after(A::TYPE, aggregate_id, last_sequence as i64)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        _events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        Err(unsupported("persisting through the loader"))
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let events = self.events_after(A::TYPE, aggregate_id, 0).await?;
        let (mut feed, stream) = ReplayStream::new(events.len().max(1));
        for event in events {
            // The channel holds them all, so pushing cannot block or fail.
            let _ = feed.push(Ok(event)).await;
        }
        Ok(stream)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(unsupported(
            "replaying every aggregate through cqrs-es (read the global log instead)",
        ))
    }
}
