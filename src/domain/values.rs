//! Value types parsed at the edge: once a `Title` or a `UserId` exists it is
//! valid, so the aggregate never re-checks its input.
//!
//! Stored events deserialize these types without re-validation (`serde(transparent)`):
//! the rules may tighten later, and history must still load.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused, in words a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// The longest title accepted, in characters.
pub const TITLE_MAX_CHARS: usize = 200;
/// The longest body accepted, in characters (what JSON Schema's
/// `maxLength` counts, so the spec can say it).
pub const BODY_MAX_CHARS: usize = 10_000;
/// The longest recipient id accepted, in bytes.
pub const USER_ID_MAX_BYTES: usize = 128;
/// The longest category accepted, in bytes.
pub const CATEGORY_MAX_BYTES: usize = 64;
/// The longest group key accepted, in characters.
pub const GROUP_KEY_MAX_CHARS: usize = 128;
/// The largest `data` accepted, as compact JSON, in bytes.
pub const DATA_MAX_BYTES: usize = 32 * 1024;
/// How deeply `data` may nest objects and arrays (the object itself is level 1).
pub const DATA_MAX_DEPTH: usize = 32;
/// Keys in all of `data`'s objects together.
pub const DATA_MAX_KEYS: usize = 1_000;
/// The longest key in `data`, in bytes.
pub const DATA_KEY_MAX_BYTES: usize = 256;

/// U+0000: valid JSON and Rust, but PostgreSQL can store it neither in
/// `text` nor in `jsonb`. Refused everywhere, so both backends accept the
/// same requests.
const NUL: char = '\0';

fn no_nul(s: &str) -> Result<(), InvalidValue> {
    if s.contains(NUL) {
        Err(invalid(
            "must not contain the character U+0000 (NUL), which tidings cannot store",
        ))
    } else {
        Ok(())
    }
}

/// A notification's id: a UUID (v7 when tidings makes it, so ids sort by time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotificationId(pub uuid::Uuid);

impl NotificationId {
    /// A UUID in its hyphenated form (`01a2024f-eced-76cf-8900-aa4e3541250c`,
    /// any case), the form tidings writes and the spec's `format: uuid`.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let hyphenated = s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-');
        hyphenated
            .then(|| uuid::Uuid::parse_str(s).ok())
            .flatten()
            .map(Self)
            .ok_or_else(|| {
                invalid(format!(
                    "`{s}` is not a notification id (a hyphenated UUID is expected)"
                ))
            })
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+')
}

