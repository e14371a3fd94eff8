//! Inbox paging, filters and counts.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::helpers::{max_cursor, notification_for, TestApp};

on_both_backends!(
    two_hundred_fifty_notifications_page_with_no_gap_or_duplicate,
    pages_stay_stable_while_new_notifications_arrive,
    filters_by_status_category_and_archived_combine,
    read_all_leaves_the_counts_exact,
);

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn two_hundred_fifty_notifications_page_with_no_gap_or_duplicate(app: &TestApp) {
    let mut created = Vec::new();
    let mut cursors = Vec::new();
    for i in 0..250 {
        let (id, cursor) = app
            .create(&notification_for("frank", &format!("n{i}")))
            .await;
        created.push(id);
        cursors.push(cursor);
    }
    let last = max_cursor(cursors.iter().map(String::as_str));
    for limit in [7, 20, 100] {
        let items = app.whole_inbox("frank", limit, &last).await;
        let got = ids(&items);
        let newest_first: Vec<String> = created.iter().rev().cloned().collect();
        assert_eq!(
            got, newest_first,
            "limit {limit}: every notification once, newest first"
        );
    }
    let first = app
        .get_json(&format!("/v1/users/frank/inbox?min_position={last}"))
        .await;
    assert_eq!(
        first["items"].as_array().unwrap().len(),
        20,
        "the default page is 20"
    );
    assert_eq!(first["unread_count"], 250);
    assert_eq!(first["unseen_count"], 250);
}

