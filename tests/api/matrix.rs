//! The access matrix: every operation of the OpenAPI document × every kind
//! of principal → the status its rule (the document's `x-tidings-access`)
//! says, through the real surface. User A's token never reaches user B's
//! inbox, notifications, audit or topics, and B's never A's. An operation
//! without a declared rule fails the test.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::access::{
    call, create_as, create_with_cursor, secured, token, ADMIN, READ, SEND, SEND2,
};
use crate::helpers::{notification_for, TestApp, TestDb};
use crate::stream_client::Frame;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    /// alice's token: every resource of the matrix is alice's.
    UserA,
    /// bob's token.
    UserB,
    ExpiredToken,
    /// `billing` (send): sent every notification of the matrix.
    SendKey,
    /// `marketing` (send): sent none of them.
    OtherSendKey,
    ReadKey,
    AdminKey,
    RevokedKey,
}

const EVERYONE: [Who; 9] = [
    Who::Nobody,
    Who::UserA,
    Who::UserB,
    Who::ExpiredToken,
    Who::SendKey,
    Who::OtherSendKey,
    Who::ReadKey,
    Who::AdminKey,
    Who::RevokedKey,
];

/// What a cell must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Anything but 401, 403 (and, on a notification, 404).
    Allowed,
    Unauthorized,
    Forbidden,
    /// 404: someone else's notification is as if it did not exist.
    Hidden,
}

struct Rule {
    public: bool,
    scopes: Vec<String>,
    own_sends: bool,
    user: bool,
}

impl Rule {
    fn of(operation: &Value) -> Option<Self> {
        let access = operation.get("x-tidings-access")?;
        Some(Self {
            public: access["public"].as_bool()?,
            scopes: access["scopes"]
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            own_sends: access["own_sends"].as_bool()?,
            user: !access["user"].is_null(),
        })
    }
}

fn key_scopes(who: Who) -> &'static [&'static str] {
    match who {
        Who::SendKey | Who::OtherSendKey => &["send"],
        Who::ReadKey => &["read"],
        Who::AdminKey => &["admin"],
        _ => &[],
    }
}

/// The rule's answer for `who` on a resource of alice's, sent by `billing`.
fn expected(rule: &Rule, who: Who, on_notification: bool) -> Expect {
    if rule.public {
        return Expect::Allowed;
    }
    match who {
        Who::Nobody | Who::ExpiredToken | Who::RevokedKey => Expect::Unauthorized,
        Who::UserA if rule.user => Expect::Allowed,
        Who::UserB if rule.user => {
            if on_notification {
                Expect::Hidden
            } else {
                Expect::Forbidden
            }
        }
        Who::UserA | Who::UserB => Expect::Forbidden,
        key => {
            let scopes = key_scopes(key);
            if rule.scopes.iter().any(|s| scopes.contains(&s.as_str())) {
                Expect::Allowed
            } else if rule.own_sends && scopes.contains(&"send") {
                if key == Who::SendKey {
                    Expect::Allowed
                } else {
                    Expect::Hidden
                }
            } else {
                Expect::Forbidden
            }
        }
    }
}

fn holds(expect: Expect, status: u16, on_notification: bool) -> bool {
    match expect {
        Expect::Allowed => {
            let refused = matches!(status, 401 | 403 | 429);
            let hidden = on_notification && status == 404;
            !refused && !hidden
        }
        Expect::Unauthorized => status == 401,
        Expect::Forbidden => status == 403,
        Expect::Hidden => status == 404,
    }
}

/// The principals' credentials; the revoked key is made and revoked first.
struct Credentials {
    alice: String,
    bob: String,
    expired: String,
    revoked: String,
}

impl Credentials {
    async fn make(app: &TestApp) -> Self {
        let resp = call(
            app,
            "POST",
            "/v1/keys",
            Some(ADMIN),
            Some(&json!({"name": "old", "scopes": ["send", "read", "admin"]})),
        )
        .await;
        let made: Value = resp.json().await.unwrap();
        let revoked = made["secret"].as_str().unwrap().to_owned();
        let id = made["id"].as_str().unwrap();
        let resp = call(
            app,
            "POST",
            &format!("/v1/keys/{id}/revoke"),
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(resp.status(), 200);
        Self {
            alice: token("alice", 3_600, None),
            bob: token("bob", 3_600, None),
            expired: token("alice", -5, None),
            revoked,
        }
    }

    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::UserA => Some(&self.alice),
            Who::UserB => Some(&self.bob),
            Who::ExpiredToken => Some(&self.expired),
            Who::SendKey => Some(SEND),
            Who::OtherSendKey => Some(SEND2),
            Who::ReadKey => Some(READ),
            Who::AdminKey => Some(ADMIN),
            Who::RevokedKey => Some(&self.revoked),
        }
    }
}

