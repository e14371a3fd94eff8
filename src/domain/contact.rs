//! What a recipient's profile holds, as value types parsed at the edge:
//! display name, IANA time zone, locale, tenant, and the channel addresses
//! (email, phone, push tokens, webhook URL). Each `parse` says what is wrong
//! in words a client can act on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::values::InvalidValue;

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

macro_rules! text_value {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// The most characters in a display name.
pub const DISPLAY_NAME_MAX_CHARS: usize = 200;

text_value!(
    /// How the recipient is addressed (`Alice Liddell`): 1–200 characters,
    /// one line, not only white space.
    DisplayName
);

impl DisplayName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.trim().is_empty() {
            return Err(invalid("must not be empty or only white space"));
        }
        if s.chars().count() > DISPLAY_NAME_MAX_CHARS {
            return Err(invalid(format!(
                "must be at most {DISPLAY_NAME_MAX_CHARS} characters long"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid("must be one line without control characters"));
        }
        Ok(Self(s.to_owned()))
    }
}

text_value!(
    /// A locale as a language tag: a 2–3 letter language, then up to four
    /// subtags of 1–8 letters or digits (`de`, `pt-BR`, `zh-Hant-TW`). Kept
    /// in canonical case: language lower, a 2-letter region upper, a
    /// 4-letter script title case.
    Locale
);

impl Locale {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = || {
            invalid(format!(
                "`{s}` is not a language tag; write `en`, `de-AT`, `pt-BR` or `zh-Hant-TW`"
            ))
        };
        let mut parts = s.split(['-', '_']);
        let language = parts.next().ok_or_else(bad)?;
        if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return Err(bad());
        }
        let mut tag = language.to_ascii_lowercase();
        for (i, sub) in parts.enumerate() {
            if i >= 4
                || sub.is_empty()
                || sub.len() > 8
                || !sub.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(bad());
            }
            tag.push('-');
            match sub.len() {
                2 if sub.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    tag.push_str(&sub.to_ascii_uppercase())
                }
                4 if sub.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    tag.push_str(&sub[..1].to_ascii_uppercase());
                    tag.push_str(&sub[1..].to_ascii_lowercase());
                }
                _ => tag.push_str(&sub.to_ascii_lowercase()),
            }
        }
        Ok(Self(tag))
    }
}

