//! The process's resident memory against a limit.
//!
//! In memory mode the event log and the read model live in this process and
//! grow with every notification; past the machine's (or container's) limit
//! the kernel kills the process and everything in it is lost. So: past 90%
//! of the limit the log warns and readiness says `degraded`; at the limit
//! the memory store refuses new events (503) and keeps serving what it has.
//! The limit is `--memory-limit-mb`, else the cgroup's (`memory.max`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// How often the resident size is read.
const EVERY: Duration = Duration::from_secs(1);
/// The share of the limit past which the process is under pressure.
const HIGH: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// No limit, or well under it.
    Fine,
    /// Past 90% of the limit.
    High,
    /// At or past the limit.
    Full,
}

/// Resident memory, as last read, against the limit.
#[derive(Debug)]
pub struct MemoryGuard {
    limit: Option<u64>,
    used: AtomicU64,
}

impl MemoryGuard {
    /// `setting`: `--memory-limit-mb` (None: the cgroup's; Some(0): none).
    pub fn new(setting: Option<u64>) -> Arc<Self> {
        let limit = match setting {
            Some(0) => None,
            Some(mb) => Some(mb * 1024 * 1024),
            None => cgroup_limit(),
        };
        let guard = Arc::new(Self {
            limit,
            used: AtomicU64::new(resident_bytes().unwrap_or(0)),
        });
        if let Some(limit) = limit {
            info!(limit_mb = limit / (1024 * 1024), "memory limit");
        }
        guard
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn pressure(&self) -> Pressure {
        let Some(limit) = self.limit else {
            return Pressure::Fine;
        };
        let used = self.used();
        if used >= limit {
            Pressure::Full
        } else if used as f64 >= limit as f64 * HIGH {
            Pressure::High
        } else {
            Pressure::Fine
        }
    }

    /// Reads the resident size every second until `shutdown`; warns once
    /// each time the pressure rises.
    pub fn spawn(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let guard = self.clone();
        tokio::spawn(async move {
            if guard.limit.is_none() {
                return;
            }
            let mut was = Pressure::Fine;
            loop {
                if let Some(used) = resident_bytes() {
                    guard.used.store(used, Ordering::Relaxed);
                }
                let now = guard.pressure();
                if now != was {
                    let (used_mb, limit_mb) = (guard.used() >> 20, guard.limit.unwrap_or(0) >> 20);
                    match now {
                        Pressure::High => warn!(used_mb, limit_mb, "memory is past 90% of the limit; in memory mode, move to PostgreSQL (DATABASE_URL) before it fills"),
                        Pressure::Full => warn!(used_mb, limit_mb, "memory is at the limit: the memory store refuses new events until memory is freed"),
                        Pressure::Fine => info!(used_mb, limit_mb, "memory is back under 90% of the limit"),
                    }
                    was = now;
                }
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

/// This process's resident set size (Linux: /proc/self/status, VmRSS).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The cgroup v2 memory limit this process runs under, if one is set.
fn cgroup_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_the_share_of_the_limit() {
        let guard = MemoryGuard {
            limit: Some(1000),
            used: AtomicU64::new(0),
        };
        for (used, pressure) in [
            (0, Pressure::Fine),
            (899, Pressure::Fine),
            (900, Pressure::High),
            (999, Pressure::High),
            (1000, Pressure::Full),
        ] {
            guard.used.store(used, Ordering::Relaxed);
            assert_eq!(guard.pressure(), pressure, "{used}");
        }
        let unlimited = MemoryGuard {
            limit: None,
            used: AtomicU64::new(u64::MAX),
        };
        assert_eq!(unlimited.pressure(), Pressure::Fine);
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
