//! Any fold's rows in PostgreSQL: `projection_rows` (migrations/0007), one
//! document per key and version with its sort value. The projection store
//! (`PgStore`) runs the page transaction around `write_page`; a rebuild
//! writes the next version's rows beside the live ones and switches
//! `projection_versions` under the checkpoint lock.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::Json;
use tokio_postgres::Transaction;

use super::postgres::{
    busy, insert_parked, live_version, load_skipped, lock_checkpoint, Live, Maintenance, PgModel,
};
use super::{fold_page, read_page, Fold, Keyed, RowReader, Rows};
use crate::projections::inbox::fold::{Held, Refusal};
use crate::projections::parked::ParkedEvent;
use crate::projections::rebuild::{RebuildState, Rebuildable, Rebuilds, BUILD_PAGE};
use crate::projections::ProjectionError;
use crate::storage::postgres::PgConnector;
use crate::storage::{EventLog, Position, SharedEvent, StorageError};
use crate::streams::updates::NewUpdate;

/// The table every keyed read model's rows live in.
const TABLE: &str = "projection_rows";

/// A fold's read model as keyed rows in PostgreSQL.
pub struct PgRows<F: Fold> {
    fold: F,
    pool: Pool,
    /// For the maintenance lock, on a connection of its own.
    connector: PgConnector,
}

impl<F: Fold> PgRows<F> {
    pub fn new(fold: F, pool: Pool, connector: PgConnector) -> Self {
        Self {
            fold,
            pool,
            connector,
        }
    }

    /// Folds `events` into the rows of `version` inside `tx`; the page's
    /// stream updates and refusals (the caller decides what a refusal means).
    async fn write_rows(
        &self,
        tx: &Transaction<'_>,
        version: i32,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> Result<(Vec<NewUpdate>, Vec<Refusal>), ProjectionError> {
        let (reads, keys) = read_page(&self.fold, events);
        let mut loaded: HashMap<String, (i64, F::Row)> = HashMap::new();
        if !keys.load.is_empty() {
            let rows = tx
                .query(
                    // One primary-key probe per key. With `key = ANY($3)` a
                    // planner without statistics for the version (a new
                    // database, a rebuild's next version) scans every row
                    // of it through the sort index instead.
                    "SELECT r.key, r.sort, r.doc FROM unnest($3::text[]) AS k(key)
                      CROSS JOIN LATERAL (
                        SELECT p.key, p.sort, p.doc FROM projection_rows p
                         WHERE p.projection = $1 AND p.version = $2 AND p.key = k.key
                         LIMIT 1) r",
                    &[&F::NAME, &version, &keys.load],
                )
                .await?;
            for row in rows {
                let Json(doc): Json<F::Row> = row.try_get(2).map_err(|e| {
                    StorageError::defect_because(format!("a {} row does not parse", F::NAME), e)
                })?;
                loaded.insert(row.try_get(0)?, (row.try_get(1)?, doc));
            }
        }
        let mut rows = Rows::new(keys.with(|k| loaded.remove(k)));
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
        let (_, refused) = self.write_rows(tx, version, page, held, skipped).await?;
        let parked: Vec<ParkedEvent> = refused.iter().map(|r| r.parked(1)).collect();
        insert_parked(tx, F::NAME, version, &parked).await
    }
}

#[async_trait]
impl<F: Fold> PgModel for PgRows<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn first_table(&self) -> &'static str {
        TABLE
    }

    async fn write_page(
        &self,
        tx: &Transaction<'_>,
        live: &Live,
        events: &[SharedEvent],
        held: &mut Held,
        skipped: &BTreeSet<Position>,
    ) -> Result<(Vec<NewUpdate>, Vec<Refusal>), ProjectionError> {
        self.write_rows(tx, live.version, events, held, skipped)
            .await
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
impl<F: Fold> RowReader<F::Row> for PgRows<F> {
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
impl<F: Fold> Rebuildable for PgRows<F> {
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
            let live = live_version(&tx, F::NAME, TABLE).await?.version;
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
