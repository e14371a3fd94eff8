//! Digests through HTTP: a batched category's notifications are held,
//! flushed by time or by count into one digest that names them, or
//! delivered one by one below `min_items`; urgent ones are never held.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use futures_util::stream::{self, StreamExt};

use crate::helpers::{postgres_server_url, settings, skipped, Backend, TestApp, TestDb};
use crate::stream_client::Subscriber;

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
    the_recipients_preferences_apply_to_the_digests_channels,
    batches_are_listed_read_flushed_by_hand_and_streamed,
    a_simulation_answers_what_the_policy_then_does_live,
    a_simulation_refuses_what_it_cannot_replay,
    a_thousand_concurrent_creates_for_one_key_make_one_digest_of_them_all,
    creates_racing_the_flushes_land_each_in_exactly_one_digest,
    a_policy_change_mid_batch_leaves_the_open_batch_as_it_opened,
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
    let explained = app
        .get_json(&format!("/v1/notifications/{}/explain", held[0]))
        .await;
    assert_eq!(explained["lifecycle"], "batched", "{explained}");
    assert_eq!(
        explained["channels"][0]["outcome"], "pending",
        "{explained}"
    );
    assert!(
        explained["channels"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("held for a digest"),
        "{explained}"
    );
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
        let explained = app
            .get_json(&format!("/v1/notifications/{id}/explain"))
            .await;
        assert_eq!(
            explained["channels"][0]["outcome"], "digested",
            "{explained}"
        );
        assert!(
            explained["channels"][0]["reason"]
                .as_str()
                .unwrap()
                .contains(digest_id),
            "{explained}"
        );
    }
    // Analytics: three items digested, one digest delivered; the delivery
    // rate is over what was to go on its own (the digest).
    let cursor = found[0]["cursor"].as_str().expect("a cursor");
    let start = Instant::now();
    let total = loop {
        let total = crate::analytics::recent(app, "&category=comments", cursor).await;
        if total["counts"]["digested"] == 3 || start.elapsed() > Duration::from_secs(10) {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(total["counts"]["created"], 4, "{total}");
    assert_eq!(total["counts"]["digested"], 3, "{total}");
    assert_eq!(total["counts"]["delivered"], 1, "{total}");
    assert_eq!(total["rates"]["delivery"], 1.0, "{total}");
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

/// `count` creates for `user`, `concurrency` at a time: their ids.
async fn create_many(app: &TestApp, user: &str, count: usize, concurrency: usize) -> Vec<String> {
    stream::iter(0..count)
        .map(|n| async move {
            app.create(&comment(
                user,
                &format!("Reply {n}"),
                &format!("actor-{}", n % 7),
            ))
            .await
            .0
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Every item of `user`'s inbox, as the inbox has it now.
async fn whole_inbox(app: &TestApp, user: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/users/{user}/inbox?limit=100");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get_json(&path).await;
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

/// Every digest in `user`'s inbox once `done` holds of them (or `within`).
async fn digests_until(
    app: &TestApp,
    user: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let items = whole_inbox(app, user).await;
        let found: Vec<Value> = digests(&items).into_iter().cloned().collect();
        if done(&found) || start.elapsed() > within {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that `carried` (sorted) holds each of `created` (sorted) exactly
/// once, naming what is missing or repeated.
fn assert_each_once(carried: &[String], created: &[String], what: &str) {
    let missing: Vec<&String> = created.iter().filter(|c| !carried.contains(c)).collect();
    let repeated: Vec<&String> = carried
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    let foreign = carried.iter().filter(|c| !created.contains(c)).count();
    assert!(
        missing.is_empty() && repeated.is_empty() && foreign == 0,
        "{what}: {} created, {} carried; missing {missing:?}, repeated {repeated:?}, {foreign} not created here",
        created.len(),
        carried.len()
    );
}

/// Every item the digests carry, each as often as carried.
fn carried(found: &[Value]) -> Vec<String> {
    let mut all: Vec<String> = found
        .iter()
        .flat_map(|d| ids(&d["data"]["digest"]["items"]))
        .collect();
    all.sort();
    all
}

async fn a_thousand_concurrent_creates_for_one_key_make_one_digest_of_them_all(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 1000}),
    )
    .await;
    let mut created = create_many(app, "frank", 1000, 32).await;
    created.sort();
    let found = digests_until(app, "frank", Duration::from_secs(60), |d| !d.is_empty()).await;
    assert_eq!(found.len(), 1, "one digest");
    assert_eq!(found[0]["data"]["digest"]["count"], 1000);
    assert_each_once(&carried(&found), &created, "all 1,000, each once");
    // Nothing else reached the inbox.
    let inbox = whole_inbox(app, "frank").await;
    assert_eq!(inbox.len(), 1);
}

async fn creates_racing_the_flushes_land_each_in_exactly_one_digest(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 1}, "max_items": 1000}),
    )
    .await;
    // Writers for about three seconds: windows close under them.
    let start = Instant::now();
    let mut created = Vec::new();
    while start.elapsed() < Duration::from_secs(3) {
        created.extend(create_many(app, "gina", 40, 8).await);
    }
    created.sort();
    let total = created.len();
    let found = digests_until(app, "gina", Duration::from_secs(30), |d| {
        carried(d).len() >= total
    })
    .await;
    assert!(
        found.len() >= 2,
        "windows closed while items came: {}",
        found.len()
    );
    assert_each_once(
        &carried(&found),
        &created,
        "every item in exactly one digest",
    );
}

async fn a_policy_change_mid_batch_leaves_the_open_batch_as_it_opened(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 2}, "max_items": 10}),
    )
    .await;
    let mut created = create_many(app, "hank", 2, 1).await;
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 2}),
    )
    .await;
    // Joins the open batch, which keeps its window and its max_items.
    created.extend(create_many(app, "hank", 1, 1).await);
    created.sort();
    let found = digests_until(app, "hank", Duration::from_secs(10), |d| !d.is_empty()).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        carried(&found),
        created,
        "one batch of three under the policy it opened with"
    );
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

