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
use tokio_postgres::{GenericClient, Transaction};

use crate::projections::inbox::fold::{first_failure, Held, Refusal};
use crate::projections::parked::{ParkedEvent, Parking, ParkingError, RedriveReport};
use crate::projections::rebuild::{Rebuildable, Rebuilds};
use crate::projections::{Projection, ProjectionError};
use crate::storage::postgres::PgConnector;
use crate::storage::{EventLog, Position, SharedEvent, StorageError};
use crate::streams::fanout::Fanout;
use crate::streams::feed::Feed;
use crate::streams::updates::{Announce, NewUpdate, StreamUpdate};

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
async fn move_checkpoint(
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
async fn held_streams(
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
async fn list_parked(
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
async fn count_parked(client: &impl GenericClient, name: &str) -> Result<u64, ProjectionError> {
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
async fn parked_causes(
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
async fn skip_parked(
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
async fn take_parked(
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
fn parked_again(
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
const REDRIVE_STREAMS: i64 = 500;

/// Numbers `updates` (1, 2, 3, ... across all projections, without holes:
/// a counter row taken in the page's transaction) and stores them in `tx`.
async fn record_updates(
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

#[async_trait]
impl Announce for Publisher {
    async fn announce(&self, update: NewUpdate) -> Result<(), StorageError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let numbered = match record_updates(&tx, vec![update]).await {
            Ok(numbered) => numbered,
            Err(ProjectionError::Storage(e)) => return Err(e),
            Err(e) => return Err(StorageError::defect(e.to_string())),
        };
        tx.commit().await?;
        self.publish(numbered).await;
        Ok(())
    }
}

/// The live version of a projection and the table it reads (a read model
/// with tables of its own names them per version; the keyed rows ignore it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub version: i32,
    pub table: String,
}

/// A read model in PostgreSQL, as the store drives it: how a page is folded
/// into the live version inside the store's transaction. Rebuilding is its
/// own (the inbox bulk-loads a table; keyed rows write the next version).
#[async_trait]
pub trait PgModel: Rebuildable + Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// The table a fresh deployment's version 1 reads.
    fn first_table(&self) -> &'static str;

    /// Folds `events` (in log order) into the live version inside `tx`.
    /// Events of streams in `held` are refused as held, events at `skipped`
    /// positions passed over. Returns the page's stream updates and the
    /// refusals; the store decides what a refusal means.
    async fn write_page(
        &self,
        tx: &Transaction<'_>,
        live: &Live,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> Result<(Vec<NewUpdate>, Vec<Refusal>), ProjectionError>;
}

/// A read model in PostgreSQL with everything around its fold: one
/// transaction per page with the checkpoint moved in it, parked and skipped
/// events with re-drive, the page's stream updates numbered and published.
pub struct PgStore<M: PgModel> {
    model: Arc<M>,
    pool: Pool,
    /// For the maintenance lock, on a connection of its own.
    connector: PgConnector,
    publisher: Arc<Publisher>,
    /// (live version, whether it may have parked events), as this instance
    /// knows it; None: unknown, count first. While this instance applies
    /// every page, only its own pages can park in the live version (a
    /// re-drive or skip only re-parks or removes; a rebuild brings a new
    /// version), so "none" stays true until the checkpoint is reloaded, which
    /// a leadership change or another writer's page always causes.
    parked_hint: std::sync::Mutex<Option<(i32, bool)>>,
}

impl<M: PgModel> PgStore<M> {
    pub fn new(
        model: Arc<M>,
        pool: Pool,
        connector: PgConnector,
        publisher: Arc<Publisher>,
    ) -> Self {
        Self {
            model,
            pool,
            connector,
            publisher,
            parked_hint: std::sync::Mutex::new(None),
        }
    }

    fn name(&self) -> &'static str {
        self.model.name()
    }

    fn hint(&self) -> std::sync::MutexGuard<'_, Option<(i32, bool)>> {
        self.parked_hint.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `version` may hold parked events (if not, no stream of a page
    /// can be held and the page needs no look-up).
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
                &[&self.name(), &version],
            )
            .await?
            .try_get(0)?;
        *self.hint() = Some((version, any));
        Ok(any)
    }

    /// The live version, read under the checkpoint lock so that a rebuild's
    /// switch is seen by the very next page.
    async fn live(&self, tx: &Transaction<'_>) -> Result<Live, ProjectionError> {
        live_version(tx, self.name(), self.model.first_table()).await
    }

    /// Re-drives the parked events of `streams` in `tx`; the numbered stream
    /// updates (to publish after commit) and how many applied.
    async fn redrive_streams(
        &self,
        tx: &Transaction<'_>,
        live: &Live,
        log: &dyn EventLog,
        streams: &[(String, String)],
    ) -> Result<(Vec<Arc<StreamUpdate>>, u64), ProjectionError> {
        let name = self.name();
        let (events, previous) = take_parked(tx, name, live.version, log, streams).await?;
        if events.is_empty() {
            return Ok((vec![], 0));
        }
        let skipped = load_skipped(tx, name).await?;
        let (updates, refused) = self
            .model
            .write_page(tx, live, &events, &mut Held::new(), &skipped)
            .await?;
        insert_parked(tx, name, live.version, &parked_again(&refused, &previous)).await?;
        let numbered = record_updates(tx, updates).await?;
        Ok((numbered, (events.len() - refused.len()) as u64))
    }
}

/// The live version of `name` and its table (made at version 1 reading
/// `first_table` when there is none yet).
pub(crate) async fn live_version(
    tx: &Transaction<'_>,
    name: &str,
    first_table: &str,
) -> Result<Live, ProjectionError> {
    let row = match tx
        .query_opt(
            "SELECT version, read_table FROM projection_versions WHERE projection = $1",
            &[&name],
        )
        .await?
    {
        Some(row) => row,
        None => {
            tx.query_one(
                "INSERT INTO projection_versions (projection, version, read_table)
                 VALUES ($1, 1, $2) ON CONFLICT (projection) DO UPDATE SET projection = EXCLUDED.projection
                 RETURNING version, read_table",
                &[&name, &first_table],
            )
            .await?
        }
    };
    Ok(Live {
        version: row.try_get(0)?,
        table: row.try_get(1)?,
    })
}

#[async_trait]
impl<M: PgModel> Projection for PgStore<M> {
    fn name(&self) -> &'static str {
        self.model.name()
    }

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        // Reloaded at every leadership start and after another writer's page:
        // what this instance knew of parked events may be out of date.
        *self.hint() = None;
        let client = self.pool.get().await?;
        load_checkpoint(&**client, self.name()).await
    }

    async fn apply(
        &self,
        expected: Position,
        events: &[SharedEvent],
    ) -> Result<Position, ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(expected);
        };
        let name = self.name();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        move_checkpoint(&tx, name, expected, last.position).await?;
        let live = self.live(&tx).await?;
        let mut held = if self.may_have_parked(&tx, live.version).await? {
            held_streams(&tx, name, live.version, events).await?
        } else {
            Held::new()
        };
        let (updates, refused) = self
            .model
            .write_page(&tx, &live, events, &mut held, &BTreeSet::new())
            .await?;
        if let Some(failure) = first_failure(&refused) {
            return Err(failure); // rolls the page back; the engine retries
        }
        let parked: Vec<ParkedEvent> = refused.iter().map(|r| r.parked(0)).collect();
        insert_parked(&*tx, name, live.version, &parked).await?;
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
        let name = self.name();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        move_checkpoint(&tx, name, expected, event.position).await?;
        let live = self.live(&tx).await?;
        *self.hint() = Some((live.version, true));
        let parked = Refusal::failed(event, error).parked(attempts);
        insert_parked(&*tx, name, live.version, &[parked]).await?;
        tx.commit().await?;
        Ok(event.position)
    }
}

#[async_trait]
impl<M: PgModel> Parking for PgStore<M> {
    async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, ProjectionError> {
        let client = self.pool.get().await?;
        list_parked(&**client, self.name(), after, limit).await
    }

    async fn parked_count(&self) -> Result<u64, ProjectionError> {
        let client = self.pool.get().await?;
        count_parked(&**client, self.name()).await
    }

    async fn skipped(&self) -> Result<BTreeSet<Position>, ProjectionError> {
        let client = self.pool.get().await?;
        load_skipped(&**client, self.name()).await
    }

    /// A re-drive runs under the live checkpoint's row lock (the live
    /// projector waits for it, as it waits for a rebuild's switch), so it
    /// never interleaves with a page; and under the maintenance lock, so never
    /// beside a rebuild. Its read-model changes, stream updates and
    /// parked-table changes commit in one transaction per batch of streams.
    async fn redrive(&self, log: &dyn EventLog) -> Result<RedriveReport, ParkingError> {
        let name = self.name();
        let Some(_maintenance) = Maintenance::try_take(&self.connector, name).await? else {
            return Err(ParkingError::Busy(name));
        };
        let mut done: HashSet<String> = HashSet::new();
        let mut after = Position::START;
        let mut applied = 0;
        loop {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            lock_checkpoint(&tx, name).await?;
            let live = self.live(&tx).await?;
            let (causes, last) =
                parked_causes(&tx, name, live.version, after, REDRIVE_STREAMS).await?;
            let Some(last) = last else {
                break;
            };
            after = last;
            // A stream whose re-drive failed further on shows up again with a
            // later cause: once per re-drive is enough.
            let streams: Vec<(String, String)> = causes
                .into_iter()
                .filter(|s| done.insert(s.1.clone()))
                .collect();
            if streams.is_empty() {
                continue;
            }
            let (numbered, n) = self.redrive_streams(&tx, &live, log, &streams).await?;
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
        let name = self.name();
        let Some(_maintenance) = Maintenance::try_take(&self.connector, name).await? else {
            return Err(ParkingError::Busy(name));
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_checkpoint(&tx, name).await?;
        let live = self.live(&tx).await?;
        let Some(stream) = skip_parked(&tx, name, live.version, position, by).await? else {
            return Err(ParkingError::NotParked(position));
        };
        let (numbered, applied) = self
            .redrive_streams(&tx, &live, log, std::slice::from_ref(&stream))
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
impl<M: PgModel> Rebuildable for PgStore<M> {
    async fn version(&self) -> Result<u32, ProjectionError> {
        self.model.version().await
    }

    async fn rebuild(
        &self,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError> {
        self.model.rebuild(log, progress).await
    }
}
