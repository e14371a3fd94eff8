//! `Idempotency-Key`: a retried create answers the first create again, a key
//! reused for another request is refused, and racing repeats make one notification.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::errors::{expect_problem, refused_fields, VALIDATION};
use crate::helpers::{max_cursor, notification_for, TestApp};

on_both_backends!(
    the_same_key_and_body_answer_the_first_create_again,
    the_same_key_with_another_body_is_refused_and_changes_nothing,
    ten_concurrent_creates_with_one_key_make_one_notification,
    different_keys_or_no_key_make_different_notifications,
    invalid_keys_are_refused_and_store_nothing,
);

const REUSED: &str = "urn:tidings:problem:idempotency-key-reused";

/// What a create answered.
struct Answer {
    status: u16,
    id: String,
    cursor: String,
    location: Option<String>,
    replayed: Option<String>,
    body: Value,
}

/// POSTs `body` (sent as these exact bytes) to create, with `key` if given.
async fn create_raw(app: &TestApp, key: Option<&str>, body: &str) -> Answer {
    let mut request = app
        .client
        .post(app.url("/v1/notifications"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    answer(request.send().await.expect("request sent")).await
}

async fn create_keyed(app: &TestApp, key: &str, body: &Value) -> Answer {
    create_raw(app, Some(key), &body.to_string()).await
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("a text header").to_owned())
    };
    let location = header("location");
    let replayed = header("idempotent-replayed");
    let body: Value = resp.json().await.expect("a JSON body");
    Answer {
        status,
        id: body["id"].as_str().unwrap_or_default().to_owned(),
        cursor: body["cursor"].as_str().unwrap_or_default().to_owned(),
        location,
        replayed,
        body,
    }
}

/// Every item of `user`'s inbox once it has reached `cursor`.
async fn inbox_ids(app: &TestApp, user: &str, cursor: &str) -> Vec<String> {
    app.whole_inbox(user, 100, cursor)
        .await
        .iter()
        .map(|i| i["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn the_same_key_and_body_answer_the_first_create_again(app: &TestApp) {
    let user = "idem-same";
    let key = format!("key-{}", uuid::Uuid::new_v4());
    let mut body = notification_for(user, "Once only");
    body["data"] = json!({"post_id": 42, "nested": {"a": 1, "b": [1, 2]}});
    body["priority"] = json!("high");

    let first = create_keyed(app, &key, &body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.replayed, None, "the first create is not a replay");
    assert_eq!(
        first.location.as_deref(),
        Some(format!("/v1/notifications/{}", first.id).as_str())
    );

    let second = create_keyed(app, &key, &body).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.id, first.id);
    assert_eq!(
        second.cursor, first.cursor,
        "the replay answers the first create's cursor"
    );
    assert_eq!(second.replayed.as_deref(), Some("true"));
    assert_eq!(second.location, first.location);
    assert_eq!(second.body, first.body);

    // The same JSON with its keys in another order (nested ones too) is the same request.
    let reordered = r#"{
        "priority": "high",
        "data": {"nested": {"b": [1, 2], "a": 1}, "post_id": 42},
        "body": "Bob replied to your post",
        "title": "Once only",
        "category": "comment",
        "recipient": "idem-same"
    }"#;
    let third = create_raw(app, Some(&key), reordered).await;
    assert_eq!(third.status, 201, "{}", third.body);
    assert_eq!(third.id, first.id);
    assert_eq!(third.cursor, first.cursor);
    assert_eq!(third.replayed.as_deref(), Some("true"));

    // A replay also works once the notification has moved on, and answers the
    // create's cursor, not the latest one.
    let read = app.command(&first.id, "read").await;
    let fourth = create_keyed(app, &key, &body).await;
    assert_eq!(fourth.status, 201, "{}", fourth.body);
    assert_eq!(fourth.id, first.id);
    assert_eq!(fourth.cursor, first.cursor);
    assert_eq!(fourth.replayed.as_deref(), Some("true"));

    let last = read["cursor"].as_str().expect("a cursor");
    assert_eq!(inbox_ids(app, user, last).await, [first.id.as_str()]);
    let n = app
        .get_json(&format!(
            "/v1/notifications/{}?min_position={last}",
            first.id
        ))
        .await;
    assert_eq!(
        n["status"], "read",
        "the replays did not reset the notification"
    );
}

