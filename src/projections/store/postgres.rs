//! The projection store in PostgreSQL: any fold's rows in `projection_rows`
//! (migrations/0007), with the checkpoint, versions and parked events that
//! every projection keeps (migrations/0002, 0005, 0006).
//!
//! One transaction per page: take the checkpoint row (guarded by its expected
//! value, so two projector instances cannot both apply a page), load the rows
//! the page's keys name, fold, write them back with one UNNEST upsert and one
//! delete, record the page's stream updates, move the checkpoint, commit.
//!
//! The functions below that take a projection name are the plumbing every
//! PostgreSQL projection shares, the inbox's own tables included.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::types::Json;
use tokio_postgres::{GenericClient, Transaction};

use super::{fold_page, read_page, Fold, Keyed, RowReader, Rows};
use crate::projections::inbox::fold::{first_failure, Held, Refusal};
use crate::projections::parked::{ParkedEvent, Parking, ParkingError, RedriveReport};
use crate::projections::rebuild::{RebuildState, Rebuildable, Rebuilds, BUILD_PAGE};
use crate::projections::{Projection, ProjectionError};
use crate::storage::postgres::PgConnector;
use crate::storage::{EventLog, Position, SharedEvent, StorageError};
use crate::streams::fanout::Fanout;
use crate::streams::feed::Feed;
use crate::streams::updates::{NewUpdate, StreamUpdate};

/// The checkpoint of `name`, made at START when it has none yet.
pub(crate) async fn load_checkpoint(
    client: &impl GenericClient,
    name: &str,
) -> Result<Position, ProjectionError> {
    client
        .execute(
            "INSERT INTO projection_checkpoints (projection, tx, seq) VALUES ($1, 0, 0)
             ON CONFLICT (projection) DO NOTHING",
            &[&name],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT tx, seq FROM projection_checkpoints WHERE projection = $1",
            &[&name],
        )
        .await?;
    Ok(Position::new(row.try_get(0)?, row.try_get(1)?))
}

/// Moves the checkpoint of `name` from `expected` to `to` inside `tx`; the
/// row stays locked until `tx` ends, so one page at a time is applied anywhere.
pub(crate) async fn move_checkpoint(
    tx: &Transaction<'_>,
    name: &str,
    expected: Position,
    to: Position,
) -> Result<(), ProjectionError> {
    let moved = tx
        .execute(
            "UPDATE projection_checkpoints SET tx = $2, seq = $3, updated_at = now()
              WHERE projection = $1 AND tx = $4 AND seq = $5",
            &[&name, &to.tx, &to.seq, &expected.tx, &expected.seq],
        )
        .await?;
    if moved == 1 {
        Ok(())
    } else {
        Err(ProjectionError::CheckpointMoved { expected })
    }
}

/// Takes the checkpoint's row lock for the rest of `tx`: the live projector
/// of `name` waits until `tx` ends. Returns the checkpoint.
pub(crate) async fn lock_checkpoint(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Position, ProjectionError> {
    let row = tx
        .query_opt(
            "SELECT tx, seq FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(r) => Position::new(r.try_get(0)?, r.try_get(1)?),
        None => Position::START,
    })
}

/// The maintenance lock of one projection, across instances: held by a
/// rebuild, a re-drive or a skip, on a connection of its own; dropping it
/// closes the connection, which releases the lock (also when the process dies).
pub(crate) struct Maintenance {
    _client: tokio_postgres::Client,
}

