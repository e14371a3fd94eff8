//! Creates per second through HTTP, at 1, 16 and 64 concurrent clients, on
//! memory and on PostgreSQL (when DATABASE_URL is set; a fresh database per
//! run). The app runs in-process on port 0; each client is one keep-alive
//! HTTP/1.1 connection driven by hyper, sending a create as soon as the
//! previous answer arrived (closed loop). Latencies go into hdrhistogram;
//! the report is JSON on stdout.
//!
//! `cargo bench --bench creates` — knobs: BENCH_SECONDS (default 5),
//! BENCH_CLIENTS (default "1,16,64"), BENCH_BACKENDS (default "memory,postgres"),
//! BENCH_ACCESS (default "open"; a list of `open`: no credentials configured,
//! `key`: a `send` key checked on every create with no rate limit, `limited`:
//! the key under a rate limit too high to refuse anything, so the limiter's
//! own cost shows), BENCH_BATCHED (default 0: the share of creates, 0 to 1,
//! sent to a category with a batching policy: a window of an hour, so they
//! are held and added to batches, one per recipient and post, while the
//! bench runs), BENCH_TEMPLATED (default 0: the share of creates that name
//! a template instead of a title and body: two locales, a JSON Schema for
//! its variables, resolved and rendered on every create). Modes run one
//! after another for each backend and client count, so their figures are
//! side by side.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tidings::config::Settings;
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

/// The same allocator as the `tidings` binary, so the app runs as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct ClientResult {
    latencies: Histogram<u64>,
    ok: u64,
    errors: u64,
    /// The greatest cursor this client was answered with.
    last_cursor: Position,
}

/// The `cursor` of a create's answer, found without parsing the whole body.
fn cursor_in(body: &[u8]) -> Option<Position> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"cursor\":\"")? + 10;
    Position::parse_cursor(text.get(start..start + 32)?).ok()
}

/// One client: a keep-alive connection sending creates until `until`.
async fn client(
    addr: std::net::SocketAddr,
    n: usize,
    warmup_until: Instant,
    until: Instant,
    credential: Option<&'static str>,
    batched: f64,
    templated: f64,
) -> ClientResult {
    let mut result = ClientResult {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ok: 0,
        errors: 0,
        last_cursor: Position::START,
    };
    let mut writer = Writer::connect(addr).await.with_bearer(credential);
    let mut i = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            return result;
        }
        i += 1;
        // Every 1/batched-th create goes to the batched category.
        let to_batch =
            batched > 0.0 && ((i as f64 * batched).floor() > ((i - 1) as f64 * batched).floor());
        let to_template = templated > 0.0
            && ((i as f64 * templated).floor() > ((i - 1) as f64 * templated).floor());
        let mut body = json!({
            "recipient": format!("user-{}", (n as u64 * 7919 + i) % 1000),
            "category": if to_batch { "digest" } else { "comment" },
            "group_key": format!("post-{}", i % 10),
            "title": "New reply",
            "body": "Bob replied to your post",
            "data": {"post_id": i},
        });
        if to_template {
            let fields = body.as_object_mut().expect("an object");
            fields.remove("title");
            fields.remove("body");
            fields.insert("template".into(), json!("reply"));
            fields.insert("variables".into(), json!({"author": "Bob", "post": i}));
        }
        let body = body.to_string();
        let started = Instant::now();
        let ok = match writer.create(body).await {
            Some((status, body)) => {
                if let Some(c) = cursor_in(&body) {
                    result.last_cursor = result.last_cursor.max(c);
                }
                status == 201
            }
            None => false,
        };
        if started < warmup_until {
            continue;
        }
        if ok {
            result.ok += 1;
            let us = started.elapsed().as_micros().max(1) as u64;
            let _ = result.latencies.record(us);
        } else {
            result.errors += 1;
        }
    }
}

/// The benchmark's `send` key.
const KEY: &str = "tdk_bench-0123456789abcdef0123456789abcdef";

