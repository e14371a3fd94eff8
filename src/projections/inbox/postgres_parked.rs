//! Parked events of the PostgreSQL inbox (tables `parked_events` and
//! `skipped_events`, migrations/0006): what the live projector holds back,
//! and re-driving or skipping them.
//!
//! A re-drive or skip runs under the live checkpoint's row lock (the live
//! projector waits for it, as it waits for a rebuild's switch), so it never
//! interleaves with a page; and under the maintenance lock, so never beside a
//! rebuild. Its read-model changes, stream updates and parked-table changes
//! commit in one transaction.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::fold::{is_notification, Held};
use super::postgres::{live_version, record_updates, write_page, PostgresInbox};
use super::NAME;
use crate::projections::parked::{ParkedEvent, Parking, ParkingError, RedriveReport};
use crate::projections::ProjectionError;
use crate::storage::{EventLog, Position, SharedEvent, StorageError};
use crate::streams::updates::StreamUpdate;

/// Re-drive this many failing streams per transaction.
const REDRIVE_STREAMS: i64 = 500;

/// The maintenance lock, across instances: held by a rebuild, a re-drive or a
/// skip, on a connection of its own; dropping it closes the connection, which
/// releases the lock (also when the process dies).
pub(super) struct Maintenance {
    _client: tokio_postgres::Client,
}

impl Maintenance {
    /// The lock, or None while someone else holds it.
    pub(super) async fn try_take(
        connector: &crate::storage::postgres::PgConnector,
    ) -> Result<Option<Self>, ProjectionError> {
        let (client, connection) = connector.connect_with_task().await?;
        let won: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('tidings:rebuild:' || $1, 0))",
                &[&NAME],
            )
            .await?
            .try_get(0)?;
        if won {
            Ok(Some(Self { _client: client }))
        } else {
            connection.abort();
            Ok(None)
        }
    }
}

