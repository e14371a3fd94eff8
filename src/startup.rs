//! Wiring: storage, projectors, timers, streams and the HTTP server, built from
//! `Settings`. `main`, the tests and the benchmarks all start the app here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::EndpointExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api;
use crate::api::state::{AppState, Streams};
use crate::commands::audience::AudienceReader;
use crate::commands::experiments::ExperimentLab;
use crate::commands::templates::TemplateLibrary;
use crate::commands::{CommandService, Commands, EventStores};
use crate::config::Settings;
use crate::domain::batch::Batch;
use crate::domain::batching::Batching;
use crate::domain::bulk::InboxBulk;
use crate::domain::category::CategoryConfig;
use crate::domain::experiment::{Assignment, Experiment};
use crate::domain::recipient::Recipient;
use crate::domain::send::Broadcast;
use crate::domain::template::Template;
use crate::domain::tenant::Tenant;
use crate::domain::topic::Membership;
use crate::domain::{ApiKey, Notification};
use crate::memory_limit::MemoryGuard;
use crate::projections::analytics;
use crate::projections::engine::{self, EngineConfig};
use crate::projections::inbox::InboxReader;
use crate::projections::leader::{self, Election};
use crate::projections::registry::{Projections, ReadModels, Registered, Running, NAMES};
use crate::projections::store::postgres::Publisher;
use crate::projections::store::RowReader;
use crate::projections::topics;
use crate::reactors::batcher::{self, BatchFire, Batcher};
use crate::reactors::digests::{self, DigestFire, Digests};
use crate::reactors::dispatch::{self, Dispatcher, TimerSettings, TimerStats};
use crate::reactors::fanout::{self, FanOut, FanOutWorker};
use crate::reactors::scheduled::{self, Due, ScheduledDelivery};
use crate::reactors::Pending;
use crate::storage::memory::MemoryEventStore;
use crate::storage::postgres::{self, PgEventLog};
use crate::storage::{AppendSignal, EventLog};
use crate::streams::addresses::AddressLimit;
use crate::streams::fanout::Fanout;
use crate::streams::feed;
use crate::streams::feed::MemoryAnnounce;
use crate::streams::router::Router;
use crate::streams::socket::StreamSettings;
use crate::streams::updates::{Announce, MemoryUpdateLog, PgUpdateLog, UpdateLog};

