//! Typed settings from flags and environment variables alike. A bad value
//! stops start-up with a message naming the flag and the variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

mod access;
pub use access::Access;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How tidings reaches PostgreSQL: the server and every command that uses
/// the database share these.
#[derive(Debug, Clone, Args)]
pub struct Database {
    /// PostgreSQL URL; absent: the in-memory store (nothing is kept after exit).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Connections in each PostgreSQL pool. A handful is right: PostgreSQL peaks
    /// at about as many concurrent transactions as the machine has cores.
    #[arg(long, env = "TIDINGS_DB_POOL_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_pool_size: u32,

    /// Longest a statement may run, in milliseconds (PostgreSQL's
    /// `statement_timeout` on every connection; 0: no limit). A setting in
    /// DATABASE_URL's `options` wins.
    #[arg(long, env = "TIDINGS_DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub db_statement_timeout_ms: u64,

    /// Longest a statement may wait for a lock, in milliseconds (PostgreSQL's
    /// `lock_timeout` on every connection; 0: no limit). A setting in
    /// DATABASE_URL's `options` wins.
    #[arg(long, env = "TIDINGS_DB_LOCK_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub db_lock_timeout_ms: u64,
}

impl Database {
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.db_statement_timeout_ms)
    }
    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.db_lock_timeout_ms)
    }

    /// The defaults, for a database at `url` (tests, benchmarks).
    pub fn at(url: Option<String>) -> Self {
        Self {
            database_url: url,
            db_pool_size: 8,
            db_statement_timeout_ms: 10_000,
            db_lock_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub db: Database,

    /// Do not apply migrations at start; refuse to start on a database whose
    /// schema is behind this release (run `tidings migrate` as the owner).
    #[arg(long, env = "TIDINGS_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// Redis URL for stream updates between instances; absent: one instance,
    /// in-process fan-out. Needs DATABASE_URL.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis pub/sub channel for stream updates, one per deployment; absent:
    /// named after the database, so deployments sharing a Redis stay apart.
    #[arg(long, env = "TIDINGS_REDIS_CHANNEL")]
    pub redis_channel: Option<String>,

    /// Most WebSocket stream connections at once; more are closed with code 1013.
    #[arg(long, env = "TIDINGS_STREAM_MAX_CONNECTIONS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub stream_max_connections: u64,

    /// Updates a stream connection may have waiting; a reader further behind
    /// is told to resync and disconnected. Keep it above the updates one
    /// projector page can cause for one topic (up to a page of events plus one).
    #[arg(long, env = "TIDINGS_STREAM_QUEUE", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub stream_queue: u64,

    /// Ping interval on stream connections, in milliseconds; a peer silent for
    /// two intervals is closed.
    #[arg(long, env = "TIDINGS_STREAM_HEARTBEAT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub stream_heartbeat_ms: u64,

    /// Longest one write to a stream connection may take, in milliseconds;
    /// a client that stopped reading is dropped after it.
    #[arg(long, env = "TIDINGS_STREAM_SEND_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub stream_send_timeout_ms: u64,

    /// How long a stream connection whose upgrade carried no credential has
    /// to send its `auth` message, in milliseconds; then it is closed (4401).
    #[arg(long, env = "TIDINGS_STREAM_AUTH_WAIT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub stream_auth_wait_ms: u64,

    /// How long a stream connection may refresh an expired credential with
    /// an `auth` message, in milliseconds; then it is closed (4401).
    #[arg(long, env = "TIDINGS_STREAM_EXPIRY_GRACE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub stream_expiry_grace_ms: u64,

    /// Most stream connections from one client address; more are closed
    /// with 1013. 0: no limit (behind a load balancer every client has its
    /// address).
    #[arg(long, env = "TIDINGS_STREAM_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub stream_max_connections_per_address: u64,

    /// Stream updates kept for resuming subscribers; an older cursor gets `resync`.
    #[arg(long, env = "TIDINGS_STREAM_RETENTION", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub stream_retention: u64,

    /// Bytes of stream updates kept in memory mode (with PostgreSQL they are
    /// rows, bounded by --stream-retention); the oldest go first past either.
    #[arg(long, env = "TIDINGS_STREAM_RETENTION_BYTES", default_value_t = 128 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1 << 40))]
    pub stream_retention_bytes: u64,

    /// How often each instance checks the update log for updates it missed
    /// (Redis down, or no Redis), in milliseconds.
    #[arg(long, env = "TIDINGS_STREAM_POLL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub stream_poll_ms: u64,

    /// How often a standby instance tries to take over a projector, in milliseconds.
    #[arg(long, env = "TIDINGS_ELECTION_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub election_interval_ms: u64,

    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "TIDINGS_MAX_BODY_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Attempts per command when concurrent writers conflict, before answering 409.
    #[arg(long, env = "TIDINGS_COMMAND_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub command_attempts: u32,

    /// How long a query with `min_position` waits for the read model, in milliseconds.
    #[arg(long, env = "TIDINGS_READ_WAIT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub read_wait_ms: u64,

    /// Projector poll interval in milliseconds (the fallback to the in-process wake-up).
    #[arg(long, env = "TIDINGS_PROJECTOR_POLL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub projector_poll_ms: u64,

    /// Events per projector page (one read-model transaction each).
    #[arg(long, env = "TIDINGS_PROJECTOR_PAGE_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub projector_page_size: u64,

    /// Tries of an event the projection refuses (with exponential backoff)
    /// before it is parked and the projector moves on.
    #[arg(long, env = "TIDINGS_PROJECTOR_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub projector_max_attempts: u32,

    #[command(flatten)]
    pub rebuild: Rebuild,

    /// Longest wait for in-flight requests at shutdown, in seconds.
    #[arg(long, env = "TIDINGS_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub shutdown_timeout_secs: u64,

    /// Longest wait for a request's headers, in milliseconds, from the
    /// moment a connection waits for them (slow clients cannot hold
    /// connections open by trickling headers).
    #[arg(long, env = "TIDINGS_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_timeout_ms: u64,

    /// How long a keep-alive connection may sit without a request before it
    /// is closed, in milliseconds.
    #[arg(long, env = "TIDINGS_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub http_idle_timeout_ms: u64,

    /// Longest a request may take to be answered, in milliseconds (503 past
    /// it). Streamed bodies (exports) and WebSocket streams are not bound by
    /// it once they have started.
    #[arg(long, env = "TIDINGS_REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub request_timeout_ms: u64,

    /// Requests handled at once; past it a request is answered 503 with
    /// `Retry-After` at once (health checks are not counted).
    #[arg(long, env = "TIDINGS_MAX_CONCURRENT_REQUESTS", default_value_t = 1_024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests: u64,

    /// The most events one time-travel request (`as_of`) folds; a history
    /// longer than this is refused with 422.
    #[arg(long, env = "TIDINGS_AS_OF_MAX_EVENTS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub as_of_max_events: u64,

    /// The most events one `GET /v1/events` request reads while filtering by
    /// `type`; it answers what it found, with `has_more` and its cursor.
    #[arg(long, env = "TIDINGS_EVENTS_SCAN_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub events_scan_max: u64,

    /// Readiness says `degraded` when a projector's oldest unapplied event is
    /// older than this, in milliseconds (a stuck or far-behind projector).
    #[arg(long, env = "TIDINGS_READY_MAX_LAG_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub ready_max_lag_ms: u64,

    /// The process's memory limit in MiB; absent: the cgroup's limit, if
    /// any; 0: none. Past 90% readiness says `degraded` and the log warns;
    /// at the limit the memory store refuses new events (503) rather than be
    /// killed with everything in it.
    #[arg(long, env = "TIDINGS_MEMORY_LIMIT_MB",
          value_parser = clap::value_parser!(u64).range(0..=16 * 1024 * 1024))]
    pub memory_limit_mb: Option<u64>,

    #[command(flatten)]
    pub health: HealthScore,

    #[command(flatten)]
    pub access: Access,

    #[command(flatten)]
    pub log: Logging,
}

