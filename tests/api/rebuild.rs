//! Rebuilding the inbox without downtime.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{
    max_cursor, notification_for, postgres_server_url, skipped, Backend, TestApp,
};

on_both_backends!(a_rebuild_while_eight_writers_keep_writing_ends_with_nothing_missing);

async fn rebuild_and_wait(app: &TestApp) -> Value {
    let resp = app.post_empty("/v1/projections/inbox/rebuild").await;
    assert_eq!(resp.status(), 202);
    for _ in 0..600 {
        let projections = app.get_json("/v1/projections").await;
        let rebuild = &projections[0]["rebuild"];
        match rebuild["status"].as_str() {
            Some("done") => return projections[0].clone(),
            Some("failed") => panic!("the rebuild failed: {rebuild}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the rebuild did not finish within 30 s");
}

async fn a_rebuild_while_eight_writers_keep_writing_ends_with_nothing_missing(app: &TestApp) {
    let mut seeded = Vec::new();
    for i in 0..50 {
        let (id, _) = app
            .create(&notification_for("rb-seed", &format!("n{i}")))
            .await;
        seeded.push(id);
    }
    let read = app.command(&seeded[0], "read").await;
    let applied = format!(
        "/v1/notifications/{}?min_position={}",
        seeded[0],
        read["cursor"].as_str().unwrap()
    );
    app.get_json(&applied).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = app.client.clone();
            let url = app.url("/v1/notifications");
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..40 {
                    let resp = client
                        .post(&url)
                        .json(&notification_for(&format!("rb-{w}"), &format!("n{i}")))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 201);
                    let json: Value = resp.json().await.unwrap();
                    acknowledged.push((
                        json["id"].as_str().unwrap().to_owned(),
                        json["cursor"].as_str().unwrap().to_owned(),
                    ));
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = rebuild_and_wait(app).await;
    assert_eq!(after["version"], 2);
    assert_eq!(after["rebuild"]["version"], 2);
    // `total` counts every event committed when the rebuild began; the new
    // version catches up to the live checkpoint, which can trail that count
    // while the cluster's oldest transaction holds log readers back. The seed
    // (50 creates with their deliveries, a read with its seen: 102 events)
    // was applied before the rebuild began.
    let done = &after["rebuild"];
    assert!(done["done"].as_u64().unwrap() >= 102, "{done}");
    assert!(done["total"].as_u64().unwrap() >= 102, "{done}");

    let written: Vec<Vec<(String, String)>> = join_all(writers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let last = max_cursor(written.iter().flatten().map(|(_, c)| c.as_str()));
    for (w, acknowledged) in written.iter().enumerate() {
        let items = app.whole_inbox(&format!("rb-{w}"), 100, &last).await;
        let got: BTreeSet<String> = items
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        let expected: BTreeSet<String> = acknowledged.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(
            got, expected,
            "writer {w}: nothing missing or doubled after the switch"
        );
    }
    let seed = app
        .get_json(&format!(
            "/v1/users/rb-seed/inbox?limit=100&min_position={last}"
        ))
        .await;
    assert_eq!(seed["items"].as_array().unwrap().len(), 50);
    assert_eq!(seed["unread_count"], 49, "state survives the rebuild");

    // Live processing goes on in the new version, and it can be rebuilt again.
    let (id, cursor) = app.create(&notification_for("rb-seed", "after")).await;
    app.get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(rebuild_and_wait(app).await["version"], 3);
    app.get_json(&format!("/v1/notifications/{id}")).await;

    let unknown = app.post_empty("/v1/projections/nope/rebuild").await;
    assert_eq!(unknown.status(), 404);
    if let Some(db) = &app.db {
        let client = db.client().await;
        let tables: (Option<String>, Option<String>, Option<String>) = {
            let row = client
                .query_one(
                    "SELECT to_regclass('inbox_notifications')::text,
                            to_regclass('inbox_notifications_v2')::text,
                            to_regclass('inbox_notifications_v3')::text",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1), row.get(2))
        };
        assert_eq!(
            tables,
            (None, None, Some("inbox_notifications_v3".into())),
            "old versions dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_command_rebuilds_while_the_service_runs() {
    let test = "rebuild::the_replay_command_rebuilds_while_the_service_runs";
    if postgres_server_url().is_none() {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    }
    let app = TestApp::spawn(Backend::Postgres, test)
        .await
        .expect("postgres");
    let mut last = String::new();
    for i in 0..30 {
        last = app
            .create(&notification_for("rc", &format!("n{i}")))
            .await
            .1;
    }
    let before = app.whole_inbox("rc", 100, &last).await;
    let url = app.db.as_ref().unwrap().url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["replay", "--projection", "inbox"])
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("now at version 2"), "{stderr}");
    assert_eq!(app.get_json("/v1/projections").await[0]["version"], 2);
    assert_eq!(app.whole_inbox("rc", 100, &last).await, before);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["replay", "--projection", "nope"])
        .env("DATABASE_URL", &app.db.as_ref().unwrap().url)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    app.cleanup().await;
}
