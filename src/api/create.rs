//! The create request: parsed strictly by serde (exact JSON types, no unknown
//! fields; a 400 otherwise), then validated field by field into the domain's
//! value types (a 422 listing every refused field).

use chrono::{DateTime, Utc};
use poem_openapi::types::Example;
use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::params::{
    BodyRule, CategoryRule, ChannelRule, GroupKeyRule, JsonObject, PriorityRule, TemplateKeyRule,
    TenantRule, Text, TimeRule, TitleRule, TopicRule, UserRule,
};
use super::problem::{ApiError, FieldProblem};
use crate::domain::contact::TenantId;
use crate::domain::send::{SendContent, SendTarget, MAX_RECIPIENTS};
use crate::domain::template::{TemplateKey, TemplateUse};
use crate::domain::topic::TopicName;
use crate::domain::{
    parse_data, Body, Category, Channel, Data, DataProblem, GroupKey, Priority, Title, UserId,
};

/// A new notification. Required: `category`; `title` and `body`, or a
/// `template`; and exactly one of `recipient`, `recipients` (up to 1,000)
/// and `topic`.
#[derive(Object, Deserialize, Serialize, Debug, Clone)]
#[oai(example)]
#[serde(deny_unknown_fields)]
pub struct CreateNotificationRequest {
    /// The user it is for: letters, digits and `. _ - @ +`, up to 128 characters.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub recipient: Option<Text<UserRule>>,
    /// Users it is for, instead of `recipient`: 1–1,000 (repeats count
    /// once). Answered 202 with a `send_id`; each gets a notification.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub recipients: Option<Vec<Text<UserRule>>>,
    /// A topic, instead of `recipient`: every subscriber gets a
    /// notification. Answered 202 with a `send_id`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<Text<TopicRule>>,
    /// Lowercase letters, digits and `. _ - :`, up to 64 characters (`comment`, `billing.invoice`).
    pub category: Text<CategoryRule>,
    /// 1–200 characters, one line, not only white space. Required unless
    /// `template` is named (then absent).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub title: Option<Text<TitleRule>>,
    /// Up to 10,000 characters, without U+0000. Required unless `template`
    /// is named (then absent).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub body: Option<Text<BodyRule>>,
    /// A template, instead of `title` and `body`: its published version
    /// (or `template_version`) rendered with `variables`, in the
    /// recipient's locale. The notification records the version and the
    /// text, so later versions never change it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub template: Option<Text<TemplateKeyRule>>,
    /// The template's version to use (absent: the published one).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub template_version: Option<u64>,
    /// An experiment the send takes part in (its category must be the
    /// experiment's): each recipient's variant decides their text (or,
    /// held out, that nothing is sent).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub experiment: Option<Text<TemplateKeyRule>>,
    /// The template's variables: a JSON object, with the limits of `data`,
    /// checked against the version's schema when it has one.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub variables: Option<JsonObject>,
    /// Any JSON object, returned as sent: up to 32 KiB as JSON, nesting up to
    /// 32 levels, 1,000 keys in all (each up to 256 bytes), and no U+0000 in
    /// any key or string. Numbers are 64-bit integers or doubles.
    #[serde(default)]
    #[oai(nullable)]
    pub data: Option<JsonObject>,
    /// `normal` when absent.
    #[serde(default)]
    #[oai(nullable)]
    pub priority: Option<Text<PriorityRule>>,
    /// Where to deliver (`in_app` when absent). In-app notifications reach
    /// the inbox at once unless `deliver_at` is in the future.
    #[serde(default)]
    #[oai(nullable, validator(min_items = 1))]
    pub channels: Option<Vec<Text<ChannelRule>>>,
    /// Groups related notifications (`post-42`): 1–128 characters, no control characters.
    #[serde(default)]
    #[oai(nullable)]
    pub group_key: Option<Text<GroupKeyRule>>,
    /// When to deliver (RFC 3339); absent or past: now.
    #[serde(default)]
    #[oai(nullable)]
    pub deliver_at: Option<Text<TimeRule>>,
    /// The tenant it is sent for: its preference defaults apply (absent:
    /// the recipient profile's tenant), and the inbox and analytics filter
    /// by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(nullable)]
    pub tenant: Option<Text<TenantRule>>,
}

impl Example for CreateNotificationRequest {
    fn example() -> Self {
        Self {
            recipient: Some(Text::new("alice")),
            recipients: None,
            topic: None,
            category: Text::new("comment"),
            title: Some(Text::new("New reply")),
            body: Some(Text::new("Bob replied to your post")),
            template: None,
            template_version: None,
            experiment: None,
            variables: None,
            data: Some(JsonObject(
                serde_json::json!({"post_id": 42, "author": "bob"}),
            )),
            priority: Some(Text::new("normal")),
            channels: Some(vec![Text::new("in_app")]),
            group_key: Some(Text::new("post-42")),
            deliver_at: None,
            tenant: None,
        }
    }
}

