//! Many writers at once: no lost update, nothing missing, nothing twice.

use std::collections::{BTreeSet, HashMap};

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{max_cursor, notification_for, TestApp};

on_both_backends!(
    fifty_concurrent_commands_on_one_notification_end_consistent,
    twenty_writers_creating_two_hundred_each_fill_the_inbox_exactly,
);

async fn fifty_concurrent_commands_on_one_notification_end_consistent(app: &TestApp) {
    let (id, _) = app.create(&notification_for("jack", "contended")).await;
    let actions: Vec<&str> = (0..50)
        .map(|i| ["read", "unread", "archive"][i % 3])
        .collect();
    let answers = join_all(actions.iter().map(|action| {
        let url = app.url(&format!("/v1/notifications/{id}/{action}"));
        let client = app.client.clone();
        async move {
            let resp = client.post(url).send().await.expect("sent");
            let status = resp.status();
            let body: Value = resp.json().await.expect("json");
            (status, body)
        }
    }))
    .await;
    let mut changed: HashMap<&str, i64> = HashMap::new();
    let mut cursors = Vec::new();
    for (action, (status, body)) in actions.iter().zip(&answers) {
        assert_eq!(status.as_u16(), 200, "{action}: {body}");
        if body["changed"] == true {
            *changed.entry(action).or_default() += 1;
        }
        cursors.push(body["cursor"].as_str().unwrap().to_owned());
    }
    let last = max_cursor(cursors.iter().map(String::as_str));
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={last}"))
        .await;
    // Each changed read flipped unread -> read and each changed unread flipped it
    // back; with a lost update two racing reads would both claim the flip.
    let flips =
        changed.get("read").copied().unwrap_or(0) - changed.get("unread").copied().unwrap_or(0);
    let expected = if n["status"] == "read" { 1 } else { 0 };
    assert_eq!(
        flips, expected,
        "changes {changed:?} do not add up to {}",
        n["status"]
    );
    assert_eq!(
        changed.get("archive").copied(),
        Some(1),
        "archived exactly once"
    );
    assert_eq!(n["archived"], true);

    // The write side and the read model agree.
    let receipt = app.command(&id, "seen").await;
    let mut from_write_side = receipt["notification"].clone();
    let mut from_read_model = n.clone();
    from_write_side["cursor"] = Value::Null;
    from_read_model["cursor"] = Value::Null;
    assert_eq!(from_write_side, from_read_model);

    if let Some(db) = &app.db {
        let client = db.client().await;
        let rows = client
            .query(
                "SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence",
                &[&id],
            )
            .await
            .unwrap();
        let types: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let flips: Vec<&String> = types
            .iter()
            .filter(|t| *t == "NotificationRead" || *t == "NotificationUnread")
            .collect();
        for pair in flips.windows(2) {
            assert_ne!(
                pair[0], pair[1],
                "read and unread alternate in the log: {types:?}"
            );
        }
        let archived = types
            .iter()
            .filter(|t| *t == "NotificationArchived")
            .count();
        assert_eq!(archived, 1);
    }
}

async fn twenty_writers_creating_two_hundred_each_fill_the_inbox_exactly(app: &TestApp) {
    const WRITERS: usize = 20;
    const EACH: usize = 200;
    let recipients = ["kate", "liam", "mona", "nick"];
    let writers = (0..WRITERS).map(|w| {
        let client = app.client.clone();
        let url = app.url("/v1/notifications");
        tokio::spawn(async move {
            let mut created = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let recipient = recipients[(w + i) % recipients.len()];
                let body = notification_for(recipient, &format!("w{w} n{i}"));
                let resp = client.post(&url).json(&body).send().await.expect("sent");
                assert_eq!(resp.status(), 201);
                let json: Value = resp.json().await.expect("json");
                created.push((
                    recipient,
                    json["id"].as_str().unwrap().to_owned(),
                    json["cursor"].as_str().unwrap().to_owned(),
                ));
            }
            created
        })
    });
    let created: Vec<_> = join_all(writers)
        .await
        .into_iter()
        .flat_map(|r| r.expect("writer task"))
        .collect();
    assert_eq!(created.len(), WRITERS * EACH);
    let last = max_cursor(created.iter().map(|(_, _, c)| c.as_str()));

    let mut in_inboxes = BTreeSet::new();
    for recipient in recipients {
        let items = app.whole_inbox(recipient, 100, &last).await;
        let expected: BTreeSet<String> = created
            .iter()
            .filter(|(r, _, _)| *r == recipient)
            .map(|(_, id, _)| id.clone())
            .collect();
        let got: Vec<String> = items
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(unique.len(), got.len(), "{recipient}: no duplicates");
        assert_eq!(
            unique, expected,
            "{recipient}: exactly the acknowledged creates"
        );
        in_inboxes.extend(unique);
    }
    let acknowledged: BTreeSet<String> = created.iter().map(|(_, id, _)| id.clone()).collect();
    assert_eq!(in_inboxes, acknowledged);

    if let Some(db) = &app.db {
        let client = db.client().await;
        let rows = client
            .query(
                "SELECT aggregate_id FROM events WHERE event_type = 'NotificationCreated'",
                &[],
            )
            .await
            .unwrap();
        let in_log: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            in_log, in_inboxes,
            "the inbox holds exactly what the events table holds"
        );
        let positions = client
            .query_one(
                "SELECT count(*), count(DISTINCT global_position) FROM events",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(positions.get::<_, i64>(0), positions.get::<_, i64>(1));
    }
}
