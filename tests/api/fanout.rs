//! Sends to many through HTTP: `recipients` and `topic` answer 202 with a
//! `send_id`, the fan-out creates one notification per recipient (each
//! through the preferences), `GET /v1/sends/{id}` follows it, and a crash
//! mid-fan-out resumes without duplicates or gaps.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{postgres_server_url, settings, skipped, Backend, TestApp, TestDb};

fn message(target: Value) -> Value {
    let mut body = json!({"category": "news", "title": "Launch", "body": "v2 is out"});
    for (k, v) in target.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Posts a send; its id and cursor.
async fn send(app: &TestApp, body: &Value) -> (String, String) {
    let resp = app.post("/v1/notifications", body).await;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{answer}");
    let id = answer["send_id"].as_str().unwrap().to_owned();
    assert_eq!(location, Some(format!("/v1/sends/{id}")));
    (id, answer["cursor"].as_str().unwrap().to_owned())
}

/// The send once it is done (waits up to `within`).
async fn done(app: &TestApp, id: &str, cursor: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, s) = app
            .send(
                "GET",
                &format!("/v1/sends/{id}?min_position={cursor}"),
                None,
            )
            .await;
        if status == 200 && s["status"] == "done" {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "send {id} not done: {status} {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn subscribe_all(app: &TestApp, topic: &str, users: impl Iterator<Item = String>) -> String {
    let answers: Vec<Value> = futures_util::stream::iter(users)
        .map(|u| async move {
            let (status, a) = app
                .send("PUT", &format!("/v1/topics/{topic}/subscribers/{u}"), None)
                .await;
            assert_eq!(status, 200, "{a}");
            a
        })
        .buffer_unordered(16)
        .collect()
        .await;
    crate::helpers::max_cursor(answers.iter().map(|a| a["cursor"].as_str().unwrap()))
}

on_both_backends!(
    a_send_to_recipients_creates_one_notification_each_through_their_preferences,
    a_topic_send_reaches_every_subscriber_a_page_at_a_time,
    a_create_names_exactly_one_of_recipient_recipients_and_topic,
    a_repeated_send_with_its_idempotency_key_answers_the_first,
);

async fn a_send_to_recipients_creates_one_notification_each_through_their_preferences(
    app: &TestApp,
) {
    let (status, _) = app
        .send(
            "PUT",
            "/v1/users/bo/preferences",
            Some(&json!({"channels": {"in_app": false}})),
        )
        .await;
    assert_eq!(status, 200);
    let (id, cursor) = send(
        app,
        &message(json!({"recipients": ["al", "bo", "cy", "al"]})),
    )
    .await;
    let s = done(app, &id, &cursor, Duration::from_secs(10)).await;
    assert_eq!(
        (
            s["total"].as_u64(),
            s["created"].as_u64(),
            s["suppressed"].as_u64()
        ),
        (Some(3), Some(2), Some(1)),
        "{s}"
    );
    assert!(s["topic"].is_null());
    for (user, expected) in [("al", 1), ("bo", 0), ("cy", 1)] {
        let inbox = app
            .get_json(&format!("/v1/users/{user}/inbox?min_position={cursor}"))
            .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut inbox = inbox;
        while inbox["items"].as_array().unwrap().len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            inbox = app.get_json(&format!("/v1/users/{user}/inbox")).await;
        }
        assert_eq!(
            inbox["items"].as_array().unwrap().len(),
            expected,
            "{user}: {inbox}"
        );
        if expected == 1 {
            assert_eq!(inbox["items"][0]["title"], "Launch");
        }
    }
}

