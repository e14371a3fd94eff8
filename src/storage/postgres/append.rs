//! Appending a command's events.

use deadpool_postgres::Pool;

use crate::storage::{Position, StorageError};

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream first (its primary key collided).
    #[error("the stream moved on since it was loaded")]
    Conflict,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Appends a command's events in one autocommit statement and reports their
/// global positions.
///
/// postgres-es loads aggregates here (its reads are fine), but its `persist`
/// costs BEGIN, one INSERT per event and COMMIT (four round trips for a typical
/// command), cannot report where the events landed in the global log (a fifth
/// round trip), and reports any unique violation as a conflict. This writes the
/// same rows into the same table with one round trip, and treats only the
/// stream's primary key as a conflict.
pub struct PgAppender {
    pool: Pool,
}

const APPEND: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
RETURNING sequence, transaction_id::text::bigint AS tx, global_position";

impl PgAppender {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Appends `events` (consecutive, one stream), all or nothing; returns
    /// their positions in sequence order.
    pub async fn append(
        &self,
        events: &[cqrs_es::persist::SerializedEvent],
    ) -> Result<Vec<Position>, AppendError> {
        let types: Vec<&str> = events.iter().map(|e| e.aggregate_type.as_str()).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
        let event_types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
        let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
        let metadata: Vec<&serde_json::Value> = events.iter().map(|e| &e.metadata).collect();
        let client = self.pool.get().await.map_err(StorageError::from)?;
        let stmt = client
            .prepare_cached(APPEND)
            .await
            .map_err(StorageError::from)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &types,
                    &ids,
                    &sequences,
                    &event_types,
                    &versions,
                    &payloads,
                    &metadata,
                ],
            )
            .await
            .map_err(|e| {
                let stream_key_taken = e.as_db_error().is_some_and(|db| {
                    *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                        && db.constraint() == Some("events_pkey")
                });
                if stream_key_taken {
                    AppendError::Conflict
                } else {
                    AppendError::Storage(e.into())
                }
            })?;
        let mut landed = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, i64>("sequence")?,
                    Position::new(r.try_get("tx")?, r.try_get("global_position")?),
                ))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(StorageError::from)?;
        landed.sort_unstable();
        Ok(landed.into_iter().map(|(_, p)| p).collect())
    }
}
