//! tidings: an event-sourced CQRS notification service.
//!
//! How a request flows, and where each step lives:
//!
//! - [`api`]: poem-openapi endpoints. Parses strictly, validates into domain
//!   value types, maps every error to `application/problem+json`.
//! - [`commands`]: loads a notification's stream, lets the aggregate decide,
//!   appends with an expected-version check (retrying conflicts), answers with
//!   the cursor of the last event.
//! - [`domain`]: pure rules: value types, commands, events, the aggregate.
//! - [`storage`]: the event store (memory, or PostgreSQL through postgres-es)
//!   and the global log reader, in commit order.
//! - [`projections`]: the projector engine and the inbox read model; each
//!   page of events and its checkpoint commit together.
//!
//! [`Application::build`] wires these together; `main` and the tests share it.

pub mod api;
pub mod commands;
pub mod config;
pub mod domain;
pub mod projections;
pub mod storage;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::Server;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::commands::{CommandService, NotificationStore};
use crate::config::Settings;
use crate::projections::engine::{self, EngineConfig, ProjectorHandle};
use crate::projections::inbox::InboxReader;
use crate::projections::inbox_memory::MemoryInbox;
use crate::projections::inbox_postgres::PostgresInbox;
use crate::projections::Projection;
use crate::storage::memory::MemoryEventStore;
use crate::storage::postgres::{self, PgEventLog};
use crate::storage::{AppendSignal, EventLog};

/// What request handlers share.
pub struct AppState {
    pub commands: CommandService,
    pub inbox: Arc<dyn InboxReader>,
    pub inbox_projector: ProjectorHandle,
    /// How long a query with `min_position` waits for the read model.
    pub read_wait: Duration,
    /// `memory` or `postgres`.
    pub storage: &'static str,
}

/// The storage backend's parts, memory or PostgreSQL.
struct Backend {
    log: Arc<dyn EventLog>,
    store: NotificationStore,
    projection: Arc<dyn Projection>,
    inbox: Arc<dyn InboxReader>,
    storage: &'static str,
}

impl Backend {
    async fn connect(settings: &Settings, signal: &AppendSignal) -> anyhow::Result<Self> {
        let Some(url) = &settings.database_url else {
            warn!(
                "storage: MEMORY. Nothing is kept: every notification is lost when this \
                 process exits. Set DATABASE_URL (or --database-url) to use PostgreSQL."
            );
            let events = MemoryEventStore::new(signal.clone());
            let inbox = Arc::new(MemoryInbox::new());
            return Ok(Self {
                log: Arc::new(events.clone()),
                store: NotificationStore::memory(events),
                projection: inbox.clone(),
                inbox,
                storage: "memory",
            });
        };
        let pools = postgres::connect(url, settings.db_pool_size).await?;
        postgres::migrate(&pools).await?;
        info!(database = %postgres::redact(url), "storage: postgres (migrations applied)");
        let inbox = Arc::new(PostgresInbox::new(pools.deadpool.clone()));
        Ok(Self {
            log: Arc::new(PgEventLog::new(pools.deadpool.clone())),
            store: NotificationStore::postgres(&pools),
            projection: inbox.clone(),
            inbox,
            storage: "postgres",
        })
    }
}

/// The running parts behind the HTTP surface.
pub struct Core {
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    projectors: Vec<JoinHandle<()>>,
}

impl Core {
    /// Connects storage (migrating PostgreSQL), starts the projectors.
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let signal = AppendSignal::default();
        let Backend {
            log,
            store,
            projection,
            inbox,
            storage,
        } = Backend::connect(settings, &signal).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let engine_config = EngineConfig {
            page_size: settings.projector_page_size as usize,
            poll_interval: settings.projector_poll(),
            ..EngineConfig::default()
        };
        let (inbox_projector, task) =
            engine::spawn(projection, log.clone(), &signal, engine_config, shutdown_rx);
        let commands = CommandService::new(store, log, signal, settings.command_attempts);
        Ok(Self {
            state: Arc::new(AppState {
                commands,
                inbox,
                inbox_projector,
                read_wait: settings.read_wait(),
                storage,
            }),
            shutdown,
            projectors: vec![task],
        })
    }

    /// Stops the projectors after they have applied everything committed.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.projectors {
            let _ = task.await;
        }
    }
}

/// The OpenAPI document, as served at /openapi.json.
pub async fn openapi_json() -> anyhow::Result<String> {
    let core = Core::start(&Settings::for_tests(None)).await?;
    let spec = api::openapi(core.state.clone()).spec();
    core.stop().await;
    Ok(spec)
}

/// A built, bound, not yet serving application.
pub struct Application {
    core: Core,
    acceptor: TcpAcceptor,
    addr: SocketAddr,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let core = Core::start(&settings).await?;
        let acceptor = TcpListener::bind(settings.listen.to_string())
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {} (TIDINGS_LISTEN)", settings.listen))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("the listener has no socket address")?;
        Ok(Self {
            core,
            acceptor,
            addr,
            settings,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> Arc<AppState> {
        self.core.state.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight
    /// requests finish (up to the configured timeout), flushes the projectors.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = api::routes(
            self.core.state.clone(),
            self.settings.max_body_bytes as usize,
        );
        info!(addr = %self.addr, docs = %format!("http://{}/docs", self.addr), "tidings is serving");
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(self.settings.shutdown_timeout()))
            .await
            .context("the HTTP server failed")?;
        info!("HTTP drained; flushing projectors");
        self.core.stop().await;
        info!("stopped");
        Ok(())
    }
}
