//! Experiments through HTTP: a design, its lifecycle, sends enrolled with
//! sticky variants (a template, fixed content, or as sent) and a holdout
//! that receives nothing, and the results (assigned, exposed, outcomes,
//! lift, sample ratio, `as_of`, a metric defined after the fact) from the
//! outcomes read model, with its stream topic.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::TestApp;
use crate::stream_client::Subscriber;

const USERS: usize = 60;

async fn put(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    app.send("PUT", path, Some(body)).await
}

fn design(holdout: f64) -> Value {
    json!({
        "category": "onboarding",
        "holdout": holdout,
        "variants": [
            {"name": "control", "weight": 1},
            {"name": "short", "weight": 1, "template": "welcome-short"},
            {"name": "plain", "weight": 1, "title": "Hi there", "body": "Welcome"}
        ]
    })
}

fn send(user: &str, experiment: &str) -> Value {
    json!({
        "recipient": user,
        "category": "onboarding",
        "experiment": experiment,
        "variables": {"name": user},
        "template": "welcome-long",
    })
}

async fn templates(app: &TestApp) {
    for (key, title) in [
        ("welcome-long", "Welcome to tidings, {{ name }}"),
        ("welcome-short", "Hi {{ name }}"),
    ] {
        let (status, answer) = app
            .send(
                "POST",
                &format!("/v1/templates/{key}/versions"),
                Some(&json!({"default_locale": "en", "publish": true,
                    "locales": {"en": {"title": title, "body": "Glad you are here"}}})),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
}

/// The results once `done` says they are complete (the read model folds
/// behind the commands), or after ten seconds.
async fn results_until(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = app.get_json(path).await;
        if done(&r) || start.elapsed() > Duration::from_secs(10) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn variant<'a>(results: &'a Value, name: &str) -> &'a Value {
    results["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no variant {name}: {results}"))
}

fn metric<'a>(variant: &'a Value, name: &str) -> &'a Value {
    variant["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no metric {name}: {variant}"))
}

on_both_backends!(
    an_experiment_enrolls_sends_with_sticky_variants_and_answers_its_results,
    the_holdout_receives_nothing_and_the_log_says_why,
    sends_outside_a_running_experiment_are_refused_or_go_as_sent,
    designs_and_transitions_that_cannot_be_are_refused,
    creates_racing_for_a_new_user_draw_one_assignment,
    a_send_to_many_enrolls_each_recipient_as_its_pages_fan_out,
);

