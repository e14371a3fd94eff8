//! A template: one stream per key, holding numbered versions of a message
//! (a title and a body per locale, each channel optionally its own) with
//! an optional JSON Schema its variables must meet, and which version is
//! published. A version never changes once added: a notification records
//! the version it used and the text rendered from it, so a new version, a
//! publish or a rollback never changes a notification already created,
//! scheduled or batched.
//!
//! Locale fallback (RFC 4647 lookup): the recipient's tag, then the tag
//! shortened one subtag at a time (`zh-Hant-TW`, `zh-Hant`, `zh`), then
//! the version's default locale. A channel without its own title or body
//! uses the locale's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::contact::Locale;
use super::values::{Body, Channel, InvalidValue, Title};
use super::{Data, Timestamp};

pub const TEMPLATE_EVENT_VERSION: &str = "1.0";
pub const TEMPLATE_TYPE: &str = "Template";

/// The most versions one template keeps.
pub const MAX_VERSIONS: u64 = 1_000;
/// The most locales one version holds.
pub const MAX_LOCALES: usize = 50;
/// The longest template source, in characters.
pub const SOURCE_MAX_CHARS: usize = 20_000;
/// The longest template key, in bytes.
pub const KEY_MAX_BYTES: usize = 64;

/// A template's name (`welcome`, `billing.invoice`): lowercase letters,
/// digits and `. _ - :`, 1–64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateKey(String);

impl TemplateKey {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > KEY_MAX_BYTES {
            return Err(InvalidValue(format!(
                "must be 1 to {KEY_MAX_BYTES} characters long"
            )));
        }
        let ok = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | ':')
        };
        if let Some(c) = s.chars().find(|c| !ok(*c)) {
            return Err(InvalidValue(format!(
                "contains `{c}`; use lowercase letters, digits and . _ - : only"
            )));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TemplateKey {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        Self::parse(&s)
    }
}

impl From<TemplateKey> for String {
    fn from(k: TemplateKey) -> Self {
        k.0
    }
}

impl fmt::Display for TemplateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A template's source text (`Hello {{ name }}`): up to 20,000
/// characters, without U+0000, accepted by the template engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Source(String);

impl Source {
    /// A source whose syntax `check` accepts (the template engine's).
    pub fn parse(
        s: &str,
        check: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<Self, InvalidValue> {
        let chars = s.chars().count();
        if chars > SOURCE_MAX_CHARS {
            return Err(InvalidValue(format!(
                "is {chars} characters long; the limit is {SOURCE_MAX_CHARS}"
            )));
        }
        if s.contains('\0') {
            return Err(InvalidValue("must not contain U+0000".into()));
        }
        check(s).map_err(|e| InvalidValue(format!("is not a template: {e}")))?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Source {
    type Error = InvalidValue;
    /// As stored: checked when it was added.
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        Self::parse(&s, |_| Ok(()))
    }
}

impl From<Source> for String {
    fn from(s: Source) -> Self {
        s.0
    }
}

/// A JSON Schema the variables of a send must meet, as given (checked to
/// be a schema when it was added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VariablesSchema(pub serde_json::Value);

/// A channel's own title or body, where it differs from its locale's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelText {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Source>,
}

/// A message in one locale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocaleText {
    pub title: Source,
    pub body: Source,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<Channel, ChannelText>,
}

/// What one version says: valid by construction (`VersionContent::new`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionContent {
    /// The locale a recipient's falls back to; one of `locales`.
    pub default_locale: Locale,
    pub locales: BTreeMap<Locale, LocaleText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<VariablesSchema>,
}

/// Why a version's content cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentProblem {
    #[error("the default locale `{0}` has no text in `locales`")]
    DefaultMissing(Locale),
    #[error("{0} locales given; give 1 to {MAX_LOCALES}")]
    LocaleCount(usize),
}

impl VersionContent {
    pub fn new(
        default_locale: Locale,
        locales: BTreeMap<Locale, LocaleText>,
        schema: Option<VariablesSchema>,
    ) -> Result<Self, ContentProblem> {
        if locales.is_empty() || locales.len() > MAX_LOCALES {
            return Err(ContentProblem::LocaleCount(locales.len()));
        }
        if !locales.contains_key(&default_locale) {
            return Err(ContentProblem::DefaultMissing(default_locale));
        }
        Ok(Self {
            default_locale,
            locales,
            schema,
        })
    }

