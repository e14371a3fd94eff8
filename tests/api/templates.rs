//! Templates through HTTP: versions, publish and rollback; sends rendered
//! from a template in the recipient's locale; render and schema errors
//! that name the variable and store nothing; a later version that never
//! changes a notification already scheduled or batched; digests rendered
//! through a template.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::TestApp;

fn welcome(title: &str) -> Value {
    json!({
        "default_locale": "en",
        "locales": {
            "en": {
                "title": title,
                "body": "Your plan: {{ plan }}",
                "channels": {"email": {"title": "Welcome aboard, {{ name }}"}}
            },
            "pt": {"title": "Bem-vindo, {{ name }}", "body": "Plano: {{ plan }}"},
            "pt-BR": {"title": "Boas-vindas, {{ name }}", "body": "Plano: {{ plan }}"}
        },
        "schema": {
            "type": "object",
            "required": ["name", "plan"],
            "properties": {"name": {"type": "string"}, "plan": {"enum": ["free", "pro"]}}
        }
    })
}

async fn add_version(app: &TestApp, key: &str, mut body: Value, publish: bool) -> Value {
    body["publish"] = json!(publish);
    let (status, answer) = app
        .send(
            "POST",
            &format!("/v1/templates/{key}/versions"),
            Some(&body),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    answer
}

fn send(recipient: &str, template: &str, variables: Value) -> Value {
    json!({
        "recipient": recipient,
        "category": "account",
        "template": template,
        "variables": variables,
        "channels": ["in_app", "email"],
    })
}

/// How many events the global log shows.
async fn log_length(app: &TestApp) -> usize {
    let mut count = 0;
    let mut path = "/v1/events?limit=1000".to_owned();
    loop {
        let page = app.get_json(&path).await;
        count += page["events"].as_array().expect("events").len();
        if !page["has_more"].as_bool().unwrap_or(false) {
            return count;
        }
        path = format!(
            "/v1/events?limit=1000&after={}",
            page["next_cursor"].as_str().unwrap()
        );
    }
}

/// The global log's length once it shows `expected` events (on
/// PostgreSQL a reader sees a commit once no older transaction anywhere
/// in the cluster is open, so it may show them a little later).
async fn log_showing(app: &TestApp, expected: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = log_length(app).await;
        if n >= expected || start.elapsed() > Duration::from_secs(10) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET `path` until `done` says so (or ten seconds pass): the last answer.
async fn poll(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let value = app.get_json(path).await;
        if done(&value) || start.elapsed() > Duration::from_secs(10) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both_backends!(
    versions_are_added_published_and_rolled_back,
    a_send_records_the_template_version_and_its_text_in_the_recipients_locale,
    render_and_schema_errors_name_the_variable_and_store_nothing,
    a_preview_renders_as_a_send_would,
    a_new_version_after_scheduling_or_batching_changes_nothing_already_sent,
    digests_render_through_the_policys_template,
);

async fn versions_are_added_published_and_rolled_back(app: &TestApp) {
    let (status, missing) = app.send("GET", "/v1/templates/welcome", None).await;
    assert_eq!(status, 404, "{missing}");

    let v1 = add_version(app, "welcome", welcome("Welcome, {{ name }}"), true).await;
    assert_eq!(
        (v1["version"].as_u64(), v1["published"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(v1["changed"], true);
    let v2 = add_version(app, "welcome", welcome("Hello, {{ name }}"), false).await;
    assert_eq!(
        (v2["version"].as_u64(), v2["published"].as_bool()),
        (Some(2), Some(false))
    );
    // The same content again adds nothing.
    let again = add_version(app, "welcome", welcome("Hello, {{ name }}"), false).await;
    assert_eq!(
        (again["version"].as_u64(), again["changed"].as_bool()),
        (Some(2), Some(false))
    );

    let got = app.get_json("/v1/templates/welcome").await;
    assert_eq!(got["published"], 1, "{got}");
    assert_eq!(got["versions"].as_array().unwrap().len(), 2);
    assert_eq!(got["versions"][0]["locales"], json!(["en", "pt", "pt-BR"]));
    let version = app.get_json("/v1/templates/welcome/versions/2").await;
    assert_eq!(version["locales"]["en"]["title"], "Hello, {{ name }}");
    assert_eq!(
        version["locales"]["en"]["channels"]["email"]["title"],
        "Welcome aboard, {{ name }}"
    );

    let (status, published) = app
        .send("POST", "/v1/templates/welcome/versions/2/publish", None)
        .await;
    assert_eq!(
        (status, published["published"].as_u64()),
        (200, Some(2)),
        "{published}"
    );
    let (status, back) = app
        .send("POST", "/v1/templates/welcome/rollback", Some(&json!({})))
        .await;
    assert_eq!(
        (status, back["published"].as_u64()),
        (200, Some(1)),
        "{back}"
    );
    assert_eq!(back["publications"], json!([1, 2, 1]));

    let (status, later) = app
        .send(
            "POST",
            "/v1/templates/welcome/rollback",
            Some(&json!({"version": 2})),
        )
        .await;
    assert_eq!(status, 409, "rolling 'back' to a later version: {later}");
    let (status, none) = app
        .send("POST", "/v1/templates/welcome/versions/9/publish", None)
        .await;
    assert_eq!(status, 404, "{none}");
    let (status, none) = app
        .send("GET", "/v1/templates/welcome/versions/9", None)
        .await;
    assert_eq!(status, 404, "{none}");

    let list = app.get_json("/v1/templates").await;
    assert_eq!(
        list["items"],
        json!([{"key": "welcome", "versions": 2, "published": 1}])
    );
    log_showing(app, 5).await;
    let events = app.get_json("/v1/events?limit=1000").await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["aggregate_type"] == "Template")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "TemplateVersionAdded",
            "TemplateVersionPublished",
            "TemplateVersionAdded",
            "TemplateVersionPublished",
            "TemplateRolledBack"
        ]
    );
}

async fn a_send_records_the_template_version_and_its_text_in_the_recipients_locale(app: &TestApp) {
    add_version(app, "welcome", welcome("Welcome, {{ name }}"), true).await;
    for (user, locale) in [("ana", "pt-BR"), ("joao", "pt-PT"), ("dieter", "de")] {
        let (status, answer) = app
            .send(
                "PUT",
                &format!("/v1/users/{user}"),
                Some(&json!({"locale": locale})),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let vars = json!({"name": "Ada", "plan": "pro"});
    let (id, cursor) = app.create(&send("ana", "welcome", vars.clone())).await;
    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(n["title"], "Boas-vindas, Ada", "{n}");
    assert_eq!(n["body"], "Plano: pro");
    assert_eq!(
        n["template"],
        json!({"key": "welcome", "version": 1, "locale": "pt-BR"})
    );
    assert_eq!(
        n["channel_content"],
        json!({}),
        "pt-BR has no email text of its own"
    );
    let why = app
        .get_json(&format!("/v1/notifications/{id}/explain"))
        .await;
    assert_eq!(
        why["content"],
        "rendered from template `welcome` version 1 in locale `pt-BR`"
    );

    // To many: each recipient gets their own locale (pt-PT falls back to
    // pt, de to the default), the English one its email subject.
    let mut many = send("ana", "welcome", vars);
    many.as_object_mut().unwrap().remove("recipient");
    many["recipients"] = json!(["joao", "dieter"]);
    let (status, accepted) = app.send("POST", "/v1/notifications", Some(&many)).await;
    assert_eq!(status, 202, "{accepted}");
    for (user, title, locale) in [
        ("joao", "Bem-vindo, Ada", "pt"),
        ("dieter", "Welcome, Ada", "en"),
    ] {
        let inbox = poll(app, &format!("/v1/users/{user}/inbox"), |page| {
            page["items"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
        let item = &inbox["items"][0];
        assert_eq!(
            (item["title"].as_str(), item["template"]["locale"].as_str()),
            (Some(title), Some(locale)),
            "{item}"
        );
    }
    let dieter = poll(app, "/v1/users/dieter/inbox", |page| {
        page["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    assert_eq!(
        dieter["items"][0]["channel_content"]["email"],
        json!({"title": "Welcome aboard, Ada", "body": "Your plan: pro"})
    );
}

async fn render_and_schema_errors_name_the_variable_and_store_nothing(app: &TestApp) {
    add_version(app, "welcome", welcome("Welcome, {{ name }}"), true).await;
    // No schema here: the render itself finds the missing variable.
    add_version(
        app,
        "receipt",
        json!({"default_locale": "en", "locales": {"en": {
            "title": "Order {{ order.id }}", "body": "Total {{ order.total }}"}}}),
        true,
    )
    .await;
    // Two versions, each published.
    let before = log_showing(app, 4).await;
    assert_eq!(before, 4);

    let (status, problem) = app
        .send(
            "POST",
            "/v1/notifications",
            Some(&send("ann", "receipt", json!({"order": {"id": 7}}))),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "variables");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("`order.total` is undefined"), "{detail}");
    assert!(detail.contains("locales.en.body"), "{detail}");

    let (status, problem) = app
        .send(
            "POST",
            "/v1/notifications",
            Some(&send(
                "ann",
                "welcome",
                json!({"name": "Ada", "plan": "gold"}),
            )),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "variables.plan", "{problem}");
    let (status, problem) = app
        .send(
            "POST",
            "/v1/notifications",
            Some(&send("ann", "welcome", json!({"plan": "pro"}))),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("name"),
        "{problem}"
    );

    for (body, field) in [
        (send("ann", "nothing-here", json!({})), "template"),
        (
            {
                let mut b = send("ann", "welcome", json!({"name": "A", "plan": "pro"}));
                b["title"] = json!("Both");
                b
            },
            "title",
        ),
        (
            {
                let mut b = send("ann", "welcome", json!({"name": "A", "plan": "pro"}));
                b["template_version"] = json!(5);
                b
            },
            "template_version",
        ),
        (
            json!({"recipient": "ann", "category": "account", "title": "T", "body": "B", "variables": {}}),
            "variables",
        ),
        (
            json!({"recipient": "ann", "category": "account", "body": "B"}),
            "title",
        ),
    ] {
        let (status, problem) = app.send("POST", "/v1/notifications", Some(&body)).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
    }

    // A version that is not a template, or whose schema is not one.
    for (body, field) in [
        (
            json!({"default_locale": "en", "locales": {"en": {"title": "{{ oops", "body": ""}}}),
            "locales.en.title",
        ),
        (
            json!({"default_locale": "de", "locales": {"en": {"title": "t", "body": ""}}}),
            "default_locale",
        ),
        (
            json!({"default_locale": "en", "locales": {"en": {"title": "t", "body": ""}}, "schema": {"type": 5}}),
            "schema",
        ),
        (
            json!({"default_locale": "en", "locales": {"en": {"title": "t", "body": "", "channels": {"pigeon": {}}}}}),
            "locales.en.channels.pigeon",
        ),
    ] {
        let (status, problem) = app
            .send("POST", "/v1/templates/welcome/versions", Some(&body))
            .await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
    }
    // Anything a refusal stored would have committed before its answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log_length(app).await, before, "refusals store nothing");
}

async fn a_preview_renders_as_a_send_would(app: &TestApp) {
    add_version(app, "welcome", welcome("Welcome, {{ name }}"), false).await;
    let vars = json!({"name": "Ada", "plan": "free"});
    let (status, problem) = app
        .send(
            "POST",
            "/v1/templates/welcome/preview",
            Some(&json!({"variables": vars})),
        )
        .await;
    assert_eq!(status, 422, "nothing published yet: {problem}");
    assert_eq!(problem["errors"][0]["field"], "version");
    let (status, preview) = app
        .send(
            "POST",
            "/v1/templates/welcome/preview",
            Some(&json!({"version": 1, "variables": vars, "locale": "en-GB"})),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        preview,
        json!({
            "key": "welcome", "version": 1, "locale": "en",
            "title": "Welcome, Ada", "body": "Your plan: free",
            "channels": {"email": {"title": "Welcome aboard, Ada", "body": "Your plan: free"}}
        })
    );
    let (status, problem) = app
        .send(
            "POST",
            "/v1/templates/welcome/preview",
            Some(&json!({"version": 1, "variables": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = app
        .send("POST", "/v1/templates/nothing/preview", Some(&json!({})))
        .await;
    assert_eq!(status, 404);
    // A macro that calls itself is an error, not the end of the service.
    add_version(
        app,
        "recursive",
        json!({"default_locale": "en", "locales": {"en": {
            "title": "t", "body": "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}"}}}),
        true,
    )
    .await;
    let (status, problem) = app
        .send("POST", "/v1/templates/recursive/preview", Some(&json!({})))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("locales.en.body"),
        "{problem}"
    );
    assert_eq!(app.get("/health/live").await.status(), 200);
}

async fn a_new_version_after_scheduling_or_batching_changes_nothing_already_sent(app: &TestApp) {
    add_version(app, "welcome", welcome("Welcome, {{ name }}"), true).await;
    let vars = json!({"name": "Ada", "plan": "pro"});
    let mut later = send("sam", "welcome", vars.clone());
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    later["deliver_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let (scheduled, cursor) = app.create(&later).await;
    let n = app
        .get_json(&format!(
            "/v1/notifications/{scheduled}?min_position={cursor}"
        ))
        .await;
    assert_eq!(n["lifecycle"], "scheduled", "{n}");

    // Batched too: a category that holds its notifications for an hour.
    let (status, answer) = app
        .send(
            "PUT",
            "/v1/categories/digest-me/batching",
            Some(&json!({"window": {"kind": "fixed", "seconds": 3600}, "max_items": 10})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut held = send("sam", "welcome", vars);
    held["category"] = json!("digest-me");
    let (batched, cursor) = app.create(&held).await;
    let n = app
        .get_json(&format!(
            "/v1/notifications/{batched}?min_position={cursor}"
        ))
        .await;
    assert_eq!(n["lifecycle"], "batched", "{n}");

    // Then the template changes: a new version, published.
    add_version(app, "welcome", welcome("Changed, {{ name }}"), true).await;

    let delivered = poll(app, &format!("/v1/notifications/{scheduled}"), |n| {
        n["lifecycle"] == "delivered"
    })
    .await;
    assert_eq!(delivered["lifecycle"], "delivered", "{delivered}");
    assert_eq!(
        delivered["title"], "Welcome, Ada",
        "the text as rendered when sent"
    );
    assert_eq!(delivered["template"]["version"], 1);

    let batches = app.get_json("/v1/users/sam/batches").await;
    let batch = batches["items"][0]["id"]
        .as_str()
        .expect("an open batch")
        .to_owned();
    let (status, flushed) = app
        .send("POST", &format!("/v1/batches/{batch}/flush"), None)
        .await;
    assert_eq!(status, 200, "{flushed}");
    let digest = poll(app, "/v1/users/sam/inbox", |page| {
        page["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|n| n["data"]["digest"].is_object()))
    })
    .await;
    let digest = digest["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["data"]["digest"].is_object())
        .expect("the digest")
        .clone();
    assert_eq!(
        digest["data"]["digest"]["last"]["title"], "Welcome, Ada",
        "{digest}"
    );
    let item = app.get_json(&format!("/v1/notifications/{batched}")).await;
    assert_eq!(
        (item["title"].as_str(), item["template"]["version"].as_u64()),
        (Some("Welcome, Ada"), Some(1))
    );
}

async fn digests_render_through_the_policys_template(app: &TestApp) {
    let (status, problem) = app
        .send(
            "PUT",
            "/v1/categories/comments/batching",
            Some(&json!({"window": {"kind": "fixed", "seconds": 1}, "max_items": 10, "template": "comment-digest"})),
        )
        .await;
    assert_eq!(status, 422, "a template that does not exist: {problem}");
    assert_eq!(problem["errors"][0]["field"], "template");
    add_version(
        app,
        "comment-digest",
        json!({"default_locale": "en", "locales": {"en": {
            "title": "{{ count }} replies on {{ group_key }}",
            "body": "{% for a in actors %}{{ a }}{% if not loop.last %}, {% endif %}{% endfor %} replied"}}}),
        true,
    )
    .await;
    let (status, policy) = app
        .send(
            "PUT",
            "/v1/categories/comments/batching",
            Some(&json!({"window": {"kind": "fixed", "seconds": 1}, "max_items": 10, "template": "comment-digest"})),
        )
        .await;
    assert_eq!(status, 200, "{policy}");
    assert_eq!(policy["policy"]["template"], "comment-digest");
    for actor in ["ann", "bob"] {
        app.create(&json!({
            "recipient": "tess", "category": "comments", "title": format!("{actor} replied"),
            "body": "", "group_key": "post-42", "data": {"actor": actor}
        }))
        .await;
    }
    let inbox = poll(app, "/v1/users/tess/inbox", |page| {
        page["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|n| n["data"]["digest"].is_object()))
    })
    .await;
    let digest = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["data"]["digest"].is_object())
        .expect("a digest")
        .clone();
    assert_eq!(digest["title"], "2 replies on post-42", "{digest}");
    assert_eq!(digest["body"], "ann, bob replied");
    assert_eq!(digest["template"]["key"], "comment-digest");
}
