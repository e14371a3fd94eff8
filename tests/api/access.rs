//! Credentials through the real surface: keys made, used and revoked over
//! HTTP (and seen by another instance), issued user tokens, the principal in
//! the audit trail, idempotency per principal, 429s, the refusal to listen
//! openly beyond loopback, and CORS. The helpers here serve the matrix,
//! the rate, token and hostile-credential tests too.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings::config::Settings;

use crate::helpers::{notification_for, settings, Backend, TestApp, TestDb};

pub const ADMIN: &str = "tdk_admin-0123456789abcdef0123456789abcdef";
pub const SEND: &str = "tdk_send-0123456789abcdef0123456789abcdef";
pub const SEND2: &str = "tdk_send2-0123456789abcdef0123456789abcdef";
pub const READ: &str = "tdk_read-0123456789abcdef0123456789abcdef";
pub const JWT_SECRET: &str = "a test secret of at least thirty-two bytes";

/// Settings with four keys from the setting (`ops` admin, `billing` and
/// `marketing` send, `reporting` read) and HS256 user tokens.
pub fn secured(db: Option<&TestDb>) -> Settings {
    let mut s = settings(db);
    s.access.api_keys = Some(format!(
        "ops:admin:{ADMIN}; billing:send:{SEND}; marketing:send:{SEND2}; reporting:read:{READ}"
    ));
    s.access.jwt_secret = Some(JWT_SECRET.into());
    // Keys unlimited; users at the defaults (20 a second, bursts of 40).
    s.access.rate_user = 20;
    s.access.rate_user_burst = 40;
    s
}

pub async fn spawn_secured(backend: Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, secured).await
}

/// A user token signed as a backend would, expiring `ttl_secs` from now
/// (negative: already expired).
pub fn token(user: &str, ttl_secs: i64, grants: Option<&[&str]>) -> String {
    let exp = chrono::Utc::now().timestamp() + ttl_secs;
    let mut claims = json!({"sub": user, "exp": exp});
    if let Some(grants) = grants {
        claims["grants"] = json!(grants);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("a signed token")
}

/// Sends `method path` with `bearer` (if any) and `body` (if any).
pub async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = app.client.request(method, app.url(path));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("request sent")
}

/// Creates a notification for `recipient` with key `key`; its id.
pub async fn create_as(app: &TestApp, key: &str, recipient: &str) -> String {
    create_with_cursor(app, key, recipient).await.0
}

/// `create_as`, with the create's cursor.
pub async fn create_with_cursor(app: &TestApp, key: &str, recipient: &str) -> (String, String) {
    let resp = call(
        app,
        "POST",
        "/v1/notifications",
        Some(key),
        Some(&notification_for(recipient, "hello")),
    )
    .await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["cursor"].as_str().unwrap().to_owned(),
    )
}

async fn status_and_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

on_both_backends!(
    spawned_by super::spawn_secured;
    a_key_made_over_http_works_at_once_lists_without_its_secret_and_is_refused_once_revoked,
    every_event_records_the_principal_and_x_actor_only_from_admin,
    idempotency_keys_are_scoped_to_the_principal,
    an_issued_token_reaches_its_user_and_expired_or_forged_ones_are_refused,
    past_the_rate_limit_the_answer_is_429_with_retry_after,
);

