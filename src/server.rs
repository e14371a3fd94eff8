//! The HTTP server: hyper connections with the timeouts a public listener
//! needs, serving the poem route tree.
//!
//! poem's own server has an idle timeout measured on socket activity (a
//! client that trickles a header byte at a time never trips it) and no
//! header-read timeout, so one slow client per connection slot could hold
//! the server. Here every connection gets:
//! - a **header-read timeout** (hyper's, with a timer): a request's head
//!   must arrive within it, however slowly the bytes come;
//! - an **idle timeout** measured on requests, not bytes: a keep-alive
//!   connection with no request in flight for that long is closed;
//! - a graceful end at shutdown: no new connections, each connection
//!   finishes what it is answering, and whatever is still open when the
//!   shutdown timeout ends is dropped.
//!
//! The per-request timeout and the cap on requests in flight are the
//! route tree's (`api::limits`), so their answers are problem+json.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// How long connections may take, and stay.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read: Duration,
    pub idle: Duration,
    /// How long shutdown waits for open connections to finish.
    pub shutdown: Duration,
}

/// Serves `endpoint` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    endpoint: BoxEndpoint<'static, Response>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let endpoint = Arc::new(endpoint);
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        local,
                        peer,
                        endpoint.clone(),
                        limits,
                        stopping.clone(),
                    ));
                }
                // Out of file descriptors, say: the listener stays, and
                // accepting resumes once connections have closed.
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(limits.shutdown, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "connections still open after the shutdown timeout are dropped"
        );
    }
    Ok(())
}

/// Requests in flight on one connection, when the last one ended, and
/// whether the head of the next one is arriving.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when a request last ended.
    last_ended_ms: AtomicU64,
    /// One more than the milliseconds after `opened` when bytes of a new
    /// request head began to arrive; 0: none is arriving.
    head_started_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ended_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// Bytes came in: with no request in flight, they start a new head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let now = self.now_ms() + 1;
            let _ =
                self.head_started_ms
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// How long the head now arriving has taken so far.
    fn head_for(&self) -> Option<Duration> {
        match self.head_started_ms.load(Ordering::Acquire) {
            0 => None,
            started => Some(Duration::from_millis(
                (self.now_ms() + 1).saturating_sub(started),
            )),
        }
    }

    /// How long the connection has had no request in flight or arriving.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.head_for().is_some() {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.last_ended_ms.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(since)
    }
}

struct InFlight(Arc<Activity>);

/// The socket, telling `Activity` when bytes arrive.
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        self.0.last_ended_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    endpoint: Arc<BoxEndpoint<'static, Response>>,
    limits: ConnectionLimits,
    stopping: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |req: hyper::Request<Incoming>| {
            let endpoint = endpoint.clone();
            let busy = activity.begin();
            async move {
                let req = poem::Request::from((
                    req,
                    LocalAddr(Addr::SocketAddr(local)),
                    RemoteAddr(Addr::SocketAddr(peer)),
                    Scheme::HTTP,
                ));
                let resp = endpoint.get_response(req).await;
                drop(busy);
                Ok::<_, Infallible>(hyper::Response::<Body>::from(resp))
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let every = (limits.idle.min(limits.header_read) / 4).max(Duration::from_millis(25));
    let mut check = tokio::time::interval(every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopping.cancelled() => break "the server is shutting down",
            _ = check.tick() => {
                if activity.head_for().is_some_and(|t| t >= limits.header_read) {
                    debug!(%peer, "dropping a connection whose request head did not arrive in time");
                    return;
                }
                if activity.idle_for() >= limits.idle {
                    break "idle";
                }
            }
        }
    };
    debug!(%peer, why, "closing connection");
    conn.as_mut().graceful_shutdown();
    // What it is answering may finish; a connection that still sends nothing
    // useful is dropped after the header-read timeout.
    let grace = if why == "idle" {
        limits.header_read
    } else {
        limits.shutdown
    };
    if tokio::time::timeout(grace, conn).await.is_err() {
        info!(%peer, why, "dropping a connection that did not close in time");
    }
}
