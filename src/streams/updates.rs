//! Stream updates, their topics and cursors, and the logs that keep them.

use crate::domain::experiment::ExperimentId;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use serde_json::Value;

use crate::domain::{NotificationId, UserId};
use crate::storage::{Position, StorageError};

/// What a subscriber listens to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// A user's inbox: rows created, changed, removed, and the counts.
    Inbox(UserId),
    /// One notification's row.
    Notification(NotificationId),
    /// The health score and the current minute's counters.
    Analytics,
    /// A user's batches: each opened, changed or flushed.
    Batches(UserId),
    /// An experiment's assignments, exposures and outcomes.
    Experiments(ExperimentId),
}

impl Topic {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "analytics" {
            return Ok(Topic::Analytics);
        }
        match s.split_once(':') {
            Some(("inbox", user)) => UserId::parse(user)
                .map(Topic::Inbox)
                .map_err(|e| format!("`{s}`: the user {e}")),
            Some(("notification", id)) => NotificationId::parse(id)
                .map(Topic::Notification)
                .map_err(|e| format!("`{s}`: {e}")),
            Some(("batches", user)) => UserId::parse(user)
                .map(Topic::Batches)
                .map_err(|e| format!("`{s}`: the user {e}")),
            Some(("experiments", id)) => ExperimentId::parse(id)
                .map(Topic::Experiments)
                .map_err(|e| format!("`{s}`: the experiment id {e}")),
            _ => Err(format!(
                "`{s}` is not a topic; use `inbox:{{user}}`, `batches:{{user}}`, `notification:{{id}}`, `experiments:{{id}}` or `analytics`"
            )),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Inbox(user) => write!(f, "inbox:{}", user.as_str()),
            Topic::Notification(id) => write!(f, "notification:{id}"),
            Topic::Analytics => f.write_str("analytics"),
            Topic::Batches(user) => write!(f, "batches:{}", user.as_str()),
            Topic::Experiments(id) => write!(f, "experiments:{id}"),
        }
    }
}

/// A stream cursor: the number of the last update a subscriber has seen.
/// Opaque to clients (16 hex digits, distinct from 32-digit log cursors).
pub fn cursor_string(id: i64) -> String {
    format!("{:016x}", id as u64)
}

pub fn parse_cursor(s: &str) -> Option<i64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16)
        .ok()
        .filter(|n| *n <= i64::MAX as u64)
        .map(|n| n as i64)
}

/// One change of one topic, as the projection recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamUpdate {
    /// 1, 2, 3, ... across all topics, in commit order, without gaps.
    pub id: i64,
    pub topic: String,
    /// `created`, `changed`, `removed` (rows) or `counts`.
    pub kind: String,
    /// JSON text: the row exactly as REST returns it, or
    /// `{unread_count, unseen_count}`. Text, not a value tree: it is written
    /// once and sent as it is, often to many subscribers.
    pub data: Arc<str>,
    /// The event that caused it.
    pub position: Position,
    /// The subscriber message, made on first use and shared by every send.
    message: OnceLock<String>,
}

impl StreamUpdate {
    pub fn new(id: i64, topic: String, kind: String, data: Arc<str>, position: Position) -> Self {
        Self {
            id,
            topic,
            kind,
            data,
            position,
            message: OnceLock::new(),
        }
    }

    /// The message a subscriber receives.
    pub fn message(&self) -> &str {
        self.message.get_or_init(|| {
            format!(
                r#"{{"type":"update","cursor":"{}","topic":{},"kind":{},"data":{}}}"#,
                cursor_string(self.id),
                Value::String(self.topic.clone()),
                Value::String(self.kind.clone()),
                self.data
            )
        })
    }
}

/// An update before the log numbers it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUpdate {
    pub topic: String,
    pub kind: &'static str,
    pub data: Arc<str>,
    pub position: Position,
}

impl NewUpdate {
    pub fn numbered(self, id: i64) -> StreamUpdate {
        StreamUpdate::new(
            id,
            self.topic,
            self.kind.to_owned(),
            self.data,
            self.position,
        )
    }
}

/// What the log holds: updates `oldest..=newest` (oldest > newest when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub oldest: i64,
    pub newest: i64,
}

impl Bounds {
    /// Whether a subscriber at `cursor` can be brought up to date from the log.
    pub fn can_resume(&self, cursor: i64) -> bool {
        cursor >= self.oldest - 1 && cursor <= self.newest
    }
}

/// Reads the numbered updates back.
#[async_trait]
pub trait UpdateLog: Send + Sync {
    /// Up to `limit` updates after `after` whose topic is one of `topics`, in order.
    async fn read_after(
        &self,
        after: i64,
        topics: &[String],
        limit: usize,
    ) -> Result<Vec<Arc<StreamUpdate>>, StorageError>;

