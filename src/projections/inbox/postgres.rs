//! The inbox read model in PostgreSQL (table `inbox_notifications`, see
//! migrations/0002_inbox.sql), written through deadpool-postgres.
//!
//! One transaction per page of events: take the checkpoint row (guarded by its
//! expected value, so two projector instances cannot both apply a page), load
//! the touched rows, fold in memory, write them back with one UNNEST upsert and
//! one delete, move the checkpoint, commit.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
    counts_update, cut_page, fold_page, ids_in, page_updates, remember, InboxPage, InboxQuery,
    InboxReader, InboxRow, PageUpdates, ReadFilter, NAME,
};
use crate::domain::{Notification, NotificationId, UserId};
use crate::projections::rebuild::{RebuildState, Rebuildable, Rebuilds, BUILD_PAGE};
use crate::projections::{Projection, ProjectionError};
use crate::storage::{EventLog, Position, SharedEvent, StorageError};
use crate::streams::fanout::Fanout;
use crate::streams::feed::Feed;
use crate::streams::updates::StreamUpdate;

pub struct PostgresInbox {
    pool: Pool,
    /// For the rebuild lock, held on a connection of its own.
    pg_config: tokio_postgres::Config,
    /// Stream updates kept for resuming subscribers.
    retention: u64,
    /// This instance's live feed (set once it runs).
    feed: OnceLock<Feed>,
    /// Redis, to reach the other instances' subscribers.
    fanout: OnceLock<Arc<Fanout>>,
}

impl PostgresInbox {
    pub fn new(pool: Pool, pg_config: tokio_postgres::Config, retention: u64) -> Self {
        Self {
            pool,
            pg_config,
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
}

const ROW_COLUMNS: &str = "id, state, inbox_tx, inbox_seq, last_tx, last_seq";

fn to_row(row: &Row) -> Result<InboxRow, StorageError> {
    let state: serde_json::Value = row.try_get("state")?;
    let state: Notification = serde_json::from_value(state)
        .map_err(|e| StorageError::Backend(format!("an inbox row does not parse: {e}")))?;
    let inbox_tx: Option<i64> = row.try_get("inbox_tx")?;
    let inbox_seq: Option<i64> = row.try_get("inbox_seq")?;
    Ok(InboxRow {
        state,
        inbox_position: inbox_tx.zip(inbox_seq).map(|(t, s)| Position::new(t, s)),
        last_position: Position::new(row.try_get("last_tx")?, row.try_get("last_seq")?),
    })
}

fn upsert_sql(table: &str) -> String {
    format!(
        "
INSERT INTO {table}
       (id, recipient, category, lifecycle, in_inbox, read, seen, archived,
        inbox_tx, inbox_seq, state, last_tx, last_seq)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[],
                     $7::bool[], $8::bool[], $9::int8[], $10::int8[], $11::jsonb[],
                     $12::int8[], $13::int8[])
ON CONFLICT (id) DO UPDATE SET
       recipient = EXCLUDED.recipient, category = EXCLUDED.category,
       lifecycle = EXCLUDED.lifecycle, in_inbox = EXCLUDED.in_inbox, read = EXCLUDED.read,
       seen = EXCLUDED.seen, archived = EXCLUDED.archived, inbox_tx = EXCLUDED.inbox_tx,
       inbox_seq = EXCLUDED.inbox_seq, state = EXCLUDED.state, last_tx = EXCLUDED.last_tx,
       last_seq = EXCLUDED.last_seq"
    )
}

/// The live version's table, read under the checkpoint lock so that a
/// rebuild's switch is seen by the very next page.
async fn live_table(tx: &tokio_postgres::Transaction<'_>) -> Result<String, ProjectionError> {
    let table: String = tx
        .query_one(
            "SELECT read_table FROM projection_versions WHERE projection = $1",
            &[&NAME],
        )
        .await?
        .try_get(0)?;
    checked_table(&table)
}

/// The inbox's secondary indexes (as in migrations/0002) for a rebuilt table.
fn secondary_indexes(table: &str) -> String {
    format!(
        "CREATE INDEX {table}_page ON {table} (recipient, archived, inbox_tx DESC, inbox_seq DESC)
             WHERE in_inbox;
         CREATE INDEX {table}_unread ON {table} (recipient)
             WHERE in_inbox AND NOT read AND NOT archived;
         CREATE INDEX {table}_unseen ON {table} (recipient)
             WHERE in_inbox AND NOT seen AND NOT archived;
         ANALYZE {table};"
    )
}

/// Table names are built into SQL, so only ones tidings makes are accepted.
pub(crate) fn checked_table(table: &str) -> Result<String, ProjectionError> {
    let ok = table == "inbox_notifications"
        || table
            .strip_prefix("inbox_notifications_v")
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(table.to_owned())
    } else {
        Err(StorageError::Backend(format!("`{table}` is not an inbox table")).into())
    }
}