async fn leads(app: &TestApp, projection: &str) -> bool {
    let all = app.get_json("/v1/projections").await;
    all.as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == projection && p["leader"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_second_on_two_instances_makes_one_digest() {
    let test = "digests::the_same_second_on_two_instances_makes_one_digest";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let a = instance(&db).await;
    let b = instance(&db).await;
    set_policy(
        &a,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 2}, "max_items": 1000}),
    )
    .await;
    let (on_a, on_b) = tokio::join!(create_many(&a, "ivy", 30, 8), create_many(&b, "ivy", 30, 8));
    let mut created: Vec<String> = on_a.into_iter().chain(on_b).collect();
    created.sort();
    let found = digests_until(&b, "ivy", Duration::from_secs(15), |d| !d.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let found_again = digests_until(&a, "ivy", Duration::from_secs(0), |_| true).await;
    assert_eq!(found.len(), 1, "one digest: {found:?}");
    assert_eq!(found_again.len(), 1, "and still one");
    assert_each_once(&carried(&found), &created, "each item once");
    let (mut a, mut b) = (a, b);
    let _ = a.stop().await;
    let _ = b.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_window_still_flushes_once() {
    let test = "digests::killing_the_leader_mid_window_still_flushes_once";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let mut a = instance(&db).await;
    for _ in 0..100 {
        if leads(&a, "batcher").await && leads(&a, "digests").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leads(&a, "batcher").await, "the first instance leads");
    let b = instance(&db).await;
    set_policy(
        &a,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 3}, "max_items": 1000}),
    )
    .await;
    let mut created = create_many(&a, "jack", 20, 4).await;
    created.sort();
    a.kill().await;
    let found = digests_until(&b, "jack", Duration::from_secs(20), |d| !d.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = digests_until(&b, "jack", Duration::from_secs(0), |_| true).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(again.len(), 1, "fired once");
    assert_each_once(&carried(&found), &created, "each item once");
    assert!(leads(&b, "batcher").await, "the survivor took over");
    let mut b = b;
    let _ = b.stop().await;
    db.drop_database().await;
}

