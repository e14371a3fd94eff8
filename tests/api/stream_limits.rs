//! WebSocket limits: a client that stops reading, floods subscribe messages,
//! sends huge topic lists, or opens too many connections from one address
//! costs only itself.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{notification_for, settings, Backend, TestApp};
use crate::stream_client::{is_close, Frame, Subscriber};

async fn open_streams(app: &TestApp) -> u64 {
    app.get_json("/health/ready").await["stream_connections"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_while_replayed_to_is_dropped_after_the_send_timeout() {
    let app = TestApp::spawn_with(Backend::Memory, "send timeout", |db| {
        let mut s = settings(db);
        s.stream_send_timeout_ms = 300;
        s
    })
    .await
    .unwrap();
    // About 9 MB of updates to replay: far more than the socket buffers hold.
    let big = "x".repeat(30_000);
    for i in 0..150 {
        let mut body = notification_for("hoarder", &format!("h{i}"));
        body["data"] = json!({ "blob": big });
        app.create(&body).await;
    }
    let hoarder =
        Subscriber::connect_small(&app, "topics=inbox:hoarder&cursor=0000000000000000").await;
    // It never reads. Another client is served meanwhile.
    let mut other = Subscriber::connect(&app, "topics=inbox:other").await;
    other.expect("subscribed").await;
    let mut dropped = false;
    for _ in 0..200 {
        if open_streams(&app).await == 1 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dropped,
        "the stalled connection was dropped and its place freed"
    );
    app.create(&notification_for("other", "still live")).await;
    assert_eq!(other.update().await["topic"], "inbox:other");
    drop(hoarder);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_messages_past_the_rate_are_refused_and_then_allowed_again() {
    let app = TestApp::spawn(Backend::Memory, "subscribe rate")
        .await
        .unwrap();
    let mut sub = Subscriber::connect(&app, "").await;
    for i in 0..40 {
        sub.send(json!({"type": "subscribe", "topics": [format!("inbox:u{i}")]}))
            .await;
    }
    let mut subscribed = 0;
    let mut refused = 0;
    for _ in 0..40 {
        let m: Value = sub.next().await;
        match m["type"].as_str().unwrap() {
            "subscribed" => subscribed += 1,
            "error" => {
                assert!(
                    m["detail"].as_str().unwrap().contains("too many messages"),
                    "{m}"
                );
                refused += 1;
            }
            other => panic!("{other}: {m}"),
        }
    }
    assert!(
        subscribed >= 20 && refused >= 10,
        "{subscribed} subscribed, {refused} refused"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub.send(json!({"type": "subscribe", "topics": ["inbox:later"]}))
        .await;
    assert_eq!(sub.next().await["type"], "subscribed", "tokens come back");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lists_past_the_cap_are_refused_before_any_is_parsed() {
    let app = TestApp::spawn(Backend::Memory, "topic caps").await.unwrap();
    let many: Vec<String> = (0..101).map(|i| format!("inbox:u{i}")).collect();
    let too_many = many.join(",");
    let huge = format!("inbox:{}", "a".repeat(20_000));
    for (query, says) in [
        (too_many.as_str(), "at most 100"),
        (huge.as_str(), "bytes long"),
    ] {
        let refused =
            tokio_tungstenite::connect_async(format!("ws://{}/v1/stream?topics={query}", app.addr))
                .await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 422);
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains(says), "{body}");
            }
            other => panic!("refused before the upgrade: {other:?}"),
        }
    }
    let mut sub = Subscriber::connect(&app, "").await;
    let thousands: Vec<String> = (0..5_000).map(|i| format!("x{i}")).collect();
    sub.send(json!({"type": "subscribe", "topics": thousands}))
        .await;
    let error = sub.next().await;
    assert_eq!(error["type"], "error");
    assert!(
        error["detail"].as_str().unwrap().contains("at most 100"),
        "{error}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_for_one_address_are_closed_with_1013() {
    let app = TestApp::spawn_with(Backend::Memory, "per address", |db| {
        let mut s = settings(db);
        s.stream_max_connections_per_address = 2;
        s
    })
    .await
    .unwrap();
    let mut first = Subscriber::connect(&app, "topics=inbox:a").await;
    let _second = Subscriber::connect(&app, "topics=inbox:b").await;
    first.expect("subscribed").await;
    let mut third = Subscriber::connect(&app, "topics=inbox:c").await;
    let frame = third.frame().await;
    assert!(is_close(&frame, 1013), "{frame:?}");
    let Frame::Closed(Some((_, reason))) = frame else {
        unreachable!()
    };
    assert!(reason.contains("from one address"), "{reason}");
    // Closing one frees its place.
    first.close().await;
    let mut again = None;
    for _ in 0..100 {
        let mut sub = Subscriber::connect(&app, "topics=inbox:d").await;
        match sub.frame().await {
            Frame::Json(m) if m["type"] == "subscribed" => {
                again = Some(sub);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "a place came free");
    app.cleanup().await;
}