    /// Every locale and channel rendered with `variables` (the template's
    /// context), or the first that fails, named by its field.
    pub fn render(
        &self,
        variables: &Data,
    ) -> Result<BTreeMap<Locale, RenderedLocale>, RenderError> {
        let context = serde_json::Value::Object(variables.clone());
        let mut rendered = BTreeMap::new();
        for (locale, text) in &self.locales {
            let at = |part: &str| format!("locales.{locale}.{part}");
            let title = render_title(&text.title, &context, &at("title"))?;
            let body = render_body(&text.body, &context, &at("body"))?;
            let mut channels = BTreeMap::new();
            for (channel, own) in &text.channels {
                let at = |part: &str| at(&format!("channels.{}.{part}", channel.as_str()));
                channels.insert(
                    *channel,
                    Rendered {
                        title: match &own.title {
                            Some(t) => render_title(t, &context, &at("title"))?,
                            None => title.clone(),
                        },
                        body: match &own.body {
                            Some(b) => render_body(b, &context, &at("body"))?,
                            None => body.clone(),
                        },
                    },
                );
            }
            rendered.insert(
                locale.clone(),
                RenderedLocale {
                    title,
                    body,
                    channels,
                },
            );
        }
        Ok(rendered)
    }
}

fn render_source(
    source: &Source,
    context: &serde_json::Value,
    field: &str,
) -> Result<String, RenderError> {
    crate::render::render(source.as_str(), context).map_err(|message| RenderError {
        field: field.to_owned(),
        message,
    })
}

fn render_title(
    source: &Source,
    context: &serde_json::Value,
    field: &str,
) -> Result<Title, RenderError> {
    let text = render_source(source, context, field)?;
    Title::parse(&text).map_err(|e| RenderError {
        field: field.to_owned(),
        message: format!("renders as a title that {}", e.0),
    })
}

fn render_body(
    source: &Source,
    context: &serde_json::Value,
    field: &str,
) -> Result<Body, RenderError> {
    let text = render_source(source, context, field)?;
    Body::parse(&text).map_err(|e| RenderError {
        field: field.to_owned(),
        message: format!("renders as a body that {}", e.0),
    })
}

/// A render that failed: which source (`locales.fr.channels.email.body`)
/// and why, in the engine's words (`` `name` is undefined ``).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RenderError {
    pub field: String,
    pub message: String,
}

/// A title and a body, rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub title: Title,
    pub body: Body,
}

/// One locale of a version, rendered: its own title and body, and each
/// channel that has its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedLocale {
    pub title: Title,
    pub body: Body,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<Channel, Rendered>,
}

/// The locale of `available` used for `wanted`: the tag itself, then the
/// tag shortened one subtag at a time, then `default`.
pub fn lookup<'a, V>(
    available: &'a BTreeMap<Locale, V>,
    default: &'a Locale,
    wanted: Option<&Locale>,
) -> &'a Locale {
    let Some(wanted) = wanted else {
        return default;
    };
    let mut tag = wanted.as_str();
    loop {
        if let Some((found, _)) = available.iter().find(|(l, _)| l.as_str() == tag) {
            return found;
        }
        match tag.rfind('-') {
            Some(cut) => tag = &tag[..cut],
            None => return default,
        }
    }
}

/// A send's template, resolved: the version it uses, rendered in every
/// locale; each recipient gets the locale their profile's falls back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateUse {
    pub key: TemplateKey,
    pub version: u64,
    pub default_locale: Locale,
    pub locales: BTreeMap<Locale, RenderedLocale>,
}

impl TemplateUse {
    /// The text for a recipient whose locale is `wanted`, and its locale.
    pub fn for_locale(&self, wanted: Option<&Locale>) -> (&Locale, &RenderedLocale) {
        let locale = lookup(&self.locales, &self.default_locale, wanted);
        match self.locales.get(locale) {
            Some(text) => (locale, text),
            // `default_locale` is one of `locales` (`VersionContent::new`).
            None => self
                .locales
                .iter()
                .next()
                .expect("a resolved template has a locale"),
        }
    }

    /// The text in the default locale.
    pub fn default_text(&self) -> &RenderedLocale {
        self.for_locale(None).1
    }
}

/// What a notification records of the template it was rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    pub key: TemplateKey,
    pub version: u64,
    /// The locale its text is in.
    pub locale: Locale,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TemplateCommand {
    /// A new version (nothing when it says what the latest says);
    /// `publish`: publish it too.
    AddVersion {
        content: VersionContent,
        publish: bool,
        at: Timestamp,
    },
    Publish {
        version: u64,
        at: Timestamp,
    },
    /// Back to an earlier version: `to`, or the one published before the
    /// current one.
    RollBack {
        to: Option<u64>,
        at: Timestamp,
    },
}

impl TemplateCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::AddVersion { .. } => "AddTemplateVersion",
            Self::Publish { .. } => "PublishTemplateVersion",
            Self::RollBack { .. } => "RollBackTemplate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateEvent {
    TemplateVersionAdded {
        version: u64,
        content: VersionContent,
        added_at: Timestamp,
    },
    TemplateVersionPublished {
        version: u64,
        /// The version published until then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<u64>,
        published_at: Timestamp,
    },
    TemplateRolledBack {
        version: u64,
        /// The version published until then.
        from: u64,
        rolled_back_at: Timestamp,
    },
}

