//! The projector engine: one task per projection that reads the log after the
//! projection's checkpoint, page by page, and applies each page.
//!
//! It wakes on the in-process append signal and polls as a fallback (writes
//! from other processes, or events held back behind a running transaction).
//!
//! Failures, two kinds:
//! - an event the projection refuses (`BadEvent`): the events before it are
//!   applied as a page of their own, then it is retried alone with exponential
//!   backoff; after `max_attempts` it is parked with its error and the
//!   projector moves on (see `parked`);
//! - anything else (the database is down, say): the page is retried with
//!   backoff for as long as it takes, narrowed to one event at a time so a
//!   failing event is named in the log. Nothing is ever parked for an outage.

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
    /// Tries of an event the projection refuses before it is parked.
    pub max_attempts: u32,
    /// After waking on an append, wait this long before reading: the
    /// appends of that window become one page (one transaction) rather than
    /// a page each. For read models that need not be fresh to the
    /// millisecond (analytics, the schedule); zero for the inbox.
    pub settle: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            page_size: 500,
            poll_interval: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_attempts: 5,
            settle: Duration::ZERO,
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

    /// The checkpoint as it moves.
    pub fn watch(&self) -> watch::Receiver<Position> {
        self.checkpoint.clone()
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

/// How long a stopping projector waits for committed events that the log
/// does not hand out yet (see `run`).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// An event the projection refused: where, how often, and why (last time).
struct Failing {
    position: Position,
    attempts: u32,
    reason: String,
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
    // After a failed page (not a refused event), go one event at a time up to
    // its end, so the failing event is the only one in its page.
    let mut narrow_until: Option<Position> = None;
    let mut failing: Option<Failing> = None;
    let mut flush_deadline: Option<tokio::time::Instant> = None;
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
            let mut page = log.read_after(cp, page_size).await?;
            if page.is_empty() {
                return Ok::<bool, ProjectionError>(false);
            }
            if let Some(bad) = &failing {
                match page.iter().position(|e| e.position >= bad.position) {
                    // The events before the refused one go first, as a page.
                    Some(i) if i > 0 => page.truncate(i),
                    Some(_) if page[0].position == bad.position => {
                        page.truncate(1);
                        if bad.attempts >= config.max_attempts {
                            let event = &page[0];
                            let new_cp = projection
                                .park(cp, event, &bad.reason, bad.attempts)
                                .await?;
                            warn!(
                                projection = name,
                                position = %event.position,
                                cursor = %event.position.to_cursor(),
                                event_type = %event.event_type,
                                aggregate_id = %event.aggregate_id,
                                attempts = bad.attempts,
                                error = %bad.reason,
                                "event parked; the projector goes on"
                            );
                            failing = None;
                            checkpoint = Some(new_cp);
                            progress.send_replace(new_cp);
                            return Ok(true);
                        }
                    }
                    // Someone else got past it (another instance): forget it.
                    _ => failing = None,
                }
            }
            let last = page.last().map_or(cp, |e| e.position);
            let new_cp = projection.apply(cp, &page).await.inspect_err(|e| match e {
                ProjectionError::BadEvent {
                    position, reason, ..
                } => {
                    let attempts = match &failing {
                        Some(f) if f.position == *position => f.attempts + 1,
                        _ => 1,
                    };
                    failing = Some(Failing {
                        position: *position,
                        attempts,
                        reason: reason.clone(),
                    });
                }
                ProjectionError::CheckpointMoved { .. } => {}
                ProjectionError::Storage(_) => {
                    narrow_until = Some(narrow_until.map_or(last, |n| n.max(last)));
                }
            })?;
            if failing.as_ref().is_some_and(|f| f.position <= new_cp) {
                failing = None; // it applied after all
            }
            checkpoint = Some(new_cp);
            progress.send_replace(new_cp);
            Ok(true)
        };
        match step.await {
            Ok(true) => {
                if failing.is_none() {
                    backoff = Duration::from_millis(100);
                }
                if narrow_until.is_some_and(|n| checkpoint.is_some_and(|cp| cp >= n)) {
                    narrow_until = None;
                }
            }
            Ok(false) => {
                if stopping {
                    // An empty page can still leave committed events behind:
                    // the log hands out nothing above the cluster's oldest
                    // running transaction, which may be anyone's. Give that
                    // transaction a moment to end.
                    let cp = checkpoint.unwrap_or_default();
                    let deadline = *flush_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_WAIT);
                    let behind = log.behind(cp).await.map_or(0, |(n, _)| n);
                    if behind > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    if behind > 0 {
                        warn!(projection = name, checkpoint = %cp, behind, "projector stopped with committed events not applied yet (held back by a transaction elsewhere); the next start applies them");
                    } else {
                        info!(projection = name, checkpoint = %cp, "projector flushed and stopped");
                    }
                    return;
                }
                tokio::select! {
                    _ = wake.changed() => {
                        if !config.settle.is_zero() {
                            tokio::select! {
                                _ = tokio::time::sleep(config.settle) => {}
                                res = shutdown.changed() => if res.is_err() { return },
                            }
                        }
                    }
                    _ = tokio::time::sleep(config.poll_interval) => {}
                    res = shutdown.changed() => if res.is_err() { return },
                }
            }
            Err(ProjectionError::CheckpointMoved { expected }) => {
                warn!(projection = name, %expected, "checkpoint moved elsewhere; reloading it");
                checkpoint = None;
            }
            Err(err) => {
                let attempts = failing.as_ref().map_or(0, |f| f.attempts);
                error!(projection = name, error = %error_chain(&err), attempts, retry_in_ms = backoff.as_millis() as u64, "projection failed; retrying");
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
    use crate::storage::{SharedEvent, StorageError};

    /// Refuses the event at `poison` a number of times, then takes it; can
    /// also fail like an unreachable database a number of times first.
    struct Flaky {
        poison: Position,
        failures_left: AtomicU32,
        storage_failures_left: AtomicU32,
        /// When each try of the poison event happened.
        tries: Mutex<Vec<tokio::time::Instant>>,
        /// The pages applied, in order.
        pages: Mutex<Vec<Vec<i64>>>,
        parked: Mutex<Vec<(i64, String, u32)>>,
        checkpoint: Mutex<Position>,
    }

    impl Flaky {
        fn new(poison: i64, failures: u32, storage_failures: u32) -> Arc<Self> {
            Arc::new(Self {
                poison: Position::new(poison, poison),
                failures_left: AtomicU32::new(failures),
                storage_failures_left: AtomicU32::new(storage_failures),
                tries: Mutex::default(),
                pages: Mutex::default(),
                parked: Mutex::default(),
                checkpoint: Mutex::default(),
            })
        }

        fn applied(&self) -> Vec<i64> {
            self.pages.lock().unwrap().concat()
        }

        /// Milliseconds between consecutive tries of the poison event.
        fn gaps_ms(&self) -> Vec<u128> {
            let tries = self.tries.lock().unwrap();
            tries
                .windows(2)
                .map(|w| (w[1] - w[0]).as_millis())
                .collect()
        }
    }

    fn take_one(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
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
            if take_one(&self.storage_failures_left) {
                return Err(StorageError::Unavailable("connection refused".into()).into());
            }
            if let Some(bad) = events.iter().find(|e| e.position == self.poison) {
                self.tries.lock().unwrap().push(tokio::time::Instant::now());
                if take_one(&self.failures_left) {
                    return Err(ProjectionError::BadEvent {
                        position: bad.position,
                        event_type: bad.event_type.clone(),
                        aggregate_id: bad.aggregate_id.clone(),
                        reason: "not today".into(),
                    });
                }
            }
            self.pages
                .lock()
                .unwrap()
                .push(events.iter().map(|e| e.position.seq).collect());
            let last = events.last().map_or(expected, |e| e.position);
            *self.checkpoint.lock().unwrap() = last;
            Ok(last)
        }

        async fn park(
            &self,
            expected: Position,
            event: &SharedEvent,
            error: &str,
            attempts: u32,
        ) -> Result<Position, ProjectionError> {
            assert_eq!(*self.checkpoint.lock().unwrap(), expected);
            self.parked
                .lock()
                .unwrap()
                .push((event.position.seq, error.to_owned(), attempts));
            *self.checkpoint.lock().unwrap() = event.position;
            Ok(event.position)
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

    /// Runs `projection` over `events` events until it has passed them all.
    async fn run_over(projection: Arc<Flaky>, events: usize, config: EngineConfig) {
        let signal = AppendSignal::default();
        let log = MemoryEventStore::new(signal.clone());
        for stream in 1..=events {
            log.append(vec![event(stream)]).unwrap();
        }
        let (stop, stopped) = watch::channel(false);
        let (handle, task) = spawn(projection, Arc::new(log), &signal, config, stopped);
        let end = Position::new(events as i64, events as i64);
        assert!(handle.wait_for(end, Duration::from_secs(3600)).await);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_event_that_recovers_within_the_attempts_is_applied_in_order() {
        let flaky = Flaky::new(3, 3, 0);
        run_over(flaky.clone(), 5, EngineConfig::default()).await;
        assert_eq!(
            flaky.applied(),
            [1, 2, 3, 4, 5],
            "each event once, in order"
        );
        assert_eq!(flaky.tries.lock().unwrap().len(), 4);
        assert!(flaky.parked.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_refused_every_time_is_parked_after_the_last_attempt_and_the_rest_applies() {
        let flaky = Flaky::new(3, u32::MAX, 0);
        run_over(flaky.clone(), 6, EngineConfig::default()).await;
        assert_eq!(
            *flaky.pages.lock().unwrap(),
            [vec![1, 2], vec![4, 5, 6]],
            "the events before it as one page, the rest after it"
        );
        assert_eq!(
            *flaky.parked.lock().unwrap(),
            [(3, "not today".to_owned(), 5)]
        );
        assert_eq!(
            flaky.tries.lock().unwrap().len(),
            5,
            "tried max_attempts times"
        );
        assert_eq!(flaky.gaps_ms(), [100, 200, 400, 800], "exponential backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn storage_errors_are_retried_until_they_pass_and_never_park_anything() {
        let flaky = Flaky::new(-1, 0, 20);
        let config = EngineConfig {
            max_backoff: Duration::from_secs(2),
            ..EngineConfig::default()
        };
        run_over(flaky.clone(), 4, config).await;
        assert_eq!(flaky.applied(), [1, 2, 3, 4]);
        assert!(flaky.parked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn stopping_flushes_what_was_appended() {
        let signal = AppendSignal::default();
        let log = MemoryEventStore::new(signal.clone());
        let flaky = Flaky::new(-1, 0, 0);
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
        assert_eq!(flaky.applied().len(), 3);
    }
}
