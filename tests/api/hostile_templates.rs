//! Hostile bodies for templates and experiments, generated, against both
//! backends at once: new versions (locales, channels, sources, schemas),
//! previews, rollbacks, sends that name a template, experiment designs,
//! weights and conclusions. Every request answers 2xx or
//! 4xx (never 5xx), both backends answer alike, and a refused request
//! leaves the template as it was.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::helpers::{postgres_server_url, skipped, Backend, TestApp};
use crate::hostile::{leaf, tree, J};

/// Generated bodies per run.
const CASES: u32 = 256;

const TARGETS: &[(&str, &str)] = &[
    ("POST", "/v1/templates/welcome/versions"),
    ("POST", "/v1/templates/welcome/preview"),
    ("POST", "/v1/templates/welcome/rollback"),
    ("POST", "/v1/notifications"),
    ("PUT", "/v1/experiments/welcome-exp"),
    ("PUT", "/v1/experiments/welcome-exp/weights"),
    ("POST", "/v1/experiments/welcome-exp/conclude"),
];

/// Template sources: some fine, some broken, some hostile.
const SOURCES: &[&str] = &[
    "Hello {{ name }}",
    "Hi {{ name }}, welcome",
    "Plain text",
    "{{ name",
    "{% for i in range(100000) %}{{ i }}{% endfor %}",
    "{{ a.b.c }}",
    "{% include 'x' %}",
    "{{ name | upper }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "line\nbreak {{ name }}",
    "",
    "   ",
];

/// Schemas: fine, not schemas, self-referencing, remote, a slow pattern.
const SCHEMAS: &[&str] = &[
    r#"{"type": "object", "required": ["name"]}"#,
    r#"{"type": 7}"#,
    r##"{"$ref": "#/definitions/loop", "definitions": {"loop": {"$ref": "#/definitions/loop"}}}"##,
    r#"{"$ref": "http://127.0.0.1:1/x.json"}"#,
    r#"{"properties": {"name": {"pattern": "(a+)+$"}}}"#,
    r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}}}"#,
];

fn member() -> impl Strategy<Value = (String, J)> {
    let known = proptest::sample::select(
        &[
            "default_locale",
            "locales",
            "schema",
            "publish",
            "version",
            "variables",
            "locale",
            "template",
            "template_version",
            "recipient",
            "category",
            "title",
            "body",
            "channels",
            "experiment",
            "variants",
            "holdout",
            "weight",
            "weights",
            "winner",
            "name",
        ][..],
    );
    let source = proptest::sample::select(SOURCES).prop_map(|s| J::Str(s.to_owned()));
    let locale_text = (
        source.clone(),
        source.clone(),
        proptest::option::of(source.clone()),
    )
        .prop_map(|(t, b, email)| {
            let mut fields = vec![("title".to_owned(), t), ("body".to_owned(), b)];
            if let Some(e) = email {
                fields.push((
                    "channels".to_owned(),
                    J::Obj(vec![(
                        "email".to_owned(),
                        J::Obj(vec![("title".to_owned(), e)]),
                    )]),
                ));
            }
            J::Obj(fields)
        });
    let locales = proptest::collection::vec(
        (
            proptest::sample::select(&["en", "pt-BR", "zh_hant_tw", "x", "EN", "pt"][..])
                .prop_map(str::to_owned),
            prop_oneof![4 => locale_text, 1 => tree()],
        ),
        0..4,
    )
    .prop_map(J::Obj);
    let schema = proptest::sample::select(SCHEMAS).prop_map(J::RawStr);
    let value = prop_oneof![
        3 => tree(),
        3 => proptest::sample::select(&["en", "pt-BR", "welcome", "hal", "news", "de"][..])
            .prop_map(|s| J::Str(s.to_owned())),
        2 => locales,
        1 => schema,
        2 => leaf(),
    ];
    prop_oneof![
        6 => (known.prop_map(str::to_owned), value.clone()),
        1 => ("[a-z]{1,8}", value),
    ]
}