async fn pages_stay_stable_while_new_notifications_arrive(app: &TestApp) {
    let mut before = Vec::new();
    let mut last = String::new();
    for i in 0..30 {
        let (id, cursor) = app
            .create(&notification_for("gina", &format!("old {i}")))
            .await;
        before.push(id);
        last = cursor;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut round = 0;
    loop {
        let mut path = format!("/v1/users/gina/inbox?limit=4&min_position={last}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get_json(&path).await;
        seen.extend(ids(page["items"].as_array().unwrap()));
        // New notifications arrive between every two pages.
        for j in 0..3 {
            let (_, c) = app
                .create(&notification_for("gina", &format!("new {round}.{j}")))
                .await;
            last = c;
        }
        round += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = before.iter().rev().cloned().collect();
    assert_eq!(
        seen, expected,
        "the walk sees exactly the notifications that existed, once each"
    );
}

async fn filters_by_status_category_and_archived_combine(app: &TestApp) {
    let mut ids_by_title = std::collections::HashMap::new();
    let mut last = String::new();
    for (title, category) in [
        ("a", "comment"),
        ("b", "billing"),
        ("c", "comment"),
        ("d", "billing"),
    ] {
        let mut body = notification_for("hank", title);
        body["category"] = json!(category);
        let (id, c) = app.create(&body).await;
        ids_by_title.insert(title, id);
        last = c;
    }
    app.command(&ids_by_title["a"], "read").await;
    app.command(&ids_by_title["b"], "read").await;
    let archived = app.command(&ids_by_title["b"], "archive").await;
    last = max_cursor([last.as_str(), archived["cursor"].as_str().unwrap()]);

    let titles = |page: &Value| -> HashSet<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let q = |query: &str| format!("/v1/users/hank/inbox?{query}&min_position={last}");
    let all = app.get_json(&q("")).await;
    assert_eq!(
        titles(&all),
        HashSet::from(["a", "c", "d"].map(String::from))
    );
    assert_eq!(all["unread_count"], 2, "c and d; b is archived");
    let unread = app.get_json(&q("status=unread")).await;
    assert_eq!(titles(&unread), HashSet::from(["c", "d"].map(String::from)));
    let read = app.get_json(&q("status=read")).await;
    assert_eq!(titles(&read), HashSet::from(["a".to_owned()]));
    let comments = app.get_json(&q("category=comment&status=unread")).await;
    assert_eq!(titles(&comments), HashSet::from(["c".to_owned()]));
    let archived = app.get_json(&q("archived=true")).await;
    assert_eq!(titles(&archived), HashSet::from(["b".to_owned()]));
    let archived_unread = app.get_json(&q("archived=true&status=unread")).await;
    assert_eq!(titles(&archived_unread), HashSet::new());
    let other_user = app.get_json(&q("").replace("hank", "nobody")).await;
    assert_eq!(other_user["items"], json!([]));
    assert_eq!(other_user["unread_count"], 0);
}

async fn read_all_leaves_the_counts_exact(app: &TestApp) {
    let mut ids = Vec::new();
    let mut last = String::new();
    for i in 0..25 {
        let (id, c) = app
            .create(&notification_for("iris", &format!("n{i}")))
            .await;
        ids.push(id);
        last = c;
    }
    app.command(&ids[0], "read").await;
    app.command(&ids[1], "seen").await;
    let archived = app.command(&ids[2], "archive").await;
    last = max_cursor([last.as_str(), archived["cursor"].as_str().unwrap()]);
    let before = app
        .get_json(&format!("/v1/users/iris/inbox?min_position={last}"))
        .await;
    assert_eq!(before["unread_count"], 23);
    assert_eq!(before["unseen_count"], 22);

    let resp = app
        .post_empty(&format!(
            "/v1/users/iris/inbox/read-all?min_position={last}"
        ))
        .await;
    assert_eq!(resp.status(), 200);
    let done: Value = resp.json().await.unwrap();
    assert_eq!(done["marked"], 24, "every unread one, the archived one too");
    let c = done["cursor"].as_str().unwrap();
    let after = app
        .get_json(&format!("/v1/users/iris/inbox?min_position={c}&limit=100"))
        .await;
    assert_eq!(after["unread_count"], 0);
    assert_eq!(after["unseen_count"], 0, "reading implies seeing");
    assert!(after["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "read"));
    let archived = app
        .get_json(&format!(
            "/v1/users/iris/inbox?archived=true&min_position={c}"
        ))
        .await;
    assert_eq!(archived["items"][0]["status"], "read");

    let again: Value = app
        .post_empty("/v1/users/iris/inbox/read-all")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["marked"], 0, "nothing left to mark");
}

mod time_travel {
    use serde_json::Value;

    use crate::helpers::{notification_for, TestApp};

    on_both_backends!(the_inbox_as_of_a_cursor_or_time_is_what_it_was_then);

    fn titles(page: &Value) -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn as_of(app: &TestApp, point: &str, extra: &str) -> Value {
        let point = point.replace('+', "%2B");
        app.get_json(&format!("/v1/users/zoe/inbox?as_of={point}{extra}"))
            .await
    }

    async fn the_inbox_as_of_a_cursor_or_time_is_what_it_was_then(app: &TestApp) {
        let (a, _) = app.create(&notification_for("zoe", "A")).await;
        let (b, after_b) = app.create(&notification_for("zoe", "B")).await;
        let after_read = app.command(&a, "read").await["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        let after_archive = app.command(&b, "archive").await["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        let deleted = app
            .client
            .delete(app.url(&format!("/v1/notifications/{a}")))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let after_delete = deleted["cursor"].as_str().unwrap().to_owned();
        let (_, now) = app.create(&notification_for("zoe", "C")).await;

        let page = as_of(app, &after_b, "").await;
        assert_eq!(titles(&page), ["B", "A"]);
        assert_eq!(
            (page["unread_count"].as_u64(), page["unseen_count"].as_u64()),
            (Some(2), Some(2))
        );

        let page = as_of(app, &after_read, "").await;
        assert_eq!(titles(&page), ["B", "A"]);
        assert_eq!(page["unread_count"], 1);
        assert_eq!(page["items"][1]["status"], "read");

        let page = as_of(app, &after_archive, "").await;
        assert_eq!(titles(&page), ["A"]);
        assert_eq!(page["unread_count"], 0);
        assert_eq!(
            titles(&as_of(app, &after_archive, "&archived=true").await),
            ["B"]
        );

        assert_eq!(
            titles(&as_of(app, &after_delete, "").await),
            Vec::<String>::new()
        );
        assert_eq!(titles(&as_of(app, &now, "").await), ["C"]);

        // A time works like a cursor: everything recorded up to then.
        let history = app.get_json(&format!("/v1/notifications/{a}/events")).await;
        let read_at = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "NotificationRead")
            .unwrap()["recorded_at"]
            .as_str()
            .unwrap()
            .to_owned();
        let page = as_of(app, &read_at, "").await;
        assert_eq!(titles(&page), ["B", "A"]);
        assert_eq!(page["unread_count"], 1);
        let before_everything = as_of(app, "2000-01-01T00:00:00Z", "").await;
        assert_eq!(titles(&before_everything), Vec::<String>::new());

        let bad = app.get("/v1/users/zoe/inbox?as_of=yesterday").await;
        assert_eq!(bad.status(), 422);
        // The live inbox is untouched by all this.
        let live = app
            .get_json(&format!("/v1/users/zoe/inbox?min_position={now}"))
            .await;
        assert_eq!(titles(&live), ["C"]);
    }
}
