//! Poison events: parked after retries so the projector goes on, the events
//! behind them held, listed, re-driven, skipped; rebuilds and time travel
//! agree with the live read model.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{notification_for, settings, Backend, TestApp};
use crate::stream_client::Subscriber;

/// An app that parks a refused event after three tries (0.7 s of backoff).
async fn spawn(backend: Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, |db| {
        let mut s = settings(db);
        s.projector_max_attempts = 3;
        s
    })
    .await
}

on_both_backends!(
    spawned_by super::spawn;
    a_poison_event_is_parked_with_what_follows_it_and_a_skip_applies_the_rest,
    a_rebuild_parks_what_the_live_projection_parked,
);

/// A payload no release of tidings reads (written by a newer one, say).
fn snoozed() -> Value {
    json!({"NotificationSnoozed": {"until": "2030-01-01T00:00:00Z"}})
}

fn read_event() -> Value {
    json!({"NotificationRead": {"read_at": "2030-01-01T00:00:01Z"}})
}

fn archived_event() -> Value {
    json!({"NotificationArchived": {"archived_at": "2030-01-01T00:00:02Z"}})
}

/// Creates a notification for `user` and waits until the inbox has it;
/// returns (id, how many events its stream has).
async fn created(app: &TestApp, user: &str, title: &str) -> (String, i64) {
    let (id, cursor) = app.create(&notification_for(user, title)).await;
    app.get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    let audit = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    (id, audit["events"].as_array().unwrap().len() as i64)
}

/// Waits until the inbox projection reports `n` parked events; returns it.
async fn parked_reaches(app: &TestApp, n: u64) -> Value {
    for _ in 0..300 {
        let projections = app.get_json("/v1/projections").await;
        if projections[0]["parked_events"] == n {
            return projections[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "parked_events never reached {n}: {}",
        app.get_json("/v1/projections").await
    );
}

async fn parked(app: &TestApp) -> Vec<Value> {
    app.get_json("/v1/projections/inbox/parked").await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// A command through HTTP that answers `status` with a problem; returns it.
async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    resp.json().await.unwrap()
}

async fn a_poison_event_is_parked_with_what_follows_it_and_a_skip_applies_the_rest(app: &TestApp) {
    let (a, n) = created(app, "pz", "poisoned").await;
    app.append_raw(&a, n + 1, "NotificationSnoozed", snoozed())
        .await;
    app.append_raw(&a, n + 2, "NotificationRead", read_event())
        .await;
    // After three tries the bad event is parked and the one behind it held.
    parked_reaches(app, 2).await;

    // Other notifications go on (this create reaches the inbox); the
    // poisoned one stays as it was.
    let (b, _) = created(app, "pz", "fine").await;
    assert_eq!(
        app.get_json(&format!("/v1/notifications/{b}")).await["status"],
        "unread"
    );
    assert_eq!(
        app.get_json(&format!("/v1/notifications/{a}")).await["status"],
        "unread"
    );

    let items = parked(app).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let (cause, held) = (&items[0], &items[1]);
    assert_eq!(cause["aggregate_id"], a.as_str());
    assert_eq!(cause["sequence"], n + 1);
    assert_eq!(cause["event_type"], "NotificationSnoozed");
    assert_eq!(cause["attempts"], 3);
    assert_eq!(cause["held_behind"], Value::Null);
    assert!(
        cause["error"]
            .as_str()
            .unwrap()
            .contains("unknown variant `NotificationSnoozed`"),
        "the error says why: {cause}"
    );
    assert_eq!(held["event_type"], "NotificationRead");
    assert_eq!(held["attempts"], 0);
    assert_eq!(held["held_behind"], cause["cursor"]);

    // What arrives later for that notification waits behind it too.
    app.append_raw(&a, n + 3, "NotificationArchived", archived_event())
        .await;
    created(app, "pz", "later").await;
    parked_reaches(app, 3).await;

    // A re-drive without a fix changes nothing but the count of tries.
    let resp = app.post_empty("/v1/projections/inbox/parked/redrive").await;
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report, json!({"applied": 0, "still_parked": 3}));
    assert_eq!(parked(app).await[0]["attempts"], 4);

    // Bad requests are answers and change nothing.
    let bad = app
        .post_empty("/v1/projections/inbox/parked/nonsense/skip")
        .await;
    assert!(problem(bad, 422).await["detail"]
        .as_str()
        .unwrap()
        .contains("cursor"));
    let not_parked = format!("/v1/projections/inbox/parked/{}/skip", "0".repeat(31) + "1");
    problem(app.post_empty(&not_parked).await, 404).await;
    problem(
        app.post_empty("/v1/projections/nope/parked/redrive").await,
        404,
    )
    .await;
    problem(app.get("/v1/projections/nope/parked").await, 404).await;
    problem(app.get("/v1/projections/inbox/parked?limit=0").await, 422).await;
    problem(app.get("/v1/projections/inbox/parked?after=zz").await, 422).await;
    assert_eq!(parked(app).await.len(), 3);

    // Paging the list.
    let first = app.get_json("/v1/projections/inbox/parked?limit=2").await;
    assert_eq!(first["total"], 3);
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = first["next_cursor"].as_str().unwrap();
    let rest = app
        .get_json(&format!("/v1/projections/inbox/parked?after={next}"))
        .await;
    assert_eq!(rest["items"][0]["event_type"], "NotificationArchived");
    assert_eq!(rest["next_cursor"], Value::Null);

    // Skipping the bad event applies what waited behind it, live to subscribers.
    let mut sub = Subscriber::connect(app, &format!("topics=notification:{a}")).await;
    sub.expect("subscribed").await;
    let cause_cursor = cause["cursor"].as_str().unwrap();
    let resp = app
        .post_empty(&format!("/v1/projections/inbox/parked/{cause_cursor}/skip"))
        .await;
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report, json!({"applied": 2, "still_parked": 0}));
    let update = sub.update().await;
    assert_eq!(update["topic"], format!("notification:{a}"));
    assert_eq!(update["kind"], "changed");
    assert_eq!(update["data"]["status"], "read");
    assert_eq!(update["data"]["archived"], true);
    sub.close().await;
    let now = app.get_json(&format!("/v1/notifications/{a}")).await;
    assert_eq!(
        (&now["status"], &now["archived"]),
        (&json!("read"), &json!(true))
    );
    assert_eq!(
        now, update["data"],
        "the update is the row as REST returns it"
    );
    assert_eq!(parked_reaches(app, 0).await["parked_events"], 0);
    problem(
        app.post_empty(&format!("/v1/projections/inbox/parked/{cause_cursor}/skip"))
            .await,
        404,
    )
    .await;

    // The log keeps every event, the skipped one too.
    let audit = app.get_json(&format!("/v1/notifications/{a}/events")).await;
    let types: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types[types.len() - 3..],
        [
            "NotificationSnoozed",
            "NotificationRead",
            "NotificationArchived"
        ]
    );

    // Time travel and a rebuild pass the skipped event over as the live model did.
    let newest = app.get_json("/v1/events?limit=1000").await["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let then = app
        .get_json(&format!("/v1/users/pz/inbox?archived=true&as_of={newest}"))
        .await;
    assert_eq!(then["items"][0]["id"], a.as_str());
    assert_eq!(then["items"][0]["status"], "read");
    let before = app.whole_inbox("pz", 100, &newest).await;
    let after = rebuild_and_wait(app).await;
    assert_eq!(after["parked_events"], 0);
    assert_eq!(app.whole_inbox("pz", 100, &newest).await, before);
    let archived = app.get_json("/v1/users/pz/inbox?archived=true").await;
    assert_eq!(archived["items"][0]["status"], "read");
}

