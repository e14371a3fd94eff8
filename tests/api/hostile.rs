//! Hostile create bodies, generated, against both backends at once: every
//! request answers 201 or 4xx (never 5xx), memory and PostgreSQL answer
//! alike, what one accepts the other gives back alike, and afterwards a
//! plain notification still reaches its inbox on both.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::helpers::{notification_for, postgres_server_url, skipped, Backend, TestApp};

/// Generated bodies per run.
const CASES: u32 = 512;

/// A JSON tree rendered by hand, so a body can hold what serde_json would
/// never write: numbers beyond a double, lone surrogates, any nesting.
#[derive(Debug, Clone)]
pub enum J {
    Null,
    Bool(bool),
    /// Number text as sent.
    Num(&'static str),
    Str(String),
    /// A string literal as sent, escapes and all.
    RawStr(&'static str),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
    /// `[[[...]]]` this deep, around a leaf.
    Deep(usize, Box<J>),
}

impl J {
    pub fn render(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => out.push_str(&Value::String(s.clone()).to_string()),
            J::RawStr(s) => out.push_str(s),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    v.render(out);
                }
                out.push('}');
            }
            J::Deep(depth, leaf) => {
                let object = depth % 2 == 0;
                for _ in 0..*depth {
                    out.push_str(if object { "{\"k\":" } else { "[" });
                }
                leaf.render(out);
                for _ in 0..*depth {
                    out.push(if object { '}' } else { ']' });
                }
            }
        }
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "0.1",
    "1e308",
    "-1.7976931348623157e308",
    "1e400",
    "-1e400",
    "5e-324",
    "1e-400",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890123456789",
    "1.0000000000000000000000000001",
];

const RAW_STRINGS: &[&str] = &[
    r#""\ud800""#,
    r#""\udc00x""#,
    r#""\ud83d\ude00""#,
    r#""\u0000""#,
    r#""a\u0000b""#,
    r#""\u001f\u007f\u0085""#,
];

/// Unicode text of every kind, NUL and control characters included.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect()),
        1 => "[a-z]{1,12}",
        1 => "\\PC{0,20}\u{0}\\PC{0,5}",
        1 => "[\u{0}-\u{1f}\u{7f}-\u{9f}]{1,8}",
        1 => Just("\u{feff}\u{202e}\u{200b}x".to_owned()),
    ]
}

pub fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        2 => Just(J::Null),
        2 => any::<bool>().prop_map(J::Bool),
        2 => any::<i64>().prop_map(|n| J::Str(n.to_string())),
        3 => proptest::sample::select(NUMBERS).prop_map(J::Num),
        3 => text(40).prop_map(J::Str),
        1 => proptest::sample::select(RAW_STRINGS).prop_map(J::RawStr),
    ]
}

pub fn tree() -> impl Strategy<Value = J> {
    leaf().prop_recursive(6, 200, 12, |inner| {
        prop_oneof![
            4 => proptest::collection::vec(inner.clone(), 0..12).prop_map(J::Arr),
            4 => proptest::collection::vec((text(12), inner.clone()), 0..12).prop_map(J::Obj),
            1 => (25usize..200, inner).prop_map(|(d, leaf)| J::Deep(d, Box::new(leaf))),
        ]
    })
}

/// Trees without the values that are refused at once, so that many bodies
/// get through to be stored and read back.
fn tame_tree() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        proptest::sample::select(&NUMBERS[..6]).prop_map(J::Num),
        proptest::sample::select(&NUMBERS[8..]).prop_map(J::Num),
        r"\PC{0,30}".prop_map(J::Str),
        proptest::sample::select(&RAW_STRINGS[2..3]).prop_map(J::RawStr),
    ];
    leaf.prop_recursive(5, 60, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(J::Arr),
            proptest::collection::vec((r"[a-z_]{1,8}|\PC{1,8}", inner), 0..8).prop_map(J::Obj),
        ]
    })
}

/// `data`: absent, any tree, or an object wide or long enough to meet the limits.
fn data() -> impl Strategy<Value = Option<J>> {
    prop_oneof![
        3 => Just(None),
        10 => proptest::collection::vec((r"[a-z_]{1,8}|\PC{1,8}", tame_tree()), 0..8).prop_map(|m| Some(J::Obj(m))),
        2 => proptest::collection::vec((text(12), tree()), 0..8).prop_map(|m| Some(J::Obj(m))),
        1 => tree().prop_map(Some),
        1 => (900usize..1100).prop_map(|n| Some(J::Obj(
            (0..n).map(|i| (format!("k{i}"), J::Num("1"))).collect()
        ))),
        1 => (30_000usize..34_000).prop_map(|n| Some(J::Obj(vec![("s".into(), J::Str("x".repeat(n)))]))),
    ]
}

fn word(valid: &'static [&'static str]) -> impl Strategy<Value = J> {
    prop_oneof![
        12 => proptest::sample::select(valid).prop_map(|w| J::Str(w.to_owned())),
        1 => text(30).prop_map(J::Str),
        1 => leaf(),
    ]
}

