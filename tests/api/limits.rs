//! Bounded waiting everywhere: request and header timeouts, the cap on
//! requests in flight, slow clients, min_position past the log, and the
//! database's statement and lock timeouts.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::errors::expect_problem;
use crate::helpers::{
    limits, notification_for, postgres_server_url, settings, skipped, Backend, TestApp, TestDb,
};

on_both_backends!(min_position_beyond_the_end_of_the_log_is_refused_at_once);

async fn min_position_beyond_the_end_of_the_log_is_refused_at_once(app: &TestApp) {
    let (_, cursor) = app.create(&notification_for("far", "one")).await;
    let far = "7fffffffffffffff7fffffffffffffff";
    let problem = expect_problem(
        app.get(&format!("/v1/users/far/inbox?min_position={far}"))
            .await,
        422,
        "urn:tidings:problem:validation",
        "a min_position past the end of the log",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("beyond the end of the event log"),
        "{problem}"
    );
    // A cursor a command answered with is waited for and answered.
    app.get_json(&format!("/v1/users/far/inbox?min_position={cursor}"))
        .await;
}

/// Sends a create whose body never arrives past its first byte; the
/// connection stays open.
async fn stalled_create(app: &TestApp) -> TcpStream {
    let mut socket = TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(
            b"POST /v1/notifications HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    socket
}

/// Reads one answer's status line and headers off a raw socket.
async fn read_head(socket: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte).await.unwrap() {
            0 => break,
            _ => head.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_request_timeout_is_answered_503_with_retry_after() {
    let app = TestApp::spawn_with(Backend::Memory, "request timeout", |db| {
        let mut s = settings(db);
        s.request_timeout_ms = 300;
        s
    })
    .await
    .unwrap();
    let mut socket = stalled_create(&app).await;
    let head = read_head(&mut socket).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{head}");
    assert!(lower.contains("application/problem+json"), "{head}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_on_requests_in_flight_a_request_is_refused_at_once_and_health_still_answers()
{
    let app = TestApp::spawn_with(Backend::Memory, "request cap", |db| {
        let mut s = settings(db);
        s.max_concurrent_requests = 2;
        s
    })
    .await
    .unwrap();
    let mut held = vec![stalled_create(&app).await, stalled_create(&app).await];
    // Readiness (not counted) says when the server has both in hand.
    let mut in_flight = 0;
    for _ in 0..1000 {
        in_flight = app.get_json("/health/ready").await["requests_in_flight"]
            .as_u64()
            .unwrap();
        if in_flight == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight, 2, "the two held requests are in flight");
    let resp = app.get("/v1/users/cap/inbox").await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let problem = expect_problem(resp, 503, "urn:tidings:problem:overloaded", "over the cap").await;
    assert!(problem["detail"].as_str().unwrap().contains("2 requests"));
    assert_eq!(app.get("/health/live").await.status(), 200);
    assert_eq!(app.get("/health/ready").await.status(), 200);

    // The held requests finish (badly: their bodies are not JSON) and free their places.
    for socket in &mut held {
        socket.write_all(&[b' '; 99]).await.unwrap();
        let head = read_head(socket).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }
    app.create(&notification_for("cap", "after")).await;
    app.cleanup().await;
}

/// 500 clients that open a request head and trickle a header line every
/// 200 ms (a slowloris), against a header-read timeout of one second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slow_clients_trickling_headers_do_not_stop_others_being_served() {
    const SLOW: usize = 500;
    let app = TestApp::spawn_with(Backend::Memory, "slowloris", |db| {
        let mut s = settings(db);
        s.http_header_timeout_ms = 1_000;
        s
    })
    .await
    .unwrap();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut socket = TcpStream::connect(app.addr).await.unwrap();
        socket
            .write_all(b"GET /v1/users/slow/inbox HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        slow.push(socket);
    }
    let trickle = tokio::spawn(async move {
        let opened = Instant::now();
        let mut dropped = 0;
        while !slow.is_empty() && opened.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut open = Vec::with_capacity(slow.len());
            for mut socket in slow {
                let mut byte = [0u8; 1];
                let closed = matches!(
                    tokio::time::timeout(Duration::from_millis(1), socket.read(&mut byte)).await,
                    Ok(Ok(0) | Err(_))
                );
                if closed || socket.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    dropped += 1;
                } else {
                    open.push(socket);
                }
            }
            slow = open;
        }
        (dropped, slow.len())
    });

    // Meanwhile a normal client is served, one request after another.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        let resp = app.get("/v1/users/normal/inbox").await;
        assert_eq!(resp.status(), 200);
        served += 1;
    }
    let (dropped, still_open) = trickle.await.unwrap();
    eprintln!(
        "slowloris: {served} requests served to a normal client in 1.5 s while {SLOW} slow \
         connections were open; the server dropped {dropped} of them at the header timeout"
    );
    assert!(served > 0);
    assert_eq!(
        (dropped, still_open),
        (SLOW, 0),
        "every slow connection is dropped once its head takes longer than the timeout"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_kept() {
    let app = TestApp::spawn_with(Backend::Memory, "idle timeout", |db| {
        let mut s = settings(db);
        s.http_idle_timeout_ms = 500;
        s.http_header_timeout_ms = 200;
        s
    })
    .await
    .unwrap();
    let mut busy = TcpStream::connect(app.addr).await.unwrap();
    // Requests 300 ms apart: each gap is over the header timeout (which
    // counts only while a head arrives) and under the idle timeout.
    for _ in 0..4 {
        busy.write_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut busy).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut body = vec![0u8; content_length(&head)];
        busy.read_exact(&mut body).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection was closed: {closed:?}"
    );
    app.cleanup().await;
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// Every kind of connection tidings makes to PostgreSQL gets the statement
/// and lock timeouts, and settings in DATABASE_URL's `options` win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_database_connection_gets_the_timeouts_and_the_urls_options_win() {
    let test = "limits::every_database_connection_gets_the_timeouts_and_the_urls_options_win";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let mut ours = limits();
    ours.statement_timeout = Duration::from_millis(1_234);
    ours.lock_timeout = Duration::from_millis(567);
    let show = |client: tokio_postgres::Client| async move {
        let mut values = Vec::new();
        for setting in ["statement_timeout", "lock_timeout", "application_name"] {
            let row = client
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .unwrap();
            values.push(row.get::<_, String>(0));
        }
        values
    };
    let pools = tidings::storage::postgres::connect(&db.url, ours)
        .await
        .unwrap();
    let pooled = pools.deadpool.get().await.unwrap();
    let from_pool: Vec<String> = {
        let mut values = Vec::new();
        for setting in ["statement_timeout", "lock_timeout"] {
            let row = pooled
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .unwrap();
            values.push(row.get::<_, String>(0));
        }
        values
    };
    assert_eq!(from_pool, ["1234ms", "567ms"]);
    // The connections of their own (leader lock, maintenance lock, rebuild
    // stages) are made from the pool's configuration.
    let own = pools.connector.connect().await.unwrap();
    assert_eq!(&show(own).await[..2], ["1234ms", "567ms"]);

    // The URL's own options win, and are kept.
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{sep}options=-c%20statement_timeout%3D2s%20-c%20application_name%3Dfrom-url",
        db.url
    );
    let pools = tidings::storage::postgres::connect(&url, ours)
        .await
        .unwrap();
    let own = pools.connector.connect().await.unwrap();
    assert_eq!(show(own).await, ["2s", "567ms", "from-url"]);
    db.drop_database().await;
}

