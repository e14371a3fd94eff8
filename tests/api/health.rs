//! Readiness tells the truth: a stuck projector and memory near its limit
//! degrade it, with what and how much; the memory store refuses new events
//! at the limit rather than grow until the process is killed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::errors::expect_problem;
use crate::helpers::{notification_for, settings, Backend, TestApp};

on_both_backends!(
    spawned_by super::spawn_impatient;
    a_projector_stuck_on_an_event_makes_readiness_degraded_until_it_moves_on,
);

mod at_the_memory_limit {
    use super::*;
    on_both_backends!(
        spawned_by super::spawn_at_memory_limit;
        memory_at_its_limit_degrades_readiness_and_only_the_memory_store_refuses_new_events,
    );
}

/// Readiness degrades after 200 ms of lag; a refused event is parked after
/// four tries (0.7 s of backoff).
async fn spawn_impatient(backend: Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, |db| {
        let mut s = settings(db);
        s.ready_max_lag_ms = 200;
        s.projector_max_attempts = 4;
        s
    })
    .await
}

/// A memory limit of 1 MiB: the test process is far past it.
async fn spawn_at_memory_limit(backend: Backend, test: &str) -> Option<TestApp> {
    TestApp::spawn_with(backend, test, |db| {
        let mut s = settings(db);
        s.memory_limit_mb = Some(1);
        s
    })
    .await
}

async fn ready(app: &TestApp) -> Value {
    app.get_json("/health/ready").await
}

async fn a_projector_stuck_on_an_event_makes_readiness_degraded_until_it_moves_on(app: &TestApp) {
    let first = ready(app).await;
    assert_eq!(first["status"], "ready", "{first}");
    assert_eq!(first["projections"][0]["name"], "inbox");
    let (id, cursor) = app.create(&notification_for("stuck", "before")).await;
    app.get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    app.append_raw(
        &id,
        3,
        "NotificationSnoozed",
        json!({"NotificationSnoozed": {}}),
    )
    .await;
    // Every projection meets the event; the inbox is the one named first.
    let mut degraded = None;
    for _ in 0..200 {
        let view = ready(app).await;
        if view["status"] == "degraded" && view["projections"][0]["stuck"] == true {
            degraded = Some(view);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = degraded.expect("readiness degrades while the projector is stuck");
    let lag = &view["projections"][0];
    assert_eq!(lag["name"], "inbox");
    assert_eq!(lag["stuck"], true);
    assert!(lag["events_behind"].as_u64().unwrap() >= 1, "{view}");
    assert!(
        lag["oldest_unprocessed_age_ms"].as_u64().unwrap() > 200,
        "{view}"
    );
    assert!(
        view["detail"].as_str().unwrap().contains("projector inbox"),
        "{view}"
    );
    // Once the event is parked the projector moves on, and so does readiness.
    for _ in 0..500 {
        if ready(app).await["status"] == "ready" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("readiness stayed degraded: {}", ready(app).await);
}

async fn memory_at_its_limit_degrades_readiness_and_only_the_memory_store_refuses_new_events(
    app: &TestApp,
) {
    let view = ready(app).await;
    assert_eq!(view["status"], "degraded", "{view}");
    assert_eq!(view["memory_limit_mb"], 1);
    assert!(view["memory_used_mb"].as_u64().unwrap() >= 1, "{view}");
    assert!(
        view["detail"]
            .as_str()
            .unwrap()
            .contains("memory is at the limit"),
        "{view}"
    );
    let resp = app
        .post("/v1/notifications", &notification_for("full", "one more"))
        .await;
    match app.backend {
        Backend::Memory => {
            let problem = expect_problem(
                resp,
                503,
                "urn:tidings:problem:memory-full",
                "a create at the memory limit",
            )
            .await;
            assert!(problem["detail"].as_str().unwrap().contains("PostgreSQL"));
            // Reads go on.
            app.get_json("/v1/users/full/inbox").await;
        }
        // PostgreSQL keeps the log; the process only warns.
        Backend::Postgres => assert_eq!(resp.status(), 201),
    }
}
