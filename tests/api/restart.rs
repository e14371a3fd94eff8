//! Stopping and starting again on the same PostgreSQL database keeps
//! everything, and the projector resumes from its checkpoint.

use serde_json::Value;

use crate::helpers::{max_cursor, notification_for, Backend, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_database_keeps_everything() {
    let Some(app) = TestApp::spawn(
        Backend::Postgres,
        "restart::a_restart_on_the_same_database_keeps_everything",
    )
    .await
    else {
        return;
    };
    let mut ids = Vec::new();
    let mut cursors = Vec::new();
    for i in 0..30 {
        let (id, c) = app
            .create(&notification_for("olga", &format!("n{i}")))
            .await;
        ids.push(id);
        cursors.push(c);
    }
    for id in &ids[..10] {
        cursors.push(
            app.command(id, "read").await["cursor"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let last = max_cursor(cursors.iter().map(String::as_str));
    let before = app.whole_inbox("olga", 100, &last).await;

    let app = app.restart().await;
    let after = app.whole_inbox("olga", 100, &last).await;
    assert_eq!(
        after, before,
        "the read model survives the restart unchanged"
    );
    let page = app
        .get_json(&format!("/v1/users/olga/inbox?min_position={last}"))
        .await;
    assert_eq!(
        page["unread_count"], 20,
        "nothing applied twice after the restart"
    );

    // The write side continues each stream where it was.
    let receipt = app.command(&ids[0], "unread").await;
    assert!(receipt["cursor"].as_str().unwrap() > last.as_str());
    let c = receipt["cursor"].as_str().unwrap();
    let page: Value = app
        .get_json(&format!("/v1/users/olga/inbox?min_position={c}"))
        .await;
    assert_eq!(page["unread_count"], 21);

    let db = app.db.clone().expect("postgres");
    let client = db.client().await;
    let checkpoint = client
        .query_one(
            "SELECT tx, seq FROM projection_checkpoints WHERE projection = 'inbox'",
            &[],
        )
        .await
        .unwrap();
    let newest = client
        .query_one(
            "SELECT transaction_id::text::bigint, global_position FROM events
              ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (checkpoint.get::<_, i64>(0), checkpoint.get::<_, i64>(1)),
        (newest.get::<_, i64>(0), newest.get::<_, i64>(1)),
        "the checkpoint is at the newest event"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_loses_no_acknowledged_command() {
    let Some(mut app) = TestApp::spawn(
        Backend::Postgres,
        "restart::a_graceful_stop_loses_no_acknowledged_command",
    )
    .await
    else {
        return;
    };
    // Writers keep going while the app is told to stop.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = app.client.clone();
            let url = app.url("/v1/notifications");
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..200 {
                    let body = notification_for("pete", &format!("w{w} n{i}"));
                    match client.post(&url).json(&body).send().await {
                        Ok(resp) if resp.status() == 201 => {
                            let json: Value = resp.json().await.expect("json");
                            acknowledged.push(json["id"].as_str().unwrap().to_owned());
                        }
                        _ => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.stop().await.expect("a graceful stop returns Ok");
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(!acknowledged.is_empty());

    let db = app.db.clone().expect("postgres");
    let client = db.client().await;
    // The projectors were flushed before the stop returned.
    let in_read_model: i64 = client
        .query_one(
            "SELECT count(*) FROM inbox_notifications WHERE recipient = 'pete'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let in_log: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'NotificationCreated'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_read_model, in_log,
        "the projector flushed everything at shutdown"
    );
    assert!(in_log >= acknowledged.len() as i64);

    let app = app.restart().await;
    let page = app.get_json("/v1/users/pete/inbox?limit=1").await;
    assert_eq!(page["unread_count"], in_log);
    for id in acknowledged.iter().step_by(25) {
        app.get_json(&format!("/v1/notifications/{id}")).await;
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_waits_for_events_a_transaction_elsewhere_holds_back() {
    let test = "restart::stopping_waits_for_events_a_transaction_elsewhere_holds_back";
    let Some(mut app) = TestApp::spawn(Backend::Postgres, test).await else {
        return;
    };
    let db = app.db.clone().expect("postgres");
    // Any transaction with an id holds every log reader in the cluster back
    // at its start; this one stays open across the stop.
    let other = db.client().await;
    other
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .unwrap();
    let (id, _) = app.create(&notification_for("held", "late")).await;
    let stopping = tokio::spawn(async move {
        app.stop().await.expect("a graceful stop");
        app
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    other.batch_execute("COMMIT").await.unwrap();
    let app = stopping.await.unwrap();
    let applied: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM inbox_live WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 1, "the stop waited for the held-back event");
    app.cleanup().await;
}
