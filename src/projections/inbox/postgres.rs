//! The inbox read model in PostgreSQL (table `inbox_notifications`, see
//! migrations/0002_inbox.sql), written through deadpool-postgres.
//!
//! The projection store (`PgStore`) runs the page transaction, parking and
//! stream updates; the inbox loads the touched rows, folds them in memory,
//! writes them back with one UNNEST upsert and one delete, and adds the
//! counts of every touched inbox to the page's updates.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::fold::{fold_events, ids_in, Held, Refusal};
use super::{
    bulk_marks, counts_update, page_updates, remember, InboxRow, PageUpdates, RowView, NAME,
};
use crate::domain::{Notification, NotificationId};
use crate::projections::rebuild::RebuildTuning;
use crate::projections::store::postgres::{self as store, Live, PgModel};
use crate::projections::ProjectionError;
use crate::storage::postgres::PgConnector;
use crate::storage::{Position, SharedEvent, StorageError};
use crate::streams::updates::NewUpdate;

pub struct PostgresInbox {
    pub(super) pool: Pool,
    /// For the maintenance lock (rebuilds, re-drives) and a rebuild's
    /// stages, on connections of their own.
    pub(super) connector: PgConnector,
    /// How a rebuild reads and caches.
    pub(super) tuning: RebuildTuning,
    /// Renders the rows stream updates carry.
    pub(super) view: RowView,
}

impl PostgresInbox {
    pub fn new(pool: Pool, connector: PgConnector, view: RowView) -> Self {
        Self {
            pool,
            connector,
            tuning: RebuildTuning::default(),
            view,
        }
    }

    pub fn with_rebuild_tuning(mut self, tuning: RebuildTuning) -> Self {
        self.tuning = tuning;
        self
    }
}

pub(super) const ROW_COLUMNS: &str = "id, state, inbox_tx, inbox_seq, last_tx, last_seq";

pub(super) fn to_row(row: &Row) -> Result<InboxRow, StorageError> {
    let state: serde_json::Value = row.try_get("state")?;
    let state: Notification = serde_json::from_value(state)
        .map_err(|e| StorageError::defect_because("an inbox row does not parse", e))?;
    let inbox_tx: Option<i64> = row.try_get("inbox_tx")?;
    let inbox_seq: Option<i64> = row.try_get("inbox_seq")?;
    Ok(InboxRow {
        state,
        inbox_position: inbox_tx.zip(inbox_seq).map(|(t, s)| Position::new(t, s)),
        last_position: Position::new(row.try_get("last_tx")?, row.try_get("last_seq")?),
    })
}

