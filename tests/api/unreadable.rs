//! Stored events that cannot be read back are bad events, never outages:
//! the projector parks them and goes on, the audit, the log and the export
//! show them with the error, and commands on their notification answer a
//! problem that names the event.

use std::time::Duration;

use serde_json::{json, Value};

use crate::errors::expect_problem;
use crate::helpers::{
    limits, notification_for, postgres_server_url, settings, skipped, TestApp, TestDb,
};

on_both_backends!(
    spawned_by super::spawn;
    a_command_on_a_notification_with_an_unreadable_event_names_the_event,
);

/// Parks a refused event after two tries.
async fn spawn(backend: crate::helpers::Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, |db| {
        let mut s = settings(db);
        s.projector_max_attempts = 2;
        s
    })
    .await
}

/// JSON text of an object nested `depth` levels deep: `{"a":{"a":...{}}}`.
fn nested(depth: usize) -> String {
    let mut text = String::with_capacity(depth * 6);
    for _ in 0..depth {
        text.push_str("{\"a\":");
    }
    text.push_str("{}");
    for _ in 0..depth {
        text.push('}');
    }
    text
}

fn created_payload(id: &str, recipient: &str, data: &str) -> String {
    format!(
        r#"{{"NotificationCreated": {{"id": "{id}", "recipient": "{recipient}", "category": "comment",
            "title": "deep", "body": "b", "data": {data}, "priority": "normal",
            "channels": ["in_app"], "group_key": null, "deliver_at": null,
            "created_at": "2026-01-01T00:00:00Z"}}}}"#
    )
}

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

async fn a_command_on_a_notification_with_an_unreadable_event_names_the_event(app: &TestApp) {
    let (id, cursor) = app
        .create(&notification_for("ur", "later unreadable"))
        .await;
    app.get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    let events = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    let next = events["events"].as_array().unwrap().len() as i64 + 1;
    app.append_raw(
        &id,
        next,
        "NotificationSnoozed",
        json!({"NotificationSnoozed": {"until": "2030-01-01T00:00:00Z"}}),
    )
    .await;
    let problem = expect_problem(
        app.post_empty(&format!("/v1/notifications/{id}/read"))
            .await,
        409,
        "urn:tidings:problem:unreadable-event",
        "a command on a notification whose history cannot be read",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("event {next} of Notification {id}"))
            && detail.contains("NotificationSnoozed")
            && detail.contains("unknown variant"),
        "the problem names the event and why: {detail}"
    );
    // Other notifications are not held up.
    let (other, _) = app.create(&notification_for("ur", "fine")).await;
    app.command(&other, "read").await;
}