/// Folds `events` into the rows of `table` inside `tx`; returns what changed
/// for the streams.
pub(crate) async fn write_page(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    events: &[SharedEvent],
    page_end: Position,
) -> Result<PageUpdates, ProjectionError> {
    let ids = ids_in(events)?;
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
    let mut rows: HashMap<NotificationId, Option<InboxRow>> =
        ids.iter().map(|id| (*id, None)).collect();
    let sql = format!("SELECT {ROW_COLUMNS} FROM {table} WHERE id = ANY($1)");
    for row in tx.query(&sql, &[&uuids]).await? {
        let id = NotificationId(row.try_get("id")?);
        rows.insert(id, Some(to_row(&row)?));
    }
    let before = remember(&rows);
    fold_page(&mut rows, events)?;
    let updates = page_updates(&before, &rows, page_end);
    let mut upserts = Columns::default();
    let mut deletes = Vec::new();
    for (id, row) in &rows {
        match row {
            Some(row) => upserts.push(*id, row)?,
            None => deletes.push(id.0),
        }
    }
    if !upserts.id.is_empty() {
        tx.execute(&upsert_sql(table), &upserts.params()).await?;
    }
    if !deletes.is_empty() {
        tx.execute(
            &format!("DELETE FROM {table} WHERE id = ANY($1)"),
            &[&deletes],
        )
        .await?;
    }
    Ok(updates)
}

/// Column arrays for the UNNEST upsert.
/// The state is written straight from the struct (no value tree between).
#[derive(Default)]
struct Columns<'a> {
    id: Vec<uuid::Uuid>,
    recipient: Vec<String>,
    category: Vec<String>,
    lifecycle: Vec<&'static str>,
    in_inbox: Vec<bool>,
    read: Vec<bool>,
    seen: Vec<bool>,
    archived: Vec<bool>,
    inbox_tx: Vec<Option<i64>>,
    inbox_seq: Vec<Option<i64>>,
    state: Vec<tokio_postgres::types::Json<&'a Notification>>,
    last_tx: Vec<i64>,
    last_seq: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, id: NotificationId, row: &'a InboxRow) -> Result<(), ProjectionError> {
        let content = row.state.content.as_ref();
        self.id.push(id.0);
        self.recipient
            .push(content.map_or_else(String::new, |c| c.recipient.as_str().to_owned()));
        self.category
            .push(content.map_or_else(String::new, |c| c.category.as_str().to_owned()));
        self.lifecycle.push(row.state.lifecycle.as_str());
        self.in_inbox.push(row.in_inbox());
        self.read.push(row.state.is_read());
        self.seen.push(row.state.is_seen());
        self.archived.push(row.state.is_archived());
        self.inbox_tx.push(row.inbox_position.map(|p| p.tx));
        self.inbox_seq.push(row.inbox_position.map(|p| p.seq));
        self.state.push(tokio_postgres::types::Json(&row.state));
        self.last_tx.push(row.last_position.tx);
        self.last_seq.push(row.last_position.seq);
        Ok(())
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 13] {
        [
            &self.id,
            &self.recipient,
            &self.category,
            &self.lifecycle,
            &self.in_inbox,
            &self.read,
            &self.seen,
            &self.archived,
            &self.inbox_tx,
            &self.inbox_seq,
            &self.state,
            &self.last_tx,
            &self.last_seq,
        ]
    }
}

