//! Projections fold the global log into read models. Each one keeps its own
//! checkpoint, committed together with its read-model changes, and is driven by
//! the projector engine.

pub mod analytics;
pub mod batches;
pub mod engine;
pub mod inbox;
pub mod leader;
pub mod outcome_results;
pub mod outcomes;
pub mod parked;
pub mod rebuild;
pub mod registry;
pub mod sends;
pub mod store;
pub mod topics;

use async_trait::async_trait;

use crate::storage::{Position, SharedEvent, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// One event could not be applied; the engine retries it, then parks it.
    #[error("event at {position} ({event_type} of {aggregate_id}) could not be applied: {reason}")]
    BadEvent {
        position: Position,
        event_type: String,
        aggregate_id: String,
        reason: String,
    },
    /// Someone else moved the checkpoint (another projector instance): reload it.
    #[error("the checkpoint moved from {expected} under this projector")]
    CheckpointMoved { expected: Position },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<tokio_postgres::Error> for ProjectionError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Storage(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for ProjectionError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Storage(err.into())
    }
}

/// A read model fed from the global log.
#[async_trait]
pub trait Projection: Send + Sync {
    fn name(&self) -> &'static str;

    /// The position of the last event applied (START for a fresh read model).
    async fn checkpoint(&self) -> Result<Position, ProjectionError>;

    /// Applies a page of events (in commit order, all after `expected`) and moves
    /// the checkpoint to the last one, atomically. Returns the new checkpoint.
    async fn apply(
        &self,
        expected: Position,
        events: &[SharedEvent],
    ) -> Result<Position, ProjectionError>;

    /// Parks `event` (the next one after `expected`) as one this projection
    /// cannot apply, with why and after how many tries, and moves the
    /// checkpoint to it, atomically. Returns the new checkpoint.
    async fn park(
        &self,
        expected: Position,
        event: &SharedEvent,
        error: &str,
        attempts: u32,
    ) -> Result<Position, ProjectionError>;
}
