//! Malformed requests of every kind get 4xx `application/problem+json`
//! answers that say what to fix, and nothing is stored.

use serde_json::{json, Value};

use crate::helpers::{notification_for, TestApp};

on_both_backends!(
    malformed_create_requests_get_problem_answers_and_store_nothing,
    values_at_the_limits_are_accepted,
    malformed_inbox_queries_get_problem_answers,
    unknown_ids_routes_and_methods_get_problem_answers,
    illegal_transitions_are_conflicts_that_change_nothing,
    request_and_correlation_ids_are_echoed_even_on_errors,
);

pub const PROBLEM_JSON: &str = "application/problem+json";
pub const MALFORMED: &str = "urn:tidings:problem:malformed-request";
pub const VALIDATION: &str = "urn:tidings:problem:validation";
pub const UNSUPPORTED: &str = "urn:tidings:problem:unsupported-media-type";
pub const TOO_LARGE: &str = "urn:tidings:problem:payload-too-large";
pub const NOT_FOUND: &str = "urn:tidings:problem:not-found";
pub const ILLEGAL: &str = "urn:tidings:problem:illegal-transition";

/// The recipient every bad create below is for (when its recipient is valid at all).
const USER: &str = "errors-user";

/// Asserts that `resp` is a problem answer with `status` and `kind` and
/// returns its body. `what` names the request in failure messages.
pub async fn expect_problem(resp: reqwest::Response, status: u16, kind: &str, what: &str) -> Value {
    check_problem(resp, status, kind)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Checks that `resp` is a problem answer with `status` and `kind`: the
/// problem's body, or what is wrong with the answer.
pub async fn check_problem(
    resp: reqwest::Response,
    status: u16,
    kind: &str,
) -> Result<Value, String> {
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
    let text = resp.text().await.map_err(|e| format!("no body: {e}"))?;
    if got != status {
        return Err(format!("status {got}, expected {status}; body: {text}"));
    }
    if content_type.as_deref() != Some(PROBLEM_JSON) {
        return Err(format!(
            "content-type {content_type:?}, expected {PROBLEM_JSON}; body: {text}"
        ));
    }
    let problem: Value =
        serde_json::from_str(&text).map_err(|e| format!("the body is not JSON ({e}): {text}"))?;
    if problem["type"] != kind {
        return Err(format!(
            "type {}, expected {kind}: {problem}",
            problem["type"]
        ));
    }
    if problem["title"].as_str().is_none_or(str::is_empty) {
        return Err(format!("no title: {problem}"));
    }
    if problem["status"] != status {
        return Err(format!(
            "status {} in the body, expected {status}: {problem}",
            problem["status"]
        ));
    }
    if problem["detail"]
        .as_str()
        .is_none_or(|d| d.trim().is_empty())
    {
        return Err(format!("no detail: {problem}"));
    }
    Ok(problem)
}

/// The `field` of each entry of a validation problem's `errors`.
pub fn refused_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list in {problem}"))
        .iter()
        .map(|e| {
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "a message for each refused field: {problem}"
            );
            e["field"].as_str().expect("a field name").to_owned()
        })
        .collect()
}

/// One bad create request and the answer it must get.
struct BadCreate {
    what: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    status: u16,
    kind: &'static str,
    /// For 422 rows: the one field that is refused.
    field: Option<&'static str>,
}

impl BadCreate {
    fn raw(
        what: &str,
        body: impl Into<Vec<u8>>,
        content_type: Option<&'static str>,
        status: u16,
        kind: &'static str,
    ) -> Self {
        Self {
            what: what.to_owned(),
            body: body.into(),
            content_type,
            status,
            kind,
            field: None,
        }
    }

    /// Sent as `application/json`; refused as malformed (400).
    fn malformed(what: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::raw(what, body, Some("application/json"), 400, MALFORMED)
    }

    /// Well-formed JSON of the right shape with one refused value (422).
    fn invalid(what: &str, body: &Value, field: &'static str) -> Self {
        Self {
            field: Some(field),
            ..Self::raw(
                what,
                body.to_string(),
                Some("application/json"),
                422,
                VALIDATION,
            )
        }
    }
}