/// The user a notification is for. Letters, digits and `. _ - @ +`, 1–128 bytes:
/// safe in URLs and in stream topics (`inbox:{user}`) without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > USER_ID_MAX_BYTES {
            return Err(invalid(format!(
                "must be 1 to {USER_ID_MAX_BYTES} characters long"
            )));
        }
        if let Some(c) = s.chars().find(|c| !is_id_char(*c)) {
            return Err(invalid(format!(
                "contains `{c}`; use letters, digits and . _ - @ + only"
            )));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What kind of notification this is (`comment`, `billing.invoice`): lowercase
/// letters, digits and `. _ - :`, 1–64 bytes. Preferences and filters key on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Category(String);

impl Category {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > CATEGORY_MAX_BYTES {
            return Err(invalid(format!(
                "must be 1 to {CATEGORY_MAX_BYTES} characters long"
            )));
        }
        let ok = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | ':')
        };
        if let Some(c) = s.chars().find(|c| !ok(*c)) {
            return Err(invalid(format!(
                "contains `{c}`; use lowercase letters, digits and . _ - : only"
            )));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A headline: 1–200 characters, not only white space, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Title(String);

impl Title {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.trim().is_empty() {
            return Err(invalid("must not be empty"));
        }
        let chars = s.chars().count();
        if chars > TITLE_MAX_CHARS {
            return Err(invalid(format!(
                "is {chars} characters long; the limit is {TITLE_MAX_CHARS}"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid(
                "must not contain control characters (such as newlines)",
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The message text: up to 10,000 characters (it may be empty), without U+0000.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Body(String);

impl Body {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let chars = s.chars().count();
        if chars > BODY_MAX_CHARS {
            return Err(invalid(format!(
                "is {chars} characters long; the limit is {BODY_MAX_CHARS}"
            )));
        }
        no_nul(s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key that groups related notifications (`post-42`): 1–128 characters, no
/// control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupKey(String);

impl GroupKey {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.chars().count() > GROUP_KEY_MAX_CHARS {
            return Err(invalid(format!(
                "must be 1 to {GROUP_KEY_MAX_CHARS} characters long"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The longest delivery failure reason accepted, in characters.
pub const FAILURE_REASON_MAX_CHARS: usize = 500;

/// Why a channel worker could not deliver (`mailbox full`): 1–500
/// characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FailureReason(String);

impl FailureReason {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.trim().is_empty() || s.chars().count() > FAILURE_REASON_MAX_CHARS {
            return Err(invalid(format!(
                "must be 1 to {FAILURE_REASON_MAX_CHARS} characters long, not only white space"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid("must be one line without control characters"));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where in `data` a refused value is (`data.items[2].name`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataProblem {
    pub path: String,
    pub why: InvalidValue,
}

/// What a sender attaches as `data`, checked against the limits every
/// backend can keep and give back unchanged: size, nesting, keys, and no
/// U+0000 in any key or string. A negative zero becomes zero, as
/// PostgreSQL's numbers have no sign on zero. The first problem found, with
/// where it is, otherwise.
pub fn parse_data(
    data: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, DataProblem> {
    check_data(data)?;
    let mut data = data.clone();
    data.values_mut().for_each(unsigned_zeros);
    Ok(data)
}

fn unsigned_zeros(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.as_f64() == Some(0.0) && n.is_f64() => {
            *value = Value::from(0.0);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_zeros),
        Value::Object(map) => map.values_mut().for_each(unsigned_zeros),
        _ => {}
    }
}

fn check_data(data: &serde_json::Map<String, serde_json::Value>) -> Result<(), DataProblem> {
    let problem = |path: &str, why: String| DataProblem {
        path: path.to_owned(),
        why: invalid(why),
    };
    let size = serde_json::to_string(data).map_or(usize::MAX, |text| text.len());
    if size > DATA_MAX_BYTES {
        return Err(problem(
            "data",
            format!("is {size} bytes as JSON; the limit is {DATA_MAX_BYTES} bytes"),
        ));
    }
    let mut keys = 0;
    check_object(data, "data", 1, &mut keys)
}

fn check_object(
    map: &serde_json::Map<String, serde_json::Value>,
    path: &str,
    depth: usize,
    keys: &mut usize,
) -> Result<(), DataProblem> {
    for (key, value) in map {
        *keys += 1;
        let at = format!("{path}{}", key_segment(key));
        if *keys > DATA_MAX_KEYS {
            return Err(DataProblem {
                path: "data".into(),
                why: invalid(format!(
                    "has more than {DATA_MAX_KEYS} keys in all; send fewer"
                )),
            });
        }
        if key.len() > DATA_KEY_MAX_BYTES {
            return Err(DataProblem {
                path: at,
                why: invalid(format!(
                    "the key is {} bytes long; the limit is {DATA_KEY_MAX_BYTES}",
                    key.len()
                )),
            });
        }
        no_nul(key).map_err(|why| DataProblem {
            path: at.clone(),
            why: invalid(format!("the key {}", why.0)),
        })?;
        check_value(value, &at, depth, keys)?;
    }
    Ok(())
}

fn check_value(
    value: &serde_json::Value,
    path: &str,
    depth: usize,
    keys: &mut usize,
) -> Result<(), DataProblem> {
    use serde_json::Value;
    let deeper = || DataProblem {
        path: truncated(path),
        why: invalid(format!(
            "nests deeper than {DATA_MAX_DEPTH} levels of objects and arrays"
        )),
    };
    match value {
        Value::String(s) => no_nul(s).map_err(|why| DataProblem {
            path: path.to_owned(),
            why,
        }),
        Value::Object(map) if depth < DATA_MAX_DEPTH => check_object(map, path, depth + 1, keys),
        Value::Array(items) if depth < DATA_MAX_DEPTH => {
            for (i, item) in items.iter().enumerate() {
                check_value(item, &format!("{path}[{i}]"), depth + 1, keys)?;
            }
            Ok(())
        }
        Value::Object(_) | Value::Array(_) => Err(deeper()),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// `.name` for a plain key, `["odd key"]` for any other.
fn key_segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!(".{key}")
    } else {
        format!("[{}]", serde_json::Value::String(key.to_owned()))
    }
}

/// A path short enough to show.
fn truncated(path: &str) -> String {
    const SHOWN: usize = 120;
    match path.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_owned(),
    }
}

macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    other => Err(invalid(format!(
                        concat!("`{}` is not a known ", $what, "; use one of: {}"),
                        other,
                        [$($word),+].join(", ")
                    ))),
                }
            }

            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $word,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum!(
    /// How urgent a notification is; later issues let it steer batching and channels.
    Priority, "priority" {
        Low => "low",
        Normal => "normal",
        High => "high",
        Urgent => "urgent",
    }
);

impl Priority {
    /// Whether a policy may hold a delivery of this priority back: a digest
    /// window, quiet hours, anything that delays what is due. Urgent never
    /// waits. Every hold asks here, so the rule lives in one place.
    pub fn may_be_held(self) -> bool {
        self != Self::Urgent
    }
}

word_enum!(
    /// Where a notification is delivered. `in_app` is the inbox; the others are
    /// delivered by workers that report back with a `deliver` command.
    Channel, "channel" {
        InApp => "in_app",
        Email => "email",
        Sms => "sms",
        Push => "push",
        Chat => "chat",
    }
);

word_enum!(
    /// What a server API key may do: `send` notifications (and follow what
    /// it sent), `read` any user's inbox, notifications, audit and
    /// analytics, `admin`ister the service (projections, the global log,
    /// keys). A key holds any set of them.
    Scope, "scope" {
        Send => "send",
        Read => "read",
        Admin => "admin",
    }
);

/// The most characters in an API key's name.
pub const KEY_NAME_MAX_CHARS: usize = 64;

/// An API key's name, as an operator lists it (`billing`, `ops-2026`):
/// 1–64 letters, digits, `.`, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.chars().count() > KEY_NAME_MAX_CHARS {
            return Err(invalid(format!(
                "must be 1 to {KEY_NAME_MAX_CHARS} characters long"
            )));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid("may hold only letters, digits, `.`, `_` and `-`"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyName {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<KeyName> for String {
    fn from(name: KeyName) -> Self {
        name.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Scopes from a comma-separated list (`send,read`): each known, at least
/// one; sorted, without repeats.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, InvalidValue> {
    let mut scopes = list
        .split(',')
        .map(|s| Scope::parse(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn key_names_from_the_allowed_alphabet_parse_and_others_do_not(
            good in "[A-Za-z0-9._-]{1,64}",
            bad in "[A-Za-z0-9._-]{0,10}[^A-Za-z0-9._-][A-Za-z0-9._-]{0,10}",
        ) {
            let name = KeyName::parse(&good).unwrap();
            prop_assert_eq!(name.as_str(), good.as_str());
            prop_assert!(KeyName::parse(&bad).is_err());
        }
    }

    #[test]
    fn scope_lists_are_sorted_without_repeats_and_unknown_scopes_are_named() {
        assert_eq!(
            parse_scopes("admin,send,admin").unwrap(),
            vec![Scope::Send, Scope::Admin]
        );
        let err = parse_scopes("send,write").unwrap_err();
        assert!(err.0.contains("`write`"), "{}", err.0);
        assert!(parse_scopes("").is_err());
    }

    proptest! {
        #[test]
        fn user_ids_from_the_allowed_alphabet_parse_and_round_trip(s in "[A-Za-z0-9._@+-]{1,128}") {
            let parsed = UserId::parse(&s).unwrap();
            prop_assert_eq!(parsed.as_str(), s.as_str());
        }

        #[test]
        fn user_ids_with_any_other_character_are_refused(
            prefix in "[a-z]{0,5}", bad in "[^A-Za-z0-9._@+-]", suffix in "[a-z]{0,5}"
        ) {
            let s = format!("{prefix}{bad}{suffix}");
            prop_assert!(UserId::parse(&s).is_err());
        }

        #[test]
        fn titles_up_to_the_limit_parse(s in "[a-zA-Z][a-zA-Z ]{0,199}") {
            prop_assert!(Title::parse(&s).is_ok());
        }

        #[test]
        fn titles_over_the_limit_are_refused(s in "[a-z]{201,300}") {
            prop_assert!(Title::parse(&s).is_err());
        }

        #[test]
        fn blank_titles_are_refused(s in "[ \t]{0,20}") {
            prop_assert!(Title::parse(&s).is_err());
        }

        #[test]
        fn bodies_are_limited_by_characters_not_bytes(n in 9_000usize..11_000) {
            let body = "é".repeat(n); // two bytes each
            prop_assert_eq!(Body::parse(&body).is_ok(), n <= BODY_MAX_CHARS);
        }

        #[test]
        fn categories_accept_lowercase_words(s in "[a-z0-9._:-]{1,64}") {
            prop_assert!(Category::parse(&s).is_ok());
        }

        #[test]
        fn categories_refuse_uppercase(s in "[a-z]{0,5}[A-Z][a-z]{0,5}") {
            prop_assert!(Category::parse(&s).is_err());
        }

        #[test]
        fn notification_ids_round_trip(bytes in any::<[u8; 16]>()) {
            let id = uuid::Uuid::from_bytes(bytes);
            prop_assert_eq!(NotificationId::parse(&id.to_string()).unwrap().0, id);
        }
    }

    fn nested_object(depth: usize) -> serde_json::Map<String, serde_json::Value> {
        let mut value = serde_json::json!({});
        for _ in 1..depth {
            value = serde_json::json!({ "a": value });
        }
        value.as_object().unwrap().clone()
    }

    #[test]
    fn data_may_nest_thirty_two_levels_and_no_more() {
        assert_eq!(check_data(&nested_object(DATA_MAX_DEPTH)), Ok(()));
        let err = check_data(&nested_object(DATA_MAX_DEPTH + 1)).unwrap_err();
        assert!(err.path.starts_with("data.a.a."), "{err:?}");
        assert!(err.why.0.contains("deeper than 32"), "{err:?}");
        let mut list = serde_json::json!(1);
        for _ in 0..DATA_MAX_DEPTH {
            list = serde_json::json!([list]);
        }
        let arrays = serde_json::json!({ "list": list });
        let err = check_data(arrays.as_object().unwrap()).unwrap_err();
        assert!(err.path.starts_with("data.list[0][0]"), "{err:?}");
    }

    #[test]
    fn data_refuses_nul_in_keys_and_strings_and_says_where() {
        let data = serde_json::json!({"user": {"names": ["ann", "b\u{0}b"]}});
        let err = check_data(data.as_object().unwrap()).unwrap_err();
        assert_eq!(err.path, "data.user.names[1]");
        let data = serde_json::json!({"we\u{0}ird": 1});
        let err = check_data(data.as_object().unwrap()).unwrap_err();
        assert_eq!(err.path, r#"data["we\u0000ird"]"#);
        assert!(err.why.0.starts_with("the key must not contain"), "{err:?}");
    }

    #[test]
    fn data_is_limited_in_size_and_keys() {
        let big = serde_json::json!({"s": "x".repeat(DATA_MAX_BYTES)});
        assert!(check_data(big.as_object().unwrap())
            .unwrap_err()
            .why
            .0
            .contains("bytes"));
        let wide: serde_json::Map<_, _> = (0..=DATA_MAX_KEYS)
            .map(|i| (format!("k{i}"), serde_json::json!(1)))
            .collect();
        assert!(check_data(&wide).unwrap_err().why.0.contains("keys"));
        let long_key = serde_json::json!({ "k".repeat(DATA_KEY_MAX_BYTES + 1): 1 });
        assert!(check_data(long_key.as_object().unwrap()).is_err());
        let fine =
            serde_json::json!({"post_id": 42, "n": [1.5e300, -0.0, 18446744073709551615u64]});
        let parsed = parse_data(fine.as_object().unwrap()).unwrap();
        assert_eq!(
            serde_json::Value::Object(parsed).to_string(),
            r#"{"n":[1.5e+300,0.0,18446744073709551615],"post_id":42}"#
        );
    }

    #[test]
    fn bodies_refuse_nul_but_keep_other_control_characters() {
        assert!(Body::parse("line one\nline two\t!").is_ok());
        assert!(Body::parse("a\u{0}b").is_err());
    }

    #[test]
    fn every_priority_and_channel_round_trips_through_its_word() {
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Ok(*p));
        }
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Ok(*c));
        }
        let err = Priority::parse("mega").unwrap_err();
        assert!(err.0.contains("low, normal, high, urgent"), "{err}");
    }
}
