//! Redis pub/sub between instances (fred): the projector's instance publishes
//! each page of numbered updates; every instance's subscriber offers them to
//! its feed.
//!
//! Redis is a fast path, not the record: the update log in PostgreSQL is.
//! Redis down means degraded, never down: publishing drops what it cannot
//! send, the clients reconnect with backoff, and each feed reads what it
//! missed from the log.
//!
//! A closed connection is easy: fred reconnects and resubscribes. A silent
//! one is not: a Redis Cluster master that hangs (or sits behind a
//! partition) keeps its connections open while a replica takes over, and a
//! subscriber there hears nothing, forever. So every instance sends itself a
//! probe through Redis twice a second; when its probes stop coming back the
//! clients reconnect, which re-reads the cluster's slots and subscribes on
//! the new master.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Builder;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use super::feed::Feed;
use super::updates::StreamUpdate;
use crate::storage::Position;

/// Updates as they travel through Redis.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    id: i64,
    topic: String,
    kind: String,
    #[serde(borrow)]
    data: &'a RawValue,
    tx: i64,
    seq: i64,
}

fn to_wire(u: &StreamUpdate) -> Option<Wire<'_>> {
    Some(Wire {
        id: u.id,
        topic: u.topic.clone(),
        kind: u.kind.clone(),
        data: serde_json::from_str(&u.data).ok()?,
        tx: u.position.tx,
        seq: u.position.seq,
    })
}

impl From<Wire<'_>> for StreamUpdate {
    fn from(w: Wire<'_>) -> Self {
        StreamUpdate::new(
            w.id,
            w.topic,
            w.kind,
            Arc::from(w.data.get()),
            Position::new(w.tx, w.seq),
        )
    }
}

/// How often each instance sends itself a probe through Redis.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A path through Redis whose probes have not come back for this long is
/// broken: the clients reconnect (at most this often).
const PROBE_DEADLINE: Duration = Duration::from_secs(2);

pub struct Fanout {
    publisher: Client,
    subscriber: fred::clients::SubscriberClient,
    outbox: mpsc::Sender<Vec<Arc<StreamUpdate>>>,
    probe: Arc<Probe>,
}

/// This instance's probes: a channel of its own, and when one last came back.
struct Probe {
    channel: String,
    epoch: Instant,
    /// Set once the subscriber has subscribed for the first time.
    subscribed: AtomicBool,
    /// Milliseconds after `epoch` that a probe last came back (or the
    /// first subscription, before any probe has).
    heard_ms: AtomicU64,
}

impl Probe {
    fn new(channel: &str) -> Self {
        Self {
            channel: format!("{channel}:probe:{}", uuid::Uuid::new_v4().simple()),
            epoch: Instant::now(),
            subscribed: AtomicBool::new(false),
            heard_ms: AtomicU64::new(0),
        }
    }

    fn heard(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heard_ms.store(ms, Ordering::Relaxed);
    }

    fn subscribed(&self) {
        self.heard();
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// Subscribed, and a probe came back (or the subscription began) within
    /// the deadline.
    fn fresh(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.subscribed.load(Ordering::Relaxed)
            && now.saturating_sub(self.heard_ms.load(Ordering::Relaxed))
                <= PROBE_DEADLINE.as_millis() as u64
    }
}

/// A fred client builder for `url` with the policies every Redis client of
/// tidings needs: reconnect forever (fred's default is never), and bounded
/// waits on a node that hangs.
pub fn redis_builder(url: &str) -> anyhow::Result<Builder> {
    let config = Config::from_url(url)
        .map_err(|e| anyhow::anyhow!("REDIS_URL `{url}` is not a Redis URL: {e}"))?;
    let mut builder = Builder::from_config(config);
    // Without a policy fred never reconnects.
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            // CLUSTER SLOTS and the handshake, sent to a node that may hang.
            c.internal_command_timeout = Duration::from_secs(2);
            // A command unanswered this long closes its connection (a
            // hung node): fred reconnects and re-reads the cluster.
            c.unresponsive.max_timeout = Some(Duration::from_secs(2));
            c.unresponsive.interval = Duration::from_millis(500);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(2);
            // fred's own buffer for received messages (default 32).
            p.broadcast_channel_capacity = 4096;
        });
    Ok(builder)
}

impl Fanout {
    /// Connects (in the background: a Redis that is down at start only
    /// degrades the service) and starts publishing and subscribing on `channel`.
    pub fn start(
        url: &str,
        channel: String,
        feed: Feed,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let builder = redis_builder(url)?;
        let publisher = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        publisher.connect();
        subscriber.connect();
        let (outbox, pending) = mpsc::channel(1024);
        let probe = Arc::new(Probe::new(&channel));
        let fanout = Arc::new(Self {
            publisher: publisher.clone(),
            subscriber: subscriber.clone(),
            outbox,
            probe: probe.clone(),
        });
        tokio::spawn(publish(publisher.clone(), channel.clone(), pending));
        tokio::spawn(subscribe(
            subscriber.clone(),
            channel,
            probe.clone(),
            feed,
            shutdown.clone(),
        ));
        tokio::spawn(watch_path(publisher, subscriber, probe, shutdown));
        Ok(fanout)
    }