#[async_trait]
impl Projection for PostgresInbox {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO projection_checkpoints (projection, tx, seq) VALUES ($1, 0, 0)
                 ON CONFLICT (projection) DO NOTHING",
                &[&NAME],
            )
            .await?;
        let row = client
            .query_one(
                "SELECT tx, seq FROM projection_checkpoints WHERE projection = $1",
                &[&NAME],
            )
            .await?;
        Ok(Position::new(row.try_get(0)?, row.try_get(1)?))
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
        let moved = tx
            .execute(
                "UPDATE projection_checkpoints SET tx = $2, seq = $3, updated_at = now()
                  WHERE projection = $1 AND tx = $4 AND seq = $5",
                &[
                    &NAME,
                    &last.position.tx,
                    &last.position.seq,
                    &expected.tx,
                    &expected.seq,
                ],
            )
            .await?;
        if moved != 1 {
            return Err(ProjectionError::CheckpointMoved { expected });
        }
        let table = live_table(&tx).await?;
        let updates = write_page(&tx, &table, events, last.position).await?;
        let numbered = record_updates(&tx, &table, updates, last.position).await?;
        tx.commit().await?;
        if let (Some(first), Some(newest)) = (
            numbered.first().map(|u| u.id),
            numbered.last().map(|u| u.id),
        ) {
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
        Ok(last.position)
    }
}

/// Prune the update log once every this many updates.
const PRUNE_EVERY: i64 = 10_000;