async fn batches_are_listed_read_flushed_by_hand_and_streamed(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 10}),
    )
    .await;
    let mut stream = Subscriber::connect(app, "topics=batches:kate").await;
    stream.expect("subscribed").await;
    let mut created = Vec::new();
    let mut cursor = String::new();
    for n in 0..3 {
        let (id, at) = app
            .create(&comment("kate", &format!("Reply {n}"), "ann"))
            .await;
        created.push(id);
        cursor = at;
    }
    // Listed as it fills (the adds follow the creates).
    let start = Instant::now();
    let open = loop {
        let page = app
            .get_json(&format!("/v1/users/kate/batches?min_position={cursor}"))
            .await;
        let items = page["items"].as_array().expect("items").clone();
        if items.first().is_some_and(|b| b["count"] == 3)
            || start.elapsed() > Duration::from_secs(10)
        {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(open.len(), 1, "{open:?}");
    let batch = &open[0];
    assert_eq!(
        (batch["status"].as_str(), batch["count"].as_u64()),
        (Some("open"), Some(3)),
        "{batch}"
    );
    assert_eq!(batch["key"], "kate/post-42");
    assert_eq!(batch["items"].as_array().unwrap().len(), 3);
    let id = batch["id"].as_str().unwrap().to_owned();
    let flush_at =
        chrono::DateTime::parse_from_rfc3339(batch["flush_at"].as_str().unwrap()).unwrap();
    let opened =
        chrono::DateTime::parse_from_rfc3339(batch["opened_at"].as_str().unwrap()).unwrap();
    assert_eq!((flush_at - opened).num_seconds(), 3600, "{batch}");
    assert_eq!(
        app.get_json(&format!("/v1/batches/{id}")).await["id"],
        id.as_str()
    );
    // Another user's list does not show it.
    let other = app.get_json("/v1/users/kate2/batches").await;
    assert_eq!(other["items"], json!([]));

    // Flushed by hand, once.
    let (status, flushed) = app
        .send("POST", &format!("/v1/batches/{id}/flush"), None)
        .await;
    assert_eq!(
        (status, flushed["changed"].as_bool()),
        (200, Some(true)),
        "{flushed}"
    );
    let (status, again) = app
        .send("POST", &format!("/v1/batches/{id}/flush"), None)
        .await;
    assert_eq!(
        (status, again["changed"].as_bool()),
        (200, Some(false)),
        "{again}"
    );
    let found = digests_until(app, "kate", Duration::from_secs(10), |d| !d.is_empty()).await;
    assert_eq!(found.len(), 1);
    let mut expected = created.clone();
    expected.sort();
    assert_each_once(&carried(&found), &expected, "the flushed batch's items");
    let cursor = flushed["cursor"].as_str().unwrap();
    let row = app
        .get_json(&format!("/v1/batches/{id}?min_position={cursor}"))
        .await;
    assert_eq!(
        (row["status"].as_str(), row["reason"].as_str()),
        (Some("flushed"), Some("manual")),
        "{row}"
    );
    assert_eq!(row["digest_id"], found[0]["id"]);
    let flushed_only = app.get_json("/v1/users/kate/batches?status=flushed").await;
    assert_eq!(flushed_only["items"].as_array().unwrap().len(), 1);
    let open_only = app.get_json("/v1/users/kate/batches?status=open").await;
    assert_eq!(open_only["items"], json!([]));

    // What does not name a batch.
    let unknown = format!("{}.9", id.rsplit_once('.').unwrap().0);
    let (status, _) = app
        .send("POST", &format!("/v1/batches/{unknown}/flush"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .send("GET", &format!("/v1/batches/{unknown}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.send("GET", "/v1/batches/not-a-batch", None).await;
    assert_eq!(status, 404, "no such batch, as for any id that names none");
    let (status, _) = app
        .send("GET", "/v1/users/kate/batches?cursor=zz", None)
        .await;
    assert!(status == 400 || status == 422, "{status}");

    // The topic told of each step.
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        stream.updates_until(|got| got.iter().any(|u| u["kind"] == "flushed")),
    )
    .await
    .expect("the batch's updates within 10 s");
    assert_eq!(got[0]["kind"], "opened", "{got:?}");
    assert!(got
        .iter()
        .all(|u| u["topic"] == "batches:kate" && u["data"]["id"] == id.as_str()));
    let last = got.last().unwrap();
    assert_eq!(last["data"]["status"], "flushed");
}

async fn a_simulation_answers_what_the_policy_then_does_live(app: &TestApp) {
    let policy = json!({"window": {"kind": "fixed", "seconds": 1}, "max_items": 3, "min_items": 2,
                        "key": "{{ recipient }}/{{ data.post }}"});
    set_policy(app, "comments", policy.clone()).await;
    let from = chrono::Utc::now() - chrono::Duration::seconds(1);
    // Traffic: bursts well apart from the windows' ends. For each user a
    // burst of four (a full batch of three, then one alone: below
    // min_items), a pause past the window, a burst of two; an urgent one;
    // one whose key does not render.
    let burst = |user: &'static str, n: usize, tag: &'static str| async move {
        for i in 0..n {
            let mut body = comment(user, &format!("{tag} {i}"), "ann");
            body["data"] = json!({"post": 42, "actor": "ann"});
            app.create(&body).await;
        }
    };
    for user in ["sim-a", "sim-b"] {
        burst(user, 4, "first").await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for user in ["sim-a", "sim-b"] {
        burst(user, 2, "second").await;
    }
    let mut urgent = comment("sim-a", "Now", "ann");
    urgent["priority"] = json!("urgent");
    urgent["data"] = json!({"post": 42});
    app.create(&urgent).await;
    let unkeyed = comment("sim-b", "No post", "ann"); // no data.post
    app.create(&unkeyed).await;
    // Live: each user gets two digests (three, then two) and, on their
    // own, the one left below min_items plus the urgent or unkeyed one.
    for user in ["sim-a", "sim-b"] {
        let start = Instant::now();
        loop {
            let items = whole_inbox(app, user).await;
            let (d, n) = (digests(&items).len(), items.len() - digests(&items).len());
            if (d, n) == (2, 2) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{user}: {d} digests, {n} alone: {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let to = chrono::Utc::now() + chrono::Duration::seconds(1);
    let (status, sim) = app
        .send(
            "POST",
            "/v1/categories/comments/batching/simulate",
            Some(&json!({"policy": policy, "from": from.to_rfc3339(), "to": to.to_rfc3339()})),
        )
        .await;
    assert_eq!(status, 200, "{sim}");
    assert_eq!(
        sim["replayed"], 14,
        "the digests themselves are not replayed: {sim}"
    );
    assert_eq!(
        (
            sim["digests"].as_u64(),
            sim["digested"].as_u64(),
            sim["notifications"].as_u64()
        ),
        (Some(4), Some(10), Some(4)),
        "{sim}"
    );
    for user in ["sim-a", "sim-b"] {
        let r = sim["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["recipient"] == user)
            .unwrap_or_else(|| panic!("{user}: {sim}"));
        assert_eq!(
            (r["digests"].as_u64(), r["notifications"].as_u64()),
            (Some(2), Some(2)),
            "{r}"
        );
    }
    let delay = &sim["delay_ms"];
    assert!(
        delay["max"].as_u64().unwrap() <= 1000,
        "held at most the window: {delay}"
    );
    assert!(delay["p99"].as_u64().unwrap() > 0, "{delay}");
    // Nothing was recorded by the simulation.
    let again = whole_inbox(app, "sim-a").await;
    assert_eq!(again.len(), 4);
}

async fn a_simulation_refuses_what_it_cannot_replay(app: &TestApp) {
    let path = "/v1/categories/comments/batching/simulate";
    let good = json!({"window": {"kind": "fixed", "seconds": 60}, "max_items": 10});
    for (body, field) in [
        (
            json!({"policy": good, "from": "yesterday", "to": "2026-12-02T00:00:00Z"}),
            "from",
        ),
        (
            json!({"policy": good, "from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"}),
            "to",
        ),
        (
            json!({"policy": good, "from": "2026-01-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}),
            "to",
        ),
        (
            json!({"policy": {"window": {"kind": "fixed", "seconds": 0}, "max_items": 1},
                   "from": "2026-12-01T00:00:00Z", "to": "2026-12-02T00:00:00Z"}),
            "policy.window.seconds",
        ),
    ] {
        let (status, problem) = app.send("POST", path, Some(&body)).await;
        assert!(status == 422 || status == 400, "{body}: {status} {problem}");
        assert!(problem.to_string().contains(field), "{body}: {problem}");
    }
}

async fn the_recipients_preferences_apply_to_the_digests_channels(app: &TestApp) {
    set_policy(
        app,
        "comments",
        json!({"window": {"kind": "fixed", "seconds": 1}, "max_items": 10}),
    )
    .await;
    let (status, prefs) = app
        .send(
            "PUT",
            "/v1/users/lena/preferences",
            Some(&json!({"channels": {"email": false}})),
        )
        .await;
    assert_eq!(status, 200, "{prefs}");
    for n in 0..2 {
        let mut body = comment("lena", &format!("Reply {n}"), "ann");
        body["channels"] = json!(["in_app", "email"]);
        app.create(&body).await;
    }
    let found = digests_until(app, "lena", Duration::from_secs(10), |d| !d.is_empty()).await;
    assert_eq!(found.len(), 1);
    let digest = found[0]["id"].as_str().unwrap();
    assert_eq!(
        found[0]["channels"],
        json!(["in_app", "email"]),
        "{}",
        found[0]
    );
    let explained = app
        .get_json(&format!("/v1/notifications/{digest}/explain"))
        .await;
    let email = explained["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "email")
        .unwrap_or_else(|| panic!("{explained}"));
    assert_eq!(
        (email["outcome"].as_str(), email["rule"].as_str()),
        (Some("suppressed"), Some("opt_out")),
        "{explained}"
    );
}
