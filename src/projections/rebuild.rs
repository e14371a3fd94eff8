//! Rebuilding a projection without downtime.
//!
//! The new version is built beside the live one from the whole log, without
//! announcing stream updates (the live version already did). When it has
//! caught up, the live projector is paused for the last few events, the new
//! version catches up to exactly the live checkpoint, and reads switch to it
//! in one step; the old version is dropped. The service answers throughout:
//! reads use the old version until the switch, commands never wait.

use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;

use super::ProjectionError;
use crate::storage::EventLog;

/// Events read per page while building (memory) and catching up (both).
pub const BUILD_PAGE: usize = 2_500;

/// How a PostgreSQL rebuild reads and caches (`--rebuild-page-size`,
/// `--rebuild-cache-rows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildTuning {
    /// Events read per statement while building.
    pub page_size: usize,
    /// Rows held in memory while building; more are written out, least
    /// recently touched first (about 0.5 KiB each).
    pub cache_rows: usize,
}

impl Default for RebuildTuning {
    fn default() -> Self {
        Self {
            page_size: 10_000,
            cache_rows: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildState {
    Building,
    Switching,
    Done,
    Failed(String),
}

/// How a rebuild on this instance is going.
#[derive(Debug, Clone)]
pub struct RebuildStatus {
    pub projection: &'static str,
    /// The version being built.
    pub version: u32,
    pub done: u64,
    /// Events in the log when the rebuild started.
    pub total: u64,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub state: RebuildState,
}

impl RebuildStatus {
    /// Events per second so far.
    pub fn rate(&self) -> f64 {
        let end = self.finished.unwrap_or_else(Instant::now);
        let secs = end.duration_since(self.started).as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// Seconds left at the current rate, while building.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.rate();
        (self.state == RebuildState::Building && rate > 0.0)
            .then(|| self.total.saturating_sub(self.done) as f64 / rate)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a rebuild of {0} is already running")]
pub struct AlreadyRebuilding(pub &'static str);

/// The latest rebuild on this instance, for status queries and progress bars.
#[derive(Default)]
pub struct Rebuilds {
    current: Mutex<Option<RebuildStatus>>,
}

impl Rebuilds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<RebuildStatus>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the slot; refused while another rebuild runs here.
    pub fn begin(&self, projection: &'static str) -> Result<(), AlreadyRebuilding> {
        let mut current = self.lock();
        if current
            .as_ref()
            .is_some_and(|s| matches!(s.state, RebuildState::Building | RebuildState::Switching))
        {
            return Err(AlreadyRebuilding(projection));
        }
        *current = Some(RebuildStatus {
            projection,
            version: 0,
            done: 0,
            total: 0,
            started: Instant::now(),
            finished: None,
            state: RebuildState::Building,
        });
        Ok(())
    }

    pub fn plan(&self, version: u32, total: u64) {
        if let Some(s) = self.lock().as_mut() {
            s.version = version;
            s.total = total;
        }
    }

    pub fn advance(&self, events: u64) {
        if let Some(s) = self.lock().as_mut() {
            s.done += events;
        }
    }

    pub fn set_state(&self, state: RebuildState) {
        if let Some(s) = self.lock().as_mut() {
            if matches!(state, RebuildState::Done | RebuildState::Failed(_)) {
                s.finished = Some(Instant::now());
            }
            s.state = state;
        }
    }

    pub fn snapshot(&self) -> Option<RebuildStatus> {
        self.lock().clone()
    }
}

/// A projection that can build a new version of itself beside the live one.
#[async_trait]
pub trait Rebuildable: Send + Sync {
    /// The live version.
    async fn version(&self) -> Result<u32, ProjectionError>;

    /// Builds the next version from the whole log and switches reads to it;
    /// returns the new version. Progress goes to `progress` (already begun).
    async fn rebuild(
        &self,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError>;
}

/// Runs a rebuild, recording how it ended.
pub async fn run(
    target: &dyn Rebuildable,
    log: &dyn EventLog,
    progress: &Rebuilds,
) -> Result<u32, ProjectionError> {
    let result = target.rebuild(log, progress).await;
    match &result {
        Ok(_) => progress.set_state(RebuildState::Done),
        Err(e) => progress.set_state(RebuildState::Failed(crate::storage::error_chain(e))),
    }
    result
}