    /// Queues updates for Redis without waiting; dropped when Redis lags
    /// (other instances read them from the log).
    pub fn publish(&self, updates: Vec<Arc<StreamUpdate>>) {
        if self.outbox.try_send(updates).is_err() {
            // Logged once per outage by the publishing task.
            tracing::debug!(
                "Redis publishing is behind; other instances read these updates from the log"
            );
        }
    }

    /// Waits up to `limit` for the path through Redis; whether it came up.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let up = async {
            while !self.is_up() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(limit, up).await.is_ok()
    }

    /// Both connections are up and this instance's probes come back.
    pub fn is_up(&self) -> bool {
        self.publisher.is_connected() && self.subscriber.is_connected() && self.probe.fresh()
    }
}

async fn publish(
    client: Client,
    channel: String,
    mut pending: mpsc::Receiver<Vec<Arc<StreamUpdate>>>,
) {
    // An outage is logged when it starts and when it ends, not per page.
    let mut failing = false;
    while let Some(updates) = pending.recv().await {
        let wire: Vec<Wire> = updates.iter().filter_map(|u| to_wire(u)).collect();
        let payload = match serde_json::to_string(&wire) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot encode updates for Redis");
                continue;
            }
        };
        match client.publish::<i64, _, _>(channel.as_str(), payload).await {
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "publishing updates to Redis fails; other instances read them from the log until it recovers");
            }
            Err(_) => {}
            Ok(_) if failing => {
                failing = false;
                info!("publishing updates to Redis works again");
            }
            Ok(_) => {}
        }
    }
}

async fn subscribe(
    client: fred::clients::SubscriberClient,
    channel: String,
    probe: Arc<Probe>,
    feed: Feed,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut messages = client.message_rx();
    // Subscribe once connected; fred re-subscribes after each reconnect.
    let _resubscriber = client.manage_subscriptions();
    let channels = vec![channel.clone(), probe.channel.clone()];
    loop {
        tokio::select! {
            connected = client.wait_for_connect() => {
                if connected.is_ok() && client.subscribe(channels.clone()).await.is_ok() {
                    info!(%channel, "subscribed to Redis for stream updates");
                    probe.subscribed();
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ = shutdown.changed() => return,
        }
    }
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) if *message.channel == *probe.channel => probe.heard(),
                Ok(message) => {
                    let Some(text) = message.value.as_string() else { continue };
                    match serde_json::from_str::<Vec<Wire>>(&text) {
                        Ok(wire) => feed.offer(wire.into_iter().map(|w| Arc::new(StreamUpdate::from(w))).collect()),
                        Err(e) => warn!(error = %e, "ignoring a malformed stream message from Redis"),
                    }
                }
                // fred's buffer overflowed: the feed reads the skipped updates from the log.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(skipped = n, "Redis messages lagged; reading missed updates from the log");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.changed() => {
                let _ = client.quit().await;
                return;
            }
        }
    }
}

/// Sends a probe through Redis every [`PROBE_EVERY`] and reconnects a
/// client that fred believes connected while the path through it is not:
/// the publisher when probes cannot be sent, the subscriber when sent
/// probes do not come back.
async fn watch_path(
    publisher: Client,
    subscriber: fred::clients::SubscriberClient,
    probe: Arc<Probe>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_at = Instant::now();
    let mut publisher_reconnected = Instant::now();
    let mut subscriber_reconnected = Instant::now();
    let mut broken = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !probe.subscribed.load(Ordering::Relaxed) {
            // The subscriber task is still waiting for its first subscription.
            sent_at = Instant::now();
            continue;
        }
        let sent = tokio::time::timeout(
            PROBE_EVERY,
            publisher.publish::<i64, _, _>(probe.channel.as_str(), "probe"),
        )
        .await;
        let now = Instant::now();
        if matches!(sent, Ok(Ok(_))) {
            sent_at = now;
        }
        let sending = now - sent_at < PROBE_DEADLINE;
        let hearing = probe.fresh();
        if sending && hearing {
            if broken {
                broken = false;
                info!("stream updates travel through Redis again");
            }
            continue;
        }
        if !broken {
            broken = true;
            warn!(
                sending,
                hearing,
                "stream updates no longer make it through Redis; reconnecting (other instances' \
                 updates come from the update log meanwhile)"
            );
        }
        // A client fred knows to be down is already reconnecting.
        if !sending && publisher.is_connected() && now - publisher_reconnected >= PROBE_DEADLINE {
            publisher_reconnected = now;
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(PROBE_DEADLINE, publisher.force_reconnection()).await;
            });
        }
        if sending
            && !hearing
            && subscriber.is_connected()
            && now - subscriber_reconnected >= PROBE_DEADLINE
        {
            subscriber_reconnected = now;
            let subscriber = subscriber.clone();
            tokio::spawn(async move {
                // Reconnecting re-reads the cluster's slots; fred then
                // resubscribes, and so do we, in case its event was missed.
                let again = async {
                    subscriber.force_reconnection().await?;
                    subscriber.resubscribe_all().await
                };
                if let Ok(Err(e)) = tokio::time::timeout(PROBE_DEADLINE * 2, again).await {
                    tracing::debug!(error = %e, "resubscribing to Redis failed; trying again");
                }
            });
        }
    }
}