impl TemplateEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::TemplateVersionAdded { .. } => "TemplateVersionAdded",
            Self::TemplateVersionPublished { .. } => "TemplateVersionPublished",
            Self::TemplateRolledBack { .. } => "TemplateRolledBack",
        }
    }

    fn occurred_at(&self) -> Timestamp {
        match self {
            Self::TemplateVersionAdded { added_at: t, .. }
            | Self::TemplateVersionPublished {
                published_at: t, ..
            }
            | Self::TemplateRolledBack {
                rolled_back_at: t, ..
            } => *t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template has no version {0}")]
    NoSuchVersion(u64),
    #[error("the template has no version yet; add one first")]
    NoVersions,
    #[error("no version of the template is published; publish one (or name a version)")]
    NothingPublished,
    #[error(
        "version {to} is not earlier than the published version {published}; publish it instead"
    )]
    NotEarlier { to: u64, published: u64 },
    #[error("no version earlier than the published one was published before; name the version to roll back to")]
    NothingToRollBackTo,
    #[error("the template has {MAX_VERSIONS} versions, the most one keeps; use a new key")]
    TooManyVersions,
}

/// One version as added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub number: u64,
    pub content: VersionContent,
    pub added_at: Timestamp,
}

/// A template as its events leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Version `n` at index `n - 1`.
    pub versions: Vec<TemplateVersion>,
    pub published: Option<u64>,
    /// Every version published, in the order they were (rollbacks too).
    pub publications: Vec<u64>,
    pub updated_at: Option<Timestamp>,
}

impl Template {
    /// Version `number`, or (None) the published one.
    pub fn version(&self, number: Option<u64>) -> Result<&TemplateVersion, TemplateError> {
        if self.versions.is_empty() {
            return Err(TemplateError::NoVersions);
        }
        let number = match number {
            Some(n) => n,
            None => self.published.ok_or(TemplateError::NothingPublished)?,
        };
        number
            .checked_sub(1)
            .and_then(|i| self.versions.get(i as usize))
            .ok_or(TemplateError::NoSuchVersion(number))
    }

    /// What a rollback without a version returns to: the latest version
    /// published before, earlier than the current one.
    fn rollback_target(&self) -> Option<u64> {
        let current = self.published?;
        self.publications
            .iter()
            .rev()
            .copied()
            .find(|v| *v < current)
    }

    pub fn decide(&self, command: TemplateCommand) -> Result<Vec<TemplateEvent>, TemplateError> {
        use TemplateEvent as E;
        match command {
            TemplateCommand::AddVersion {
                content,
                publish,
                at,
            } => {
                let latest = self.versions.last();
                let mut events = Vec::new();
                let number = match latest {
                    Some(v) if v.content == content => v.number,
                    _ => {
                        let number = self.versions.len() as u64 + 1;
                        if number > MAX_VERSIONS {
                            return Err(TemplateError::TooManyVersions);
                        }
                        events.push(E::TemplateVersionAdded {
                            version: number,
                            content,
                            added_at: at,
                        });
                        number
                    }
                };
                if publish && self.published != Some(number) {
                    events.push(E::TemplateVersionPublished {
                        version: number,
                        previous: self.published,
                        published_at: at,
                    });
                }
                Ok(events)
            }
            TemplateCommand::Publish { version, at } => {
                self.version(Some(version))?;
                if self.published == Some(version) {
                    return Ok(vec![]);
                }
                Ok(vec![E::TemplateVersionPublished {
                    version,
                    previous: self.published,
                    published_at: at,
                }])
            }
            TemplateCommand::RollBack { to, at } => {
                if self.versions.is_empty() {
                    return Err(TemplateError::NoVersions);
                }
                let published = self.published.ok_or(TemplateError::NothingPublished)?;
                let to = match to {
                    Some(to) => {
                        self.version(Some(to))?;
                        if to >= published {
                            return Err(TemplateError::NotEarlier { to, published });
                        }
                        to
                    }
                    None => self
                        .rollback_target()
                        .ok_or(TemplateError::NothingToRollBackTo)?,
                };
                Ok(vec![E::TemplateRolledBack {
                    version: to,
                    from: published,
                    rolled_back_at: at,
                }])
            }
        }
    }

    pub fn apply(&mut self, event: TemplateEvent) {
        let t = event.occurred_at();
        self.updated_at = Some(self.updated_at.map_or(t, |last| last.max(t)));
        match event {
            TemplateEvent::TemplateVersionAdded {
                version,
                content,
                added_at,
            } => self.versions.push(TemplateVersion {
                number: version,
                content,
                added_at,
            }),
            TemplateEvent::TemplateVersionPublished { version, .. }
            | TemplateEvent::TemplateRolledBack { version, .. } => {
                self.published = Some(version);
                self.publications.push(version);
            }
        }
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
