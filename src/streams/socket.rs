//! One WebSocket subscriber: subscribe (query string or message), replay from
//! a cursor, then live updates; heartbeats; resync when it cannot keep up.
//!
//! Client messages: `{"type":"subscribe","topics":[...],"cursor":"..."}`,
//! `{"type":"unsubscribe","topics":[...]}`, `{"type":"auth","token":"..."}`.
//! Server messages: `subscribed`, `unsubscribed`, `authenticated`, `update`,
//! `resync`, `error` (see openapi/stream-messages.schema.json).
//!
//! Credentials: a connection either arrives with one (the upgrade's
//! `Authorization` header) or sends an `auth` message first, within
//! `auth_wait` (10 s); until then nothing is subscribed. A credential that expires
//! (a user token's `exp`) is warned of with an `error` of reason
//! `token_expired`; an `auth` message with a fresh token for the same
//! principal within `expiry_grace` (30 s) carries on, otherwise the connection
//! closes with `CLOSE_UNAUTHORIZED` (reconnect with the last cursor: nothing
//! is lost).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocketStream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tracing::debug;

use super::credential::{StreamAccess, RECHECK};

mod auth;
use super::router::{Router, Subscription};
use super::updates::{cursor_string, parse_cursor, StreamUpdate, Topic, UpdateLog};
use crate::storage::error_chain;

/// Most topics one connection may hold.
pub const MAX_TOPICS: usize = 100;
/// Updates written before one flush.
const BATCH: usize = 256;
/// Close code for "slow consumer: resync" (application range).
pub const CLOSE_SLOW: u16 = 4000;
/// Close code for "too many connections: retry later" (RFC 6455 1013).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Close code for "no valid credential" (no `auth` in time, a bad token,
/// an expired one not refreshed).
pub const CLOSE_UNAUTHORIZED: u16 = 4401;

#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub heartbeat: Duration,
    /// Longest one write to the socket may take; a client that stopped
    /// reading is dropped after it, and what it held is freed.
    pub send_timeout: Duration,
    /// How long a connection without a credential has to send `auth`.
    pub auth_wait: Duration,
    /// How long after its credential expires a connection may refresh it.
    pub expiry_grace: Duration,
}

/// Subscribe and unsubscribe messages a connection may send in a burst,
/// and how many more it earns a second.
const SUBSCRIBE_BURST: f64 = 20.0;
const SUBSCRIBES_PER_SECOND: f64 = 5.0;
/// Refused messages after which a connection is closed as a flood (1008).
const REFUSED_MAX: u32 = 100;

/// Tokens for subscribe messages: one per message, `SUBSCRIBES_PER_SECOND`
/// earned back a second up to `SUBSCRIBE_BURST`. One connection's own
/// state, so a plain count and a time is all it takes.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new() -> Self {
        Self {
            tokens: SUBSCRIBE_BURST,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * SUBSCRIBES_PER_SECOND;
        self.tokens = (self.tokens + earned).min(SUBSCRIBE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        topics: Vec<String>,
        #[serde(default)]
        cursor: Option<String>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Auth {
        token: String,
    },
}

/// Validates topic names; the problem in words otherwise. Linear, and a
/// list longer than a connection may hold is refused before any is parsed.
pub fn parse_topics<'a>(
    names: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<String>, String> {
    if names.len() > MAX_TOPICS {
        return Err(format!(
            "{} topics given; at most {MAX_TOPICS} per connection",
            names.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut topics = Vec::new();
    for name in names {
        let topic = Topic::parse(name.trim())?.to_string();
        if seen.insert(topic.clone()) {
            topics.push(topic);
        }
    }
    Ok(topics)
}

/// The longest `topics` query string accepted: MAX_TOPICS of the longest
/// topic (`inbox:` and a 128-byte user), with commas.
pub const MAX_TOPICS_QUERY: usize = MAX_TOPICS * 136;

/// Why a subscriber must start over from a fresh cursor.
enum Resync {
    TooOld,
    /// A cursor of the event log, given where a stream cursor belongs.
    LogCursor,
    Unknown,
}

struct Connection<'a> {
    sink: futures_util::stream::SplitSink<WebSocketStream, Message>,
    send_timeout: Duration,
    subscribes: Bucket,
    refused: u32,
    router: &'a Router,
    log: &'a dyn UpdateLog,
    sub: Subscription,
    /// Per topic, the id of the last update sent (or skipped as already known).
    last_sent: HashMap<String, i64>,
    access: StreamAccess,
    /// Topics and cursor from the query string, held until `auth`.
    held: Option<(Vec<String>, Option<String>)>,
    /// Set once the client has been told its credential expired: when the
    /// connection closes unless a fresh one comes first.
    close_at: Option<tokio::time::Instant>,
    auth_wait: Duration,
    expiry_grace: Duration,
}

/// Why a connection ended.
enum End {
    /// The socket broke (or the peer vanished): nothing more can be sent.
    Closed,
    /// A write did not finish within the send timeout: the client stopped
    /// reading. Nothing more can be sent to it.
    Stalled,
    /// The peer sent a close frame: answer it (the library queued the
    /// echo; flushing sends it), so the peer sees a clean close, not 1006.
    PeerClosed,
    /// We close, with this code and reason.
    Close(u16, String),
}

/// A write to the socket, bounded by `limit`.
async fn bounded<E, F: std::future::Future<Output = Result<(), E>>>(
    limit: Duration,
    write: F,
) -> Result<(), End> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Closed),
        Err(_) => Err(End::Stalled),
    }
}

