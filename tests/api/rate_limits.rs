//! Rate limits as a client meets them: how many requests one user gets in
//! 10 s at the configured rate, on one instance and on two sharing the
//! allowance through Redis (the figures are printed).

use std::time::{Duration, Instant};

use tidings::config::Settings;

use crate::access::{call, secured, token};
use crate::helpers::{Backend, TestApp, TestDb};

/// Keys and tokens set with low rates, for the rate tests.
fn slow(db: Option<&TestDb>) -> Settings {
    let mut s = secured(db);
    s.access.rate_user = 10;
    s.access.rate_user_burst = 10;
    s
}

/// Requests admitted for one user over `secs` seconds, sent as fast as two
/// clients can, spread over `apps`.
async fn admitted(apps: &[&TestApp], secs: u64) -> u64 {
    let alice = token("alice", 600, None);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut admitted = 0;
    let mut n = 0;
    while Instant::now() < deadline {
        let app = apps[n % apps.len()];
        n += 1;
        let resp = call(app, "GET", "/v1/users/alice/inbox", Some(&alice), None).await;
        match resp.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_admits_the_configured_rate() {
    let app = TestApp::start(Backend::Memory, None, slow).await;
    let got = admitted(&[&app], 10).await;
    eprintln!(
        "rate limit, one instance: {got} admitted in 10 s at 10/s with a burst of 10 (ideal 110)"
    );
    assert!((100..=111).contains(&got), "{got}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_redis_share_one_allowance() {
    let (Some(server), Ok(redis)) = (
        crate::helpers::postgres_server_url(),
        std::env::var("REDIS_URL"),
    ) else {
        crate::helpers::skipped(
            "rate_limits::two_instances_with_redis_share_one_allowance",
            "DATABASE_URL and REDIS_URL are both needed",
        );
        return;
    };
    let db = TestDb::create(&server).await;
    let channel = format!("rate-test-{}", uuid::Uuid::new_v4().simple());
    let with_redis = |db: Option<&TestDb>| {
        let mut s = slow(db);
        s.redis_url = Some(redis.clone());
        s.redis_channel = Some(channel.clone());
        s
    };
    let a = TestApp::start(Backend::Postgres, Some(db.clone()), with_redis).await;
    let b = TestApp::start(Backend::Postgres, Some(db.clone()), with_redis).await;
    let got = admitted(&[&a, &b], 10).await;
    eprintln!("rate limit, two instances through Redis: {got} admitted in 10 s at 10/s with a burst of 10 (ideal 110)");
    assert!(
        (100..=112).contains(&got),
        "{got}: the instances share one allowance"
    );
    let mut b = b;
    b.stop().await.unwrap();
    a.cleanup().await;
}