impl PostgresInbox {
    /// Drops updates older than the retention; a subscriber whose cursor is
    /// older gets `resync`.
    async fn prune(&self, newest: i64) {
        let keep_from = newest - self.retention as i64;
        if keep_from <= 0 {
            return;
        }
        match self.pool.get().await {
            Ok(client) => {
                if let Err(e) = client
                    .execute("DELETE FROM stream_updates WHERE id < $1", &[&keep_from])
                    .await
                {
                    tracing::warn!(error = %e, "pruning stream updates failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning stream updates failed"),
        }
    }
}

/// Numbers the page's updates (plus the counts of every touched inbox) and
/// stores them in the page's transaction.
async fn record_updates(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    updates: PageUpdates,
    page_end: Position,
) -> Result<Vec<Arc<StreamUpdate>>, ProjectionError> {
    let mut new = updates.rows;
    if !updates.touched.is_empty() {
        let names: Vec<&str> = updates.touched.iter().map(|u| u.as_str()).collect();
        let sql = format!(
            "SELECT recipient, count(*) FILTER (WHERE NOT read), count(*) FILTER (WHERE NOT seen)
               FROM {table}
              WHERE recipient = ANY($1) AND in_inbox AND NOT archived
              GROUP BY recipient"
        );
        let counts: HashMap<String, (i64, i64)> = tx
            .query(&sql, &[&names])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        for recipient in &updates.touched {
            let (unread, unseen) = counts.get(recipient.as_str()).copied().unwrap_or((0, 0));
            new.push(counts_update(
                recipient,
                unread as u64,
                unseen as u64,
                page_end,
            ));
        }
    }
    if new.is_empty() {
        return Ok(vec![]);
    }
    let last: i64 = tx
        .query_one(
            "UPDATE stream_update_counter SET last_id = last_id + $1 RETURNING last_id",
            &[&(new.len() as i64)],
        )
        .await?
        .try_get(0)?;
    let first = last - new.len() as i64 + 1;
    let numbered: Vec<Arc<StreamUpdate>> = new
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

#[async_trait]
impl Rebuildable for PostgresInbox {
    async fn version(&self) -> Result<u32, ProjectionError> {
        let client = self.pool.get().await?;
        let version: i32 = client
            .query_one(
                "SELECT version FROM projection_versions WHERE projection = $1",
                &[&NAME],
            )
            .await?
            .try_get(0)?;
        Ok(version as u32)
    }

    async fn rebuild(
        &self,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError> {
        // One rebuild at a time across instances, on a connection that holds
        // the lock until it closes.
        let (lock, connection) = self.pg_config.connect(tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let result = self.rebuild_locked(&lock, log, progress).await;
        drop(lock);
        let _ = connection.await;
        result
    }
}

impl PostgresInbox {
    /// Where the live projector is: one read, for every page of a rebuild.
    async fn live_checkpoint(&self) -> Result<Position, ProjectionError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT tx, seq FROM projection_checkpoints WHERE projection = $1",
                &[&NAME],
            )
            .await?;
        Ok(Position::new(row.try_get(0)?, row.try_get(1)?))
    }

    async fn rebuild_locked(
        &self,
        lock: &tokio_postgres::Client,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError> {
        let won: bool = lock
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('tidings:rebuild:' || $1, 0))",
                &[&NAME],
            )
            .await?
            .try_get(0)?;
        if !won {
            return Err(StorageError::Backend(format!(
                "a rebuild of {NAME} is already running on another instance"
            ))
            .into());
        }
        let mut client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT version, read_table FROM projection_versions WHERE projection = $1",
                &[&NAME],
            )
            .await?;
        let old_version: i32 = row.try_get(0)?;
        let old_table = checked_table(row.try_get(1)?)?;
        let version = old_version + 1;
        let table = checked_table(&format!("inbox_notifications_v{version}"))?;
        let (total, _) = log.behind(Position::START).await?;
        progress.plan(version as u32, total);
        // Only the primary key while building: the secondary indexes are made
        // in one pass at the end, far cheaper than keeping them up per row.
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table};
                 CREATE TABLE {table} (LIKE {old_table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
                 ALTER TABLE {table} ADD PRIMARY KEY (id);"
            ))
            .await?;
        // Build beside the live version, one transaction per page, no stream
        // updates: subscribers already had them from the live version. Never
        // past the live checkpoint: what lies beyond is the live projector's
        // to apply (and announce), before or after the switch.
        let mut cp = Position::START;
        self.checkpoint().await?; // makes sure the live checkpoint row exists
        let read_page = |after: Position| async move {
            let live = self.live_checkpoint().await?;
            let page: Vec<_> = log
                .read_after(after, BUILD_PAGE)
                .await?
                .into_iter()
                .filter(|e| e.position <= live)
                .collect();
            Ok::<_, ProjectionError>(page)
        };
        let mut page = read_page(cp).await?;
        // Reading the next page overlaps writing this one: the database works
        // on one while this process decodes the other.
        while let Some(last) = page.last().map(|e| e.position) {
            let write = async {
                let tx = client.transaction().await?;
                // A crash mid-build loses only the half-built version, which the
                // next attempt starts over: no need to wait for each page's flush.
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .await?;
                write_page(&tx, &table, &page, last).await?;
                tx.commit().await?;
                Ok::<_, ProjectionError>(())
            };
            let (written, next) = tokio::join!(write, read_page(last));
            written?;
            progress.advance(page.len() as u64);
            cp = last;
            page = next?;
        }
        client.batch_execute(&secondary_indexes(&table)).await?;
        progress.set_state(RebuildState::Switching);
        // Switch: hold the live checkpoint (the live projector waits), catch
        // up to exactly it, point the view at the new table, record the version.
        let mut switched = false;
        for _ in 0..1_000 {
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO projection_checkpoints (projection, tx, seq) VALUES ($1, 0, 0)
                 ON CONFLICT (projection) DO NOTHING",
                &[&NAME],
            )
            .await?;
            let live_row = tx
                .query_one(
                    "SELECT tx, seq FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
                    &[&NAME],
                )
                .await?;
            let live = Position::new(live_row.try_get(0)?, live_row.try_get(1)?);
            if cp > live {
                // The live projector is behind the new version: let it go on.
                drop(tx);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            while cp < live {
                let page: Vec<_> = log
                    .read_after(cp, BUILD_PAGE)
                    .await?
                    .into_iter()
                    .filter(|e| e.position <= live)
                    .collect();
                let Some(last) = page.last().map(|e| e.position) else {
                    break;
                };
                write_page(&tx, &table, &page, last).await?;
                cp = last;
                progress.advance(page.len() as u64);
            }
            if cp != live {
                return Err(StorageError::Backend(format!(
                    "the rebuild could not read up to the live checkpoint {live}"
                ))
                .into());
            }
            tx.batch_execute(&format!(
                "CREATE OR REPLACE VIEW inbox_live AS SELECT * FROM {table};"
            ))
            .await?;
            tx.execute(
                "UPDATE projection_versions SET version = $2, read_table = $3 WHERE projection = $1",
                &[&NAME, &version, &table],
            )
            .await?;
            tx.commit().await?;
            switched = true;
            break;
        }
        if !switched {
            return Err(StorageError::Backend(
                "the live projector stayed behind the rebuild; it was not switched".into(),
            )
            .into());
        }
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {old_table}"))
            .await?;
        Ok(version as u32)
    }
}