/// A share: a number from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

/// The health score's window, targets and weights (`GET /v1/analytics/health`;
/// the formula is in the README). Weights are relative: each component
/// weighs its weight over their sum.
#[derive(Debug, Clone, Args)]
pub struct HealthScore {
    /// The last this many minutes of analytics count.
    #[arg(long, env = "TIDINGS_HEALTH_WINDOW_MINUTES", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=10_080))]
    pub health_window_minutes: u64,

    /// Delivered over created at or above this scores full.
    #[arg(long, env = "TIDINGS_HEALTH_DELIVERY_RATE_TARGET", default_value_t = 0.99,
          value_parser = share)]
    pub health_delivery_rate_target: f64,

    #[arg(long, env = "TIDINGS_HEALTH_DELIVERY_RATE_WEIGHT", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub health_delivery_rate_weight: u32,

    /// Read over in-app deliveries at or above this scores full.
    #[arg(long, env = "TIDINGS_HEALTH_ENGAGEMENT_RATE_TARGET", default_value_t = 0.2,
          value_parser = share)]
    pub health_engagement_rate_target: f64,

    #[arg(long, env = "TIDINGS_HEALTH_ENGAGEMENT_RATE_WEIGHT", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub health_engagement_rate_weight: u32,

    /// A p99 delivery latency (due to delivered) at or under this, in
    /// milliseconds, scores full.
    #[arg(long, env = "TIDINGS_HEALTH_DELIVERY_P99_TARGET_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub health_delivery_p99_target_ms: u64,

    #[arg(long, env = "TIDINGS_HEALTH_DELIVERY_P99_WEIGHT", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub health_delivery_p99_weight: u32,

    /// A projection lag (the oldest unapplied event's age) at or under this,
    /// in milliseconds, scores full.
    #[arg(long, env = "TIDINGS_HEALTH_LAG_TARGET_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub health_lag_target_ms: u64,

    #[arg(long, env = "TIDINGS_HEALTH_LAG_WEIGHT", default_value_t = 15,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub health_lag_weight: u32,

    /// The event store (and Redis, when configured) answering.
    #[arg(long, env = "TIDINGS_HEALTH_DEPENDENCIES_WEIGHT", default_value_t = 15,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub health_dependencies_weight: u32,
}