impl Maintenance {
    /// The lock, or None while someone else holds it.
    pub(crate) async fn try_take(
        connector: &PgConnector,
        name: &str,
    ) -> Result<Option<Self>, ProjectionError> {
        let (client, connection) = connector.connect_with_task().await?;
        let won: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('tidings:rebuild:' || $1, 0))",
                &[&name],
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

/// The error a rebuild answers while another maintenance of `name` runs.
pub(crate) fn busy(name: &str) -> ProjectionError {
    StorageError::defect(format!(
        "a rebuild, re-drive or skip of {name} is running (here or on another instance); try again once it has finished"
    ))
    .into()
}

/// The streams among `events` that version `version` of `name` holds back,
/// and the parked event holding each.
pub(crate) async fn held_streams(
    tx: &Transaction<'_>,
    name: &str,
    version: i32,
    events: &[SharedEvent],
) -> Result<Held, ProjectionError> {
    let mut ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
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
            &[&name, &version, &ids],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, Position::new(r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<Held, tokio_postgres::Error>>()
        .map_err(Into::into)
}

/// Records parked events of version `version` of `name`.
pub(crate) async fn insert_parked(
    tx: &impl GenericClient,
    name: &str,
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
            &name,
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

/// The positions of the events of `name` given up on for good.
pub(crate) async fn load_skipped(
    client: &impl GenericClient,
    name: &str,
) -> Result<BTreeSet<Position>, ProjectionError> {
    let rows = client
        .query(
            "SELECT tx, seq FROM skipped_events WHERE projection = $1",
            &[&name],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(Position::new(r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(Into::into)
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

/// The live version's parked events of `name` after `after`, in log order.
pub(crate) async fn list_parked(
    client: &impl GenericClient,
    name: &str,
    after: Position,
    limit: usize,
) -> Result<Vec<ParkedEvent>, ProjectionError> {
    let rows = client
        .query(
            "SELECT p.tx, p.seq, p.aggregate_type, p.aggregate_id, p.sequence, p.event_type,
                    p.error, p.attempts, p.held_tx, p.held_seq, p.parked_at, p.last_attempt_at
               FROM parked_events p
               JOIN projection_versions v ON v.projection = p.projection AND v.version = p.version
              WHERE p.projection = $1 AND (p.tx, p.seq) > ($2, $3)
              ORDER BY p.tx, p.seq
              LIMIT $4",
            &[&name, &after.tx, &after.seq, &(limit as i64)],
        )
        .await?;
    rows.iter()
        .map(parked_from_row)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// How many events the live version of `name` has parked.
pub(crate) async fn count_parked(
    client: &impl GenericClient,
    name: &str,
) -> Result<u64, ProjectionError> {
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM parked_events p
               JOIN projection_versions v ON v.projection = p.projection AND v.version = p.version
              WHERE p.projection = $1",
            &[&name],
        )
        .await?
        .try_get(0)?;
    Ok(count as u64)
}

/// Up to `limit` streams (aggregate type, id) with an event parked for its
/// own sake in version `version` of `name`, after `after`; and the last
/// parked position read (where the next call goes on).
pub(crate) async fn parked_causes(
    tx: &Transaction<'_>,
    name: &str,
    version: i32,
    after: Position,
    limit: i64,
) -> Result<(Vec<(String, String)>, Option<Position>), ProjectionError> {
    let causes = tx
        .query(
            "SELECT tx, seq, aggregate_type, aggregate_id FROM parked_events
              WHERE projection = $1 AND version = $2 AND held_tx IS NULL
                AND (tx, seq) > ($3, $4)
              ORDER BY tx, seq
              LIMIT $5",
            &[&name, &version, &after.tx, &after.seq, &limit],
        )
        .await?;
    let last = match causes.last() {
        Some(r) => Some(Position::new(r.try_get(0)?, r.try_get(1)?)),
        None => None,
    };
    let streams = causes
        .iter()
        .map(|r| Ok((r.try_get(2)?, r.try_get(3)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok((streams, last))
}

/// Moves the parked event at `position` (version `version` of `name`) to the
/// skipped events; its stream, or None when nothing is parked there.
pub(crate) async fn skip_parked(
    tx: &Transaction<'_>,
    name: &str,
    version: i32,
    position: Position,
    by: &str,
) -> Result<Option<(String, String)>, ProjectionError> {
    let Some(row) = tx
        .query_opt(
            "DELETE FROM parked_events
              WHERE projection = $1 AND version = $2 AND tx = $3 AND seq = $4
          RETURNING aggregate_type, aggregate_id, event_type, error",
            &[&name, &version, &position.tx, &position.seq],
        )
        .await?
    else {
        return Ok(None);
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
            &name,
            &position.tx,
            &position.seq,
            &stream.0,
            &stream.1,
            &event_type,
            &error,
            &by,
        ],
    )
    .await?;
    tracing::warn!(projection = name, cursor = %position.to_cursor(), event_type, aggregate_id = %stream.1,
        error, by, "parked event skipped for good");
    Ok(Some(stream))
}

/// The parked events of `streams` taken out of version `version` of `name`
/// for a re-drive: read again from the log (through today's upcasters), in
/// log order, each with (attempts, parked_at) so far.
pub(crate) async fn take_parked(
    tx: &Transaction<'_>,
    name: &str,
    version: i32,
    log: &dyn EventLog,
    streams: &[(String, String)],
) -> Result<(Vec<SharedEvent>, HashMap<Position, (u32, DateTime<Utc>)>), ProjectionError> {
    let ids: Vec<&str> = streams.iter().map(|(_, id)| id.as_str()).collect();
    let taken = tx
        .query(
            "DELETE FROM parked_events
              WHERE projection = $1 AND version = $2 AND aggregate_id = ANY($3)
          RETURNING tx, seq, aggregate_type, aggregate_id, sequence, attempts, parked_at",
            &[&name, &version, &ids],
        )
        .await?;
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
    Ok((events, previous))
}

/// Refusals of a re-drive as parked events, keeping when each was first
/// parked and counting this try.
pub(crate) fn parked_again(
    refused: &[Refusal],
    previous: &HashMap<Position, (u32, DateTime<Utc>)>,
) -> Vec<ParkedEvent> {
    let now = Utc::now();
    refused
        .iter()
        .map(|r| {
            let (attempts, parked_at) =
                previous.get(&r.event.position).copied().unwrap_or((0, now));
            ParkedEvent {
                parked_at,
                ..r.parked(attempts + 1)
            }
        })
        .collect()
}

/// Re-drive this many failing streams per transaction.
pub(crate) const REDRIVE_STREAMS: i64 = 500;

/// Numbers `updates` (1, 2, 3, ... across all projections, without holes:
/// a counter row taken in the page's transaction) and stores them in `tx`.
pub(crate) async fn record_updates(
    tx: &Transaction<'_>,
    updates: Vec<NewUpdate>,
) -> Result<Vec<Arc<StreamUpdate>>, ProjectionError> {
    if updates.is_empty() {
        return Ok(vec![]);
    }
    let last: i64 = tx
        .query_one(
            "UPDATE stream_update_counter SET last_id = last_id + $1 RETURNING last_id",
            &[&(updates.len() as i64)],
        )
        .await?
        .try_get(0)?;
    let first = last - updates.len() as i64 + 1;
    let numbered: Vec<Arc<StreamUpdate>> = updates
        .into_iter()
        .zip(first..)
        .map(|(u, id)| Arc::new(u.numbered(id)))
        .collect();
    let ids: Vec<i64> = numbered.iter().map(|u| u.id).collect();
    let topics: Vec<&str> = numbered.iter().map(|u| u.topic.as_str()).collect();
    let kinds: Vec<&str> = numbered.iter().map(|u| u.kind.as_str()).collect();
    let data: Vec<&str> = numbered.iter().map(|u| &*u.data).collect();
    let txs: Vec<i64> = numbered.iter().map(|u| u.position.tx).collect();
    let seqs: Vec<i64> = numbered.iter().map(|u| u.position.seq).collect();
    tx.execute(
        "INSERT INTO stream_updates (id, topic, kind, data, tx, seq)
         SELECT id, topic, kind, data::jsonb, tx, seq
           FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
             AS u(id, topic, kind, data, tx, seq)",
        &[&ids, &topics, &kinds, &data, &txs, &seqs],
    )
    .await?;
    Ok(numbered)
}

/// Prune the update log once every this many updates.
const PRUNE_EVERY: i64 = 10_000;

/// Hands committed stream updates to this instance's subscribers and,
/// through Redis, to the other instances'; prunes the update log now and then.
pub struct Publisher {
    pool: Pool,
    /// Stream updates kept for resuming subscribers.
    retention: u64,
    /// This instance's live feed (set once it runs).
    feed: OnceLock<Feed>,
    /// Redis, to reach the other instances' subscribers.
    fanout: OnceLock<Arc<Fanout>>,
}

impl Publisher {
    pub fn new(pool: Pool, retention: u64) -> Self {
        Self {
            pool,
            retention,
            feed: OnceLock::new(),
            fanout: OnceLock::new(),
        }
    }

    pub fn set_feed(&self, feed: Feed) {
        let _ = self.feed.set(feed);
    }

    pub fn set_fanout(&self, fanout: Arc<Fanout>) {
        let _ = self.fanout.set(fanout);
    }

    pub async fn publish(&self, numbered: Vec<Arc<StreamUpdate>>) {
        let (Some(first), Some(newest)) = (
            numbered.first().map(|u| u.id),
            numbered.last().map(|u| u.id),
        ) else {
            return;
        };
        if let Some(feed) = self.feed.get() {
            feed.offer(numbered.clone());
        }
        if let Some(fanout) = self.fanout.get() {
            fanout.publish(numbered);
        }
        // Once per PRUNE_EVERY updates: when this page crossed a multiple of it.
        if (first - 1) / PRUNE_EVERY != newest / PRUNE_EVERY {
            self.prune(newest).await;
        }
    }

    /// Drops updates older than the retention; a subscriber whose cursor is
    /// older gets `resync`.
    async fn prune(&self, newest: i64) {
        let keep_from = newest - self.retention as i64;
        if keep_from <= 0 {
            return;
        }
        let result = match self.pool.get().await {
            Ok(client) => client
                .execute("DELETE FROM stream_updates WHERE id < $1", &[&keep_from])
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = result {
            tracing::warn!(error, "pruning stream updates failed");
        }
    }
}

/// Any fold's read model in PostgreSQL.
pub struct PgStore<F: Fold> {
    fold: F,
    pool: Pool,
    /// For the maintenance lock, on a connection of its own.
    connector: PgConnector,
    publisher: Arc<Publisher>,
    /// (live version, whether it may have parked events) as this instance
    /// knows it; None: unknown. See `PostgresInbox` for why it stays true.
    parked_hint: std::sync::Mutex<Option<(i32, bool)>>,
}

impl<F: Fold> PgStore<F> {
    pub fn new(fold: F, pool: Pool, connector: PgConnector, publisher: Arc<Publisher>) -> Self {
        Self {
            fold,
            pool,
            connector,
            publisher,
            parked_hint: std::sync::Mutex::new(None),
        }
    }

    fn hint(&self) -> std::sync::MutexGuard<'_, Option<(i32, bool)>> {
        self.parked_hint.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn may_have_parked(
        &self,
        tx: &Transaction<'_>,
        version: i32,
    ) -> Result<bool, ProjectionError> {
        if let Some((known, may)) = *self.hint() {
            if known == version {
                return Ok(may);
            }
        }
        let any: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM parked_events WHERE projection = $1 AND version = $2)",
                &[&F::NAME, &version],
            )
            .await?
            .try_get(0)?;
        *self.hint() = Some((version, any));
        Ok(any)
    }

    /// The live version, read under the checkpoint lock so that a rebuild's
    /// switch is seen by the very next page.
    async fn live_version(&self, tx: &Transaction<'_>) -> Result<i32, ProjectionError> {
        tx.execute(
            "INSERT INTO projection_versions (projection, version, read_table)
             VALUES ($1, 1, 'projection_rows') ON CONFLICT (projection) DO NOTHING",
            &[&F::NAME],
        )
        .await?;
        Ok(tx
            .query_one(
                "SELECT version FROM projection_versions WHERE projection = $1",
                &[&F::NAME],
            )
            .await?
            .try_get(0)?)
    }

    /// Folds `events` into the rows of `version` inside `tx`; the page's
    /// stream updates and refusals (the caller decides what a refusal means).
    async fn write_page(
        &self,
        tx: &Transaction<'_>,
        version: i32,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> Result<(Vec<NewUpdate>, Vec<Refusal>), ProjectionError> {
        let (reads, keys) = read_page(&self.fold, events);
        let mut loaded: HashMap<String, Option<(i64, F::Row)>> =
            keys.iter().map(|k| (k.clone(), None)).collect();
        if !keys.is_empty() {
            let rows = tx
                .query(
                    "SELECT key, sort, doc FROM projection_rows
                      WHERE projection = $1 AND version = $2 AND key = ANY($3)",
                    &[&F::NAME, &version, &keys],
                )
                .await?;
            for row in rows {
                let Json(doc): Json<F::Row> = row.try_get(2).map_err(|e| {
                    StorageError::defect_because(format!("a {} row does not parse", F::NAME), e)
                })?;
                loaded.insert(row.try_get(0)?, Some((row.try_get(1)?, doc)));
            }
        }
        let mut rows = Rows::new(loaded);
        let refused = fold_page(&self.fold, &mut rows, reads, held, skipped);
        let mut keys = Vec::new();
        let mut sorts = Vec::new();
        let mut docs = Vec::new();
        let mut deletes = Vec::new();
        for (key, value) in rows.changes() {
            match value {
                Some((sort, row)) => {
                    keys.push(key);
                    sorts.push(*sort);
                    docs.push(Json(row));
                }
                None => deletes.push(key),
            }
        }
        if !keys.is_empty() {
            tx.execute(
                "INSERT INTO projection_rows (projection, version, key, sort, doc)
                 SELECT $1, $2, * FROM UNNEST($3::text[], $4::int8[], $5::jsonb[])
                 ON CONFLICT (projection, version, key)
                 DO UPDATE SET sort = EXCLUDED.sort, doc = EXCLUDED.doc",
                &[&F::NAME, &version, &keys, &sorts, &docs],
            )
            .await?;
        }
        if !deletes.is_empty() {
            tx.execute(
                "DELETE FROM projection_rows
                  WHERE projection = $1 AND version = $2 AND key = ANY($3)",
                &[&F::NAME, &version, &deletes],
            )
            .await?;
        }
        Ok((rows.take_updates(), refused))
    }

    /// Re-drives the parked events of `streams` in `tx`; the numbered stream
    /// updates (to publish after commit) and how many applied.
    async fn redrive_streams(
        &self,
        tx: &Transaction<'_>,
        version: i32,
        log: &dyn EventLog,
        streams: &[(String, String)],
    ) -> Result<(Vec<Arc<StreamUpdate>>, u64), ProjectionError> {
        let (events, previous) = take_parked(tx, F::NAME, version, log, streams).await?;
        if events.is_empty() {
            return Ok((vec![], 0));
        }
        let skipped = load_skipped(tx, F::NAME).await?;
        let (updates, refused) = self
            .write_page(tx, version, &events, &mut Held::new(), &skipped)
            .await?;
        insert_parked(tx, F::NAME, version, &parked_again(&refused, &previous)).await?;
        let numbered = record_updates(tx, updates).await?;
        Ok((numbered, (events.len() - refused.len()) as u64))
    }
}

#[async_trait]
impl<F: Fold> Projection for PgStore<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        // Reloaded at every leadership start and after another writer's page.
        *self.hint() = None;
        let client = self.pool.get().await?;
        load_checkpoint(&**client, F::NAME).await
    }

    async fn apply(
        &self,
        expected: Position,
        events: &[SharedEvent],
    ) -> Result<Position, ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(expected);
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        move_checkpoint(&tx, F::NAME, expected, last.position).await?;
        let version = self.live_version(&tx).await?;
        let mut held = if self.may_have_parked(&tx, version).await? {
            held_streams(&tx, F::NAME, version, events).await?
        } else {
            Held::new()
        };
        let (updates, refused) = self
            .write_page(&tx, version, events, &mut held, &BTreeSet::new())
            .await?;
        if let Some(failure) = first_failure(&refused) {
            return Err(failure); // rolls the page back; the engine retries
        }
        let parked: Vec<ParkedEvent> = refused.iter().map(|r| r.parked(0)).collect();
        insert_parked(&*tx, F::NAME, version, &parked).await?;
        let numbered = record_updates(&tx, updates).await?;
        tx.commit().await?;
        self.publisher.publish(numbered).await;
        Ok(last.position)
    }

    async fn park(
        &self,
        expected: Position,
        event: &SharedEvent,
        error: &str,
        attempts: u32,
    ) -> Result<Position, ProjectionError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        move_checkpoint(&tx, F::NAME, expected, event.position).await?;
        let version = self.live_version(&tx).await?;
        *self.hint() = Some((version, true));
        let parked = Refusal::failed(event, error).parked(attempts);
        insert_parked(&*tx, F::NAME, version, &[parked]).await?;
        tx.commit().await?;
        Ok(event.position)
    }
}

fn keyed<R: serde::de::DeserializeOwned>(
    name: &str,
    row: &tokio_postgres::Row,
) -> Result<Keyed<R>, StorageError> {
    let Json(doc): Json<R> = row
        .try_get(2)
        .map_err(|e| StorageError::defect_because(format!("a {name} row does not parse"), e))?;
    Ok(Keyed {
        key: row.try_get(0)?,
        sort: row.try_get(1)?,
        row: doc,
    })
}

#[async_trait]
impl<F: Fold> RowReader<F::Row> for PgStore<F> {
    async fn get(&self, key: &str) -> Result<Option<Keyed<F::Row>>, StorageError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT r.key, r.sort, r.doc FROM projection_rows r
                   JOIN projection_versions v ON v.projection = r.projection AND v.version = r.version
                  WHERE r.projection = $1 AND r.key = $2",
                &[&F::NAME, &key],
            )
            .await?;
        row.map(|r| keyed(F::NAME, &r)).transpose()
    }

    async fn range(
        &self,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Keyed<F::Row>>, StorageError> {
        let client = self.pool.get().await?;
        let (after_sort, after_key) = after.unwrap_or((i64::MIN, String::new()));
        let rows = client
            .query(
                "SELECT r.key, r.sort, r.doc FROM projection_rows r
                   JOIN projection_versions v ON v.projection = r.projection AND v.version = r.version
                  WHERE r.projection = $1 AND r.sort >= $2 AND r.sort < $3
                    AND (r.sort, r.key) > ($4, $5)
                  ORDER BY r.sort, r.key
                  LIMIT $6",
                &[&F::NAME, &from, &to, &after_sort, &after_key, &(limit as i64)],
            )
            .await?;
        rows.iter().map(|r| keyed(F::NAME, r)).collect()
    }
}

#[async_trait]
impl<F: Fold> Parking for PgStore<F> {
    async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, ProjectionError> {
        let client = self.pool.get().await?;
        list_parked(&**client, F::NAME, after, limit).await
    }

    async fn parked_count(&self) -> Result<u64, ProjectionError> {
        let client = self.pool.get().await?;
        count_parked(&**client, F::NAME).await
    }

    async fn skipped(&self) -> Result<BTreeSet<Position>, ProjectionError> {
        let client = self.pool.get().await?;
        load_skipped(&**client, F::NAME).await
    }

    async fn redrive(&self, log: &dyn EventLog) -> Result<RedriveReport, ParkingError> {
        let Some(_maintenance) = Maintenance::try_take(&self.connector, F::NAME).await? else {
            return Err(ParkingError::Busy(F::NAME));
        };
        let mut done: HashSet<String> = HashSet::new();
        let mut after = Position::START;
        let mut applied = 0;
        loop {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            lock_checkpoint(&tx, F::NAME).await?;
            let version = self.live_version(&tx).await?;
            let (causes, last) =
                parked_causes(&tx, F::NAME, version, after, REDRIVE_STREAMS).await?;
            let Some(last) = last else {
                break;
            };
            after = last;
            let streams: Vec<(String, String)> = causes
                .into_iter()
                .filter(|s| done.insert(s.1.clone()))
                .collect();
            if streams.is_empty() {
                continue;
            }
            let (numbered, n) = self.redrive_streams(&tx, version, log, &streams).await?;
            tx.commit().await?;
            self.publisher.publish(numbered).await;
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
        let Some(_maintenance) = Maintenance::try_take(&self.connector, F::NAME).await? else {
            return Err(ParkingError::Busy(F::NAME));
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_checkpoint(&tx, F::NAME).await?;
        let version = self.live_version(&tx).await?;
        let Some(stream) = skip_parked(&tx, F::NAME, version, position, by).await? else {
            return Err(ParkingError::NotParked(position));
        };
        let (numbered, applied) = self
            .redrive_streams(&tx, version, log, std::slice::from_ref(&stream))
            .await?;
        tx.commit().await?;
        self.publisher.publish(numbered).await;
        Ok(RedriveReport {
            applied,
            still_parked: self.parked_count().await?,
        })
    }
}

#[async_trait]
impl<F: Fold> Rebuildable for PgStore<F> {
    async fn version(&self) -> Result<u32, ProjectionError> {
        let client = self.pool.get().await?;
        let version: Option<i32> = client
            .query_opt(
                "SELECT version FROM projection_versions WHERE projection = $1",
                &[&F::NAME],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        Ok(version.unwrap_or(1).max(1) as u32)
    }

    async fn rebuild(
        &self,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError> {
        let Some(_maintenance) = Maintenance::try_take(&self.connector, F::NAME).await? else {
            return Err(busy(F::NAME));
        };
        let mut client = self.pool.get().await?;
        let (live, skipped) = {
            let tx = client.transaction().await?;
            let live = self.live_version(&tx).await?;
            tx.commit().await?;
            (live, load_skipped(&**client, F::NAME).await?)
        };
        let next = live + 1;
        // Leftovers of a rebuild that died before its switch.
        for sql in [
            "DELETE FROM projection_rows WHERE projection = $1 AND version = $2",
            "DELETE FROM parked_events WHERE projection = $1 AND version = $2",
        ] {
            client.execute(sql, &[&F::NAME, &next]).await?;
        }
        let (total, _) = log.behind(Position::START).await?;
        progress.plan(next as u32, total);
        // Beside the live version: nothing here is read until the switch.
        // What it cannot apply it parks at once.
        let mut held = Held::new();
        let mut built = Position::START;
        loop {
            let page = log.read_after(built, BUILD_PAGE).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            let tx = client.transaction().await?;
            self.build_page(&tx, next, &page, &mut held, &skipped)
                .await?;
            tx.commit().await?;
            built = last;
            progress.advance(page.len() as u64);
        }
        progress.set_state(RebuildState::Switching);
        // Catch up to exactly the live checkpoint under its lock, switch, and
        // commit; if the new version is ahead, let the live one go on first.
        for _ in 0..10_000 {
            let tx = client.transaction().await?;
            let checkpoint = lock_checkpoint(&tx, F::NAME).await?;
            while built < checkpoint {
                let page: Vec<SharedEvent> = log
                    .read_after(built, BUILD_PAGE)
                    .await?
                    .into_iter()
                    .filter(|e| e.position <= checkpoint)
                    .collect();
                let Some(last) = page.last().map(|e| e.position) else {
                    break;
                };
                self.build_page(&tx, next, &page, &mut held, &skipped)
                    .await?;
                built = last;
                progress.advance(page.len() as u64);
            }
            if built == checkpoint {
                tx.execute(
                    "UPDATE projection_versions SET version = $2 WHERE projection = $1",
                    &[&F::NAME, &next],
                )
                .await?;
                tx.commit().await?;
                for sql in [
                    "DELETE FROM projection_rows WHERE projection = $1 AND version <> $2",
                    "DELETE FROM parked_events WHERE projection = $1 AND version <> $2",
                ] {
                    client.execute(sql, &[&F::NAME, &next]).await?;
                }
                return Ok(next as u32);
            }
            drop(tx);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Err(StorageError::defect(format!(
            "the live {} kept moving; the rebuild could not switch",
            F::NAME
        ))
        .into())
    }
}

impl<F: Fold> PgStore<F> {
    /// Folds a page into version `version` for a rebuild: refusals are parked
    /// at once, stream updates dropped (subscribers keep the live version's).
    async fn build_page(
        &self,
        tx: &Transaction<'_>,
        version: i32,
        page: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> Result<(), ProjectionError> {
        let (_, refused) = self.write_page(tx, version, page, held, skipped).await?;
        let parked: Vec<ParkedEvent> = refused.iter().map(|r| r.parked(1)).collect();
        insert_parked(tx, F::NAME, version, &parked).await
    }
}