/// With the checkpoint row locked elsewhere, a re-drive (which needs that
/// lock) answers 503 once the lock timeout passes, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_that_cannot_get_its_lock_answers_503_after_the_lock_timeout() {
    let test = "limits::a_redrive_that_cannot_get_its_lock_answers_503_after_the_lock_timeout";
    let Some(_) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let app = TestApp::spawn_with(Backend::Postgres, test, |db| {
        let mut s = settings(db);
        s.db.db_lock_timeout_ms = 300;
        s
    })
    .await
    .unwrap();
    app.create(&notification_for("locked", "x")).await;
    let holder = app.db.as_ref().unwrap().client().await;
    holder
        .batch_execute(
            "BEGIN; SELECT * FROM projection_checkpoints WHERE projection = 'inbox' FOR UPDATE",
        )
        .await
        .unwrap();
    let resp = app.post_empty("/v1/projections/inbox/parked/redrive").await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    holder.batch_execute("ROLLBACK").await.unwrap();
    let resp = app.post_empty("/v1/projections/inbox/parked/redrive").await;
    assert_eq!(resp.status(), 200);
    app.cleanup().await;
}

mod bounded_reads {
    use super::*;

    /// Time travel folds at most 10 events here; a filtered log page reads
    /// at most 5.
    async fn spawn_small(backend: Backend, test: &str) -> Option<TestApp> {
        TestApp::spawn_with(backend, test, |db| {
            let mut s = settings(db);
            s.as_of_max_events = 10;
            s.events_scan_max = 5;
            s
        })
        .await
    }

