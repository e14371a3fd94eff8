//! Stream fan-out: N concurrent WebSocket subscribers (default 1,000 and
//! 10,000) on the real `tidings` binary, run as a child process so its memory
//! can be read on its own.
//!
//! For each N:
//! 1. connect N subscribers, each to `inbox:user-{i}`, and read the server's
//!    resident memory before and after: KiB per idle connection;
//! 2. find the peak create rate (closed loop, 64 keep-alive clients, 3 s);
//! 3. send creates at half that rate, spread over the subscribers' users, and
//!    measure for each update how long after its create was sent it reached
//!    its subscriber (hdrhistogram), and deliveries per second.
//!
//! The report is JSON on stdout. Knobs: BENCH_SUBSCRIBERS (default
//! "1000,10000"), BENCH_SECONDS (default 5), BENCH_RATE (creates/s; default
//! half the measured peak). The server runs on the memory store: what is
//! measured is the fan-out, not PostgreSQL (benches/creates.rs covers that).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[path = "common/http.rs"]
mod http;
#[path = "common/knobs.rs"]
mod knobs;
use http::Writer;
use knobs::*;
use tokio_tungstenite::tungstenite::Message;

/// 10,000 subscribers need 10,000 sockets here and as many in the server.
fn raise_fd_limit() {
    let want: libc::rlim_t = 65_536;
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want;
            lim.rlim_max = lim.rlim_max.max(want);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!("could not raise the open-file limit; large runs may fail");
            }
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .env("TIDINGS_STREAM_MAX_CONNECTIONS", "50000")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        // Owned by `Server` at once, so that its Drop reaps the child on every path.
        let server = Self {
            child: cmd.spawn().expect("the tidings binary starts"),
            addr: format!("127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&server.addr).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not start listening");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A subscriber's user gets a create that says when it was sent.
async fn create(writer: &mut Writer, recipient: usize, sent_ns: u64) -> bool {
    let body = json!({
        "recipient": format!("user-{recipient}"),
        "category": "bench",
        "title": "Ping",
        "body": "fan-out",
        "data": {"sent_ns": sent_ns},
    })
    .to_string();
    matches!(writer.create(body).await, Some((201, _)))
}

struct Measures {
    start: Instant,
    latency: Vec<Mutex<Histogram<u64>>>,
    deliveries: AtomicU64,
    measuring: std::sync::atomic::AtomicBool,
}

impl Measures {
    fn record(&self, shard: usize, sent_ns: u64) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let now_ns = self.start.elapsed().as_nanos() as u64;
        let us = now_ns.saturating_sub(sent_ns) / 1000;
        if let Ok(mut h) = self.latency[shard % self.latency.len()].lock() {
            let _ = h.record(us.max(1));
        }
    }
}

/// Connects one subscriber to `inbox:user-{i}` and reads until the socket ends.
async fn subscriber(
    addr: String,
    i: usize,
    measures: Arc<Measures>,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    let url = format!("ws://{addr}/v1/stream?topics=inbox:user-{i}");
    let mut ws = loop {
        match tokio_tungstenite::connect_async_with_config(&url, Some(config), false).await {
            Ok((ws, _)) => break ws,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut subscribed = false;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if !subscribed {
            subscribed = true;
            let _ = ready.send(()).await;
            continue;
        }
        if measures.measuring.load(Ordering::Relaxed) {
            measures.deliveries.fetch_add(1, Ordering::Relaxed);
        }
        // Only row updates carry the send time; counts updates do not.
        if text.contains("\"kind\":\"created\"") {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if let Some(sent) = v["data"]["data"]["sent_ns"].as_u64() {
                    measures.record(i, sent);
                }
            }
        }
    }
}

/// The closed-loop create rate with 64 clients over 3 s.
async fn peak_rate(addr: &str, users: usize) -> f64 {
    let until = Instant::now() + Duration::from_secs(3);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let addr = addr.to_owned();
            let done = done.clone();
            tokio::spawn(async move {
                let mut writer = Writer::connect(&addr).await;
                let mut n = w;
                while Instant::now() < until {
                    if create(&mut writer, n % users, u64::MAX).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 64;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn run(n: usize, seconds: u64) -> Value {
    let server = Server::start().await;
    let rss_before = rss_kib(server.pid());
    let measures = Arc::new(Measures {
        start: Instant::now(),
        latency: (0..16)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")))
            .collect(),
        deliveries: AtomicU64::new(0),
        measuring: std::sync::atomic::AtomicBool::new(false),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let connecting = Instant::now();
    let mut subscribers = Vec::with_capacity(n);
    for i in 0..n {
        subscribers.push(tokio::spawn(subscriber(
            server.addr.clone(),
            i,
            measures.clone(),
            ready_tx.clone(),
        )));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    drop(ready_tx);
    let mut connected = 0;
    while connected < n {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => connected += 1,
            _ => break,
        }
    }
    let connect_seconds = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(server.pid());
    let per_connection_kib = rss_idle.saturating_sub(rss_before) as f64 / connected.max(1) as f64;

    let peak = peak_rate(&server.addr, n.max(1)).await;
    let rate: f64 = env_or("BENCH_RATE", peak / 2.0);

    // Paced writers: each sends its share of `rate` on a fixed schedule.
    let writers = 32usize;
    let per_writer = rate / writers as f64;
    let interval = Duration::from_secs_f64(1.0 / per_writer.max(0.001));
    let sent = Arc::new(AtomicU64::new(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    measures.measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    let until = window + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let addr = server.addr.clone();
            let sent = sent.clone();
            let measures = measures.clone();
            tokio::spawn(async move {
                let mut writer = Writer::connect(&addr).await;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut k = w;
                while Instant::now() < until {
                    tick.tick().await;
                    let sent_ns = measures.start.elapsed().as_nanos() as u64;
                    if create(&mut writer, k % n.max(1), sent_ns).await {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    k += writers;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = window.elapsed().as_secs_f64();
    // Let the last updates arrive, then stop counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    measures.measuring.store(false, Ordering::Relaxed);
    let deliveries = measures.deliveries.load(Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for shard in &measures.latency {
        if let Ok(h) = shard.lock() {
            all.add(&*h).expect("same bounds");
        }
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    for s in subscribers {
        s.abort();
    }
    json!({
        "backend": "memory",
        "subscribers": n,
        "connected": connected,
        "connect_seconds": (connect_seconds * 10.0).round() / 10.0,
        "server_rss_kib": {"before": rss_before, "idle_with_subscribers": rss_idle},
        "kib_per_idle_connection": (per_connection_kib * 10.0).round() / 10.0,
        "peak_creates_per_second": peak.round(),
        "target_creates_per_second": rate.round(),
        "achieved_creates_per_second": (sent.load(Ordering::Relaxed) as f64 / elapsed).round(),
        "deliveries_per_second": (deliveries as f64 / elapsed).round(),
        "updates_measured": all.len(),
        "send_to_receive_latency_ms": {
            "p50": ms(0.5),
            "p99": ms(0.99),
            "p99_9": ms(0.999),
            "max": all.max() as f64 / 1000.0,
        },
    })
}

fn main() {
    raise_fd_limit();
    let counts: Vec<usize> = std::env::var("BENCH_SUBSCRIBERS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results: Vec<Value> = runtime.block_on(async {
        let mut results = Vec::new();
        for &n in &counts {
            let r = run(n, seconds).await;
            eprintln!("{r}");
            results.push(r);
        }
        results
    });
    print_report("streams", results);
}