impl Connection<'_> {
    async fn send_json(&mut self, value: serde_json::Value) -> Result<(), End> {
        bounded(
            self.send_timeout,
            self.sink.send(Message::Text(value.to_string())),
        )
        .await
    }

    async fn error(&mut self, detail: impl Into<String>) -> Result<(), End> {
        self.send_json(json!({"type": "error", "detail": detail.into()}))
            .await
    }

    /// The cursor a client should keep: the newest update it has been given.
    fn cursor(&self) -> i64 {
        self.last_sent.values().copied().max().unwrap_or(0)
    }

    async fn subscribe(&mut self, topics: Vec<String>, cursor: Option<&str>) -> Result<(), End> {
        let Some(credential) = &self.access.credential else {
            return self
                .error("send {\"type\":\"auth\",\"token\":\"...\"} before subscribing")
                .await;
        };
        if let Some(why) = credential.refuses(&topics).await {
            return self
                .send_json(json!({"type": "error", "reason": "forbidden", "topics": topics, "detail": why}))
                .await;
        }
        let total = self.last_sent.len()
            + topics
                .iter()
                .filter(|t| !self.last_sent.contains_key(*t))
                .count();
        if total > MAX_TOPICS {
            return self
                .error(format!("at most {MAX_TOPICS} topics per connection"))
                .await;
        }
        // Live first: from here on every update of these topics is queued.
        let Some(live_from) = self.router.subscribe(self.sub.id, &topics) else {
            return Err(End::Closed);
        };
        let bounds = self.log.bounds().await.map_err(|e| {
            End::Close(
                1011,
                format!("the update log is unavailable: {}", error_chain(&e)),
            )
        })?;
        let resume = match cursor {
            None => None,
            Some(raw) => match parse_cursor(raw) {
                Some(n) if bounds.can_resume(n) => Some(n),
                Some(n) if n < bounds.oldest => {
                    return self.resync(&topics, live_from, Resync::TooOld).await;
                }
                _ => {
                    let why = if crate::storage::Position::parse_cursor(raw).is_ok() {
                        Resync::LogCursor
                    } else {
                        Resync::Unknown
                    };
                    return self.resync(&topics, live_from, why).await;
                }
            },
        };
        let Some(after) = resume else {
            // A topic already subscribed keeps its place: resetting it could
            // skip updates still waiting in the queue.
            for t in &topics {
                self.last_sent.entry(t.clone()).or_insert(live_from);
            }
            return self
                .send_json(json!({"type": "subscribed", "topics": topics, "cursor": cursor_string(live_from)}))
                .await;
        };
        for t in &topics {
            self.last_sent.insert(t.clone(), after);
        }
        self.send_json(
            json!({"type": "subscribed", "topics": topics, "cursor": cursor_string(after)}),
        )
        .await?;
        let mut from = after;
        loop {
            let page = self.log.read_after(from, &topics, 500).await.map_err(|e| {
                End::Close(
                    1011,
                    format!("the update log is unavailable: {}", error_chain(&e)),
                )
            })?;
            let Some(last) = page.last() else { break };
            from = last.id;
            self.send_updates(&page).await?;
        }
        Ok(())
    }

    async fn resync(&mut self, topics: &[String], fresh: i64, why: Resync) -> Result<(), End> {
        for t in topics {
            self.last_sent.insert(t.clone(), fresh);
        }
        let (reason, detail) = match why {
            Resync::TooOld => (
                "cursor_too_old",
                "updates after your cursor are no longer kept: fetch the current state over REST, then continue from this cursor",
            ),
            Resync::LogCursor => (
                "cursor_unknown",
                "that is an event-log cursor (32 hex digits, from a REST answer), not a stream cursor (16 hex digits, the `cursor` of an `update` message): fetch the current state over REST, then continue from this cursor",
            ),
            Resync::Unknown => (
                "cursor_unknown",
                "this stream never issued that cursor (a stream cursor is 16 hex digits, the `cursor` of an `update` message): fetch the current state over REST, then continue from this cursor",
            ),
        };
        self.send_json(json!({
            "type": "resync",
            "reason": reason,
            "topics": topics,
            "cursor": cursor_string(fresh),
            "detail": detail,
        }))
        .await
    }

    /// Feeds the updates not sent yet, then flushes once.
    async fn send_updates(&mut self, updates: &[Arc<StreamUpdate>]) -> Result<(), End> {
        let mut fed = false;
        for u in updates {
            let Some(sent) = self.last_sent.get_mut(&u.topic) else {
                continue; // unsubscribed meanwhile
            };
            if u.id <= *sent {
                continue;
            }
            *sent = u.id;
            bounded(
                self.send_timeout,
                self.sink.feed(Message::Text(u.message().to_owned())),
            )
            .await?;
            fed = true;
        }
        if fed {
            bounded(self.send_timeout, self.sink.flush()).await?;
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        if !self.subscribes.take() {
            self.refused += 1;
            if self.refused > REFUSED_MAX {
                return Err(End::Close(
                    1008,
                    "too many messages; this connection is closed".into(),
                ));
            }
            return self
                .error(format!(
                    "too many messages: at most {SUBSCRIBES_PER_SECOND} a second (bursts of {SUBSCRIBE_BURST}); this one was ignored"
                ))
                .await;
        }
        let message = serde_json::from_str::<ClientMessage>(text);
        // A refresh is never refused for the rate: refusing it would close
        // a connection that did everything right.
        if let (Some(credential), false) = (
            &self.access.credential,
            matches!(message, Ok(ClientMessage::Auth { .. })),
        ) {
            if !credential.admits_message().await {
                return self
                    .error("past this credential's rate limit; this message was ignored")
                    .await;
            }
        }
        match message {
            Ok(ClientMessage::Auth { token }) => self.authenticate(&token).await,
            Ok(ClientMessage::Subscribe { topics, cursor }) => {
                match parse_topics(topics.iter().map(String::as_str)) {
                    Ok(topics) => self.subscribe(topics, cursor.as_deref()).await,
                    Err(e) => self.error(e).await,
                }
            }
            Ok(ClientMessage::Unsubscribe { topics }) => {
                self.router.unsubscribe(self.sub.id, &topics);
                for t in &topics {
                    self.last_sent.remove(t);
                }
                self.send_json(json!({"type": "unsubscribed", "topics": topics}))
                    .await
            }
            Err(e) => {
                self.error(format!(
                    "not a message this stream understands ({e}); send {{\"type\":\"subscribe\",\"topics\":[...]}}, {{\"type\":\"unsubscribe\",\"topics\":[...]}} or {{\"type\":\"auth\",\"token\":\"...\"}}"
                ))
                .await
            }
        }
    }
}