text_value!(
    /// A tenant (an organisation, a workspace): lowercase letters, digits
    /// and `. _ - :`, up to 64 characters.
    TenantId
);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 64 {
            return Err(invalid("must be 1 to 64 characters long"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:-".contains(&b))
        {
            return Err(invalid(
                "may hold only lowercase letters, digits, `.`, `_`, `:` and `-`",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

text_value!(
    /// An email address: one `@`, a local part of 1–64 characters, a domain
    /// with a dot; at most 254 characters, no white space. (Whether it
    /// receives mail is the email channel's to find out.)
    Email
);

impl Email {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why: &str| invalid(format!("`{s}` is not an email address: {why}"));
        if s.len() > 254 {
            return Err(bad("longer than 254 characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it holds white space"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(bad("no `@`"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(bad("the part before `@` must be 1 to 64 characters"));
        }
        if domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(bad("the part after `@` is not a domain"));
        }
        Ok(Self(s.to_owned()))
    }
}

text_value!(
    /// A phone number in E.164: `+`, a country code, at most 15 digits.
    Phone
);

impl Phone {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let digits = s.strip_prefix('+').unwrap_or("");
        if !(7..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(invalid(format!(
                "`{s}` is not an E.164 number; write `+` and 7 to 15 digits (`+4915112345678`)"
            )));
        }
        Ok(Self(s.to_owned()))
    }
}

text_value!(
    /// A device's push token: 1–4096 visible ASCII characters.
    PushToken
);

impl PushToken {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 4096 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("must be 1 to 4096 visible ASCII characters"));
        }
        Ok(Self(s.to_owned()))
    }
}

text_value!(
    /// Where the webhook channel posts: an `https://` (or `http://`) URL
    /// with a host, at most 2048 characters.
    WebhookUrl
);

impl WebhookUrl {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = s.len() <= 2048
            && url::Url::parse(s).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "http")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
        if !ok {
            return Err(invalid(format!(
                "`{s}` is not an http(s) URL with a host (at most 2048 characters)"
            )));
        }
        Ok(Self(s.to_owned()))
    }
}

/// An IANA time zone (`Europe/Berlin`), from the tz database chrono-tz
/// carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub const UTC: TimeZone = TimeZone(chrono_tz::Tz::UTC);

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        chrono_tz::Tz::from_str(s).map(Self).map_err(|_| {
            invalid(format!(
                "`{s}` is not an IANA time zone; write one such as `Europe/Berlin`, `America/New_York` or `UTC`"
            ))
        })
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        self.0
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl TryFrom<String> for TimeZone {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TimeZone> for String {
    fn from(tz: TimeZone) -> Self {
        tz.name().to_owned()
    }
}

/// The most push tokens one recipient holds (devices).
pub const MAX_PUSH_TOKENS: usize = 10;

/// Where each channel reaches the recipient; absent: that channel has no
/// address (a send then records the channel as suppressed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Phone>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push_tokens: Vec<PushToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<WebhookUrl>,
}

impl Addresses {
    /// Whether `channel` has somewhere to go (in-app always does).
    pub fn reach(&self, channel: crate::domain::Channel) -> bool {
        use crate::domain::Channel;
        match channel {
            Channel::InApp => true,
            Channel::Email => self.email.is_some(),
            Channel::Sms => self.phone.is_some(),
            Channel::Push => !self.push_tokens.is_empty(),
            Channel::Chat => self.webhook_url.is_some(),
        }
    }
}

/// Push tokens without repeats, in the order given, at most `MAX_PUSH_TOKENS`.
pub fn push_tokens(tokens: Vec<PushToken>) -> Result<Vec<PushToken>, InvalidValue> {
    let mut kept: Vec<PushToken> = Vec::with_capacity(tokens.len());
    for token in tokens {
        if !kept.contains(&token) {
            kept.push(token);
        }
    }
    if kept.len() > MAX_PUSH_TOKENS {
        return Err(invalid(format!(
            "{} push tokens; at most {MAX_PUSH_TOKENS} (one per device)",
            kept.len()
        )));
    }
    Ok(kept)
}

/// What a recipient's profile says: the values this module defines, together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<DisplayName>,
    /// Absent: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<TimeZone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    #[serde(default)]
    pub addresses: Addresses,
}

impl Profile {
    /// The time zone quiet hours and schedules are read in.
    pub fn time_zone(&self) -> TimeZone {
        self.time_zone.unwrap_or(TimeZone::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_tz_database_name_parses_and_round_trips(i in 0usize..chrono_tz::TZ_VARIANTS.len()) {
            let tz = chrono_tz::TZ_VARIANTS[i];
            let parsed = TimeZone::parse(tz.name()).unwrap();
            prop_assert_eq!(parsed.name(), tz.name());
            let json = serde_json::to_string(&parsed).unwrap();
            prop_assert_eq!(serde_json::from_str::<TimeZone>(&json).unwrap(), parsed);
        }

        #[test]
        fn e164_numbers_parse_and_others_do_not(digits in "[1-9][0-9]{6,14}", junk in "[0-9 ()-]{1,20}") {
            let number = format!("+{digits}");
            prop_assert!(Phone::parse(&number).is_ok());
            prop_assert!(Phone::parse(&digits).is_err(), "no plus");
            let with_junk = format!("+{junk}");
            let only_digits = junk.bytes().all(|b| b.is_ascii_digit());
            prop_assert!(only_digits || Phone::parse(&with_junk).is_err());
        }

        #[test]
        fn locales_are_kept_in_canonical_case(lang in "[a-zA-Z]{2,3}", region in "[a-zA-Z]{2}") {
            let parsed = Locale::parse(&format!("{lang}_{region}")).unwrap();
            prop_assert_eq!(parsed.as_str(), format!("{}-{}", lang.to_ascii_lowercase(), region.to_ascii_uppercase()));
            prop_assert_eq!(Locale::parse(parsed.as_str()).unwrap(), parsed.clone());
        }

        #[test]
        fn display_names_without_control_characters_parse(name in "[^\\p{Cc}]{1,200}") {
            prop_assume!(!name.trim().is_empty());
            let parsed = DisplayName::parse(&name).unwrap();
            prop_assert_eq!(parsed.as_str(), name.as_str());
        }
    }

    #[test]
    fn bad_values_are_refused_with_what_to_write() {
        assert!(TimeZone::parse("Mars/Olympus")
            .unwrap_err()
            .0
            .contains("Europe/Berlin"));
        assert!(TimeZone::parse("").is_err());
        assert_eq!(Locale::parse("zh-hant-tw").unwrap().as_str(), "zh-Hant-TW");
        for bad in [
            "",
            "e",
            "english",
            "en-",
            "en--US",
            "1n",
            "en-toolongsubtag",
        ] {
            assert!(Locale::parse(bad).is_err(), "{bad}");
        }
        for bad in [
            "alice",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@example..com",
            "a@@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Email::parse("alice+news@example.co.uk").is_ok());
        for bad in [
            "+0123456789",
            "+12345",
            "+1234567890123456",
            "4915112345678",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
        for bad in [
            "ftp://example.com/x",
            "https://",
            "not a url",
            "javascript:alert(1)",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(TenantId::parse("Acme").is_err());
        assert!(DisplayName::parse("two\nlines").is_err());
        assert!(DisplayName::parse("   ").is_err());
        let many: Vec<PushToken> = (0..11)
            .map(|i| PushToken::parse(&format!("t{i}")).unwrap())
            .collect();
        assert!(push_tokens(many).unwrap_err().0.contains("at most 10"));
        let twice = vec![
            PushToken::parse("a").unwrap(),
            PushToken::parse("a").unwrap(),
        ];
        assert_eq!(push_tokens(twice).unwrap().len(), 1);
    }
}
