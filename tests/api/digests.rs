//! Digests through HTTP: a batched category's notifications are held,
//! flushed by time or by count into one digest that names them, or
//! delivered one by one below `min_items`; urgent ones are never held.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::TestApp;

async fn set_policy(app: &TestApp, category: &str, policy: Value) {
    let path = format!("/v1/categories/{category}/batching");
    let (status, answer) = app.send("PUT", &path, Some(&policy)).await;
    assert_eq!(status, 200, "PUT {policy}: {answer}");
}

fn comment(user: &str, title: &str, actor: &str) -> Value {
    json!({
        "recipient": user,
        "category": "comments",
        "title": title,
        "body": "",
        "group_key": "post-42",
        "data": {"actor": actor},
    })
}

/// The recipient's inbox until `done` says it is complete (or `within`).
async fn inbox_until(
    app: &TestApp,
    user: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let page = app
            .get_json(&format!("/v1/users/{user}/inbox?limit=100"))
            .await;
        let items = page["items"].as_array().expect("items").clone();
        if done(&items) || start.elapsed() > within {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn digests(items: &[Value]) -> Vec<&Value> {
    items
        .iter()
        .filter(|i| i["data"]["digest"].is_object())
        .collect()
}

async fn event_types(app: &TestApp, id: &str) -> Vec<String> {
    let page = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("a type").to_owned())
        .collect()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i.as_str().expect("an id").to_owned())
        .collect();
    ids.sort();
    ids
}

on_both_backends!(
    held_items_flush_into_one_digest_when_the_window_ends,
    max_items_flushes_at_once_and_the_next_item_opens_the_next_batch,
    below_min_items_the_items_go_out_one_by_one,
    the_first_item_goes_at_once_under_first_item_immediately,
    urgent_and_other_categories_are_never_held,
);

async fn held_items_flush_into_one_digest_when_the_window_ends(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 2}, "max_items": 10}),
    )
    .await;
    let mut held = Vec::new();
    let mut cursor = String::new();
    for (title, actor) in [
        ("Ann replied", "ann"),
        ("Bob replied", "bob"),
        ("Ann again", "ann"),
    ] {
        let (id, at) = app.create(&comment("alice", title, actor)).await;
        held.push(id);
        cursor = at;
    }
    // Held: not delivered, not in the inbox, and saying so.
    let first = app
        .get_json(&format!(
            "/v1/notifications/{}?min_position={cursor}",
            held[0]
        ))
        .await;
    assert_eq!(first["lifecycle"], "batched", "{first}");
    let (status, refused) = app
        .send(
            "POST",
            &format!("/v1/notifications/{}/deliver", held[0]),
            Some(&json!({"channel": "in_app"})),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["type"], "urn:tidings:problem:batched", "{refused}");
    let items = inbox_until(app, "alice", Duration::from_secs(10), |i| {
        !digests(i).is_empty()
    })
    .await;
    let found = digests(&items);
    assert_eq!(found.len(), 1, "one digest: {items:?}");
    assert_eq!(items.len(), 1, "only the digest is in the inbox: {items:?}");
    let digest = &found[0]["data"]["digest"];
    assert_eq!(digest["count"], 3, "{digest}");
    let mut expected = held.clone();
    expected.sort();
    assert_eq!(ids(&digest["items"]), expected);
    assert_eq!(digest["actors"], json!(["ann", "bob"]));
    assert_eq!(found[0]["title"], "3 new comments on post-42");
    let batch_id = digest["batch_id"].as_str().expect("a batch id");
    // Each item says which digest carried it.
    let digest_id = found[0]["id"].as_str().expect("an id");
    for id in &held {
        let start = Instant::now();
        loop {
            let types = event_types(app, id).await;
            if types.contains(&"NotificationDigested".to_owned()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{id} not digested: {types:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let view = loop {
            let view = app.get_json(&format!("/v1/notifications/{id}")).await;
            if view["lifecycle"] == "digested" || start.elapsed() > Duration::from_secs(10) {
                break view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(view["lifecycle"], "digested", "{view}");
        let events = app
            .get_json(&format!("/v1/notifications/{id}/events"))
            .await;
        let marks: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "NotificationDigested")
            .collect();
        assert_eq!(marks.len(), 1, "{events}");
        assert_eq!(marks[0]["data"]["digest_id"], digest_id);
        assert_eq!(marks[0]["data"]["batch_id"], batch_id);
    }
}

async fn max_items_flushes_at_once_and_the_next_item_opens_the_next_batch(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 2}),
    )
    .await;
    let mut created = Vec::new();
    let mut last_cursor = String::new();
    for n in 0..5 {
        let (id, at) = app
            .create(&comment("bob", &format!("Reply {n}"), "ann"))
            .await;
        created.push(id);
        last_cursor = at;
    }
    let items = inbox_until(app, "bob", Duration::from_secs(10), |i| {
        digests(i).len() >= 2
    })
    .await;
    let found = digests(&items);
    assert_eq!(found.len(), 2, "two full batches: {items:?}");
    let mut carried: Vec<String> = found
        .iter()
        .flat_map(|d| ids(&d["data"]["digest"]["items"]))
        .collect();
    carried.sort();
    carried.dedup();
    assert_eq!(
        carried.len(),
        4,
        "four items in two digests, none twice: {found:?}"
    );
    let batches: Vec<&str> = found
        .iter()
        .map(|d| d["data"]["digest"]["batch_id"].as_str().unwrap())
        .collect();
    assert_ne!(batches[0], batches[1]);
    // The fifth waits in the third batch, open for an hour.
    let last = created
        .iter()
        .find(|id| !carried.contains(id))
        .expect("one left");
    let view = app
        .get_json(&format!(
            "/v1/notifications/{last}?min_position={last_cursor}"
        ))
        .await;
    assert_eq!(view["lifecycle"], "batched", "{view}");
}

