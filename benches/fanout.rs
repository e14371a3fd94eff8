//! A send to a topic of BENCH_SUBSCRIBERS (default 100,000) subscribers,
//! against the `tidings` binary as a child process: the fan-out rate
//! (notifications/s, from the send's own requested and done times) and the
//! service's resident memory (VmRSS, sampled every 50 ms) before, at its
//! peak during, and after the fan-out. On PostgreSQL it then sends to the
//! topic again, kills the service with SIGKILL mid-fan-out, starts it again
//! and counts the send's notifications in the database: exactly one per
//! subscriber.
//!
//! `cargo bench --bench fanout` — knobs: BENCH_SUBSCRIBERS, BENCH_BACKENDS
//! (default "memory,postgres"; PostgreSQL needs DATABASE_URL), BENCH_KILL_AFTER_PAGES
//! (default 40: how many pages of 500 the killed run records first).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "common/db.rs"]
mod db;
#[path = "common/http.rs"]
mod http;
#[path = "common/knobs.rs"]
mod knobs;
use db::{admin, database_for, release};
use http::Writer;
use knobs::*;

/// The service, as a process of its own.
struct Service {
    child: Child,
    addr: std::net::SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

impl Service {
    async fn start(database_url: Option<&str>, port: u16) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
        command
            .env_clear()
            .env("TIDINGS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(url) = database_url {
            command.env("DATABASE_URL", url);
        }
        let child = command.spawn().expect("the tidings binary starts");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
                drop(stream);
                let mut w = Writer::connect(addr).await;
                if let Some((200, _)) = w.request("GET", "/health/ready", None).await {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the service did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, addr }
    }

    /// Resident memory, MiB.
    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
    }

    /// SIGKILL: nothing flushed, nothing drained.
    fn kill(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        // SIGTERM: a graceful stop.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

async fn json(w: &mut Writer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, bytes) = w
        .request(method, path, body.map(|b| b.to_string()))
        .await
        .expect("the service answers");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn subscribe(addr: std::net::SocketAddr, topic: &str, count: usize) {
    let clients = 32;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let topic = topic.to_owned();
            tokio::spawn(async move {
                let mut w = Writer::connect(addr).await;
                for i in (c..count).step_by(clients) {
                    let path = format!("/v1/topics/{topic}/subscribers/reader-{i:07}");
                    let (status, _) = w.request("PUT", &path, None).await.expect("answers");
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a subscriber task");
    }
}

async fn send_to(addr: std::net::SocketAddr, topic: &str) -> (String, String) {
    let mut w = Writer::connect(addr).await;
    let (status, answer) = json(
        &mut w,
        "POST",
        "/v1/notifications",
        Some(
            json!({"topic": topic, "category": "digest", "title": "This week",
                    "body": "What happened"}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    (
        answer["send_id"].as_str().unwrap().to_owned(),
        answer["cursor"].as_str().unwrap().to_owned(),
    )
}

/// Polls the send until `until` holds of it, sampling RSS; the send and
/// the peak RSS seen.
async fn follow(service: &Service, id: &str, until: impl Fn(&Value) -> bool) -> (Value, f64) {
    let mut w = Writer::connect(service.addr).await;
    let mut peak: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    loop {
        peak = peak.max(service.rss_mb());
        if last_poll.elapsed() >= Duration::from_millis(100) {
            last_poll = Instant::now();
            let (status, send) = json(&mut w, "GET", &format!("/v1/sends/{id}"), None).await;
            if status == 200 && until(&send) {
                return (send, peak);
            }
        }
        assert!(Instant::now() < deadline, "the send did not get there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn seconds_between(send: &Value) -> f64 {
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(send[k].as_str().expect("a time")).expect("RFC 3339")
    };
    (at("done_at") - at("requested_at")).num_milliseconds() as f64 / 1000.0
}

async fn run(backend: &str, subscribers: usize, kill_after: u64, db: Option<&str>) -> Value {
    let port = free_port();
    let service = Service::start(db, port).await;
    let started = Instant::now();
    subscribe(service.addr, "weekly", subscribers).await;
    let subscribe_seconds = started.elapsed().as_secs_f64();
    let before = service.rss_mb();
    let (id, _) = send_to(service.addr, "weekly").await;
    let (send, peak) = follow(&service, &id, |s| s["status"] == "done").await;
    let after = service.rss_mb();
    let seconds = seconds_between(&send);
    assert_eq!(send["created"].as_u64(), Some(subscribers as u64), "{send}");
    let mut report = json!({
        "backend": backend,
        "subscribers": subscribers,
        "subscribe_seconds": (subscribe_seconds * 10.0).round() / 10.0,
        "fan_out_seconds": seconds,
        "notifications_per_second": (subscribers as f64 / seconds.max(0.001)).round(),
        "pages": send["pages"],
        "rss_mb": {"before": before, "peak": peak, "after": after},
    });
    let Some(url) = db else {
        service.stop();
        return report;
    };
    // Again, killed mid-way.
    let (id, _) = send_to(service.addr, "weekly").await;
    let (at_kill, _) = follow(&service, &id, |s| {
        s["pages"].as_u64().unwrap_or(0) >= kill_after || s["status"] == "done"
    })
    .await;
    assert_eq!(
        at_kill["status"], "fanning_out",
        "killed before the end: {at_kill}"
    );
    service.kill();
    let restarted = Service::start(Some(url), port).await;
    let (send, _) = follow(&restarted, &id, |s| s["status"] == "done").await;
    restarted.stop();
    let row = admin(url)
        .await
        .query_one(
            "SELECT count(*) AS n, count(DISTINCT payload->'NotificationCreated'->>'recipient') AS distinct_recipients \
             FROM events WHERE aggregate_type = 'Notification' AND event_type = 'NotificationCreated' \
               AND metadata->>'causation_id' = $1",
            &[&format!("send:{id}")],
        )
        .await
        .expect("the count reads");
    let n: i64 = row.get("n");
    let distinct: i64 = row.get("distinct_recipients");
    assert_eq!(
        (n, distinct),
        (subscribers as i64, subscribers as i64),
        "exactly one each"
    );
    report["killed_mid_fan_out"] = json!({
        "pages_recorded_at_kill": at_kill["pages"],
        "created_at_kill": at_kill["created"],
        "notifications_after_restart": n,
        "distinct_recipients": distinct,
        "send_after_restart": {"created": send["created"], "total": send["total"], "pages": send["pages"]},
    });
    report
}

fn main() {
    let subscribers: usize = env_or("BENCH_SUBSCRIBERS", 100_000);
    let kill_after: u64 = env_or("BENCH_KILL_AFTER_PAGES", 40);
    let backends = list("BENCH_BACKENDS", "memory,postgres");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut results = Vec::new();
    runtime.block_on(async {
        for backend in &backends {
            let Some(db) = database_for(backend).await else {
                continue;
            };
            let url = db.as_ref().map(|(_, url)| url.clone());
            let r = run(backend, subscribers, kill_after, url.as_deref()).await;
            release(db).await;
            eprintln!("{r}");
            results.push(r);
        }
    });
    print_report("fanout", results);
}