    /// Every update after `after` up to `upto` (any topic), for filling gaps.
    async fn range(&self, after: i64, upto: i64) -> Result<Vec<Arc<StreamUpdate>>, StorageError>;

    async fn bounds(&self) -> Result<Bounds, StorageError>;
}

/// Numbers and publishes updates no projection page carries: a state
/// sampled over time (the health score), announced by one instance.
#[async_trait]
pub trait Announce: Send + Sync {
    async fn announce(&self, update: NewUpdate) -> Result<(), StorageError>;
}

/// The in-memory update log: the newest updates, at most `capacity` of them
/// and at most `max_bytes` of them.
pub struct MemoryUpdateLog {
    ring: RwLock<Ring>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Ring {
    updates: VecDeque<Arc<StreamUpdate>>,
    newest: i64,
    /// What the kept updates cost, as `StreamUpdate::size` counts it.
    bytes: usize,
}

impl StreamUpdate {
    /// About what keeping it costs: its data twice (once as stored, once in
    /// the message made for subscribers), its topic and kind, the structure.
    pub fn size(&self) -> usize {
        2 * self.data.len() + 2 * self.topic.len() + self.kind.len() + 160
    }
}

impl MemoryUpdateLog {
    pub fn new(capacity: usize) -> Self {
        Self::bounded(capacity, usize::MAX)
    }

    /// Keeps at most `capacity` updates and `max_bytes` of them.
    pub fn bounded(capacity: usize, max_bytes: usize) -> Self {
        Self {
            ring: RwLock::new(Ring::default()),
            capacity: capacity.max(1),
            max_bytes,
        }
    }

    /// (updates kept, bytes they cost).
    pub fn kept(&self) -> (usize, usize) {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        (ring.updates.len(), ring.bytes)
    }

    /// Numbers and keeps `updates`; returns them numbered. Called under the
    /// projection's lock, so numbering follows the projection's order.
    pub fn append(&self, updates: Vec<NewUpdate>) -> Vec<Arc<StreamUpdate>> {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(updates.len());
        for update in updates {
            ring.newest += 1;
            let numbered = Arc::new(update.numbered(ring.newest));
            ring.bytes += numbered.size();
            ring.updates.push_back(numbered.clone());
            out.push(numbered);
        }
        while ring.updates.len() > self.capacity || ring.bytes > self.max_bytes {
            match ring.updates.pop_front() {
                Some(old) => ring.bytes -= old.size(),
                None => break,
            }
        }
        out
    }

    fn snapshot_bounds(ring: &VecDeque<Arc<StreamUpdate>>, newest: i64) -> Bounds {
        Bounds {
            oldest: ring.front().map_or(newest + 1, |u| u.id),
            newest,
        }
    }
}

#[async_trait]
impl UpdateLog for MemoryUpdateLog {
    async fn read_after(
        &self,
        after: i64,
        topics: &[String],
        limit: usize,
    ) -> Result<Vec<Arc<StreamUpdate>>, StorageError> {
        let guard = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let (ring, newest) = (&guard.updates, guard.newest);
        let bounds = Self::snapshot_bounds(ring, newest);
        let start = (after + 1 - bounds.oldest).max(0) as usize;
        Ok(ring
            .iter()
            .skip(start)
            .filter(|u| topics.iter().any(|t| *t == u.topic))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn range(&self, after: i64, upto: i64) -> Result<Vec<Arc<StreamUpdate>>, StorageError> {
        let guard = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let (ring, newest) = (&guard.updates, guard.newest);
        let bounds = Self::snapshot_bounds(ring, newest);
        let start = (after + 1 - bounds.oldest).max(0) as usize;
        Ok(ring
            .iter()
            .skip(start)
            .take_while(|u| u.id <= upto)
            .cloned()
            .collect())
    }

    async fn bounds(&self) -> Result<Bounds, StorageError> {
        let guard = self.ring.read().unwrap_or_else(|p| p.into_inner());
        Ok(Self::snapshot_bounds(&guard.updates, guard.newest))
    }
}

/// The update log in PostgreSQL (`stream_updates`, written by the inbox
/// projection in its page transaction).
pub struct PgUpdateLog {
    pool: Pool,
}

impl PgUpdateLog {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

fn row_to_update(row: &tokio_postgres::Row) -> Result<Arc<StreamUpdate>, tokio_postgres::Error> {
    let data: String = row.try_get("data")?;
    Ok(Arc::new(StreamUpdate::new(
        row.try_get("id")?,
        row.try_get("topic")?,
        row.try_get("kind")?,
        Arc::from(data),
        Position::new(row.try_get("tx")?, row.try_get("seq")?),
    )))
}

#[async_trait]
impl UpdateLog for PgUpdateLog {
    async fn read_after(
        &self,
        after: i64,
        topics: &[String],
        limit: usize,
    ) -> Result<Vec<Arc<StreamUpdate>>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, topic, kind, data::text AS data, tx, seq FROM stream_updates
                  WHERE topic = ANY($1) AND id > $2 ORDER BY id LIMIT $3",
            )
            .await?;
        let rows = client
            .query(&stmt, &[&topics, &after, &(limit as i64)])
            .await?;
        rows.iter()
            .map(|r| row_to_update(r).map_err(StorageError::from))
            .collect()
    }

    async fn range(&self, after: i64, upto: i64) -> Result<Vec<Arc<StreamUpdate>>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, topic, kind, data::text AS data, tx, seq FROM stream_updates
                  WHERE id > $1 AND id <= $2 ORDER BY id",
            )
            .await?;
        let rows = client.query(&stmt, &[&after, &upto]).await?;
        rows.iter()
            .map(|r| row_to_update(r).map_err(StorageError::from))
            .collect()
    }

