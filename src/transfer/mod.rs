//! Moving an event log between deployments: `tidings events export` writes
//! the global log as NDJSON (one `EventView` per line, commit order);
//! `tidings events import` reads such a file into a store, all or nothing,
//! skipping what it already holds (see `import`). Both show a progress bar
//! when stderr is a terminal.

mod import;

pub use import::{import, Imported};

use std::io::{IsTerminal, Write};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::api::events::EventView;
use crate::storage::postgres::{self, PgEventLog, SessionLimits};
use crate::storage::{error_chain, EventLog, Position};

const PAGE: usize = 5_000;

pub(crate) fn progress(total: Option<u64>) -> ProgressBar {
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
            serde_json::to_writer(&mut *out, &EventView::from(&**e))?;
            out.write_all(b"\n")?;
        }
        written += page.len() as u64;
        bar.inc(page.len() as u64);
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(written)
}
