//! Preferences, category settings and tenant defaults through HTTP: the
//! documented shapes, the resolved matrix and the level that decided each
//! cell, time travel with `as_of`, and refusals that store nothing.

use serde_json::{json, Value};

use crate::helpers::TestApp;

async fn put(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.send("PUT", path, Some(&body)).await;
    assert_eq!(status, 200, "PUT {path}: {answer}");
    answer
}

fn cell(prefs: &Value, category: &str, channel: &str) -> (bool, String) {
    let c = &prefs["resolved"][category][channel];
    (
        c["enabled"]
            .as_bool()
            .unwrap_or_else(|| panic!("{category}.{channel} in {prefs}")),
        c["level"].as_str().unwrap().to_owned(),
    )
}

on_both_backends!(
    preferences_take_and_answer_the_documented_shape,
    category_settings_and_tenant_defaults_take_their_places_in_the_resolution,
    preferences_as_of_a_past_time_answer_them_as_they_were,
    refused_preferences_name_the_field_and_store_nothing,
);

async fn preferences_take_and_answer_the_documented_shape(app: &TestApp) {
    let fresh = app.get_json("/v1/users/alice/preferences").await;
    assert_eq!(fresh["version"], 0);
    assert_eq!(cell(&fresh, "*", "email"), (true, "default".into()));

    let body = json!({
        "channels": {"email": false},
        "categories": {"marketing": {"channels": {"in_app": false}}},
        "quiet_hours": {"start": "22:00", "end": "07:00"}
    });
    let set = put(app, "/v1/users/alice/preferences", body.clone()).await;
    assert_eq!(set["changed"], true);
    let got = app.get_json("/v1/users/alice/preferences").await;
    for field in ["channels", "categories", "quiet_hours"] {
        assert_eq!(got[field], body[field], "{field} answers as it was set");
    }
    assert_eq!(got["version"], 1);
    assert_eq!(got["time_zone"], "UTC");
    assert_eq!(cell(&got, "marketing", "in_app"), (false, "user".into()));
    assert_eq!(cell(&got, "marketing", "email"), (false, "user".into()));
    assert_eq!(cell(&got, "marketing", "push"), (true, "default".into()));
    assert_eq!(cell(&got, "*", "email"), (false, "user".into()));
    assert_eq!(cell(&got, "*", "in_app"), (true, "default".into()));
    assert_eq!(got["resolved"]["*"]["email"]["version"], 1);

    // The same set again records nothing.
    let again = put(app, "/v1/users/alice/preferences", body).await;
    assert_eq!(again["changed"], false);
    assert_eq!(again["version"], 1);
}

async fn category_settings_and_tenant_defaults_take_their_places_in_the_resolution(app: &TestApp) {
    let security = put(
        app,
        "/v1/categories/security",
        json!({"default_channels": ["in_app", "email"], "critical": true}),
    )
    .await;
    assert_eq!(security["configured"], true);
    assert_eq!(security["version"], 1);
    put(
        app,
        "/v1/categories/marketing",
        json!({"default_channels": ["in_app"], "critical": false}),
    )
    .await;
    // A set that changes nothing still answers the whole resolution.
    let (status, fresh) = app
        .send("PUT", "/v1/users/newbie/preferences", Some(&json!({})))
        .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["changed"], false);
    assert_eq!(cell(&fresh, "marketing", "sms"), (false, "category".into()));
    let unconfigured = app.get_json("/v1/categories/comment").await;
    assert_eq!(unconfigured["configured"], false);
    assert_eq!(unconfigured["critical"], false);
    assert_eq!(
        unconfigured["default_channels"].as_array().unwrap().len(),
        5
    );
    let list = app.get_json("/v1/categories").await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["marketing", "security"]);

    put(
        app,
        "/v1/users/bob/preferences",
        json!({"channels": {"email": false, "in_app": false}}),
    )
    .await;
    let prefs = app.get_json("/v1/users/bob/preferences").await;
    assert_eq!(cell(&prefs, "security", "email"), (true, "critical".into()));
    assert_eq!(
        cell(&prefs, "security", "in_app"),
        (true, "critical".into())
    );
    assert_eq!(cell(&prefs, "marketing", "sms"), (false, "category".into()));
    assert_eq!(cell(&prefs, "marketing", "email"), (false, "user".into()));

    // A tenant's defaults sit between the user and the category.
    let acme = put(
        app,
        "/v1/tenants/acme/preferences",
        json!({"channels": {"sms": true}, "categories": {"marketing": {"channels": {"push": true}}}}),
    )
    .await;
    assert_eq!(acme["version"], 1);
    let (status, _) = app
        .send("PATCH", "/v1/users/bob", Some(&json!({"tenant": "acme"})))
        .await;
    assert_eq!(status, 200);
    let prefs = app.get_json("/v1/users/bob/preferences").await;
    assert_eq!(prefs["tenant"], "acme");
    assert_eq!(cell(&prefs, "marketing", "sms"), (true, "tenant".into()));
    assert_eq!(cell(&prefs, "marketing", "push"), (true, "tenant".into()));
    assert_eq!(
        cell(&prefs, "marketing", "chat"),
        (false, "category".into())
    );
    assert_eq!(cell(&prefs, "marketing", "email"), (false, "user".into()));
    // Another tenant on request, and none.
    let other = app
        .get_json("/v1/users/bob/preferences?tenant=initech")
        .await;
    assert_eq!(cell(&other, "marketing", "sms"), (false, "category".into()));
}

