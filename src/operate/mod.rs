//! Operator commands against DATABASE_URL while the service runs (a
//! surface beside the HTTP one, so it answers in the API's views):
//! `tidings replay` (rebuild a projection), `tidings parked` (list,
//! re-drive or skip poison events) and `tidings keys` (`keys`).

pub mod keys;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use crate::projections::rebuild::{run, RebuildState, RebuildTuning, Rebuilds};
use crate::projections::registry::{ReadModels, Registered, NAMES};
use crate::projections::store::postgres::Publisher;
use crate::storage::postgres::{self, PgEventLog, SessionLimits};
use crate::storage::Position;

/// The projection named `projection` and the log of the database at `url`
/// (migrated).
async fn open(
    url: &str,
    limits: SessionLimits,
    projection: &str,
    tuning: RebuildTuning,
) -> anyhow::Result<(Registered, PgEventLog)> {
    if !NAMES.contains(&projection) {
        anyhow::bail!(
            "no projection `{projection}`; the projections are: {}",
            NAMES.join(", ")
        );
    }
    let pools = postgres::connect(url, limits.with_pool_size(4)).await?;
    postgres::require_schema(&pools).await?;
    // Retention only matters to the live projector, which prunes; these don't.
    let publisher = Arc::new(Publisher::new(pools.deadpool.clone(), 0));
    let models = ReadModels::postgres(
        &pools.deadpool,
        &pools.deadpool,
        &pools.connector,
        &publisher,
        tuning,
        crate::api::views::row_view(),
    );
    let found = models.find(projection)?.clone();
    Ok((found, PgEventLog::new(pools.deadpool.clone())))
}

/// `tidings replay --projection NAME`: rebuilds against DATABASE_URL while
/// the service keeps running, with a progress bar on a terminal.
pub async fn replay(
    url: &str,
    limits: SessionLimits,
    projection: &str,
    tuning: RebuildTuning,
) -> anyhow::Result<u32> {
    let (found, log) = open(url, limits, projection, tuning).await?;
    let rebuilds = Arc::new(Rebuilds::default());
    rebuilds.begin(found.name())?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:10} {bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let watcher = {
        let rebuilds = rebuilds.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                if let Some(s) = rebuilds.snapshot() {
                    bar.set_length(s.total.max(s.done));
                    bar.set_position(s.done);
                    bar.set_message(match s.state {
                        RebuildState::Building => "building",
                        RebuildState::Switching => "switching",
                        RebuildState::Done => "done",
                        RebuildState::Failed(_) => "failed",
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let result = run(&*found.rebuild, &log, &rebuilds).await;
    watcher.abort();
    bar.finish_and_clear();
    Ok(result?)
}

/// What `tidings parked` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkedAction {
    /// Every parked event, one JSON object a line (as the API lists them).
    List,
    /// Try every parked event again.
    Redrive,
    /// Give up on the parked event at this cursor for good.
    Skip { cursor: String },
}

/// `tidings parked list|redrive|skip`: writes the list (or a one-line summary
/// of a re-drive or skip as JSON) to `out`.
pub async fn parked(
    url: &str,
    limits: SessionLimits,
    projection: &str,
    action: ParkedAction,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use poem_openapi::types::ToJSON;

    use crate::api::parked::{ParkedEventView, RedriveView};

    let (found, log) = open(url, limits, projection, RebuildTuning::default()).await?;
    let parking = &found.parking;
    let report = match action {
        ParkedAction::List => {
            let mut after = Position::START;
            loop {
                let page = parking.parked(after, 1_000).await?;
                let Some(last) = page.last() else { break };
                after = last.position;
                for event in &page {
                    writeln!(out, "{}", ParkedEventView::from(event).to_json_string())?;
                }
            }
            return Ok(());
        }
        ParkedAction::Redrive => parking.redrive(&log).await?,
        ParkedAction::Skip { cursor } => {
            let position = Position::parse_cursor(&cursor)
                .map_err(|e| anyhow::anyhow!("--cursor `{cursor}`: {e}"))?;
            let by = format!("the tidings CLI (user {})", whoami());
            parking.skip(&log, position, &by).await?
        }
    };
    writeln!(out, "{}", RedriveView::from(report).to_json_string())?;
    Ok(())
}

/// Who runs the CLI, for the skip record.
fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}