fn optional(s: impl Strategy<Value = J> + 'static) -> impl Strategy<Value = Option<J>> {
    prop_oneof![3 => Just(None), 2 => s.prop_map(Some)]
}

/// A whole create body.
fn body() -> impl Strategy<Value = String> {
    let required = (
        word(&["alice", "bob.b+x@example.org", "u-1"]),
        word(&["comment", "billing.invoice"]),
        prop_oneof![
            10 => "\\PC{1,80}".prop_map(J::Str),
            1 => text(250).prop_map(J::Str),
            1 => leaf(),
        ],
        prop_oneof![
            10 => "\\PC{0,300}|[\\t\\n -~]{0,300}".prop_map(J::Str),
            1 => text(300).prop_map(J::Str),
            1 => (10_000usize..11_000).prop_map(|n| J::Str("é".repeat(n / 2))),
            1 => leaf(),
        ],
    );
    let optionals = (
        data(),
        optional(word(&["low", "normal", "high", "urgent"])),
        optional(prop_oneof![
            proptest::collection::vec(word(&["in_app", "email", "sms"]), 0..4).prop_map(J::Arr),
            leaf(),
        ]),
        optional(prop_oneof![
            3 => "[a-z0-9-]{1,20}".prop_map(J::Str),
            1 => text(140).prop_map(J::Str),
            1 => leaf(),
        ]),
        optional(word(&[
            "2099-01-01T00:00:00Z",
            "2000-01-01T00:00:00Z",
            "tomorrow",
        ])),
        prop_oneof![12 => Just(None), 1 => tree().prop_map(Some)],
    );
    (required, optionals).prop_map(
        |((recipient, category, title, body), (data, priority, channels, group, at, extra))| {
            let mut members = vec![
                ("recipient".to_owned(), recipient),
                ("category".to_owned(), category),
                ("title".to_owned(), title),
                ("body".to_owned(), body),
            ];
            let named = [
                ("data", data),
                ("priority", priority),
                ("channels", channels),
                ("group_key", group),
                ("deliver_at", at),
                ("colour", extra),
            ];
            members.extend(
                named
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?))),
            );
            let mut out = String::new();
            J::Obj(members).render(&mut out);
            out
        },
    )
}

/// What a created notification holds, without what differs per instance.
fn content(notification: &Value) -> Value {
    let mut kept = serde_json::Map::new();
    for field in [
        "recipient",
        "category",
        "title",
        "body",
        "data",
        "priority",
        "channels",
        "group_key",
        "deliver_at",
        "lifecycle",
        "status",
    ] {
        kept.insert(field.into(), notification[field].clone());
    }
    Value::Object(kept)
}

/// Sends `body`; (status, the notification as stored when created).
async fn send(app: &TestApp, body: &str) -> Result<(u16, Option<Value>), TestCaseError> {
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
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
        status == 201 || (400..500).contains(&status),
        "{:?} answered {status}: {answer}",
        app.backend
    );
    if status != 201 {
        prop_assert!(
            answer["type"].is_string() && answer["detail"].is_string(),
            "{answer}"
        );
        return Ok((status, None));
    }
    let path = format!(
        "/v1/notifications/{}?min_position={}",
        answer["id"].as_str().unwrap_or_default(),
        answer["cursor"].as_str().unwrap_or_default()
    );
    let resp = app.get(&path).await;
    let read = resp.status().as_u16();
    let stored: Value = resp
        .json()
        .await
        .map_err(|e| TestCaseError::fail(format!("no JSON: {e}")))?;
    prop_assert_eq!(
        read,
        200,
        "{:?}: reading back {}: {}",
        app.backend,
        path,
        stored
    );
    Ok((status, Some(content(&stored))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_create_bodies_get_201_or_4xx_alike_on_both_backends() {
    let test = "hostile::hostile_create_bodies_get_201_or_4xx_alike_on_both_backends";
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
    let runtime = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::sync::atomic::AtomicU32::new(0);
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&body(), |body| {
            runtime.block_on(async {
                let mut answers = Vec::new();
                for app in &apps {
                    answers.push(send(app, &body).await?);
                }
                if let [first, rest @ ..] = answers.as_slice() {
                    for other in rest {
                        prop_assert_eq!(first, other, "the backends disagree on {}", body);
                    }
                    if first.0 == 201 {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
    });
    let plain = notification_for("after-hostile", "still works");
    for app in &apps {
        let (id, cursor) = app.create(&plain).await;
        let inbox = app
            .get_json(&format!(
                "/v1/users/after-hostile/inbox?min_position={cursor}"
            ))
            .await;
        assert_eq!(inbox["items"][0]["id"], id.as_str(), "{:?}", app.backend);
    }
    eprintln!(
        "hostile bodies: {CASES} cases on {} backend(s), {} accepted",
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
