//! Rebuild rate of the inbox and of analytics from a large log in PostgreSQL.
//!
//! Seeds a fresh database with BENCH_EVENTS events (default 1,000,000: half a
//! million notifications, created and delivered, for 10,000 users, over one
//! day) straight in SQL, then rebuilds each read model from zero the way
//! `tidings replay` does, one after the other, and reports events per second
//! as JSON, with where the CPU went: this process (reading, decoding,
//! folding, encoding) against PostgreSQL's processes. Needs DATABASE_URL
//! (the server; the bench makes and drops its own database). BENCH_MODELS
//! picks the read models (default "inbox,analytics").

use std::time::Instant;

use serde_json::{json, Value};
use tidings::projections::analytics::Analytics;
use tidings::projections::inbox::postgres::PostgresInbox;
use tidings::projections::rebuild::{self, Rebuildable, Rebuilds};
use tidings::projections::store::postgres_rows::PgRows;
use tidings::storage::postgres::{self, PgEventLog};

/// As in the binary (src/main.rs): the rebuild is measured as `tidings replay` runs it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU seconds this process has used.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds used by every PostgreSQL process on this machine (the server
/// runs here in the bench's setting), from /proc: the live processes' own
/// time plus what the postmaster collected from backends that have exited.
fn postgres_cpu_seconds() -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .filter_map(|stat| {
            // Fields after the ")": state is field 3; utime, stime, cutime,
            // cstime are 14 to 17.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let mut total = 0.0;
            for i in 11..=14 {
                total += fields.get(i)?.parse::<f64>().ok()?;
            }
            Some(total / ticks)
        })
        .sum()
}

#[path = "common/db.rs"]
mod db;
#[path = "common/knobs.rs"]
#[allow(dead_code)]
mod knobs;
use db::{drop_database, fresh_database};

const SEED: &str = "
WITH n AS (
    SELECT i, gen_random_uuid()::text AS id,
           timestamp '2026-01-01' + (i % 86400) * interval '1 second' AS t
      FROM generate_series($1::int, $2::int) AS i
)
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT 'Notification', n.id, e.seq, e.kind, '1.0', e.payload,
       jsonb_build_object('request_id', 'seed', 'actor', 'bench', 'command', 'Create')
  FROM n CROSS JOIN LATERAL (VALUES
    (1, 'NotificationCreated', jsonb_build_object('NotificationCreated', jsonb_build_object(
        'id', n.id, 'recipient', 'user-' || (n.i % 10000), 'category', 'bench',
        'title', 'Hello ' || n.i, 'body', 'Bob replied to your post', 'data', jsonb_build_object('n', n.i),
        'priority', 'normal', 'channels', '[\"in_app\"]'::jsonb, 'group_key', NULL,
        'deliver_at', NULL, 'created_at', to_char(n.t, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')))),
    (2, 'NotificationDelivered', jsonb_build_object('NotificationDelivered', jsonb_build_object(
        'channel', 'in_app',
        'delivered_at', to_char(n.t + (n.i % 997) * interval '1 millisecond', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))))
  ) AS e(seq, kind, payload)
 ORDER BY n.i, e.seq";

fn main() {
    let Some(server) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("*** SKIPPED rebuild benchmark: DATABASE_URL is not set ***");
        return;
    };
    let events: i64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if std::env::var_os("RUST_LOG").is_some() {
        tidings::telemetry::init(tidings::config::LogFormat::Text);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(async {
        let (name, url) = fresh_database(&server).await;

        let pools = postgres::connect(
            &url,
            postgres::SessionLimits::of(&tidings::config::Database::at(None)).with_pool_size(4),
        )
        .await
        .expect("connect");
        postgres::migrate(&pools).await.expect("migrate");
        let seeding = Instant::now();
        let client = pools.deadpool.get().await.expect("a connection");
        let notifications = (events / 2) as i32;
        let mut from = 1;
        while from <= notifications {
            let to = (from + 49_999).min(notifications);
            client.execute(SEED, &[&from, &to]).await.expect("seed");
            from = to + 1;
        }
        // A log this size has long been vacuumed in any deployment; without
        // this, autovacuum's first pass over it would run during the rebuild.
        client
            .batch_execute("VACUUM (ANALYZE) events")
            .await
            .expect("analyze");
        // The live inbox is taken to be caught up with the whole log: the
        // rebuild then builds every event beside it.
        client
            .execute(
                "INSERT INTO projection_checkpoints (projection, tx, seq)
                 SELECT p, transaction_id::text::bigint, global_position
                   FROM (SELECT * FROM events
                          ORDER BY transaction_id DESC, global_position DESC LIMIT 1) last,
                        unnest(ARRAY['inbox', 'analytics']) AS p
                 ON CONFLICT (projection) DO UPDATE SET tx = EXCLUDED.tx, seq = EXCLUDED.seq",
                &[],
            )
            .await
            .expect("checkpoint");
        let seed_seconds = seeding.elapsed().as_secs_f64();

        let log = PgEventLog::new(pools.deadpool.clone());
        let mut results = Vec::new();
        for model in knobs::list("BENCH_MODELS", "inbox,analytics") {
            let (name, target, count): (&'static str, Box<dyn Rebuildable>, &str) =
                match model.as_str() {
                    "inbox" => (
                        "inbox",
                        Box::new(PostgresInbox::new(
                            pools.deadpool.clone(),
                            pools.connector.clone(),
                            tidings::api::views::row_view(),
                        )),
                        "SELECT count(*) FROM inbox_live",
                    ),
                    "analytics" => (
                        "analytics",
                        Box::new(PgRows::new(
                            Analytics,
                            pools.deadpool.clone(),
                            pools.connector.clone(),
                        )),
                        "SELECT count(*) FROM projection_rows WHERE projection = 'analytics'",
                    ),
                    other => panic!("BENCH_MODELS: no read model `{other}` here"),
                };
            let rebuilds = Rebuilds::default();
            rebuilds.begin(name).expect("no other rebuild");
            let (app_before, pg_before) = (own_cpu_seconds(), postgres_cpu_seconds());
            let started = Instant::now();
            let version = rebuild::run(&*target, &log, &rebuilds)
                .await
                .expect("the rebuild succeeds");
            let seconds = started.elapsed().as_secs_f64();
            let app_cpu = own_cpu_seconds() - app_before;
            let pg_cpu = postgres_cpu_seconds() - pg_before;
            let rows: i64 = client.query_one(count, &[]).await.expect("count").get(0);
            assert_eq!(version, target.version().await.expect("version"));
            assert!(
                rows >= events / 2,
                "{model}: every notification has its row"
            );
            results.push(json!({
                "read_model": model,
                "rows_built": rows,
                "rebuild_seconds": (seconds * 100.0).round() / 100.0,
                "events_per_second": (events as f64 / seconds).round(),
                "cpu_seconds": {
                    "bench_process": (app_cpu * 100.0).round() / 100.0,
                    "postgres": (pg_cpu * 100.0).round() / 100.0,
                    "cores_busy": ((app_cpu + pg_cpu) / seconds * 100.0).round() / 100.0,
                },
            }));
        }
        drop(client);
        drop(pools);
        drop_database(&server, &name).await;
        json!({
            "benchmark": "rebuild",
            "backend": "postgres",
            "events": events,
            "seed_seconds": (seed_seconds * 10.0).round() / 10.0,
            "read_models": Value::Array(results),
        })
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