/// A valid create body for the bad rows' recipient.
fn valid() -> Value {
    notification_for(USER, "Valid title")
}

/// A valid body with `key` set to `value`.
fn with(key: &str, value: Value) -> Value {
    let mut body = valid();
    body[key] = value;
    body
}

/// A valid body without `key`.
fn without(key: &str) -> Value {
    let mut body = valid();
    body.as_object_mut().expect("an object").remove(key);
    body
}

fn bad_creates() -> Vec<BadCreate> {
    let valid_text = valid().to_string();
    vec![
        // Not JSON, or not a JSON object.
        BadCreate::malformed("a syntax error", "{bad"),
        BadCreate::malformed("truncated JSON", &valid_text[..valid_text.len() / 2]),
        BadCreate::malformed(
            "an object missing its closing brace",
            &valid_text[..valid_text.len() - 1],
        ),
        BadCreate::malformed(
            "trailing garbage after the object",
            format!("{valid_text} x"),
        ),
        BadCreate::malformed("an empty array", "[]"),
        BadCreate::malformed("an array holding the object", format!("[{valid_text}]")),
        BadCreate::malformed(
            "an array of the field values in order",
            json!([USER, "comment", "Valid title", "Bob replied"]).to_string(),
        ),
        BadCreate::malformed("JSON null", "null"),
        BadCreate::malformed("a JSON string", r#""hello""#),
        BadCreate::malformed("a JSON number", "17"),
        BadCreate::malformed("an empty body", ""),
        BadCreate::malformed("a whitespace-only body", " \n\t\r\n "),
        BadCreate::malformed(
            "invalid UTF-8 in a string",
            [
                &br#"{"recipient":"errors-user","category":"comment","title":""#[..],
                &[0xff, 0xfe][..],
                &br#"","body":"b"}"#[..],
            ]
            .concat(),
        ),
        // The wrong JSON type for a field: never coerced.
        BadCreate::malformed("title as a number", with("title", json!(17)).to_string()),
        BadCreate::malformed("title as null", with("title", json!(null)).to_string()),
        BadCreate::malformed("title as an array", with("title", json!(["a"])).to_string()),
        BadCreate::malformed(
            "recipient as a number",
            with("recipient", json!(42)).to_string(),
        ),
        BadCreate::malformed("body as a boolean", with("body", json!(true)).to_string()),
        BadCreate::malformed(
            "channels as a string",
            with("channels", json!("in_app")).to_string(),
        ),
        BadCreate::malformed(
            "channels holding a number",
            with("channels", json!([1])).to_string(),
        ),
        BadCreate::malformed(
            "priority as a number",
            with("priority", json!(3)).to_string(),
        ),
        BadCreate::malformed(
            "deliver_at as a number",
            with("deliver_at", json!(1_900_000_000)).to_string(),
        ),
        // The wrong set of fields.
        BadCreate::malformed("an unknown field", with("titel", json!("typo")).to_string()),
        // The text is `title` and `body`, or a template: leaving one out
        // is a refused value that names it.
        BadCreate::invalid("a missing title", &without("title"), "title"),
        BadCreate::invalid("a missing body", &without("body"), "body"),
        BadCreate::invalid(
            "a title beside a template",
            &{
                let mut body = with("template", json!("welcome"));
                body.as_object_mut().map(|b| b.remove("body"));
                body
            },
            "title",
        ),
        BadCreate::malformed(
            "a template that is not a string",
            with("template", json!(7)).to_string(),
        ),
        // Who it is for is one of three fields: naming none is a refused value.
        BadCreate::invalid("a missing recipient", &without("recipient"), "recipient"),
        BadCreate::malformed(
            "a null recipient",
            with("recipient", Value::Null).to_string(),
        ),
        BadCreate::malformed("an empty object", "{}"),
        BadCreate::malformed(
            "a duplicated field",
            format!(r#"{{"title":"a",{}"#, &valid_text[1..]),
        ),
        // Not sent as JSON.
        BadCreate::raw(
            "Content-Type text/plain",
            valid_text.clone(),
            Some("text/plain"),
            415,
            UNSUPPORTED,
        ),
        BadCreate::raw(
            "Content-Type application/x-www-form-urlencoded",
            "recipient=errors-user",
            Some("application/x-www-form-urlencoded"),
            415,
            UNSUPPORTED,
        ),
        BadCreate::raw(
            "no Content-Type",
            valid_text.clone(),
            None,
            415,
            UNSUPPORTED,
        ),
        BadCreate::raw("no Content-Type and no body", "", None, 415, UNSUPPORTED),
        // Too large for the 64 KiB request limit, though otherwise valid JSON.
        BadCreate::raw(
            "a body over the 64 KiB request limit",
            with("body", json!("x".repeat(64 * 1024))).to_string(),
            Some("application/json"),
            413,
            TOO_LARGE,
        ),
        // The right shape with a refused value.
        BadCreate::invalid("data as a string", &with("data", json!("post 42")), "data"),
        BadCreate::invalid("data as an array", &with("data", json!([1, 2])), "data"),
        BadCreate::invalid("an empty title", &with("title", json!("")), "title"),
        BadCreate::invalid(
            "a whitespace-only title",
            &with("title", json!(" \t ")),
            "title",
        ),
        BadCreate::invalid(
            "a title of 201 characters",
            &with("title", json!("t".repeat(201))),
            "title",
        ),
        BadCreate::invalid(
            "a title of 201 two-byte characters",
            &with("title", json!("é".repeat(201))),
            "title",
        ),
        BadCreate::invalid(
            "a newline in the title",
            &with("title", json!("line one\nline two")),
            "title",
        ),
        BadCreate::invalid("a tab in the title", &with("title", json!("a\tb")), "title"),
        BadCreate::invalid(
            "a body of 10,001 characters",
            &with("body", json!("b".repeat(10_001))),
            "body",
        ),
        BadCreate::invalid(
            "an unknown priority",
            &with("priority", json!("mega")),
            "priority",
        ),
        BadCreate::invalid(
            "an unknown channel",
            &with("channels", json!(["pigeon"])),
            "channels",
        ),
        BadCreate::invalid(
            "a known and an unknown channel",
            &with("channels", json!(["in_app", "pigeon"])),
            "channels",
        ),
        BadCreate::invalid(
            "an empty channels list",
            &with("channels", json!([])),
            "channels",
        ),
        BadCreate::invalid(
            "deliver_at not in RFC 3339",
            &with("deliver_at", json!("tomorrow at nine")),
            "deliver_at",
        ),
        BadCreate::invalid(
            "deliver_at without a time zone",
            &with("deliver_at", json!("2999-01-01T09:00:00")),
            "deliver_at",
        ),
        BadCreate::invalid(
            "a recipient with a space",
            &with("recipient", json!("errors user")),
            "recipient",
        ),
        BadCreate::invalid(
            "a recipient with a slash",
            &with("recipient", json!("errors/user")),
            "recipient",
        ),
        BadCreate::invalid(
            "an empty recipient",
            &with("recipient", json!("")),
            "recipient",
        ),
        BadCreate::invalid(
            "a recipient of 129 bytes",
            &with("recipient", json!("r".repeat(129))),
            "recipient",
        ),
        BadCreate::invalid(
            "an uppercase category",
            &with("category", json!("Comment")),
            "category",
        ),
        BadCreate::invalid(
            "an empty category",
            &with("category", json!("")),
            "category",
        ),
        BadCreate::invalid(
            "an empty group_key",
            &with("group_key", json!("")),
            "group_key",
        ),
        BadCreate::invalid(
            "a group_key of 129 bytes",
            &with("group_key", json!("g".repeat(129))),
            "group_key",
        ),
    ]
}

async fn malformed_create_requests_get_problem_answers_and_store_nothing(app: &TestApp) {
    let rows = bad_creates();
    let mut failures = Vec::new();
    for row in &rows {
        let mut request = app
            .client
            .post(app.url("/v1/notifications"))
            .body(row.body.clone());
        if let Some(content_type) = row.content_type {
            request = request.header("content-type", content_type);
        }
        let resp = request.send().await.expect("request sent");
        let problem = match check_problem(resp, row.status, row.kind).await {
            Ok(problem) => problem,
            Err(e) => {
                failures.push(format!("{}: {e}", row.what));
                continue;
            }
        };
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or("?"))
                    .collect()
            })
            .unwrap_or_default();
        let expected: Vec<&str> = row.field.into_iter().collect();
        if fields != expected {
            failures.push(format!(
                "{}: refused fields {fields:?}, expected {expected:?}: {problem}",
                row.what
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad creates were not answered as expected:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    // Nothing was stored: one valid create later, the inbox holds only it.
    let (id, cursor) = app.create(&notification_for(USER, "The only one")).await;
    let inbox = app
        .get_json(&format!("/v1/users/{USER}/inbox?min_position={cursor}"))
        .await;
    let items = inbox["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "only the valid create is stored: {inbox}");
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["title"], "The only one");
    assert_eq!(inbox["unread_count"], 1);
    assert_eq!(inbox["unseen_count"], 1);

    if let Some(db) = &app.db {
        let client = db.client().await;
        let row = client
            .query_one("SELECT count(DISTINCT aggregate_id) FROM events", &[])
            .await
            .expect("count the event streams");
        let streams: i64 = row.get(0);
        assert_eq!(streams, 1, "the event log holds only the valid create");
    }
}

async fn values_at_the_limits_are_accepted(app: &TestApp) {
    let user = "errors-limits";
    let accepted = [
        ("title", json!("t".repeat(200))),
        ("title", json!("é".repeat(200))),
        ("title", json!("x")),
        ("body", json!("b".repeat(10_000))),
        ("body", json!("é".repeat(10_000))),
        ("group_key", json!("é".repeat(128))),
        ("body", json!("")),
        ("recipient", json!("r".repeat(128))),
        ("recipient", json!("Alice.B_c-d@example+tag")),
        ("category", json!("billing.invoice:v2_x-y")),
        ("group_key", json!("g".repeat(128))),
        ("data", json!({})),
        ("channels", json!(["in_app", "in_app"])),
        ("deliver_at", json!("2999-01-01T09:00:00+02:00")),
    ];
    for (key, value) in accepted {
        let mut body = notification_for(user, "At the limit");
        body[key] = value.clone();
        let resp = app.post("/v1/notifications", &body).await;
        let status = resp.status();
        let created: Value = resp.json().await.expect("a JSON body");
        assert_eq!(status, 201, "{key} = {value}: {created}");
        let (id, cursor) = (
            created["id"].as_str().unwrap(),
            created["cursor"].as_str().unwrap(),
        );
        let n = app
            .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
            .await;
        match key {
            "channels" => assert_eq!(n[key], json!(["in_app"])),
            "deliver_at" => assert_eq!(n[key], "2999-01-01T07:00:00.000000Z"),
            _ => assert_eq!(n[key], value, "{key} is stored as sent"),
        }
    }
}

async fn malformed_inbox_queries_get_problem_answers(app: &TestApp) {
    let user = "errors-inbox";
    let cases: &[(&str, &str, u16, &str, Option<&str>)] = &[
        ("limit=0", "?limit=0", 422, VALIDATION, Some("query.limit")),
        (
            "limit=101",
            "?limit=101",
            422,
            VALIDATION,
            Some("query.limit"),
        ),
        (
            "limit=-1",
            "?limit=-1",
            422,
            VALIDATION,
            Some("query.limit"),
        ),
        ("limit=abc", "?limit=abc", 400, MALFORMED, None),
        ("limit=1.5", "?limit=1.5", 400, MALFORMED, None),
        ("archived=maybe", "?archived=maybe", 400, MALFORMED, None),
        (
            "status=maybe",
            "?status=maybe",
            422,
            VALIDATION,
            Some("query.status"),
        ),
        (
            "category=Upper",
            "?category=Upper",
            422,
            VALIDATION,
            Some("query.category"),
        ),
        (
            "cursor=garbage",
            "?cursor=garbage",
            422,
            VALIDATION,
            Some("query.cursor"),
        ),
        (
            "an empty cursor",
            "?cursor=",
            422,
            VALIDATION,
            Some("query.cursor"),
        ),
        (
            "min_position=garbage",
            "?min_position=garbage",
            422,
            VALIDATION,
            Some("query.min_position"),
        ),
    ];
    for (what, query, status, kind, field) in cases {
        let resp = app.get(&format!("/v1/users/{user}/inbox{query}")).await;
        let problem = expect_problem(resp, *status, kind, what).await;
        if let Some(field) = field {
            assert_eq!(refused_fields(&problem), [*field], "{what}: {problem}");
        }
    }

    for (what, path) in [
        ("a user id with a space", "/v1/users/bad%20user/inbox"),
        ("a user id with a comma", "/v1/users/bad,user/inbox"),
        (
            "a user id of 129 bytes",
            &format!("/v1/users/{}/inbox", "u".repeat(129)),
        ),
    ] {
        let problem = expect_problem(app.get(path).await, 422, VALIDATION, what).await;
        assert_eq!(refused_fields(&problem), ["path.user"], "{what}: {problem}");
    }
    let resp = app.post_empty("/v1/users/bad%20user/inbox/read-all").await;
    let problem = expect_problem(resp, 422, VALIDATION, "read-all for a bad user id").await;
    assert_eq!(refused_fields(&problem), ["path.user"]);

    // A good query still works.
    let inbox = app
        .get_json(&format!("/v1/users/{user}/inbox?limit=100"))
        .await;
    assert_eq!(inbox["items"], json!([]));
}

async fn unknown_ids_routes_and_methods_get_problem_answers(app: &TestApp) {
    let unknown = uuid::Uuid::new_v4();
    let resp = app.get(&format!("/v1/notifications/{unknown}")).await;
    expect_problem(resp, 404, NOT_FOUND, "GET an unknown id").await;
    let resp = app.get("/v1/notifications/not-a-uuid").await;
    let problem = expect_problem(resp, 400, MALFORMED, "GET a malformed id").await;
    assert_eq!(problem["errors"][0]["field"], "path.id");
    for action in [
        "read",
        "unread",
        "seen",
        "click",
        "archive",
        "unarchive",
        "cancel",
    ] {
        let resp = app
            .post_empty(&format!("/v1/notifications/{unknown}/{action}"))
            .await;
        expect_problem(resp, 404, NOT_FOUND, &format!("{action} an unknown id")).await;
        let resp = app
            .post_empty(&format!("/v1/notifications/not-a-uuid/{action}"))
            .await;
        expect_problem(resp, 400, MALFORMED, &format!("{action} a malformed id")).await;
    }
    let resp = app
        .client
        .delete(app.url(&format!("/v1/notifications/{unknown}")))
        .send()
        .await
        .expect("request sent");
    expect_problem(resp, 404, NOT_FOUND, "DELETE an unknown id").await;
    let resp = app
        .post(
            &format!("/v1/notifications/{unknown}/deliver"),
            &json!({"channel": "email"}),
        )
        .await;
    expect_problem(resp, 404, NOT_FOUND, "deliver an unknown id").await;

    for path in ["/v1/nope", "/v1/notifications/x/y/z", "/nope"] {
        expect_problem(app.get(path).await, 404, NOT_FOUND, &format!("GET {path}")).await;
    }

    let resp = app
        .client
        .put(app.url("/v1/notifications"))
        .json(&valid())
        .send()
        .await
        .expect("request sent");
    let problem = expect_problem(
        resp,
        405,
        "urn:tidings:problem:method-not-allowed",
        "PUT /v1/notifications",
    )
    .await;
    assert!(problem.get("errors").is_none());
    let resp = app
        .client
        .patch(app.url(&format!("/v1/notifications/{unknown}")))
        .send()
        .await
        .expect("request sent");
    expect_problem(
        resp,
        405,
        "urn:tidings:problem:method-not-allowed",
        "PATCH a notification",
    )
    .await;
    let resp = app.get(&format!("/v1/notifications/{unknown}/read")).await;
    expect_problem(
        resp,
        405,
        "urn:tidings:problem:method-not-allowed",
        "GET a command",
    )
    .await;
}

async fn illegal_transitions_are_conflicts_that_change_nothing(app: &TestApp) {
    let user = "errors-transitions";
    let (id, _) = app.create(&notification_for(user, "Soon deleted")).await;
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/notifications/{id}")))
        .send()
        .await
        .expect("request sent");
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.expect("a JSON body");
    let deleted_cursor = deleted["cursor"].as_str().expect("a cursor").to_owned();

    let resp = app
        .post_empty(&format!("/v1/notifications/{id}/read"))
        .await;
    let problem = expect_problem(resp, 409, ILLEGAL, "read after delete").await;
    assert!(problem.get("errors").is_none());
    let resp = app
        .client
        .delete(app.url(&format!("/v1/notifications/{id}")))
        .send()
        .await
        .expect("request sent");
    // Deleting again asks for what already is: 200, changed false, nothing recorded.
    assert_eq!(resp.status(), 200);
    let again: Value = resp.json().await.expect("a JSON body");
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["cursor"], deleted_cursor.as_str());
    assert_eq!(again["notification"]["lifecycle"], "deleted");
    let resp = app
        .post(
            &format!("/v1/notifications/{id}/deliver"),
            &json!({"channel": "in_app"}),
        )
        .await;
    expect_problem(resp, 409, ILLEGAL, "deliver after delete").await;
    // A create with the id of a deleted notification is not possible: ids are the server's.

    // Still deleted: the refused commands recorded nothing.
    let gone = app
        .get(&format!(
            "/v1/notifications/{id}?min_position={deleted_cursor}"
        ))
        .await;
    expect_problem(gone, 404, NOT_FOUND, "GET after delete").await;
    let inbox = app
        .get_json(&format!(
            "/v1/users/{user}/inbox?min_position={deleted_cursor}"
        ))
        .await;
    assert_eq!(inbox["items"], json!([]));
    assert_eq!(inbox["unread_count"], 0);

    // The deliver endpoint's own body is checked like a create's.
    let mut body = notification_for(user, "Email only");
    body["channels"] = json!(["email"]);
    let (id, cursor) = app.create(&body).await;
    let deliver = format!("/v1/notifications/{id}/deliver");
    let bad_delivers = [
        ("channel as a number", json!({"channel": 5}), 400, MALFORMED),
        ("channel as null", json!({"channel": null}), 400, MALFORMED),
        ("no channel", json!({}), 400, MALFORMED),
        (
            "an unknown field",
            json!({"channel": "email", "via": "smtp"}),
            400,
            MALFORMED,
        ),
        ("an array", json!(["email"]), 400, MALFORMED),
        (
            "an unknown channel",
            json!({"channel": "pigeon"}),
            422,
            VALIDATION,
        ),
        ("an empty channel", json!({"channel": ""}), 422, VALIDATION),
    ];
    for (what, body, status, kind) in bad_delivers {
        let problem = expect_problem(app.post(&deliver, &body).await, status, kind, what).await;
        if status == 422 {
            assert_eq!(refused_fields(&problem), ["channel"], "{what}: {problem}");
        }
    }
    let resp = app
        .client
        .post(app.url(&deliver))
        .body(r#"{"channel":"email"}"#)
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("request sent");
    expect_problem(resp, 415, UNSUPPORTED, "deliver as text/plain").await;
    let resp = app.post_empty(&deliver).await;
    expect_problem(resp, 415, UNSUPPORTED, "deliver without a body").await;
    let resp = app.post(&deliver, &json!({"channel": "sms"})).await;
    expect_problem(resp, 409, ILLEGAL, "deliver on a channel not requested").await;
    let resp = app
        .post_empty(&format!("/v1/notifications/{id}/read"))
        .await;
    expect_problem(resp, 409, ILLEGAL, "read before delivery").await;

    let n = app
        .get_json(&format!("/v1/notifications/{id}?min_position={cursor}"))
        .await;
    assert_eq!(
        n["lifecycle"], "pending",
        "refused commands changed nothing: {n}"
    );
    assert_eq!(
        n["cursor"],
        cursor.as_str(),
        "no event was recorded after the create"
    );
    assert_eq!(n["deliveries"], json!([]));
}

async fn request_and_correlation_ids_are_echoed_even_on_errors(app: &TestApp) {
    let header = |resp: &reqwest::Response, name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("a text header").to_owned())
    };

    let requests = [
        (
            "a create",
            app.client.post(app.url("/v1/notifications")).json(&valid()),
            201,
        ),
        (
            "an invalid create",
            app.client
                .post(app.url("/v1/notifications"))
                .json(&with("title", json!(""))),
            422,
        ),
        (
            "a malformed create",
            app.client
                .post(app.url("/v1/notifications"))
                .header("content-type", "application/json")
                .body("{bad"),
            400,
        ),
        ("an unknown route", app.client.get(app.url("/v1/nope")), 404),
        (
            "a wrong method",
            app.client.put(app.url("/v1/notifications")),
            405,
        ),
        (
            "an inbox",
            app.client.get(app.url("/v1/users/errors-ids/inbox")),
            200,
        ),
    ];
    for (what, request, status) in requests {
        let resp = request
            .try_clone()
            .expect("a cloneable request")
            .header("X-Request-Id", "my-req-1")
            .header("X-Correlation-Id", "corr-9")
            .send()
            .await
            .expect("request sent");
        assert_eq!(resp.status(), status, "{what}");
        assert_eq!(
            header(&resp, "x-request-id").as_deref(),
            Some("my-req-1"),
            "{what}"
        );
        assert_eq!(
            header(&resp, "x-correlation-id").as_deref(),
            Some("corr-9"),
            "{what}"
        );

        let resp = request.send().await.expect("request sent");
        assert_eq!(resp.status(), status, "{what} without ids");
        let request_id =
            header(&resp, "x-request-id").unwrap_or_else(|| panic!("{what}: a request id"));
        assert!(
            !request_id.is_empty() && request_id != "my-req-1",
            "{what}: {request_id}"
        );
        assert_eq!(
            header(&resp, "x-correlation-id").as_deref(),
            Some(request_id.as_str()),
            "{what}: the correlation id defaults to the request id"
        );
    }

    // Each request without an id gets its own.
    let a = app.get("/v1/nope").await;
    let b = app.get("/v1/nope").await;
    assert_ne!(header(&a, "x-request-id"), header(&b, "x-request-id"));

    // A request id alone also becomes the correlation id.
    let resp = app
        .client
        .get(app.url("/v1/nope"))
        .header("X-Request-Id", "only-req-7")
        .send()
        .await
        .expect("request sent");
    assert_eq!(header(&resp, "x-request-id").as_deref(), Some("only-req-7"));
    assert_eq!(
        header(&resp, "x-correlation-id").as_deref(),
        Some("only-req-7")
    );

    // Ids tidings would not store are replaced, not echoed.
    let resp = app
        .client
        .get(app.url("/v1/nope"))
        .header("X-Request-Id", "has space")
        .header("X-Correlation-Id", "c".repeat(129))
        .send()
        .await
        .expect("request sent");
    let request_id = header(&resp, "x-request-id").expect("a request id");
    assert!(
        uuid::Uuid::parse_str(&request_id).is_ok(),
        "a generated id: {request_id}"
    );
    assert_eq!(header(&resp, "x-correlation-id"), Some(request_id));
}