/// The body an operation needs, when it takes one.
fn body_of(operation: &str) -> Option<Value> {
    match operation {
        "createNotification" => Some(notification_for("alice", "matrix")),
        "deliver" => Some(json!({"channel": "email"})),
        "bulkInbox" => Some(json!({"action": "seen"})),
        "failDelivery" => Some(json!({"channel": "email", "reason": "bounced"})),
        "createKey" => Some(json!({"name": "made-in-matrix", "scopes": ["read"]})),
        "replaceRecipient" => Some(json!({"display_name": "Alice", "locale": "en"})),
        "patchRecipient" => Some(json!({"time_zone": "Europe/Berlin"})),
        "setPreferences" => Some(json!({"channels": {"email": false}})),
        "configureCategory" => Some(json!({"default_channels": ["in_app"], "critical": false})),
        "setTenantDefaults" => Some(json!({"channels": {"sms": false}})),
        "setBatching" => Some(json!({"window": {"kind": "fixed", "seconds": 60}, "max_items": 10})),
        "simulateBatching" => Some(json!({
            "policy": {"window": {"kind": "fixed", "seconds": 60}, "max_items": 10},
            "from": "2026-12-01T00:00:00Z", "to": "2026-12-02T00:00:00Z"
        })),
        "addTemplateVersion" => Some(json!({
            "default_locale": "en", "locales": {"en": {"title": "Hi {{ name }}", "body": ""}}
        })),
        "rollBackTemplate" => Some(json!({})),
        "defineExperiment" => Some(json!({
            "category": "comment",
            "variants": [{"name": "control", "weight": 1}, {"name": "b", "weight": 1}]
        })),
        "concludeExperiment" => Some(json!({})),
        "setExperimentWeights" => Some(json!({"weights": [1, 2]})),
        "defineExperimentMetric" => Some(json!({"outcome": "clicked", "within_seconds": 60})),
        "previewTemplate" => Some(json!({"variables": {"name": "Ann"}})),
        _ => None,
    }
}

on_both_backends!(
    spawned_by super::spawn_matrix;
    every_operation_answers_every_principal_as_its_rule_says,
);

async fn spawn_matrix(backend: crate::helpers::Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, |db: Option<&TestDb>| {
        let mut s = secured(db);
        // The matrix sends hundreds of requests as fast as it can.
        s.access.rate_user = 0;
        s.access.rate_send = 0;
        s.access.rate_read = 0;
        s.access.rate_admin = 0;
        s.stream_auth_wait_ms = 300;
        s
    })
    .await
}

