//! The global log in PostgreSQL, read with the xid8 recipe of DESIGN.md: an
//! event is handed out only once every transaction that could commit before
//! it has finished, so a projector never skips an event that commits "late"
//! with a lower `global_position`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::json::{unreadable_metadata, RawJson};
use crate::storage::{EventLog, LoggedEvent, Position, SharedEvent, StorageError, Unreadable};

pub struct PgEventLog {
    pool: Pool,
    /// The newest events read, for the other projectors that read them next.
    tail: Mutex<Tail>,
    /// Held while reading past the tail's end: projectors that reach the
    /// head together wait for one read and share it, instead of each reading
    /// the same new events from PostgreSQL.
    head_read: tokio::sync::Mutex<()>,
}

impl PgEventLog {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            tail: Mutex::new(Tail::default()),
            head_read: tokio::sync::Mutex::new(()),
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Events the tail keeps.
const TAIL_EVENTS: usize = 10_000;

/// The newest run of the log some read handed out: exactly the events after
/// `start` up to the last one, with nothing missing. The log hands an event
/// out only once nothing can commit before it, and events are never changed
/// or removed, so a run stays true: every projector reading near the head
/// reads it once from PostgreSQL, the others from here.
#[derive(Default)]
struct Tail {
    start: Position,
    events: VecDeque<SharedEvent>,
}

impl Tail {
    fn end(&self) -> Position {
        self.events.back().map_or(self.start, |e| e.position)
    }

    /// The events after `after`, if the run knows them (None: read them).
    fn after(&self, after: Position, limit: usize) -> Option<Vec<SharedEvent>> {
        if after < self.start || after >= self.end() {
            return None;
        }
        let from = self.events.partition_point(|e| e.position <= after);
        Some(self.events.range(from..).take(limit).cloned().collect())
    }

    /// Keeps what a read of the events after `after` handed out.
    fn keep(&mut self, after: Position, read: &[SharedEvent]) {
        if read.is_empty() {
            return;
        }
        if after > self.end() {
            // Past the run (it was empty, or others lag): a run of its own.
            self.start = after;
            self.events.clear();
        } else if after < self.start {
            return; // an old page (a lagging reader, a rebuild): not the tail
        }
        let end = self.end();
        self.events
            .extend(read.iter().filter(|e| e.position > end).cloned());
        while self.events.len() > TAIL_EVENTS {
            if let Some(first) = self.events.pop_front() {
                self.start = first.position;
            }
        }
    }
}

const READ_AFTER: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY transaction_id, global_position
 LIMIT $3";

const STREAM: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4";

/// Served by the primary key (aggregate_type first).
const OF_TYPE: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = $1
 ORDER BY aggregate_id, sequence
 LIMIT $2";

/// Served by events_created_recipient (migrations/0004) and the primary key.
const RECIPIENT_HISTORY: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = 'Notification'
   AND aggregate_id IN (SELECT aggregate_id FROM events
                         WHERE event_type = 'NotificationCreated'
                           AND payload -> 'NotificationCreated' ->> 'recipient' = $1)
   AND (transaction_id, global_position) <= ($2::text::xid8, $3)
   AND recorded_at <= $4
 ORDER BY transaction_id, global_position
 LIMIT $5";

const STREAMS: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = ANY($2)
 ORDER BY aggregate_id, sequence";

/// The last event of type `t.event_type` in stream `s.id` of type `$1`:
/// one probe of events_latest_of_type (migrations/0012), whose predicate
/// it repeats so that a generic plan can use the index.
macro_rules! last_of_type {
    () => {
        "CROSS JOIN LATERAL (
       SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
              sequence, event_type, event_version, payload, metadata, recorded_at
         FROM events
        WHERE aggregate_type = $1 AND aggregate_id = s.id AND event_type = t.event_type
          AND aggregate_type <> 'Notification'
        ORDER BY sequence DESC
        LIMIT 1) e"
    };
}

/// The streams `$2`, each type of `$3`.
const LATEST: &str = concat!(
    "
SELECT e.* FROM unnest($2::text[]) AS s(id)
 CROSS JOIN unnest($3::text[]) AS t(event_type)
 ",
    last_of_type!(),
    "
 ORDER BY e.aggregate_id, e.sequence"
);

/// The streams `$2` from each one's last event of type `$3` on (from the
/// start without one): one probe of events_latest_of_type per stream
/// (migrations/0012, its predicate repeated), then the stream's range.
const STREAMS_SINCE: &str = "
SELECT e.transaction_id::text::bigint AS tx, e.global_position, e.aggregate_type, e.aggregate_id,
       e.sequence, e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at
  FROM unnest($2::text[]) AS s(id)
 CROSS JOIN LATERAL (
       SELECT coalesce((SELECT sequence FROM events
                         WHERE aggregate_type = $1 AND aggregate_id = s.id AND event_type = $3
                           AND aggregate_type <> 'Notification'
                         ORDER BY sequence DESC
                         LIMIT 1), 1) AS since) f
  JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = s.id AND e.sequence >= f.since
 ORDER BY e.aggregate_id, e.sequence";

