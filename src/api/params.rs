//! Values whose OpenAPI schema tells what the server enforces.
//!
//! poem-openapi's validators put a constraint in the schema but enforce it
//! with their own error text. Here the schema carries the constraint while
//! the value is read as it comes (a number must still be a number) and the
//! handler or the domain checks it, answering problem+json that names the
//! field. What the schema allows, the server accepts, and the reverse: a
//! test (tests/api/spec.rs) and schemathesis in CI hold the two together.

use std::borrow::Cow;
use std::marker::PhantomData;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

use crate::domain::{Channel, Priority, GROUP_KEY_MAX_CHARS, TITLE_MAX_CHARS};

/// A string value's schema.
pub trait Rule: Send + Sync + 'static {
    /// How the schema is named (poem-openapi needs a name per type).
    const NAME: &'static str;
    fn schema() -> MetaSchema;
}

/// A string whose schema is `R`'s; read as it comes, checked by its user.
pub struct Text<R>(pub String, PhantomData<R>);

impl<R> Text<R> {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into(), PhantomData)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<R> Clone for Text<R> {
    fn clone(&self) -> Self {
        Self::new(self.0.clone())
    }
}

impl<R> std::fmt::Debug for Text<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<R> std::fmt::Display for Text<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<R> PartialEq for Text<R> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<R: Rule> Type for Text<R> {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        R::NAME.into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(R::schema()))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl<R: Rule> ParseFromParameter for Text<R> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self::new(value))
    }
}

impl<R: Rule> ParseFromJSON for Text<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Self::new(s)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<R: Rule> ToJSON for Text<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

impl<R> serde::Serialize for Text<R> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de, R> serde::Deserialize<'de> for Text<R> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// An integer parameter whose schema is `R`'s; read as an integer, its
/// range checked by its user.
pub struct Int<R>(pub i64, PhantomData<R>);

impl<R: Rule> Type for Int<R> {
    const IS_REQUIRED: bool = true;
    type RawValueType = i64;
    type RawElementValueType = i64;

    fn name() -> Cow<'static, str> {
        R::NAME.into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(R::schema()))
    }

    fn as_raw_value(&self) -> Option<&i64> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a i64> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl<R: Rule> ParseFromParameter for Int<R> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        value
            .parse()
            .map(|n| Self(n, PhantomData))
            .map_err(|_| ParseError::custom(format!("`{value}` is not an integer")))
    }
}

impl<R> std::fmt::Debug for Int<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<R: Rule> ParseFromJSON for Int<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.as_ref().and_then(Value::as_i64) {
            Some(n) => Ok(Self(n, PhantomData)),
            None => Err(ParseError::expected_type(value.unwrap_or_default())),
        }
    }
}

impl<R: Rule> ToJSON for Int<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::from(self.0))
    }
}

impl<'de, R> serde::Deserialize<'de> for Int<R> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i64::deserialize(d).map(|n| Self(n, PhantomData))
    }
}

fn string() -> MetaSchema {
    MetaSchema::new("string")
}

fn pattern(p: &str) -> MetaSchema {
    MetaSchema {
        pattern: Some(p.to_owned()),
        ..string()
    }
}

fn words(all: impl IntoIterator<Item = &'static str>) -> MetaSchema {
    MetaSchema {
        enum_items: all.into_iter().map(Value::from).collect(),
        ..string()
    }
}

/// Items per inbox page: the default and the most.
pub const INBOX_DEFAULT_LIMIT: i64 = 20;
pub const INBOX_MAX_LIMIT: i64 = 100;
/// Events per page of the log: the default and the most.
pub const EVENTS_DEFAULT_LIMIT: i64 = 100;
pub const EVENTS_MAX_LIMIT: i64 = 1000;

/// Characters `char::is_control` refuses (Unicode Cc), as a regex class body.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

