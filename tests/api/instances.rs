//! Several instances on one PostgreSQL (and one Redis): updates cross
//! instances, the projector fails over, and a Redis outage loses nothing.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    free_port, notification_for, postgres_server_url, settings, skipped, Backend, TestApp, TestDb,
};
use crate::stream_client::Subscriber;

fn redis_url() -> Option<String> {
    std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty())
}

/// An instance on `db`; `poll_ms` is how often its feed reads the update log.
async fn instance(db: &TestDb, redis: Option<String>, poll_ms: u64) -> TestApp {
    let mut app = TestApp::start(Backend::Postgres, Some(db.clone()), move |db| {
        let mut s = settings(db);
        s.redis_url = redis;
        s.stream_poll_ms = poll_ms;
        s.election_interval_ms = 200;
        s
    })
    .await;
    app.db = None; // the test drops the database once, at the end
    app
}

async fn wait_until(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..150 {
        let health: Value = app.get("/health/ready").await.json().await.unwrap();
        if check(&health) {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 15 s");
}

fn created(updates: &[Value]) -> Vec<String> {
    updates
        .iter()
        .filter(|u| u["kind"] == "created" && u["topic"].as_str().unwrap().starts_with("inbox:"))
        .map(|u| u["data"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_one_instance_reaches_a_subscriber_on_another_through_redis() {
    let test = "instances::a_command_on_one_instance_reaches_a_subscriber_on_another_through_redis";
    let (Some(server), Some(redis)) = (postgres_server_url(), redis_url()) else {
        skipped(test, "DATABASE_URL and REDIS_URL are both needed");
        return;
    };
    let db = TestDb::create(&server).await;
    // Feeds poll the log only once a minute: within this test only Redis can
    // bring A's updates to B.
    let channel_suffix = db.name.clone();
    let with_channel = |mut a: TestApp| {
        let _ = &channel_suffix;
        a.client = reqwest::Client::new();
        a
    };
    let a = with_channel(instance(&db, Some(redis.clone()), 60_000).await);
    wait_until(&a, "A leading", |h| h["inbox_leader"] == true).await;
    let b = with_channel(instance(&db, Some(redis), 60_000).await);
    wait_until(&b, "B connected to Redis", |h| h["redis"] == "up").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // B's subscription to the channel

    let mut sub = Subscriber::connect(&b, "topics=inbox:mia").await;
    sub.expect("subscribed").await;
    let (id, _) = a.create(&notification_for("mia", "from A")).await;
    let u = sub.update().await;
    assert_eq!(u["kind"], "created");
    assert_eq!(u["data"]["id"], id.as_str());
    sub.close().await;
    b.cleanup().await;
    a.cleanup().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_projection_over_with_nothing_lost() {
    let test = "instances::killing_the_leader_hands_projection_over_with_nothing_lost";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let mut a = instance(&db, redis_url(), 200).await;
    wait_until(&a, "A leading", |h| h["inbox_leader"] == true).await;
    let b = instance(&db, redis_url(), 200).await;
    assert_eq!(b.get_json("/health/ready").await["inbox_leader"], false);
    let mut sub = Subscriber::connect(&b, "topics=inbox:noa").await;
    sub.expect("subscribed").await;

    let mut expected = Vec::new();
    for i in 0..20 {
        expected.push(
            a.create(&notification_for("noa", &format!("on A {i}")))
                .await
                .0,
        );
    }
    a.kill().await;
    let mut last = String::new();
    for i in 0..20 {
        let (id, cursor) = b
            .create(&notification_for("noa", &format!("on B {i}")))
            .await;
        expected.push(id);
        last = cursor;
    }
    let health = wait_until(&b, "B taking over", |h| h["inbox_leader"] == true).await;
    assert_eq!(health["status"], "ready");
    let inbox = b.whole_inbox("noa", 100, &last).await;
    assert_eq!(
        inbox.len(),
        40,
        "the read model has every acknowledged create"
    );

    let updates = sub.updates_until(|got| created(got).len() >= 40).await;
    assert_eq!(
        created(&updates),
        expected,
        "every update once, in order, across the handover"
    );
    sub.close().await;
    b.cleanup().await;
    a.cleanup().await;
    db.drop_database().await;
}

/// A Redis server of the test's own, so stopping it disturbs nobody else.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self {
            port,
            child: Some(child),
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_stream_loses_no_update() {
    let test = "instances::redis_stopped_and_restarted_mid_stream_loses_no_update";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let port = free_port();
    let Some(mut redis) = OwnRedis::start(port) else {
        skipped(test, "no redis-server binary on PATH");
        return;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db = TestDb::create(&server).await;
    let a = instance(&db, Some(redis.url()), 500).await;
    wait_until(&a, "A leading", |h| h["inbox_leader"] == true).await;
    let b = instance(&db, Some(redis.url()), 500).await;
    wait_until(&b, "B connected to Redis", |h| h["redis"] == "up").await;
    let mut on_a = Subscriber::connect(&a, "topics=inbox:olly").await;
    on_a.expect("subscribed").await;
    let mut on_b = Subscriber::connect(&b, "topics=inbox:olly").await;
    on_b.expect("subscribed").await;

    let mut expected = Vec::new();
    for i in 0..30 {
        expected.push(
            a.create(&notification_for("olly", &format!("before {i}")))
                .await
                .0,
        );
    }
    redis.stop();
    let degraded = wait_until(&b, "B noticing Redis is down", |h| {
        h["status"] == "degraded"
    })
    .await;
    assert_eq!(degraded["redis"], "down");
    for i in 0..30 {
        expected.push(
            a.create(&notification_for("olly", &format!("during {i}")))
                .await
                .0,
        );
    }
    let mut redis = OwnRedis::start(port).expect("redis restarts");
    wait_until(&b, "B reconnecting to Redis", |h| h["status"] == "ready").await;
    for i in 0..30 {
        expected.push(
            b.create(&notification_for("olly", &format!("after {i}")))
                .await
                .0,
        );
    }
    for (name, sub) in [("A", &mut on_a), ("B", &mut on_b)] {
        let updates = sub.updates_until(|got| created(got).len() >= 90).await;
        let got = created(&updates);
        assert_eq!(
            got.len(),
            got.iter().collect::<BTreeSet<_>>().len(),
            "{name}: no duplicates"
        );
        assert_eq!(got, expected, "{name}: every update, in order");
    }
    on_a.close().await;
    on_b.close().await;
    b.cleanup().await;
    a.cleanup().await;
    db.drop_database().await;
    redis.stop();
}