async fn rebuild_and_wait(app: &TestApp) -> Value {
    let resp = app.post_empty("/v1/projections/inbox/rebuild").await;
    assert_eq!(resp.status(), 202);
    for _ in 0..600 {
        let projections = app.get_json("/v1/projections").await;
        match projections[0]["rebuild"]["status"].as_str() {
            Some("done") => return projections[0].clone(),
            Some("failed") => panic!("the rebuild failed: {projections}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the rebuild did not finish within 30 s");
}

/// Which events are parked, behind what, and why.
fn what_and_why(items: &[Value]) -> Vec<[Value; 3]> {
    items
        .iter()
        .map(|p| {
            [
                p["cursor"].clone(),
                p["held_behind"].clone(),
                p["error"].clone(),
            ]
        })
        .collect()
}

async fn a_rebuild_parks_what_the_live_projection_parked(app: &TestApp) {
    let (a, n) = created(app, "rp", "poisoned").await;
    app.append_raw(&a, n + 1, "NotificationSnoozed", snoozed())
        .await;
    app.append_raw(&a, n + 2, "NotificationRead", read_event())
        .await;
    parked_reaches(app, 2).await;
    let (_, _) = created(app, "rp", "fine").await;
    let live = what_and_why(&parked(app).await);
    let before = app.get_json("/v1/users/rp/inbox").await;

    let after = rebuild_and_wait(app).await;
    assert_eq!(after["version"], 2);
    assert_eq!(after["parked_events"], 2);
    let rebuilt = parked(app).await;
    assert_eq!(
        what_and_why(&rebuilt),
        live,
        "the rebuild parked the same events for the same reasons"
    );
    assert_eq!(rebuilt[0]["attempts"], 1, "a rebuild tries once and parks");
    assert_eq!(app.get_json("/v1/users/rp/inbox").await, before);

    let resp = app.post_empty("/v1/projections/inbox/parked/redrive").await;
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report, json!({"applied": 0, "still_parked": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parked_command_lists_redrives_and_skips_and_waits_out_a_rebuild() {
    let test = "parked::the_parked_command_lists_redrives_and_skips_and_waits_out_a_rebuild";
    let Some(app) = spawn(Backend::Postgres, test).await else {
        return;
    };
    let (a, n) = created(&app, "cli", "poisoned").await;
    app.append_raw(&a, n + 1, "NotificationSnoozed", snoozed())
        .await;
    app.append_raw(&a, n + 2, "NotificationRead", read_event())
        .await;
    parked_reaches(&app, 2).await;
    let url = app.db.as_ref().unwrap().url.clone();
    let tidings = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, listed, err) = tidings(&["parked", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        parked(&app).await,
        "the CLI lists what the API lists"
    );

    // While a rebuild (or another re-drive) holds the maintenance lock,
    // re-drives and skips are refused, not queued behind it.
    let holder = app.db.as_ref().unwrap().client().await;
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('tidings:rebuild:inbox', 0))",
            &[],
        )
        .await
        .unwrap();
    let busy = problem(
        app.post_empty("/v1/projections/inbox/parked/redrive").await,
        409,
    )
    .await;
    assert!(
        busy["detail"].as_str().unwrap().contains("rebuild"),
        "{busy}"
    );
    let (ok, _, err) = tidings(&["parked", "redrive"]);
    assert!(!ok && err.contains("rebuild"), "{err}");
    drop(holder);

    let (ok, report, err) = tidings(&["parked", "redrive"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report, json!({"applied": 0, "still_parked": 2}));

    let (ok, _, err) = tidings(&["parked", "skip", "--cursor", "nonsense"]);
    assert!(!ok && err.contains("--cursor"), "{err}");
    let cursor = lines[0]["cursor"].as_str().unwrap();
    let (ok, report, err) = tidings(&["parked", "skip", "--cursor", cursor]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report, json!({"applied": 1, "still_parked": 0}));
    assert_eq!(
        app.get_json(&format!("/v1/notifications/{a}")).await["status"],
        "read"
    );
    let skipped_by: String = app
        .db
        .as_ref()
        .unwrap()
        .client()
        .await
        .query_one("SELECT skipped_by FROM skipped_events", &[])
        .await
        .unwrap()
        .get(0);
    assert!(skipped_by.contains("CLI"), "{skipped_by}");
    app.cleanup().await;
}

async fn leads(app: &TestApp) -> bool {
    app.get_json("/health/ready").await["inbox_leader"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_are_one_list_across_instances_and_a_new_leader_keeps_parking() {
    let test = "parked::parked_events_are_one_list_across_instances_and_a_new_leader_keeps_parking";
    let Some(server) = crate::helpers::postgres_server_url() else {
        crate::helpers::skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = crate::helpers::TestDb::create(&server).await;
    let start = || async {
        let mut app = TestApp::start(Backend::Postgres, Some(db.clone()), |db| {
            let mut s = settings(db);
            s.projector_max_attempts = 3;
            s.election_interval_ms = 200;
            s.stream_poll_ms = 100;
            s
        })
        .await;
        app.db = None; // dropped once, at the end
        app
    };
    let mut a = start().await;
    for _ in 0..100 {
        if leads(&a).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leads(&a).await, "the first instance leads");
    let b = start().await;

    // Parked on the leader, listed by the standby.
    let (x, n) = created(&a, "multi", "x").await;
    db.append_raw(&x, n + 1, "NotificationSnoozed", snoozed())
        .await;
    db.append_raw(&x, n + 2, "NotificationRead", read_event())
        .await;
    parked_reaches(&b, 2).await;

    // A skip on the standby reaches the leader's subscribers.
    let mut sub = Subscriber::connect(&a, &format!("topics=notification:{x}")).await;
    sub.expect("subscribed").await;
    let cause = parked(&b).await[0]["cursor"].as_str().unwrap().to_owned();
    let resp = b
        .post_empty(&format!("/v1/projections/inbox/parked/{cause}/skip"))
        .await;
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report, json!({"applied": 1, "still_parked": 0}));
    let update = sub.update().await;
    assert_eq!(update["data"]["status"], "read");
    sub.close().await;

    // The leader dies; the standby takes over and parks what it cannot apply,
    // holding back what follows it.
    a.kill().await;
    let mut took_over = false;
    for _ in 0..100 {
        if leads(&b).await {
            took_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(took_over, "the standby took over");
    let (y, m) = created(&b, "multi", "y").await;
    db.append_raw(&y, m + 1, "NotificationSnoozed", snoozed())
        .await;
    db.append_raw(&y, m + 2, "NotificationRead", read_event())
        .await;
    parked_reaches(&b, 2).await;
    let items = parked(&b).await;
    assert_eq!(items[0]["aggregate_id"], y.as_str());
    assert_eq!(items[0]["attempts"], 3);
    assert_eq!(items[1]["held_behind"], items[0]["cursor"]);
    assert_eq!(
        b.get_json(&format!("/v1/notifications/{y}")).await["status"],
        "unread"
    );
    b.cleanup().await;
    db.drop_database().await;
}