macro_rules! rule {
    ($(#[$meta:meta])* $name:ident, $schema_name:literal, $schema:expr) => {
        $(#[$meta])*
        pub struct $name;
        impl Rule for $name {
            const NAME: &'static str = $schema_name;
            fn schema() -> MetaSchema {
                $schema
            }
        }
    };
}

rule!(
    /// A notification id: a UUID, hyphenated.
    NotificationIdRule, "NotificationId", MetaSchema::new_with_format("string", "uuid")
);
rule!(
    /// A user id: letters, digits and `. _ - @ +`, 1–128 of them.
    UserRule, "UserId", pattern(r"^[A-Za-z0-9._@+-]{1,128}$")
);
rule!(
    /// A category: lowercase letters, digits and `. _ - :`, 1–64 of them.
    CategoryRule, "Category", pattern(r"^[a-z0-9._:-]{1,64}$")
);
rule!(
    /// A cursor of the event log: 32 hex digits (each half at most
    /// 0x7fffffffffffffff), as commands answer it.
    LogCursorRule, "LogCursor", pattern(r"^[0-7][0-9A-Fa-f]{15}[0-7][0-9A-Fa-f]{15}$")
);
rule!(
    /// A time (RFC 3339) or a log cursor.
    AsOfRule, "AsOf", MetaSchema {
        any_of: vec![
            MetaSchemaRef::Inline(Box::new(LogCursorRule::schema())),
            MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time"))),
        ],
        ..string()
    }
);
rule!(
    /// A stream's comma-separated topics: at most 100 of them.
    TopicsRule, "Topics", MetaSchema {
        max_length: Some(crate::streams::socket::MAX_TOPICS_QUERY),
        ..string()
    }
);
rule!(
    /// An RFC 3339 time.
    TimeRule, "DateTime", MetaSchema::new_with_format("string", "date-time")
);
rule!(
    /// `unread` or `read`.
    ReadStatusRule, "ReadStatus", words(["unread", "read"])
);
rule!(
    PriorityRule,
    "Priority",
    words(Priority::ALL.iter().map(Priority::as_str))
);
rule!(
    ChannelRule,
    "Channel",
    words(Channel::ALL.iter().map(Channel::as_str))
);
rule!(
    ScopeRule,
    "Scope",
    words(
        crate::domain::Scope::ALL
            .iter()
            .map(crate::domain::Scope::as_str)
    )
);
rule!(
    /// A user token's grants: `read`, `write`, comma-separated.
    GrantsRule, "Grants", pattern(r"^(read|write)(,(read|write))*$")
);
rule!(
    /// An API key's name: letters, digits, `.`, `_`, `-`.
    KeyNameRule, "KeyName", pattern(r"^[A-Za-z0-9._-]{1,64}$")
);
rule!(
    /// An API key's id: a UUID, hyphenated (`setting:{name}` for the
    /// setting's keys, which cannot be revoked here).
    KeyIdRule, "KeyId", string()
);
rule!(
    /// An analytics bucket's width (UTC).
    BucketRule, "AnalyticsBucket", words(["minute", "hour", "day"])
);
rule!(
    /// A notification's lifecycle.
    LifecycleRule, "Lifecycle",
    words(["pending", "scheduled", "batched", "delivered", "digested", "suppressed", "cancelled", "deleted"])
);
rule!(
    /// The projections.
    ProjectionRule, "ProjectionName", words(crate::projections::registry::NAMES)
);
rule!(
    /// A title: 1–200 characters, not only white space, no control characters.
    TitleRule, "Title", MetaSchema {
        max_length: Some(TITLE_MAX_CHARS),
        pattern: Some(format!(
            r"^[^{CONTROL}]*[^{CONTROL}\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^{CONTROL}]*$"
        )),
        ..string()
    }
);
rule!(
    /// A body: up to 10,000 characters, without U+0000.
    BodyRule, "Body", MetaSchema {
        max_length: Some(crate::domain::BODY_MAX_CHARS),
        pattern: Some(r"^[^\u0000]*$".to_owned()),
        ..string()
    }
);
rule!(
    /// A group key: 1–128 characters, no control characters.
    GroupKeyRule, "GroupKey", MetaSchema {
        min_length: Some(1),
        max_length: Some(GROUP_KEY_MAX_CHARS),
        pattern: Some(format!(r"^[^{CONTROL}]*$")),
        ..string()
    }
);
rule!(
    /// How a recipient is addressed: 1–200 characters, one line, not only
    /// white space.
    DisplayNameRule, "DisplayName", MetaSchema {
        max_length: Some(crate::domain::contact::DISPLAY_NAME_MAX_CHARS),
        pattern: Some(format!(
            r"^[^{CONTROL}]*[^{CONTROL}\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^{CONTROL}]*$"
        )),
        ..string()
    }
);
rule!(
    /// An IANA time zone from the tz database (`Europe/Berlin`, `UTC`).
    TimeZoneRule, "TimeZone", pattern(r"^[A-Za-z0-9/_+-]{1,64}$")
);
rule!(
    /// A language tag (`de`, `pt-BR`, `zh-Hant-TW`).
    LocaleRule, "Locale", pattern(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8}){0,4}$")
);
rule!(
    /// A template's key: lowercase letters, digits and `. _ - :`, 1–64 of them.
    TemplateKeyRule, "TemplateKey", pattern(r"^[a-z0-9._:-]{1,64}$")
);
rule!(
    /// An experiment's id: lowercase letters, digits and `. _ - :`, 1–64 of them.
    ExperimentIdRule, "ExperimentId", pattern(r"^[a-z0-9._:-]{1,64}$")
);
rule!(
    /// A variant's or a metric's name: lowercase letters, digits, `_`, `-`, 1–32 of them.
    VariantNameRule, "VariantName", pattern(r"^[a-z0-9_-]{1,32}$")
);
rule!(
    /// A variant's weight: 1 to 1,000,000.
    WeightRule, "ExperimentWeight", MetaSchema {
        minimum: Some(1.0),
        maximum: Some(crate::domain::experiment::MAX_WEIGHT as f64),
        ..MetaSchema::new_with_format("integer", "int64")
    }
);
rule!(
    /// A template version: 1 to 1,000.
    VersionRule, "TemplateVersionNumber", MetaSchema {
        minimum: Some(1.0),
        maximum: Some(crate::domain::template::MAX_VERSIONS as f64),
        ..MetaSchema::new_with_format("integer", "int64")
    }
);
rule!(
    /// A tenant: lowercase letters, digits and `. _ - :`, 1–64 of them.
    TenantRule, "Tenant", pattern(r"^[a-z0-9._:-]{1,64}$")
);
rule!(
    /// An email address: `local@domain.tld`, at most 254 characters.
    EmailRule, "Email", MetaSchema {
        max_length: Some(254),
        pattern: Some(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$".to_owned()),
        ..string()
    }
);
rule!(
    /// A phone number in E.164 (`+4915112345678`).
    PhoneRule, "Phone", pattern(r"^\+[1-9][0-9]{6,14}$")
);
rule!(
    /// A device's push token: 1–4096 visible ASCII characters.
    PushTokenRule, "PushToken", pattern(r"^[!-~]{1,4096}$")
);
rule!(
    /// An http(s) URL with a host, at most 2048 characters.
    WebhookUrlRule, "WebhookUrl", MetaSchema {
        max_length: Some(2048),
        pattern: Some(r"^https?://[^\s/?#]+([/?#]\S*)?$".to_owned()),
        ..string()
    }
);
rule!(
    /// A time of day, `HH:MM` (24-hour).
    LocalTimeRule, "LocalTime", pattern(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
);
rule!(
    /// Which level decided a preference cell.
    LevelRule, "PreferenceLevel", words(["critical", "user", "tenant", "category", "default"])
);
rule!(
    /// Why a delivery failed: 1–500 characters, one line, not only white space.
    FailureReasonRule, "FailureReason", MetaSchema {
        max_length: Some(crate::domain::values::FAILURE_REASON_MAX_CHARS),
        pattern: Some(format!(
            r"^[^{CONTROL}]*[^{CONTROL}\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^{CONTROL}]*$"
        )),
        ..string()
    }
);
rule!(
    /// What became of a channel.
    OutcomeRule, "ChannelOutcome", words(["delivered", "suppressed", "pending", "failed", "digested"])
);
rule!(
    /// A topic: letters, digits and `. _ - :`, 1–128 of them.
    TopicRule, "Topic", pattern(r"^[A-Za-z0-9._:-]{1,128}$")
);
rule!(
    /// How a batch window runs.
    WindowKindRule, "BatchWindowKind", words(["fixed", "sliding"])
);
rule!(
    /// How often a batch schedule flushes.
    EveryRule, "BatchEvery", words(["day", "week"])
);
rule!(
    /// A day of the week.
    WeekdayRule, "Weekday", words(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])
);
rule!(
    /// What a bulk operation does.
    BulkActionRule, "BulkAction", words(["seen", "read", "archive", "delete"])
);
rule!(
    /// An Idempotency-Key: 1–255 visible ASCII characters.
    IdempotencyKeyRule, "IdempotencyKey", pattern(r"^[!-~]{1,255}$")
);
rule!(
    /// Items per inbox page.
    InboxLimitRule, "InboxLimit", MetaSchema {
        minimum: Some(1.0),
        maximum: Some(INBOX_MAX_LIMIT as f64),
        default: Some(Value::from(INBOX_DEFAULT_LIMIT)),
        ..MetaSchema::new_with_format("integer", "int64")
    }
);
rule!(
    /// Events (or parked events) per page.
    EventLimitRule, "EventLimit", MetaSchema {
        minimum: Some(1.0),
        maximum: Some(EVENTS_MAX_LIMIT as f64),
        default: Some(Value::from(EVENTS_DEFAULT_LIMIT)),
        ..MetaSchema::new_with_format("integer", "int64")
    }
);
rule!(
    /// A sequence number within a stream, 0 or more.
    SequenceRule, "Sequence", MetaSchema {
        minimum: Some(0.0),
        ..MetaSchema::new_with_format("integer", "int64")
    }
);

/// Free-form JSON that must be an object (`data`): the schema says object;
/// the limits inside it (size, depth, keys, no U+0000) are in its
/// description, as JSON Schema cannot count them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JsonObject(pub Value);

impl Type for JsonObject {
    const IS_REQUIRED: bool = true;
    type RawValueType = Value;
    type RawElementValueType = Value;

    fn name() -> Cow<'static, str> {
        "JsonObject".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(MetaSchema::ANY)))),
            ..MetaSchema::new("object")
        }))
    }

    fn as_raw_value(&self) -> Option<&Value> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for JsonObject {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        Ok(Self(value.unwrap_or_default()))
    }
}

impl ToJSON for JsonObject {
    fn to_json(&self) -> Option<Value> {
        Some(self.0.clone())
    }
}

/// The `{user}` of a path, or a 422 naming `path.user` (the schema bounds
/// its length and characters; this is the domain's word on it).
pub(super) fn path_user(raw: &str) -> Result<crate::domain::UserId, super::problem::ApiError> {
    crate::domain::UserId::parse(raw)
        .map_err(|e| super::problem::ApiError::invalid("path.user", e.0))
}
rule!(
    /// A batch's id: its stream and number.
    BatchIdRule, "BatchId", pattern(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[1-9][0-9]{0,18}$")
);
rule!(
    /// `open` or `flushed`.
    BatchStatusRule, "BatchStatus", words(["open", "flushed"])
);
rule!(
    /// Where a page of batches goes on: a `next_cursor`.
    BatchCursorRule, "BatchCursor", pattern(r"^[0-9a-f]{16}[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[1-9][0-9]{0,18}$")
);