    async fn bounds(&self) -> Result<Bounds, StorageError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT coalesce(min(id), 0), coalesce(max(id), 0),
                        (SELECT coalesce(max(last_id), 0) FROM stream_update_counter)
                   FROM stream_updates",
                &[],
            )
            .await?;
        let newest: i64 = row.try_get(2)?;
        let oldest: i64 = row.try_get::<_, i64>(0)?;
        Ok(Bounds {
            oldest: if oldest == 0 { newest + 1 } else { oldest },
            newest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(topic: &str) -> NewUpdate {
        NewUpdate {
            topic: topic.into(),
            kind: "changed",
            data: Arc::from("{}"),
            position: Position::START,
        }
    }

    #[test]
    fn topics_round_trip_and_bad_ones_say_why() {
        for t in [
            "inbox:alice",
            "notification:01a2024f-eced-76cf-8900-aa4e3541250c",
            "analytics",
        ] {
            assert_eq!(Topic::parse(t).unwrap().to_string(), t);
        }
        for bad in [
            "inbox:",
            "inbox:a b",
            "notification:x",
            "feed:alice",
            "alice",
            "analytics:x",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_cursors_round_trip() {
        for id in [0, 1, 255, i64::MAX] {
            assert_eq!(parse_cursor(&cursor_string(id)), Some(id));
        }
        assert_eq!(parse_cursor("00000000000002de0000000000000002"), None);
        assert_eq!(parse_cursor("zz"), None);
    }

    #[tokio::test]
    async fn the_memory_log_keeps_the_newest_and_says_what_it_can_resume() {
        let log = MemoryUpdateLog::new(3);
        let numbered = log.append(
            (0..5)
                .map(|i| update(if i % 2 == 0 { "a" } else { "b" }))
                .collect(),
        );
        assert_eq!(
            numbered.iter().map(|u| u.id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let bounds = log.bounds().await.unwrap();
        assert_eq!(
            bounds,
            Bounds {
                oldest: 3,
                newest: 5
            }
        );
        assert!(bounds.can_resume(2) && bounds.can_resume(5));
        assert!(!bounds.can_resume(1) && !bounds.can_resume(6));
        let a = log.read_after(2, &["a".into()], 10).await.unwrap();
        assert_eq!(a.iter().map(|u| u.id).collect::<Vec<_>>(), [3, 5]);
        let gap = log.range(3, 4).await.unwrap();
        assert_eq!(gap.iter().map(|u| u.id).collect::<Vec<_>>(), [4]);
    }

    #[tokio::test]
    async fn the_memory_log_is_bounded_in_bytes_as_well_as_count() {
        let big = |n: usize| NewUpdate {
            topic: "inbox:a".into(),
            kind: "changed",
            data: Arc::from(format!("\"{}\"", "x".repeat(n)).as_str()),
            position: Position::START,
        };
        let one = big(1000).numbered(1).size();
        let log = MemoryUpdateLog::bounded(1_000, one * 3);
        log.append((0..10).map(|_| big(1000)).collect());
        assert_eq!(log.kept(), (3, one * 3), "the three newest fit the bytes");
        assert_eq!(log.bounds().await.unwrap().oldest, 8);
        // A single update larger than the bound is not kept at all.
        log.append(vec![big(10 * one)]);
        assert_eq!(log.kept(), (0, 0));
        assert_eq!(log.bounds().await.unwrap().oldest, 12);
    }
}