impl Default for HealthScore {
    fn default() -> Self {
        let t = crate::projections::analytics::health::Targets::default();
        Self {
            health_window_minutes: 60,
            health_delivery_rate_target: t.delivery_rate,
            health_delivery_rate_weight: t.delivery_rate_weight as u32,
            health_engagement_rate_target: t.engagement_rate,
            health_engagement_rate_weight: t.engagement_rate_weight as u32,
            health_delivery_p99_target_ms: t.delivery_p99_ms as u64,
            health_delivery_p99_weight: t.delivery_p99_weight as u32,
            health_lag_target_ms: t.lag_ms as u64,
            health_lag_weight: t.lag_weight as u32,
            health_dependencies_weight: t.dependencies_weight as u32,
        }
    }
}

impl HealthScore {
    /// The targets, or why they cannot score anything.
    pub fn targets(&self) -> anyhow::Result<crate::projections::analytics::health::Targets> {
        let t = crate::projections::analytics::health::Targets {
            delivery_rate: self.health_delivery_rate_target,
            delivery_rate_weight: self.health_delivery_rate_weight.into(),
            engagement_rate: self.health_engagement_rate_target,
            engagement_rate_weight: self.health_engagement_rate_weight.into(),
            delivery_p99_ms: self.health_delivery_p99_target_ms as f64,
            delivery_p99_weight: self.health_delivery_p99_weight.into(),
            lag_ms: self.health_lag_target_ms as f64,
            lag_weight: self.health_lag_weight.into(),
            dependencies_weight: self.health_dependencies_weight.into(),
        };
        anyhow::ensure!(
            t.delivery_rate_weight
                + t.engagement_rate_weight
                + t.delivery_p99_weight
                + t.lag_weight
                + t.dependencies_weight
                > 0.0,
            "every TIDINGS_HEALTH_*_WEIGHT is 0: give at least one component a weight"
        );
        Ok(t)
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.health_window_minutes * 60)
    }
}

