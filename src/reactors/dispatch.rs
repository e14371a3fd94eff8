//! The dispatcher: runs a reactor's pending commands once they are due, the
//! timers among them when their time comes.
//!
//! What is owed is a read model (the reactor's `Outbox`), so it survives
//! restarts and is the same on every instance; only the instance that leads
//! the reactor's projector fires. Each command carries its reaction's id, which
//! an aggregate records once: a second firing (another instance during a
//! failover, a retry after a timeout) changes nothing, so at-least-once firing
//! has an exactly-once effect.
//!
//! Many due at once are fired in batches (one append per batch, see
//! `Commands::execute_many`), urgent ones first. A command the aggregate
//! refuses stays owed until the reactor settles it, and is fired again after
//! `REFIRE_AFTER`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Fire, Pending, Reactor};
use crate::commands::CommandMetadata;
use crate::domain::Timestamp;
use crate::projections::engine::ProjectorHandle;
use crate::projections::store::{Keyed, RowReader};
use crate::storage::{error_chain, StorageError};

#[derive(Debug, Clone)]
pub struct TimerSettings {
    /// Due deliveries read and fired per round.
    pub batch: usize,
    /// Longest sleep between looks at the outbox.
    pub idle_poll: Duration,
}

impl Default for TimerSettings {
    fn default() -> Self {
        Self {
            batch: 500,
            idle_poll: Duration::from_millis(500),
        }
    }
}

/// Fired again only after this long without the outbox settling it.
const REFIRE_AFTER: Duration = Duration::from_secs(30);
/// The least time between two looks while the outbox keeps changing.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// What the timers did: counts and how late they fired.
pub struct TimerStats {
    inner: Mutex<StatsInner>,
}

struct StatsInner {
    fired: u64,
    /// Fired more than a second after the due time.
    late: u64,
    /// Milliseconds between the due time and the firing.
    lateness_ms: Histogram<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerReport {
    pub fired: u64,
    pub late: u64,
    pub lateness_p50_ms: u64,
    pub lateness_p99_ms: u64,
    pub lateness_max_ms: u64,
}

impl Default for TimerStats {
    fn default() -> Self {
        Self {
            inner: Mutex::new(StatsInner {
                fired: 0,
                late: 0,
                lateness_ms: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("valid histogram bounds"),
            }),
        }
    }
}

impl TimerStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, lateness: chrono::Duration) {
        let ms = lateness.num_milliseconds().max(0) as u64;
        metrics::counter!("tidings_timers_fired_total").increment(1);
        if ms > 1000 {
            metrics::counter!("tidings_timers_late_total").increment(1);
        }
        let mut inner = self.lock();
        inner.fired += 1;
        inner.late += u64::from(ms > 1000);
        inner.lateness_ms.saturating_record(ms.max(1));
    }

    pub fn report(&self) -> TimerReport {
        let inner = self.lock();
        let h = &inner.lateness_ms;
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        TimerReport {
            fired: inner.fired,
            late: inner.late,
            lateness_p50_ms: q(0.5),
            lateness_p99_ms: q(0.99),
            lateness_max_ms: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

/// What a dispatcher works with: a reactor, its outbox and the runner of
/// its commands.
pub struct Dispatcher<R: Reactor> {
    pub reactor: Arc<R>,
    pub outbox: Arc<dyn RowReader<Pending<R::Order>>>,
    /// The reactor's projector: whether this instance leads it, and when
    /// its outbox moved.
    pub projector: ProjectorHandle,
    /// Runs what is due.
    pub commands: Arc<dyn Fire<R>>,
    pub settings: TimerSettings,
    pub stats: Arc<TimerStats>,
}

/// Fires due reactions until `shutdown` flips to true.
pub fn spawn<R: Reactor>(
    dispatcher: Dispatcher<R>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(dispatcher, shutdown))
}

async fn run<R: Reactor>(d: Dispatcher<R>, mut shutdown: watch::Receiver<bool>) {
    let projector = &d.projector;
    let settings = &d.settings;
    let mut moved = projector.watch();
    // Fired and not yet settled in the outbox: key -> when.
    let mut recent: HashMap<String, Instant> = HashMap::new();
    // Where a pass over what is due has got to (sort, key).
    let mut pass = Pass::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wait = if projector.is_leader() {
            match round(&d, &mut recent, &mut pass).await {
                Ok(Round::Fired) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(Round::Idle(next)) => {
                    backoff = Duration::from_millis(100);
                    let until_next = next
                        .and_then(|t| (t - Utc::now()).to_std().ok())
                        .unwrap_or(settings.idle_poll);
                    until_next.min(settings.idle_poll)
                }
                Err(error) => {
                    warn!(
                        error,
                        retry_in_ms = backoff.as_millis() as u64,
                        reactor = R::NAME,
                        "could not read or fire what is due; retrying"
                    );
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                }
            }
        } else {
            settings.idle_poll
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = moved.changed() => tokio::time::sleep(DEBOUNCE.min(wait)).await,
            res = shutdown.changed() => if res.is_err() { return },
        }
    }
}

