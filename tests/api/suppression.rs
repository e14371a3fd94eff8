//! Suppression is an event: every rule through HTTP (opt-out by the user
//! and by the tenant, the category default, a missing address, quiet
//! hours), each recorded as `ChannelSuppressed` with the level and version
//! that decided, and `explain` saying why from the log alone.

use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use serde_json::{json, Value};

use crate::helpers::TestApp;

async fn put(app: &TestApp, path: &str, body: Value) {
    let (status, answer) = app.send("PUT", path, Some(&body)).await;
    assert_eq!(status, 200, "PUT {path}: {answer}");
}

async fn explain(app: &TestApp, id: &str) -> Vec<Value> {
    let e = app
        .get_json(&format!("/v1/notifications/{id}/explain"))
        .await;
    e["channels"].as_array().unwrap().clone()
}

fn outcome<'a>(channels: &'a [Value], channel: &str) -> &'a Value {
    channels
        .iter()
        .find(|c| c["channel"] == channel)
        .unwrap_or_else(|| panic!("{channel} in {channels:?}"))
}

/// The notification's `ChannelSuppressed` events, by channel.
async fn suppressions(app: &TestApp, id: &str) -> Vec<Value> {
    let audit = app
        .get_json(&format!("/v1/notifications/{id}/events"))
        .await;
    audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "ChannelSuppressed")
        .map(|e| e["data"].clone())
        .collect()
}

on_both_backends!(
    every_suppression_rule_is_an_event_and_explain_says_why,
    a_send_with_every_channel_suppressed_is_still_recorded,
    a_critical_category_passes_every_preference,
    failures_and_deliveries_reported_by_workers_are_told_apart_from_suppressions,
    quiet_hours_hold_in_app_and_push_until_they_end_and_urgent_passes,
    analytics_count_suppressed_channels_apart_from_failed_ones,
    a_recipient_changed_many_times_is_read_from_its_last_changes,
    a_recipient_recorded_before_changes_were_numbered_reads_as_its_whole_history,
    a_create_for_a_recipient_whose_preferences_cannot_be_read_names_the_event,
);

async fn a_create_for_a_recipient_whose_preferences_cannot_be_read_names_the_event(app: &TestApp) {
    let event = "RecipientPreferencesChanged";
    app.append_raw_to(
        "Recipient",
        "odd",
        1,
        event,
        json!({ event: {"preferences": 7, "changed_at": "2026-01-01T00:00:00Z", "version": 1} }),
    )
    .await;
    let body = json!({"recipient": "odd", "category": "news", "title": "t", "body": "b"});
    let resp = app.post("/v1/notifications", &body).await;
    let problem =
        crate::errors::expect_problem(resp, 409, "urn:tidings:problem:unreadable-event", "create")
            .await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("Recipient") && detail.contains(event),
        "{detail}"
    );
    let inbox = app.get_json("/v1/users/odd/inbox").await;
    assert_eq!(inbox["items"], json!([]), "nothing was recorded");
    // Another recipient is not held up by it.
    let (status, _) = app
        .send(
            "POST",
            "/v1/notifications",
            Some(&json!({
                "recipient": "even", "category": "news", "title": "t", "body": "b"
            })),
        )
        .await;
    assert_eq!(status, 201);
}