/// Serves one connection until it ends.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    socket: WebSocketStream,
    router: Arc<Router>,
    log: Arc<dyn UpdateLog>,
    settings: StreamSettings,
    topics: Vec<String>,
    cursor: Option<String>,
    access: StreamAccess,
    mut shutdown: watch::Receiver<bool>,
) {
    let (sink, mut source) = socket.split();
    let sub = router.connect();
    let id = sub.id;
    let mut conn = Connection {
        sink,
        send_timeout: settings.send_timeout,
        subscribes: Bucket::new(),
        refused: 0,
        router: &router,
        log: &*log,
        sub,
        last_sent: HashMap::new(),
        held: None,
        access,
        close_at: None,
        auth_wait: settings.auth_wait,
        expiry_grace: settings.expiry_grace,
    };
    let opened = tokio::time::Instant::now();
    let end = async {
        if conn.access.credential.is_none() {
            conn.held = Some((topics, cursor));
        } else if !topics.is_empty() {
            conn.subscribe(topics, cursor.as_deref()).await?;
        }
        let mut heard = Instant::now();
        let mut heartbeat = tokio::time::interval(settings.heartbeat);
        heartbeat.tick().await;
        let mut batch = Vec::with_capacity(BATCH);
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = conn.credential_deadline(opened);
            tokio::select! {
                _ = sleep_until_some(deadline) => conn.credential_due().await?,
                _ = recheck.tick() => {
                    if conn.access.credential.as_ref().is_some_and(|c| !c.holds()) {
                        return Err(End::Close(
                            CLOSE_UNAUTHORIZED,
                            "the credential no longer holds (revoked, or credentials are now enforced)".into(),
                        ));
                    }
                }
                update = conn.sub.updates.recv() => {
                    let Some(first) = update else {
                        if conn.sub.slow.load(Ordering::Acquire) {
                            let cursor = conn.cursor();
                            conn.send_json(json!({
                                "type": "resync",
                                "reason": "slow_consumer",
                                "cursor": cursor_string(cursor),
                                "detail": "updates arrived faster than this connection read them; reconnect with this cursor to resume",
                            })).await?;
                            return Err(End::Close(CLOSE_SLOW, "slow consumer: reconnect with the last cursor".into()));
                        }
                        return Err(End::Close(1001, "server shutting down".into()));
                    };
                    batch.clear();
                    batch.push(first);
                    while batch.len() < BATCH {
                        match conn.sub.updates.try_recv() {
                            Ok(u) => batch.push(u),
                            Err(_) => break,
                        }
                    }
                    let updates = std::mem::take(&mut batch);
                    conn.send_updates(&updates).await?;
                    batch = updates;
                }
                incoming = source.next() => {
                    heard = Instant::now();
                    match incoming {
                        Some(Ok(Message::Text(text))) => conn.on_text(&text).await?,
                        Some(Ok(Message::Close(_))) => return Err(End::PeerClosed),
                        None | Some(Err(_)) => return Err(End::Closed),
                        Some(Ok(_)) => {} // pong, ping (answered by the library), binary
                    }
                }
                _ = heartbeat.tick() => {
                    if heard.elapsed() > settings.heartbeat * 2 {
                        return Err(End::Close(1001, "no pong: the connection seems dead".into()));
                    }
                    bounded(conn.send_timeout, conn.sink.send(Message::Ping(Vec::new()))).await?;
                }
                _ = shutdown.changed() => {
                    return Err(End::Close(1001, "server shutting down".into()));
                }
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), End>(())
    }
    .await;
    router.disconnect(id);
    let limit = conn.send_timeout;
    match end {
        Err(End::Close(code, reason)) => {
            debug!(connection = id, code, %reason, "closing stream");
            let close = Message::Close(Some((CloseCode::from(code), reason)));
            if bounded(limit, conn.sink.send(close)).await.is_ok() {
                let _ = bounded(limit, conn.sink.close()).await;
            }
        }
        Err(End::PeerClosed) => {
            debug!(connection = id, "the client closed the stream");
            let _ = bounded(limit, conn.sink.close()).await;
        }
        Err(End::Stalled) => {
            debug!(
                connection = id,
                "the client stopped reading; dropping the stream"
            );
        }
        Err(End::Closed) | Ok(()) => {}
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Refuses a connection over a limit with a clear close code (1013, try
/// again later) and why.
pub async fn refuse(socket: WebSocketStream, why: String) {
    let (mut sink, _source) = socket.split();
    let limit = Duration::from_secs(5);
    let close = Message::Close(Some((CloseCode::from(CLOSE_TRY_AGAIN_LATER), why)));
    if bounded(limit, sink.send(close)).await.is_ok() {
        let _ = bounded(limit, sink.close()).await;
    }
}