    on_both_backends!(
        spawned_by super::spawn_small;
        time_travel_past_its_bound_is_refused_and_within_it_answers,
        a_filtered_log_page_reads_a_bounded_number_of_events_and_says_where_it_got_to,
    );

    async fn time_travel_past_its_bound_is_refused_and_within_it_answers(app: &TestApp) {
        // Two events a notification (created, delivered): five fill the bound.
        let mut last = String::new();
        for i in 0..5 {
            last = app
                .create(&notification_for("traveller", &format!("t{i}")))
                .await
                .1;
        }
        let page = app
            .get_json(&format!("/v1/users/traveller/inbox?as_of={last}"))
            .await;
        assert_eq!(page["items"].as_array().unwrap().len(), 5);
        let (_, later) = app
            .create(&notification_for("traveller", "one too many"))
            .await;
        let problem = expect_problem(
            app.get(&format!("/v1/users/traveller/inbox?as_of={later}"))
                .await,
            422,
            "urn:tidings:problem:validation",
            "time travel over a longer history than one request folds",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "query.as_of");
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains("more than 10 events"));
        // Another recipient's history is not counted.
        app.get_json(&format!("/v1/users/someone-else/inbox?as_of={later}"))
            .await;
    }

    async fn a_filtered_log_page_reads_a_bounded_number_of_events_and_says_where_it_got_to(
        app: &TestApp,
    ) {
        let (id, cursor) = app.create(&notification_for("scanner", "x")).await;
        app.command(&id, "read").await; // seen and read
        let mut last = String::new();
        for _ in 0..4 {
            app.command(&id, "unread").await;
            last = app.command(&id, "read").await["cursor"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        // Once the projector has the last one, the log hands out all of them
        // (on PostgreSQL a transaction elsewhere can hold the newest back).
        app.get_json(&format!("/v1/notifications/{id}?min_position={last}"))
            .await;
        // Ten events after the first two; four of them unread.
        let first = app
            .get_json(&format!(
                "/v1/events?after={cursor}&type=NotificationUnread&limit=100"
            ))
            .await;
        assert_eq!(first["has_more"], true, "{first}");
        let found = first["events"].as_array().unwrap().len();
        assert!(
            found <= 3,
            "five events read, at most three unread among them: {first}"
        );
        let second = app
            .get_json(&format!(
                "/v1/events?after={}&type=NotificationUnread&limit=100",
                first["next_cursor"].as_str().unwrap()
            ))
            .await;
        let total = found + second["events"].as_array().unwrap().len();
        assert_eq!(total, 4, "{second}");
        assert!(second["next_cursor"].as_str().unwrap() > first["next_cursor"].as_str().unwrap());
    }
}
