//! The build phase of a PostgreSQL inbox rebuild: the whole log, up to the
//! live checkpoint, folded into a new table.
//!
//! Three stages run at once, so both cores and the database stay busy:
//! - the **reader** pages through the log in commit order on a connection of
//!   its own, fetching only what a fold needs (metadata only to check that
//!   it reads, as the live reader does), and decodes payloads straight from
//!   their JSON text into domain events;
//! - the **folder** folds them into a write-behind cache of rows (bounded by
//!   `--rebuild-cache-rows`, least recently touched out first). Most
//!   notifications get all their events while they are cached, so most rows
//!   are written once. A row is looked up in the table only when an event
//!   other than a stream's first misses the cache after rows have spilled;
//! - the **writer** turns rows the cache evicts into one binary `COPY` per
//!   batch (rows new to the table) or an upsert (rows read back from it).
//!
//! The table has no index while it is built: the primary key is made in one
//! pass at the end, or the first time a row must be looked up. A crash
//! loses only the half-built table, which the next attempt drops, so the
//! writer does not wait for its commits to reach disk.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::pin;

use cqrs_es::Aggregate;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;

use super::fold::{decode_json, fold_decoded, CurrentRows, Decoded, EventRef, Held};
use super::postgres::{to_row, upsert_sql, FlatRow, PostgresInbox, COLUMNS, ROW_COLUMNS};
use super::{InboxRow, NAME};
use crate::domain::{Notification, NotificationId};
use crate::projections::parked::ParkedEvent;
use crate::projections::rebuild::{RebuildTuning, Rebuilds};
use crate::projections::store::postgres::insert_parked;
use crate::projections::ProjectionError;
use crate::storage::postgres::{check_json, unreadable_metadata, RawJson};
use crate::storage::{Position, StorageError};

/// Parked events kept before they are written out.
const PARKED_BATCH: usize = 10_000;

/// What the build leaves for the switch.
pub(super) struct Built {
    /// The last event folded.
    pub checkpoint: Position,
    /// Streams the new version holds back, and the event holding each.
    pub held: Held,
}

/// A page of the log, decoded.
struct Chunk {
    decoded: Vec<Decoded>,
    /// The last event read (of any aggregate).
    end: Position,
    /// Events read (of any aggregate), for progress.
    events: u64,
}

/// `AS tx`: unnamed, the first column would be called `transaction_id`, and
/// ORDER BY would sort by it (a bigint) instead of walking the index.
const READ: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata
  FROM events
 WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
   AND (transaction_id, global_position) <= ($3::text::xid8, $4)
 ORDER BY transaction_id, global_position
 LIMIT $5";

/// Reads the log after `after` up to the live checkpoint (as it moves) and
/// sends decoded pages until it has caught up.
async fn read(
    client: tokio_postgres::Client,
    mut after: Position,
    page_size: i64,
    pages: mpsc::Sender<Chunk>,
) -> Result<(), ProjectionError> {
    let statement = client.prepare(READ).await?;
    loop {
        let live = client
            .query_one(
                "SELECT tx, seq FROM projection_checkpoints WHERE projection = $1",
                &[&NAME],
            )
            .await?;
        let live = Position::new(live.try_get(0)?, live.try_get(1)?);
        let rows = client
            .query(
                &statement,
                &[
                    &after.tx.to_string(),
                    &after.seq,
                    &live.tx.to_string(),
                    &live.seq,
                    &page_size,
                ],
            )
            .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        let end = Position::new(last.try_get(0)?, last.try_get(1)?);
        let mut decoded = Vec::with_capacity(rows.len());
        for row in &rows {
            let aggregate_type: String = row.try_get(2)?;
            if aggregate_type != Notification::TYPE {
                continue;
            }
            let event = EventRef {
                position: Position::new(row.try_get(0)?, row.try_get(1)?),
                aggregate_type,
                aggregate_id: row.try_get(3)?,
                sequence: row.try_get(4)?,
                event_type: row.try_get(5)?,
            };
            let version: &str = row.try_get(6)?;
            let RawJson(payload) = row.try_get(7)?;
            let RawJson(metadata) = row.try_get(8)?;
            decoded.push(match check_json(metadata) {
                // The live reader refuses such an event too (it reads metadata).
                Err(e) => Decoded {
                    event,
                    payload: Err(unreadable_metadata(&e)),
                },
                Ok(()) => decode_json(event, version, payload),
            });
        }
        let chunk = Chunk {
            decoded,
            end,
            events: rows.len() as u64,
        };
        if pages.send(chunk).await.is_err() {
            return Ok(()); // the folder stopped; it reports why
        }
        after = end;
    }
}

/// Rows the cache let go of, for the writer.
#[derive(Default)]
struct Evicted {
    /// Rows not in the table yet.
    inserts: Vec<(NotificationId, InboxRow)>,
    /// Rows read from the table and changed since.
    upserts: Vec<(NotificationId, InboxRow)>,
    /// Rows read from the table and deleted since.
    deletes: Vec<uuid::Uuid>,
}