/// How far a pass over the due rows has got.
#[derive(Default)]
struct Pass {
    /// The last row read (sort, key); None: from the start.
    after: Option<(i64, String)>,
    /// Whether this pass fired anything.
    fired: bool,
}

enum Round {
    /// Something was fired: look again at once.
    Fired,
    /// Nothing due (that was not just fired); the next due time, if any.
    Idle(Option<chrono::DateTime<Utc>>),
}

/// One batch of what is due. A pass goes through the due rows in order,
/// batch after batch, without waiting for the outbox to fold what was
/// fired; the next pass starts over from the earliest, passing over what was
/// fired recently.
async fn round<R: Reactor>(
    d: &Dispatcher<R>,
    recent: &mut HashMap<String, Instant>,
    pass: &mut Pass,
) -> Result<Round, String> {
    let now = Utc::now();
    let due = d
        .outbox
        .range(
            i64::MIN,
            now.timestamp_millis() + 1,
            pass.after.clone(),
            d.settings.batch,
        )
        .await
        .map_err(|e| error_chain(&e))?;
    let Some(last) = due.last() else {
        // The pass is over; one that fired something is followed at once.
        if std::mem::take(pass).fired {
            return Ok(Round::Fired);
        }
        let next = next_after(&*d.outbox, now)
            .await
            .map_err(|e| error_chain(&e))?;
        return Ok(Round::Idle(next));
    };
    pass.after = Some((last.sort, last.key.clone()));
    recent.retain(|_, at| at.elapsed() < REFIRE_AFTER);
    let mut due: Vec<Keyed<Pending<R::Order>>> = due
        .into_iter()
        .filter(|k| !recent.contains_key(&k.key))
        .collect();
    if due.is_empty() {
        return Ok(Round::Fired); // on through the pass
    }
    pass.fired = true;
    // Urgent first, then by due time.
    due.sort_by_key(|k| (!k.row.urgent, k.sort));
    let meta = CommandMetadata {
        request_id: uuid::Uuid::now_v7().to_string(),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        causation_id: Some(format!("reactor:{}", R::NAME)),
        actor: format!("tidings:{}", R::NAME),
        ..CommandMetadata::default()
    };
    let changed = d.commands.fire(&d.reactor, &due, &meta).await?;
    let fired_at = Utc::now();
    for k in &due {
        d.stats.record(fired_at - k.row.due_at);
        recent.insert(k.key.clone(), Instant::now());
    }
    let latest = due.iter().map(|k| fired_at - k.row.due_at).max();
    if latest.is_some_and(|l| l > chrono::Duration::seconds(1)) {
        info!(
            reactor = R::NAME,
            fired = due.len(),
            changed,
            max_lateness_ms = latest.map_or(0, |l| l.num_milliseconds()),
            "fired late (the service was down, busy, or they were due at start)"
        );
    } else {
        debug!(reactor = R::NAME, fired = due.len(), changed, "fired");
    }
    Ok(Round::Fired)
}

/// When the next reaction after `now` is due, if one is.
async fn next_after<O: Clone>(
    outbox: &dyn RowReader<Pending<O>>,
    now: Timestamp,
) -> Result<Option<Timestamp>, StorageError> {
    let next = outbox
        .range(now.timestamp_millis() + 1, i64::MAX, None, 1)
        .await?;
    Ok(next.first().map(|k| k.row.due_at))
}