/// Every stream of type `$1`, found one index probe each (a loose index
/// scan: PostgreSQL has no skip scan), each type of `$2`, at most `$3`
/// events. Costs the streams, not their events.
const LATEST_OF_EVERY: &str = concat!(
    "
WITH RECURSIVE streams(id) AS (
       (SELECT aggregate_id FROM events
         WHERE aggregate_type = $1 AND aggregate_type <> 'Notification'
         ORDER BY aggregate_id LIMIT 1)
       UNION ALL
       SELECT (SELECT aggregate_id FROM events
                WHERE aggregate_type = $1 AND aggregate_type <> 'Notification'
                  AND aggregate_id > streams.id
                ORDER BY aggregate_id LIMIT 1)
         FROM streams WHERE streams.id IS NOT NULL)
SELECT e.* FROM streams s
 CROSS JOIN unnest($2::text[]) AS t(event_type)
 ",
    last_of_type!(),
    "
 WHERE s.id IS NOT NULL
 ORDER BY e.aggregate_id, e.sequence
 LIMIT $3"
);

const POSITION_OF: &str = "
SELECT transaction_id::text::bigint AS tx, global_position
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3";

/// A logged event from its row, upcast to the current shape. A payload or
/// metadata that does not parse makes an unreadable event, not an error: a
/// bad row must not look like an outage.
pub fn row_to_event(row: &tokio_postgres::Row) -> Result<LoggedEvent, tokio_postgres::Error> {
    let RawJson(payload) = row.try_get("payload")?;
    let RawJson(metadata) = row.try_get("metadata")?;
    let parsed = serde_json::from_slice::<serde_json::Value>(payload)
        .map_err(|e| crate::storage::upcast::unparsable(&e))
        .and_then(|p| {
            serde_json::from_slice::<serde_json::Value>(metadata)
                .map(|m| (p, m))
                .map_err(|e| unreadable_metadata(&e))
        });
    let (payload, metadata, unreadable) = match parsed {
        Ok((payload, metadata)) => (payload, metadata, None),
        Err(error) => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            Some(Arc::new(Unreadable {
                error,
                payload: String::from_utf8_lossy(payload).into_owned(),
                metadata: String::from_utf8_lossy(metadata).into_owned(),
            })),
        ),
    };
    let mut event = LoggedEvent {
        position: Position::new(row.try_get("tx")?, row.try_get("global_position")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload,
        metadata: Arc::new(metadata),
        recorded_at: row.try_get("recorded_at")?,
        unreadable,
    };
    if event.unreadable.is_none() {
        crate::storage::upcast::upcast_logged(
            &event.event_type,
            &mut event.event_version,
            &mut event.payload,
        );
    }
    Ok(event)
}

