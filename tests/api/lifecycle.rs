//! A notification's whole life through the API.

use serde_json::json;

use crate::helpers::{notification_for, TestApp};

on_both_backends!(
    an_in_app_notification_lives_its_whole_life,
    a_scheduled_notification_can_be_cancelled_but_not_read,
    an_email_notification_waits_for_its_channel,
    commands_answer_with_cursors_that_read_your_own_write,
);

async fn an_in_app_notification_lives_its_whole_life(app: &TestApp) {
    let mut body = notification_for("alice", "New reply");
    body["data"] = json!({"post_id": 42, "tags": ["a", "b"]});
    body["priority"] = json!("high");
    body["group_key"] = json!("post-42");
    let (id, cursor) = app.create(&body).await;

    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(n["id"], id.as_str());
    assert_eq!(n["recipient"], "alice");
    assert_eq!(n["data"], json!({"post_id": 42, "tags": ["a", "b"]}));
    assert_eq!(n["priority"], "high");
    assert_eq!(n["group_key"], "post-42");
    assert_eq!(n["lifecycle"], "delivered");
    assert_eq!(n["status"], "unread");
    assert_eq!(n["seen"], false);
    assert_eq!(n["cursor"], cursor.as_str());
    assert!(n["delivered_at"].as_str().unwrap() >= n["created_at"].as_str().unwrap());

    let inbox = app
        .get_json(&format!("/v1/users/alice/inbox?min_position={cursor}"))
        .await;
    assert_eq!(inbox["unread_count"], 1);
    assert_eq!(inbox["unseen_count"], 1);
    assert_eq!(
        inbox["items"][0], n,
        "the inbox item is the same view as GET"
    );

    let seen = app.command(&id, "seen").await;
    assert_eq!(seen["changed"], true);
    assert_eq!(seen["notification"]["seen"], true);
    assert_eq!(seen["notification"]["status"], "unread");

    let read = app.command(&id, "read").await;
    assert_eq!(read["notification"]["status"], "read");
    let again = app.command(&id, "read").await;
    assert_eq!(
        again["changed"], false,
        "reading a read notification changes nothing"
    );
    assert_eq!(again["cursor"], read["cursor"]);

    let unread = app.command(&id, "unread").await;
    assert_eq!(unread["notification"]["status"], "unread");
    assert_eq!(unread["notification"]["read_at"], json!(null));

    let click = app.command(&id, "click").await;
    assert_eq!(click["notification"]["clicked"], true);
    assert_eq!(click["notification"]["status"], "read");

    let archived = app.command(&id, "archive").await;
    let c = archived["cursor"].as_str().unwrap();
    let inbox = app
        .get_json(&format!("/v1/users/alice/inbox?min_position={c}"))
        .await;
    assert_eq!(
        inbox["items"],
        json!([]),
        "archived notifications leave the inbox"
    );
    let only_archived = app
        .get_json(&format!(
            "/v1/users/alice/inbox?archived=true&min_position={c}"
        ))
        .await;
    assert_eq!(only_archived["items"][0]["id"], id.as_str());

    let unarchived = app.command(&id, "unarchive").await;
    assert_eq!(unarchived["notification"]["archived"], false);

    let resp = app
        .post_empty(&format!("/v1/notifications/{id}/cancel"))
        .await;
    assert_eq!(
        resp.status(),
        409,
        "a delivered notification cannot be cancelled"
    );

    let deleted = app
        .client
        .delete(app.url(&format!("/v1/notifications/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let deleted: serde_json::Value = deleted.json().await.unwrap();
    assert_eq!(deleted["notification"]["lifecycle"], "deleted");
    let c = deleted["cursor"].as_str().unwrap();

    let inbox = app
        .get_json(&format!("/v1/users/alice/inbox?min_position={c}"))
        .await;
    assert_eq!(inbox["items"], json!([]));
    assert_eq!(inbox["unread_count"], 0);
    let gone = app
        .get(&format!("/v1/notifications/{id}?min_position={c}"))
        .await;
    assert_eq!(gone.status(), 404);
    for action in [
        "read",
        "unread",
        "seen",
        "click",
        "archive",
        "unarchive",
        "cancel",
    ] {
        let resp = app
            .post_empty(&format!("/v1/notifications/{id}/{action}"))
            .await;
        assert_eq!(resp.status(), 409, "{action} after delete");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["type"], "urn:tidings:problem:illegal-transition");
    }
}

async fn a_scheduled_notification_can_be_cancelled_but_not_read(app: &TestApp) {
    let mut body = notification_for("carol", "Reminder");
    body["deliver_at"] = json!("2999-01-01T09:00:00Z");
    let (id, cursor) = app.create(&body).await;
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(n["lifecycle"], "scheduled");
    assert_eq!(n["deliver_at"], "2999-01-01T09:00:00.000000Z");
    let inbox = app
        .get_json(&format!("/v1/users/carol/inbox?min_position={cursor}"))
        .await;
    assert_eq!(
        inbox["items"],
        json!([]),
        "not in the inbox before delivery"
    );

    let resp = app
        .post_empty(&format!("/v1/notifications/{id}/read"))
        .await;
    assert_eq!(resp.status(), 409);
    let resp = app
        .post(
            &format!("/v1/notifications/{id}/deliver"),
            &json!({"channel": "in_app"}),
        )
        .await;
    assert_eq!(resp.status(), 409, "not due yet");

    let cancelled = app.command(&id, "cancel").await;
    assert_eq!(cancelled["notification"]["lifecycle"], "cancelled");
    let again = app.command(&id, "cancel").await;
    assert_eq!(again["changed"], false);
}

async fn an_email_notification_waits_for_its_channel(app: &TestApp) {
    let mut body = notification_for("dave", "Invoice");
    body["channels"] = json!(["email", "in_app", "email"]);
    body["deliver_at"] = json!(null);
    let (id, cursor) = app.create(&body).await;
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(
        n["channels"],
        json!(["email", "in_app"]),
        "duplicates are dropped"
    );
    assert_eq!(n["deliveries"].as_array().unwrap().len(), 1);

    let mut body = notification_for("dave", "Email only");
    body["channels"] = json!(["email"]);
    let (id2, _) = app.create(&body).await;
    let resp = app
        .post_empty(&format!("/v1/notifications/{id2}/seen"))
        .await;
    assert_eq!(resp.status(), 409, "pending notifications cannot be seen");

    let resp = app
        .post(
            &format!("/v1/notifications/{id2}/deliver"),
            &json!({"channel": "sms"}),
        )
        .await;
    assert_eq!(resp.status(), 409, "sms was not requested");
    let delivered = app
        .post(
            &format!("/v1/notifications/{id2}/deliver"),
            &json!({"channel": "email"}),
        )
        .await;
    assert_eq!(delivered.status(), 200);
    let delivered: serde_json::Value = delivered.json().await.unwrap();
    assert_eq!(delivered["notification"]["lifecycle"], "delivered");
    let c = delivered["cursor"].as_str().unwrap();
    let inbox = app
        .get_json(&format!("/v1/users/dave/inbox?min_position={c}"))
        .await;
    let ids: Vec<_> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!(id)],
        "email-only notifications are not in the in-app inbox"
    );
    let resp = app
        .post(
            &format!("/v1/notifications/{id2}/deliver"),
            &json!({"channel": "email"}),
        )
        .await;
    assert_eq!(resp.status(), 409, "delivered twice on one channel");
}

async fn commands_answer_with_cursors_that_read_your_own_write(app: &TestApp) {
    let mut last = String::new();
    for i in 0..20 {
        let (id, cursor) = app
            .create(&notification_for("erin", &format!("n{i}")))
            .await;
        assert!(cursor > last, "cursors grow with commit order");
        last = cursor;
        let read = app.command(&id, "read").await;
        let c = read["cursor"].as_str().unwrap().to_owned();
        assert!(c > last);
        last = c;
        // Without sleeping: the query waits for its min_position.
        let n = app
            .get_json(&format!("/v1/notifications/{id}?min_position={last}"))
            .await;
        assert_eq!(n["status"], "read");
        let inbox = app
            .get_json(&format!("/v1/users/erin/inbox?min_position={last}"))
            .await;
        assert_eq!(inbox["unread_count"], 0);
        assert_eq!(inbox["items"].as_array().unwrap().len(), i + 1);
    }
}