async fn a_topic_send_reaches_every_subscriber_a_page_at_a_time(app: &TestApp) {
    let users = (0..1_234).map(|i| format!("user-{i:05}"));
    subscribe_all(app, "release-notes", users).await;
    let (status, gone) = app
        .send(
            "DELETE",
            "/v1/topics/release-notes/subscribers/user-00007",
            None,
        )
        .await;
    assert_eq!(
        (status, gone["subscribed"].as_bool()),
        (200, Some(false)),
        "{gone}"
    );
    let (_, again) = app
        .send(
            "DELETE",
            "/v1/topics/release-notes/subscribers/user-00007",
            None,
        )
        .await;
    assert_eq!(again["changed"], false);
    // Another topic's subscribers are not this one's.
    subscribe_all(app, "other", ["user-99999".to_owned()].into_iter()).await;

    let cursor = gone["cursor"].as_str().unwrap();
    let mut seen = BTreeSet::new();
    let mut page_cursor: Option<String> = None;
    loop {
        let path = match &page_cursor {
            Some(c) => format!(
                "/v1/topics/release-notes/subscribers?limit=100&cursor={c}&min_position={cursor}"
            ),
            None => format!("/v1/topics/release-notes/subscribers?limit=100&min_position={cursor}"),
        };
        let page = app.get_json(&path).await;
        assert_eq!(page["total"], 1_233);
        for item in page["items"].as_array().unwrap() {
            assert!(
                seen.insert(item["user"].as_str().unwrap().to_owned()),
                "twice: {item}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => page_cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 1_233);
    assert!(!seen.contains("user-00007") && !seen.contains("user-99999"));

    let (id, cursor) = send(app, &message(json!({"topic": "release-notes"}))).await;
    let s = done(app, &id, &cursor, Duration::from_secs(60)).await;
    assert_eq!(
        (
            s["total"].as_u64(),
            s["created"].as_u64(),
            s["suppressed"].as_u64()
        ),
        (Some(1_233), Some(1_233), Some(0)),
        "{s}"
    );
    assert_eq!(s["pages"], 3, "500, 500 and 233");
    assert_eq!(s["topic"], "release-notes");
    for user in ["user-00000", "user-00633", "user-01233"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let inbox = app.get_json(&format!("/v1/users/{user}/inbox")).await;
            if inbox["items"].as_array().unwrap().len() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{user}: {inbox}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let unsubscribed = app.get_json("/v1/users/user-00007/inbox").await;
    assert_eq!(unsubscribed["items"].as_array().unwrap().len(), 0);
}

async fn a_create_names_exactly_one_of_recipient_recipients_and_topic(app: &TestApp) {
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    for body in [
        message(json!({})),
        message(json!({"recipient": "al", "topic": "t"})),
        message(json!({"recipient": "al", "recipients": ["bo"]})),
        message(json!({"recipients": []})),
        message(json!({"recipients": many})),
        message(json!({"recipients": ["ok", "not ok"]})),
        message(json!({"topic": "no spaces"})),
    ] {
        let (status, problem) = app.send("POST", "/v1/notifications", Some(&body)).await;
        assert_eq!(status, 422, "{body}: {problem}");
    }
    let (status, _) = app
        .send(
            "POST",
            "/v1/notifications",
            Some(&message(json!({"recipients": "al"}))),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app.send("GET", "/v1/sends/not-a-send", None).await;
    assert_eq!(status, 404);
}

async fn a_repeated_send_with_its_idempotency_key_answers_the_first(app: &TestApp) {
    let body = message(json!({"recipients": ["al", "bo"]}));
    let post = |body: Value| async move {
        let resp = app
            .client
            .post(app.url("/v1/notifications"))
            .header("idempotency-key", "launch-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        (
            resp.status().as_u16(),
            replayed,
            resp.json::<Value>().await.unwrap(),
        )
    };
    let (status, replayed, first) = post(body.clone()).await;
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, replayed, again) = post(body.clone()).await;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again["send_id"], first["send_id"]);
    assert_eq!(again["cursor"], first["cursor"]);
    let mut other = body;
    other["title"] = json!("Different");
    let (status, _, _) = post(other).await;
    assert_eq!(status, 409);
    let id = first["send_id"].as_str().unwrap();
    let s = done(
        app,
        id,
        first["cursor"].as_str().unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s["total"], 2);
}

/// Every NotificationCreated of send `id`'s fan-out in the log.
async fn created_by(app: &TestApp, id: &str) -> Vec<Value> {
    let mut after = "00000000000000000000000000000000".to_owned();
    let mut found = Vec::new();
    loop {
        let page = app
            .get_json(&format!(
                "/v1/events?type=NotificationCreated&after={after}&limit=1000"
            ))
            .await;
        for e in page["events"].as_array().unwrap() {
            if e["metadata"]["causation_id"] == format!("send:{id}") {
                found.push(e.clone());
            }
        }
        after = page["next_cursor"].as_str().unwrap().to_owned();
        if page["has_more"] != true {
            return found;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_killed_midway_resumes_after_a_restart_without_duplicates_or_gaps() {
    let test = "fanout::a_fan_out_killed_midway_resumes_after_a_restart_without_duplicates_or_gaps";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let mut a = TestApp::start(Backend::Postgres, Some(db.clone()), settings).await;
    a.db = None; // the test drops the database once, at the end
    let users = (0..3_000).map(|i| format!("reader-{i:05}"));
    subscribe_all(&a, "weekly", users).await;
    let (id, cursor) = send(&a, &message(json!({"topic": "weekly"}))).await;
    // Let it start, then stop everything at once, as a crash would.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, s) = a
            .send(
                "GET",
                &format!("/v1/sends/{id}?min_position={cursor}"),
                None,
            )
            .await;
        if status == 200 && s["pages"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(s["status"], "fanning_out", "killed before the end: {s}");
            break;
        }
        assert!(Instant::now() < deadline, "no page fanned out: {s}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill().await;
    let mut b = TestApp::start(Backend::Postgres, Some(db.clone()), settings).await;
    b.db = None;
    let s = done(&b, &id, &cursor, Duration::from_secs(120)).await;
    assert_eq!(
        (s["total"].as_u64(), s["created"].as_u64()),
        (Some(3_000), Some(3_000)),
        "{s}"
    );
    let created = created_by(&b, &id).await;
    let recipients: BTreeSet<&str> = created
        .iter()
        .map(|e| e["data"]["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 3_000, "no duplicate");
    assert_eq!(recipients.len(), 3_000, "no gap");
    b.cleanup().await;
    db.drop_database().await;
}
