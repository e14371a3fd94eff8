//! The global log in PostgreSQL, read with the xid8 recipe of DESIGN.md: an
//! event is handed out only once every transaction that could commit before
//! it has finished, so a projector never skips an event that commits "late"
//! with a lower `global_position`.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::json::{unreadable_metadata, RawJson};
use crate::storage::{EventLog, LoggedEvent, Position, SharedEvent, StorageError, Unreadable};

pub struct PgEventLog {
    pool: Pool,
}

impl PgEventLog {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
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
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(READ_AFTER).await?;
        let rows = client
            .query(&stmt, &[&after.tx.to_string(), &after.seq, &(limit as i64)])
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
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