fn field<T>(
    errors: &mut Vec<FieldProblem>,
    name: &str,
    result: Result<T, crate::domain::InvalidValue>,
) -> Option<T> {
    result
        .map_err(|e| {
            errors.push(FieldProblem {
                field: name.to_owned(),
                message: e.0,
            })
        })
        .ok()
}

/// A field that may be absent but not null: who a create is for is named
/// once, so the schema can say "exactly one of" (`oneOf` of `required`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A free-form object field (`data`, `variables`): empty when absent,
/// None (with the problem noted) when refused.
fn object_field(
    errors: &mut Vec<FieldProblem>,
    name: &str,
    value: Option<&JsonObject>,
) -> Option<Data> {
    match value.map(|d| &d.0) {
        None => Some(Data::new()),
        Some(serde_json::Value::Object(map)) => match parse_data(map) {
            Ok(data) => Some(data),
            Err(DataProblem { path, why }) => {
                errors.push(FieldProblem {
                    // `parse_data` names paths from `data`.
                    field: match path.strip_prefix("data") {
                        Some(rest) => format!("{name}{rest}"),
                        None => path,
                    },
                    message: why.0,
                });
                None
            }
        },
        Some(_) => {
            errors.push(FieldProblem {
                field: name.into(),
                message: "must be a JSON object".into(),
            });
            None
        }
    }
}

/// The template a create names.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateAsk {
    pub key: TemplateKey,
    /// None: the published one.
    pub version: Option<u64>,
    pub variables: Data,
}

/// Who a create is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Addressee {
    One(UserId),
    Many(SendTarget),
}

impl CreateNotificationRequest {
    /// Who it is for: exactly one of `recipient`, `recipients`, `topic`.
    fn addressee(&self, e: &mut Vec<FieldProblem>) -> Option<Addressee> {
        match (&self.recipient, &self.recipients, &self.topic) {
            (Some(r), None, None) => {
                field(e, "recipient", UserId::parse(r.as_str())).map(Addressee::One)
            }
            (None, Some(list), None) => {
                if list.is_empty() || list.len() > MAX_RECIPIENTS {
                    e.push(FieldProblem {
                        field: "recipients".into(),
                        message: format!("{} given; list 1 to {MAX_RECIPIENTS}", list.len()),
                    });
                    return None;
                }
                let mut users: Vec<UserId> = Vec::with_capacity(list.len());
                let mut ok = true;
                let mut seen = std::collections::HashSet::new();
                for (i, raw) in list.iter().enumerate() {
                    match field(e, &format!("recipients[{i}]"), UserId::parse(raw.as_str())) {
                        Some(u) if seen.insert(u.as_str().to_owned()) => users.push(u),
                        Some(_) => {}
                        None => ok = false,
                    }
                }
                ok.then_some(Addressee::Many(SendTarget::Recipients(users)))
            }
            (None, None, Some(t)) => field(e, "topic", TopicName::parse(t.as_str()))
                .map(|t| Addressee::Many(SendTarget::Topic(t))),
            _ => {
                e.push(FieldProblem {
                    field: "recipient".into(),
                    message: "name exactly one of `recipient`, `recipients` and `topic`".into(),
                });
                None
            }
        }
    }

