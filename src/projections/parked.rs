//! Poison events: what a projection could not apply, parked so that the
//! projector goes on.
//!
//! The projector retries an event the projection refuses, with backoff, up to
//! `--projector-max-attempts`; then it parks the event (with the error) and
//! moves past it. Later events of the same notification are parked behind it
//! ("held"), so a notification's events are never applied out of order; other
//! notifications are not held up.
//!
//! An operator can *re-drive* parked events (after deploying a fix: they are
//! read from the log again, through the current upcasters) or *skip* one (the
//! projection gives up on that event for good; the events held behind it are
//! re-driven at once). Skips are recorded and honoured by rebuilds. Re-drives
//! and skips wait for the live projector's current page and never run during a
//! rebuild.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::ProjectionError;
use crate::storage::{EventLog, Position};

/// One parked event.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position within its own stream.
    pub sequence: i64,
    pub event_type: String,
    /// Why the projection refused it.
    pub error: String,
    /// How often applying it was tried (0 for an event held behind another).
    pub attempts: u32,
    /// The parked event of the same stream this one waits behind; None when
    /// this event failed itself.
    pub held_behind: Option<Position>,
    pub parked_at: DateTime<Utc>,
    pub last_attempt_at: DateTime<Utc>,
}

/// What a re-drive or skip did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Parked events now applied.
    pub applied: u64,
    /// Parked events left (they were refused again, or wait behind one that was).
    pub still_parked: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ParkingError {
    #[error("no event is parked at {}", .0.to_cursor())]
    NotParked(Position),
    #[error(
        "a rebuild (or another re-drive or skip) of {0} is running; try again once it has finished"
    )]
    Busy(&'static str),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

impl From<crate::storage::StorageError> for ParkingError {
    fn from(err: crate::storage::StorageError) -> Self {
        Self::Projection(err.into())
    }
}

impl From<tokio_postgres::Error> for ParkingError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Projection(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for ParkingError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Projection(err.into())
    }
}

/// A projection's parked events.
#[async_trait]
pub trait Parking: Send + Sync {
    /// Parked events after `after`, in log order, at most `limit`.
    async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, ProjectionError>;

    async fn parked_count(&self) -> Result<u64, ProjectionError>;

    /// The positions of the events given up on for good.
    async fn skipped(&self) -> Result<BTreeSet<Position>, ProjectionError>;

    /// Tries every parked event again, each notification's in order.
    async fn redrive(&self, log: &dyn EventLog) -> Result<RedriveReport, ParkingError>;

    /// Gives up on the parked event at `position` for good (recorded, so a
    /// rebuild passes it over too) and re-drives what was held behind it.
    /// `by` says who asked (a request id), for the record.
    async fn skip(
        &self,
        log: &dyn EventLog,
        position: Position,
        by: &str,
    ) -> Result<RedriveReport, ParkingError>;
}
