//! Scheduled delivery: a notification created with a future `deliver_at` is
//! delivered then, once, whatever happens in between (a cancel, a restart, a
//! leader dying).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::helpers::{
    notification_for, postgres_server_url, settings, skipped, Backend, TestApp, TestDb,
};
use crate::stream_client::Subscriber;

fn due_in(recipient: &str, title: &str, after: Duration) -> Value {
    let mut body = notification_for(recipient, title);
    let at = Utc::now() + chrono::Duration::from_std(after).unwrap();
    body["deliver_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    body
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time, got {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// The notification once its lifecycle is no longer `scheduled` (or after
/// `within`, as it is then).
async fn settled(app: &TestApp, id: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = app.get_json(&format!("/v1/notifications/{id}")).await;
        if n["lifecycle"] != "scheduled" || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The types of the notification's events, in order.
async fn event_types(app: &TestApp, id: &str) -> Vec<String> {
    let page = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

fn deliveries(types: &[String]) -> usize {
    types
        .iter()
        .filter(|t| *t == "NotificationDelivered")
        .count()
}

async fn a_future_deliver_at_is_delivered_then_into_the_inbox_and_its_stream(app: &TestApp) {
    let mut stream = Subscriber::connect(app, "topics=inbox:sched-ann").await;
    stream.expect("subscribed").await;
    let (id, cursor) = app
        .create(&due_in("sched-ann", "later", Duration::from_millis(1500)))
        .await;
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(n["lifecycle"], "scheduled", "{n}");
    let inbox = app
        .get_json(&format!("/v1/users/sched-ann/inbox?min_position={cursor}"))
        .await;
    assert_eq!(
        inbox["items"],
        json!([]),
        "not in the inbox before its time"
    );

    let update = stream.update().await;
    assert_eq!(update["kind"], "created", "{update}");
    assert_eq!(update["data"]["id"], id.as_str());
    let n = app.get_json(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["lifecycle"], "delivered", "{n}");
    let due = time(&n["deliver_at"]);
    let delivered = time(&n["delivered_at"]);
    assert!(delivered >= due, "never early: {delivered} < {due}");
    assert!(
        delivered - due < chrono::Duration::seconds(1),
        "within a second of its time on an idle service: {delivered} vs {due}"
    );
    let events = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    let delivery = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "NotificationDelivered")
        .expect("a delivery event")
        .clone();
    assert_eq!(
        delivery["metadata"]["actor"], "tidings:schedule",
        "{delivery}"
    );
    assert_eq!(
        delivery["metadata"]["command_id"],
        format!("schedule/{id}"),
        "the reaction's own id: {delivery}"
    );
    let inbox = app
        .get_json(&format!(
            "/v1/users/sched-ann/inbox?min_position={}",
            delivery["cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(inbox["items"][0]["id"], id.as_str());
    assert_eq!(inbox["unread_count"], 1);
    let timers = app.get_json("/health/ready").await["timers"].clone();
    assert_eq!(timers["fired"], 1, "{timers}");
    assert!(
        timers["lateness_max_ms"].as_u64().unwrap() < 1000,
        "{timers}"
    );
}

async fn a_cancel_before_the_time_stops_the_delivery(app: &TestApp) {
    let (id, _) = app
        .create(&due_in("sched-bo", "never", Duration::from_millis(800)))
        .await;
    let cancelled = app.command(&id, "cancel").await;
    assert!(cancelled["cursor"].is_string(), "{cancelled}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = app.get_json(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["lifecycle"], "cancelled", "{n}");
    assert_eq!(deliveries(&event_types(app, &id).await), 0);
}

async fn many_due_in_the_same_second_are_each_delivered_once(app: &TestApp) {
    let due = Utc::now() + chrono::Duration::milliseconds(1500);
    let at = due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut ids = Vec::new();
    for i in 0..300 {
        let mut body = notification_for(&format!("sched-many-{}", i % 7), &format!("n{i}"));
        body["deliver_at"] = json!(at);
        // Some urgent, some not: all go out.
        if i % 5 == 0 {
            body["priority"] = json!("urgent");
        }
        ids.push(app.create(&body).await.0);
    }
    for id in &ids {
        let n = settled(app, id, Duration::from_secs(20)).await;
        assert_eq!(n["lifecycle"], "delivered", "{n}");
    }
    for id in ids.iter().step_by(10) {
        assert_eq!(deliveries(&event_types(app, id).await), 1, "{id}");
    }
    let fired = app.get_json("/v1/projections").await;
    let schedule = fired
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "schedule")
        .expect("the schedule is a registered projection")
        .clone();
    assert_eq!(schedule["parked_events"], 0, "{schedule}");
}

/// Times at the edges of what RFC 3339 and the clock can say: each is
/// taken (and scheduled or delivered at once) or refused with a 4xx, and
/// neither projection parks anything.
async fn deliver_at_at_the_edges_is_scheduled_delivered_or_refused(app: &TestApp) {
    let edges = [
        "9999-12-31T23:59:59.999Z",
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999-00:01",
        "2030-01-01T00:00:00+23:59",
        "2030-01-01T00:00:00-23:59",
        "2030-06-30T23:59:60Z",
        "2030-01-01T00:00:00.123456789123Z",
        "+10000-01-01T00:00:00Z",
        "2030-02-30T00:00:00Z",
        "2030-01-01T24:00:00Z",
    ];
    let mut last = String::new();
    for at in edges {
        let mut body = notification_for("sched-edge", at);
        body["deliver_at"] = json!(at);
        let response = app.post("/v1/notifications", &body).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        match status {
            201 => {
                let id = answer["id"].as_str().unwrap();
                last = answer["cursor"].as_str().unwrap().to_owned();
                let n = app
                    .get_json(&format!("/v1/notifications/{id}?min_position={last}"))
                    .await;
                let due = time(&n["deliver_at"]);
                let expected = if due > time(&n["created_at"]) {
                    "scheduled"
                } else {
                    "delivered"
                };
                assert_eq!(n["lifecycle"], expected, "{at}: {n}");
            }
            422 | 400 => assert!(answer["detail"].is_string(), "{at}: {answer}"),
            other => panic!("{at} answered {other}: {answer}"),
        }
    }
    assert!(!last.is_empty(), "some edges are valid times");
    // Every projection past every event (applied, or parked after its retries).
    let mut caught_up = false;
    for _ in 0..200 {
        let all = app.get_json("/v1/projections").await;
        if all
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["events_behind"] == 0)
        {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "the projections apply every edge within 10 s");
    let all = app.get_json("/v1/projections").await;
    for p in all.as_array().unwrap() {
        assert_eq!(p["parked_events"], 0, "{p}");
    }
}

/// The schedule's outbox rebuilt from the log owes only what was not
/// fired: the fired delivery is settled by its own event, so the rebuild
/// fires nothing again, and the one still due goes out once at its time.
async fn a_rebuilt_schedule_owes_only_what_was_not_fired(app: &TestApp) {
    let (fired, _) = app
        .create(&due_in("sched-rb", "soon", Duration::from_millis(300)))
        .await;
    let (owed, cursor) = app
        .create(&due_in("sched-rb", "later", Duration::from_millis(3000)))
        .await;
    app.get_json(&format!("/v1/notifications/{owed}?min_position={cursor}"))
        .await;
    let n = settled(app, &fired, Duration::from_secs(10)).await;
    assert_eq!(n["lifecycle"], "delivered", "{n}");
    let version = schedule_view(app).await["version"].as_u64().unwrap();
    let started = app.post_empty("/v1/projections/schedule/rebuild").await;
    assert_eq!(started.status(), 202, "{}", started.text().await.unwrap());
    schedule_until(app, "the rebuild switches", |v| {
        v["version"].as_u64() == Some(version + 1) && v["rebuild"]["status"] == "done"
    })
    .await;
    let n = app.get_json(&format!("/v1/notifications/{owed}")).await;
    assert_eq!(n["lifecycle"], "scheduled", "not yet due: {n}");
    let n = settled(app, &owed, Duration::from_secs(10)).await;
    assert_eq!(
        n["lifecycle"], "delivered",
        "still owed after the rebuild: {n}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in [&fired, &owed] {
        assert_eq!(deliveries(&event_types(app, id).await), 1, "{id}");
    }
    let timers = app.get_json("/health/ready").await["timers"].clone();
    assert_eq!(timers["fired"], 2, "nothing fired twice: {timers}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let due = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidings_timers_due "))
        .unwrap_or_else(|| panic!("no due gauge in {metrics}"));
    assert_eq!(due, "0", "the outbox owes nothing more");
}

on_both_backends!(
    deliver_at_at_the_edges_is_scheduled_delivered_or_refused,
    a_rebuilt_schedule_owes_only_what_was_not_fired,
    a_future_deliver_at_is_delivered_then_into_the_inbox_and_its_stream,
    a_cancel_before_the_time_stops_the_delivery,
    many_due_in_the_same_second_are_each_delivered_once,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_due_while_the_service_was_down_goes_out_once_at_start() {
    let Some(app) = TestApp::spawn(
        Backend::Postgres,
        "scheduled::a_delivery_due_while_the_service_was_down_goes_out_once_at_start",
    )
    .await
    else {
        return;
    };
    let (id, _) = app
        .create(&due_in("sched-cy", "overdue", Duration::from_millis(700)))
        .await;
    let mut app = app;
    app.stop().await.expect("a clean stop");
    tokio::time::sleep(Duration::from_millis(1200)).await; // due while down
    let db = app.db.take();
    let app = TestApp::start(Backend::Postgres, db, settings).await;
    let n = settled(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(n["lifecycle"], "delivered", "{n}");
    assert!(time(&n["delivered_at"]) >= time(&n["deliver_at"]));
    assert_eq!(deliveries(&event_types(&app, &id).await), 1);
    app.cleanup().await;
}

/// An instance on `db` that elects leaders quickly.
async fn instance(db: &TestDb) -> TestApp {
    let mut app = TestApp::start(Backend::Postgres, Some(db.clone()), |db| {
        let mut s = settings(db);
        s.election_interval_ms = 200;
        s
    })
    .await;
    app.db = None; // the test drops the database once, at the end
    app
}

async fn leads_schedule(app: &TestApp) -> bool {
    let all = app.get_json("/v1/projections").await;
    all.as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "schedule" && p["leader"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_before_the_time_still_delivers_once_from_another_instance() {
    let test =
        "scheduled::killing_the_leader_before_the_time_still_delivers_once_from_another_instance";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let mut a = instance(&db).await;
    for _ in 0..100 {
        if leads_schedule(&a).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leads_schedule(&a).await, "the first instance leads");
    let b = instance(&db).await;
    assert!(!leads_schedule(&b).await, "one leader at a time");
    let mut ids = Vec::new();
    let mut cursors = Vec::new();
    for i in 0..20 {
        let (id, cursor) = a
            .create(&due_in(
                "sched-di",
                &format!("n{i}"),
                Duration::from_millis(1500),
            ))
            .await;
        ids.push(id);
        cursors.push(cursor);
    }
    a.kill().await;
    // Read our writes on the survivor: its inbox may first have to take over
    // and apply what the dead leader had not.
    let last = crate::helpers::max_cursor(cursors.iter().map(String::as_str));
    b.get_json(&format!(
        "/v1/notifications/{}?min_position={last}",
        ids[19]
    ))
    .await;
    for id in &ids {
        let n = settled(&b, id, Duration::from_secs(15)).await;
        assert_eq!(n["lifecycle"], "delivered", "{n}");
        assert_eq!(deliveries(&event_types(&b, id).await), 1, "{id}");
    }
    assert!(leads_schedule(&b).await, "the survivor took over");
    let mut b = b;
    let _ = b.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_to_fire_deliver_once() {
    // Both instances fire by hand what is due, beside the leader's timers:
    // the aggregate takes one delivery and refuses the rest.
    let test = "scheduled::two_instances_racing_to_fire_deliver_once";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let a = instance(&db).await;
    let b = instance(&db).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let (id, _) = a
            .create(&due_in(
                "sched-ed",
                &format!("n{i}"),
                Duration::from_millis(600),
            ))
            .await;
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(650)).await;
    let fire = |app: &TestApp, id: String| {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/notifications/{id}/deliver"));
        async move {
            client
                .post(url)
                .json(&json!({"channel": "in_app"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut racing = Vec::new();
    for id in &ids {
        racing.push(tokio::spawn(fire(&a, id.clone())));
        racing.push(tokio::spawn(fire(&b, id.clone())));
    }
    for r in racing {
        let status = r.await.unwrap();
        assert!(status == 200 || status == 409, "deliver answered {status}");
    }
    for id in &ids {
        let n = settled(&a, id, Duration::from_secs(10)).await;
        assert_eq!(n["lifecycle"], "delivered", "{n}");
        assert_eq!(deliveries(&event_types(&a, id).await), 1, "{id}");
    }
    let (mut a, mut b) = (a, b);
    let _ = a.stop().await;
    let _ = b.stop().await;
    db.drop_database().await;
}

/// An app that parks a refused event after three tries (0.7 s of backoff).
async fn parking_soon(backend: Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, |db| {
        let mut s = settings(db);
        s.projector_max_attempts = 3;
        s
    })
    .await
}

async fn schedule_view(app: &TestApp) -> Value {
    let all = app.get_json("/v1/projections").await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "schedule")
        .expect("the schedule is listed")
        .clone()
}

async fn schedule_until(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let view = schedule_view(app).await;
        if check(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {}", schedule_view(app).await);
}

/// The schedule runs on the shared projection store: it parks what it cannot
/// read, rebuilds beside the live version and switches, and skips, through the
/// same endpoints as the inbox.
async fn the_schedule_parks_rebuilds_and_skips_like_any_projection(app: &TestApp) {
    let (poisoned, _) = app
        .create(&due_in("sched-fi", "poisoned", Duration::from_secs(4)))
        .await;
    let (healthy, _) = app
        .create(&due_in("sched-fi", "healthy", Duration::from_secs(4)))
        .await;
    // A cancellation no release can read: the schedule cannot tell whether
    // the delivery still stands.
    app.append_raw(
        &poisoned,
        3,
        "NotificationCancelled",
        json!({"NotificationCancelled": {"cancelled_at": 7}}),
    )
    .await;
    schedule_until(app, "the schedule parks it", |v| v["parked_events"] == 1).await;
    let parked = app.get_json("/v1/projections/schedule/parked").await;
    assert_eq!(parked["total"], 1, "{parked}");
    let item = &parked["items"][0];
    assert_eq!(item["aggregate_id"], poisoned.as_str());
    assert!(
        item["error"].as_str().unwrap().contains("RFC 3339"),
        "{item}"
    );

    let started = app.post_empty("/v1/projections/schedule/rebuild").await;
    assert_eq!(started.status(), 202);
    let rebuilt = schedule_until(app, "the rebuild switches", |v| {
        v["version"] == 2 && v["rebuild"]["status"] == "done"
    })
    .await;
    assert_eq!(
        rebuilt["parked_events"], 1,
        "the rebuild parks it too: {rebuilt}"
    );
    let inbox = app.get_json("/v1/projections").await;
    assert_eq!(inbox[0]["name"], "inbox");
    assert_eq!(inbox[0]["version"], 1, "only the schedule was rebuilt");

    // The rebuilt schedule still fires what is due.
    let n = settled(app, &healthy, Duration::from_secs(15)).await;
    assert_eq!(n["lifecycle"], "delivered", "{n}");

    if let Some(db) = &app.db {
        // The CLI finds the schedule by name too.
        let url = db.url.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
                .args(["parked", "list", "--projection", "schedule"])
                .env("DATABASE_URL", url)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(listed.lines().count(), 1, "{listed}");
        assert!(listed.contains(poisoned.as_str()), "{listed}");
    }

    let cursor = item["cursor"].as_str().unwrap();
    let skipped = app
        .post_empty(&format!("/v1/projections/schedule/parked/{cursor}/skip"))
        .await;
    assert_eq!(skipped.status(), 200);
    let report: Value = skipped.json().await.unwrap();
    assert_eq!(report["still_parked"], 0, "{report}");
    let unknown = app.post_empty("/v1/projections/nope/rebuild").await;
    assert_eq!(
        unknown.status(),
        404,
        "names outside the registry are refused"
    );
}

mod parking {
    use super::*;
    on_both_backends!(
        spawned_by super::parking_soon;
        the_schedule_parks_rebuilds_and_skips_like_any_projection,
    );
}
