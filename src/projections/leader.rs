//! One projector per projection across all instances: PostgreSQL advisory
//! locks elect the leader.
//!
//! Each instance tries `pg_try_advisory_lock` on a connection of its own. The
//! holder runs the projector; the others follow its checkpoint (so their
//! queries with `min_position` still work) and try again every interval. When
//! the leader dies its connection closes, PostgreSQL releases the lock, and
//! another instance takes over within an interval, from the checkpoint: the
//! checkpoint commits with the read model, so nothing is lost or applied twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tracing::{info, warn};

use super::engine::{self, EngineConfig, ProjectorHandle};
use super::Projection;
use crate::storage::{error_chain, AppendSignal, EventLog, Position};

#[derive(Clone)]
pub struct Election {
    /// For the lock connection (one per projector, held while leading).
    pub pg: crate::storage::postgres::PgConnector,
    /// For reading the leader's checkpoint while following.
    pub pool: Pool,
    pub interval: Duration,
}

/// Runs `projection` on whichever instance holds its lock.
pub fn spawn(
    projection: Arc<dyn Projection>,
    log: Arc<dyn EventLog>,
    signal: &AppendSignal,
    config: EngineConfig,
    shutdown: watch::Receiver<bool>,
    election: Election,
) -> (ProjectorHandle, tokio::task::JoinHandle<()>) {
    let (progress, checkpoint) = watch::channel(Position::START);
    let leader = Arc::new(AtomicBool::new(false));
    let handle = ProjectorHandle::new(projection.name(), checkpoint, leader.clone());
    let signal = signal.clone();
    let task = tokio::spawn(async move {
        elect(
            projection, log, signal, config, shutdown, election, progress, leader,
        )
        .await;
    });
    (handle, task)
}

fn lock_key(name: &str) -> String {
    format!("tidings:projector:{name}")
}

/// The lock connection when the lock was won.
async fn try_lead(
    election: &Election,
    name: &str,
) -> Result<Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>, tokio_postgres::Error> {
    let (client, connection) = election.pg.connect_with_task().await?;
    let won: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&lock_key(name)],
        )
        .await?
        .try_get(0)?;
    if won {
        Ok(Some((client, connection)))
    } else {
        connection.abort();
        Ok(None)
    }
}

async fn leader_checkpoint(pool: &Pool, name: &str) -> Option<Position> {
    let client = pool.get().await.ok()?;
    let row = client
        .query_opt(
            "SELECT tx, seq FROM projection_checkpoints WHERE projection = $1",
            &[&name],
        )
        .await
        .ok()??;
    Some(Position::new(row.try_get(0).ok()?, row.try_get(1).ok()?))
}

#[allow(clippy::too_many_arguments)]
async fn elect(
    projection: Arc<dyn Projection>,
    log: Arc<dyn EventLog>,
    signal: AppendSignal,
    config: EngineConfig,
    mut shutdown: watch::Receiver<bool>,
    election: Election,
    progress: watch::Sender<Position>,
    leader: Arc<AtomicBool>,
) {
    let name = projection.name();
    loop {
        if *shutdown.borrow() {
            return;
        }
        match try_lead(&election, name).await {
            Ok(Some((client, connection))) => {
                info!(projection = name, "leading this projector");
                leader.store(true, Ordering::Release);
                let (term, term_ended) = watch::channel(false);
                let mut app = shutdown.clone();
                let watcher = tokio::spawn(async move {
                    tokio::select! {
                        _ = connection => warn!(projection = name, "lost the leader lock's connection; stepping down"),
                        _ = app.wait_for(|stop| *stop) => {}
                    }
                    let _ = term.send(true);
                });
                engine::run(
                    projection.clone(),
                    log.clone(),
                    signal.subscribe(),
                    config.clone(),
                    term_ended,
                    &progress,
                )
                .await;
                leader.store(false, Ordering::Release);
                watcher.abort();
                drop(client); // closes the connection: the lock is released
                if *shutdown.borrow() {
                    return;
                }
            }
            Ok(None) => {
                if let Some(cp) = leader_checkpoint(&election.pool, name).await {
                    progress.send_if_modified(|old| {
                        let newer = cp > *old;
                        if newer {
                            *old = cp;
                        }
                        newer
                    });
                }
            }
            Err(e) => {
                warn!(projection = name, error = %error_chain(&e), "leader election failed; retrying");
            }
        }
        // Followers also track the checkpoint between attempts.
        let mut waited = Duration::ZERO;
        let step = config.poll_interval.min(election.interval);
        while waited < election.interval {
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = shutdown.changed() => return,
            }
            waited += step;
            if let Some(cp) = leader_checkpoint(&election.pool, name).await {
                progress.send_if_modified(|old| {
                    let newer = cp > *old;
                    if newer {
                        *old = cp;
                    }
                    newer
                });
            }
        }
    }
}