pub(super) fn upsert_sql(table: &str) -> String {
    format!(
        "
INSERT INTO {table} ({COLUMNS})
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

/// The table version 1 reads (migrations/0002).
const FIRST_TABLE: &str = "inbox_notifications";

/// The live version and its table, read under the checkpoint lock so that a
/// rebuild's switch is seen by the very next page.
pub(crate) async fn live_version(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(i32, String), ProjectionError> {
    let live = store::live_version(tx, NAME, FIRST_TABLE).await?;
    Ok((live.version, checked_table(&live.table)?))
}

/// The inbox's secondary indexes (as in migrations/0002) for a rebuilt table.
pub(super) fn secondary_indexes(table: &str) -> String {
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
        Err(StorageError::defect(format!("`{table}` is not an inbox table")).into())
    }
}

/// Folds `events` into the rows of `table` inside `tx`: events of streams in
/// `held` are refused as held, events at `skipped` positions passed over, and
/// an event that cannot apply is refused (and holds its stream from then on).
/// Returns what changed for the streams (when `announce`) and the refusals;
/// the caller decides whether a refusal fails the page (rolling `tx` back).
pub(crate) async fn write_page(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    events: &[SharedEvent],
    page_end: Position,
    held: &mut Held,
    skipped: &BTreeSet<Position>,
    announce: Option<&RowView>,
) -> Result<(Option<PageUpdates>, Vec<Refusal>), ProjectionError> {
    let ids = ids_in(events);
    let mut rows = load_rows(tx, table, &ids).await?;
    let before = announce.map(|view| (remember(&rows), view));
    let refused = fold_events(&mut rows, events, held, skipped);
    let updates = before
        .map(|(before, view)| page_updates(&before, &rows, page_end, view, &bulk_marks(events)));
    store_rows(tx, table, &rows).await?;
    Ok((updates, refused))
}

/// The current rows (None: no row) of `ids` in `table`.
pub(crate) async fn load_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    ids: &[NotificationId],
) -> Result<HashMap<NotificationId, Option<InboxRow>>, ProjectionError> {
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
    let mut rows: HashMap<NotificationId, Option<InboxRow>> =
        ids.iter().map(|id| (*id, None)).collect();
    let sql = format!("SELECT {ROW_COLUMNS} FROM {table} WHERE id = ANY($1)");
    for row in tx.query(&sql, &[&uuids]).await? {
        let id = NotificationId(row.try_get("id")?);
        rows.insert(id, Some(to_row(&row)?));
    }
    Ok(rows)
}

/// Writes folded rows back: one UNNEST upsert, one delete for the removed.
pub(crate) async fn store_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &HashMap<NotificationId, Option<InboxRow>>,
) -> Result<(), ProjectionError> {
    let mut upserts = Columns::default();
    let mut deletes = Vec::new();
    for (id, row) in rows {
        match row {
            Some(row) => upserts.push(*id, row),
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
    Ok(())
}

/// One row as the table's columns (in `COLUMNS` order). The state is
/// written straight from the struct (no value tree between).
pub(super) struct FlatRow<'a> {
    pub id: uuid::Uuid,
    pub recipient: &'a str,
    pub category: &'a str,
    pub lifecycle: &'static str,
    pub in_inbox: bool,
    pub read: bool,
    pub seen: bool,
    pub archived: bool,
    pub inbox_tx: Option<i64>,
    pub inbox_seq: Option<i64>,
    pub state: tokio_postgres::types::Json<&'a Notification>,
    pub last_tx: i64,
    pub last_seq: i64,
}

/// The columns a row is written to, in `FlatRow` order.
pub(super) const COLUMNS: &str = "id, recipient, category, lifecycle, in_inbox, read, seen, \
     archived, inbox_tx, inbox_seq, state, last_tx, last_seq";

impl<'a> FlatRow<'a> {
    pub fn of(id: NotificationId, row: &'a InboxRow) -> Self {
        let content = row.state.content.as_ref();
        Self {
            id: id.0,
            recipient: content.map_or("", |c| c.recipient.as_str()),
            category: content.map_or("", |c| c.category.as_str()),
            lifecycle: row.state.lifecycle.as_str(),
            in_inbox: row.in_inbox(),
            read: row.state.is_read(),
            seen: row.state.is_seen(),
            archived: row.state.is_archived(),
            inbox_tx: row.inbox_position.map(|p| p.tx),
            inbox_seq: row.inbox_position.map(|p| p.seq),
            state: tokio_postgres::types::Json(&row.state),
            last_tx: row.last_position.tx,
            last_seq: row.last_position.seq,
        }
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); 13] {
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

/// Column arrays for the UNNEST upsert of `rows`.
pub(super) fn columns_of(rows: &[(NotificationId, InboxRow)]) -> Columns<'_> {
    let mut columns = Columns::default();
    for (id, row) in rows {
        columns.push(*id, row);
    }
    columns
}

/// Column arrays for the UNNEST upsert.
#[derive(Default)]
pub(super) struct Columns<'a> {
    id: Vec<uuid::Uuid>,
    recipient: Vec<&'a str>,
    category: Vec<&'a str>,
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
    fn push(&mut self, id: NotificationId, row: &'a InboxRow) {
        let flat = FlatRow::of(id, row);
        self.id.push(flat.id);
        self.recipient.push(flat.recipient);
        self.category.push(flat.category);
        self.lifecycle.push(flat.lifecycle);
        self.in_inbox.push(flat.in_inbox);
        self.read.push(flat.read);
        self.seen.push(flat.seen);
        self.archived.push(flat.archived);
        self.inbox_tx.push(flat.inbox_tx);
        self.inbox_seq.push(flat.inbox_seq);
        self.state.push(flat.state);
        self.last_tx.push(flat.last_tx);
        self.last_seq.push(flat.last_seq);
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 13] {
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
impl PgModel for PostgresInbox {
    fn name(&self) -> &'static str {
        NAME
    }

    fn first_table(&self) -> &'static str {
        FIRST_TABLE
    }

    async fn write_page(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        live: &Live,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> Result<(Vec<NewUpdate>, Vec<Refusal>), ProjectionError> {
        let Some(page_end) = events.last().map(|e| e.position) else {
            return Ok((vec![], vec![]));
        };
        let table = checked_table(&live.table)?;
        let (updates, refused) = write_page(
            tx,
            &table,
            events,
            page_end,
            held,
            skipped,
            Some(&self.view),
        )
        .await?;
        let updates = match updates {
            Some(updates) => with_counts(tx, &table, updates, page_end).await?,
            None => vec![],
        };
        Ok((updates, refused))
    }
}

/// The page's updates plus the counts of every touched inbox, read in the
/// page's transaction.
async fn with_counts(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    updates: PageUpdates,
    page_end: Position,
) -> Result<Vec<NewUpdate>, ProjectionError> {
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
    Ok(new)
}
