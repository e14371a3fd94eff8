//! Recipient profiles through HTTP: implicit defaults, replace, merge patch,
//! no event for no change, refusals that name the field and store nothing.

use serde_json::{json, Value};

use crate::access::{call, token, SEND};
use crate::helpers::TestApp;

/// The recipient events in the log, oldest first, once there are
/// `expected` of them (the global log shows an event once no earlier
/// transaction can still commit, a moment after its command answered);
/// what there is after 5 s otherwise.
async fn recipient_events(app: &TestApp, expected: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let page = app
            .get_json("/v1/events?type=RecipientProfileChanged&limit=1000")
            .await;
        let events = page["events"].as_array().unwrap().clone();
        if events.len() >= expected || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

on_both_backends!(
    a_user_nobody_described_has_the_default_profile,
    a_replace_sets_the_whole_profile_and_a_patch_only_what_it_names,
    a_change_that_changes_nothing_records_nothing,
    refused_profiles_name_every_bad_field_and_store_nothing,
);

async fn a_user_nobody_described_has_the_default_profile(app: &TestApp) {
    let profile = app.get_json("/v1/users/nobody-yet").await;
    assert_eq!(profile["user"], "nobody-yet");
    assert_eq!(profile["version"], 0);
    for field in [
        "display_name",
        "time_zone",
        "locale",
        "tenant",
        "updated_at",
    ] {
        assert!(profile[field].is_null(), "{field}: {profile}");
    }
    assert_eq!(
        profile["addresses"],
        json!({"email": null, "phone": null, "push_tokens": [], "webhook_url": null})
    );
    assert!(profile.get("changed").is_none(), "{profile}");
}

async fn a_replace_sets_the_whole_profile_and_a_patch_only_what_it_names(app: &TestApp) {
    let (status, put) = app
        .send(
            "PUT",
            "/v1/users/alice",
            Some(&json!({
                "display_name": "Alice Liddell",
                "time_zone": "Europe/Berlin",
                "locale": "pt_br",
                "tenant": "acme",
                "addresses": {
                    "email": "alice@example.com",
                    "phone": "+4915112345678",
                    "push_tokens": ["device-1", "device-2", "device-1"],
                    "webhook_url": "https://chat.example.com/hooks/alice"
                }
            })),
        )
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["changed"], true);
    assert_eq!(put["version"], 1);
    assert_eq!(put["locale"], "pt-BR", "kept in canonical case");
    assert_eq!(
        put["addresses"]["push_tokens"],
        json!(["device-1", "device-2"])
    );
    let got = app.get_json("/v1/users/alice").await;
    assert_eq!(got["display_name"], "Alice Liddell");
    assert_eq!(got["cursor"], put["cursor"]);

    // Only the time zone changes; the rest stays.
    let (status, patched) = app
        .send(
            "PATCH",
            "/v1/users/alice",
            Some(&json!({"time_zone": "America/New_York"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["time_zone"], "America/New_York");
    assert_eq!(patched["display_name"], "Alice Liddell");
    assert_eq!(patched["addresses"]["email"], "alice@example.com");
    assert_eq!(patched["version"], 2);

    // `null` removes one address; the others stay.
    let (_, patched) = app
        .send(
            "PATCH",
            "/v1/users/alice",
            Some(&json!({"addresses": {"email": null}})),
        )
        .await;
    assert!(patched["addresses"]["email"].is_null(), "{patched}");
    assert_eq!(patched["addresses"]["phone"], "+4915112345678");

    // `addresses: null` removes them all.
    let (_, patched) = app
        .send(
            "PATCH",
            "/v1/users/alice",
            Some(&json!({"addresses": null})),
        )
        .await;
    assert_eq!(
        patched["addresses"],
        json!({"email": null, "phone": null, "push_tokens": [], "webhook_url": null})
    );
    assert_eq!(patched["tenant"], "acme");

    // A replace removes what it does not name.
    let (_, replaced) = app
        .send("PUT", "/v1/users/alice", Some(&json!({"locale": "de"})))
        .await;
    assert!(replaced["display_name"].is_null(), "{replaced}");
    assert!(replaced["tenant"].is_null(), "{replaced}");
    assert_eq!(replaced["version"], 5);

    // Each change is one event holding the profile as it was after it.
    let events = recipient_events(app, 5).await;
    assert_eq!(events.len(), 5);
    let second = &events[1]["data"]["profile"];
    assert_eq!(second["time_zone"], "America/New_York");
    assert_eq!(second["display_name"], "Alice Liddell");
}

async fn a_change_that_changes_nothing_records_nothing(app: &TestApp) {
    let body = json!({"display_name": "Bob", "addresses": {"email": "bob@example.com"}});
    let (_, first) = app.send("PUT", "/v1/users/bob", Some(&body)).await;
    let (status, again) = app.send("PUT", "/v1/users/bob", Some(&body)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["changed"], false);
    assert_eq!(again["version"], 1);
    assert_eq!(again["cursor"], first["cursor"]);
    let (_, same) = app
        .send(
            "PATCH",
            "/v1/users/bob",
            Some(&json!({"display_name": "Bob"})),
        )
        .await;
    assert_eq!(same["changed"], false);
    let (_, empty) = app.send("PATCH", "/v1/users/bob", Some(&json!({}))).await;
    assert_eq!(empty["changed"], false);
    assert_eq!(recipient_events(app, 1).await.len(), 1);
}

async fn refused_profiles_name_every_bad_field_and_store_nothing(app: &TestApp) {
    let (status, _) = app
        .send(
            "PUT",
            "/v1/users/carol",
            Some(&json!({"display_name": "Carol"})),
        )
        .await;
    assert_eq!(status, 200);
    let tokens: Vec<String> = (0..11).map(|i| format!("device-{i}")).collect();
    let cases = [
        (
            json!({"time_zone": "Mars/Olympus", "locale": "english", "addresses": {"phone": "0151 1234"}}),
            422,
            vec!["time_zone", "locale", "addresses.phone"],
        ),
        (
            json!({"addresses": {"email": "carol@@example", "webhook_url": "ftp://example.com"}}),
            422,
            vec!["addresses.email", "addresses.webhook_url"],
        ),
        (
            json!({"addresses": {"push_tokens": tokens}}),
            422,
            vec!["addresses.push_tokens"],
        ),
        (json!({"display_name": "   "}), 422, vec!["display_name"]),
        (json!({"display_name": 17}), 400, vec![]),
        (json!({"nickname": "c"}), 400, vec![]),
        (json!({"addresses": {"fax": "+4930123456"}}), 400, vec![]),
        (json!({"addresses": ["carol@example.com"]}), 400, vec![]),
    ];
    for method in ["PUT", "PATCH"] {
        for (body, expected, fields) in &cases {
            let (status, problem) = app.send(method, "/v1/users/carol", Some(body)).await;
            assert_eq!(status, *expected, "{method} {body}: {problem}");
            assert!(problem["type"].is_string(), "problem+json: {problem}");
            let named: Vec<&str> = problem["errors"]
                .as_array()
                .map(|e| e.iter().filter_map(|f| f["field"].as_str()).collect())
                .unwrap_or_default();
            for field in fields {
                assert!(
                    named.contains(field),
                    "{method} {body}: {field} in {problem}"
                );
            }
        }
    }
    let (status, _) = app
        .send("PUT", "/v1/users/not%20a%20user", Some(&json!({})))
        .await;
    assert_eq!(status, 422);
    let profile = app.get_json("/v1/users/carol").await;
    assert_eq!(
        profile["version"], 1,
        "nothing refused was stored: {profile}"
    );
    assert_eq!(profile["display_name"], "Carol");
}

mod secured {
    pub use super::a_user_describes_themselves_but_not_their_tenant;

    on_both_backends!(
        spawned_by crate::access::spawn_secured;
        a_user_describes_themselves_but_not_their_tenant,
    );
}

pub async fn a_user_describes_themselves_but_not_their_tenant(app: &TestApp) {
    let dana = token("dana", 300, None);
    let resp = call(
        app,
        "PATCH",
        "/v1/users/dana",
        Some(&dana),
        Some(&json!({"display_name": "Dana", "locale": "fr"})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    for body in [json!({"tenant": "other"}), json!({"tenant": null})] {
        let resp = call(app, "PATCH", "/v1/users/dana", Some(&dana), Some(&body)).await;
        assert_eq!(resp.status(), 403, "{body}");
    }
    let resp = call(
        app,
        "PUT",
        "/v1/users/dana",
        Some(&dana),
        Some(&json!({"tenant": "x"})),
    )
    .await;
    assert_eq!(resp.status(), 403);
    // Another user's profile is not hers to see or change.
    let resp = call(app, "GET", "/v1/users/erin", Some(&dana), None).await;
    assert_eq!(resp.status(), 403);
    // The backend assigns the tenant.
    let resp = call(
        app,
        "PATCH",
        "/v1/users/dana",
        Some(SEND),
        Some(&json!({"tenant": "acme"})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = call(app, "GET", "/v1/users/dana", Some(&dana), None).await;
    let profile: Value = resp.json().await.unwrap();
    assert_eq!(profile["tenant"], "acme");
    assert_eq!(profile["display_name"], "Dana");
    assert_eq!(profile["version"], 2);
    // Her own replace keeps the tenant the backend assigned.
    let resp = call(
        app,
        "PUT",
        "/v1/users/dana",
        Some(&dana),
        Some(&json!({"display_name": "Dana D."})),
    )
    .await;
    let profile: Value = resp.json().await.unwrap();
    assert_eq!(profile["tenant"], "acme", "{profile}");
    assert_eq!(profile["display_name"], "Dana D.");
    // She resolves her preferences against her own tenant only.
    let own = call(
        app,
        "GET",
        "/v1/users/dana/preferences?tenant=acme",
        Some(&dana),
        None,
    )
    .await;
    assert_eq!(own.status(), 200);
    let other = call(
        app,
        "GET",
        "/v1/users/dana/preferences?tenant=initech",
        Some(&dana),
        None,
    )
    .await;
    assert_eq!(other.status(), 403);
    // Topics: the service subscribes her; leaving is hers.
    let join = call(
        app,
        "PUT",
        "/v1/topics/team-ops/subscribers/dana",
        Some(&dana),
        None,
    )
    .await;
    assert_eq!(join.status(), 403);
    let join = call(
        app,
        "PUT",
        "/v1/topics/team-ops/subscribers/dana",
        Some(SEND),
        None,
    )
    .await;
    assert_eq!(join.status(), 200);
    let leave = call(
        app,
        "DELETE",
        "/v1/topics/team-ops/subscribers/dana",
        Some(&dana),
        None,
    )
    .await;
    assert_eq!(leave.status(), 200);
}
