//! WebSocket streams: live updates, resume without gaps or duplicates,
//! resync, backpressure, heartbeats and the connection limit.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{notification_for, settings, Backend, TestApp};
use crate::stream_client::{is_close, Frame, Subscriber};

on_both_backends!(
    a_subscriber_sees_inbox_rows_and_counts_as_they_change,
    a_hundred_updates_missed_while_disconnected_arrive_in_order_on_resume,
    the_seam_between_replay_and_live_has_no_gap_or_duplicate_under_concurrent_writes,
    subscribe_and_unsubscribe_messages_work_on_an_open_socket,
    unknown_cursors_and_bad_messages_get_clear_answers,
);

fn created_ids(updates: &[Value], topic: &str) -> Vec<String> {
    updates
        .iter()
        .filter(|u| u["topic"] == topic && u["kind"] == "created")
        .map(|u| u["data"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_strictly_increasing(updates: &[Value]) {
    let cursors: Vec<&str> = updates
        .iter()
        .map(|u| u["cursor"].as_str().unwrap())
        .collect();
    for pair in cursors.windows(2) {
        assert!(pair[0] < pair[1], "cursors go up without repeats: {pair:?}");
    }
}

async fn a_subscriber_sees_inbox_rows_and_counts_as_they_change(app: &TestApp) {
    let mut sub = Subscriber::connect(app, "topics=inbox:ana").await;
    let subscribed = sub.expect("subscribed").await;
    assert_eq!(subscribed["topics"], json!(["inbox:ana"]));

    let (id, cursor) = app.create(&notification_for("ana", "hello")).await;
    let created = sub.update().await;
    assert_eq!(created["topic"], "inbox:ana");
    assert_eq!(created["kind"], "created");
    let rest = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(
        created["data"], rest,
        "data is the row exactly as REST returns it"
    );
    let counts = sub.update().await;
    assert_eq!(counts["kind"], "counts");
    assert_eq!(
        counts["data"],
        json!({"unread_count": 1, "unseen_count": 1})
    );

    app.command(&id, "read").await;
    let changed = sub.update().await;
    assert_eq!(
        (changed["kind"].as_str(), changed["data"]["status"].as_str()),
        (Some("changed"), Some("read"))
    );
    assert_eq!(
        sub.update().await["data"],
        json!({"unread_count": 0, "unseen_count": 0})
    );

    app.client
        .delete(app.url(&format!("/v1/notifications/{id}")))
        .send()
        .await
        .unwrap();
    let removed = sub.update().await;
    assert_eq!(removed["kind"], "removed");
    assert_eq!(removed["data"]["id"], id.as_str());
    assert_eq!(sub.update().await["kind"], "counts");

    // Another user's inbox is not this subscriber's business.
    app.create(&notification_for("bob", "not for ana")).await;
    let (_, _) = app.create(&notification_for("ana", "second")).await;
    let next = sub.update().await;
    assert_eq!(next["topic"], "inbox:ana");
    assert_eq!(next["data"]["title"], "second");
    sub.close().await;
}

async fn a_hundred_updates_missed_while_disconnected_arrive_in_order_on_resume(app: &TestApp) {
    let mut sub = Subscriber::connect(app, "topics=inbox:ben").await;
    let cursor = sub.expect("subscribed").await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    sub.close().await;

    let mut expected = Vec::new();
    for i in 0..100 {
        let (id, _) = app
            .create(&notification_for("ben", &format!("missed {i}")))
            .await;
        expected.push(id);
    }
    let mut sub = Subscriber::connect(app, &format!("topics=inbox:ben&cursor={cursor}")).await;
    sub.expect("subscribed").await;
    let updates = sub
        .updates_until(|got| created_ids(got, "inbox:ben").len() == 100)
        .await;
    assert_eq!(
        created_ids(&updates, "inbox:ben"),
        expected,
        "every one, in order"
    );
    assert_strictly_increasing(&updates);

    // Then live, with nothing repeated at the seam.
    let (live, _) = app.create(&notification_for("ben", "live")).await;
    let mut after = Vec::new();
    loop {
        let u = sub.update().await;
        after.push(u.clone());
        if u["kind"] == "created" {
            break;
        }
    }
    assert_eq!(created_ids(&after, "inbox:ben"), vec![live]);
    let mut all = updates;
    all.extend(after);
    assert_strictly_increasing(&all);
    sub.close().await;
}

async fn the_seam_between_replay_and_live_has_no_gap_or_duplicate_under_concurrent_writes(
    app: &TestApp,
) {
    let mut first = Subscriber::connect(app, "topics=inbox:cleo").await;
    let cursor = first.expect("subscribed").await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    first.close().await;

    let writers: Vec<_> = (0..6)
        .map(|w| {
            let client = app.client.clone();
            let url = app.url("/v1/notifications");
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50 {
                    let resp = client
                        .post(&url)
                        .json(&notification_for("cleo", &format!("w{w} {i}")))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 201);
                    ids.push(
                        resp.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
                ids
            })
        })
        .collect();
    // Join while the writers are writing: part of it is replay, part live.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut sub = Subscriber::connect(app, &format!("topics=inbox:cleo&cursor={cursor}")).await;
    sub.expect("subscribed").await;
    let acknowledged: BTreeSet<String> = join_all(writers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    let updates = sub
        .updates_until(|got| created_ids(got, "inbox:cleo").len() >= acknowledged.len())
        .await;
    let got = created_ids(&updates, "inbox:cleo");
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    assert_eq!(unique, acknowledged, "no gaps");
    assert_strictly_increasing(&updates);
    sub.close().await;
}

async fn subscribe_and_unsubscribe_messages_work_on_an_open_socket(app: &TestApp) {
    let mut sub = Subscriber::connect(app, "").await;
    let (id, cursor) = app.create(&notification_for("dora", "before")).await;
    // Subscribe only once the create has been projected, so its update is past.
    app.get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    sub.send(json!({"type": "subscribe", "topics": [format!("notification:{id}"), "inbox:dora"]}))
        .await;
    let subscribed = sub.expect("subscribed").await;
    assert_eq!(subscribed["topics"].as_array().unwrap().len(), 2);

    app.command(&id, "seen").await;
    let u = sub.update().await;
    assert_eq!(u["topic"], format!("notification:{id}"));
    assert_eq!(u["data"]["seen"], true);
    let u = sub.update().await;
    assert_eq!(u["topic"], "inbox:dora");

    sub.send(json!({"type": "unsubscribe", "topics": ["inbox:dora"]}))
        .await;
    sub.expect("unsubscribed").await;
    app.create(&notification_for("dora", "after unsubscribing"))
        .await;
    app.command(&id, "read").await;
    let u = sub.update().await;
    assert_eq!(
        u["topic"],
        format!("notification:{id}"),
        "only the topic still subscribed: {u}"
    );
    assert_eq!(u["data"]["status"], "read");
    sub.close().await;
}

async fn unknown_cursors_and_bad_messages_get_clear_answers(app: &TestApp) {
    let (_, log_cursor) = app.create(&notification_for("eve", "before")).await;
    for (cursor, says) in [
        ("garbage", "never issued"),
        ("7fffffffffffffff", "never issued"),
        (log_cursor.as_str(), "event-log cursor"),
    ] {
        let mut sub = Subscriber::connect(app, &format!("topics=inbox:eve&cursor={cursor}")).await;
        let resync = sub.next().await;
        assert_eq!(resync["type"], "resync", "{cursor}");
        assert_eq!(resync["reason"], "cursor_unknown");
        let detail = resync["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{cursor}: {detail}");
        assert!(!detail.contains("no longer kept"), "{detail}");
        let fresh = resync["cursor"].as_str().unwrap().to_owned();
        // It goes on live from the fresh cursor.
        app.create(&notification_for("eve", "after resync")).await;
        let u = sub.update().await;
        assert!(u["cursor"].as_str().unwrap() > fresh.as_str());
        sub.send(json!({"type": "dance"})).await;
        let error = sub.expect("error").await;
        assert!(
            error["detail"].as_str().unwrap().contains("subscribe"),
            "{error}"
        );
        sub.send(json!({"type": "subscribe", "topics": ["feed:x"]}))
            .await;
        let error = sub.expect("error").await;
        assert!(
            error["detail"].as_str().unwrap().contains("not a topic"),
            "{error}"
        );
        sub.close().await;
    }
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/stream?topics=feed:x", app.addr))
            .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 422),
        other => panic!("a bad topic is refused before the upgrade: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_gets_the_close_answered() {
    let app = TestApp::spawn(Backend::Memory, "close echo").await.unwrap();
    let url = format!("ws://{}/v1/stream?topics=inbox:gil", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let _subscribed = ws.next().await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let mut answer = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer within 5 s")
    {
        match frame {
            Ok(Message::Close(frame)) => {
                answer = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("the server dropped the connection instead of closing it: {e}"),
        }
    }
    assert_eq!(answer, Some(1000), "the close was echoed (not 1006)");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_what_is_kept_gets_resync() {
    let app = TestApp::start(Backend::Memory, None, |db| {
        let mut s = settings(db);
        s.stream_retention = 5;
        s
    })
    .await;
    let mut sub = Subscriber::connect(&app, "topics=inbox:finn").await;
    let cursor = sub.expect("subscribed").await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    sub.close().await;
    let mut last = String::new();
    for i in 0..10 {
        last = app
            .create(&notification_for("finn", &format!("n{i}")))
            .await
            .1;
    }
    app.get_json(&format!("/v1/users/finn/inbox?min_position={last}"))
        .await;
    let mut sub = Subscriber::connect(&app, &format!("topics=inbox:finn&cursor={cursor}")).await;
    let resync = sub.next().await;
    assert_eq!(resync["type"], "resync");
    assert_eq!(resync["reason"], "cursor_too_old");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_told_to_resync_and_dropped_without_holding_others_back() {
    let app = TestApp::start(Backend::Memory, None, |db| {
        let mut s = settings(db);
        s.stream_queue = 64;
        s
    })
    .await;
    let mut slow = Subscriber::connect_small(&app, "topics=inbox:gus").await;
    slow.expect("subscribed").await;
    let mut fast = Subscriber::connect(&app, "topics=inbox:gus").await;
    fast.expect("subscribed").await;
    // Big rows fill the socket buffers of the one that does not read. The
    // writer waits for the reader after every few creates, so the reader's
    // queue (64) never overflows however slow the machine is, while the
    // other's fills: one connection's backlog must not stall another's.
    let mut body = notification_for("gus", "big");
    body["body"] = json!("x".repeat(9_000));
    let mut got = Vec::new();
    for round in 1..=50 {
        for _ in 0..16 {
            app.create(&body).await;
        }
        while created_ids(&got, "inbox:gus").len() < round * 16 {
            got.push(fast.update().await);
        }
    }
    assert_eq!(
        created_ids(&got, "inbox:gus").len(),
        800,
        "the reader kept up"
    );
    fast.close().await;
    let mut told = None;
    loop {
        match slow.frame().await {
            Frame::Json(m) if m["type"] == "resync" => told = Some(m),
            Frame::Json(_) => {}
            closed @ Frame::Closed(_) => {
                assert!(
                    is_close(&closed, 4000),
                    "closed as a slow consumer: {closed:?}"
                );
                break;
            }
        }
    }
    let told = told.expect("a resync before the close");
    assert_eq!(told["reason"], "slow_consumer");
    assert!(told["cursor"].is_string());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_with_1013() {
    let app = TestApp::start(Backend::Memory, None, |db| {
        let mut s = settings(db);
        s.stream_max_connections = 2;
        s
    })
    .await;
    let mut a = Subscriber::connect(&app, "topics=inbox:hal").await;
    a.expect("subscribed").await;
    let mut b = Subscriber::connect(&app, "topics=inbox:hal").await;
    b.expect("subscribed").await;
    let mut c = Subscriber::connect(&app, "topics=inbox:hal").await;
    let frame = c.frame().await;
    assert!(is_close(&frame, 1013), "{frame:?}");
    a.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = Subscriber::connect(&app, "topics=inbox:hal").await;
    d.expect("subscribed").await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_by_the_heartbeat() {
    let app = TestApp::start(Backend::Memory, None, |db| {
        let mut s = settings(db);
        s.stream_heartbeat_ms = 400;
        s
    })
    .await;
    let mut alive = Subscriber::connect(&app, "topics=inbox:ida").await;
    alive.expect("subscribed").await;
    let mut silent = Subscriber::connect(&app, "topics=inbox:ida").await;
    silent.expect("subscribed").await;
    // `alive` reads (and so answers pings) while `silent` does not.
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
        while tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(50), alive.frame()).await;
        }
        alive
    });
    silent.stay_silent(Duration::from_millis(2500)).await;
    let frame = silent.frame().await;
    assert!(is_close(&frame, 1001), "{frame:?}");
    let mut alive = reader.await.unwrap();
    app.create(&notification_for("ida", "still here")).await;
    assert_eq!(alive.update().await["kind"], "created");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_closes_streams_with_going_away() {
    let mut app = TestApp::spawn(
        Backend::Memory,
        "streams::stopping_the_server_closes_streams",
    )
    .await
    .expect("memory always runs");
    let mut sub = Subscriber::connect(&app, "topics=inbox:jon").await;
    sub.expect("subscribed").await;
    let (stopped, frame) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), app.stop()),
        sub.frame()
    );
    assert!(is_close(&frame, 1001), "{frame:?}");
    stopped
        .expect("an open stream does not hold the shutdown up")
        .expect("a clean stop");
    app.cleanup().await;
}
