//! The projector engine: one task per projection that reads the log after the
//! projection's checkpoint, page by page, and applies each page.
//!
//! It wakes on the in-process append signal and polls as a fallback (writes
//! from other processes, or events held back behind a running transaction).
//! A page that fails is retried with exponential backoff; a failing event is
//! isolated by retrying one event at a time, logged with its position, and
//! never skipped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{Projection, ProjectionError};
use crate::storage::{error_chain, AppendSignal, EventLog, Position};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub page_size: usize,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            page_size: 500,
            poll_interval: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Follows one projector's progress: queries wait on it to read their writes.
#[derive(Clone)]
pub struct ProjectorHandle {
    pub name: &'static str,
    checkpoint: watch::Receiver<Position>,
}

impl ProjectorHandle {
    pub fn checkpoint(&self) -> Position {
        *self.checkpoint.borrow()
    }

    /// Waits until the projection has applied `position`, up to `timeout`.
    /// Returns false on timeout.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut rx = self.checkpoint.clone();
        tokio::time::timeout(timeout, rx.wait_for(|cp| *cp >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Runs `projection` until `shutdown` flips to true, then catches up with
/// everything committed so far (a flush) and returns.
pub fn spawn(
    projection: Arc<dyn Projection>,
    log: Arc<dyn EventLog>,
    signal: &AppendSignal,
    config: EngineConfig,
    shutdown: watch::Receiver<bool>,
) -> (ProjectorHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Position::START);
    let handle = ProjectorHandle {
        name: projection.name(),
        checkpoint: rx,
    };
    let wake = signal.subscribe();
    let task = tokio::spawn(run(projection, log, wake, config, shutdown, tx));
    (handle, task)
}

async fn run(
    projection: Arc<dyn Projection>,
    log: Arc<dyn EventLog>,
    mut wake: watch::Receiver<u64>,
    config: EngineConfig,
    mut shutdown: watch::Receiver<bool>,
    progress: watch::Sender<Position>,
) {
    let name = projection.name();
    let mut backoff = Duration::from_millis(100);
    let mut checkpoint: Option<Position> = None;
    let mut page_size = config.page_size;
    loop {
        let stopping = *shutdown.borrow();
        let step = async {
            let cp = match checkpoint {
                Some(cp) => cp,
                None => projection.checkpoint().await?,
            };
            checkpoint = Some(cp);
            progress.send_replace(cp);
            let page = log.read_after(cp, page_size).await?;
            if page.is_empty() {
                return Ok::<bool, ProjectionError>(false);
            }
            let new_cp = projection.apply(cp, &page).await.inspect_err(|_| {
                if page.len() > 1 {
                    // Narrow down: the next attempts go one event at a time.
                    page_size = 1;
                }
            })?;
            checkpoint = Some(new_cp);
            progress.send_replace(new_cp);
            Ok(true)
        };
        match step.await {
            Ok(true) => {
                backoff = Duration::from_millis(100);
                page_size = config.page_size;
            }
            Ok(false) => {
                if stopping {
                    info!(projection = name, checkpoint = %checkpoint.unwrap_or_default(), "projector flushed and stopped");
                    return;
                }
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(config.poll_interval) => {}
                    res = shutdown.changed() => if res.is_err() { return },
                }
            }
            Err(ProjectionError::CheckpointMoved { expected }) => {
                warn!(projection = name, %expected, "checkpoint moved elsewhere; reloading it");
                checkpoint = None;
            }
            Err(err) => {
                error!(projection = name, error = %error_chain(&err), retry_in_ms = backoff.as_millis() as u64, "projection failed; retrying");
                if stopping {
                    // Shutting down while failing: what is applied is committed
                    // with its checkpoint; the next start resumes from there.
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    res = shutdown.changed() => if res.is_err() { return },
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}
