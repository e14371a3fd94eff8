//! Digest flushes under a burst: BENCH_BATCHES (default 10,000) batches,
//! one per recipient, all closing at the same minute (a daily schedule at
//! the next whole minute at least BENCH_LEAD_SECONDS ahead), then how late
//! each flushed and each digest was created, on memory and on PostgreSQL
//! (when DATABASE_URL is set; a fresh database per run).
//!
//! Lateness is read from the log: each `BatchFlushed` event's `flushed_at`
//! and each digest's `created_at` against the scheduled minute. The app
//! runs in-process on port 0; the report is JSON on stdout.
//!
//! `cargo bench --bench digests` — knobs: BENCH_BATCHES, BENCH_ITEMS (items
//! per batch, default 1), BENCH_LEAD_SECONDS (default 30), BENCH_BACKENDS
//! (default "memory,postgres").

use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tidings::config::Settings;
use tidings::domain::batch::BatchEvent;
use tidings::domain::NotificationEvent;
use tidings::storage::Position;
use tidings::Application;

#[path = "common/db.rs"]
mod db;
#[path = "common/http.rs"]
mod http;
#[path = "common/knobs.rs"]
mod knobs;
use db::{database_for, release};
use http::Writer;
use knobs::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `batches` × `items` creates, one batch per recipient, over `clients`.
async fn create_all(addr: std::net::SocketAddr, batches: usize, items: usize, clients: usize) {
    let count = batches * items;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(async move {
                let mut writer = Writer::connect(addr).await;
                for i in (c..count).step_by(clients) {
                    let body = json!({
                        "recipient": format!("user-{}", i % batches),
                        "category": "comments",
                        "title": "New reply",
                        "body": "Bob replied to your post",
                        "data": {"actor": format!("actor-{}", i % 7)},
                    })
                    .to_string();
                    let (status, body) = writer.create(body).await.expect("the create answers");
                    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
}

/// What the log says so far: flush lateness and digest lateness (ms)
/// against `due`.
async fn lateness(
    state: &tidings::AppState,
    due: DateTime<Utc>,
) -> (Histogram<u64>, Histogram<u64>) {
    let new = || Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds");
    let (mut flushes, mut digests) = (new(), new());
    let mut after = Position::START;
    let ms = |t: DateTime<Utc>| ((t - due).num_milliseconds().max(0) as u64).max(1);
    loop {
        let page = state
            .log
            .read_after(after, 5_000)
            .await
            .expect("the log reads");
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            match event.event_type.as_str() {
                "BatchFlushed" => {
                    if let Ok(BatchEvent::BatchFlushed { flushed_at, .. }) = event.decode() {
                        flushes.saturating_record(ms(flushed_at));
                    }
                }
                "NotificationCreated" => {
                    if let Ok(NotificationEvent::NotificationCreated {
                        data, created_at, ..
                    }) = event.decode()
                    {
                        if data.contains_key("digest") {
                            digests.saturating_record(ms(created_at));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    (flushes, digests)
}

async fn run(
    backend: &str,
    batches: usize,
    items: usize,
    lead: Duration,
    url: Option<String>,
) -> Value {
    let settings = Settings::for_tests(url);
    let app = Application::build(settings).await.expect("the app builds");
    let addr = app.addr();
    let state = app.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    // The next whole minute at least `lead` ahead.
    let earliest = Utc::now() + chrono::Duration::from_std(lead).expect("a short lead");
    let due = (earliest + chrono::Duration::minutes(1))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a whole minute");
    let policy = json!({
        "schedule": {"every": "day", "at": due.format("%H:%M").to_string()},
        "max_items": 1000,
    });
    let mut admin = Writer::connect(addr).await;
    let (status, body) = admin
        .request(
            "PUT",
            "/v1/categories/comments/batching",
            Some(policy.to_string()),
        )
        .await
        .expect("the policy is set");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let started = Instant::now();
    create_all(addr, batches, items, 32).await;
    let create_seconds = started.elapsed().as_secs_f64();
    assert!(
        Utc::now() < due,
        "creating took {create_seconds:.1} s, past the flush minute: raise BENCH_LEAD_SECONDS"
    );
    let deadline =
        Instant::now() + (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(300);
    let (flushes, digests) = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if Utc::now() < due {
            continue;
        }
        let (f, d) = lateness(&state, due).await;
        if d.len() >= batches as u64 {
            break (f, d);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {batches} digests within 5 minutes",
            d.len()
        );
    };
    let _ = stop.send(());
    let _ = server.await;
    let q = |h: &Histogram<u64>| json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "max": h.max()});
    json!({
        "backend": backend,
        "batches_closing_at_once": batches,
        "items_per_batch": items,
        "create_seconds": (create_seconds * 10.0).round() / 10.0,
        "flushed": flushes.len(),
        "digests": digests.len(),
        "flush_lateness_ms": q(&flushes),
        "digest_lateness_ms": q(&digests),
    })
}

fn main() {
    let batches: usize = env_or("BENCH_BATCHES", 10_000);
    let items: usize = env_or("BENCH_ITEMS", 1);
    let lead = Duration::from_secs(env_or("BENCH_LEAD_SECONDS", 30));
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
            let r = run(backend, batches, items, lead, url).await;
            release(db).await;
            eprintln!("{r}");
            results.push(r);
        }
    });
    print_report("digests", results);
}
