//! Redis pub/sub between instances (fred): the projector's instance publishes
//! each page of numbered updates; every instance's subscriber offers them to
//! its feed.
//!
//! Redis is a fast path, not the record: the update log in PostgreSQL is.
//! Redis down means degraded, never down: publishing drops what it cannot
//! send, the clients reconnect with backoff, and each feed reads what it
//! missed from the log.

use std::sync::Arc;
use std::time::Duration;

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

pub struct Fanout {
    publisher: Client,
    subscriber: fred::clients::SubscriberClient,
    outbox: mpsc::Sender<Vec<Arc<StreamUpdate>>>,
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
        let config = Config::from_url(url)
            .map_err(|e| anyhow::anyhow!("REDIS_URL `{url}` is not a Redis URL: {e}"))?;
        let mut builder = Builder::from_config(config);
        // Without a policy fred never reconnects.
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(2);
                // fred's own buffer for received messages (default 32).
                p.broadcast_channel_capacity = 4096;
            });
        let publisher = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        publisher.connect();
        subscriber.connect();
        let (outbox, pending) = mpsc::channel(1024);
        let fanout = Arc::new(Self {
            publisher: publisher.clone(),
            subscriber: subscriber.clone(),
            outbox,
        });
        tokio::spawn(publish(publisher, channel.clone(), pending));
        tokio::spawn(subscribe(subscriber, channel, feed, shutdown));
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

    /// Waits up to `limit` for both connections; whether they came up.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let both = async {
            let _ = self.publisher.wait_for_connect().await;
            let _ = self.subscriber.wait_for_connect().await;
        };
        let _ = tokio::time::timeout(limit, both).await;
        self.is_up()
    }

    /// Both connections are up.
    pub fn is_up(&self) -> bool {
        self.publisher.is_connected() && self.subscriber.is_connected()
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
    feed: Feed,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut messages = client.message_rx();
    // Subscribe once connected; fred re-subscribes after each reconnect.
    let _resubscriber = client.manage_subscriptions();
    loop {
        tokio::select! {
            connected = client.wait_for_connect() => {
                if connected.is_ok() && client.subscribe(channel.as_str()).await.is_ok() {
                    info!(%channel, "subscribed to Redis for stream updates");
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