/// A body shaped for `target`, its values drawn from the hostile ones.
fn shaped(target: usize) -> BoxedStrategy<J> {
    let source = || proptest::sample::select(SOURCES).prop_map(|s| J::Str(s.to_owned()));
    let locale = || {
        prop_oneof![
            3 => Just(J::Str("en".to_owned())),
            2 => proptest::sample::select(&["pt-BR", "zh_hant_tw", "x", "EN", "pt", "de-AT"][..])
                .prop_map(|s| J::Str(s.to_owned())),
        ]
    };
    let version = || {
        prop_oneof![
            3 => proptest::sample::select(&["1", "2", "3"][..]).prop_map(J::Num),
            1 => leaf(),
        ]
    };
    let variables = || {
        prop_oneof![
            3 => proptest::option::of(prop_oneof![2 => Just(J::Str("Ada".into())), 1 => tree()])
                .prop_map(|name| J::Obj(name.into_iter().map(|n| ("name".to_owned(), n)).collect())),
            1 => tree(),
        ]
    };
    let opt = |k: &'static str, v: BoxedStrategy<J>| {
        proptest::option::of(v).prop_map(move |v| v.map(|v| (k.to_owned(), v)))
    };
    let obj = |parts: Vec<Option<(String, J)>>| J::Obj(parts.into_iter().flatten().collect());
    match target {
        0 => (
            locale(),
            proptest::collection::vec(
                (
                    proptest::sample::select(&["en", "pt-BR", "zh_hant_tw", "x", "EN", "pt"][..])
                        .prop_map(str::to_owned),
                    (source(), source(), proptest::option::of(source())).prop_map(|(t, b, e)| {
                        let mut f = vec![("title".to_owned(), t), ("body".to_owned(), b)];
                        if let Some(e) = e {
                            f.push((
                                "channels".to_owned(),
                                J::Obj(vec![(
                                    "email".to_owned(),
                                    J::Obj(vec![("title".to_owned(), e)]),
                                )]),
                            ));
                        }
                        J::Obj(f)
                    }),
                ),
                0..4,
            ),
            opt(
                "schema",
                proptest::sample::select(SCHEMAS)
                    .prop_map(J::RawStr)
                    .boxed(),
            ),
            opt("publish", any::<bool>().prop_map(J::Bool).boxed()),
        )
            .prop_map(move |(d, l, schema, publish)| {
                obj(vec![
                    Some(("default_locale".into(), d)),
                    Some(("locales".into(), J::Obj(l))),
                    schema,
                    publish,
                ])
            })
            .boxed(),
        1 => (
            opt("version", version().boxed()),
            opt("variables", variables().boxed()),
            opt("locale", locale().boxed()),
        )
            .prop_map(move |(v, vars, l)| obj(vec![v, vars, l]))
            .boxed(),
        2 => opt("version", version().boxed())
            .prop_map(move |v| obj(vec![v]))
            .boxed(),
        _ => (
            opt("template_version", version().boxed()),
            variables(),
            proptest::option::of(source()),
        )
            .prop_map(move |(v, vars, title)| {
                obj(vec![
                    Some(("recipient".into(), J::Str("hal".into()))),
                    Some(("category".into(), J::Str("news".into()))),
                    Some(("template".into(), J::Str("welcome".into()))),
                    Some(("variables".into(), vars)),
                    v,
                    title.map(|t| ("title".to_owned(), t)),
                ])
            })
            .boxed(),
    }
}

fn body() -> impl Strategy<Value = (usize, String)> {
    (0..TARGETS.len())
        .prop_flat_map(|target| {
            (
                Just(target),
                prop_oneof![
                    6 => shaped(target),
                    3 => proptest::collection::vec(member(), 0..6).prop_map(J::Obj),
                    1 => tree(),
                ],
            )
        })
        .prop_map(|(target, json)| {
            let mut out = String::new();
            json.render(&mut out);
            (target, out)
        })
}

/// The template and the experiment the bodies aim at, as answered.
async fn template(app: &TestApp) -> Result<Value, TestCaseError> {
    let mut both = Vec::new();
    for path in ["/v1/templates/welcome", "/v1/experiments/welcome-exp"] {
        let resp = app.get(path).await;
        let mut v: Value = resp
            .json()
            .await
            .map_err(|e| TestCaseError::fail(format!("no JSON: {e}")))?;
        if let Some(o) = v.as_object_mut() {
            o.remove("cursor");
        }
        both.push(v);
    }
    Ok(Value::Array(both))
}

async fn send(app: &TestApp, target: usize, body: &str) -> Result<u16, TestCaseError> {
    let (method, path) = TARGETS[target];
    let before = template(app).await?;
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
        (200..300).contains(&status) || (400..500).contains(&status),
        "{:?} {method} {path} answered {status}: {answer}",
        app.backend
    );
    if status >= 400 {
        prop_assert!(
            answer["type"].is_string() && answer["detail"].is_string(),
            "{answer}"
        );
        prop_assert_eq!(
            before,
            template(app).await?,
            "a refused {} {} changed the template or the experiment",
            method,
            path
        );
    }
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_template_bodies_get_2xx_or_4xx_alike_and_refusals_change_nothing() {
    let test = "hostile_templates::hostile_template_bodies_get_2xx_or_4xx_alike_and_refusals_change_nothing";
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
    for app in &apps {
        let (status, answer) = app
            .send(
                "POST",
                "/v1/templates/welcome/versions",
                Some(&json!({"default_locale": "en", "publish": true,
                    "locales": {"en": {"title": "Hello {{ name }}", "body": ""}}})),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
        let (status, answer) = app
            .send(
                "PUT",
                "/v1/experiments/welcome-exp",
                Some(&json!({"category": "news", "variants": [
                    {"name": "control", "weight": 1}, {"name": "b", "weight": 1, "template": "welcome"}]})),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
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
                    if *first < 300 {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
    });
    for app in &apps {
        let still = app.get_json("/v1/templates/welcome").await;
        assert_eq!(still["key"], "welcome", "{:?} still answers", app.backend);
    }
    eprintln!(
        "hostile template bodies: {CASES} cases on {} backend(s), {} accepted",
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