    /// The template it names, if any: which, at which version, with which
    /// variables (a 422 naming the field when they do not fit together).
    pub fn template_ask(&self) -> Result<Option<TemplateAsk>, ApiError> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let Some(raw) = &self.template else {
            for (name, given) in [
                ("template_version", self.template_version.is_some()),
                ("variables", self.variables.is_some()),
            ] {
                if given {
                    e.push(FieldProblem {
                        field: name.into(),
                        message: "is for a `template`; name one, or leave it out".into(),
                    });
                }
            }
            return super::preferences::done(errors, None);
        };
        for (name, given) in [
            ("title", self.title.is_some()),
            ("body", self.body.is_some()),
        ] {
            if given {
                e.push(FieldProblem {
                    field: name.into(),
                    message: "comes from the `template`; leave it out (or the template)".into(),
                });
            }
        }
        let key = field(e, "template", TemplateKey::parse(raw.as_str()));
        let version = match &self.template_version {
            None => Some(None),
            Some(v) if *v >= 1 => Some(Some(*v)),
            Some(v) => {
                e.push(FieldProblem {
                    field: "template_version".into(),
                    message: format!("{v} is not a version; versions count from 1"),
                });
                None
            }
        };
        let variables = object_field(e, "variables", self.variables.as_ref());
        match (key, version, variables) {
            (Some(key), Some(version), Some(variables)) if errors.is_empty() => {
                Ok(Some(TemplateAsk {
                    key,
                    version,
                    variables,
                }))
            }
            _ => Err(ApiError::invalid_fields(errors)),
        }
    }

    /// Validates every field, reporting all problems at once: who it is
    /// for, and what each of them gets (`template`: the template named,
    /// resolved).
    pub fn validate(
        &self,
        template: Option<TemplateUse>,
    ) -> Result<(Addressee, SendContent), ApiError> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let recipient = self.addressee(e);
        let category = field(e, "category", Category::parse(self.category.as_str()));
        let (title, body) = match &template {
            Some(used) => {
                let text = used.default_text();
                (Some(text.title.clone()), Some(text.body.clone()))
            }
            None => {
                for (name, given) in [
                    ("title", self.title.is_some()),
                    ("body", self.body.is_some()),
                ] {
                    if !given {
                        e.push(FieldProblem {
                            field: name.into(),
                            message: "is required (or name a `template`)".into(),
                        });
                    }
                }
                (
                    self.title
                        .as_ref()
                        .and_then(|t| field(e, "title", Title::parse(t.as_str()))),
                    self.body
                        .as_ref()
                        .and_then(|b| field(e, "body", Body::parse(b.as_str()))),
                )
            }
        };
        let data = object_field(e, "data", self.data.as_ref());
        let priority = match &self.priority {
            None => Some(Priority::Normal),
            Some(p) => field(e, "priority", Priority::parse(p.as_str())),
        };
        let channels = match &self.channels {
            None => Some(vec![Channel::InApp]),
            Some(list) if list.is_empty() => {
                e.push(FieldProblem {
                    field: "channels".into(),
                    message: "must name at least one channel (or be omitted for in_app)".into(),
                });
                None
            }
            Some(list) => {
                let mut channels = Vec::new();
                let mut ok = true;
                for c in list {
                    match field(e, "channels", Channel::parse(c.as_str())) {
                        Some(c) if !channels.contains(&c) => channels.push(c),
                        Some(_) => {}
                        None => ok = false,
                    }
                }
                ok.then_some(channels)
            }
        };
        let group_key = match &self.group_key {
            None => Some(None),
            Some(g) => field(e, "group_key", GroupKey::parse(g.as_str())).map(Some),
        };
        let deliver_at = match &self.deliver_at {
            None => Some(None),
            Some(s) => match DateTime::parse_from_rfc3339(s.as_str()) {
                Ok(t) => Some(Some(t.with_timezone(&Utc))),
                Err(_) => {
                    e.push(FieldProblem {
                        field: "deliver_at".into(),
                        message: format!(
                            "`{s}` is not an RFC 3339 time (such as 2030-01-31T09:00:00Z)"
                        ),
                    });
                    None
                }
            },
        };
        let tenant = match &self.tenant {
            None => Some(None),
            Some(t) => field(e, "tenant", TenantId::parse(t.as_str())).map(Some),
        };
        match (
            recipient, category, title, body, data, priority, channels, group_key, deliver_at,
            tenant,
        ) {
            (
                Some(recipient),
                Some(category),
                Some(title),
                Some(body),
                Some(data),
                Some(priority),
                Some(channels),
                Some(group_key),
                Some(deliver_at),
                Some(tenant),
            ) if errors.is_empty() => Ok((
                recipient,
                SendContent {
                    category,
                    title,
                    body,
                    data,
                    priority,
                    channels,
                    group_key,
                    deliver_at,
                    tenant,
                    template: template.map(Box::new),
                    experiment: None,
                },
            )),
            _ => Err(ApiError::invalid_fields(errors)),
        }
    }

    /// A hash of the request's meaning (keys sorted), for Idempotency-Key checks.
    pub fn fingerprint(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut canonical = String::new();
        write_canonical(&value, &mut canonical);
        let digest = Sha256::digest(canonical.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// An Idempotency-Key: 1–255 visible ASCII characters.
pub fn parse_idempotency_key(key: &str) -> Result<&str, ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "header.Idempotency-Key",
            "must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
        ));
    }
    Ok(key)
}

/// The notification id a keyed create gets: the same key always maps to the
/// same id, so repeats meet the first create in the event store.
pub fn id_for_idempotency_key(key: &str) -> uuid::Uuid {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7d1c_4f0e_2b8a_4c55_9e61_3a0f_6b2d_9c11);
    uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_key_order_but_not_values() {
        let a: CreateNotificationRequest = serde_json::from_str(
            r#"{"recipient":"a","category":"c","title":"t","body":"b","data":{"x":1,"y":2}}"#,
        )
        .unwrap();
        let b: CreateNotificationRequest = serde_json::from_str(
            r#"{"body":"b","title":"t","data":{"y":2,"x":1},"category":"c","recipient":"a"}"#,
        )
        .unwrap();
        let c: CreateNotificationRequest = serde_json::from_str(
            r#"{"recipient":"a","category":"c","title":"t","body":"B","data":{"x":1,"y":2}}"#,
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let req: CreateNotificationRequest = serde_json::from_str(
            r#"{"recipient":"","category":"Bad","title":"","body":"b","priority":"mega","channels":["pigeon"]}"#,
        )
        .unwrap();
        let Err(ApiError::Unprocessable(problem)) = req.validate(None) else {
            panic!("expected a 422");
        };
        let fields: Vec<_> = problem
            .0
            .errors
            .unwrap()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["recipient", "category", "title", "priority", "channels"]
        );
    }
}
