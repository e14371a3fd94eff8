//! The global log in PostgreSQL: commit order, nothing skipped, and what a
//! writer sees when it keeps losing races.

use std::collections::HashMap;

use futures_util::future::join_all;
use serde_json::Value;
use tidings::storage::postgres::{connect, PgEventLog};
use tidings::storage::{EventLog, Position};

use crate::helpers::{
    notification_for, postgres_server_url, settings, skipped, Backend, TestApp, TestDb,
};

async fn postgres_app(test: &str, attempts: u32) -> Option<TestApp> {
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return None;
    };
    let db = TestDb::create(&server).await;
    Some(
        TestApp::start(Backend::Postgres, Some(db), move |db| {
            let mut s = settings(db);
            s.command_attempts = attempts;
            s
        })
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_commits_late_is_handed_out_before_later_ones_never_skipped() {
    let Some(app) = postgres_app("global_log::an_event_that_commits_late", 10).await else {
        return;
    };
    let db = app.db.clone().unwrap();
    let held = db.client().await;
    // This transaction takes its global_position first and commits last.
    held.batch_execute(
        "BEGIN;
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Probe', 'held', 1, 'Held', '1.0', '{}', '{}');",
    )
    .await
    .unwrap();
    let (id, _) = app
        .create(&notification_for("rita", "after the held one"))
        .await;

    let pools = connect(&db.url, crate::helpers::limits()).await.unwrap();
    let log = PgEventLog::new(pools.deadpool.clone());
    let page = log.read_after(Position::START, 100).await.unwrap();
    assert!(
        page.is_empty(),
        "nothing is handed out while an earlier transaction may still commit: {page:?}"
    );

    held.batch_execute("COMMIT").await.unwrap();
    // Transactions of other tests on the same server hold the horizon back
    // for a moment too (it is cluster-wide): wait until it has passed ours.
    let mut page = Vec::new();
    for _ in 0..200 {
        page = log.read_after(Position::START, 100).await.unwrap();
        if page.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let order: Vec<(&str, &str)> = page
        .iter()
        .map(|e| (e.aggregate_id.as_str(), e.event_type.as_str()))
        .collect();
    assert_eq!(
        order,
        vec![
            ("held", "Held"),
            (id.as_str(), "NotificationCreated"),
            (id.as_str(), "NotificationDelivered"),
        ]
    );
    assert!(page.windows(2).all(|w| w[0].position < w[1].position));
    // Paging by the checkpoint pair sees each event exactly once.
    let mut after = Position::START;
    let mut one_by_one = Vec::new();
    loop {
        let page = log.read_after(after, 1).await.unwrap();
        let Some(e) = page.first() else { break };
        after = e.position;
        one_by_one.push(e.clone());
    }
    assert_eq!(one_by_one, page);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_keeps_conflicting_gets_409_and_records_nothing() {
    let Some(app) = postgres_app("global_log::a_command_that_keeps_conflicting_gets_409", 1).await
    else {
        return;
    };
    let (id, _) = app.create(&notification_for("sam", "hot")).await;
    let mut conflicts = 0;
    let mut changed: HashMap<String, i64> = HashMap::new();
    let mut last = String::new();
    for _round in 0..20 {
        let answers = join_all((0..32).map(|i| {
            let action = if i % 2 == 0 { "read" } else { "unread" };
            let url = app.url(&format!("/v1/notifications/{id}/{action}"));
            let client = app.client.clone();
            async move {
                let resp = client.post(url).send().await.unwrap();
                (
                    action,
                    resp.status().as_u16(),
                    resp.json::<Value>().await.unwrap(),
                )
            }
        }))
        .await;
        for (action, status, body) in answers {
            match status {
                200 => {
                    if body["changed"] == true {
                        *changed.entry(action.to_owned()).or_default() += 1;
                    }
                    last = last.max(body["cursor"].as_str().unwrap().to_owned());
                }
                409 => {
                    assert_eq!(body["type"], "urn:tidings:problem:concurrent-modification");
                    conflicts += 1;
                }
                other => panic!("{action} answered {other}: {body}"),
            }
        }
        if conflicts > 0 {
            break;
        }
    }
    assert!(
        conflicts > 0,
        "with one attempt, racing commands must conflict"
    );
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={last}"))
        .await;
    let flips =
        changed.get("read").copied().unwrap_or(0) - changed.get("unread").copied().unwrap_or(0);
    assert_eq!(
        flips,
        i64::from(n["status"] == "read"),
        "a 409 recorded nothing"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_report_how_far_behind_they_are() {
    let Some(app) =
        postgres_app("global_log::projections_report_how_far_behind_they_are", 10).await
    else {
        return;
    };
    let (_, cursor) = app.create(&notification_for("pia", "first")).await;
    app.get_json(&format!("/v1/users/pia/inbox?min_position={cursor}"))
        .await;
    let caught_up = app.get_json("/v1/projections").await;
    assert_eq!(caught_up[0]["name"], "inbox");
    assert_eq!(caught_up[0]["status"], "live");
    assert_eq!(caught_up[0]["events_behind"], 0);
    assert_eq!(caught_up[0]["cursor"], cursor.as_str());
    assert_eq!(caught_up[0]["leader"], true);

    // An open transaction holds the projector back: the next create waits.
    let held = app.db.as_ref().unwrap().client().await;
    held.batch_execute(
        "BEGIN;
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Probe', 'held', 1, 'Held', '1.0', '{}', '{}');",
    )
    .await
    .unwrap();
    app.create(&notification_for("pia", "second")).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let behind = app.get_json("/v1/projections").await;
    assert_eq!(behind[0]["status"], "catching_up");
    assert_eq!(behind[0]["events_behind"], 2, "created and delivered");
    assert!(behind[0]["oldest_unprocessed_age_ms"].as_u64().unwrap() >= 250);
    held.batch_execute("COMMIT").await.unwrap();
    for _ in 0..100 {
        let now = app.get_json("/v1/projections").await;
        if now[0]["status"] == "live" {
            assert_eq!(now[0]["events_behind"], 0);
            app.cleanup().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the projection never caught up");
}

/// The log keeps its newest events for the next projector, and a read that
/// starts inside them still goes on to what PostgreSQL has beyond them: a
/// page is short only where the log ends (`has_more` depends on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_through_the_kept_tail_goes_on_past_it() {
    let test = "global_log::a_read_through_the_kept_tail_goes_on_past_it";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    db.migrate().await;
    let pools = connect(&db.url, crate::helpers::limits()).await.unwrap();
    let log = PgEventLog::new(pools.deadpool.clone());
    let created = |n: usize| format!("00000000-0000-7000-8000-{n:012}");
    for n in 0..3 {
        db.append_raw(&created(n), 1, "NotificationSeen", serde_json::json!({}))
            .await;
    }
    // Until every transaction older than the appends has ended (other
    // tests' too), the log rightly hands out less: wait for that, reading
    // through a log that keeps no tail.
    let fresh = PgEventLog::new(pools.deadpool.clone());
    let settled = |n: usize| {
        let fresh = &fresh;
        async move {
            for _ in 0..500 {
                if fresh.read_after(Position::START, 10).await.unwrap().len() == n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    settled(3).await;
    let kept = log.read_after(Position::START, 10).await.unwrap();
    assert_eq!(kept.len(), 3, "the tail now holds these three");
    for n in 3..6 {
        db.append_raw(&created(n), 1, "NotificationSeen", serde_json::json!({}))
            .await;
    }
    settled(6).await;
    let page = log.read_after(kept[0].position, 10).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.aggregate_id.as_str()).collect();
    let want: Vec<String> = (1..6).map(created).collect();
    assert_eq!(ids, want, "two from the tail, then three from PostgreSQL");
    let page = log.read_after(kept[0].position, 1).await.unwrap();
    assert_eq!(page.len(), 1, "at most the limit");
    drop((log, fresh));
    drop(pools);
    db.drop_database().await;
}