enum ToWriter {
    Rows(Evicted),
    /// Answered once everything sent before is in the table.
    Barrier(oneshot::Sender<()>),
}

const COPY_TYPES: [Type; 13] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    Type::BOOL,
    Type::BOOL,
    Type::BOOL,
    Type::INT8,
    Type::INT8,
    Type::JSONB,
    Type::INT8,
    Type::INT8,
];

/// Writes what the cache evicts into `table`.
async fn write(
    client: tokio_postgres::Client,
    table: String,
    mut batches: mpsc::Receiver<ToWriter>,
) -> Result<(), ProjectionError> {
    client.batch_execute("SET synchronous_commit = off").await?;
    let copy = format!("COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)");
    while let Some(message) = batches.recv().await {
        let rows = match message {
            ToWriter::Rows(rows) => rows,
            ToWriter::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        if !rows.inserts.is_empty() {
            let sink = client.copy_in(&copy).await?;
            let mut writer = pin!(tokio_postgres::binary_copy::BinaryCopyInWriter::new(
                sink,
                &COPY_TYPES
            ));
            for (id, row) in &rows.inserts {
                writer
                    .as_mut()
                    .write(&FlatRow::of(*id, row).params())
                    .await?;
            }
            writer.finish().await?;
        }
        if !rows.upserts.is_empty() {
            let statement = upsert_sql(&table);
            for part in rows.upserts.chunks(1_000) {
                let columns = super::postgres::columns_of(part);
                client.execute(&statement, &columns.params()).await?;
            }
        }
        if !rows.deletes.is_empty() {
            client
                .execute(
                    &format!("DELETE FROM {table} WHERE id = ANY($1)"),
                    &[&rows.deletes],
                )
                .await?;
        }
    }
    Ok(())
}

/// One cached row and what the cache knows of it.
struct Entry {
    row: Option<InboxRow>,
    /// The table has this row (it was read from there).
    in_table: bool,
    /// Changed since it was read (or made).
    dirty: bool,
    /// The chunk that last touched it.
    touched: u32,
}

/// The write-behind cache the folder folds into.
struct Cache {
    entries: HashMap<NotificationId, Entry>,
    /// The chunk being folded.
    chunk: u32,
    /// Past this many rows, the least recently touched are let go.
    capacity: usize,
}

impl CurrentRows for Cache {
    fn slot(&mut self, id: NotificationId) -> &mut Option<InboxRow> {
        let chunk = self.chunk;
        let entry = self.entries.entry(id).or_insert(Entry {
            row: None,
            in_table: false,
            dirty: true,
            touched: chunk,
        });
        entry.dirty = true;
        entry.touched = chunk;
        &mut entry.row
    }
}

impl Cache {
    /// Lets go of the least recently touched rows until at most three
    /// quarters of the capacity are held (everything, when `all`).
    fn evict(&mut self, all: bool) -> Evicted {
        let mut out = Evicted::default();
        let keep = if all { 0 } else { self.capacity * 3 / 4 };
        if self.entries.len() <= keep {
            return out;
        }
        // The newest chunks whose rows fit in `keep` stay.
        let mut per_chunk: Vec<(u32, usize)> = {
            let mut counts: HashMap<u32, usize> = HashMap::new();
            for entry in self.entries.values() {
                *counts.entry(entry.touched).or_default() += 1;
            }
            counts.into_iter().collect()
        };
        per_chunk.sort_unstable_by_key(|(chunk, _)| std::cmp::Reverse(*chunk));
        let mut kept = 0;
        let mut oldest_kept = u32::MAX;
        for (chunk, count) in per_chunk {
            if kept + count > keep {
                break;
            }
            kept += count;
            oldest_kept = chunk;
        }
        let leaving: Vec<NotificationId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.touched < oldest_kept)
            .map(|(id, _)| *id)
            .collect();
        for id in leaving {
            let Some(entry) = self.entries.remove(&id) else {
                continue;
            };
            match (entry.row, entry.in_table) {
                (Some(row), false) => out.inserts.push((id, row)),
                (Some(row), true) if entry.dirty => out.upserts.push((id, row)),
                (None, true) => out.deletes.push(id.0),
                _ => {}
            }
        }
        out
    }
}

