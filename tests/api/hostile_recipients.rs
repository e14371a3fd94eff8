//! Hostile bodies for the recipient side, generated, against both backends
//! at once: profiles (PUT, PATCH), preferences, category settings, tenant
//! defaults, batching policies and their simulation, and bulk inbox operations. Every request answers 200 or 4xx
//! (never 5xx), both backends answer alike, and a refused request leaves
//! what it aimed at as it was.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::helpers::{postgres_server_url, skipped, Backend, TestApp};
use crate::hostile::{leaf, tree, J};

/// Generated bodies per run.
const CASES: u32 = 256;

/// Where a body goes, and where to read what it would change.
const TARGETS: &[(&str, &str, &str)] = &[
    ("PUT", "/v1/users/hal", "/v1/users/hal"),
    ("PATCH", "/v1/users/hal", "/v1/users/hal"),
    (
        "PUT",
        "/v1/users/hal/preferences",
        "/v1/users/hal/preferences",
    ),
    ("PUT", "/v1/categories/news", "/v1/categories/news"),
    (
        "PUT",
        "/v1/tenants/acme/preferences",
        "/v1/tenants/acme/preferences",
    ),
    ("POST", "/v1/users/hal/inbox/bulk", "/v1/users/hal/inbox"),
    (
        "PUT",
        "/v1/categories/news/batching",
        "/v1/categories/news/batching",
    ),
    (
        "POST",
        "/v1/categories/news/batching/simulate",
        "/v1/categories/news/batching",
    ),
];

/// The fields the endpoints know, with values that are sometimes right.
fn member() -> impl Strategy<Value = (String, J)> {
    let known = proptest::sample::select(
        &[
            "display_name",
            "time_zone",
            "locale",
            "tenant",
            "addresses",
            "email",
            "phone",
            "push_tokens",
            "webhook_url",
            "channels",
            "categories",
            "quiet_hours",
            "start",
            "end",
            "default_channels",
            "critical",
            "action",
            "filter",
            "status",
            "before",
            "category",
            "in_app",
            "window",
            "kind",
            "seconds",
            "max_seconds",
            "max_items",
            "min_items",
            "key",
            "first_item_immediately",
            "schedule",
            "every",
            "at",
            "weekday",
            "policy",
            "from",
            "to",
        ][..],
    );
    let value = prop_oneof![
        3 => tree(),
        2 => proptest::sample::select(&[
            "Europe/Berlin", "UTC", "de-DE", "acme", "+4915112345678", "a@b.co",
            "https://x.example/h", "22:00", "07:00", "read", "archive", "in_app", "email",
            "fixed", "sliding", "day", "week", "mon", "{{ recipient }}", "{{ data.x", "{% for %}",
        ][..]).prop_map(|s| J::Str(s.to_owned())),
        1 => leaf(),
        1 => proptest::collection::vec((known.clone().prop_map(str::to_owned), tree()), 0..4).prop_map(J::Obj),
    ];
    prop_oneof![
        5 => (known.prop_map(str::to_owned), value.clone()),
        1 => ("[a-z]{1,8}", value),
    ]
}

fn body() -> impl Strategy<Value = (usize, String)> {
    (
        0..TARGETS.len(),
        prop_oneof![
            8 => proptest::collection::vec(member(), 0..6).prop_map(J::Obj),
            1 => tree(),
        ],
    )
        .prop_map(|(target, json)| {
            let mut out = String::new();
            json.render(&mut out);
            (target, out)
        })
}

/// What `path` answers, without what moves on its own.
async fn state(app: &TestApp, path: &str) -> Result<Value, TestCaseError> {
    let resp = app.get(path).await;
    let mut v: Value = resp
        .json()
        .await
        .map_err(|e| TestCaseError::fail(format!("no JSON: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("cursor");
        o.remove("next_cursor");
    }
    Ok(v)
}

async fn send(app: &TestApp, target: usize, body: &str) -> Result<u16, TestCaseError> {
    let (method, path, read) = TARGETS[target];
    let before = state(app, read).await?;
    let resp = app
        .client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(path),
        )
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = resp.status().as_u16();
    let answer: Value = resp
        .json()
        .await
        .map_err(|e| TestCaseError::fail(format!("a {status} without a JSON body: {e}")))?;
    prop_assert!(
        status == 200 || (400..500).contains(&status),
        "{:?} {method} {path} answered {status}: {answer}",
        app.backend
    );
    if status != 200 {
        prop_assert!(
            answer["type"].is_string() && answer["detail"].is_string(),
            "{answer}"
        );
        let after = state(app, read).await?;
        prop_assert_eq!(
            before,
            after,
            "a refused {} {} changed what it aimed at",
            method,
            path
        );
    }
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_recipient_bodies_get_200_or_4xx_alike_and_refusals_change_nothing() {
    let test = "hostile_recipients::hostile_recipient_bodies_get_200_or_4xx_alike_and_refusals_change_nothing";
    let memory = TestApp::spawn(Backend::Memory, test).await.expect("memory");
    let postgres = match postgres_server_url() {
        Some(_) => TestApp::spawn(Backend::Postgres, test).await,
        None => {
            skipped(
                &format!("{test} (PostgreSQL half)"),
                "DATABASE_URL is not set; memory alone was checked",
            );
            None
        }
    };
    let apps: Vec<&TestApp> = [Some(&memory), postgres.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    let runtime = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::sync::atomic::AtomicU32::new(0);
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&body(), |(target, body)| {
            runtime.block_on(async {
                let mut answers = Vec::new();
                for app in &apps {
                    answers.push(send(app, target, &body).await?);
                }
                if let [first, rest @ ..] = answers.as_slice() {
                    for other in rest {
                        prop_assert_eq!(first, other, "the backends disagree on {}", body);
                    }
                    if *first == 200 {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
    });
    for app in &apps {
        let profile = app.get_json("/v1/users/hal").await;
        assert_eq!(profile["user"], "hal", "{:?} still answers", app.backend);
    }
    eprintln!(
        "hostile recipient bodies: {CASES} cases on {} backend(s), {} accepted",
        apps.len(),
        accepted.into_inner()
    );
    memory.cleanup().await;
    if let Some(app) = postgres {
        app.cleanup().await;
    }
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
