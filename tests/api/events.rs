//! The event log over HTTP and the CLI: audit, global log, NDJSON export,
//! export/import between deployments.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::helpers::{
    max_cursor, notification_for, postgres_server_url, skipped, Backend, TestApp, TestDb,
};

on_both_backends!(
    a_notifications_history_lists_every_event_in_order_with_who_asked,
    the_global_log_pages_in_commit_order_and_filters_by_type,
    the_ndjson_export_streams_every_event_in_order,
);

async fn a_notifications_history_lists_every_event_in_order_with_who_asked(app: &TestApp) {
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .header("X-Request-Id", "create-1")
        .header("X-Actor", "billing")
        .json(&notification_for("una", "Invoice"))
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (action, request) in [("read", "read-1"), ("archive", "archive-1")] {
        let resp = app
            .client
            .post(app.url(&format!("/v1/notifications/{id}/{action}")))
            .header("X-Request-Id", request)
            .header("X-Correlation-Id", "flow-7")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    app.client
        .delete(app.url(&format!("/v1/notifications/{id}")))
        .header("X-Request-Id", "delete-1")
        .send()
        .await
        .unwrap();

    let page = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    let events = page["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "NotificationCreated",
            "NotificationDelivered",
            "NotificationSeen",
            "NotificationRead",
            "NotificationArchived",
            "NotificationDeleted"
        ],
        "every event, in order, deleted notifications too"
    );
    let requests: Vec<&str> = events
        .iter()
        .map(|e| e["metadata"]["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        requests,
        [
            "create-1",
            "create-1",
            "read-1",
            "read-1",
            "archive-1",
            "delete-1"
        ]
    );
    // No credentials are configured: the principal is anonymous, and
    // X-Actor (honoured where every right is held) is whom it acted for.
    assert_eq!(events[0]["metadata"]["actor"], "anonymous");
    assert_eq!(events[0]["metadata"]["on_behalf_of"], "billing");
    assert_eq!(events[2]["metadata"]["correlation_id"], "flow-7");
    assert_eq!(events[3]["metadata"]["command"], "MarkRead");
    assert_eq!(events[0]["data"]["recipient"], "una");
    assert_eq!(events[0]["version"], "1.0");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence"], i as i64 + 1);
        assert!(e["recorded_at"].as_str().unwrap().ends_with('Z'));
    }
    let cursors: Vec<&str> = events
        .iter()
        .map(|e| e["cursor"].as_str().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(page["next_after"], json!(null));

    // Pages of two, chained by next_after.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get_json(&format!(
                "/v1/notifications/{id}/events?limit=2&after={after}"
            ))
            .await;
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(&paged, events);

    let unknown = app
        .get(&format!(
            "/v1/notifications/{}/events",
            uuid::Uuid::new_v4()
        ))
        .await;
    assert_eq!(unknown.status(), 404);
    let bad = app
        .get(&format!("/v1/notifications/{id}/events?limit=0"))
        .await;
    assert_eq!(bad.status(), 422);
}

async fn seed(app: &TestApp, user: &str) -> (usize, String) {
    let mut last = String::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let (id, c) = app.create(&notification_for(user, &format!("n{i}"))).await;
        ids.push(id);
        last = c;
    }
    for id in &ids[..10] {
        last = max_cursor([
            last.as_str(),
            app.command(id, "read").await["cursor"].as_str().unwrap(),
        ]);
    }
    // Once the projector has applied `last`, the log reader can hand out
    // everything up to it: transactions of other tests on the same server
    // no longer hold the (cluster-wide) horizon below it.
    app.get_json(&format!("/v1/users/{user}/inbox?min_position={last}"))
        .await;
    // 30 creates of 2 events, 10 reads of 2 events (seen, read).
    (80, last)
}