async fn the_same_key_with_another_body_is_refused_and_changes_nothing(app: &TestApp) {
    let user = "idem-other";
    let key = "order-1234-shipped";
    let original = notification_for(user, "Your order shipped");
    let first = create_keyed(app, key, &original).await;
    assert_eq!(first.status, 201, "{}", first.body);

    let changes = [
        ("another title", "title", json!("Your order was lost")),
        ("another recipient", "recipient", json!("idem-someone-else")),
        ("another priority", "priority", json!("urgent")),
        ("data added", "data", json!({"order": 1234})),
        ("another channel", "channels", json!(["email"])),
    ];
    for (what, field, value) in changes {
        let mut body = original.clone();
        body[field] = value;
        let resp = app
            .client
            .post(app.url("/v1/notifications"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        assert!(
            resp.headers().get("idempotent-replayed").is_none(),
            "{what}"
        );
        let problem = expect_problem(resp, 409, REUSED, what).await;
        assert!(
            problem["detail"].as_str().unwrap().contains(key),
            "{what}: the detail names the key: {problem}"
        );
    }

    // An invalid body with a used key is refused for its values first.
    let mut invalid = original.clone();
    invalid["title"] = json!("");
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .header("Idempotency-Key", key)
        .json(&invalid)
        .send()
        .await
        .expect("request sent");
    let problem = expect_problem(resp, 422, VALIDATION, "an invalid body with a used key").await;
    assert_eq!(refused_fields(&problem), ["title"]);

    // The original is unchanged, and the key still replays it.
    let n = app
        .get_json(&format!(
            "/v1/notifications/{}?min_position={}",
            first.id, first.cursor
        ))
        .await;
    assert_eq!(n["title"], "Your order shipped");
    assert_eq!(n["recipient"], user);
    assert_eq!(n["priority"], "normal");
    assert_eq!(n["data"], json!({}));
    assert_eq!(
        n["cursor"],
        first.cursor.as_str(),
        "nothing was recorded after the create"
    );
    let again = create_keyed(app, key, &original).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.id, first.id);
    assert_eq!(again.cursor, first.cursor);
    assert_eq!(again.replayed.as_deref(), Some("true"));

    assert_eq!(
        inbox_ids(app, user, &first.cursor).await,
        [first.id.as_str()]
    );
    let other = app
        .get_json(&format!(
            "/v1/users/idem-someone-else/inbox?min_position={}",
            first.cursor
        ))
        .await;
    assert_eq!(
        other["items"],
        json!([]),
        "the refused recipient got nothing"
    );
}

async fn ten_concurrent_creates_with_one_key_make_one_notification(app: &TestApp) {
    let user = "idem-race";
    let key = uuid::Uuid::new_v4().to_string();
    let body = notification_for(user, "Raced");
    let url = app.url("/v1/notifications");
    let answers = join_all((0..10).map(|_| {
        let client = app.client.clone();
        let url = url.clone();
        let key = key.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .expect("request sent");
            answer(resp).await
        })
    }))
    .await;
    let answers: Vec<Answer> = answers
        .into_iter()
        .map(|a| a.expect("the task ran"))
        .collect();

    for a in &answers {
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let ids: HashSet<&str> = answers.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one notification for one key: {ids:?}");
    let cursors: HashSet<&str> = answers.iter().map(|a| a.cursor.as_str()).collect();
    assert_eq!(
        cursors.len(),
        1,
        "every answer has the create's cursor: {cursors:?}"
    );
    let fresh = answers.iter().filter(|a| a.replayed.is_none()).count();
    assert_eq!(fresh, 1, "exactly one answer is the first create");
    for a in answers.iter().filter(|a| a.replayed.is_some()) {
        assert_eq!(a.replayed.as_deref(), Some("true"));
    }

    let last = max_cursor(answers.iter().map(|a| a.cursor.as_str()));
    let id = answers[0].id.clone();
    assert_eq!(inbox_ids(app, user, &last).await, [id.as_str()]);
    let inbox = app
        .get_json(&format!("/v1/users/{user}/inbox?min_position={last}"))
        .await;
    assert_eq!(inbox["unread_count"], 1);

    if let Some(db) = &app.db {
        let client = db.client().await;
        let row = client
            .query_one(
                "SELECT count(DISTINCT aggregate_id), count(*) FILTER (WHERE sequence = 1) FROM events",
                &[],
            )
            .await
            .expect("count the event streams");
        let (streams, starts): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((streams, starts), (1, 1), "one stream, created once");
    }
}

async fn different_keys_or_no_key_make_different_notifications(app: &TestApp) {
    let user = "idem-many";
    let body = notification_for(user, "Same body");
    let mut answers = Vec::new();
    for key in ["key-a", "key-b", "KEY-A"] {
        let resp = app
            .client
            .post(app.url("/v1/notifications"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let a = answer(resp).await;
        assert_eq!(a.status, 201, "key {key:?}: {}", a.body);
        assert_eq!(a.replayed, None, "key {key:?} is new");
        answers.push(a);
    }
    for _ in 0..3 {
        let a = create_raw(app, None, &body.to_string()).await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.replayed, None, "a create without a key is never a replay");
        answers.push(a);
    }
    let ids: Vec<&str> = answers.iter().map(|a| a.id.as_str()).collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        6,
        "keys are compared exactly, and no key is no key: {ids:?}"
    );

    let last = max_cursor(answers.iter().map(|a| a.cursor.as_str()));
    let mut stored = inbox_ids(app, user, &last).await;
    stored.sort();
    let mut expected: Vec<String> = distinct.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(stored, expected);
}

async fn invalid_keys_are_refused_and_store_nothing(app: &TestApp) {
    let user = "idem-invalid";
    let body = notification_for(user, "Never stored");
    let long = "k".repeat(300);
    let just_too_long = "k".repeat(256);
    let keys: [(&str, &str); 5] = [
        ("an empty key", ""),
        ("a key of 300 characters", &long),
        ("a key of 256 characters", &just_too_long),
        ("a key with a space inside", "my key"),
        ("a key with a tab inside", "my\tkey"),
    ];
    for (what, key) in keys {
        let resp = app
            .client
            .post(app.url("/v1/notifications"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let problem = expect_problem(resp, 422, VALIDATION, what).await;
        assert_eq!(
            refused_fields(&problem),
            ["header.Idempotency-Key"],
            "{what}"
        );
    }

    // A key of exactly 255 characters is fine.
    let longest = "k".repeat(255);
    let first = create_keyed(app, &longest, &body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = create_keyed(app, &longest, &body).await;
    assert_eq!(again.id, first.id);
    assert_eq!(again.replayed.as_deref(), Some("true"));

    assert_eq!(
        inbox_ids(app, user, &first.cursor).await,
        [first.id.as_str()]
    );
}
