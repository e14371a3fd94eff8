//! Bulk inbox operations through HTTP: exact counts, a filter by category,
//! status, time and tenant, and one `counts` stream update for the whole
//! operation however many appends it takes.

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::TestApp;
use crate::stream_client::Subscriber;

/// Creates `n` notifications for `user`: `billing` and `social` in turn,
/// every third for tenant `acme`. The last create's cursor.
async fn fill(app: &TestApp, user: &str, n: usize) -> String {
    let answers: Vec<String> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let mut body = json!({
                "recipient": user,
                "category": if i % 2 == 0 { "billing" } else { "social" },
                "title": format!("n{i}"), "body": "b"
            });
            if i % 3 == 0 {
                body["tenant"] = json!("acme");
            }
            app.create(&body).await.1
        })
        .buffer_unordered(16)
        .collect()
        .await;
    crate::helpers::max_cursor(answers.iter().map(String::as_str))
}

async fn bulk(app: &TestApp, user: &str, body: Value) -> (u16, Value) {
    app.send("POST", &format!("/v1/users/{user}/inbox/bulk"), Some(&body))
        .await
}

on_both_backends!(
    a_bulk_read_changes_what_its_filter_names_and_announces_the_counts_once,
    bulk_filters_combine_and_a_repeat_changes_nothing,
    refused_bulk_requests_name_the_field_and_change_nothing,
);

async fn a_bulk_read_changes_what_its_filter_names_and_announces_the_counts_once(app: &TestApp) {
    let cursor = fill(app, "bea", 1_200).await;
    let before = app
        .get_json(&format!("/v1/users/bea/inbox?min_position={cursor}"))
        .await;
    assert_eq!(before["unread_count"], 1_200);
    // Live from here: every create is in the inbox already.
    let mut sub = Subscriber::connect(app, "topics=inbox:bea").await;
    sub.expect("subscribed").await;

    let (status, done) = bulk(
        app,
        "bea",
        json!({"action": "read", "filter": {"category": "billing"}}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["matched"].as_u64(), done["changed"].as_u64()),
        (Some(600), Some(600))
    );

    let updates = sub
        .updates_until(|got| got.iter().any(|u| u["kind"] == "counts"))
        .await;
    let changed = updates.iter().filter(|u| u["kind"] == "changed").count();
    assert_eq!(changed, 600, "each row, in an append of 500 and one of 100");
    let counts: Vec<&Value> = updates.iter().filter(|u| u["kind"] == "counts").collect();
    assert_eq!(counts.len(), 1, "one counts update for the whole operation");
    assert_eq!(counts[0]["data"]["unread_count"], 600, "{}", counts[0]);

    // The operation run again (a client retrying after losing the answer)
    // changes nothing, and still ends with the counts announced: they
    // never hang on what the last append happened to change.
    let (status, again) = bulk(
        app,
        "bea",
        json!({"action": "read", "filter": {"category": "billing"}}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["matched"].as_u64(), again["changed"].as_u64()),
        (Some(600), Some(0))
    );
    let updates = sub
        .updates_until(|got| got.iter().any(|u| u["kind"] == "counts"))
        .await;
    let counts: Vec<&Value> = updates.iter().filter(|u| u["kind"] == "counts").collect();
    assert_eq!(counts.len(), 1, "{updates:?}");
    assert_eq!(counts[0]["data"]["unread_count"], 600, "{}", counts[0]);
    sub.close().await;

    let after = app
        .get_json(&format!(
            "/v1/users/bea/inbox?min_position={}",
            done["cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(after["unread_count"], 600);
    let unread_billing = app
        .get_json("/v1/users/bea/inbox?status=unread&category=billing")
        .await;
    assert_eq!(unread_billing["items"].as_array().unwrap().len(), 0);
}

async fn bulk_filters_combine_and_a_repeat_changes_nothing(app: &TestApp) {
    let cursor = fill(app, "cal", 60).await;
    app.get_json(&format!("/v1/users/cal/inbox?min_position={cursor}"))
        .await;
    // 60 notifications: every third (20) for acme, of which half billing.
    let (status, done) = bulk(
        app,
        "cal",
        json!({"action": "archive", "filter": {"tenant": "acme", "category": "billing"}}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["matched"].as_u64(), done["changed"].as_u64()),
        (Some(10), Some(10))
    );
    let (_, again) = bulk(
        app,
        "cal",
        json!({"action": "archive", "filter": {"tenant": "acme", "category": "billing"}}),
    )
    .await;
    assert_eq!(
        (again["matched"].as_u64(), again["changed"].as_u64()),
        (Some(10), Some(0))
    );
    let archived = app
        .get_json(&format!(
            "/v1/users/cal/inbox?archived=true&limit=100&min_position={}",
            done["cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(archived["items"].as_array().unwrap().len(), 10);

    // Nothing was created before 2000; everything before 2100.
    let (_, none) = bulk(
        app,
        "cal",
        json!({"action": "seen", "filter": {"before": "2000-01-01T00:00:00Z"}}),
    )
    .await;
    assert_eq!(none["matched"], 0);
    let (_, seen) = bulk(
        app,
        "cal",
        json!({"action": "seen", "filter": {"before": "2100-01-01T00:00:00Z", "status": "unread"}}),
    )
    .await;
    assert_eq!(
        (seen["matched"].as_u64(), seen["changed"].as_u64()),
        (Some(60), Some(60))
    );
    let (_, gone) = bulk(app, "cal", json!({"action": "delete"})).await;
    assert_eq!(
        (gone["matched"].as_u64(), gone["changed"].as_u64()),
        (Some(60), Some(60))
    );
    let empty = app
        .get_json(&format!(
            "/v1/users/cal/inbox?min_position={}",
            gone["cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);
    assert_eq!(empty["unread_count"], 0);
}

async fn refused_bulk_requests_name_the_field_and_change_nothing(app: &TestApp) {
    let cursor = fill(app, "dee", 4).await;
    app.get_json(&format!("/v1/users/dee/inbox?min_position={cursor}"))
        .await;
    for (body, status) in [
        (json!({"action": "explode"}), 422),
        (
            json!({"action": "read", "filter": {"status": "maybe"}}),
            422,
        ),
        (
            json!({"action": "read", "filter": {"before": "yesterday"}}),
            422,
        ),
        (
            json!({"action": "read", "filter": {"category": "Not A Category"}}),
            422,
        ),
        (json!({"action": "read", "filter": {"colour": "red"}}), 400),
        (json!({"action": "read", "filter": ["billing"]}), 400),
        (json!({"filter": {}}), 400),
    ] {
        let (got, problem) = bulk(app, "dee", body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
    }
    let inbox = app.get_json("/v1/users/dee/inbox").await;
    assert_eq!(inbox["unread_count"], 4, "nothing changed");
}