/// The running parts behind the HTTP surface.
pub struct Service {
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    closing: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What one backend (memory or PostgreSQL) starts: its stores, read models
/// and their tasks.
struct BackendParts {
    log: Arc<dyn EventLog>,
    /// Every aggregate's event store.
    stores: EventStores,
    inbox: Arc<dyn InboxReader>,
    schedule: Arc<dyn RowReader<Due>>,
    topics: Arc<dyn RowReader<crate::projections::topics::Row>>,
    sends: Arc<dyn RowReader<crate::projections::sends::Row>>,
    fan_out_pages: Arc<dyn RowReader<Pending<u64>>>,
    batcher: Arc<dyn RowReader<Pending<crate::reactors::batcher::BatchOrder>>>,
    digests: Arc<dyn RowReader<Pending<crate::reactors::digests::DigestOrder>>>,
    batch_rows: Arc<dyn RowReader<crate::projections::batches::Row>>,
    outcomes: Arc<dyn RowReader<crate::projections::outcomes::Row>>,
    analytics: Arc<dyn RowReader<analytics::Row>>,
    /// Publishes updates no projection page carries.
    announce: Arc<dyn Announce>,
    running: Vec<Running>,
    pool: Option<deadpool_postgres::Pool>,
    /// The projectors' own pool (PostgreSQL).
    projector_pool: Option<deadpool_postgres::Pool>,
    updates: Arc<dyn UpdateLog>,
    fanout: Option<Arc<Fanout>>,
    /// The deployment's name in Redis (its stream channel).
    channel: String,
    storage: &'static str,
    tasks: Vec<JoinHandle<()>>,
}

/// The engine's settings for `registered`: the server's, with what the read
/// model asks for (a settle time, larger pages).
fn engine_config(settings: &Settings, registered: &Registered) -> EngineConfig {
    let page_size = settings.projector_page_size as usize;
    EngineConfig {
        page_size: registered.page_size.map_or(page_size, |p| p.max(page_size)),
        poll_interval: settings.projector_poll(),
        max_attempts: settings.projector_max_attempts,
        settle: registered.settle,
        ..EngineConfig::default()
    }
}

async fn start_memory(
    settings: &Settings,
    signal: &AppendSignal,
    router: &Arc<Router>,
    shutdown: &watch::Receiver<bool>,
) -> BackendParts {
    warn!(
        "storage: MEMORY. Nothing is kept: every notification is lost when this \
         process exits. Set DATABASE_URL (or --database-url) to use PostgreSQL."
    );
    if settings.redis_url.is_some() {
        warn!("REDIS_URL is ignored without DATABASE_URL: the memory store serves one instance");
    }
    let events = MemoryEventStore::new(signal.clone());
    let updates = Arc::new(MemoryUpdateLog::bounded(
        settings.stream_retention as usize,
        settings.stream_retention_bytes as usize,
    ));
    let (feed, feed_task) = feed::spawn(
        router.clone(),
        updates.clone(),
        settings.stream_poll(),
        shutdown.clone(),
    );
    let models = ReadModels::memory(updates.clone(), &feed, api::views::row_view());
    let log: Arc<dyn EventLog> = Arc::new(events.clone());
    let mut tasks = vec![feed_task];
    let mut running = Vec::new();
    for registered in models.registered {
        let (projector, task) = engine::spawn(
            registered.projection.clone(),
            log.clone(),
            signal,
            engine_config(settings, &registered),
            shutdown.clone(),
        );
        tasks.push(task);
        running.push(Running {
            registered,
            projector,
        });
    }
    BackendParts {
        log,
        stores: EventStores::Memory(events),
        inbox: models.inbox,
        schedule: models.schedule,
        topics: models.topics,
        sends: models.sends,
        fan_out_pages: models.fanout,
        batcher: models.batcher,
        digests: models.digests,
        batch_rows: models.batches,
        outcomes: models.outcomes,
        analytics: models.analytics,
        announce: Arc::new(MemoryAnnounce {
            log: updates.clone(),
            feed,
        }),
        running,
        pool: None,
        projector_pool: None,
        updates,
        fanout: None,
        channel: "tidings".to_owned(),
        storage: "memory",
        tasks,
    }
}

async fn start_postgres(
    url: &str,
    settings: &Settings,
    signal: &AppendSignal,
    router: &Arc<Router>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<BackendParts> {
    let pools = postgres::connect(url, postgres::SessionLimits::of(&settings.db)).await?;
    if settings.skip_migrations {
        postgres::require_schema(&pools).await?;
    } else {
        postgres::migrate_if_needed(&pools).await?;
    }
    info!(database = %postgres::redact(url), "storage: postgres (schema up to date)");
    let updates = Arc::new(PgUpdateLog::new(pools.deadpool.clone()));
    let publisher = Arc::new(Publisher::new(
        pools.deadpool.clone(),
        settings.stream_retention,
    ));
    // A connection for each projector, beside the requests' pool.
    let projecting = pools.connector.pool(NAMES.len())?;
    let models = ReadModels::postgres(
        &pools.deadpool,
        &projecting,
        &pools.connector,
        &publisher,
        settings.rebuild_tuning(),
        api::views::row_view(),
    );
    let (feed, feed_task) = feed::spawn(
        router.clone(),
        updates.clone(),
        settings.stream_poll(),
        shutdown.clone(),
    );
    publisher.set_feed(feed.clone());
    let channel = settings
        .redis_channel
        .clone()
        .unwrap_or_else(|| postgres::deployment_channel(pools.connector.config()));
    let fanout = match &settings.redis_url {
        Some(redis) => {
            let fanout = Fanout::start(redis, channel.clone(), feed, shutdown.clone())?;
            publisher.set_fanout(fanout.clone());
            let shown = postgres::redact(redis);
            if fanout.wait_up(Duration::from_secs(2)).await {
                info!(redis = %shown, "streams: updates travel between instances through Redis");
            } else {
                warn!(
                    redis = %shown,
                    "Redis is unreachable: until it is back, other instances' subscribers get \
                     updates from the update log (every --stream-poll-ms), and readiness says \
                     degraded; tidings keeps reconnecting"
                );
            }
            Some(fanout)
        }
        None => None,
    };
    let log: Arc<dyn EventLog> = Arc::new(PgEventLog::new(pools.deadpool.clone()));
    let election = Election {
        pg: pools.connector.clone(),
        pool: pools.deadpool.clone(),
        interval: settings.election_interval(),
    };
    let mut tasks = vec![feed_task];
    let mut running = Vec::new();
    for registered in models.registered {
        let (projector, task) = leader::spawn(
            registered.projection.clone(),
            log.clone(),
            signal,
            engine_config(settings, &registered),
            shutdown.clone(),
            election.clone(),
        );
        tasks.push(task);
        running.push(Running {
            registered,
            projector,
        });
    }
    Ok(BackendParts {
        log,
        stores: EventStores::Postgres(Box::new(pools.clone())),
        inbox: models.inbox,
        schedule: models.schedule,
        topics: models.topics,
        sends: models.sends,
        fan_out_pages: models.fanout,
        batcher: models.batcher,
        digests: models.digests,
        batch_rows: models.batches,
        outcomes: models.outcomes,
        analytics: models.analytics,
        announce: publisher,
        running,
        pool: Some(pools.deadpool.clone()),
        projector_pool: Some(projecting),
        updates,
        fanout,
        channel,
        storage: "postgres",
        tasks,
    })
}

impl Service {
    /// Connects storage (migrating PostgreSQL), starts projectors and streams.
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        // Before anything counts: metrics recorded with no recorder are lost.
        crate::telemetry::metrics();
        let signal = AppendSignal::default();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (closing, closing_rx) = watch::channel(false);
        let router = Arc::new(Router::new(settings.stream_queue as usize));
        let backend = match &settings.db.database_url {
            None => start_memory(settings, &signal, &router, &shutdown_rx).await,
            Some(url) => start_postgres(url, settings, &signal, &router, &shutdown_rx).await?,
        };
        let log = backend.log.clone();
        let memory = MemoryGuard::new(settings.memory_limit_mb);
        let mut tasks = backend.tasks;
        tasks.push(memory.spawn(shutdown_rx.clone()));
        let access = crate::access::start::start(crate::access::start::Inputs {
            settings,
            log: log.clone(),
            key_store: backend.stores.of::<ApiKey>(),
            signal: signal.clone(),
            pool: backend.pool.clone(),
            channel: backend.channel.clone(),
            shutdown: shutdown_rx.clone(),
        })
        .await?;
        tasks.extend(access.tasks);
        // Every aggregate's commands, refusing new events at the memory limit
        // in memory mode.
        let limit = (backend.storage == "memory").then(|| memory.clone());
        fn commands_of<A>(
            stores: &EventStores,
            signal: &AppendSignal,
            attempts: u32,
            limit: &Option<Arc<MemoryGuard>>,
        ) -> Arc<Commands<A>>
        where
            A: cqrs_es::Aggregate<Services = ()>,
            A::Command: crate::commands::Named,
        {
            let commands = Commands::new(stores.of::<A>(), (), signal.clone(), attempts);
            Arc::new(match limit {
                Some(m) => commands.refusing_when_full(m.clone()),
                None => commands,
            })
        }
        let attempts = settings.command_attempts;
        let stores = &backend.stores;
        let audience = Arc::new(AudienceReader {
            recipients: commands_of::<Recipient>(stores, &signal, attempts, &limit),
            categories: commands_of::<CategoryConfig>(stores, &signal, attempts, &limit),
            tenants: commands_of::<Tenant>(stores, &signal, attempts, &limit),
            batching: commands_of::<Batching>(stores, &signal, attempts, &limit),
            log: log.clone(),
        });
        let mut commands = CommandService::new(
            backend.stores.of::<Notification>(),
            audience.clone(),
            signal.clone(),
            settings.command_attempts,
        );
        if let Some(m) = &limit {
            commands = commands.refusing_when_full(m.clone());
        }
        let commands = Arc::new(commands);
        let projections = Projections::new(backend.running)?;
        let timer_stats = Arc::new(TimerStats::default());
        tasks.push(dispatch::spawn(
            Dispatcher {
                reactor: Arc::new(ScheduledDelivery),
                outbox: backend.schedule.clone(),
                projector: projections.get(scheduled::NAME)?.projector.clone(),
                commands: commands.runner(),
                settings: TimerSettings::default(),
                stats: timer_stats.clone(),
            },
            shutdown_rx.clone(),
        ));
        let memberships = commands_of::<Membership>(stores, &signal, attempts, &limit);
        let experiments = Arc::new(ExperimentLab {
            experiments: commands_of::<Experiment>(stores, &signal, attempts, &limit),
            assignments: commands_of::<Assignment>(stores, &signal, attempts, &limit),
        });
        let fan_out_worker = Arc::new(FanOutWorker {
            notifications: commands.runner(),
            audience: audience.clone(),
            members: backend.topics.clone(),
            topics: projections.get(topics::NAME)?.projector.clone(),
            log: log.clone(),
            wait: settings.read_wait(),
            experiments: experiments.clone(),
        });
        let mut sends = Commands::<Broadcast>::new(
            backend.stores.of::<Broadcast>(),
            fan_out_worker,
            signal.clone(),
            attempts,
        );
        if let Some(m) = &limit {
            sends = sends.refusing_when_full(m.clone());
        }
        let sends = Arc::new(sends);
        tasks.push(dispatch::spawn(
            Dispatcher {
                reactor: Arc::new(FanOut),
                outbox: backend.fan_out_pages.clone(),
                projector: projections.get(fanout::NAME)?.projector.clone(),
                commands: sends.clone(),
                settings: TimerSettings::default(),
                // Fan-out pages are not timers: their lateness is not the timers'.
                stats: Arc::new(TimerStats::default()),
            },
            shutdown_rx.clone(),
        ));
        let batches = commands_of::<Batch>(stores, &signal, attempts, &limit);
        let templates = Arc::new(TemplateLibrary::new(commands_of::<Template>(
            stores, &signal, attempts, &limit,
        )));
        tasks.push(dispatch::spawn(
            Dispatcher {
                reactor: Arc::new(Batcher),
                outbox: backend.batcher.clone(),
                projector: projections.get(batcher::NAME)?.projector.clone(),
                commands: Arc::new(BatchFire {
                    batches: batches.clone(),
                }),
                settings: TimerSettings::default(),
                stats: timer_stats.clone(),
            },
            shutdown_rx.clone(),
        ));
        tasks.push(dispatch::spawn(
            Dispatcher {
                reactor: Arc::new(Digests),
                outbox: backend.digests.clone(),
                projector: projections.get(digests::NAME)?.projector.clone(),
                commands: Arc::new(DigestFire {
                    notifications: commands.runner(),
                    templates: templates.clone(),
                }),
                settings: TimerSettings::default(),
                // Digests follow flushes at once: not timers.
                stats: Arc::new(TimerStats::default()),
            },
            shutdown_rx.clone(),
        ));
        let max_connections = settings.stream_max_connections as usize;
        let health = api::analytics::HealthSettings {
            targets: settings.health.targets()?,
            window: settings.health.window(),
        };
        let state = Arc::new(AppState {
            commands,
            audience,
            keys: access.keys,
            access: access.authority,
            rates: access.rates,
            cors_origins: settings.access.cors_origins()?,
            log,
            inbox: backend.inbox,
            schedule: backend.schedule,
            sends,
            memberships,
            bulks: commands_of::<InboxBulk>(stores, &signal, attempts, &limit),
            topics: backend.topics,
            send_rows: backend.sends,
            batch_commands: batches.clone(),
            templates: templates.clone(),
            batch_rows: backend.batch_rows,
            outcomes: backend.outcomes,
            experiments: experiments.clone(),
            analytics: backend.analytics,
            health,
            projections,
            timers: timer_stats,
            pool: backend.pool,
            projector_pool: backend.projector_pool,
            read_wait: settings.read_wait(),
            storage: backend.storage,
            streams: Streams {
                router,
                log: backend.updates,
                permits: Arc::new(Semaphore::new(max_connections)),
                max_connections,
                settings: StreamSettings {
                    heartbeat: settings.stream_heartbeat(),
                    send_timeout: settings.stream_send_timeout(),
                    auth_wait: Duration::from_millis(settings.stream_auth_wait_ms),
                    expiry_grace: Duration::from_millis(settings.stream_expiry_grace_ms),
                },
                closing: closing_rx,
                fanout: backend.fanout,
                per_address: AddressLimit::new(
                    settings.stream_max_connections_per_address as usize,
                ),
            },
            rebuilds: Arc::default(),
            memory,
            ready_max_lag: settings.ready_max_lag(),
            as_of_max_events: settings.as_of_max_events as usize,
            events_scan_max: settings.events_scan_max as usize,
            request_limits: api::limits::RequestLimits::new(
                settings.request_timeout(),
                settings.max_concurrent_requests as usize,
            ),
        });
        tasks.push(api::analytics::spawn_health_announcer(
            state.clone(),
            backend.announce,
            api::analytics::HEALTH_EVERY,
            shutdown_rx.clone(),
        ));
        Ok(Self {
            state,
            shutdown,
            closing,
            tasks,
        })
    }

    /// Tells stream connections to close (the first step of a shutdown).
    pub fn close_streams(&self) {
        let _ = self.closing.send(true);
    }

    /// Stops the projectors after they have applied everything committed.
    pub async fn stop(self) {
        self.close_streams();
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops everything at once, without flushing: what a crash looks like to
    /// the other instances (tests use it to kill a leader).
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.close_streams();
    }
}

/// The OpenAPI document, as served at /openapi.json.
pub async fn openapi_json() -> anyhow::Result<String> {
    let service = Service::start(&Settings::for_tests(None)).await?;
    let spec = api::document_text(service.state.clone());
    service.stop().await;
    Ok(spec)
}

/// A built, bound, not yet serving application.
pub struct Application {
    service: Service,
    listener: TcpListener,
    addr: SocketAddr,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let service = Service::start(&settings).await?;
        let access = &service.state.access;
        if !access.enforced() {
            if !settings.listen.ip().is_loopback() && !access.allow_unauthenticated {
                anyhow::bail!(
                    "refusing to listen on {} with no credentials configured: anyone who can reach it \
                     could read every inbox and send to anyone. Create a key (`tidings keys create`), \
                     set TIDINGS_API_KEYS or TIDINGS_JWT_SECRET, listen on loopback, or pass \
                     --allow-unauthenticated if a gateway in front authenticates",
                    settings.listen
                );
            }
            warn!(
                listen = %settings.listen,
                "ACCESS IS OPEN: no API keys and no user-token key are configured, so every request \
                 may do everything. Fine on loopback for development; create a key with \
                 `tidings keys create` before exposing tidings"
            );
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (TIDINGS_LISTEN)", settings.listen))?;
        let addr = listener
            .local_addr()
            .context("the listener has no socket address")?;
        Ok(Self {
            service,
            listener,
            addr,
            settings,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> Arc<AppState> {
        self.service.state.clone()
    }

    /// Serves until `shutdown` resolves; then closes streams, stops accepting,
    /// lets in-flight requests finish (up to the configured timeout), flushes
    /// the projectors.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run_until_stopped_or_killed(shutdown, std::future::pending())
            .await
    }

    /// Serves until `stop` resolves (graceful, as above) or `kill` resolves
    /// (everything aborted at once, as in a crash; tests kill a leader so).
    pub async fn run_until_stopped_or_killed(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
        kill: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let settings = &self.settings;
        let app = api::routes(self.service.state.clone(), settings.max_body_bytes as usize);
        info!(addr = %self.addr, docs = %format!("http://{}/docs", self.addr), "tidings is serving");
        let closing = self.service.closing.clone();
        let server = crate::server::serve(
            self.listener,
            app.map_to_response().boxed(),
            crate::server::ConnectionLimits {
                header_read: settings.http_header_timeout(),
                idle: settings.http_idle_timeout(),
                shutdown: settings.shutdown_timeout(),
            },
            async move {
                stop.await;
                // Stream connections never end by themselves: close them first.
                let _ = closing.send(true);
            },
        );
        tokio::select! {
            result = server => {
                result.context("the HTTP server failed")?;
                info!("HTTP drained; flushing projectors");
                self.service.stop().await;
                info!("stopped");
            }
            _ = kill => self.service.abort(),
        }
        Ok(())
    }
}