/// (rule, level, version) of each suppressed channel of notification `id`.
async fn rules(app: &TestApp, id: &str) -> Vec<(String, String, String, u64)> {
    suppressions(app, id)
        .await
        .iter()
        .map(|s| {
            (
                s["channel"].as_str().unwrap().to_owned(),
                s["rule"].as_str().unwrap().to_owned(),
                s["level"].as_str().unwrap().to_owned(),
                s["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn suppressed(
    channel: &str,
    rule: &str,
    level: &str,
    version: u64,
) -> (String, String, String, u64) {
    (channel.into(), rule.into(), level.into(), version)
}

async fn a_recipient_changed_many_times_is_read_from_its_last_changes(app: &TestApp) {
    let patch = |i: usize| json!({"display_name": format!("Ann {i}")});
    for i in 1..=60 {
        let (status, a) = app.send("PATCH", "/v1/users/ann", Some(&patch(i))).await;
        assert_eq!(status, 200, "{a}");
    }
    put(
        app,
        "/v1/users/ann/preferences",
        json!({"channels": {"email": false}}),
    )
    .await;
    for i in 61..=120 {
        let (status, a) = app.send("PATCH", "/v1/users/ann", Some(&patch(i))).await;
        assert_eq!(status, 200, "{a}");
    }
    for i in 0..6 {
        let channels = if i % 2 == 0 {
            json!(["in_app"])
        } else {
            json!(["in_app", "sms"])
        };
        put(
            app,
            "/v1/categories/news",
            json!({"default_channels": channels, "critical": false}),
        )
        .await;
        put(
            app,
            "/v1/tenants/acme/preferences",
            json!({"channels": {"push": i % 2 == 0}}),
        )
        .await;
    }
    let profile = app.get_json("/v1/users/ann").await;
    assert_eq!(
        (
            profile["version"].as_u64(),
            profile["display_name"].as_str()
        ),
        (Some(120), Some("Ann 120")),
        "{profile}"
    );
    let prefs = app.get_json("/v1/users/ann/preferences?tenant=acme").await;
    assert_eq!(prefs["version"], 1, "{prefs}");
    assert_eq!(prefs["resolved"]["news"]["sms"]["version"], 6, "{prefs}");
    assert_eq!(
        prefs["resolved"]["news"]["push"]["level"], "tenant",
        "{prefs}"
    );

    // One recipient: the create reads its last changes.
    let (id, _) = app
        .create(&json!({
            "recipient": "ann", "category": "news", "title": "t", "body": "b",
            "channels": ["in_app", "email", "sms", "push"], "tenant": "acme"
        }))
        .await;
    assert_eq!(
        rules(app, &id).await,
        [
            suppressed("email", "opt_out", "user", 1),
            suppressed("sms", "missing_address", "user", 120),
            suppressed("push", "opt_out", "tenant", 6),
        ]
    );
}

async fn a_recipient_recorded_before_changes_were_numbered_reads_as_its_whole_history(
    app: &TestApp,
) {
    let at = "2026-01-01T00:00:00Z";
    for (sequence, event, body) in [
        (
            1,
            "RecipientProfileChanged",
            json!({"profile": {"display_name": "Old"}, "changed_at": at}),
        ),
        (
            2,
            "RecipientPreferencesChanged",
            json!({"preferences": {"channels": {"email": false}}, "changed_at": at}),
        ),
        (
            3,
            "RecipientProfileChanged",
            json!({"profile": {"display_name": "Old 2"}, "changed_at": at}),
        ),
    ] {
        app.append_raw_to("Recipient", "old", sequence, event, json!({ event: body }))
            .await;
    }
    let profile = app.get_json("/v1/users/old").await;
    assert_eq!(
        (
            profile["version"].as_u64(),
            profile["display_name"].as_str()
        ),
        (Some(2), Some("Old 2")),
        "{profile}"
    );
    assert_eq!(
        app.get_json("/v1/users/old/preferences").await["version"],
        1
    );
    let body = json!({
        "recipient": "old", "category": "news", "title": "t", "body": "b",
        "channels": ["in_app", "email", "sms"]
    });
    let (first, _) = app.create(&body).await;
    assert_eq!(
        rules(app, &first).await,
        [
            suppressed("email", "opt_out", "user", 1),
            suppressed("sms", "missing_address", "user", 2),
        ]
    );
    // A numbered change after them: counted on from the fold.
    put(
        app,
        "/v1/users/old/preferences",
        json!({"channels": {"email": false, "sms": false}}),
    )
    .await;
    assert_eq!(
        app.get_json("/v1/users/old/preferences").await["version"],
        2
    );
    let (second, _) = app.create(&body).await;
    assert_eq!(
        rules(app, &second).await,
        [
            suppressed("email", "opt_out", "user", 2),
            suppressed("sms", "opt_out", "user", 2),
        ]
    );
}

async fn analytics_count_suppressed_channels_apart_from_failed_ones(app: &TestApp) {
    put(
        app,
        "/v1/users/fay/preferences",
        json!({"channels": {"sms": false}}),
    )
    .await;
    let (id, _) = app
        .create(&json!({
            "recipient": "fay", "category": "billing", "title": "Invoice", "body": "due",
            "channels": ["in_app", "email", "sms"]
        }))
        .await;
    let (status, failed) = app
        .send(
            "POST",
            &format!("/v1/notifications/{id}/fail"),
            Some(&json!({"channel": "email", "reason": "bounced"})),
        )
        .await;
    assert_eq!(status, 200, "{failed}");
    let cursor = failed["cursor"].as_str().unwrap();
    let sms = crate::analytics::recent(app, "&channel=sms", cursor).await;
    assert_eq!(
        (
            sms["counts"]["suppressed"].as_u64(),
            sms["counts"]["failed"].as_u64()
        ),
        (Some(1), Some(0)),
        "{sms}"
    );
    assert!(
        sms["rates"]["delivery"].is_null(),
        "nothing was to be delivered on sms: {sms}"
    );
    let email = crate::analytics::recent(app, "&channel=email", cursor).await;
    assert_eq!(
        (
            email["counts"]["suppressed"].as_u64(),
            email["counts"]["failed"].as_u64()
        ),
        (Some(0), Some(1)),
        "{email}"
    );
    let all = crate::analytics::recent(app, "", cursor).await;
    assert_eq!(all["counts"]["created"], 3);
    assert_eq!(all["counts"]["delivered"], 1);
    assert_eq!(
        all["rates"]["delivery"], 0.5,
        "one of the two deliverable sends: {all}"
    );
}

async fn every_suppression_rule_is_an_event_and_explain_says_why(app: &TestApp) {
    put(
        app,
        "/v1/categories/marketing",
        json!({"default_channels": ["in_app", "email", "push", "chat"], "critical": false}),
    )
    .await;
    put(
        app,
        "/v1/users/alice",
        json!({"addresses": {"email": "alice@example.com", "webhook_url": "https://chat.example.com/a"}}),
    )
    .await;
    put(
        app,
        "/v1/users/alice/preferences",
        json!({"categories": {"marketing": {"channels": {"push": false}}}}),
    )
    .await;
    put(
        app,
        "/v1/tenants/acme/preferences",
        json!({"categories": {"marketing": {"channels": {"chat": false}}}}),
    )
    .await;
    let (id, _) = app
        .create(&json!({
            "recipient": "alice", "category": "marketing", "title": "Sale", "body": "50% off",
            "channels": ["in_app", "email", "sms", "push", "chat"], "tenant": "acme"
        }))
        .await;
    let recorded = suppressions(app, &id).await;
    let rule = |channel: &str| {
        recorded.iter().find(|s| s["channel"] == channel).map(|s| {
            (
                s["rule"].as_str().unwrap().to_owned(),
                s["level"].as_str().unwrap().to_owned(),
                s["version"].as_u64().unwrap(),
            )
        })
    };
    assert_eq!(
        rule("sms"),
        Some(("category_default".into(), "category".into(), 1))
    );
    assert_eq!(rule("push"), Some(("opt_out".into(), "user".into(), 1)));
    assert_eq!(rule("chat"), Some(("opt_out".into(), "tenant".into(), 1)));
    assert_eq!(rule("in_app"), None);
    assert_eq!(rule("email"), None);

    let channels = explain(app, &id).await;
    let order: Vec<&str> = channels
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["in_app", "email", "sms", "push", "chat"],
        "in the order asked"
    );
    assert_eq!(outcome(&channels, "in_app")["outcome"], "delivered");
    assert_eq!(outcome(&channels, "email")["outcome"], "pending");
    for (channel, words) in [
        ("sms", "not among the default channels of `marketing`"),
        ("push", "the recipient turned `push` off"),
        ("chat", "the tenant's defaults turn `chat` off"),
    ] {
        let c = outcome(&channels, channel);
        assert_eq!(c["outcome"], "suppressed", "{c}");
        let reason = c["reason"].as_str().unwrap();
        assert!(reason.contains(words), "{channel}: {reason}");
    }
    // A suppressed channel cannot be delivered after all.
    let (status, problem) = app
        .send(
            "POST",
            &format!("/v1/notifications/{id}/deliver"),
            Some(&json!({"channel": "push"})),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("channel-suppressed"),
        "{problem}"
    );

    // The profile has no phone: sms is suppressed for the address where
    // nothing else stops it.
    let (other, _) = app
        .create(&json!({
            "recipient": "alice", "category": "comment", "title": "Reply", "body": "hi",
            "channels": ["email", "sms"]
        }))
        .await;
    let channels = explain(app, &other).await;
    let sms = outcome(&channels, "sms");
    assert_eq!(
        (sms["outcome"].as_str(), sms["rule"].as_str()),
        (Some("suppressed"), Some("missing_address"))
    );
    assert!(
        sms["reason"]
            .as_str()
            .unwrap()
            .contains("no address for `sms`"),
        "{sms}"
    );
    assert_eq!(sms["version"], 1, "the profile's version");
    assert_eq!(outcome(&channels, "email")["outcome"], "pending");

    // A user nobody described: tidings knows no addresses and leaves the
    // external channels to their workers.
    let (unknown, _) = app
        .create(&json!({
            "recipient": "zed", "category": "comment", "title": "Reply", "body": "hi",
            "channels": ["email", "sms"]
        }))
        .await;
    assert!(suppressions(app, &unknown).await.is_empty());
}

async fn a_send_with_every_channel_suppressed_is_still_recorded(app: &TestApp) {
    put(
        app,
        "/v1/users/bob/preferences",
        json!({"channels": {"in_app": false, "email": false}}),
    )
    .await;
    let (id, cursor) = app
        .create(&json!({
            "recipient": "bob", "category": "comment", "title": "Hi", "body": "there",
            "channels": ["in_app", "email"]
        }))
        .await;
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(n["lifecycle"], "suppressed", "{n}");
    let inbox = app
        .get_json(&format!("/v1/users/bob/inbox?min_position={cursor}"))
        .await;
    assert_eq!(inbox["items"].as_array().unwrap().len(), 0);
    let channels = explain(app, &id).await;
    assert!(
        channels.iter().all(|c| c["outcome"] == "suppressed"),
        "{channels:?}"
    );
    let (status, _) = app
        .send("POST", &format!("/v1/notifications/{id}/cancel"), None)
        .await;
    assert_eq!(status, 409, "nothing to cancel");
}

async fn a_critical_category_passes_every_preference(app: &TestApp) {
    put(
        app,
        "/v1/categories/security",
        json!({"default_channels": ["in_app"], "critical": true}),
    )
    .await;
    put(
        app,
        "/v1/users/carol/preferences",
        json!({"channels": {"in_app": false}, "categories": {"security": {"channels": {"in_app": false}}},
               "quiet_hours": {"start": "00:00", "end": "23:59"}}),
    )
    .await;
    let (id, cursor) = app
        .create(&json!({
            "recipient": "carol", "category": "security", "title": "Password reset", "body": "code 1234"
        }))
        .await;
    let inbox = app
        .get_json(&format!("/v1/users/carol/inbox?min_position={cursor}"))
        .await;
    assert_eq!(inbox["items"][0]["id"], id.as_str());
    assert!(suppressions(app, &id).await.is_empty());
}

async fn failures_and_deliveries_reported_by_workers_are_told_apart_from_suppressions(
    app: &TestApp,
) {
    let (id, _) = app
        .create(&json!({
            "recipient": "dora", "category": "billing", "title": "Invoice", "body": "due",
            "channels": ["email"]
        }))
        .await;
    let fail = json!({"channel": "email", "reason": "mailbox full"});
    let (status, answer) = app
        .send("POST", &format!("/v1/notifications/{id}/fail"), Some(&fail))
        .await;
    assert_eq!(status, 200, "{answer}");
    let email = explain(app, &id).await.remove(0);
    assert_eq!(email["outcome"], "failed");
    assert!(
        email["reason"].as_str().unwrap().contains("mailbox full"),
        "{email}"
    );
    for bad in [
        json!({"channel": "email", "reason": ""}),
        json!({"channel": "email", "reason": "two\nlines"}),
        json!({"channel": "email"}),
    ] {
        let (status, _) = app
            .send("POST", &format!("/v1/notifications/{id}/fail"), Some(&bad))
            .await;
        assert!(matches!(status, 400 | 422), "{bad}: {status}");
    }
    let (status, _) = app
        .send(
            "POST",
            &format!("/v1/notifications/{id}/fail"),
            Some(&json!({"channel": "sms", "reason": "x"})),
        )
        .await;
    assert_eq!(status, 409, "not a channel it was sent on");
    // The retry worked.
    let (status, _) = app
        .send(
            "POST",
            &format!("/v1/notifications/{id}/deliver"),
            Some(&json!({"channel": "email"})),
        )
        .await;
    assert_eq!(status, 200);
    let email = explain(app, &id).await.remove(0);
    assert_eq!(email["outcome"], "delivered", "{email}");
}

async fn quiet_hours_hold_in_app_and_push_until_they_end_and_urgent_passes(app: &TestApp) {
    // Quiet from the minute before now to the next minute: they end at
    // the next minute boundary, within a minute.
    let now = Utc::now();
    let minute = |m: i64| {
        let t = now + chrono::Duration::minutes(m);
        format!("{:02}:{:02}", t.hour(), t.minute())
    };
    put(
        app,
        "/v1/users/erin/preferences",
        json!({"quiet_hours": {"start": minute(-1), "end": minute(1)}}),
    )
    .await;
    let (urgent, cursor) = app
        .create(&json!({
            "recipient": "erin", "category": "alert", "title": "Outage", "body": "now",
            "priority": "urgent"
        }))
        .await;
    let inbox = app
        .get_json(&format!("/v1/users/erin/inbox?min_position={cursor}"))
        .await;
    assert_eq!(inbox["items"][0]["id"], urgent.as_str(), "urgent passes");

    let (held, held_cursor) = app
        .create(&json!({
            "recipient": "erin", "category": "comment", "title": "Reply", "body": "hi",
            "channels": ["in_app", "push", "email"]
        }))
        .await;
    let channels = explain(app, &held).await;
    for channel in ["in_app", "push"] {
        let c = outcome(&channels, channel);
        assert_eq!(
            (c["outcome"].as_str(), c["rule"].as_str()),
            (Some("pending"), Some("quiet_hours")),
            "{c}"
        );
        assert!(c["reason"].as_str().unwrap().contains("quiet hours"), "{c}");
    }
    assert!(
        outcome(&channels, "email")["rule"].is_null(),
        "email is not held"
    );
    let until = outcome(&channels, "in_app")["until"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, problem) = app
        .send(
            "POST",
            &format!("/v1/notifications/{held}/deliver"),
            Some(&json!({"channel": "push"})),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("quiet hours"),
        "{problem}"
    );

    // The in-app delivery comes when they end.
    let until_at = chrono::DateTime::parse_from_rfc3339(&until)
        .unwrap()
        .to_utc();
    let deadline = Instant::now()
        + (until_at - Utc::now()).to_std().unwrap_or_default()
        + Duration::from_secs(10);
    loop {
        let n = app
            .get_json(&format!(
                "/v1/notifications/{held}?min_position={held_cursor}"
            ))
            .await;
        if n["lifecycle"] == "delivered" {
            let delivered =
                chrono::DateTime::parse_from_rfc3339(n["delivered_at"].as_str().unwrap()).unwrap();
            assert!(delivered.to_utc() >= until_at, "not before {until}: {n}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered by {until} + 10 s: {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_app = outcome(&explain(app, &held).await, "in_app").clone();
    assert_eq!(in_app["outcome"], "delivered");
    assert!(
        in_app["reason"]
            .as_str()
            .unwrap()
            .contains("after being held"),
        "{in_app}"
    );
    // Push may go now.
    let (status, _) = app
        .send(
            "POST",
            &format!("/v1/notifications/{held}/deliver"),
            Some(&json!({"channel": "push"})),
        )
        .await;
    assert_eq!(status, 200);
}
