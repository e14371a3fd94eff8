//! Scheduled delivery under a burst: BENCH_DUE (default 10,000) notifications
//! created for the same instant, then how late each was delivered, on memory
//! and on PostgreSQL (when DATABASE_URL is set; a fresh database per run).
//!
//! Lateness is read from the log: each NotificationDelivered event's
//! `delivered_at` against the `deliver_at` every notification was created
//! with. The app runs in-process on port 0; the report is JSON on stdout.
//!
//! `cargo bench --bench timers` — knobs: BENCH_DUE, BENCH_LEAD_SECONDS (how
//! far ahead the instant is, default 15: creating them all must fit in it),
//! BENCH_BACKENDS (default "memory,postgres").

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tidings::config::Settings;
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

/// Creates `count` notifications due at `due` over `clients` connections.
async fn create_all(addr: std::net::SocketAddr, count: usize, clients: usize, due: DateTime<Utc>) {
    let at = due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let at = at.clone();
            tokio::spawn(async move {
                let mut writer = Writer::connect(addr).await;
                for i in (c..count).step_by(clients) {
                    let body = json!({
                        "recipient": format!("user-{}", i % 1000),
                        "category": "reminder",
                        "title": "It is time",
                        "body": "The thing you asked to be reminded of",
                        "priority": if i % 10 == 0 { "urgent" } else { "normal" },
                        "deliver_at": at,
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

/// Each delivery's lateness (ms) against `due`, read from the whole log.
async fn delivered_lateness(state: &tidings::AppState, due: DateTime<Utc>) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds");
    let mut after = Position::START;
    loop {
        let page = state
            .log
            .read_after(after, 5_000)
            .await
            .expect("the log reads");
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            if let Ok(NotificationEvent::NotificationDelivered { delivered_at, .. }) =
                event.decode::<NotificationEvent>()
            {
                let ms = (delivered_at - due).num_milliseconds().max(0) as u64;
                h.record(ms.max(1)).expect("in bounds");
            }
        }
    }
    h
}

async fn run(backend: &str, count: usize, lead: Duration, database_url: Option<String>) -> Value {
    let settings = Settings::for_tests(database_url);
    let app = Application::build(settings).await.expect("the app builds");
    let addr = app.addr();
    let state = app.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let due = Utc::now() + chrono::Duration::from_std(lead).expect("a short lead");
    let started = Instant::now();
    create_all(addr, count, 32, due).await;
    let create_seconds = started.elapsed().as_secs_f64();
    assert!(
        Utc::now() < due,
        "creating {count} took {create_seconds:.1} s, past the due time: raise BENCH_LEAD_SECONDS"
    );
    // Wait for every delivery: the timers' own count, then the log.
    let deadline = Instant::now() + lead + Duration::from_secs(300);
    while state.timers.report().fired < count as u64 {
        assert!(Instant::now() < deadline, "not all fired within 5 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_fired_after_ms = (Utc::now() - due).num_milliseconds();
    let lateness = delivered_lateness(&state, due).await;
    let timers = state.timers.report();
    let _ = stop.send(());
    let _ = server.await;
    let q = |q: f64| lateness.value_at_quantile(q);
    json!({
        "backend": backend,
        "due_at_once": count,
        "create_seconds": (create_seconds * 10.0).round() / 10.0,
        "delivered": lateness.len(),
        "all_fired_ms_after_due": all_fired_after_ms,
        "lateness_ms": {"p50": q(0.5), "p99": q(0.99), "max": lateness.max()},
        "timers": {
            "fired": timers.fired,
            "late_over_1s": timers.late,
            "fire_lateness_ms": {
                "p50": timers.lateness_p50_ms,
                "p99": timers.lateness_p99_ms,
                "max": timers.lateness_max_ms,
            },
        },
    })
}

fn main() {
    let count: usize = env_or("BENCH_DUE", 10_000);
    let lead = Duration::from_secs(env_or("BENCH_LEAD_SECONDS", 15));
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
            let r = run(backend, count, lead, url).await;
            release(db).await;
            eprintln!("{r}");
            results.push(r);
        }
    });
    print_report("timers", results);
}
