//! Keeps this instance's router fed with the numbered updates, in order, with
//! none missing.
//!
//! Updates are offered by the local projector (right after its commit) and by
//! Redis (from the projector of another instance). An offer that arrives out
//! of order, or never arrives (Redis down, a full channel), is made up for
//! from the update log: the feed reads the missing numbers before going on,
//! and polls the log as a fallback. Offering never blocks the offerer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::router::Router;
use super::updates::{Announce, MemoryUpdateLog, NewUpdate, StreamUpdate, UpdateLog};
use crate::storage::{error_chain, StorageError};

/// Where offers go; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<Vec<Arc<StreamUpdate>>>,
}

impl Feed {
    /// Offers updates (in id order). Dropped when the feed is busy: the log
    /// has them, and the feed reads them from there.
    pub fn offer(&self, updates: Vec<Arc<StreamUpdate>>) {
        if !updates.is_empty() && self.tx.try_send(updates).is_err() {
            debug!("stream feed busy; the updates will be read from the log");
        }
    }
}

/// Starts the feed task. It begins after the log's newest update.
pub fn spawn(
    router: Arc<Router>,
    log: Arc<dyn UpdateLog>,
    poll: Duration,
    shutdown: watch::Receiver<bool>,
) -> (Feed, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(run(router, log, rx, poll, shutdown));
    (Feed { tx }, task)
}

struct Cursor {
    router: Arc<Router>,
    log: Arc<dyn UpdateLog>,
    last: i64,
}

impl Cursor {
    fn dispatch(&mut self, update: &Arc<StreamUpdate>) {
        self.router.dispatch(update);
        self.last = update.id;
    }

    /// Reads `last+1 ..= upto` from the log and dispatches it, as far as
    /// the log has it.
    async fn fill(&mut self, upto: i64) {
        let bounds = match self.log.bounds().await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %error_chain(&e), "reading missed updates failed; retrying later");
                return;
            }
        };
        if self.last + 1 < bounds.oldest {
            // Pruned from the log: nothing can bring these back; subscribers
            // that need them get `resync` when they reconnect.
            warn!(
                from = self.last + 1,
                to = bounds.oldest - 1,
                "updates no longer in the log; skipping them"
            );
            self.last = bounds.oldest - 1;
        }
        // Never beyond what the log holds: an offer from further ahead waits.
        let upto = upto.min(bounds.newest);
        while self.last < upto {
            let chunk_end = upto.min(self.last + 1000);
            match self.log.range(self.last, chunk_end).await {
                Ok(updates) => {
                    let before = self.last;
                    for u in &updates {
                        if u.id == self.last + 1 {
                            self.dispatch(u);
                        }
                    }
                    if self.last == before {
                        return; // not readable yet; the next poll goes on
                    }
                }
                Err(e) => {
                    warn!(error = %error_chain(&e), "reading missed updates failed; retrying later");
                    return;
                }
            }
        }
    }

    async fn offer(&mut self, updates: Vec<Arc<StreamUpdate>>) {
        for u in updates {
            if u.id <= self.last {
                continue;
            }
            if u.id > self.last + 1 {
                self.fill(u.id - 1).await;
                if self.last != u.id - 1 {
                    return; // still missing some; the next poll goes on
                }
            }
            self.dispatch(&u);
        }
    }

    async fn poll(&mut self) {
        match self.log.bounds().await {
            Ok(bounds) if bounds.newest > self.last => self.fill(bounds.newest).await,
            Ok(_) => {}
            Err(e) => warn!(error = %error_chain(&e), "stream feed cannot read the update log"),
        }
    }
}

async fn run(
    router: Arc<Router>,
    log: Arc<dyn UpdateLog>,
    mut offers: mpsc::Receiver<Vec<Arc<StreamUpdate>>>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let start = loop {
        match log.bounds().await {
            Ok(bounds) => break bounds.newest,
            Err(e) => {
                warn!(error = %error_chain(&e), "stream feed cannot read the update log; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    router.start_at(start);
    let mut cursor = Cursor {
        router,
        log,
        last: start,
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            offer = offers.recv() => match offer {
                Some(updates) => cursor.offer(updates).await,
                None => return,
            },
            _ = tick.tick() => cursor.poll().await,
            res = shutdown.changed() => {
                if res.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Announces into the in-memory update log and this instance's feed.
pub struct MemoryAnnounce {
    pub log: Arc<MemoryUpdateLog>,
    pub feed: Feed,
}

#[async_trait::async_trait]
impl Announce for MemoryAnnounce {
    async fn announce(&self, update: NewUpdate) -> Result<(), StorageError> {
        self.feed.offer(self.log.append(vec![update]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Position;
    use crate::streams::updates::{MemoryUpdateLog, NewUpdate};

    fn new(topic: &str) -> NewUpdate {
        NewUpdate {
            topic: topic.into(),
            kind: "changed",
            data: Arc::from("{}"),
            position: Position::START,
        }
    }

    #[tokio::test]
    async fn offers_that_skip_numbers_are_completed_from_the_log() {
        let log = Arc::new(MemoryUpdateLog::new(100));
        let router = Arc::new(Router::new(100));
        let (_stop, stopped) = watch::channel(false);
        let (feed, _task) = spawn(
            router.clone(),
            log.clone(),
            Duration::from_secs(3600),
            stopped,
        );
        let mut sub = router.connect();
        tokio::task::yield_now().await;
        router.subscribe(sub.id, &["t".into()]);
        let numbered = log.append((0..5).map(|_| new("t")).collect());
        // Only the last two are offered; 1..=3 must come from the log, in order.
        feed.offer(numbered[3..].to_vec());
        for id in 1..=5 {
            assert_eq!(sub.updates.recv().await.unwrap().id, id);
        }
    }
}
