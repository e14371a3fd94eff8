//! Parked events of the PostgreSQL inbox (tables `parked_events` and
//! `skipped_events`, migrations/0006): what the live projector holds back,
//! and re-driving or skipping them, on the projection store's plumbing.
//!
//! A re-drive or skip runs under the live checkpoint's row lock (the live
//! projector waits for it, as it waits for a rebuild's switch), so it never
//! interleaves with a page; and under the maintenance lock, so never beside a
//! rebuild. Its read-model changes, stream updates and parked-table changes
//! commit in one transaction.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::fold::Held;
use super::postgres::{live_version, record_updates, write_page, PostgresInbox};
use super::NAME;
use crate::projections::parked::{ParkedEvent, Parking, ParkingError, RedriveReport};
use crate::projections::store::postgres::{
    count_parked, insert_parked, list_parked, load_skipped, lock_checkpoint, parked_again,
    parked_causes, skip_parked, take_parked, Maintenance, REDRIVE_STREAMS,
};
use crate::projections::ProjectionError;
use crate::storage::{EventLog, Position};
use crate::streams::updates::StreamUpdate;

#[async_trait]
impl Parking for PostgresInbox {
    async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, ProjectionError> {
        let client = self.pool.get().await?;
        list_parked(&**client, NAME, after, limit).await
    }

    async fn parked_count(&self) -> Result<u64, ProjectionError> {
        let client = self.pool.get().await?;
        count_parked(&**client, NAME).await
    }

    async fn skipped(&self) -> Result<BTreeSet<Position>, ProjectionError> {
        let client = self.pool.get().await?;
        load_skipped(&**client, NAME).await
    }

    async fn redrive(&self, log: &dyn EventLog) -> Result<RedriveReport, ParkingError> {
        let Some(_maintenance) = Maintenance::try_take(&self.connector, NAME).await? else {
            return Err(ParkingError::Busy(NAME));
        };
        let mut done: HashSet<String> = HashSet::new();
        let mut after = Position::START;
        let mut applied = 0;
        loop {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            lock_checkpoint(&tx, NAME).await?;
            let (version, table) = live_version(&tx).await?;
            let (causes, last) = parked_causes(&tx, NAME, version, after, REDRIVE_STREAMS).await?;
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
            let (numbered, n) = self
                .redrive_streams(&tx, version, &table, log, &streams)
                .await?;
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
        let Some(_maintenance) = Maintenance::try_take(&self.connector, NAME).await? else {
            return Err(ParkingError::Busy(NAME));
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_checkpoint(&tx, NAME).await?;
        let (version, table) = live_version(&tx).await?;
        let Some(stream) = skip_parked(&tx, NAME, version, position, by).await? else {
            return Err(ParkingError::NotParked(position));
        };
        let (numbered, applied) = self
            .redrive_streams(&tx, version, &table, log, std::slice::from_ref(&stream))
            .await?;
        tx.commit().await?;
        self.publisher.publish(numbered).await;
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
        let (events, previous) = take_parked(tx, NAME, version, log, streams).await?;
        let Some(page_end) = events.last().map(|e| e.position) else {
            return Ok((vec![], 0));
        };
        let skipped = load_skipped(tx, NAME).await?;
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
        insert_parked(tx, NAME, version, &parked_again(&refused, &previous)).await?;
        let numbered = match updates {
            Some(updates) => record_updates(tx, table, updates, page_end).await?,
            None => vec![],
        };
        Ok((numbered, (events.len() - refused.len()) as u64))
    }
}