async fn a_send_to_many_enrolls_each_recipient_as_its_pages_fan_out(app: &TestApp) {
    templates(app).await;
    put(app, "/v1/experiments/many", &design(0.2)).await;
    app.send("POST", "/v1/experiments/many/start", None).await;
    // Three users assigned before the send keep their variants.
    let mut before = std::collections::BTreeMap::new();
    for n in 0..3 {
        let user = format!("m{n}");
        let (id, cursor) = app.create(&send(&user, "many")).await;
        let note = app
            .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
            .await;
        before.insert(user, note["experiment"]["variant"].clone());
    }
    let users: Vec<String> = (0..30).map(|n| format!("m{n}")).collect();
    let mut many = send("unused", "many");
    many.as_object_mut().unwrap().remove("recipient");
    many["recipients"] = json!(users);
    let (status, accepted) = app.send("POST", "/v1/notifications", Some(&many)).await;
    assert_eq!(status, 202, "{accepted}");
    let send_id = accepted["send_id"].as_str().expect("a send id").to_owned();
    // The send's row appears once its read model folds the request.
    let start = Instant::now();
    let done = loop {
        let (status, row) = app.send("GET", &format!("/v1/sends/{send_id}"), None).await;
        if (status == 200 && row["status"] == "done") || start.elapsed() > Duration::from_secs(10) {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "done", "{done}");
    let mut seen = std::collections::BTreeSet::new();
    for user in &users {
        let inbox = app
            .get_json(&format!("/v1/users/{user}/inbox?limit=100"))
            .await;
        let items = inbox["items"].as_array().unwrap();
        for item in items {
            if let Some(v) = before.get(user) {
                assert_eq!(
                    &item["experiment"]["variant"], v,
                    "{user} keeps their variant: {item}"
                );
            }
            let v = item["experiment"]["variant"]
                .as_str()
                .expect("in-app items are not held out");
            // A send to many renders once, with the send's variables.
            let expected = match v {
                "control" => "Welcome to tidings, unused",
                "short" => "Hi unused",
                "plain" => "Hi there",
                other => panic!("{other}"),
            };
            if !before.contains_key(user) {
                assert_eq!(item["title"], expected, "{item}");
            }
            seen.insert(v.to_owned());
        }
    }
    assert!(seen.len() >= 2, "the variants split the send: {seen:?}");
    let results = results_until(app, "/v1/experiments/many/results", |r| {
        let assigned: u64 = r["variants"]
            .as_array()
            .map(|vs| vs.iter().map(|v| v["assigned"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0);
        assigned + r["holdout_assigned"].as_u64().unwrap_or(0) == 30
    })
    .await;
    let assigned: u64 = results["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["assigned"].as_u64().unwrap())
        .sum::<u64>()
        + results["holdout_assigned"].as_u64().unwrap();
    assert_eq!(
        assigned, 30,
        "one assignment per user, the earlier three kept: {results}"
    );
}

/// Twenty creates for one user not assigned yet, at once, while the
/// weights change under them: one `VariantAssigned`, one variant for all.
async fn creates_racing_for_a_new_user_draw_one_assignment(app: &TestApp) {
    templates(app).await;
    put(app, "/v1/experiments/race", &design(0.0)).await;
    app.send("POST", "/v1/experiments/race/start", None).await;
    let creates = (0..20).map(|_| async {
        let (status, answer) = app
            .send("POST", "/v1/notifications", Some(&send("racer", "race")))
            .await;
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    });
    let reweigh = async {
        for weights in [[1, 1, 50], [50, 1, 1], [1, 50, 1]] {
            let (status, answer) = put(
                app,
                "/v1/experiments/race/weights",
                &json!({"weights": weights}),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
        }
    };
    let (ids, ()) = tokio::join!(futures_util::future::join_all(creates), reweigh);
    let mut variants = std::collections::BTreeSet::new();
    for id in &ids {
        let events = app
            .get_json(&format!("/v1/notifications/{id}/events"))
            .await;
        let created = &events["events"][0]["data"];
        assert_eq!(
            events["events"][0]["type"], "NotificationCreated",
            "{events}"
        );
        variants.insert(
            created["experiment"]["variant"]
                .as_str()
                .unwrap_or_else(|| panic!("{created}"))
                .to_owned(),
        );
    }
    assert_eq!(variants.len(), 1, "one variant for the user: {variants:?}");
    let results = results_until(app, "/v1/experiments/race/results", |r| {
        r["variants"].as_array().is_some_and(|vs| {
            vs.iter()
                .map(|v| v["exposed"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 20
        })
    })
    .await;
    let assigned: u64 = results["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["assigned"].as_u64().unwrap())
        .sum();
    assert_eq!(assigned, 1, "one assignment: {results}");
}

async fn an_experiment_enrolls_sends_with_sticky_variants_and_answers_its_results(app: &TestApp) {
    templates(app).await;
    let (status, defined) = put(app, "/v1/experiments/welcome", &design(0.0)).await;
    assert_eq!(
        (status, defined["status"].as_str()),
        (200, Some("draft")),
        "{defined}"
    );
    let mut stream = Subscriber::connect(app, "topics=experiments:welcome").await;
    stream.expect("subscribed").await;
    let (status, started) = app
        .send("POST", "/v1/experiments/welcome/start", None)
        .await;
    assert_eq!(
        (status, started["status"].as_str()),
        (200, Some("running")),
        "{started}"
    );

    let mut variants = std::collections::BTreeMap::new();
    let mut ids = Vec::new();
    for n in 0..USERS {
        let user = format!("u{n}");
        let (id, cursor) = app.create(&send(&user, "welcome")).await;
        let note = app
            .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
            .await;
        let v = note["experiment"]["variant"]
            .as_str()
            .expect("a variant")
            .to_owned();
        let expected_title = match v.as_str() {
            "control" => format!("Welcome to tidings, {user}"),
            "short" => format!("Hi {user}"),
            "plain" => "Hi there".to_owned(),
            other => panic!("variant {other}"),
        };
        assert_eq!(note["title"], expected_title.as_str(), "{note}");
        variants.insert(user, v);
        ids.push(id);
    }
    let update = stream.update().await;
    assert_eq!(update["topic"], "experiments:welcome", "{update}");
    // Every variant drew users; a second send keeps each user's variant.
    assert_eq!(
        variants
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "{variants:?}"
    );
    for n in 0..10 {
        let user = format!("u{n}");
        let (id, cursor) = app.create(&send(&user, "welcome")).await;
        let note = app
            .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
            .await;
        assert_eq!(
            note["experiment"]["variant"],
            variants[&user].as_str(),
            "sticky: {note}"
        );
    }
    // New weights apply to users not assigned yet; the assigned keep theirs.
    let (status, reweighted) = put(
        app,
        "/v1/experiments/welcome/weights",
        &json!({"weights": [1, 1, 100]}),
    )
    .await;
    assert_eq!(
        (status, reweighted["weights_version"].as_u64()),
        (200, Some(2)),
        "{reweighted}"
    );
    let (id, cursor) = app.create(&send("u0", "welcome")).await;
    let note = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(note["experiment"]["variant"], variants["u0"].as_str());

    let before_clicks = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Clicks on the first 20 notifications.
    for id in &ids[..20] {
        app.command(id, "click").await;
    }
    let clicked_expected = 20;
    let results = results_until(app, "/v1/experiments/welcome/results", |r| {
        r["variants"].as_array().is_some_and(|vs| {
            vs.iter()
                .map(|v| v["exposed"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == (USERS + 11) as u64
                && vs
                    .iter()
                    .map(|v| {
                        v["metrics"]
                            .as_array()
                            .and_then(|m| m.iter().find(|m| m["name"] == "clicked"))
                            .and_then(|m| m["count"].as_u64())
                            .unwrap_or(0)
                    })
                    .sum::<u64>()
                    == clicked_expected
        })
    })
    .await;
    let assigned: u64 = results["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["assigned"].as_u64().unwrap())
        .sum();
    assert_eq!(assigned, USERS as u64, "one assignment per user: {results}");
    for (name, v) in ["control", "short", "plain"].map(|n| (n, variant(&results, n))) {
        let users = variants.values().filter(|x| x.as_str() == name).count() as u64;
        assert_eq!(v["assigned"], users, "{name}: {results}");
        assert_eq!(
            metric(v, "delivered")["count"],
            v["exposed"],
            "in-app: delivered at once"
        );
    }
    let short = variant(&results, "short");
    let cmp = &metric(short, "clicked")["against_control"];
    assert!(cmp["p_value"].as_f64().is_some(), "{short}");
    assert!(cmp["ci_low"].as_f64().unwrap() <= cmp["difference"].as_f64().unwrap());
    assert!(variant(&results, "control")["metrics"][0]
        .get("against_control")
        .is_none());
    assert_eq!(results["sample_ratio"]["mismatch"], false, "{results}");

    // Time travel: before the clicks none had been clicked.
    let past = app
        .get_json(&format!(
            "/v1/experiments/welcome/results?as_of={}",
            before_clicks.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
        .await;
    let clicks_then: u64 = past["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| metric(v, "clicked")["count"].as_u64().unwrap())
        .sum();
    assert_eq!(clicks_then, 0, "{past}");

    // A metric defined after the fact is answered over the history.
    let (status, defined) = put(
        app,
        "/v1/experiments/welcome/metrics/clicked-1h",
        &json!({"outcome": "clicked", "within_seconds": 3600}),
    )
    .await;
    assert_eq!(status, 200, "{defined}");
    let (status, quick) = put(
        app,
        "/v1/experiments/welcome/metrics/clicked-instantly",
        &json!({"outcome": "clicked", "within_seconds": 1}),
    )
    .await;
    assert_eq!(status, 200, "{quick}");
    let results = app.get_json("/v1/experiments/welcome/results").await;
    let sum = |name: &str| -> u64 {
        results["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| metric(v, name)["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("clicked-1h"), clicked_expected, "{results}");
    assert_eq!(
        sum("clicked-instantly"),
        0,
        "the clicks came over a second later: {results}"
    );

    // Rebuilt from the log (blue/green), the read model answers the same.
    let resp = app.post_empty("/v1/projections/outcomes/rebuild").await;
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let start = Instant::now();
    loop {
        let all = app.get_json("/v1/projections").await;
        let outcomes = all
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "outcomes")
            .expect("the outcomes projection")
            .clone();
        match outcomes["rebuild"]["status"].as_str() {
            Some("done") => break,
            Some("failed") => panic!("{outcomes}"),
            _ if start.elapsed() > Duration::from_secs(30) => panic!("no rebuild: {outcomes}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let rebuilt = app.get_json("/v1/experiments/welcome/results").await;
    assert_eq!(rebuilt, results, "rebuilt from the log");

    // Concluded with a winner: everyone gets it, outside the experiment.
    let (status, done) = app
        .send(
            "POST",
            "/v1/experiments/welcome/conclude",
            Some(&json!({"winner": "plain"})),
        )
        .await;
    assert_eq!(
        (status, done["winner"].as_str()),
        (200, Some("plain")),
        "{done}"
    );
    let (id, cursor) = app.create(&send("newcomer", "welcome")).await;
    let note = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(
        (note["title"].as_str(), &note["experiment"]),
        (Some("Hi there"), &Value::Null),
        "{note}"
    );
}

async fn the_holdout_receives_nothing_and_the_log_says_why(app: &TestApp) {
    templates(app).await;
    put(app, "/v1/experiments/held", &design(0.5)).await;
    app.send("POST", "/v1/experiments/held/start", None).await;
    let mut held = 0;
    let mut sent = 0;
    for n in 0..40 {
        let (id, cursor) = app.create(&send(&format!("h{n}"), "held")).await;
        let note = app
            .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
            .await;
        if note["experiment"]["variant"].is_null() {
            held += 1;
            assert_eq!(note["lifecycle"], "suppressed", "{note}");
            let why = app
                .get_json(&format!("/v1/notifications/{id}/explain"))
                .await;
            assert_eq!(why["channels"][0]["rule"], "holdout", "{why}");
            assert!(
                why["content"]
                    .as_str()
                    .unwrap()
                    .contains("held out of experiment `held`"),
                "{why}"
            );
        } else {
            sent += 1;
            assert_eq!(note["lifecycle"], "delivered", "{note}");
        }
    }
    assert!(
        held > 5 && sent > 5,
        "a half holdout holds some out: {held} held, {sent} sent"
    );
    let results = results_until(app, "/v1/experiments/held/results", |r| {
        r["holdout_assigned"].as_u64() == Some(held)
    })
    .await;
    assert_eq!(results["holdout_assigned"], held, "{results}");
    let exposed: u64 = results["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["exposed"].as_u64().unwrap())
        .sum();
    assert_eq!(exposed, sent, "the held out are never exposed: {results}");
}

async fn refused(app: &TestApp, body: Value) {
    let (status, problem) = app.send("POST", "/v1/notifications", Some(&body)).await;
    assert_eq!(status, 422, "{body}: {problem}");
    assert_eq!(problem["errors"][0]["field"], "experiment", "{problem}");
}

async fn sends_outside_a_running_experiment_are_refused_or_go_as_sent(app: &TestApp) {
    templates(app).await;
    refused(app, send("ann", "nothing")).await;
    put(app, "/v1/experiments/draft", &design(0.0)).await;
    refused(app, send("ann", "draft")).await;
    let mut other = send("ann", "draft");
    other["category"] = json!("billing");
    app.send("POST", "/v1/experiments/draft/start", None).await;
    refused(app, other).await;

    app.send("POST", "/v1/experiments/draft/pause", None).await;
    let (id, cursor) = app.create(&send("ann", "draft")).await;
    let note = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(
        (note["title"].as_str(), &note["experiment"]),
        (Some("Welcome to tidings, ann"), &Value::Null),
        "paused: as sent, outside the experiment: {note}"
    );
}

async fn designs_and_transitions_that_cannot_be_are_refused(app: &TestApp) {
    for (body, field) in [
        (
            json!({"category": "onboarding", "variants": [{"name": "only", "weight": 1}]}),
            "variants",
        ),
        (
            json!({"category": "onboarding", "variants": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}),
            "variants[1].name",
        ),
        (
            json!({"category": "onboarding", "holdout": 0.9, "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
            "holdout",
        ),
        (
            json!({"category": "onboarding", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1, "template": "x", "title": "t", "body": "b"}]}),
            "variants[1].template",
        ),
    ] {
        let (status, problem) = put(app, "/v1/experiments/bad", &body).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
    }
    let (status, _) = app.send("GET", "/v1/experiments/bad", None).await;
    assert_eq!(status, 404, "refused designs store nothing");
    put(app, "/v1/experiments/ok", &design(0.0)).await;
    let (status, problem) = app.send("POST", "/v1/experiments/ok/pause", None).await;
    assert_eq!(status, 409, "a draft cannot pause: {problem}");
    app.send("POST", "/v1/experiments/ok/start", None).await;
    let (status, problem) = put(app, "/v1/experiments/ok", &design(0.1)).await;
    assert_eq!(status, 409, "a started design is fixed: {problem}");
    let (status, problem) = put(
        app,
        "/v1/experiments/ok/weights",
        &json!({"weights": [1, 2]}),
    )
    .await;
    assert_eq!(status, 422, "one weight per variant: {problem}");
    let (status, problem) = put(
        app,
        "/v1/experiments/ok/metrics/clicked",
        &json!({"outcome": "clicked"}),
    )
    .await;
    assert_eq!(status, 422, "a built-in metric's name: {problem}");
    let (status, problem) = app
        .send(
            "POST",
            "/v1/experiments/ok/conclude",
            Some(&json!({"winner": "nobody"})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = app
        .send("GET", "/v1/experiments/nothing/results", None)
        .await;
    assert_eq!(status, 404);
}