#[async_trait]
impl EventLog for PgEventLog {
    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        // What the tail knows, then the rest from PostgreSQL: a page is
        // short only where the log ends (`has_more` and the projectors'
        // page sizes depend on that).
        let mut known = self.tail().after(after, limit).unwrap_or_default();
        if known.len() == limit {
            return Ok(known);
        }
        let mut from = known.last().map_or(after, |e| e.position);
        // At the head, one read at a time; what the one before found is
        // taken from the tail first.
        let _head = if from >= self.tail().end() {
            let head = self.head_read.lock().await;
            if let Some(more) = self.tail().after(from, limit - known.len()) {
                known.extend(more);
                if known.len() == limit {
                    return Ok(known);
                }
                from = known.last().map_or(after, |e| e.position);
            }
            Some(head)
        } else {
            None
        };
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(READ_AFTER).await?;
        let want = (limit - known.len()) as i64;
        let rows = client
            .query(&stmt, &[&from.tx.to_string(), &from.seq, &want])
            .await?;
        let read = rows
            .iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect::<Result<Vec<_>, _>>()?;
        self.tail().keep(from, &read);
        known.extend(read);
        Ok(known)
    }

    async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<Position>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(POSITION_OF).await?;
        let row = client
            .query_opt(&stmt, &[&aggregate_type, &aggregate_id, &sequence])
            .await?;
        row.map(|r| {
            Ok(Position::new(
                r.try_get("tx")?,
                r.try_get("global_position")?,
            ))
        })
        .transpose()
        .map_err(|e: tokio_postgres::Error| StorageError::from(e))
    }

    async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(STREAM).await?;
        let rows = client
            .query(
                &stmt,
                &[&aggregate_type, &aggregate_id, &after, &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn latest(
        &self,
        aggregate_type: &str,
        aggregate_ids: Option<&[String]>,
        event_types: &[&str],
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        crate::storage::refuse_latest(aggregate_type)?;
        let client = self.pool.get().await?;
        let rows = match aggregate_ids {
            Some(ids) => {
                let stmt = client.prepare_cached(LATEST).await?;
                client
                    .query(&stmt, &[&aggregate_type, &ids, &event_types])
                    .await?
            }
            None => {
                let stmt = client.prepare_cached(LATEST_OF_EVERY).await?;
                client
                    .query(&stmt, &[&aggregate_type, &event_types, &(limit as i64)])
                    .await?
            }
        };
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn streams_since(
        &self,
        aggregate_type: &str,
        aggregate_ids: &[String],
        resume_at: &str,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        crate::storage::refuse_latest(aggregate_type)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(STREAMS_SINCE).await?;
        let rows = client
            .query(&stmt, &[&aggregate_type, &aggregate_ids, &resume_at])
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn of_type(
        &self,
        aggregate_type: &str,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(OF_TYPE).await?;
        let rows = client
            .query(&stmt, &[&aggregate_type, &(limit as i64)])
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn recipient_history(
        &self,
        recipient: &str,
        until: Position,
        recorded_by: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RECIPIENT_HISTORY).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &recipient,
                    &until.tx.to_string(),
                    &until.seq,
                    &recorded_by,
                    &(limit as i64 + 1),
                ],
            )
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn streams(
        &self,
        aggregate_type: &str,
        aggregate_ids: &[String],
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(STREAMS).await?;
        let rows = client
            .query(&stmt, &[&aggregate_type, &aggregate_ids])
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn behind(
        &self,
        after: Position,
    ) -> Result<(u64, Option<chrono::DateTime<chrono::Utc>>), StorageError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), min(recorded_at) FROM events
                  WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
                &[&after.tx.to_string(), &after.seq],
            )
            .await?;
        Ok((row.try_get::<_, i64>(0)? as u64, row.try_get(1)?))
    }

    async fn reaches(&self, position: Position) -> Result<bool, StorageError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM events
                                 WHERE (transaction_id, global_position) >= ($1::text::xid8, $2))",
                &[&position.tx.to_string(), &position.seq],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> SharedEvent {
        Arc::new(LoggedEvent {
            position: Position::new(seq, seq),
            aggregate_type: "Notification".into(),
            aggregate_id: format!("n{seq}"),
            sequence: 1,
            event_type: "NotificationCreated".into(),
            event_version: "1.0".into(),
            payload: serde_json::Value::Null,
            metadata: Arc::new(serde_json::Value::Null),
            recorded_at: chrono::Utc::now(),
            unreadable: None,
        })
    }

    fn seqs(events: &[SharedEvent]) -> Vec<i64> {
        events.iter().map(|e| e.position.seq).collect()
    }

    fn at(seq: i64) -> Position {
        Position::new(seq, seq)
    }

    #[test]
    fn the_tail_answers_only_what_a_read_proved_contiguous() {
        let mut tail = Tail::default();
        assert!(tail.after(Position::START, 10).is_none(), "empty: read");
        tail.keep(at(2), &[event(3), event(4)]);
        assert!(tail.after(at(1), 10).is_none(), "before the run: read");
        assert_eq!(seqs(&tail.after(at(2), 10).unwrap()), [3, 4]);
        assert_eq!(seqs(&tail.after(at(3), 1).unwrap()), [4]);
        assert!(tail.after(at(4), 10).is_none(), "at the end: read on");
        // A read from the end extends it; one overlapping it adds only what is new.
        tail.keep(at(4), &[event(5)]);
        tail.keep(at(3), &[event(4), event(5), event(6)]);
        assert_eq!(seqs(&tail.after(at(2), 10).unwrap()), [3, 4, 5, 6]);
        // An old page (a lagging reader) leaves the run as it is.
        tail.keep(at(0), &[event(1), event(2)]);
        assert!(tail.after(at(0), 10).is_none());
        // A read past the end starts a run of its own: 7..9 are unknown.
        tail.keep(at(9), &[event(10)]);
        assert!(tail.after(at(6), 10).is_none());
        assert_eq!(seqs(&tail.after(at(9), 10).unwrap()), [10]);
    }

    #[test]
    fn the_tail_keeps_the_newest_events_only() {
        let mut tail = Tail::default();
        let read: Vec<SharedEvent> = (1..=TAIL_EVENTS as i64 + 5).map(event).collect();
        tail.keep(Position::START, &read);
        assert_eq!(tail.events.len(), TAIL_EVENTS);
        assert!(tail.after(at(4), 1).is_none(), "trimmed");
        assert_eq!(seqs(&tail.after(at(5), 1).unwrap()), [6]);
    }
}