async fn every_operation_answers_every_principal_as_its_rule_says(app: &TestApp) {
    let document: Value = app.get_json("/openapi.json").await;
    let credentials = Credentials::make(app).await;
    let mut ruled = BTreeSet::new();
    let mut cells = 0;
    let mut wrong = Vec::new();
    for (template, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            let rule = Rule::of(operation)
                .unwrap_or_else(|| panic!("`{id}` ({method} {template}) declares no access rule"));
            ruled.insert(id.to_owned());
            if id == "stream" {
                continue; // a WebSocket: `streams_answer_every_principal_as_the_rule_says`
            }
            // What a send key sees only of its own: a notification, a send.
            let on_notification = template.starts_with("/v1/notifications/{id}")
                || template.starts_with("/v1/sends/{id}");
            for who in EVERYONE {
                // A fresh resource per cell: one cell's delete or revoke
                // never changes what another finds.
                let mut path = template
                    .replace("{user}", "alice")
                    .replace("{name}", "inbox")
                    .replace("{category}", "comment")
                    .replace("{tenant}", "acme")
                    .replace("{topic}", "news")
                    .replace("{cursor}", "00000000000000010000000000000001");
                if template.starts_with("/v1/sends/") {
                    let mut body = notification_for("alice", "matrix");
                    body.as_object_mut().unwrap().remove("recipient");
                    body["recipients"] = json!(["alice"]);
                    let resp =
                        call(app, "POST", "/v1/notifications", Some(SEND), Some(&body)).await;
                    let made: Value = resp.json().await.unwrap();
                    path = path.replace("{id}", made["send_id"].as_str().unwrap());
                    path = format!("{path}?min_position={}", made["cursor"].as_str().unwrap());
                } else if on_notification {
                    let (made, cursor) = create_with_cursor(app, SEND, "alice").await;
                    path = path.replace("{id}", &made);
                    if id == "getNotification" {
                        // Read the create's own write, not a race with it.
                        path = format!("{path}?min_position={cursor}");
                    }
                } else if path.contains("{id}") {
                    let resp = call(
                        app,
                        "POST",
                        "/v1/keys",
                        Some(ADMIN),
                        Some(&json!({"name": "victim", "scopes": ["read"]})),
                    )
                    .await;
                    let made: Value = resp.json().await.unwrap();
                    path = path.replace("{id}", made["id"].as_str().unwrap());
                }
                let resp = call(
                    app,
                    &method.to_uppercase(),
                    &path,
                    credentials.of(who),
                    body_of(id).as_ref(),
                )
                .await;
                let status = resp.status().as_u16();
                let expect = expected(&rule, who, on_notification);
                cells += 1;
                if !holds(expect, status, on_notification) {
                    let body = resp.text().await.unwrap_or_default();
                    wrong.push(format!(
                        "{id} {method} {path} as {who:?}: expected {expect:?}, got {status} {body}"
                    ));
                }
            }
        }
    }
    let stream_cells = streams_answer_every_principal_as_the_rule_says(app, &credentials).await;
    eprintln!(
        "access matrix: {} operations × {} principals = {cells} HTTP cells and {stream_cells} stream cells; {} wrong",
        ruled.len(),
        EVERYONE.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let tabled: BTreeSet<String> = tidings::api::rules::RULES
        .iter()
        .map(|(id, _)| (*id).to_owned())
        .collect();
    assert_eq!(
        tabled, ruled,
        "every rule names an operation that exists, and each operation has one"
    );
}

