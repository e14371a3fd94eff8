//! The projector engine: one task per projection that reads the log after the
//! projection's checkpoint, page by page, and applies each page.
//!
//! It wakes on the in-process append signal and polls as a fallback (writes
//! from other processes, or events held back behind a running transaction).
//! A page that fails is retried with exponential backoff; a failing event is
//! isolated by retrying one event at a time, logged with its position, and
//! never skipped.

use std::sync::atomic::{AtomicBool, Ordering};
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
    leader: Arc<AtomicBool>,
}

impl ProjectorHandle {
    pub fn new(
        name: &'static str,
        checkpoint: watch::Receiver<Position>,
        leader: Arc<AtomicBool>,
    ) -> Self {
        Self {
            name,
            checkpoint,
            leader,
        }
    }

    /// Whether this instance runs the projector now (always, without PostgreSQL).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

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
    let handle = ProjectorHandle::new(projection.name(), rx, Arc::new(AtomicBool::new(true)));
    let wake = signal.subscribe();
    let task = tokio::spawn(async move { run(projection, log, wake, config, shutdown, &tx).await });
    (handle, task)
}

/// Runs the projector until `shutdown` is true, then flushes and returns.
pub async fn run(
    projection: Arc<dyn Projection>,
    log: Arc<dyn EventLog>,
    mut wake: watch::Receiver<u64>,
    config: EngineConfig,
    mut shutdown: watch::Receiver<bool>,
    progress: &watch::Sender<Position>,
) {
    let name = projection.name();
    let mut backoff = Duration::from_millis(100);
    let mut checkpoint: Option<Position> = None;
    // After a failed page, go one event at a time up to its end, so the
    // failing event is the only one in its page and is named in the log.
    let mut narrow_until: Option<Position> = None;
    loop {
        let page_size = if narrow_until.is_some() {
            1
        } else {
            config.page_size
        };
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
            let last = page.last().map_or(cp, |e| e.position);
            let new_cp = projection.apply(cp, &page).await.inspect_err(|_| {
                narrow_until = Some(narrow_until.map_or(last, |n| n.max(last)));
            })?;
            checkpoint = Some(new_cp);
            progress.send_replace(new_cp);
            Ok(true)
        };
        match step.await {
            Ok(true) => {
                backoff = Duration::from_millis(100);
                if narrow_until.is_some_and(|n| checkpoint.is_some_and(|cp| cp >= n)) {
                    narrow_until = None;
                }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use cqrs_es::persist::SerializedEvent;

    use super::*;
    use crate::storage::memory::MemoryEventStore;
    use crate::storage::SharedEvent;

    /// Refuses the event at `poison` a few times, then takes it.
    struct Flaky {
        poison: Position,
        failures_left: AtomicU32,
        attempts_on_poison: AtomicU32,
        applied: Mutex<Vec<Position>>,
        checkpoint: Mutex<Position>,
    }

    #[async_trait]
    impl Projection for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn checkpoint(&self) -> Result<Position, ProjectionError> {
            Ok(*self.checkpoint.lock().unwrap())
        }

        async fn apply(
            &self,
            expected: Position,
            events: &[SharedEvent],
        ) -> Result<Position, ProjectionError> {
            assert_eq!(*self.checkpoint.lock().unwrap(), expected);
            if let Some(bad) = events.iter().find(|e| e.position == self.poison) {
                self.attempts_on_poison.fetch_add(1, Ordering::SeqCst);
                let left = self.failures_left.load(Ordering::SeqCst);
                if left > 0 {
                    self.failures_left.store(left - 1, Ordering::SeqCst);
                    return Err(ProjectionError::BadEvent {
                        position: bad.position,
                        event_type: bad.event_type.clone(),
                        aggregate_id: bad.aggregate_id.clone(),
                        reason: "not today".into(),
                    });
                }
            }
            let mut applied = self.applied.lock().unwrap();
            applied.extend(events.iter().map(|e| e.position));
            let last = events.last().map_or(expected, |e| e.position);
            *self.checkpoint.lock().unwrap() = last;
            Ok(last)
        }
    }

    fn event(stream: usize) -> SerializedEvent {
        SerializedEvent::new(
            format!("stream-{stream}"),
            1,
            "Test".into(),
            "Happened".into(),
            "1.0".into(),
            serde_json::json!({}),
            serde_json::json!({}),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_event_is_retried_with_backoff_and_never_skipped() {
        let signal = AppendSignal::default();
        let log = MemoryEventStore::new(signal.clone());
        for stream in 1..=5 {
            log.append(vec![event(stream)]).unwrap();
        }
        let flaky = Arc::new(Flaky {
            poison: Position::new(3, 3),
            failures_left: AtomicU32::new(3),
            attempts_on_poison: AtomicU32::new(0),
            applied: Mutex::default(),
            checkpoint: Mutex::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let (handle, task) = spawn(
            flaky.clone(),
            Arc::new(log),
            &signal,
            EngineConfig::default(),
            stopped,
        );
        assert!(
            handle
                .wait_for(Position::new(5, 5), Duration::from_secs(3600))
                .await
        );
        let applied = flaky.applied.lock().unwrap().clone();
        let expected: Vec<Position> = (1..=5).map(|n| Position::new(n, n)).collect();
        assert_eq!(applied, expected, "each event once, in order, none skipped");
        assert_eq!(flaky.attempts_on_poison.load(Ordering::SeqCst), 4);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn stopping_flushes_what_was_appended() {
        let signal = AppendSignal::default();
        let log = MemoryEventStore::new(signal.clone());
        let flaky = Arc::new(Flaky {
            poison: Position::new(-1, -1),
            failures_left: AtomicU32::new(0),
            attempts_on_poison: AtomicU32::new(0),
            applied: Mutex::default(),
            checkpoint: Mutex::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let config = EngineConfig {
            // Only the final flush can pick these up in time.
            poll_interval: Duration::from_secs(3600),
            ..EngineConfig::default()
        };
        let (_handle, task) = spawn(
            flaky.clone(),
            Arc::new(log.clone()),
            &AppendSignal::default(),
            config,
            stopped,
        );
        for stream in 1..=3 {
            log.append(vec![event(stream)]).unwrap();
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(flaky.applied.lock().unwrap().len(), 3);
    }
}