async fn the_global_log_pages_in_commit_order_and_filters_by_type(app: &TestApp) {
    let (total, last) = seed(app, "vic").await;
    let mut events = Vec::new();
    let mut after = String::new();
    for _ in 0..100 {
        let path = if after.is_empty() {
            "/v1/events?limit=7".to_owned()
        } else {
            format!("/v1/events?limit=7&after={after}")
        };
        let page = app.get_json(&path).await;
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        after = page["next_cursor"].as_str().unwrap().to_owned();
        if page["has_more"] == false && after >= last {
            break;
        }
    }
    assert_eq!(events.len(), total);
    let cursors: Vec<&str> = events
        .iter()
        .map(|e| e["cursor"].as_str().unwrap())
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "commit order, once each"
    );
    assert_eq!(events[0]["type"], "NotificationCreated");
    assert!(events[0]["data"]["recipient"].is_string(), "{}", events[0]);
    // The global log shows an event in the audit's shape.
    let audit = app
        .get_json(&format!(
            "/v1/notifications/{}/events",
            events[0]["aggregate_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(audit["events"][0], events[0]);

    let reads = app
        .get_json("/v1/events?type=NotificationRead&limit=1000")
        .await;
    assert_eq!(reads["events"].as_array().unwrap().len(), 10);
    let bad = app.get("/v1/events?after=nope").await;
    assert_eq!(bad.status(), 422);
}

async fn the_ndjson_export_streams_every_event_in_order(app: &TestApp) {
    let (total, _) = seed(app, "wes").await;
    let resp = app.get("/v1/events/export").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON event"))
        .collect();
    assert_eq!(lines.len(), total);
    let paged = app.get_json("/v1/events?limit=1000").await;
    assert_eq!(&lines, paged["events"].as_array().unwrap());
    let after = lines[39]["cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/v1/events/export?after={after}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(rest.lines().count(), total - 40);
}

fn tidings(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    cmd
}

fn strip_cursors(items: &mut [Value]) {
    for item in items {
        item["cursor"] = Value::Null;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_moves_a_log_to_another_deployment() {
    let test = "events::export_then_import_moves_a_log_to_another_deployment";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let app = TestApp::spawn(Backend::Postgres, test)
        .await
        .expect("postgres");
    let (total, _) = seed(&app, "xia").await;
    let source = app.db.clone().expect("postgres").url;

    let export = tidings(&source)
        .args(["events", "export"])
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let ndjson = String::from_utf8(export.stdout).unwrap();
    assert_eq!(ndjson.lines().count(), total);

    let target = TestDb::create(&server).await;
    target.migrate().await;
    let import = |url: &str, input: &str, flags: &[&str]| {
        let mut child = tidings(url)
            .args(["events", "import"])
            .args(flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let count = |db: &TestDb| {
        let db = db.clone();
        async move {
            db.client()
                .await
                .query_one("SELECT count(*) FROM events", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let (ok, log) = import(&target.url, &ndjson, &[]);
    assert!(ok, "{log}");
    assert!(log.contains(&format!("imported={total}")), "{log}");
    // Again: everything is already there, nothing changes.
    let (ok, log) = import(&target.url, &ndjson, &[]);
    assert!(ok, "a second import of the same log is a no-op: {log}");
    assert!(
        log.contains(&format!("skipped={total}")) && log.contains("imported=0"),
        "{log}"
    );
    assert_eq!(count(&target).await, total as i64);

    // A conflicting event (same place, other data) is refused, and nothing changes.
    let mut lines: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["data"]["title"] = json!("rewritten");
    let tampered: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (ok, log) = import(&target.url, &tampered, &[]);
    assert!(!ok);
    assert!(
        log.contains("line 1") && log.contains("different event"),
        "{log}"
    );
    assert_eq!(count(&target).await, total as i64);

    // The log goes on at the source; `export --after` on top of the import
    // brings the rest, with streams that began in the first part.
    let last_exported = lines.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let first_id = lines[0]["aggregate_id"].as_str().unwrap().to_owned();
    let (fresh, _) = app.create(&notification_for("xia", "later")).await;
    let later = app.command(&first_id, "archive").await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    app.get_json(&format!("/v1/users/xia/inbox?min_position={later}"))
        .await;
    let mut before = app.whole_inbox("xia", 100, &later).await;
    let rest = tidings(&source)
        .args(["events", "export", "--after", &last_exported])
        .output()
        .unwrap();
    let rest = String::from_utf8(rest.stdout).unwrap();
    assert_eq!(rest.lines().count(), 3, "{rest}");
    assert!(rest.contains(&fresh));

    // Alone, into an empty store, that part is refused: its archive event
    // belongs to a stream whose first events are not in it ...
    let elsewhere = TestDb::create(&server).await;
    elsewhere.migrate().await;
    let (ok, log) = import(&elsewhere.url, &rest, &[]);
    assert!(!ok);
    assert!(
        log.contains("--partial") && log.contains(&first_id),
        "{log}"
    );
    assert_eq!(count(&elsewhere).await, 0);
    // ... unless the operator says it is part of a log.
    let (ok, log) = import(&elsewhere.url, &rest, &["--partial"]);
    assert!(ok, "{log}");
    assert_eq!(count(&elsewhere).await, 3);
    elsewhere.drop_database().await;

    // On top of the first import it goes on where the store has it.
    let (ok, log) = import(&target.url, &rest, &[]);
    assert!(ok, "{log}");
    assert_eq!(count(&target).await, total as i64 + 3);

    // A deployment on the imported log rebuilds the same inbox.
    let total = total + 3;
    let moved = TestApp::start(Backend::Postgres, Some(target), crate::helpers::settings).await;
    // The log hands out events only below the cluster's oldest running
    // transaction, which another test's may hold back for a moment.
    let mut head = moved.get_json("/v1/events?limit=1000").await;
    for _ in 0..200 {
        if head["events"].as_array().unwrap().len() == total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        head = moved.get_json("/v1/events?limit=1000").await;
    }
    assert_eq!(head["events"].as_array().unwrap().len(), total);
    let newest = head["events"].as_array().unwrap().last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut after = moved.whole_inbox("xia", 100, &newest).await;
    strip_cursors(&mut before);
    strip_cursors(&mut after);
    assert_eq!(after, before);

    // A broken line fails the whole import and stores nothing.
    let broken_target = TestDb::create(&server).await;
    broken_target.migrate().await;
    let mut lines: Vec<&str> = ndjson.lines().collect();
    lines.insert(5, "{not json");
    let mut child = tidings(&broken_target.url)
        .args(["events", "import"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.join("\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 6"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count: i64 = broken_target
        .client()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "all or nothing");
    broken_target.drop_database().await;
    moved.cleanup().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_event_shape_reads_as_the_current_one_everywhere() {
    let test = "events::an_old_event_shape_reads_as_the_current_one_everywhere";
    if postgres_server_url().is_none() {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    }
    let app = TestApp::spawn(Backend::Postgres, test)
        .await
        .expect("postgres");
    let id = uuid::Uuid::now_v7().to_string();
    let client = app.db.as_ref().unwrap().client().await;
    // Written by a release before several channels: one `channel`, an `urgent` flag.
    let created = json!({"NotificationCreated": {
        "id": id, "recipient": "yara", "category": "comment", "title": "Old", "body": "shape",
        "channel": "in_app", "urgent": true, "created_at": "2025-06-01T10:00:00Z"
    }});
    let delivered = json!({"NotificationDelivered": {
        "channel": "in_app", "delivered_at": "2025-06-01T10:00:00Z"
    }});
    client
        .execute(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('Notification', $1, 1, 'NotificationCreated', '0.9', $2, '{}'),
                    ('Notification', $1, 2, 'NotificationDelivered', '1.0', $3, '{}')",
            &[&id, &created, &delivered],
        )
        .await
        .unwrap();

    // The aggregate loads it (a command works) ...
    let read = app.command(&id, "read").await;
    assert_eq!(read["notification"]["priority"], "urgent");
    assert_eq!(read["notification"]["channels"], json!(["in_app"]));
    // ... the projection folded it ...
    let cursor = read["cursor"].as_str().unwrap();
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(n["priority"], "urgent");
    assert_eq!(n["status"], "read");
    // ... and the audit and the export show the current shape.
    let audit = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    assert_eq!(audit["events"][0]["version"], "1.0");
    assert_eq!(audit["events"][0]["data"]["channels"], json!(["in_app"]));
    let export = app.get("/v1/events/export").await.text().await.unwrap();
    let first: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(first["version"], "1.0");
    assert_eq!(first["data"]["priority"], "urgent");
    assert!(first["data"].get("urgent").is_none());
    app.cleanup().await;
}
