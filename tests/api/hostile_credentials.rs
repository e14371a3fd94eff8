//! Hostile credentials, generated, against both backends.

use serde_json::json;

use crate::access::secured;
use crate::helpers::{notification_for, Backend, TestApp, TestDb};

/// Hostile credentials: random header values, `Bearer` with junk, tokens
/// shaped like JWTs (`alg: none`, unsigned, with forged claims) and key-like
/// strings, on both backends: every answer is 401 (never 2xx, never 5xx)
/// and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_credentials_are_refused_with_401_and_change_nothing_on_either_backend() {
    use base64::Engine;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let mut apps = vec![TestApp::start(Backend::Memory, None, secured).await];
    match crate::helpers::postgres_server_url() {
        Some(server) => {
            let db = TestDb::create(&server).await;
            apps.push(TestApp::start(Backend::Postgres, Some(db), secured).await);
        }
        None => crate::helpers::skipped(
            "hostile_credentials::… (PostgreSQL half)",
            "DATABASE_URL is not set",
        ),
    }
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt_like = (
        prop::sample::select(vec!["none", "HS256", "RS256", "EdDSA", "HS512", ""]),
        "[a-z]{0,12}",
        any::<i64>(),
        "[A-Za-z0-9_-]{0,64}",
    )
        .prop_map(move |(alg, sub, exp, sig)| {
            let header = b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let claims = b64(&format!(
                r#"{{"sub":"{sub}","exp":{exp},"grants":["read","write"]}}"#
            ));
            format!("Bearer {header}.{claims}.{sig}")
        });
    let header = prop_oneof![
        "[ -~]{0,300}",
        "[ -~]{0,200}".prop_map(|s| format!("Bearer {s}")),
        "[A-Za-z0-9_-]{0,80}".prop_map(|s| format!("Bearer tdk_{s}")),
        jwt_like,
        Just("Bearer ".to_owned() + &"A".repeat(8_000)),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let before: Vec<usize> = {
        let mut counts = Vec::new();
        for app in &apps {
            counts.push(
                app.state
                    .log
                    .read_after(tidings::storage::Position::START, 100_000)
                    .await
                    .unwrap()
                    .len(),
            );
        }
        counts
    };
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(&header, |value| {
            for app in &apps {
                let statuses = handle.block_on(async {
                    let mut statuses = Vec::new();
                    for (method, path, body) in [
                        (
                            "POST",
                            "/v1/notifications",
                            Some(notification_for("alice", "forged")),
                        ),
                        ("GET", "/v1/users/alice/inbox", None),
                        (
                            "POST",
                            "/v1/keys",
                            Some(json!({"name": "x", "scopes": ["admin"]})),
                        ),
                    ] {
                        let mut request = app
                            .client
                            .request(
                                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                                app.url(path),
                            )
                            .header("Authorization", value.as_str());
                        if let Some(body) = &body {
                            request = request.json(body);
                        }
                        statuses.push(request.send().await.map(|r| r.status().as_u16()));
                    }
                    statuses
                });
                for status in statuses {
                    match status {
                        Ok(401) => {}
                        // A header the client library itself cannot send.
                        Err(e) if e.is_builder() => {}
                        other => prop_assert!(false, "{value:?} on {:?}: {other:?}", app.backend),
                    }
                }
            }
            Ok(())
        })
    });
    for (app, before) in apps.iter().zip(before) {
        let after = app
            .state
            .log
            .read_after(tidings::storage::Position::START, 100_000)
            .await
            .unwrap()
            .len();
        assert_eq!(after, before, "{:?}: nothing was recorded", app.backend);
    }
    for app in apps {
        app.cleanup().await;
    }
    result.unwrap();
}
