//! Analytics through HTTP and the stream: counts per bucket, category and
//! channel as the README defines them, the health score and its settings,
//! the `analytics` topic, and rebuild-from-zero equal to live processing
//! (property test, both backends).

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::helpers::{notification_for, settings, Backend, TestApp};
use crate::rebuild_equivalence::{run_step, scripts, Step};
use crate::stream_client::Subscriber;

fn at(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The last five minutes to a minute from now, merged (robust to a minute
/// boundary falling inside the test).
pub async fn recent(app: &TestApp, filter: &str, cursor: &str) -> Value {
    let now = Utc::now();
    let from = at(now - chrono::Duration::minutes(5));
    let to = at(now + chrono::Duration::minutes(1));
    let page = app
        .get_json(&format!(
            "/v1/analytics?bucket=minute&from={from}&to={to}{filter}&min_position={cursor}"
        ))
        .await;
    let buckets = page["buckets"].as_array().unwrap().len();
    assert!((6..=7).contains(&buckets), "{buckets} buckets");
    page["total"].clone()
}

fn with_channels(recipient: &str, category: &str, channels: &[&str]) -> Value {
    let mut body = notification_for(recipient, "t");
    body["category"] = json!(category);
    body["channels"] = json!(channels);
    body
}

async fn counts_follow_the_documented_rules(app: &TestApp) {
    let (a, _) = app
        .create(&with_channels("an-ann", "billing", &["in_app", "email"]))
        .await;
    let (b, _) = app
        .create(&with_channels("an-ann", "social", &["in_app"]))
        .await;
    let mut later = with_channels("an-ann", "social", &["in_app"]);
    later["deliver_at"] = json!(at(Utc::now() + chrono::Duration::hours(1)));
    let (c, _) = app.create(&later).await;
    let delivered = app
        .post(
            &format!("/v1/notifications/{a}/deliver"),
            &json!({"channel": "email"}),
        )
        .await;
    assert_eq!(delivered.status(), 200);
    for action in ["read", "unread", "read"] {
        app.command(&a, action).await;
    }
    app.command(&b, "click").await;
    app.command(&b, "archive").await;
    app.command(&c, "cancel").await;
    app.command(&a, "seen").await;
    let gone = app
        .client
        .delete(app.url(&format!("/v1/notifications/{b}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    let gone: Value = gone.json().await.unwrap();
    let cursor = gone["cursor"].as_str().unwrap().to_owned();

    let all = recent(app, "", &cursor).await;
    assert_eq!(
        all["counts"],
        json!({"created": 4, "delivered": 3, "seen": 2, "read": 2, "clicked": 1,
               "archived": 1, "deleted": 1, "cancelled": 1,
               "suppressed": 0, "held": 0, "failed": 0, "digested": 0}),
        "two channels count twice, a read again once, a click reads, a scheduled one \
         counts until cancelled: {all}"
    );
    assert_eq!(all["rates"]["delivery"], 0.75, "{all}");
    assert_eq!(all["rates"]["read"], 1.0, "read of 2 in-app deliveries");
    assert_eq!(all["rates"]["click"], 0.5);
    assert_eq!(all["latency_ms"]["delivery"]["count"], 3);
    assert_eq!(all["latency_ms"]["read"]["count"], 2);
    assert!(all["latency_ms"]["read"]["p99"].as_u64().is_some(), "{all}");

    let billing = recent(app, "&category=billing", &cursor).await;
    assert_eq!(billing["counts"]["created"], 2);
    assert_eq!(billing["counts"]["delivered"], 2);
    assert_eq!(billing["counts"]["read"], 1);
    let email = recent(app, "&channel=email", &cursor).await;
    assert_eq!(email["counts"]["created"], 1);
    assert_eq!(email["counts"]["delivered"], 1);
    assert_eq!(email["counts"]["read"], 0, "reads count in the inbox");
    assert_eq!(email["rates"]["read"], Value::Null, "no in-app deliveries");
    let social_email = recent(app, "&category=social&channel=email", &cursor).await;
    assert_eq!(social_email["counts"]["created"], 0);

    // The hour and the day hold what the minutes hold.
    for bucket in ["hour", "day"] {
        let page = app
            .get_json(&format!(
                "/v1/analytics?bucket={bucket}&from={}",
                at(Utc::now() - chrono::Duration::days(1))
            ))
            .await;
        assert_eq!(page["total"]["counts"], all["counts"], "{bucket}");
    }

    // Refusals say what to fix.
    for (query, field) in [
        ("bucket=week", "query.bucket"),
        ("channel=pigeon", "query.channel"),
        ("from=yesterday", "query.from"),
        (
            "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            "query.from",
        ),
        (
            "bucket=minute&from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z",
            "query.from",
        ),
    ] {
        let resp = app.get(&format!("/v1/analytics?{query}")).await;
        assert_eq!(resp.status(), 422, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }
}

async fn the_health_score_shows_its_components(app: &TestApp) {
    let (_, cursor) = app
        .create(&with_channels("hs-ann", "billing", &["in_app", "email"]))
        .await;
    recent(app, "", &cursor).await;
    let h = app.get_json("/v1/analytics/health").await;
    let names: Vec<&str> = h["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "delivery_rate",
            "engagement_rate",
            "delivery_latency_p99_ms",
            "projection_lag_ms",
            "dependencies"
        ]
    );
    let sum: f64 = h["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contribution"].as_f64().unwrap())
        .sum();
    assert_eq!(h["score"].as_f64().unwrap(), sum.round(), "{h}");
    let rate = &h["components"][0];
    assert_eq!(rate["value"], 0.5, "the email is not delivered yet: {h}");
    assert_eq!(rate["target"], 0.99);
    assert_eq!(h["window_minutes"], 60);
}

/// Only the delivery rate weighs: half delivered scores 100 × 0.5 / 0.99.
async fn only_delivery_weighs(backend: Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, |db| {
        let mut s = settings(db);
        s.health.health_engagement_rate_weight = 0;
        s.health.health_delivery_p99_weight = 0;
        s.health.health_lag_weight = 0;
        s.health.health_dependencies_weight = 0;
        s.health.health_delivery_rate_weight = 3;
        s
    })
    .await
}

async fn weights_and_targets_are_settings(app: &TestApp) {
    let (_, cursor) = app
        .create(&with_channels("w-ann", "billing", &["in_app", "email"]))
        .await;
    recent(app, "", &cursor).await;
    let h = app.get_json("/v1/analytics/health").await;
    assert_eq!(h["score"], 51, "{h}");
    assert_eq!(h["components"][0]["weight"], 3.0);
    assert_eq!(h["components"][1]["contribution"], 0.0);
}

async fn the_analytics_topic_pushes_the_minute_and_the_score(app: &TestApp) {
    let mut stream = Subscriber::connect(app, "topics=analytics").await;
    stream.expect("subscribed").await;
    app.create(&notification_for("topic-ann", "t")).await;
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        stream.updates_until(|got| {
            let kinds = |k: &str| got.iter().any(|u| u["kind"] == k);
            kinds("minute") && kinds("health")
        }),
    )
    .await
    .expect("a minute and a health update within 20 s");
    let minute = got.iter().find(|u| u["kind"] == "minute").unwrap();
    assert_eq!(minute["topic"], "analytics");
    assert_eq!(minute["data"]["counts"]["created"], 1, "{minute}");
    assert_eq!(minute["data"]["by_channel"]["in_app"]["delivered"], 1);
    let health = got.iter().find(|u| u["kind"] == "health").unwrap();
    assert!(health["data"]["score"].as_u64().unwrap() <= 100, "{health}");
    assert_eq!(health["data"]["components"].as_array().unwrap().len(), 5);
}

mod rules {
    use super::*;
    on_both_backends!(
        counts_follow_the_documented_rules,
        the_health_score_shows_its_components,
        the_analytics_topic_pushes_the_minute_and_the_score,
    );
}

mod weights {
    use super::*;
    on_both_backends!(spawned_by super::only_delivery_weighs; weights_and_targets_are_settings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_event_store_down_the_score_says_so() {
    let test = "analytics::with_the_event_store_down_the_score_says_so";
    let Some(server) = crate::helpers::postgres_server_url() else {
        crate::helpers::skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let Some(app) = TestApp::spawn(Backend::Postgres, test).await else {
        return;
    };
    let name = app.db.as_ref().unwrap().name.clone();
    let (admin, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let up = app.get_json("/v1/analytics/health").await;
    assert_eq!(up["components"][4]["value"], 1.0, "{up}");
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{name}' AND pid <> pg_backend_pid();"
        ))
        .await
        .unwrap();
    // pg_terminate_backend signals; the backends exit a moment later.
    for _ in 0..100 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = app.get("/v1/analytics/health").await;
    let status = resp.status();
    let down: Value = resp.json().await.unwrap();
    admin
        .batch_execute(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{down}");
    let c = &down["components"];
    assert_eq!(c[4]["name"], "dependencies");
    assert_eq!(c[4]["value"], 0.0, "the store is down: {down}");
    for i in 0..4 {
        assert_eq!(c[i]["value"], Value::Null, "{down}");
        assert_eq!(c[i]["contribution"], 0.0, "{down}");
    }
    assert_eq!(down["score"], 0, "{down}");
    app.cleanup().await;
}

#[tokio::test]
async fn all_weights_zero_is_refused_at_start() {
    let mut s = settings(None);
    s.health.health_delivery_rate_weight = 0;
    s.health.health_engagement_rate_weight = 0;
    s.health.health_delivery_p99_weight = 0;
    s.health.health_lag_weight = 0;
    s.health.health_dependencies_weight = 0;
    let err = tidings::startup::Application::build(s)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("WEIGHT"), "{err}");
}

/// Everything analytics answers for the window of a run.
async fn snapshot(app: &TestApp, from: &str, to: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for bucket in ["minute", "hour", "day"] {
        out.push(
            app.get_json(&format!(
                "/v1/analytics?bucket={bucket}&from={from}&to={to}"
            ))
            .await,
        );
    }
    for filter in [
        "category=comment",
        "category=mention&channel=email",
        "channel=in_app",
    ] {
        out.push(
            app.get_json(&format!(
                "/v1/analytics?bucket=minute&from={from}&to={to}&{filter}"
            ))
            .await,
        );
    }
    out
}

/// The analytics rows of the live version (PostgreSQL), as text.
async fn rows(app: &TestApp) -> Vec<(String, i64, String)> {
    let Some(db) = &app.db else {
        return vec![];
    };
    db.client()
        .await
        .query(
            "SELECT r.key, r.sort, r.doc::text FROM projection_rows r
               JOIN projection_versions v USING (projection, version)
              WHERE r.projection = 'analytics' ORDER BY r.key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn live_equals_rebuilt(app: &TestApp, steps: Vec<Step>) {
    let from = at(Utc::now() - chrono::Duration::minutes(2));
    let to = at(Utc::now() + chrono::Duration::minutes(10));
    let mut ids = Vec::new();
    let mut last = None;
    for step in steps {
        if let Some(cursor) = run_step(app, &mut ids, step).await {
            last = last.max(Some(cursor));
        }
    }
    if let Some(cursor) = &last {
        app.get_json(&format!("/v1/analytics?min_position={cursor}"))
            .await;
    }
    let live = snapshot(app, &from, &to).await;
    let live_rows = rows(app).await;
    let before = app.get_json("/v1/projections").await;
    let version = before[2]["version"].as_u64().unwrap();
    let resp = app.post_empty("/v1/projections/analytics/rebuild").await;
    assert_eq!(resp.status(), 202);
    let mut done = false;
    for _ in 0..600 {
        let p = &app.get_json("/v1/projections").await[2];
        assert_eq!(p["name"], "analytics");
        assert_ne!(p["rebuild"]["status"], "failed", "{p}");
        if p["rebuild"]["status"] == "done" && p["version"].as_u64() == Some(version + 1) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done, "the rebuild finished");
    assert_eq!(
        snapshot(app, &from, &to).await,
        live,
        "answers after a rebuild"
    );
    assert_eq!(
        rows(app).await,
        live_rows,
        "the rebuilt rows are the live ones"
    );
}

fn rebuilding_equals_live(backend: Backend, test: &str) {
    scripts(6, |runtime, steps| {
        runtime.block_on(async {
            let Some(app) = TestApp::spawn(backend, test).await else {
                return;
            };
            use futures_util::FutureExt;
            let outcome = std::panic::AssertUnwindSafe(live_equals_rebuilt(&app, steps))
                .catch_unwind()
                .await;
            app.cleanup().await;
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        })
    });
}

#[test]
fn rebuilding_analytics_from_zero_equals_live_processing_in_memory() {
    rebuilding_equals_live(
        Backend::Memory,
        "analytics::rebuilding_analytics_from_zero_equals_live_processing_in_memory",
    );
}

#[test]
fn rebuilding_analytics_from_zero_equals_live_processing_on_postgres() {
    rebuilding_equals_live(
        Backend::Postgres,
        "analytics::rebuilding_analytics_from_zero_equals_live_processing_on_postgres",
    );
}
