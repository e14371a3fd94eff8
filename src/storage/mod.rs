//! Pluggable storage: the event log (written through cqrs-es, read in global
//! commit order by projectors) and the signal that wakes projectors.
//!
//! Two backends: `memory` (the default, nothing kept after exit) and
//! `postgres` (events through postgres-es, read models through deadpool-postgres).

pub mod memory;
pub mod position;
pub mod postgres;
pub mod upcast;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

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
}

/// Events are read once and shared by every projection that gets them.
pub type SharedEvent = Arc<LoggedEvent>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend cannot be reached (connection refused, pool timed out).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend said.
    #[error("storage error: {0}")]
    Backend(String),
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(err: tokio_postgres::Error) -> Self {
        if err.is_closed() || err.as_db_error().is_none() {
            Self::Unavailable(error_chain(&err))
        } else {
            Self::Backend(error_chain(&err))
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(error_chain(&err))
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Database(_) => Self::Backend(error_chain(&err)),
            _ => Self::Unavailable(error_chain(&err)),
        }
    }
}

/// "error: cause: cause" in one line, for logs and opaque wrappers.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

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

    /// Every event of the notifications created for `recipient`, up to
    /// `until` (inclusive) and recorded no later than `recorded_by`, in
    /// commit order: what time travel folds.
    async fn recipient_history(
        &self,
        recipient: &str,
        until: Position,
        recorded_by: DateTime<Utc>,
    ) -> Result<Vec<SharedEvent>, StorageError>;

    /// How far a reader at `after` is behind: events after it, and when the
    /// oldest of them was recorded.
    async fn behind(&self, after: Position) -> Result<(u64, Option<DateTime<Utc>>), StorageError>;

    /// A cheap round trip proving the store answers.
    async fn ping(&self) -> Result<(), StorageError>;
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