async fn preferences_as_of_a_past_time_answer_them_as_they_were(app: &TestApp) {
    let first = put(
        app,
        "/v1/users/carol/preferences",
        json!({"channels": {"push": false}}),
    )
    .await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    put(
        app,
        "/v1/users/carol/preferences",
        json!({"channels": {"push": true, "sms": false}}),
    )
    .await;
    put(
        app,
        "/v1/categories/digest",
        json!({"default_channels": ["email"], "critical": false}),
    )
    .await;

    let now = app.get_json("/v1/users/carol/preferences").await;
    assert_eq!(now["version"], 2);
    assert_eq!(cell(&now, "*", "push"), (true, "user".into()));
    assert_eq!(cell(&now, "digest", "in_app"), (false, "category".into()));

    for as_of in [between.as_str(), cursor.as_str()] {
        let then = app
            .get_json(&format!(
                "/v1/users/carol/preferences?as_of={}",
                urlencode(as_of)
            ))
            .await;
        assert_eq!(then["version"], 1, "as of {as_of}: {then}");
        assert_eq!(then["channels"], json!({"push": false}));
        assert_eq!(cell(&then, "*", "push"), (false, "user".into()));
        assert!(
            then["resolved"].get("digest").is_none(),
            "not configured then: {then}"
        );
        assert_eq!(then["as_of"], as_of);
    }
    let before = app
        .get_json("/v1/users/carol/preferences?as_of=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(before["version"], 0);
    let (status, problem) = app
        .send("GET", "/v1/users/carol/preferences?as_of=yesterday", None)
        .await;
    assert_eq!(status, 422, "{problem}");
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn refused_preferences_name_the_field_and_store_nothing(app: &TestApp) {
    put(
        app,
        "/v1/users/dave/preferences",
        json!({"channels": {"email": false}}),
    )
    .await;
    let many: serde_json::Map<String, Value> = (0..101)
        .map(|i| (format!("c{i}"), json!({"channels": {"email": true}})))
        .collect();
    let cases = [
        (json!({"channels": {"fax": false}}), 400, None),
        (json!({"channels": {"email": "no"}}), 400, None),
        (
            json!({"categories": {"Not A Category": {"channels": {"email": true}}}}),
            422,
            Some("categories.Not A Category"),
        ),
        (json!({"categories": many}), 422, Some("categories")),
        (
            json!({"quiet_hours": {"start": "22:00", "end": "22:00"}}),
            422,
            Some("quiet_hours"),
        ),
        (
            json!({"quiet_hours": {"start": "25:00", "end": "07:00"}}),
            422,
            Some("quiet_hours.start"),
        ),
        (json!({"quiet_hours": {"start": "22:00"}}), 400, None),
        (json!({"mute_everything": true}), 400, None),
        // serde would read a struct from an array, field by field.
        (json!({"channels": [null, null]}), 400, None),
        (json!({"channels": [false]}), 400, None),
        (
            json!({"categories": {"marketing": [{"email": false}]}}),
            400,
            None,
        ),
        (json!({"quiet_hours": ["22:00", "07:00"]}), 400, None),
    ];
    for (body, expected, field) in cases {
        let (status, problem) = app
            .send("PUT", "/v1/users/dave/preferences", Some(&body))
            .await;
        assert_eq!(status, expected, "{body}: {problem}");
        if let Some(field) = field {
            let named: Vec<&str> = problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f["field"].as_str())
                .collect();
            assert!(named.contains(&field), "{field} in {problem}");
        }
    }
    let (status, _) = app
        .send(
            "PUT",
            "/v1/tenants/acme/preferences",
            Some(&json!({"quiet_hours": {"start": "22:00", "end": "07:00"}})),
        )
        .await;
    assert_eq!(status, 400, "quiet hours are each user's own");
    for body in [
        json!({"default_channels": ["in_app", "pigeon"], "critical": false}),
        json!({"default_channels": ["in_app"]}),
        json!({"default_channels": "in_app", "critical": false}),
    ] {
        let (status, problem) = app.send("PUT", "/v1/categories/news", Some(&body)).await;
        assert!(matches!(status, 400 | 422), "{body}: {status} {problem}");
    }
    let (status, _) = app
        .send(
            "PUT",
            "/v1/categories/Bad%20Name",
            Some(&json!({"default_channels": [], "critical": false})),
        )
        .await;
    assert_eq!(status, 422);
    let dave = app.get_json("/v1/users/dave/preferences").await;
    assert_eq!(dave["version"], 1, "{dave}");
    assert_eq!(dave["channels"], json!({"email": false}));
    assert_eq!(
        app.get_json("/v1/categories/news").await["configured"],
        false
    );
    assert_eq!(
        app.get_json("/v1/tenants/acme/preferences").await["version"],
        0
    );
}
