//! Rebuilding the PostgreSQL inbox without downtime: a new versioned table is
//! built beside the live one, caught up to exactly the live checkpoint under
//! its lock, and switched to in one transaction (the `inbox_live` view and
//! `projection_versions`); then the old table is dropped.
//!
//! What the rebuild cannot apply it parks in its own version at once (the
//! live projector is the one that retries); events skipped by an operator are
//! passed over, as the live projection passed them.

use async_trait::async_trait;
use tracing::info;

use super::postgres::{checked_table, live_version, secondary_indexes, write_page, PostgresInbox};
use super::postgres_build::{build, Built};
use super::NAME;
use crate::projections::rebuild::{RebuildState, Rebuildable, Rebuilds, BUILD_PAGE};
use crate::projections::store::postgres::{busy, insert_parked, load_skipped, Maintenance};
use crate::projections::ProjectionError;
use crate::storage::{EventLog, Position, StorageError};

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
        // One rebuild (or re-drive) at a time across instances.
        let Some(_maintenance) = Maintenance::try_take(&self.connector, NAME).await? else {
            return Err(busy(NAME));
        };
        self.rebuild_locked(log, progress).await
    }
}

impl PostgresInbox {
    async fn rebuild_locked(
        &self,
        log: &dyn EventLog,
        progress: &Rebuilds,
    ) -> Result<u32, ProjectionError> {
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
        let skipped = load_skipped(&**client, NAME).await?;
        // No index while building (see postgres_build): the build leaves the
        // primary key, the secondary indexes are made in one pass after it.
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table};
                 CREATE TABLE {table} (LIKE {old_table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);"
            ))
            .await?;
        copy_grants(&client, &old_table, &table).await?;
        // What an earlier, interrupted attempt at this version parked.
        client
            .execute(
                "DELETE FROM parked_events WHERE projection = $1 AND version = $2",
                &[&NAME, &version],
            )
            .await?;
        // Makes sure the live checkpoint row exists.
        crate::projections::store::postgres::load_checkpoint(&**client, NAME).await?;
        // Build beside the live version without announcing stream updates:
        // subscribers had them from the live version. Never past the live
        // checkpoint: what lies beyond is the live projector's to apply (and
        // announce), before or after the switch.
        let started = std::time::Instant::now();
        let Built {
            checkpoint: mut cp,
            mut held,
        } = build(self, &table, version, &skipped, progress).await?;
        let built = started.elapsed();
        // One implicit transaction: the indexes grow with the log, so they are
        // not bounded by statement_timeout, and the pooled session keeps its own.
        client
            .batch_execute(&format!(
                "SET LOCAL statement_timeout = 0; {}",
                secondary_indexes(&table)
            ))
            .await?;
        info!(
            projection = NAME,
            version,
            build_ms = built.as_millis() as u64,
            indexes_ms = (started.elapsed() - built).as_millis() as u64,
            "rebuild built the new version; switching"
        );
        progress.set_state(RebuildState::Switching);
        let switching = std::time::Instant::now();
        // Switch: hold the live checkpoint (the live projector waits), catch
        // up to exactly it, point the view at the new table, record the version.
        for _ in 0..1_000 {
            let tx = client.transaction().await?;
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
                let (_, refused) =
                    write_page(&tx, &table, &page, last, &mut held, &skipped, None).await?;
                let parked: Vec<_> = refused.iter().map(|r| r.parked(1)).collect();
                insert_parked(&*tx, NAME, version, &parked).await?;
                cp = last;
                progress.advance(page.len() as u64);
            }
            if cp != live {
                return Err(StorageError::defect(format!(
                    "the rebuild could not read up to the live checkpoint {live}"
                ))
                .into());
            }
            let (live_version_now, _) = live_version(&tx).await?;
            if live_version_now != old_version {
                return Err(StorageError::defect(
                    "another rebuild switched versions meanwhile; this one is abandoned",
                )
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
            tx.execute(
                "DELETE FROM parked_events WHERE projection = $1 AND version = $2",
                &[&NAME, &old_version],
            )
            .await?;
            tx.commit().await?;
            info!(
                projection = NAME,
                version,
                switch_ms = switching.elapsed().as_millis() as u64,
                "rebuild switched reads to the new version"
            );
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {old_table}"))
                .await?;
            return Ok(version as u32);
        }
        Err(StorageError::defect(
            "the live projector stayed behind the rebuild; it was not switched",
        )
        .into())
    }
}

/// Gives `to` the privileges every other role has on `from`: a serving role
/// with least privilege (ops/app-role.sql) keeps writing the read model
/// after a rebuild made by the owner.
async fn copy_grants(
    client: &tokio_postgres::Client,
    from: &str,
    to: &str,
) -> Result<(), ProjectionError> {
    let grants = client
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
                    string_agg(a.privilege_type, ', ')
               FROM pg_class c
              CROSS JOIN LATERAL aclexplode(c.relacl) a
               LEFT JOIN pg_roles r ON r.oid = a.grantee
              WHERE c.oid = $1::text::regclass AND a.grantee <> c.relowner
              GROUP BY 1",
            &[&from],
        )
        .await?;
    for grant in grants {
        let (grantee, privileges): (String, String) = (grant.try_get(0)?, grant.try_get(1)?);
        client
            .batch_execute(&format!("GRANT {privileges} ON {to} TO {grantee}"))
            .await?;
    }
    Ok(())
}