/// The streams among `events` that version `version` holds back, and the
/// parked event holding each.
pub(super) async fn held_streams(
    tx: &tokio_postgres::Transaction<'_>,
    version: i32,
    events: &[SharedEvent],
) -> Result<Held, ProjectionError> {
    let mut ids: Vec<&str> = events
        .iter()
        .filter(|e| is_notification(e))
        .map(|e| e.aggregate_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(Held::new());
    }
    let rows = tx
        .query(
            "SELECT aggregate_id, coalesce(held_tx, tx), coalesce(held_seq, seq)
               FROM parked_events
              WHERE projection = $1 AND version = $2 AND aggregate_id = ANY($3)",
            &[&NAME, &version, &ids],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, Position::new(r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<Held, tokio_postgres::Error>>()
        .map_err(Into::into)
}

/// Records parked events of version `version`.
pub(super) async fn insert_parked(
    tx: &impl GenericClient,
    version: i32,
    parked: &[ParkedEvent],
) -> Result<(), ProjectionError> {
    if parked.is_empty() {
        return Ok(());
    }
    let txs: Vec<i64> = parked.iter().map(|p| p.position.tx).collect();
    let seqs: Vec<i64> = parked.iter().map(|p| p.position.seq).collect();
    let types: Vec<&str> = parked.iter().map(|p| p.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = parked.iter().map(|p| p.aggregate_id.as_str()).collect();
    let sequences: Vec<i64> = parked.iter().map(|p| p.sequence).collect();
    let event_types: Vec<&str> = parked.iter().map(|p| p.event_type.as_str()).collect();
    let errors: Vec<&str> = parked.iter().map(|p| p.error.as_str()).collect();
    let attempts: Vec<i32> = parked.iter().map(|p| p.attempts as i32).collect();
    let held_txs: Vec<Option<i64>> = parked.iter().map(|p| p.held_behind.map(|h| h.tx)).collect();
    let held_seqs: Vec<Option<i64>> = parked
        .iter()
        .map(|p| p.held_behind.map(|h| h.seq))
        .collect();
    let parked_at: Vec<DateTime<Utc>> = parked.iter().map(|p| p.parked_at).collect();
    let tried_at: Vec<DateTime<Utc>> = parked.iter().map(|p| p.last_attempt_at).collect();
    tx.execute(
        "INSERT INTO parked_events
                (projection, version, tx, seq, aggregate_type, aggregate_id, sequence, event_type,
                 error, attempts, held_tx, held_seq, parked_at, last_attempt_at)
         SELECT $1, $2, * FROM UNNEST($3::int8[], $4::int8[], $5::text[], $6::text[], $7::int8[],
                                      $8::text[], $9::text[], $10::int4[], $11::int8[], $12::int8[],
                                      $13::timestamptz[], $14::timestamptz[])
         ON CONFLICT (projection, version, tx, seq) DO NOTHING",
        &[
            &NAME,
            &version,
            &txs,
            &seqs,
            &types,
            &ids,
            &sequences,
            &event_types,
            &errors,
            &attempts,
            &held_txs,
            &held_seqs,
            &parked_at,
            &tried_at,
        ],
    )
    .await?;
    Ok(())
}

/// The positions of the events given up on for good.
pub(super) async fn load_skipped(
    client: &impl GenericClient,
) -> Result<BTreeSet<Position>, ProjectionError> {
    let rows = client
        .query(
            "SELECT tx, seq FROM skipped_events WHERE projection = $1",
            &[&NAME],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(Position::new(r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(Into::into)
}

/// Takes the live checkpoint's row lock for the rest of `tx`: the live
/// projector waits until `tx` ends.
async fn lock_checkpoint(tx: &tokio_postgres::Transaction<'_>) -> Result<(), ProjectionError> {
    tx.query_opt(
        "SELECT 1 FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
        &[&NAME],
    )
    .await?;
    Ok(())
}

fn parked_from_row(r: &tokio_postgres::Row) -> Result<ParkedEvent, tokio_postgres::Error> {
    let held_tx: Option<i64> = r.try_get("held_tx")?;
    let held_seq: Option<i64> = r.try_get("held_seq")?;
    Ok(ParkedEvent {
        position: Position::new(r.try_get("tx")?, r.try_get("seq")?),
        aggregate_type: r.try_get("aggregate_type")?,
        aggregate_id: r.try_get("aggregate_id")?,
        sequence: r.try_get("sequence")?,
        event_type: r.try_get("event_type")?,
        error: r.try_get("error")?,
        attempts: r.try_get::<_, i32>("attempts")?.max(0) as u32,
        held_behind: held_tx.zip(held_seq).map(|(t, s)| Position::new(t, s)),
        parked_at: r.try_get("parked_at")?,
        last_attempt_at: r.try_get("last_attempt_at")?,
    })
}

const PARKED_COLUMNS: &str = "p.tx, p.seq, p.aggregate_type, p.aggregate_id, p.sequence, \
     p.event_type, p.error, p.attempts, p.held_tx, p.held_seq, p.parked_at, p.last_attempt_at";

#[async_trait]
impl Parking for PostgresInbox {
    async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, ProjectionError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {PARKED_COLUMNS}
               FROM parked_events p
               JOIN projection_versions v ON v.projection = p.projection AND v.version = p.version
              WHERE p.projection = $1 AND (p.tx, p.seq) > ($2, $3)
              ORDER BY p.tx, p.seq
              LIMIT $4"
        );
        let rows = client
            .query(&sql, &[&NAME, &after.tx, &after.seq, &(limit as i64)])
            .await?;
        rows.iter()
            .map(parked_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    async fn parked_count(&self) -> Result<u64, ProjectionError> {
        let client = self.pool.get().await?;
        let count: i64 = client
            .query_one(
                "SELECT count(*) FROM parked_events p
                   JOIN projection_versions v
                     ON v.projection = p.projection AND v.version = p.version
                  WHERE p.projection = $1",
                &[&NAME],
            )
            .await?
            .try_get(0)?;
        Ok(count as u64)
    }

    async fn skipped(&self) -> Result<BTreeSet<Position>, ProjectionError> {
        let client = self.pool.get().await?;
        load_skipped(&**client).await
    }

    async fn redrive(&self, log: &dyn EventLog) -> Result<RedriveReport, ParkingError> {
        let Some(_maintenance) = Maintenance::try_take(&self.connector).await? else {
            return Err(ParkingError::Busy(NAME));
        };
        let mut done: HashSet<String> = HashSet::new();
        let mut after = Position::START;
        let mut applied = 0;
        loop {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            lock_checkpoint(&tx).await?;
            let (version, table) = live_version(&tx).await?;
            let causes = tx
                .query(
                    "SELECT tx, seq, aggregate_type, aggregate_id FROM parked_events
                      WHERE projection = $1 AND version = $2 AND held_tx IS NULL
                        AND (tx, seq) > ($3, $4)
                      ORDER BY tx, seq
                      LIMIT $5",
                    &[&NAME, &version, &after.tx, &after.seq, &REDRIVE_STREAMS],
                )
                .await?;
            let Some(last) = causes.last() else {
                break;
            };
            after = Position::new(last.try_get(0)?, last.try_get(1)?);
            let mut streams = Vec::new();
            for row in &causes {
                let stream: (String, String) = (row.try_get(2)?, row.try_get(3)?);
                // A stream whose re-drive failed further on shows up again
                // with a later cause: once per re-drive is enough.
                if done.insert(stream.1.clone()) {
                    streams.push(stream);
                }
            }
            if streams.is_empty() {
                continue;
            }
            let (numbered, n) = self
                .redrive_streams(&tx, version, &table, log, &streams)
                .await?;
            tx.commit().await?;
            self.publish(numbered).await;
            applied += n;
        }
        Ok(RedriveReport {
            applied,
            still_parked: self.parked_count().await?,
        })
    }

    async fn skip(
        &self,
        log: &dyn EventLog,
        position: Position,
        by: &str,
    ) -> Result<RedriveReport, ParkingError> {
        let Some(_maintenance) = Maintenance::try_take(&self.connector).await? else {
            return Err(ParkingError::Busy(NAME));
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_checkpoint(&tx).await?;
        let (version, table) = live_version(&tx).await?;
        let Some(row) = tx
            .query_opt(
                "DELETE FROM parked_events
                  WHERE projection = $1 AND version = $2 AND tx = $3 AND seq = $4
              RETURNING aggregate_type, aggregate_id, event_type, error",
                &[&NAME, &version, &position.tx, &position.seq],
            )
            .await?
        else {
            return Err(ParkingError::NotParked(position));
        };
        let stream: (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let event_type: String = row.try_get(2)?;
        let error: String = row.try_get(3)?;
        tx.execute(
            "INSERT INTO skipped_events
                    (projection, tx, seq, aggregate_type, aggregate_id, event_type, error, skipped_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (projection, tx, seq) DO NOTHING",
            &[
                &NAME, &position.tx, &position.seq, &stream.0, &stream.1, &event_type, &error, &by,
            ],
        )
        .await
        ?;
        let (numbered, applied) = self
            .redrive_streams(&tx, version, &table, log, std::slice::from_ref(&stream))
            .await?;
        tx.commit().await?;
        self.publish(numbered).await;
        tracing::warn!(projection = NAME, cursor = %position.to_cursor(), event_type, aggregate_id = %stream.1,
            error, by, "parked event skipped for good");
        Ok(RedriveReport {
            applied,
            still_parked: self.parked_count().await?,
        })
    }
}

impl PostgresInbox {
    /// Re-drives every parked event of `streams` ((aggregate type, id)) in
    /// `tx`: read again from the log (through today's upcasters), applied in
    /// order where they apply, parked again where they are still refused.
    /// Returns the stream updates (to publish after commit) and how many applied.
    async fn redrive_streams(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        version: i32,
        table: &str,
        log: &dyn EventLog,
        streams: &[(String, String)],
    ) -> Result<(Vec<Arc<StreamUpdate>>, u64), ProjectionError> {
        let ids: Vec<&str> = streams.iter().map(|(_, id)| id.as_str()).collect();
        let taken = tx
            .query(
                "DELETE FROM parked_events
                  WHERE projection = $1 AND version = $2 AND aggregate_id = ANY($3)
              RETURNING tx, seq, aggregate_type, aggregate_id, sequence, attempts, parked_at",
                &[&NAME, &version, &ids],
            )
            .await?;
        // (attempts, parked_at) of each taken event, and its stream's sequences.
        let mut previous: HashMap<Position, (u32, DateTime<Utc>)> = HashMap::new();
        let mut sequences: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for row in &taken {
            let position = Position::new(row.try_get(0)?, row.try_get(1)?);
            let stream = (row.try_get(2)?, row.try_get(3)?);
            let sequence: i64 = row.try_get(4)?;
            let attempts: i32 = row.try_get(5)?;
            previous.insert(position, (attempts.max(0) as u32, row.try_get(6)?));
            let range = sequences.entry(stream).or_insert((sequence, sequence));
            range.0 = range.0.min(sequence);
            range.1 = range.1.max(sequence);
        }
        let mut events: Vec<SharedEvent> = Vec::with_capacity(previous.len());
        for ((aggregate_type, aggregate_id), (first, last)) in &sequences {
            let span = (last - first + 1) as usize;
            let stream = log
                .stream(aggregate_type, aggregate_id, first - 1, span)
                .await?;
            events.extend(
                stream
                    .into_iter()
                    .filter(|e| previous.contains_key(&e.position)),
            );
        }
        if events.len() != previous.len() {
            return Err(StorageError::defect(format!(
                "{} parked events of {} are not in the log",
                previous.len() - events.len(),
                ids.join(", ")
            ))
            .into());
        }
        events.sort_by_key(|e| e.position);
        let Some(page_end) = events.last().map(|e| e.position) else {
            return Ok((vec![], 0));
        };
        let skipped = load_skipped(tx).await?;
        let (updates, refused) = write_page(
            tx,
            table,
            &events,
            page_end,
            &mut Held::new(),
            &skipped,
            true,
        )
        .await?;
        let now = Utc::now();
        let parked: Vec<ParkedEvent> = refused
            .iter()
            .map(|r| {
                let (attempts, parked_at) =
                    previous.get(&r.event.position).copied().unwrap_or((0, now));
                ParkedEvent {
                    parked_at,
                    ..r.parked(attempts + 1)
                }
            })
            .collect();
        insert_parked(tx, version, &parked).await?;
        let numbered = match updates {
            Some(updates) => record_updates(tx, table, updates, page_end).await?,
            None => vec![],
        };
        Ok((numbered, (events.len() - refused.len()) as u64))
    }
}