#[async_trait]
impl InboxReader for PostgresInbox {
    async fn page(&self, q: &InboxQuery) -> Result<InboxPage, StorageError> {
        let client = self.pool.get().await?;
        let recipient = q.recipient.as_str();
        let limit = q.limit as i64 + 1;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&recipient, &q.archived, &limit];
        let mut sql = format!(
            "SELECT {ROW_COLUMNS} FROM inbox_live
              WHERE recipient = $1 AND in_inbox AND archived = $2"
        );
        let before = q.before.map(|p| (p.tx, p.seq));
        if let Some((tx, seq)) = &before {
            params.push(tx);
            params.push(seq);
            sql.push_str(&format!(
                " AND (inbox_tx, inbox_seq) < (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
        let read = q.status.map(|s| s == ReadFilter::Read);
        if let Some(read) = &read {
            params.push(read);
            sql.push_str(&format!(" AND read = ${}", params.len()));
        }
        let category = q.category.as_ref().map(|c| c.as_str());
        if let Some(category) = &category {
            params.push(category);
            sql.push_str(&format!(" AND category = ${}", params.len()));
        }
        sql.push_str(" ORDER BY inbox_tx DESC, inbox_seq DESC LIMIT $3");
        let items = client
            .query(&sql, &params)
            .await?
            .iter()
            .map(to_row)
            .collect::<Result<Vec<_>, _>>()?;
        let counts = client
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT read), count(*) FILTER (WHERE NOT seen)
                   FROM inbox_live
                  WHERE recipient = $1 AND in_inbox AND NOT archived AND (NOT read OR NOT seen)",
                &[&recipient],
            )
            .await?;
        let (items, next) = cut_page(items, q.limit);
        Ok(InboxPage {
            items,
            next,
            unread_count: counts.try_get::<_, i64>(0)? as u64,
            unseen_count: counts.try_get::<_, i64>(1)? as u64,
        })
    }

    async fn get(&self, id: NotificationId) -> Result<Option<InboxRow>, StorageError> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {ROW_COLUMNS} FROM inbox_live WHERE id = $1");
        client
            .query_opt(&sql, &[&id.0])
            .await?
            .as_ref()
            .map(to_row)
            .transpose()
    }

    async fn unread_ids(&self, recipient: &UserId) -> Result<Vec<NotificationId>, StorageError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id FROM inbox_live
                  WHERE recipient = $1 AND in_inbox AND NOT read
                  ORDER BY inbox_tx, inbox_seq",
                &[&recipient.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| Ok(NotificationId(r.try_get("id")?)))
            .collect()
    }
}
