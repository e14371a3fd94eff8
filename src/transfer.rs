//! Moving an event log between deployments: `tidings events export` writes
//! the global log as NDJSON (one `LogEvent` per line, commit order);
//! `tidings events import` reads such a file into an empty store, all or
//! nothing. Both show a progress bar when stderr is a terminal.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::api::events::LogEvent;
use crate::storage::postgres::{self, PgEventLog, SessionLimits};
use crate::storage::{error_chain, EventLog, Position};

const PAGE: usize = 5_000;

fn progress(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match total {
        Some(total) => {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} events  {per_sec}") {
                bar.set_style(style);
            }
            bar
        }
    }
}

/// Writes every event after `after` to `out`; returns how many.
pub async fn export(
    url: &str,
    limits: SessionLimits,
    after: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut cursor = match after {
        Some(c) => Position::parse_cursor(c).context("--after is not a cursor tidings issued")?,
        None => Position::START,
    };
    let pools = postgres::connect(url, limits.with_pool_size(2)).await?;
    postgres::require_schema(&pools).await?;
    let total: i64 = pools
        .deadpool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?
        .query_one(
            "SELECT count(*) FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
            &[&cursor.tx.to_string(), &cursor.seq],
        )
        .await
        .context("counting the events to export")?
        .get(0);
    let bar = progress(Some(total as u64));
    let log = PgEventLog::new(pools.deadpool.clone());
    let mut written = 0;
    loop {
        let page = log
            .read_after(cursor, PAGE)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let Some(last) = page.last() else { break };
        cursor = last.position;
        for e in &page {
            serde_json::to_writer(&mut *out, &LogEvent::from(&**e))?;
            out.write_all(b"\n")?;
        }
        written += page.len() as u64;
        bar.inc(page.len() as u64);
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(written)
}

/// Reads NDJSON events from `input` into the (empty) store at `url`, in one
/// transaction; returns how many.
pub async fn import(url: &str, limits: SessionLimits, input: impl BufRead) -> anyhow::Result<u64> {
    let pools = postgres::connect(url, limits.with_pool_size(2)).await?;
    postgres::require_schema(&pools).await?;
    let mut client = pools
        .deadpool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let tx = client.transaction().await?;
    let occupied: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM events)", &[])
        .await?
        .get(0);
    if occupied {
        bail!("the store already holds events; import only into an empty store");
    }
    let bar = progress(None);
    let mut batch: Vec<LogEvent> = Vec::with_capacity(1000);
    let mut imported = 0;
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading the input")?;
        if line.trim().is_empty() {
            continue;
        }
        let event: LogEvent = serde_json::from_str(&line)
            .with_context(|| format!("line {} is not an exported event", n + 1))?;
        batch.push(event);
        if batch.len() == 1000 {
            imported += insert(&tx, &batch).await?;
            bar.inc(batch.len() as u64);
            batch.clear();
        }
    }
    imported += insert(&tx, &batch).await?;
    tx.commit().await.context("committing the import")?;
    bar.finish_and_clear();
    Ok(imported)
}

async fn insert(tx: &tokio_postgres::Transaction<'_>, batch: &[LogEvent]) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut recorded = Vec::with_capacity(batch.len());
    for e in batch {
        let at = chrono::DateTime::parse_from_rfc3339(&e.recorded_at)
            .with_context(|| format!("`{}` is not an RFC 3339 time", e.recorded_at))?;
        recorded.push(at.with_timezone(&chrono::Utc));
    }
    let types: Vec<&str> = batch.iter().map(|e| e.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|e| e.aggregate_id.as_str()).collect();
    let sequences: Vec<i64> = batch.iter().map(|e| e.sequence).collect();
    let event_types: Vec<&str> = batch.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<&str> = batch.iter().map(|e| e.version.as_str()).collect();
    // As JSON text: an event exported as unreadable is stored as it was.
    let (payloads, metadata): (Vec<String>, Vec<String>) = batch
        .iter()
        .map(|e| match &e.unreadable {
            Some(raw) => (raw.payload.clone(), raw.metadata.clone()),
            None => (e.payload.to_string(), e.metadata.to_string()),
        })
        .unzip();
    let n = tx
        .execute(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, recorded_at)
             SELECT t, i, s, et, v, p::jsonb, m::jsonb, r
               FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::timestamptz[]) AS u(t, i, s, et, v, p, m, r)",
            &[
                &types,
                &ids,
                &sequences,
                &event_types,
                &versions,
                &payloads,
                &metadata,
                &recorded,
            ],
        )
        .await
        .context("inserting imported events (is a stream's sequence repeated?)")?;
    Ok(n)
}