async fn below_min_items_the_items_go_out_one_by_one(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 1}, "max_items": 10, "min_items": 3}),
    )
    .await;
    let a = app.create(&comment("carol", "One", "ann")).await.0;
    let b = app.create(&comment("carol", "Two", "bob")).await.0;
    let items = inbox_until(app, "carol", Duration::from_secs(10), |i| i.len() >= 2).await;
    let mut got: Vec<String> = items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut expected = vec![a.clone(), b];
    expected.sort();
    assert_eq!(got, expected, "the items themselves, no digest: {items:?}");
    let types = event_types(app, &a).await;
    assert!(
        types.contains(&"NotificationReleased".to_owned()),
        "{types:?}"
    );
    assert!(
        types.contains(&"NotificationDelivered".to_owned()),
        "{types:?}"
    );
}

async fn the_first_item_goes_at_once_under_first_item_immediately(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 2}, "max_items": 10,
               "first_item_immediately": true}),
    )
    .await;
    let first = app.create(&comment("dave", "First", "ann")).await.0;
    let items = inbox_until(app, "dave", Duration::from_secs(5), |i| !i.is_empty()).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["id"], first.as_str());
    let second = app.create(&comment("dave", "Second", "bob")).await.0;
    let third = app.create(&comment("dave", "Third", "cat")).await.0;
    let items = inbox_until(app, "dave", Duration::from_secs(10), |i| {
        !digests(i).is_empty()
    })
    .await;
    let found = digests(&items);
    assert_eq!(found.len(), 1, "{items:?}");
    let mut expected = vec![second, third];
    expected.sort();
    assert_eq!(
        ids(&found[0]["data"]["digest"]["items"]),
        expected,
        "the rest, not the first"
    );
    assert_eq!(items.len(), 2, "the first and the digest: {items:?}");
}

async fn urgent_and_other_categories_are_never_held(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 10}),
    )
    .await;
    let mut urgent = comment("erin", "Now", "ann");
    urgent["priority"] = json!("urgent");
    let (id, at) = app.create(&urgent).await;
    let view = app
        .get_json(&format!("/v1/notifications/{id}?min_position={at}"))
        .await;
    assert_eq!(view["lifecycle"], "delivered", "{view}");
    let mut other = comment("erin", "Elsewhere", "ann");
    other["category"] = json!("billing");
    let (id, at) = app.create(&other).await;
    let view = app
        .get_json(&format!("/v1/notifications/{id}?min_position={at}"))
        .await;
    assert_eq!(view["lifecycle"], "delivered", "{view}");
    // A key that does not render for this notification: sent on its own, and the log says why.
    set_policy(
        app,
        "threads",
        json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 10,
               "key": "{{ recipient }}/{{ data.thread }}"}),
    )
    .await;
    let mut unkeyed = comment("erin", "No thread", "ann");
    unkeyed["category"] = json!("threads");
    let (id, at) = app.create(&unkeyed).await;
    let view = app
        .get_json(&format!("/v1/notifications/{id}?min_position={at}"))
        .await;
    assert_eq!(view["lifecycle"], "delivered", "{view}");
    let events = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    let skipped = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "BatchingSkipped")
        .unwrap_or_else(|| panic!("{events}"));
    assert!(
        skipped["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("data.thread"),
        "{skipped}"
    );
}
