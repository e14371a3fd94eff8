//! What request handlers and stream connections share: built by `startup`,
//! read by the API.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::commands::audience::AudienceReader;
use crate::commands::{CommandService, Commands};
use crate::domain::send::Broadcast;
use crate::domain::topic::Membership;
use crate::memory_limit::MemoryGuard;
use crate::projections::inbox::InboxReader;
use crate::projections::rebuild::Rebuilds;
use crate::projections::registry::Projections;
use crate::projections::store::RowReader;
use crate::reactors::dispatch::TimerStats;
use crate::reactors::scheduled::Due;
use crate::storage::EventLog;
use crate::streams::addresses::AddressLimit;
use crate::streams::fanout::Fanout;
use crate::streams::router::Router;
use crate::streams::socket::StreamSettings;
use crate::streams::updates::UpdateLog;

/// What request handlers share.
pub struct AppState {
    pub commands: Arc<CommandService>,
    /// Recipients' profiles and preferences, tenants' defaults, category
    /// settings.
    pub audience: Arc<AudienceReader>,
    /// Creating and revoking API keys, and the ring of those in force.
    pub keys: Arc<crate::access::lifecycle::KeyAdmin>,
    /// What credentials are accepted.
    pub access: Arc<crate::access::Authority>,
    /// Each principal's rate limit.
    pub rates: Arc<crate::access::rate::RateLimits>,
    /// Origins browsers may call from (CORS); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// The global log, for audit and export queries.
    pub log: Arc<dyn EventLog>,
    pub inbox: Arc<dyn InboxReader>,
    /// Deliveries waiting for their time.
    pub schedule: Arc<dyn RowReader<Due>>,
    /// Sends to many (their requests; the fan-out runs their pages).
    pub sends: Arc<Commands<Broadcast>>,
    /// Topic subscriptions.
    pub memberships: Arc<Commands<Membership>>,
    /// Bulk inbox operations, recorded as each ends.
    pub bulks: Arc<Commands<crate::domain::bulk::InboxBulk>>,
    /// Topics' subscribers and counts.
    pub topics: Arc<dyn RowReader<crate::projections::topics::Row>>,
    /// How far each send has got.
    pub send_rows: Arc<dyn RowReader<crate::projections::sends::Row>>,
    /// Batch commands (a manual flush).
    pub batch_commands: Arc<Commands<crate::domain::batch::Batch>>,
    /// Every batch, open or flushed.
    pub batch_rows: Arc<dyn RowReader<crate::projections::batches::Row>>,
    /// Templates: their versions, and resolving one for a send.
    pub templates: Arc<crate::commands::templates::TemplateLibrary>,
    /// Experiments: their commands, and enrolling a create.
    pub experiments: Arc<crate::commands::experiments::ExperimentLab>,
    /// Experiments' assignments and exposed notifications.
    pub outcomes: Arc<dyn RowReader<crate::projections::outcomes::Row>>,
    /// Counters and latencies per bucket.
    pub analytics: Arc<dyn RowReader<crate::projections::analytics::Row>>,
    /// The health score's window, targets and weights.
    pub health: super::analytics::HealthSettings,
    /// Every projection by name, with its engine handle and operations.
    pub projections: Projections,
    /// What the timers fired, and how late.
    pub timers: Arc<TimerStats>,
    /// The PostgreSQL pool, for its utilisation (None in memory mode).
    pub pool: Option<deadpool_postgres::Pool>,
    /// The projectors' own pool, for its utilisation (None in memory mode).
    pub projector_pool: Option<deadpool_postgres::Pool>,
    /// How long a query with `min_position` waits for the read model.
    pub read_wait: Duration,
    /// `memory` or `postgres`.
    pub storage: &'static str,
    pub streams: Streams,
    /// The latest rebuild on this instance.
    pub rebuilds: Arc<Rebuilds>,
    /// Resident memory against the limit.
    pub memory: Arc<MemoryGuard>,
    /// Readiness degrades when a projector's oldest unapplied event is older.
    pub ready_max_lag: Duration,
    /// The most events a time-travel request folds.
    pub as_of_max_events: usize,
    /// The most events a filtered log page reads.
    pub events_scan_max: usize,
    /// The per-request timeout and the cap on requests in flight.
    pub request_limits: Arc<super::limits::RequestLimits>,
}

/// What stream connections share.
pub struct Streams {
    pub router: Arc<Router>,
    pub log: Arc<dyn UpdateLog>,
    /// One permit per open connection.
    pub permits: Arc<Semaphore>,
    pub max_connections: usize,
    pub settings: StreamSettings,
    /// Flips to true when the server starts shutting down.
    pub closing: watch::Receiver<bool>,
    /// Redis, when configured.
    pub fanout: Option<Arc<Fanout>>,
    /// Connections per client address, when capped.
    pub per_address: Option<Arc<AddressLimit>>,
}