async fn run(
    backend: &str,
    clients: usize,
    seconds: u64,
    database_url: Option<String>,
    access: &str,
    batched: f64,
    templated: f64,
) -> Value {
    let mut settings = Settings::for_tests(database_url);
    settings.db.db_pool_size = env_or("BENCH_POOL_SIZE", 8);
    let credential = match access {
        "open" => None,
        "key" | "limited" => {
            settings.access.api_keys = Some(format!("bench:send:{KEY}"));
            if access == "limited" {
                settings.access.rate_send = tidings::access::rate::MAX_PER_SECOND;
                settings.access.rate_send_burst = 10_000_000;
            }
            Some(KEY)
        }
        other => panic!("BENCH_ACCESS: `{other}` is not open, key or limited"),
    };
    let app = Application::build(settings).await.expect("the app builds");
    let addr = app.addr();
    let state = app.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    if batched > 0.0 {
        let policy = json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 1000});
        let mut admin = Writer::connect(addr).await.with_bearer(credential);
        let (status, body) = admin
            .request(
                "PUT",
                "/v1/categories/digest/batching",
                Some(policy.to_string()),
            )
            .await
            .expect("the policy is set");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    if templated > 0.0 {
        let template = json!({
            "default_locale": "en", "publish": true,
            "locales": {
                "en": {"title": "{{ author }} replied", "body": "{{ author }} replied to post {{ post }}",
                       "channels": {"email": {"title": "New reply from {{ author }}"}}},
                "de": {"title": "{{ author }} hat geantwortet", "body": "Antwort auf Beitrag {{ post }}"}
            },
            "schema": {"type": "object", "required": ["author", "post"],
                       "properties": {"author": {"type": "string"}, "post": {"type": "integer"}}}
        });
        let mut admin = Writer::connect(addr).await.with_bearer(credential);
        let (status, body) = admin
            .request(
                "POST",
                "/v1/templates/reply/versions",
                Some(template.to_string()),
            )
            .await
            .expect("the template is added");
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    }
    let warmup_until = Instant::now() + Duration::from_secs(1);
    let until = warmup_until + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            tokio::spawn(client(
                addr,
                n,
                warmup_until,
                until,
                credential,
                batched,
                templated,
            ))
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut ok, mut errors) = (0, 0);
    let mut last_cursor = Position::START;
    for t in tasks {
        let r = t.await.expect("client task");
        all.add(&r.latencies).expect("same bounds");
        ok += r.ok;
        errors += r.errors;
        last_cursor = last_cursor.max(r.last_cursor);
    }
    // How long after the load stopped each read model had applied all of it.
    let load_stopped = Instant::now();
    let waits = state.projections.all().iter().map(|running| async move {
        let caught_up = running
            .projector
            .wait_for(last_cursor, Duration::from_secs(300))
            .await;
        let ms =
            caught_up.then(|| (load_stopped.elapsed().as_secs_f64() * 10_000.0).round() / 10.0);
        (running.name().to_owned(), json!(ms))
    });
    let catch_up_ms: serde_json::Map<String, Value> = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .collect();
    let _ = stop.send(());
    let _ = server.await;
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "backend": backend,
        "access": access,
        "batched_share": batched,
        "templated_share": templated,
        "clients": clients,
        "seconds": seconds,
        "creates": ok,
        "errors": errors,
        "creates_per_second": (ok as f64 / seconds as f64).round(),
        "projection_catch_up_ms": catch_up_ms,
        "latency_ms": {
            "p50": ms(0.50),
            "p99": ms(0.99),
            "p99_9": ms(0.999),
            "max": all.max() as f64 / 1000.0,
        },
    })
}

fn main() {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let clients: Vec<usize> = list("BENCH_CLIENTS", "1,16,64")
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let backends = list("BENCH_BACKENDS", "memory,postgres");
    let modes = list("BENCH_ACCESS", "open");
    let shares: Vec<f64> = list("BENCH_BATCHED", "0")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let templated: Vec<f64> = list("BENCH_TEMPLATED", "0")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut results = Vec::new();
    runtime.block_on(async {
        for backend in &backends {
            for &n in &clients {
                for mode in &modes {
                    for &share in &shares {
                        for &templated in &templated {
                            let Some(db) = database_for(backend).await else {
                                break;
                            };
                            let url = db.as_ref().map(|(_, url)| url.clone());
                            let r = run(backend, n, seconds, url, mode, share, templated).await;
                            release(db).await;
                            eprintln!("{r}");
                            results.push(r);
                        }
                    }
                }
            }
        }
    });
    print_report("creates", results);
}
