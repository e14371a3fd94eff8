//! The spec tells the truth: every path served is in it (the export and the
//! WebSocket upgrade too), a 405 says what is allowed, links walk a
//! notification's lifecycle, and constraints the server enforces are in the
//! schemas. schemathesis checks the rest in CI (.ci/run).

use serde_json::Value;

use crate::helpers::{Backend, TestApp};

async fn document(app: &TestApp) -> Value {
    app.get_json("/openapi.json").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_served_is_in_the_document_and_a_405_says_what_is_allowed() {
    let app = TestApp::spawn(Backend::Memory, "spec paths").await.unwrap();
    let spec = document(&app).await;
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/v1/stream",
        "/v1/events/export",
        "/openapi.json",
        "/docs",
        "/health/ready",
    ] {
        assert!(paths.contains_key(path), "{path} is in the document");
    }
    assert!(spec["paths"]["/v1/stream"]["get"]["responses"]["101"].is_object());
    assert!(
        spec["paths"]["/v1/events/export"]["get"]["responses"]["200"]["content"]
            ["application/x-ndjson"]
            .is_object()
    );
    for (method, path, allowed) in [
        (
            "TRACE",
            "/v1/notifications/01a2024f-eced-76cf-8900-aa4e3541250c",
            "DELETE, GET, HEAD",
        ),
        ("PUT", "/v1/users/ann/inbox", "GET, HEAD"),
        (
            "GET",
            "/v1/notifications/01a2024f-eced-76cf-8900-aa4e3541250c/read",
            "POST",
        ),
    ] {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allowed, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schemas_say_what_the_server_enforces_and_what_can_be_null() {
    let app = TestApp::spawn(Backend::Memory, "spec schemas")
        .await
        .unwrap();
    let spec = document(&app).await;
    let schemas = &spec["components"]["schemas"];
    let create = &schemas["CreateNotificationRequest"];
    assert_eq!(create["additionalProperties"], false);
    assert_eq!(create["properties"]["title"]["maxLength"], 200);
    assert_eq!(create["properties"]["body"]["maxLength"], 10_000);
    assert_eq!(
        create["properties"]["priority"]["enum"],
        serde_json::json!(["low", "normal", "high", "urgent", null])
    );
    assert_eq!(create["properties"]["channels"]["minItems"], 1);
    assert_eq!(create["properties"]["deliver_at"]["format"], "date-time");
    assert!(create["properties"]["recipient"]["pattern"].is_string());
    assert_eq!(
        schemas["InboxPage"]["properties"]["next_cursor"]["nullable"],
        true
    );
    assert_eq!(
        schemas["Notification"]["properties"]["read_at"]["nullable"],
        true
    );
    assert_eq!(
        schemas["Notification"]["properties"]["status"]["enum"],
        serde_json::json!(["unread", "read"])
    );
    let inbox = &spec["paths"]["/v1/users/{user}/inbox"]["get"]["parameters"];
    let limit = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        (
            limit["schema"]["minimum"].as_f64(),
            limit["schema"]["maximum"].as_f64()
        ),
        (Some(1.0), Some(100.0))
    );
    let id = &spec["paths"]["/v1/notifications/{id}"]["get"]["parameters"][0];
    assert_eq!(id["schema"]["format"], "uuid");
    // A create links to what can be done with its id; an inbox page to its first item.
    let links = &spec["paths"]["/v1/notifications"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["GetNotification"]["operationId"], "getNotification");
    assert_eq!(links["MarkRead"]["parameters"]["id"], "$response.body#/id");
    let from_inbox = &spec["paths"]["/v1/users/{user}/inbox"]["get"]["responses"]["200"]["links"];
    assert_eq!(
        from_inbox["GetNotification"]["parameters"]["id"],
        "$response.body#/items/0/id"
    );
    app.cleanup().await;
}
