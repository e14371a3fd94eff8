//! Redis Cluster failover: a cluster of 3 masters and 3 replicas of the
//! test's own; the master a subscriber uses is killed, a replica takes over,
//! and updates cross instances through Redis again within 5 s.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    free_port, notification_for, postgres_server_url, settings, skipped, Backend, TestApp, TestDb,
};
use crate::stream_client::{Frame, Subscriber};

struct Node {
    port: u16,
    process: Child,
    /// Crashed or hung by the test: not asked anything any more.
    failed: bool,
}

/// How a master fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// The process dies: its connections are closed at once.
    Crash,
    /// The process stops answering (a hung host, a partition): its
    /// connections stay open and silent.
    Hang,
}

/// Six redis-servers in cluster mode, 3 masters with a replica each.
struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.process.kill();
            let _ = node.process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Cluster {
    fn start() -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("tidings-cluster-{}", uuid::Uuid::new_v4().simple()));
        let mut cluster = Self {
            nodes: Vec::new(),
            dir: dir.clone(),
        };
        for _ in 0..6 {
            let port = free_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
            let process = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                // The bus port defaults to port + 10000, which need not be free
                // (or below 65536).
                .args(["--cluster-port", &free_port().to_string()])
                .args(["--save", "", "--appendonly", "no"])
                // Replicas sync at once (the default waits 5 s): only a
                // synced replica may take over.
                .args(["--repl-diskless-sync-delay", "0"])
                .current_dir(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("redis-server: {e}"))?;
            cluster.nodes.push(Node {
                port,
                process,
                failed: false,
            });
        }
        for node in &cluster.nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cli(node.port, &["ping"]).trim() != "PONG" {
                if Instant::now() > deadline {
                    return Err(format!("redis-server on {} did not start", node.port));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !created.success() {
            return Err("redis-cli --cluster create failed".into());
        }
        cluster.wait_healthy(Duration::from_secs(20))?;
        cluster.wait_replicas_synced(Duration::from_secs(20))?;
        Ok(cluster)
    }

    fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port));
        let first = nodes.next().unwrap_or_default();
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    fn alive(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.failed)
    }

    /// Every live node sees the cluster as whole (all slots served).
    fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self
                .alive()
                .all(|n| cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the cluster did not become healthy".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Three replicas, each with its link to its master up.
    fn wait_replicas_synced(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let synced = self
                .alive()
                .filter(|n| cli(n.port, &["info", "replication"]).contains("master_link_status:up"))
                .count();
            if synced == 3 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{synced} of 3 replicas synced with their master"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The clients subscribed to a channel: (port of their master, client id).
    fn subscribed_clients(&self) -> Vec<(u16, String)> {
        let mut found = Vec::new();
        for node in self.alive() {
            if !cli(node.port, &["role"]).starts_with("master") {
                continue;
            }
            for line in cli(node.port, &["client", "list"]).lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let subscribed = fields
                    .iter()
                    .any(|f| f.starts_with("sub=") && *f != "sub=0");
                let id = fields.iter().find_map(|f| f.strip_prefix("id="));
                if let (true, Some(id)) = (subscribed, id) {
                    found.push((node.port, id.to_string()));
                }
            }
        }
        found
    }

    fn masters(&self) -> usize {
        self.alive()
            .filter(|n| cli(n.port, &["role"]).starts_with("master"))
            .count()
    }

    /// Waits until a replica has taken over from a killed master: three
    /// live masters again, and every live node sees all slots served.
    fn wait_failed_over(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while self.masters() < 3 {
            if Instant::now() > deadline {
                let nodes = self
                    .alive()
                    .next()
                    .map(|n| cli(n.port, &["cluster", "nodes"]))
                    .unwrap_or_default();
                return Err(format!("no replica took over:\n{nodes}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_healthy(deadline.saturating_duration_since(Instant::now()))
    }

    fn fail(&mut self, port: u16, failure: Failure) {
        let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) else {
            return;
        };
        node.failed = true;
        match failure {
            Failure::Crash => {
                let _ = node.process.kill();
                let _ = node.process.wait();
            }
            Failure::Hang => {
                let _ = Command::new("kill")
                    .args(["-STOP", &node.process.id().to_string()])
                    .status();
            }
        }
    }
}

async fn instance(db: &TestDb, redis: String) -> TestApp {
    let mut app = TestApp::start(Backend::Postgres, Some(db.clone()), move |db| {
        let mut s = settings(db);
        s.redis_url = Some(redis);
        // Feeds read the update log only once a minute: within this test
        // only Redis brings A's updates to B in time.
        s.stream_poll_ms = 60_000;
        s.election_interval_ms = 200;
        s
    })
    .await;
    app.db = None; // dropped once, at the end
    app
}

/// Waits until a client other than `known` subscribes; all subscribed clients.
async fn until_subscribed(cluster: &Cluster, known: &[(u16, String)]) -> Vec<(u16, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = tokio::task::block_in_place(|| cluster.subscribed_clients());
        if now.iter().any(|c| !known.contains(c)) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(app: &TestApp) -> Value {
    app.get_json("/health/ready").await
}

/// Creates for `user` on `a` until `sub` sees one, up to `limit`; how long it took.
async fn until_an_update_crosses(
    a: &TestApp,
    sub: &mut Subscriber,
    user: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (id, _) = a.create(&notification_for(user, "through Redis")).await;
        let wait = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match sub.frame().await {
                    Frame::Json(m) if m["kind"] == "created" && m["data"]["id"] == id.as_str() => {
                        return true
                    }
                    Frame::Json(_) => continue,
                    Frame::Closed(_) => return false,
                }
            }
        })
        .await;
        if wait == Ok(true) {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_subscribers_master_crashes_updates_cross_through_redis_again_within_5_s() {
    fails_over(
        "redis_cluster::after_the_subscribers_master_crashes_updates_cross_through_redis_again_within_5_s",
        Failure::Crash,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_subscribers_master_hangs_updates_cross_through_redis_again_within_5_s() {
    fails_over(
        "redis_cluster::after_the_subscribers_master_hangs_updates_cross_through_redis_again_within_5_s",
        Failure::Hang,
    )
    .await;
}

/// A leads and publishes, B relays what Redis brings to its subscriber; the
/// master B's subscription lives on fails, its replica takes over, and
/// within 5 s an update made on A reaches B's subscriber again.
async fn fails_over(test: &str, failure: Failure) {
    let Some(server) = postgres_server_url() else {
        skipped(
            test,
            "DATABASE_URL is not set (Redis fan-out needs PostgreSQL)",
        );
        return;
    };
    let mut cluster = match tokio::task::spawn_blocking(Cluster::start).await.unwrap() {
        Ok(cluster) => cluster,
        Err(why) => {
            skipped(
                test,
                &format!("no Redis Cluster of the test's own could start: {why}"),
            );
            return;
        }
    };
    let db = TestDb::create(&server).await;
    // A leads: it projects and publishes; B only relays what Redis brings.
    let a = instance(&db, cluster.url()).await;
    for _ in 0..100 {
        if ready(&a).await["inbox_leader"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let of_a = until_subscribed(&cluster, &[]).await;
    let b = instance(&db, cluster.url()).await;
    let of_b: Vec<(u16, String)> = until_subscribed(&cluster, &of_a)
        .await
        .into_iter()
        .filter(|c| !of_a.contains(c))
        .collect();
    assert_eq!(of_b.len(), 1, "B subscribes on one master: {of_b:?}");
    let b_master = of_b[0].0;
    let mut sub = Subscriber::connect(&b, "topics=inbox:cluster").await;
    sub.expect("subscribed").await;
    let before = until_an_update_crosses(&a, &mut sub, "cluster", Duration::from_secs(10)).await;
    assert!(
        before.is_some(),
        "updates cross through the cluster before the failover"
    );

    // Kill the master B's subscriber uses; its replica takes over.
    let a_shares = of_a.iter().any(|(port, _)| *port == b_master);
    cluster.fail(b_master, failure);
    let killed = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster
            .wait_failed_over(Duration::from_secs(30))
            .map(|()| cluster)
    })
    .await
    .unwrap()
    .expect("a replica takes over");
    let failover = killed.elapsed();
    let after = until_an_update_crosses(&a, &mut sub, "cluster", Duration::from_secs(5)).await;
    eprintln!(
        "redis cluster: {failure:?} of master {b_master} (A's subscriber there too: {a_shares}); \
         a replica took over after {failover:?}; updates crossed again {after:?} later"
    );
    assert!(
        after.is_some(),
        "within 5 s of the failover, updates cross instances through Redis again"
    );
    drop(sub);
    let (mut a, mut b) = (a, b);
    let _ = a.stop().await;
    let _ = b.stop().await;
    db.drop_database().await;
    drop(cluster);
}
