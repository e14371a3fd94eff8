//! Database outages are answered 503, never 500, and lose nothing that was
//! acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    notification_for, postgres_server_url, settings, skipped, Backend, TestApp, TestDb,
};

/// What an administrator's `pg_terminate_backend` (or a server restart)
/// does to every connection: the server ends them with SQLSTATE 57P01
/// (admin shutdown), mid-statement or idle in a pool.
async fn terminate_connections(db: &TestDb, admin: &tokio_postgres::Client) -> u64 {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .map_or(0, |rows| rows.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_under_load_answer_503_and_lose_no_acknowledged_write() {
    let test = "outages::connections_killed_under_load_answer_503_and_lose_no_acknowledged_write";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let app = TestApp::start(Backend::Postgres, Some(db.clone()), settings).await;
    let admin = {
        let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .expect("an admin connection");
        tokio::spawn(conn);
        client
    };

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = app.client.clone();
            let base = app.base.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answers: Vec<(u16, Value)> = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let resp = client
                        .post(format!("{base}/v1/notifications"))
                        .json(&notification_for("outage", &format!("w{w}-{n}")))
                        .send()
                        .await
                        .expect("the server answers");
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.expect("a JSON body");
                    // A command on it loads through the log reader.
                    if status == 201 {
                        let id = body["id"].as_str().unwrap();
                        let read = client
                            .post(format!("{base}/v1/notifications/{id}/read"))
                            .send()
                            .await
                            .expect("the server answers");
                        let read_status = read.status().as_u16();
                        answers.push((read_status, read.json().await.expect("JSON")));
                    }
                    answers.push((status, body));
                }
                answers
            })
        })
        .collect();

    let mut killed = 0;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        killed += terminate_connections(&db, &admin).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for writer in writers {
        answers.extend(writer.await.expect("a writer"));
    }
    assert!(killed > 0, "connections were terminated");

    let mut unavailable = 0;
    let mut acknowledged = Vec::new();
    for (status, body) in &answers {
        match status {
            201 => acknowledged.push(body["id"].as_str().unwrap().to_owned()),
            200 => {}
            503 => {
                unavailable += 1;
                assert_eq!(body["type"], "urn:tidings:problem:unavailable", "{body}");
            }
            other => panic!("an outage must answer 503, not {other}: {body}"),
        }
    }
    assert!(
        unavailable > 0,
        "some requests met a terminated connection (of {} answers)",
        answers.len()
    );
    assert!(!acknowledged.is_empty());

    // Once the outage is over the service recovers by itself (the first
    // requests may still meet a connection that died in the pool), and
    // every acknowledged create is in the log and reaches the inbox.
    let mut after = None;
    for _ in 0..50 {
        let resp = app
            .post("/v1/notifications", &notification_for("outage", "after"))
            .await;
        if resp.status() == 201 {
            let body: Value = resp.json().await.unwrap();
            after = Some((
                body["id"].as_str().unwrap().to_owned(),
                body["cursor"].as_str().unwrap().to_owned(),
            ));
            break;
        }
        assert_eq!(resp.status(), 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (last, cursor) = after.expect("the service recovered within 5 s");
    let inbox: Vec<String> = app
        .whole_inbox("outage", 100, &cursor)
        .await
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect();
    for id in acknowledged.iter().chain([&last]) {
        assert!(inbox.contains(id), "acknowledged {id} is in the inbox");
    }
    app.cleanup().await;
}
