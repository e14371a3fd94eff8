//! Read-all records its changes in batches (one read and one append per
//! 500 notifications), and stays exact while other writers race it.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{max_cursor, notification_for, TestApp};

on_both_backends!(
    read_all_racing_other_writers_marks_each_unread_notification_once_and_loses_nothing
);

const USER: &str = "bulk-reader";
const NOTIFICATIONS: usize = 1_100;

/// `NOTIFICATIONS` creates for `user`, 32 at a time (the server refuses
/// more than --max-concurrent-requests at once).
async fn create_many(app: &TestApp, user: &str) -> Vec<(String, String)> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..NOTIFICATIONS)
        .map(|i| async move { app.create(&notification_for(user, &format!("n{i}"))).await })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn read_all_racing_other_writers_marks_each_unread_notification_once_and_loses_nothing(
    app: &TestApp,
) {
    let creates = create_many(app, USER).await;
    let ids: Vec<String> = creates.iter().map(|(id, _)| id.clone()).collect();
    let last = max_cursor(creates.iter().map(|(_, c)| c.as_str()));

    // Read-all races 60 marks-unread and 60 marks-read on its notifications.
    let read_all = async {
        let resp = app
            .client
            .post(app.url(&format!(
                "/v1/users/{USER}/inbox/read-all?min_position={last}"
            )))
            .header("x-request-id", "read-all-under-race")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    let racers = join_all((0..120).map(|i| {
        let id = ids[(i * 7) % ids.len()].clone();
        let action = if i % 2 == 0 { "unread" } else { "read" };
        async move {
            let resp = app
                .post_empty(&format!("/v1/notifications/{id}/{action}"))
                .await;
            assert_eq!(resp.status(), 200, "{action} {id}");
            resp.json::<Value>().await.unwrap()["cursor"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    }));
    let (answer, racer_cursors) = tokio::join!(read_all, racers);
    let newest = max_cursor(
        racer_cursors
            .iter()
            .map(String::as_str)
            .chain([answer["cursor"].as_str().unwrap()]),
    );

    // Each notification: the read model agrees with its own history, and
    // read-all marked it at most once.
    let mut marked_by_read_all = 0;
    let mut transactions = HashSet::new();
    for id in &ids {
        let audit = app
            .get_json(&format!("/v1/notifications/{id}/events"))
            .await;
        let mut read = false;
        let mut by_read_all = 0;
        let sequences: Vec<i64> = audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sequence"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(
            sequences, expected,
            "{id}: no two writers took one sequence"
        );
        for event in audit["events"].as_array().unwrap() {
            match event["type"].as_str().unwrap() {
                "NotificationRead" | "NotificationClicked" => read = true,
                "NotificationUnread" => read = false,
                _ => {}
            }
            if event["metadata"]["causation_id"] == "read-all-under-race" {
                transactions.insert(event["cursor"].as_str().unwrap()[..16].to_owned());
                match event["type"].as_str().unwrap() {
                    "NotificationRead" => by_read_all += 1,
                    other => assert_eq!(other, "NotificationSeen"),
                }
            }
        }
        assert!(by_read_all <= 1, "{id} was marked {by_read_all} times");
        marked_by_read_all += by_read_all;
        let now = app
            .get_json(&format!("/v1/notifications/{id}?min_position={newest}"))
            .await;
        assert_eq!(
            now["status"],
            if read { "read" } else { "unread" },
            "{id}: the read model agrees with the log"
        );
    }
    assert_eq!(answer["marked"], marked_by_read_all, "{answer}");
    assert!(
        marked_by_read_all as usize >= NOTIFICATIONS - 120,
        "read-all marked {marked_by_read_all} of {NOTIFICATIONS}"
    );
    if app.db.is_some() {
        // On PostgreSQL a cursor's first half is the writing transaction:
        // three batches, so a handful of transactions, not one per
        // notification (retries after a conflict add a few).
        assert!(
            transactions.len() <= 3 * 10,
            "read-all wrote in {} transactions",
            transactions.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_all_without_racers_writes_one_transaction_per_batch_on_postgres() {
    let test = "read_all::read_all_without_racers_writes_one_transaction_per_batch_on_postgres";
    let Some(app) = TestApp::spawn(crate::helpers::Backend::Postgres, test).await else {
        return;
    };
    let creates = create_many(&app, "quiet-reader").await;
    let last = max_cursor(creates.iter().map(|(_, c)| c.as_str()));
    let resp = app
        .client
        .post(app.url(&format!(
            "/v1/users/quiet-reader/inbox/read-all?min_position={last}"
        )))
        .header("x-request-id", "quiet-read-all")
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["marked"], NOTIFICATIONS as u64);
    let client = app.db.as_ref().unwrap().client().await;
    let row = client
        .query_one(
            "SELECT count(DISTINCT transaction_id::text), count(*) FROM events
              WHERE metadata ->> 'causation_id' = 'quiet-read-all'",
            &[],
        )
        .await
        .unwrap();
    let (transactions, events): (i64, i64) = (row.get(0), row.get(1));
    // Marking read also marks seen: two events each.
    assert_eq!(events, 2 * NOTIFICATIONS as i64);
    assert_eq!(transactions, 3, "1,100 notifications in batches of 500");
    app.cleanup().await;
}