/// Folds the log up to the live checkpoint into `table` (empty, without
/// indexes); parks in `version` what cannot apply. Leaves the table with its
/// primary key.
pub(super) async fn build(
    inbox: &PostgresInbox,
    table: &str,
    version: i32,
    skipped: &BTreeSet<Position>,
    progress: &Rebuilds,
) -> Result<Built, ProjectionError> {
    let tuning = inbox.tuning;
    let connect = || async {
        let client = inbox.connector.connect().await?;
        // The stages' statements are paged, but building the primary key
        // grows with the log: a rebuild is not bounded by statement_timeout.
        client.batch_execute("SET statement_timeout = 0").await?;
        Ok::<_, ProjectionError>(client)
    };
    let (pages_tx, mut pages) = mpsc::channel(2);
    let reader: JoinHandle<Result<(), ProjectionError>> = tokio::spawn(read(
        connect().await?,
        Position::START,
        tuning.page_size.max(1) as i64,
        pages_tx,
    ));
    let (to_writer, batches) = mpsc::channel(2);
    let writer: JoinHandle<Result<(), ProjectionError>> =
        tokio::spawn(write(connect().await?, table.to_owned(), batches));
    let folder = connect().await?;

    let folded = fold_all(
        &folder, &mut pages, &to_writer, table, version, skipped, progress, tuning,
    )
    .await;
    drop(to_writer);
    drop(pages);
    // A reader or writer that failed is why the folder stopped (it only saw
    // a closed channel): their errors say more, so they come first. A folder
    // that failed closed the channels, and the others then end without one.
    let written = writer.await;
    let read = reader.await;
    for stage in [written, read] {
        stage.map_err(|e| StorageError::defect_because("a rebuild stage failed", e))??;
    }
    let (built, has_key) = folded?;
    if !has_key {
        folder
            .batch_execute(&format!("ALTER TABLE {table} ADD PRIMARY KEY (id)"))
            .await?;
    }
    Ok(built)
}

/// The folder: returns what the build leaves and whether the table already
/// has its primary key.
#[allow(clippy::too_many_arguments)]
async fn fold_all(
    client: &tokio_postgres::Client,
    pages: &mut mpsc::Receiver<Chunk>,
    to_writer: &mpsc::Sender<ToWriter>,
    table: &str,
    version: i32,
    skipped: &BTreeSet<Position>,
    progress: &Rebuilds,
    tuning: RebuildTuning,
) -> Result<(Built, bool), ProjectionError> {
    let writer_gone = || StorageError::defect("the rebuild's writer stopped");
    let mut cache = Cache {
        entries: HashMap::new(),
        chunk: 0,
        capacity: tuning.cache_rows.max(1),
    };
    let mut held = Held::new();
    let mut parked: Vec<ParkedEvent> = Vec::new();
    let mut checkpoint = Position::START;
    let mut spilled = false;
    let mut has_key = false;
    while let Some(chunk) = pages.recv().await {
        cache.chunk += 1;
        // A stream's first event in this chunk, when it is not the stream's
        // first ever and the row is not cached, may have its row in the table.
        let mut seen = HashSet::new();
        let misses: Vec<uuid::Uuid> = chunk
            .decoded
            .iter()
            .filter_map(|d| {
                let (id, _) = d.payload.as_ref().ok()?;
                let first_here = seen.insert(*id);
                (first_here && d.event.sequence > 1 && !cache.entries.contains_key(id))
                    .then_some(id.0)
            })
            .collect();
        if spilled && !misses.is_empty() {
            // Everything evicted must be in the table before it is read.
            let (done, written) = oneshot::channel();
            to_writer
                .send(ToWriter::Barrier(done))
                .await
                .map_err(|_| writer_gone())?;
            written.await.map_err(|_| writer_gone())?;
            if !has_key {
                client
                    .batch_execute(&format!("ALTER TABLE {table} ADD PRIMARY KEY (id)"))
                    .await?;
                has_key = true;
            }
            let sql = format!("SELECT {ROW_COLUMNS} FROM {table} WHERE id = ANY($1)");
            for row in client.query(&sql, &[&misses]).await? {
                let id = NotificationId(row.try_get("id")?);
                cache.entries.insert(
                    id,
                    Entry {
                        row: Some(to_row(&row)?),
                        in_table: true,
                        dirty: false,
                        touched: cache.chunk,
                    },
                );
            }
        }
        let refused = fold_decoded(&mut cache, chunk.decoded, &mut held, skipped);
        parked.extend(refused.iter().map(|r| r.parked(1)));
        if parked.len() >= PARKED_BATCH {
            insert_parked(client, NAME, version, &std::mem::take(&mut parked)).await?;
        }
        checkpoint = chunk.end;
        progress.advance(chunk.events);
        if cache.entries.len() > cache.capacity {
            let evicted = cache.evict(false);
            spilled |= !evicted.inserts.is_empty();
            to_writer
                .send(ToWriter::Rows(evicted))
                .await
                .map_err(|_| writer_gone())?;
        }
    }
    let rest = cache.evict(true);
    to_writer
        .send(ToWriter::Rows(rest))
        .await
        .map_err(|_| writer_gone())?;
    insert_parked(client, NAME, version, &parked).await?;
    Ok((Built { checkpoint, held }, has_key))
}