async fn a_key_made_over_http_works_at_once_lists_without_its_secret_and_is_refused_once_revoked(
    app: &TestApp,
) {
    let resp = call(
        app,
        "POST",
        "/v1/keys",
        Some(ADMIN),
        Some(&json!({"name": "mobile", "scopes": ["send", "send"]})),
    )
    .await;
    let (status, created) = status_and_body(resp).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tdk_"));
    for bad in [
        json!({"name": "none", "scopes": []}),
        json!({"name": "many", "scopes": ["send", "send", "read", "admin"]}),
        json!({"name": "bad name", "scopes": ["send"]}),
        json!({"name": "x", "scopes": ["write"]}),
    ] {
        let resp = call(app, "POST", "/v1/keys", Some(ADMIN), Some(&bad)).await;
        assert_eq!(resp.status(), 422, "{bad}");
    }
    let resp = call(
        app,
        "POST",
        "/v1/users/alice/token?grants=",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(resp.status(), 422, "an empty grant list says nothing");
    assert_eq!(created["scopes"], json!(["send"]));
    create_as(app, &secret, "alice").await;

    let (status, list) =
        status_and_body(call(app, "GET", "/v1/keys", Some(ADMIN), None).await).await;
    assert_eq!(status, 200);
    assert!(
        !list.to_string().contains(&secret[4..]),
        "no secret in a list"
    );
    let mobile = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("the new key is listed")
        .clone();
    assert_eq!(mobile["name"], "mobile");
    assert_eq!(mobile["source"], "store");
    assert!(mobile["last_used_at"].is_string(), "{mobile}");
    assert!(mobile["revoked_at"].is_null());
    assert!(secret.starts_with(mobile["prefix"].as_str().unwrap()));

    let (status, revoked) = status_and_body(
        call(
            app,
            "POST",
            &format!("/v1/keys/{id}/revoke"),
            Some(ADMIN),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, &revoked["changed"]),
        (200, &json!(true)),
        "{revoked}"
    );
    let refused = call(
        app,
        "POST",
        "/v1/notifications",
        Some(&secret),
        Some(&notification_for("alice", "x")),
    )
    .await;
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:tidings:problem:unauthorized");
    assert!(problem["detail"].as_str().unwrap().contains("revoked"));
    // Revoking again changes nothing; a setting key cannot be revoked here.
    let (status, again) = status_and_body(
        call(
            app,
            "POST",
            &format!("/v1/keys/{id}/revoke"),
            Some(ADMIN),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((status, &again["changed"]), (200, &json!(false)));
    let (status, _) = status_and_body(
        call(
            app,
            "POST",
            "/v1/keys/setting:billing/revoke",
            Some(ADMIN),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 409);

    // The key's life is in the log, with who made and revoked it. The
    // global log shows an event once no earlier-committing transaction can
    // still appear (other tests share the cluster): wait for it.
    let events_of = |event_type: &'static str| async move {
        let start = std::time::Instant::now();
        loop {
            let path = format!("/v1/events?type={event_type}");
            let (_, log) = status_and_body(call(app, "GET", &path, Some(ADMIN), None).await).await;
            if !log["events"][0].is_null() || start.elapsed() > std::time::Duration::from_secs(10) {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let log = events_of("ApiKeyCreated").await;
    let made = &log["events"][0];
    assert_eq!(made["metadata"]["actor"], "key:setting:ops");
    assert_eq!(made["metadata"]["actor_name"], "ops");
    assert!(
        !made.to_string().contains(&secret[4..]),
        "the log holds no secret"
    );
    let log = events_of("ApiKeyRevoked").await;
    assert_eq!(log["events"].as_array().unwrap().len(), 1, "{log}");
}

async fn every_event_records_the_principal_and_x_actor_only_from_admin(app: &TestApp) {
    let id = create_as(app, SEND, "alice").await;
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .bearer_auth(SEND)
        .header("X-Actor", "someone-else")
        .json(&notification_for("alice", "forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "X-Actor from a send key is refused");
    let alice = token("alice", 600, None);
    let resp = call(
        app,
        "POST",
        &format!("/v1/notifications/{id}/read"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .get(app.url("/v1/events?type=NotificationCreated"))
        .bearer_auth(ADMIN)
        .header("X-Actor", "support-agent-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "X-Actor from an admin key is honoured");
    let (_, audit) = status_and_body(
        call(
            app,
            "GET",
            &format!("/v1/notifications/{id}/events"),
            Some(READ),
            None,
        )
        .await,
    )
    .await;
    let events = audit["events"].as_array().unwrap();
    assert_eq!(events[0]["metadata"]["actor"], "key:setting:billing");
    assert_eq!(events[0]["metadata"]["actor_name"], "billing");
    let read = events
        .iter()
        .find(|e| e["type"] == "NotificationRead")
        .expect("the read is recorded");
    assert_eq!(read["metadata"]["actor"], "user:alice");
    assert!(read["metadata"]["actor_name"].is_null());
}

async fn idempotency_keys_are_scoped_to_the_principal(app: &TestApp) {
    let send = |key: &'static str| async move {
        let resp = app
            .client
            .post(app.url("/v1/notifications"))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-42")
            .json(&notification_for("alice", "receipt"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    };
    let first = send(SEND).await;
    assert_eq!(send(SEND).await, first, "the same key repeats");
    assert_ne!(send(SEND2).await, first, "another key's is its own");
}

async fn an_issued_token_reaches_its_user_and_expired_or_forged_ones_are_refused(app: &TestApp) {
    let id = create_as(app, SEND, "alice").await;
    let resp = call(
        app,
        "POST",
        "/v1/users/alice/token?grants=read",
        Some(SEND),
        None,
    )
    .await;
    let (status, issued) = status_and_body(resp).await;
    assert_eq!(status, 201, "{issued}");
    assert!(issued["expires_at"].is_string());
    let read_only = issued["token"].as_str().unwrap().to_owned();
    let page = call(app, "GET", "/v1/users/alice/inbox", Some(&read_only), None).await;
    assert_eq!(page.status(), 200);
    let change = call(
        app,
        "POST",
        &format!("/v1/notifications/{id}/read"),
        Some(&read_only),
        None,
    )
    .await;
    assert_eq!(change.status(), 403, "a read-only token changes nothing");
    let other = call(app, "GET", "/v1/users/bob/inbox", Some(&read_only), None).await;
    assert_eq!(other.status(), 403);
    // A user token issues nothing; a read key neither.
    for who in [read_only.as_str(), READ] {
        let resp = call(app, "POST", "/v1/users/alice/token", Some(who), None).await;
        assert_eq!(resp.status(), 403);
    }
    let expired = call(
        app,
        "GET",
        "/v1/users/alice/inbox",
        Some(&token("alice", -1, None)),
        None,
    )
    .await;
    assert_eq!(expired.status(), 401);
    let challenge = expired.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("expired"), "{challenge}");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the secret, though long enough to pass"),
    )
    .unwrap();
    let resp = call(app, "GET", "/v1/users/alice/inbox", Some(&forged), None).await;
    assert_eq!(resp.status(), 401);
    let resp = call(app, "GET", "/v1/users/alice/inbox", None, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        r#"Bearer realm="tidings""#
    );
    let resp = app
        .client
        .get(app.url("/v1/users/alice/inbox"))
        .header("Authorization", format!("Basic {READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "only Bearer is understood");
}

async fn past_the_rate_limit_the_answer_is_429_with_retry_after(app: &TestApp) {
    // The user allowance (20 a second, bursts of 40) is the tightest.
    let alice = token("alice", 600, None);
    let mut limited = None;
    for _ in 0..200 {
        let resp = call(app, "GET", "/v1/users/alice/inbox", Some(&alice), None).await;
        assert!(resp.headers().contains_key("ratelimit-remaining"));
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("200 requests at once pass a burst of 40");
    assert!(
        resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    assert_eq!(resp.headers()["ratelimit-limit"], "40");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["type"], "urn:tidings:problem:rate-limited");
    // Another principal is not held back by alice's allowance.
    let bob = call(
        app,
        "GET",
        "/v1/users/bob/inbox",
        Some(&token("bob", 600, None)),
        None,
    )
    .await;
    assert_eq!(bob.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_instance_is_refused_by_another_within_two_seconds() {
    let Some(server) = crate::helpers::postgres_server_url() else {
        crate::helpers::skipped(
            "access::a_key_revoked_on_one_instance_is_refused_by_another_within_two_seconds",
            "DATABASE_URL is not set",
        );
        return;
    };
    let db = TestDb::create(&server).await;
    let a = TestApp::start(Backend::Postgres, Some(db.clone()), secured).await;
    let b = TestApp::start(Backend::Postgres, Some(db.clone()), secured).await;
    let resp = call(
        &a,
        "POST",
        "/v1/keys",
        Some(ADMIN),
        Some(&json!({"name": "ci", "scopes": ["read"]})),
    )
    .await;
    let created: Value = resp.json().await.unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let wait_for = |want: u16| {
        let (b, secret) = (&b, secret.clone());
        async move {
            let started = Instant::now();
            loop {
                let resp = call(b, "GET", "/v1/analytics", Some(&secret), None).await;
                if resp.status() == want {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "still {} after 10 s",
                    resp.status()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let known = wait_for(200).await;
    let revoked = call(
        &a,
        "POST",
        &format!("/v1/keys/{id}/revoke"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(revoked.status(), 200);
    let refused = wait_for(401).await;
    eprintln!(
        "a key created on one instance worked on the other after {} ms; revoked, it was refused there after {} ms",
        known.as_millis(),
        refused.as_millis()
    );
    let mut b = b;
    b.stop().await.unwrap();
    a.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_credentials_tidings_refuses_to_listen_beyond_loopback_unless_told() {
    let public = |_: Option<&TestDb>| {
        let mut s = settings(None);
        s.listen = "0.0.0.0:0".parse().unwrap();
        s
    };
    let err = tidings::Application::build(public(None))
        .await
        .err()
        .expect("an open listener beyond loopback is refused");
    assert!(err.to_string().contains("--allow-unauthenticated"), "{err}");
    let mut allowed = public(None);
    allowed.access.allow_unauthenticated = true;
    assert!(tidings::Application::build(allowed).await.is_ok());
    let mut keyed = public(None);
    keyed.access.api_keys = Some(format!("ops:admin:{ADMIN}"));
    assert!(tidings::Application::build(keyed).await.is_ok());

    let app = TestApp::start(Backend::Memory, None, settings).await;
    let ready = app.get_json("/health/ready").await;
    assert_eq!(ready["access"], "open");
    assert!(ready["access_warning"].as_str().unwrap().contains("OPEN"));
    app.cleanup().await;
    let app = TestApp::start(Backend::Memory, None, secured).await;
    let ready = app.get_json("/health/ready").await;
    assert_eq!(ready["access"], "enforced");
    assert!(ready["access_warning"].is_null());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_configured_origins() {
    let app = TestApp::start(Backend::Memory, None, |db| {
        let mut s = secured(db);
        s.access.cors_origins = Some("https://app.example.com".into());
        s
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/users/alice/inbox"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    app.cleanup().await;

    let plain = TestApp::start(Backend::Memory, None, secured).await;
    let resp = plain
        .client
        .get(plain.url("/health/live"))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        !resp.headers().contains_key("access-control-allow-origin"),
        "CORS is off by default"
    );
    plain.cleanup().await;
}
