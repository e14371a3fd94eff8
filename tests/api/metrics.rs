//! `GET /metrics`: a scrape before and after some traffic shows the series
//! move. Metrics are per process, and the tests share one, so the checks
//! are on increases, never on absolute counts.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{notification_for, TestApp};
use crate::stream_client::Subscriber;

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    response.text().await.unwrap()
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

async fn the_metrics_move_with_requests_commands_projections_timers_and_streams(app: &TestApp) {
    let before = scrape(app).await;
    let created = [("operation", "createNotification"), ("status", "201")];
    let mut stream = Subscriber::connect(app, "topics=inbox:metrics-ann").await;
    stream.expect("subscribed").await;
    let (id, _) = app.create(&notification_for("metrics-ann", "one")).await;
    stream.update().await;
    app.command(&id, "read").await;
    let refused = app
        .post_empty(&format!("/v1/notifications/{id}/cancel"))
        .await;
    assert_eq!(refused.status(), 409);
    let mut later = notification_for("metrics-ann", "later");
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    later["deliver_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    app.create(&later).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = scrape(app).await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert!(
        moved("tidings_http_requests_total", &created) >= 2.0,
        "{after}"
    );
    assert!(
        moved(
            "tidings_http_request_duration_seconds_count",
            &[("operation", "createNotification")]
        ) >= 2.0
    );
    assert!(
        moved(
            "tidings_http_requests_total",
            &[("operation", "cancel"), ("status", "409")]
        ) >= 1.0
    );
    assert!(
        moved(
            "tidings_commands_total",
            &[("command", "Create"), ("outcome", "changed")]
        ) >= 2.0
    );
    assert!(
        moved(
            "tidings_commands_total",
            &[("command", "Cancel"), ("outcome", "refused")]
        ) >= 1.0
    );
    assert!(
        moved("tidings_events_appended_total", &[]) >= 5.0,
        "created+delivered, read+seen, created+scheduled"
    );
    assert!(moved("tidings_timers_fired_total", &[]) >= 1.0, "{after}");
    assert!(moved("tidings_stream_deliveries_total", &[]) >= 1.0);
    for projection in ["inbox", "schedule"] {
        let labels = [("projection", projection)];
        assert!(
            sample(&after, "tidings_projection_events_behind", &labels).is_some(),
            "{projection}"
        );
        assert!(
            sample(&after, "tidings_projection_parked_events", &labels).is_some(),
            "{projection}"
        );
    }
    assert!(value(&after, "tidings_stream_connections", &[]) >= 1.0);
    if app.db.is_some() {
        assert!(value(&after, "tidings_db_pool_max", &[]) >= 1.0, "{after}");
        // A connection for each projector, and they have used theirs.
        let projectors = tidings::projections::registry::NAMES.len() as f64;
        assert_eq!(
            value(&after, "tidings_db_projector_pool_max", &[]),
            projectors,
            "{after}"
        );
        assert!(
            value(&after, "tidings_db_projector_pool_connections", &[]) >= 1.0,
            "{after}"
        );
    }
    // Hostile paths and methods land in closed label sets.
    let odd = app.get("/v1/notifications/..%2f..%2fetc/passwd?x=1").await;
    assert!(odd.status().is_client_error());
    let text = scrape(app).await;
    assert!(
        !text.contains("passwd"),
        "no label carries a request's path"
    );
}

on_both_backends!(the_metrics_move_with_requests_commands_projections_timers_and_streams);
