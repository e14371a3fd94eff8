//! Routes each update to the connections subscribed to its topic.
//!
//! Every connection has a bounded queue. Delivery never waits: when a queue is
//! full its connection is marked slow and unregistered, so one slow reader
//! neither blocks the others nor makes memory grow; the connection then tells
//! its client to resync and closes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::updates::StreamUpdate;

pub type ConnId = u64;

/// A connection's end of its queue.
pub struct Subscription {
    pub id: ConnId,
    pub updates: mpsc::Receiver<Arc<StreamUpdate>>,
    /// Set when the router dropped the connection for being slow.
    pub slow: Arc<AtomicBool>,
}

struct Conn {
    tx: mpsc::Sender<Arc<StreamUpdate>>,
    slow: Arc<AtomicBool>,
    topics: HashSet<String>,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    by_topic: HashMap<String, HashSet<ConnId>>,
    /// The last update id handed to `dispatch`.
    last: i64,
}

impl State {
    fn drop_conn(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id) {
            for topic in &conn.topics {
                if let Some(set) = self.by_topic.get_mut(topic) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_topic.remove(topic);
                    }
                }
            }
        }
    }
}

pub struct Router {
    state: Mutex<State>,
    next_id: AtomicU64,
    queue: usize,
    delivered: AtomicU64,
    /// The same, and connections dropped for being slow, in the metrics.
    delivered_metric: metrics::Counter,
    dropped_metric: metrics::Counter,
}

impl Router {
    /// `queue`: updates a connection may have waiting before it counts as slow.
    pub fn new(queue: usize) -> Self {
        Self {
            state: Mutex::default(),
            next_id: AtomicU64::new(1),
            queue: queue.max(1),
            delivered: AtomicU64::new(0),
            delivered_metric: metrics::counter!("tidings_stream_deliveries_total"),
            dropped_metric: metrics::counter!("tidings_stream_slow_consumers_dropped_total"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change under this lock is a whole insert or remove.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection with no topics yet.
    pub fn connect(&self) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let slow = Arc::new(AtomicBool::new(false));
        self.lock().conns.insert(
            id,
            Conn {
                tx,
                slow: slow.clone(),
                topics: HashSet::new(),
            },
        );
        Subscription {
            id,
            updates: rx,
            slow,
        }
    }

    /// Adds topics; returns the id of the last update dispatched before they
    /// took effect (every later update of these topics reaches the queue).
    /// None when the connection was already dropped.
    pub fn subscribe(&self, id: ConnId, topics: &[String]) -> Option<i64> {
        let mut state = self.lock();
        let conn = state.conns.get_mut(&id)?;
        conn.topics.extend(topics.iter().cloned());
        for topic in topics {
            state.by_topic.entry(topic.clone()).or_default().insert(id);
        }
        Some(state.last)
    }

    pub fn unsubscribe(&self, id: ConnId, topics: &[String]) {
        let mut state = self.lock();
        if let Some(conn) = state.conns.get_mut(&id) {
            for topic in topics {
                conn.topics.remove(topic);
            }
        }
        for topic in topics {
            if let Some(set) = state.by_topic.get_mut(topic) {
                set.remove(&id);
                if set.is_empty() {
                    state.by_topic.remove(topic);
                }
            }
        }
    }

    pub fn disconnect(&self, id: ConnId) {
        self.lock().drop_conn(id);
    }

    /// Hands one update to every queue of its topic. Updates must come in id order.
    pub fn dispatch(&self, update: &Arc<StreamUpdate>) {
        let mut state = self.lock();
        state.last = update.id;
        let Some(ids) = state.by_topic.get(&update.topic) else {
            return;
        };
        let mut slow = Vec::new();
        let mut delivered = 0;
        for id in ids {
            if let Some(conn) = state.conns.get(id) {
                match conn.tx.try_send(update.clone()) {
                    Ok(()) => delivered += 1,
                    Err(_) => slow.push(*id),
                }
            }
        }
        self.dropped_metric.increment(slow.len() as u64);
        for id in slow {
            if let Some(conn) = state.conns.get(&id) {
                conn.slow.store(true, Ordering::Release);
            }
            // Dropping the sender ends the connection's queue.
            state.drop_conn(id);
        }
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.delivered_metric.increment(delivered);
    }

    /// The last update id dispatched.
    pub fn last_dispatched(&self) -> i64 {
        self.lock().last
    }

    /// Sets where dispatching starts (the log's newest id at start-up).
    pub fn start_at(&self, id: i64) {
        let mut state = self.lock();
        state.last = state.last.max(id);
    }

    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Updates put on connection queues since start.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Position;

    fn update(id: i64, topic: &str) -> Arc<StreamUpdate> {
        Arc::new(StreamUpdate::new(
            id,
            topic.into(),
            "changed".into(),
            Arc::from("{}"),
            Position::START,
        ))
    }

    #[tokio::test]
    async fn updates_reach_only_their_topics_subscribers() {
        let router = Router::new(8);
        let mut a = router.connect();
        let mut b = router.connect();
        router.subscribe(a.id, &["inbox:a".into()]);
        router.subscribe(b.id, &["inbox:b".into(), "inbox:a".into()]);
        router.dispatch(&update(1, "inbox:a"));
        router.dispatch(&update(2, "inbox:b"));
        assert_eq!(a.updates.recv().await.unwrap().id, 1);
        assert!(a.updates.try_recv().is_err());
        assert_eq!(b.updates.recv().await.unwrap().id, 1);
        assert_eq!(b.updates.recv().await.unwrap().id, 2);
        router.unsubscribe(b.id, &["inbox:a".into()]);
        router.dispatch(&update(3, "inbox:a"));
        assert!(b.updates.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_drops_only_that_connection() {
        let router = Router::new(2);
        let mut slow = router.connect();
        let mut fast = router.connect();
        router.subscribe(slow.id, &["t".into()]);
        router.subscribe(fast.id, &["t".into()]);
        for id in 1..=3 {
            router.dispatch(&update(id, "t"));
            assert_eq!(fast.updates.recv().await.unwrap().id, id);
        }
        assert!(slow.slow.load(Ordering::Acquire));
        assert_eq!(slow.updates.recv().await.unwrap().id, 1);
        assert_eq!(slow.updates.recv().await.unwrap().id, 2);
        assert!(slow.updates.recv().await.is_none(), "its queue ended");
        assert!(!fast.slow.load(Ordering::Acquire));
        assert_eq!(router.connections(), 1);
        assert_eq!(router.subscribe(slow.id, &["t".into()]), None);
    }
}