/// How a PostgreSQL rebuild reads and caches; the server (HTTP rebuilds) and
/// `tidings replay` share these.
#[derive(Debug, Clone, Args)]
pub struct Rebuild {
    /// Events a PostgreSQL rebuild reads per statement.
    #[arg(long, env = "TIDINGS_REBUILD_PAGE_SIZE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rebuild_page_size: u64,

    /// Rows a PostgreSQL rebuild keeps in memory (about 0.5 KiB each); past
    /// that the least recently touched are written out, and read back if a
    /// later event needs them.
    #[arg(long, env = "TIDINGS_REBUILD_CACHE_ROWS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub rebuild_cache_rows: u64,
}

impl Rebuild {
    pub fn tuning(&self) -> crate::projections::rebuild::RebuildTuning {
        crate::projections::rebuild::RebuildTuning {
            page_size: self.rebuild_page_size as usize,
            cache_rows: self.rebuild_cache_rows as usize,
        }
    }
}

/// How the process logs; every command has it.
#[derive(Debug, Clone, Args)]
pub struct Logging {
    /// Log line format (verbosity comes from RUST_LOG, default `info`).
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Settings {
    pub fn read_wait(&self) -> Duration {
        Duration::from_millis(self.read_wait_ms)
    }
    pub fn projector_poll(&self) -> Duration {
        Duration::from_millis(self.projector_poll_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
    pub fn stream_heartbeat(&self) -> Duration {
        Duration::from_millis(self.stream_heartbeat_ms)
    }
    pub fn stream_send_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_send_timeout_ms)
    }
    pub fn stream_poll(&self) -> Duration {
        Duration::from_millis(self.stream_poll_ms)
    }
    pub fn rebuild_tuning(&self) -> crate::projections::rebuild::RebuildTuning {
        self.rebuild.tuning()
    }
    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_ms)
    }
    pub fn http_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.http_idle_timeout_ms)
    }
    pub fn ready_max_lag(&self) -> Duration {
        Duration::from_millis(self.ready_max_lag_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn election_interval(&self) -> Duration {
        Duration::from_millis(self.election_interval_ms)
    }

    /// Defaults for an app in a test or benchmark: memory, port 0.
    pub fn for_tests(database_url: Option<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db: Database::at(database_url),
            skip_migrations: false,
            redis_url: None,
            redis_channel: None,
            stream_max_connections: 20_000,
            stream_queue: 4096,
            stream_heartbeat_ms: 20_000,
            stream_send_timeout_ms: 10_000,
            stream_max_connections_per_address: 0,
            stream_auth_wait_ms: 10_000,
            stream_expiry_grace_ms: 30_000,
            stream_retention: 100_000,
            stream_retention_bytes: 128 * 1024 * 1024,
            stream_poll_ms: 200,
            election_interval_ms: 200,
            max_body_bytes: 64 * 1024,
            command_attempts: 10,
            read_wait_ms: 10_000,
            projector_poll_ms: 100,
            projector_page_size: 500,
            projector_max_attempts: 5,
            rebuild: Rebuild {
                rebuild_page_size: 10_000,
                rebuild_cache_rows: 100_000,
            },
            shutdown_timeout_secs: 10,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 1_024,
            ready_max_lag_ms: 30_000,
            as_of_max_events: 50_000,
            events_scan_max: 10_000,
            memory_limit_mb: Some(0),
            health: HealthScore::default(),
            access: Access::unlimited(),
            log: Logging {
                log_format: LogFormat::Text,
            },
        }
    }
}
