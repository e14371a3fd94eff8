//! Tenants through HTTP: a create's `tenant` is on the notification, the
//! inbox filters by it, and analytics counts by it.

use serde_json::json;

use crate::helpers::TestApp;

on_both_backends!(the_inbox_and_analytics_filter_by_the_tenant_a_notification_was_sent_for);

async fn the_inbox_and_analytics_filter_by_the_tenant_a_notification_was_sent_for(app: &TestApp) {
    let mut last = String::new();
    let mut acme = Vec::new();
    for (i, tenant) in [Some("acme"), Some("initech"), None, Some("acme")]
        .iter()
        .enumerate()
    {
        let mut body = json!({"recipient": "tia", "category": "billing", "title": format!("n{i}"), "body": "b"});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let (id, cursor) = app.create(&body).await;
        if *tenant == Some("acme") {
            acme.push(id);
        }
        last = cursor;
    }
    let inbox = app
        .get_json(&format!(
            "/v1/users/tia/inbox?tenant=acme&min_position={last}"
        ))
        .await;
    let ids: Vec<&str> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [acme[1].as_str(), acme[0].as_str()],
        "newest first, acme only"
    );
    assert_eq!(inbox["items"][0]["tenant"], "acme");
    let everything = app
        .get_json(&format!("/v1/users/tia/inbox?min_position={last}"))
        .await;
    assert_eq!(everything["items"].as_array().unwrap().len(), 4);
    let (status, _) = app
        .send("GET", "/v1/users/tia/inbox?tenant=Not%20One", None)
        .await;
    assert_eq!(status, 422);

    let acme_counts = crate::analytics::recent(app, "&tenant=acme", &last).await;
    assert_eq!(acme_counts["counts"]["created"], 2, "{acme_counts}");
    let initech = crate::analytics::recent(app, "&tenant=initech", &last).await;
    assert_eq!(initech["counts"]["created"], 1);
    let all = crate::analytics::recent(app, "", &last).await;
    assert_eq!(all["counts"]["created"], 4);
}
