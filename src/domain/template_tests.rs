//! The template aggregate, told as given (past events) / when (a command)
//! / then (the exact events, or the exact error); rendering, and the
//! locale fallback as a property.

use proptest::prelude::*;

use chrono::DateTime;

use super::*;
use crate::render::check_template;

use TemplateCommand as C;
use TemplateError as Error;
use TemplateEvent as E;

fn t(secs: i64) -> Timestamp {
    DateTime::from_timestamp(1_750_000_000 + secs, 0).expect("a time in range")
}

fn locale(tag: &str) -> Locale {
    Locale::parse(tag).expect("a language tag")
}

fn source(s: &str) -> Source {
    Source::parse(s, check_template).expect("a template")
}

fn text(title: &str, body: &str) -> LocaleText {
    LocaleText {
        title: source(title),
        body: source(body),
        channels: BTreeMap::new(),
    }
}

fn content(title: &str) -> VersionContent {
    VersionContent::new(
        locale("en"),
        BTreeMap::from([(locale("en"), text(title, "Hi {{ name }}"))]),
        None,
    )
    .expect("valid content")
}

fn given(events: impl IntoIterator<Item = TemplateEvent>) -> Template {
    let mut template = Template::default();
    for e in events {
        template.apply(e);
    }
    template
}

fn added(version: u64, title: &str) -> E {
    E::TemplateVersionAdded {
        version,
        content: content(title),
        added_at: t(version as i64),
    }
}

fn published(version: u64, previous: Option<u64>) -> E {
    E::TemplateVersionPublished {
        version,
        previous,
        published_at: t(version as i64),
    }
}

fn vars(json: serde_json::Value) -> Data {
    match json {
        serde_json::Value::Object(map) => map,
        _ => panic!("variables are an object"),
    }
}

#[test]
fn a_version_is_numbered_from_one_and_the_same_content_again_adds_nothing() {
    let template = given([]);
    let add = |title: &str, publish| C::AddVersion {
        content: content(title),
        publish,
        at: t(1),
    };
    assert_eq!(
        template.decide(add("Welcome", false)),
        Ok(vec![added(1, "Welcome")])
    );
    let template = given([added(1, "Welcome")]);
    assert_eq!(template.decide(add("Welcome", false)), Ok(vec![]));
    // The same content, now to be published: only the publish is new.
    assert_eq!(
        template.decide(add("Welcome", true)),
        Ok(vec![published(1, None)])
    );
    assert_eq!(
        template.decide(add("Hello", true)),
        Ok(vec![
            E::TemplateVersionAdded {
                version: 2,
                content: content("Hello"),
                added_at: t(1),
            },
            E::TemplateVersionPublished {
                version: 2,
                previous: None,
                published_at: t(1),
            }
        ])
    );
}

#[test]
fn publishing_names_an_existing_version_and_publishing_it_again_records_nothing() {
    let template = given([added(1, "A"), added(2, "B"), published(1, None)]);
    assert_eq!(
        template.decide(C::Publish {
            version: 3,
            at: t(3)
        }),
        Err(Error::NoSuchVersion(3))
    );
    assert_eq!(
        template.decide(C::Publish {
            version: 0,
            at: t(3)
        }),
        Err(Error::NoSuchVersion(0))
    );
    assert_eq!(
        template.decide(C::Publish {
            version: 1,
            at: t(3)
        }),
        Ok(vec![])
    );
    assert_eq!(
        template.decide(C::Publish {
            version: 2,
            at: t(2)
        }),
        Ok(vec![published(2, Some(1))])
    );
}

#[test]
fn a_rollback_returns_to_the_versions_published_before_one_at_a_time() {
    let mut template = given([
        added(1, "A"),
        published(1, None),
        added(2, "B"),
        published(2, Some(1)),
        added(3, "C"),
        published(3, Some(2)),
    ]);
    for (from, to) in [(3, 2), (2, 1)] {
        let events = template.decide(C::RollBack { to: None, at: t(9) }).unwrap();
        assert_eq!(
            events,
            vec![E::TemplateRolledBack {
                version: to,
                from,
                rolled_back_at: t(9)
            }]
        );
        for e in events {
            template.apply(e);
        }
        assert_eq!(template.published, Some(to));
    }
    assert_eq!(
        template.decide(C::RollBack { to: None, at: t(9) }),
        Err(Error::NothingToRollBackTo)
    );
    assert_eq!(
        template.decide(C::RollBack {
            to: Some(3),
            at: t(9)
        }),
        Err(Error::NotEarlier {
            to: 3,
            published: 1
        })
    );
    assert_eq!(
        template.decide(C::RollBack {
            to: Some(7),
            at: t(9)
        }),
        Err(Error::NoSuchVersion(7))
    );
}

#[test]
fn a_template_without_versions_or_publication_says_which() {
    assert_eq!(given([]).version(None), Err(Error::NoVersions));
    assert_eq!(
        given([]).decide(C::RollBack { to: None, at: t(1) }),
        Err(Error::NoVersions)
    );
    let draft = given([added(1, "A")]);
    assert_eq!(draft.version(None), Err(Error::NothingPublished));
    assert_eq!(draft.version(Some(1)).map(|v| v.number), Ok(1));
    assert_eq!(
        draft.decide(C::RollBack { to: None, at: t(1) }),
        Err(Error::NothingPublished)
    );
}

