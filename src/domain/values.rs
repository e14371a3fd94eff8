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
/// The largest body accepted, in bytes of UTF-8.
pub const BODY_MAX_BYTES: usize = 10 * 1024;
/// The longest recipient id accepted, in bytes.
pub const USER_ID_MAX_BYTES: usize = 128;
/// The longest category accepted, in bytes.
pub const CATEGORY_MAX_BYTES: usize = 64;
/// The longest group key accepted, in bytes.
pub const GROUP_KEY_MAX_BYTES: usize = 128;

/// A notification's id: a UUID (v7 when tidings makes it, so ids sort by time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotificationId(pub uuid::Uuid);

impl NotificationId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        uuid::Uuid::parse_str(s).map(Self).map_err(|_| {
            invalid(format!(
                "`{s}` is not a notification id (a UUID is expected)"
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

/// The message text: up to 10 KiB of UTF-8 (it may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Body(String);

impl Body {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.len() > BODY_MAX_BYTES {
            return Err(invalid(format!(
                "is {} bytes long; the limit is {BODY_MAX_BYTES} bytes (10 KB)",
                s.len()
            )));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key that groups related notifications (`post-42`): 1–128 bytes, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupKey(String);

impl GroupKey {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > GROUP_KEY_MAX_BYTES {
            return Err(invalid(format!(
                "must be 1 to {GROUP_KEY_MAX_BYTES} characters long"
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        fn bodies_are_limited_by_bytes_not_characters(n in 0usize..12_000) {
            let body = "é".repeat(n); // two bytes each
            prop_assert_eq!(Body::parse(&body).is_ok(), n * 2 <= BODY_MAX_BYTES);
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