/// PostgreSQL stores JSON deeper than tidings' reader follows (jsonb takes
/// any depth; serde_json stops at 128). Such an event, in the payload or in
/// the metadata, used to stop the projector for everyone as an "outage".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_deep_to_read_back_is_parked_shown_and_named_and_nothing_else_stops() {
    let test = "unreadable::an_event_too_deep_to_read_back_is_parked_shown_and_named_and_nothing_else_stops";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let app = TestApp::start(crate::helpers::Backend::Postgres, Some(db.clone()), |db| {
        let mut s = settings(db);
        s.projector_max_attempts = 2;
        s
    })
    .await;

    let deep_payload = "01a2024f-eced-76cf-8900-aa4e35410001";
    let deep_metadata = "01a2024f-eced-76cf-8900-aa4e35410002";
    db.append_raw_text(
        deep_payload,
        1,
        "NotificationCreated",
        &created_payload(deep_payload, "deep", &nested(200)),
        "{}",
    )
    .await;
    db.append_raw_text(
        deep_metadata,
        1,
        "NotificationCreated",
        &created_payload(deep_metadata, "deep", "{}"),
        &nested(300),
    )
    .await;

    // Everyone else goes on: this create reaches its inbox without a 503.
    let (plain, cursor) = app.create(&notification_for("plain", "still here")).await;
    let inbox = app
        .get_json(&format!("/v1/users/plain/inbox?min_position={cursor}"))
        .await;
    assert_eq!(inbox["items"][0]["id"], plain.as_str());

    // Both unreadable events are parked, with the parser's words.
    parked_reaches(&app, 2).await;
    let parked = app.get_json("/v1/projections/inbox/parked").await;
    let items = parked["items"].as_array().unwrap();
    let errors: Vec<&str> = items.iter().map(|p| p["error"].as_str().unwrap()).collect();
    assert!(
        errors[0].contains("payload does not parse") && errors[0].contains("recursion limit"),
        "{errors:?}"
    );
    assert!(errors[1].contains("metadata does not parse"), "{errors:?}");

    // The audit shows the event as unreadable, with the text as stored.
    let audit = app
        .get_json(&format!("/v1/notifications/{deep_payload}/events"))
        .await;
    let event = &audit["events"][0];
    assert_eq!(event["data"], Value::Null);
    assert!(event["unreadable"]["error"]
        .as_str()
        .unwrap()
        .contains("recursion limit"));
    let stored = event["unreadable"]["payload"].as_str().unwrap();
    assert!(
        stored.contains(r#""recipient": "deep""#) && stored.matches(r#"{"a": "#).count() == 200,
        "the payload as stored: {stored}"
    );

    // The log page and the export carry on past it.
    let log = app.get_json("/v1/events?limit=1000").await;
    let types: Vec<bool> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.get("unreadable").is_some())
        .collect();
    assert_eq!(types.iter().filter(|u| **u).count(), 2, "{log}");
    let export = app.get("/v1/events/export").await.text().await.unwrap();
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 4, "{export}");
    assert!(lines.iter().any(|l| l["aggregate_id"] == plain.as_str()));

    // Time travel folds the recipient's history without failing.
    let as_of = app
        .get_json("/v1/users/deep/inbox?as_of=2100-01-01T00:00:00Z")
        .await;
    assert_eq!(as_of["items"], json!([]));

    // Commands on it name the event instead of failing with a 500.
    for id in [deep_payload, deep_metadata] {
        let problem = expect_problem(
            app.post_empty(&format!("/v1/notifications/{id}/read"))
                .await,
            409,
            "urn:tidings:problem:unreadable-event",
            "a command on an unreadable notification",
        )
        .await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("event 1 of Notification {id}")),
            "{problem}"
        );
    }

    // Exported and imported elsewhere, they arrive exactly as stored.
    let mut exported = Vec::new();
    tidings::transfer::export(&db.url, limits(), None, &mut exported)
        .await
        .expect("the export runs past unreadable events");
    let elsewhere = TestDb::create(&server).await;
    elsewhere.migrate().await;
    tidings::transfer::import(&elsewhere.url, limits(), exported.as_slice(), false)
        .await
        .expect("the import takes unreadable events");
    let stored = |db: TestDb| async move {
        let rows = db
            .client()
            .await
            .query(
                "SELECT aggregate_id, sequence, payload::text, metadata::text FROM events
                  ORDER BY aggregate_id, sequence",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect::<Vec<(String, i64, String, String)>>()
    };
    assert_eq!(stored(db.clone()).await, stored(elsewhere.clone()).await);
    elsewhere.drop_database().await;

    // A rebuild parks them in its own version and switches.
    let resp = app.post_empty("/v1/projections/inbox/rebuild").await;
    assert_eq!(resp.status(), 202);
    for _ in 0..300 {
        let p = app.get_json("/v1/projections").await;
        if p[0]["version"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(parked_reaches(&app, 2).await["version"], 2);
    let after_rebuild = app.get_json("/v1/projections/inbox/parked").await;
    let again: Vec<&str> = after_rebuild["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["error"].as_str().unwrap())
        .collect();
    assert_eq!(
        again, errors,
        "the rebuild refuses them for the same reasons"
    );
    app.cleanup().await;
}
