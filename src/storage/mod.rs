//! Pluggable storage: the event log (written through cqrs-es, read in global
//! commit order by projectors) and the signal that wakes projectors.
//!
//! Two backends: `memory` (the default, nothing kept after exit) and
//! `postgres` (events through postgres-es, read models through deadpool-postgres).

pub mod error;
pub mod memory;
pub mod position;
pub mod postgres;
pub mod repository;
pub mod upcast;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub use error::{error_chain, Cause, StorageError};
pub use position::{CursorError, Position};

/// One committed event as the global log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position within its own stream, from 1.
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    /// Shared: the events of one command carry the same metadata.
    pub metadata: Arc<serde_json::Value>,
    pub recorded_at: DateTime<Utc>,
    /// Set when the stored payload or metadata cannot be read back (JSON
    /// nested deeper than the parser follows, a number it cannot hold):
    /// `payload` and `metadata` are then null. Every reader treats such an
    /// event as one it cannot apply, never as an outage.
    pub unreadable: Option<Arc<Unreadable>>,
}

/// Why a stored event cannot be read, and what it holds as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Which column, and the parser's words.
    pub error: String,
    /// The payload and metadata as stored (JSON text), so an export can
    /// carry the event unchanged.
    pub payload: String,
    pub metadata: String,
}

impl LoggedEvent {
    /// The payload as the current shape of `E` (upcast from an older event
    /// version when there is an upcaster); why not, in words, otherwise.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, String> {
        if let Some(unreadable) = &self.unreadable {
            return Err(unreadable.error.clone());
        }
        upcast::decode_payload(&self.event_type, &self.event_version, &self.payload)
    }
}

/// Events are read once and shared by every projection that gets them.
pub type SharedEvent = Arc<LoggedEvent>;

/// Reads the global log in commit order.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Up to `limit` committed events after `after`, in commit order. Never
    /// returns an event while an earlier-committing one could still appear.
    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// Where event `sequence` of stream `aggregate_id` sits in the global log.
    async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<Position>, StorageError>;

    /// Events of one stream after sequence `after`, in sequence order.
    async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// The events of the notifications created for `recipient`, up to
    /// `until` (inclusive) and recorded no later than `recorded_by`, in
    /// commit order: what time travel folds. At most `limit + 1`, so the
    /// caller can tell that there were more than `limit`.
    async fn recipient_history(
        &self,
        recipient: &str,
        until: Position,
        recorded_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// Every event of the streams `aggregate_ids` (of `aggregate_type`), in
    /// stream order, one stream after another: many aggregates loaded in one
    /// read.
    async fn streams(
        &self,
        aggregate_type: &str,
        aggregate_ids: &[String],
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// The last event of each of `event_types` in each stream of
    /// `aggregate_type`: the streams `aggregate_ids`, or every stream when
    /// None (at most `limit` events then); stream after stream, each in
    /// sequence order. What a state its last events make whole
    /// (`domain::superseding`) is read from, in a few events per stream.
    /// Not for notification streams (`NOT_LATEST`), which the index behind
    /// it leaves out: asking for them is refused.
    async fn latest(
        &self,
        aggregate_type: &str,
        aggregate_ids: Option<&[String]>,
        event_types: &[&str],
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// The events of each stream `aggregate_ids` (of `aggregate_type`) from
    /// its last event of type `resume_at` on (the whole stream when it has
    /// none), stream after stream, each in sequence order: a stream whose
    /// state such an event starts afresh, loaded without its history. Not
    /// for notification streams (`NOT_LATEST`).
    async fn streams_since(
        &self,
        aggregate_type: &str,
        aggregate_ids: &[String],
        resume_at: &str,
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// Every event of every stream of `aggregate_type`, stream after stream
    /// (each in sequence order), at most `limit`: for aggregates that are
    /// few and read whole (API keys).
    async fn of_type(
        &self,
        aggregate_type: &str,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// How far a reader at `after` is behind: events after it, and when the
    /// oldest of them was recorded.
    async fn behind(&self, after: Position) -> Result<(u64, Option<DateTime<Utc>>), StorageError>;

    /// Whether the log holds an event at `position` or after it: a position
    /// past the end is one no command has answered with.
    async fn reaches(&self, position: Position) -> Result<bool, StorageError>;

    /// A cheap round trip proving the store answers.
    async fn ping(&self) -> Result<(), StorageError>;
}

/// The aggregate type `EventLog::latest` refuses (migrations/0012).
pub const NOT_LATEST: &str = "Notification";

fn refuse_latest(aggregate_type: &str) -> Result<(), StorageError> {
    if aggregate_type == NOT_LATEST {
        return Err(StorageError::Backend(
            format!("{NOT_LATEST} streams are not read by their last events").into(),
        ));
    }
    Ok(())
}

/// Tells projectors in this process that events were appended. A counter in a
/// watch channel: many listeners, never blocks the writer, and a listener that
/// was busy still sees that something changed.
#[derive(Clone)]
pub struct AppendSignal(Arc<watch::Sender<u64>>);

impl Default for AppendSignal {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl AppendSignal {
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