/// Opens a stream as `who` (credential in the header) on `topics`: what
/// the first frame says, or the HTTP status the upgrade was refused with.
async fn open_stream(app: &TestApp, credential: Option<&str>, topics: &str) -> Result<Frame, u16> {
    let mut request = format!("ws://{}/v1/stream?topics={topics}", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(c) = credential {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {c}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => {
            let mut sub = crate::stream_client::Subscriber::from_stream(ws);
            Ok(sub.frame().await)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// The stream's own cells: alice's inbox topic as every principal (with
/// the credential in the header, and with none: it then waits for `auth`).
async fn streams_answer_every_principal_as_the_rule_says(
    app: &TestApp,
    credentials: &Credentials,
) -> usize {
    let mut cells = 0;
    for who in EVERYONE {
        let got = open_stream(app, credentials.of(who), "inbox:alice").await;
        let subscribed = matches!(&got, Ok(Frame::Json(m)) if m["type"] == "subscribed");
        match who {
            Who::UserA | Who::ReadKey => assert!(subscribed, "{who:?}: {got:?}"),
            // No header: the socket opens and waits for `auth`, then closes.
            Who::Nobody => assert!(
                matches!(&got, Ok(Frame::Closed(Some((4401, _))))),
                "{who:?}: {got:?}"
            ),
            Who::ExpiredToken | Who::RevokedKey => assert_eq!(got.err(), Some(401), "{who:?}"),
            Who::UserB | Who::SendKey | Who::OtherSendKey | Who::AdminKey => {
                assert_eq!(got.err(), Some(403), "{who:?}")
            }
        }
        cells += 1;
    }
    // Each user's own topics, and never the other's or everyone's.
    let (mine, cursor) = create_with_cursor(app, SEND, "alice").await;
    // The topic check reads the inbox: wait until it holds the notification.
    let seen = call(
        app,
        "GET",
        &format!("/v1/notifications/{mine}?min_position={cursor}"),
        Some(READ),
        None,
    )
    .await;
    assert_eq!(seen.status(), 200);
    for (topics, alice_may) in [
        (format!("notification:{mine}"), true),
        ("inbox:bob".to_owned(), false),
        ("analytics".to_owned(), false),
    ] {
        let got = open_stream(app, Some(&credentials.alice), &topics).await;
        if alice_may {
            assert!(
                matches!(&got, Ok(Frame::Json(m)) if m["type"] == "subscribed"),
                "{topics}: {got:?}"
            );
        } else {
            assert_eq!(got.err(), Some(403), "{topics}");
        }
        let got = open_stream(app, Some(&credentials.bob), &format!("notification:{mine}")).await;
        assert_eq!(got.err(), Some(403), "bob on alice's notification");
        cells += 2;
    }
    cells
}

/// In band: an `auth` message first, then subscriptions checked one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_authenticated_in_band_reaches_only_its_users_topics_and_closes_when_the_token_expires(
) {
    let app = TestApp::start(crate::helpers::Backend::Memory, None, |db| {
        let mut s = secured(db);
        // Pings (and so loop turns) far more often than the grace: the
        // close must come when the grace ends, not be pushed back by them.
        s.stream_expiry_grace_ms = 500;
        s.stream_heartbeat_ms = 100;
        s
    })
    .await;
    let mut sub = crate::stream_client::Subscriber::connect(&app, "topics=inbox:alice").await;
    sub.send(json!({"type": "subscribe", "topics": ["inbox:alice"]}))
        .await;
    let refused = sub.next().await;
    assert_eq!(refused["type"], "error", "nothing before auth: {refused}");
    sub.send(json!({"type": "auth", "token": token("alice", 3, None)}))
        .await;
    assert_eq!(sub.next().await["type"], "authenticated");
    assert_eq!(
        sub.next().await["type"],
        "subscribed",
        "the query's topics follow auth"
    );
    sub.send(json!({"type": "subscribe", "topics": ["inbox:bob"]}))
        .await;
    let forbidden = sub.next().await;
    assert_eq!(
        (&forbidden["type"], &forbidden["reason"]),
        (&json!("error"), &json!("forbidden")),
        "{forbidden}"
    );
    // A refresh for another user is refused; one for alice carries on.
    sub.send(json!({"type": "auth", "token": token("bob", 600, None)}))
        .await;
    assert_eq!(sub.next().await["type"], "error");
    // Updates still flow to alice.
    create_as(&app, SEND, "alice").await;
    assert_eq!(sub.expect("update").await["topic"], "inbox:alice");
    // alice's token expires in 3 s: warned, then closed after the grace.
    let warned = sub.expect("error").await;
    assert_eq!(warned["reason"], "token_expired", "{warned}");
    match sub.frame().await {
        Frame::Closed(Some((code, _))) => assert_eq!(code, 4401),
        other => panic!("{other:?}"),
    }
    // Refreshed in time, a connection stays.
    let mut sub = crate::stream_client::Subscriber::connect(&app, "topics=inbox:alice").await;
    sub.send(json!({"type": "auth", "token": token("alice", 2, None)}))
        .await;
    assert_eq!(sub.next().await["type"], "authenticated");
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.expect("error").await["reason"], "token_expired");
    sub.send(json!({"type": "auth", "token": token("alice", 600, None)}))
        .await;
    assert_eq!(sub.next().await["type"], "authenticated");
    create_as(&app, SEND, "alice").await;
    assert_eq!(sub.expect("update").await["topic"], "inbox:alice");
    // A bad token in band closes the connection.
    let mut sub = crate::stream_client::Subscriber::connect(&app, "").await;
    sub.send(json!({"type": "auth", "token": "not-a-token"}))
        .await;
    match sub.frame().await {
        Frame::Closed(Some((code, _))) => assert_eq!(code, 4401),
        other => panic!("{other:?}"),
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_with_a_key_is_closed_once_the_key_is_revoked() {
    let app = TestApp::start(crate::helpers::Backend::Memory, None, secured).await;
    let resp = call(
        &app,
        "POST",
        "/v1/keys",
        Some(ADMIN),
        Some(&json!({"name": "dashboard", "scopes": ["read"]})),
    )
    .await;
    let made: Value = resp.json().await.unwrap();
    let (id, secret) = (
        made["id"].as_str().unwrap(),
        made["secret"].as_str().unwrap(),
    );
    let mut request = format!("ws://{}/v1/stream?topics=analytics", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut sub = crate::stream_client::Subscriber::from_stream(ws);
    assert_eq!(
        sub.expect("subscribed").await["topics"],
        json!(["analytics"])
    );
    let resp = call(
        &app,
        "POST",
        &format!("/v1/keys/{id}/revoke"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    loop {
        match sub.frame().await {
            Frame::Closed(Some((code, _))) => {
                assert_eq!(code, 4401);
                break;
            }
            Frame::Json(m) => assert_eq!(m["type"], "update", "{m}"),
            other => panic!("{other:?}"),
        }
    }
    app.cleanup().await;
}