#[test]
fn a_template_keeps_at_most_its_limit_of_versions() {
    let template = given((1..=MAX_VERSIONS).map(|v| added(v, &format!("v{v}"))));
    assert_eq!(
        template.decide(C::AddVersion {
            content: content("one more"),
            publish: false,
            at: t(1),
        }),
        Err(Error::TooManyVersions)
    );
}

#[test]
fn content_names_a_default_locale_it_has() {
    assert_eq!(
        VersionContent::new(
            locale("de"),
            BTreeMap::from([(locale("en"), text("A", "B"))]),
            None
        ),
        Err(ContentProblem::DefaultMissing(locale("de")))
    );
    assert_eq!(
        VersionContent::new(locale("en"), BTreeMap::new(), None),
        Err(ContentProblem::LocaleCount(0))
    );
}

#[test]
fn rendering_fills_every_locale_and_channel_and_a_channel_falls_back_to_its_locale() {
    let mut en = text("Welcome, {{ name }}", "Your plan: {{ plan }}");
    en.channels.insert(
        Channel::Email,
        ChannelText {
            title: Some(source("Welcome aboard, {{ name }}")),
            body: None,
        },
    );
    let content = VersionContent::new(
        locale("en"),
        BTreeMap::from([
            (locale("en"), en),
            (
                locale("fr"),
                text("Bienvenue, {{ name }}", "Offre : {{ plan }}"),
            ),
        ]),
        None,
    )
    .unwrap();
    let rendered = content
        .render(&vars(serde_json::json!({"name": "Ada", "plan": "pro"})))
        .unwrap();
    assert_eq!(rendered[&locale("en")].title.as_str(), "Welcome, Ada");
    assert_eq!(rendered[&locale("fr")].body.as_str(), "Offre : pro");
    let email = &rendered[&locale("en")].channels[&Channel::Email];
    assert_eq!(email.title.as_str(), "Welcome aboard, Ada");
    assert_eq!(email.body.as_str(), "Your plan: pro");
    assert!(rendered[&locale("fr")].channels.is_empty());
}

#[test]
fn a_missing_variable_is_an_error_naming_it_and_where_it_is_never_an_empty_string() {
    let mut en = text("Hello", "Hi");
    en.channels.insert(
        Channel::Sms,
        ChannelText {
            title: None,
            body: Some(source("Code {{ order.code }}")),
        },
    );
    let content =
        VersionContent::new(locale("en"), BTreeMap::from([(locale("en"), en)]), None).unwrap();
    let err = content
        .render(&vars(serde_json::json!({"order": {"id": 1}})))
        .unwrap_err();
    assert_eq!(err.field, "locales.en.channels.sms.body");
    assert!(err.message.contains("order.code"), "{err}");
}

#[test]
fn a_title_that_renders_to_two_lines_or_to_nothing_is_refused() {
    let content = VersionContent::new(
        locale("en"),
        BTreeMap::from([(locale("en"), text("{{ a }}", "b"))]),
        None,
    )
    .unwrap();
    for bad in ["two\nlines", "  "] {
        let err = content
            .render(&vars(serde_json::json!({ "a": bad })))
            .unwrap_err();
        assert_eq!(err.field, "locales.en.title", "{bad:?}");
        assert!(err.message.starts_with("renders as a title"), "{err}");
    }
}

#[test]
fn the_locale_falls_back_one_subtag_at_a_time_then_to_the_default() {
    let available: BTreeMap<Locale, ()> = ["en", "zh", "zh-Hant", "pt-BR"]
        .into_iter()
        .map(|l| (locale(l), ()))
        .collect();
    let en = locale("en");
    for (wanted, got) in [
        ("zh-Hant-TW", "zh-Hant"),
        ("zh-Hans", "zh"),
        ("pt-BR", "pt-BR"),
        ("pt", "en"),
        ("pt-PT", "en"),
        ("de", "en"),
    ] {
        assert_eq!(
            lookup(&available, &en, Some(&locale(wanted))).as_str(),
            got,
            "{wanted}"
        );
    }
    assert_eq!(lookup(&available, &en, None), &en);
}

proptest! {
    /// Whatever the recipient's tag, the locale chosen is one the version
    /// has, and a tag it has is chosen as is.
    #[test]
    fn the_chosen_locale_is_always_one_the_version_has(
        have in proptest::collection::btree_set("[a-z]{2}(-[A-Z]{2})?", 1..6),
        wanted in "[a-z]{2}(-[A-Z]{2})?(-[a-z0-9]{3})?",
    ) {
        let available: BTreeMap<Locale, ()> = have.iter().map(|l| (locale(l), ())).collect();
        let default = available.keys().next().unwrap().clone();
        let wanted = locale(&wanted);
        let chosen = lookup(&available, &default, Some(&wanted));
        prop_assert!(available.contains_key(chosen));
        if available.contains_key(&wanted) {
            prop_assert_eq!(chosen, &wanted);
        }
        prop_assert!(wanted.as_str().starts_with(chosen.as_str()) || chosen == &default);
    }

    /// A template key is exactly the documented alphabet and length.
    #[test]
    fn template_keys_are_lowercase_words(s in "\\PC{0,80}") {
        let ok = !s.is_empty()
            && s.len() <= KEY_MAX_BYTES
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_:".contains(c));
        prop_assert_eq!(TemplateKey::parse(&s).is_ok(), ok);
    }
}
