//! An instance's access parts, started: the key ring (read now, re-read
//! every second, its last-used times written with PostgreSQL), the key
//! commands, the token keys, and the rate limiter (shared through Redis
//! when there is one beside PostgreSQL).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fred::interfaces::ClientLike;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::keys::{parse_setting, KeyRing};
use super::lifecycle::KeyAdmin;
use super::rate::RateLimits;
use super::tokens::{Binding, Tokens};
use super::{usage, Authority};
use crate::commands::{Commands, EventStore};
use crate::config::Settings;
use crate::domain::ApiKey;
use crate::storage::{AppendSignal, EventLog};

pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub log: Arc<dyn EventLog>,
    pub key_store: EventStore<ApiKey>,
    pub signal: AppendSignal,
    /// PostgreSQL, for the last-used times (None in memory mode).
    pub pool: Option<deadpool_postgres::Pool>,
    /// The deployment's name in Redis.
    pub channel: String,
    pub shutdown: watch::Receiver<bool>,
}

pub struct Started {
    pub keys: Arc<KeyAdmin>,
    pub authority: Arc<Authority>,
    pub rates: Arc<RateLimits>,
    pub tasks: Vec<JoinHandle<()>>,
}

pub async fn start(inputs: Inputs<'_>) -> anyhow::Result<Started> {
    let Inputs {
        settings,
        log,
        key_store,
        signal,
        pool,
        channel,
        shutdown,
    } = inputs;
    let access = &settings.access;
    let setting_keys = match access.api_keys.as_deref() {
        Some(setting) => parse_setting(setting)?,
        None => Vec::new(),
    };
    let ring = Arc::new(KeyRing::new(setting_keys, log));
    ring.refresh()
        .await
        .context("reading the API keys from the event log")?;
    let mut tasks = vec![tokio::spawn(ring.clone().refresh_until(shutdown.clone()))];
    let keys = Arc::new(KeyAdmin {
        commands: Arc::new(Commands::new(
            key_store,
            (),
            signal,
            settings.command_attempts,
        )),
        ring: ring.clone(),
    });
    let tokens = Tokens::configure(
        access.jwt_secret.as_deref(),
        access.jwt_public_key.as_deref(),
        access.jwt_private_key.as_deref(),
        access.token_ttl(),
        Binding {
            issuer: access.jwt_issuer.clone(),
            audience: access.jwt_audience.clone(),
        },
    )?;
    let mut rates = RateLimits::new(access.allowances());
    if let (Some(url), Some(_)) = (&settings.redis_url, &pool) {
        let mut builder = crate::streams::fanout::redis_builder(url)?;
        // A limiter that waits long on Redis slows every request.
        builder.with_performance_config(|p| {
            p.default_command_timeout = Duration::from_millis(250);
        });
        let client = builder.build()?;
        client.connect();
        // Beside the deployment's stream channel, so that deployments
        // sharing a Redis keep apart.
        rates = rates.shared(client, channel);
    }
    let rates = Arc::new(rates);
    tasks.push(tokio::spawn(rates.clone().forget_idle(shutdown.clone())));
    if let Some(pool) = pool {
        tasks.push(tokio::spawn(usage::flush_until(
            ring.clone(),
            pool,
            shutdown,
        )));
    }
    Ok(Started {
        keys,
        authority: Arc::new(Authority {
            keys: ring,
            tokens,
            allow_unauthenticated: access.allow_unauthenticated,
        }),
        rates,
        tasks,
    })
}
