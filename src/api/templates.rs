//! `/v1/templates`: versioned message templates (an admin's), a preview
//! that renders one, and how a send's template problem is answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::json::{object, StrictJson};
use super::notifications::metadata;
use super::params::{Int, JsonObject, LocaleRule, TemplateKeyRule, Text, VersionRule};
use super::preferences::done;
use super::problem::{template_problem as problem, ApiError, FieldProblem};
use super::views::{rfc3339, RenderedView};
use super::ApiTags;
use crate::domain::contact::Locale;
use crate::domain::template::{
    ChannelText, LocaleText, Source, Template, TemplateCommand, TemplateError, TemplateKey,
    TemplateVersion, VariablesSchema, VersionContent, MAX_LOCALES,
};
use crate::domain::{parse_data, Channel, Data as Variables, DataProblem};
use crate::render::{check_template, VariablesCheck};
use crate::storage::Position;
use crate::AppState;

/// The largest schema accepted, as JSON.
const SCHEMA_MAX_BYTES: usize = 32 * 1024;

/// A channel's own title or body (either may be left to its locale's).
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "TemplateChannelText")]
pub struct ChannelTextBody {
    /// A template source (minijinja): up to 20,000 characters.
    #[serde(default)]
    #[oai(nullable, validator(max_length = 20000))]
    pub title: Option<String>,
    #[serde(default)]
    #[oai(nullable, validator(max_length = 20000))]
    pub body: Option<String>,
}

/// A message in one locale: template sources (minijinja, strict: a
/// variable the send lacks is an error, never an empty string).
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "TemplateLocaleText")]
pub struct LocaleTextBody {
    /// Renders to a title: 1–200 characters, one line.
    #[oai(validator(max_length = 20000))]
    pub title: String,
    /// Renders to a body: up to 10,000 characters.
    #[oai(validator(max_length = 20000))]
    pub body: String,
    /// Per channel (`email`, `sms`, ...), its own title or body.
    #[serde(default, deserialize_with = "object::map_of")]
    #[oai(nullable, validator(max_properties = 5))]
    pub channels: Option<BTreeMap<String, ChannelTextBody>>,
}

/// A new version of a template.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[oai(rename = "TemplateVersionNew")]
pub struct VersionBody {
    /// The locale a recipient's falls back to; one of `locales`.
    pub default_locale: Text<LocaleRule>,
    /// The message per locale (`en`, `pt-BR`): 1–50 of them.
    #[serde(deserialize_with = "object::required_map_of")]
    #[oai(validator(min_properties = 1, max_properties = 50))]
    pub locales: BTreeMap<String, LocaleTextBody>,
    /// A JSON Schema (up to 32 KiB) a send's `variables` must meet.
    #[serde(default)]
    #[oai(nullable)]
    pub schema: Option<JsonObject>,
    /// Publish it at once (false when absent).
    #[serde(default)]
    #[oai(nullable)]
    pub publish: Option<bool>,
}

/// One version, as added.
#[derive(Object, Debug)]
#[oai(rename = "TemplateVersion")]
pub struct VersionView {
    pub key: String,
    pub version: u64,
    pub default_locale: String,
    pub locales: BTreeMap<String, LocaleTextBody>,
    #[oai(nullable)]
    pub schema: Option<JsonObject>,
    pub added_at: String,
    /// It is the published version.
    pub published: bool,
    pub cursor: String,
    /// False when the same content was the latest version already.
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

/// A version in a template's list.
#[derive(Object, Debug)]
#[oai(rename = "TemplateVersionSummary")]
pub struct VersionSummary {
    pub version: u64,
    pub added_at: String,
    pub default_locale: String,
    pub locales: Vec<String>,
    /// Sends' variables are checked against a schema.
    pub has_schema: bool,
}

/// A template: its versions and which is published.
#[derive(Object, Debug)]
#[oai(rename = "Template")]
pub struct TemplateView {
    pub key: String,
    /// The version sends use when they name none (null: none published).
    #[oai(nullable)]
    pub published: Option<u64>,
    pub versions: Vec<VersionSummary>,
    /// Every version published, in order (a rollback too).
    pub publications: Vec<u64>,
    #[oai(nullable)]
    pub updated_at: Option<String>,
    pub cursor: String,
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

#[derive(Object, Debug)]
pub struct TemplateList {
    /// Every template, by key.
    pub items: Vec<TemplateSummary>,
}

#[derive(Object, Debug)]
pub struct TemplateSummary {
    pub key: String,
    /// How many versions it has.
    pub versions: u64,
    #[oai(nullable)]
    pub published: Option<u64>,
}

/// Which version to return to.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// An earlier version (absent: the one published before the current).
    #[serde(default)]
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000")))]
    pub version: Option<u64>,
}

/// What to render.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    /// Absent: the published version.
    #[serde(default)]
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000")))]
    pub version: Option<u64>,
    /// As a send would give them (checked against the version's schema).
    #[serde(default)]
    #[oai(nullable)]
    pub variables: Option<JsonObject>,
    /// A recipient's locale; the fallback chain picks the text (absent:
    /// the default locale).
    #[serde(default)]
    #[oai(nullable)]
    pub locale: Option<Text<LocaleRule>>,
}

/// A version rendered as a send would render it.
#[derive(Object, Debug)]
#[oai(rename = "TemplatePreview")]
pub struct PreviewView {
    pub key: String,
    pub version: u64,
    /// The locale the text is in (after fallback).
    pub locale: String,
    pub title: String,
    pub body: String,
    /// Each channel that has its own title or body.
    pub channels: BTreeMap<String, RenderedView>,
}

#[derive(ApiResponse)]
pub enum TemplateResponse {
    #[oai(status = 200)]
    Ok(Json<TemplateView>),
}

#[derive(ApiResponse)]
pub enum TemplateListResponse {
    #[oai(status = 200)]
    Ok(Json<TemplateList>),
}

#[derive(ApiResponse)]
pub enum VersionResponse {
    #[oai(status = 200)]
    Ok(Json<VersionView>),
}

#[derive(ApiResponse)]
pub enum AddVersionResponse {
    /// Added (or, `changed: false`, the latest version already said it).
    #[oai(status = 201)]
    Created(Json<VersionView>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum PreviewResponse {
    #[oai(status = 200)]
    Ok(Json<PreviewView>),
}

/// A version in a path: 1 or more (a 422 naming `path.version`).
fn parse_version(raw: i64) -> Result<u64, ApiError> {
    u64::try_from(raw).ok().filter(|v| *v >= 1).ok_or_else(|| {
        ApiError::invalid(
            "path.version",
            format!("{raw} is not a version; versions count from 1"),
        )
    })
}

fn parse_key(raw: &str) -> Result<TemplateKey, ApiError> {
    TemplateKey::parse(raw).map_err(|e| ApiError::invalid("path.key", e.0))
}

fn source(errors: &mut Vec<FieldProblem>, field: &str, raw: &str) -> Option<Source> {
    Source::parse(raw, check_template)
        .map_err(|e| {
            errors.push(FieldProblem {
                field: field.to_owned(),
                message: e.0,
            })
        })
        .ok()
}

impl VersionBody {
    /// The version's content, every refused field named at once.
    fn parse(&self) -> Result<VersionContent, ApiError> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let default_locale = Locale::parse(self.default_locale.as_str())
            .map_err(|err| {
                e.push(FieldProblem {
                    field: "default_locale".into(),
                    message: err.0,
                })
            })
            .ok();
        if self.locales.is_empty() || self.locales.len() > MAX_LOCALES {
            e.push(FieldProblem {
                field: "locales".into(),
                message: format!("{} given; give 1 to {MAX_LOCALES}", self.locales.len()),
            });
        }
        let mut locales = BTreeMap::new();
        for (raw, text) in &self.locales {
            let at = format!("locales.{raw}");
            let Some(locale) = Locale::parse(raw)
                .map_err(|err| {
                    e.push(FieldProblem {
                        field: at.clone(),
                        message: err.0,
                    })
                })
                .ok()
            else {
                continue;
            };
            let title = source(e, &format!("{at}.title"), &text.title);
            let body = source(e, &format!("{at}.body"), &text.body);
            let mut channels = BTreeMap::new();
            for (name, own) in text.channels.iter().flatten() {
                let at = format!("{at}.channels.{name}");
                let Some(channel) = Channel::parse(name)
                    .map_err(|err| {
                        e.push(FieldProblem {
                            field: at.clone(),
                            message: err.0,
                        })
                    })
                    .ok()
                else {
                    continue;
                };
                let mut part = |name: &str, raw: &Option<String>| match raw {
                    None => Some(None),
                    Some(raw) => source(e, &format!("{at}.{name}"), raw).map(Some),
                };
                if let (Some(title), Some(body)) =
                    (part("title", &own.title), part("body", &own.body))
                {
                    channels.insert(channel, ChannelText { title, body });
                }
            }
            if let (Some(title), Some(body)) = (title, body) {
                if locales
                    .insert(
                        locale.clone(),
                        LocaleText {
                            title,
                            body,
                            channels,
                        },
                    )
                    .is_some()
                {
                    e.push(FieldProblem {
                        field: at,
                        message: format!("`{locale}` is given twice (in other spellings)"),
                    });
                }
            }
        }
        let schema = match &self.schema {
            None => None,
            Some(JsonObject(value)) if !value.is_object() => {
                e.push(FieldProblem {
                    field: "schema".into(),
                    message: "must be a JSON Schema object".into(),
                });
                None
            }
            Some(JsonObject(value)) => {
                let size = serde_json::to_string(value).map_or(usize::MAX, |s| s.len());
                if size > SCHEMA_MAX_BYTES {
                    e.push(FieldProblem {
                        field: "schema".into(),
                        message: format!(
                            "is {size} bytes as JSON; the limit is {SCHEMA_MAX_BYTES}"
                        ),
                    });
                    None
                } else {
                    match VariablesCheck::compile(value) {
                        Ok(_) => Some(VariablesSchema(value.clone())),
                        Err(why) => {
                            e.push(FieldProblem {
                                field: "schema".into(),
                                message: format!("is not a JSON Schema tidings can use: {why}"),
                            });
                            None
                        }
                    }
                }
            }
        };
        let Some(default_locale) = default_locale else {
            return Err(ApiError::invalid_fields(errors));
        };
        let content = done(errors, ()).and_then(|()| {
            VersionContent::new(default_locale, locales, schema)
                .map_err(|err| ApiError::invalid("default_locale", err.to_string()))
        })?;
        Ok(content)
    }
}

fn text_body(text: &LocaleText) -> LocaleTextBody {
    LocaleTextBody {
        title: text.title.as_str().to_owned(),
        body: text.body.as_str().to_owned(),
        channels: (!text.channels.is_empty()).then(|| {
            text.channels
                .iter()
                .map(|(c, own)| {
                    (
                        c.as_str().to_owned(),
                        ChannelTextBody {
                            title: own.title.as_ref().map(|s| s.as_str().to_owned()),
                            body: own.body.as_ref().map(|s| s.as_str().to_owned()),
                        },
                    )
                })
                .collect()
        }),
    }
}

fn version_view(
    key: &TemplateKey,
    template: &Template,
    version: &TemplateVersion,
    position: Position,
    changed: Option<bool>,
) -> VersionView {
    let content = &version.content;
    VersionView {
        key: key.as_str().to_owned(),
        version: version.number,
        default_locale: content.default_locale.as_str().to_owned(),
        locales: content
            .locales
            .iter()
            .map(|(l, t)| (l.as_str().to_owned(), text_body(t)))
            .collect(),
        schema: content.schema.as_ref().map(|s| JsonObject(s.0.clone())),
        added_at: rfc3339(version.added_at),
        published: template.published == Some(version.number),
        cursor: position.to_cursor(),
        changed,
    }
}

fn template_view(
    key: &TemplateKey,
    template: &Template,
    position: Position,
    changed: Option<bool>,
) -> TemplateView {
    TemplateView {
        key: key.as_str().to_owned(),
        published: template.published,
        versions: template
            .versions
            .iter()
            .map(|v| VersionSummary {
                version: v.number,
                added_at: rfc3339(v.added_at),
                default_locale: v.content.default_locale.as_str().to_owned(),
                locales: v
                    .content
                    .locales
                    .keys()
                    .map(|l| l.as_str().to_owned())
                    .collect(),
                has_schema: v.content.schema.is_some(),
            })
            .collect(),
        publications: template.publications.clone(),
        updated_at: template.updated_at.map(rfc3339),
        cursor: position.to_cursor(),
        changed,
    }
}

fn no_template(key: &TemplateKey) -> ApiError {
    ApiError::not_found(format!(
        "no template `{key}` exists; add a version with POST /v1/templates/{key}/versions"
    ))
}

/// The most templates one list answers.
const LIST_MAX: usize = 10_000;

pub struct TemplatesApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Templates")]
impl TemplatesApi {
    /// Every template
    #[oai(path = "/templates", method = "get", operation_id = "listTemplates")]
    async fn list_templates(&self) -> Result<TemplateListResponse, ApiError> {
        let last = self
            .state
            .log
            .latest(
                crate::domain::template::TEMPLATE_TYPE,
                None,
                &[
                    "TemplateVersionAdded",
                    "TemplateVersionPublished",
                    "TemplateRolledBack",
                ],
                LIST_MAX,
            )
            .await?;
        let mut items: BTreeMap<String, TemplateSummary> = BTreeMap::new();
        for event in &last {
            let entry =
                items
                    .entry(event.aggregate_id.clone())
                    .or_insert_with(|| TemplateSummary {
                        key: event.aggregate_id.clone(),
                        versions: 0,
                        published: None,
                    });
            let Ok(decoded) = event.decode::<crate::domain::template::TemplateEvent>() else {
                continue;
            };
            use crate::domain::template::TemplateEvent as E;
            match decoded {
                E::TemplateVersionAdded { version, .. } => {
                    entry.versions = entry.versions.max(version)
                }
                // The later of the two (a stream's events come in order).
                E::TemplateVersionPublished { version, .. }
                | E::TemplateRolledBack { version, .. } => entry.published = Some(version),
            }
        }
        Ok(TemplateListResponse::Ok(Json(TemplateList {
            items: items.into_values().collect(),
        })))
    }

    /// A template: its versions and which is published
    #[oai(path = "/templates/:key", method = "get", operation_id = "getTemplate")]
    async fn get_template(
        &self,
        key: Path<Text<TemplateKeyRule>>,
    ) -> Result<TemplateResponse, ApiError> {
        let key = parse_key(key.0.as_str())?;
        let current = self
            .state
            .templates
            .commands
            .current(key.as_str(), None)
            .await?;
        if current.state.versions.is_empty() {
            return Err(no_template(&key));
        }
        Ok(TemplateResponse::Ok(Json(template_view(
            &key,
            &current.state,
            current.position,
            None,
        ))))
    }

    /// Add a version
    ///
    /// Versions never change once added; sends use the published one
    /// unless they name another. Recorded as `TemplateVersionAdded` (and
    /// `TemplateVersionPublished` with `publish: true`); the same content
    /// as the latest version adds nothing (`changed: false`).
    #[oai(
        path = "/templates/:key/versions",
        method = "post",
        operation_id = "addTemplateVersion"
    )]
    #[instrument(skip_all)]
    async fn add_version(
        &self,
        ctx: Data<&RequestContext>,
        key: Path<Text<TemplateKeyRule>>,
        body: StrictJson<VersionBody>,
    ) -> Result<AddVersionResponse, ApiError> {
        let key = parse_key(key.0.as_str())?;
        let content = body.0.parse()?;
        let publish = body.0.publish.unwrap_or(false);
        let decided = self
            .state
            .templates
            .commands
            .execute(
                key.as_str(),
                |at| TemplateCommand::AddVersion {
                    content: content.clone(),
                    publish,
                    at,
                },
                &metadata(&ctx),
                false,
            )
            .await?;
        // The version added, or the latest that already said the same.
        let version = decided
            .state
            .versions
            .last()
            .ok_or_else(|| ApiError::internal(&TemplateError::NoVersions))?;
        let location = format!("/v1/templates/{key}/versions/{}", version.number);
        Ok(AddVersionResponse::Created(
            Json(version_view(
                &key,
                &decided.state,
                version,
                decided.position,
                Some(decided.changed),
            )),
            location,
        ))
    }

    /// One version of a template
    #[oai(
        path = "/templates/:key/versions/:version",
        method = "get",
        operation_id = "getTemplateVersion"
    )]
    async fn get_version(
        &self,
        key: Path<Text<TemplateKeyRule>>,
        version: Path<Int<VersionRule>>,
    ) -> Result<VersionResponse, ApiError> {
        let key = parse_key(key.0.as_str())?;
        let version = parse_version(version.0 .0)?;
        let current = self
            .state
            .templates
            .commands
            .current(key.as_str(), None)
            .await?;
        if current.state.versions.is_empty() {
            return Err(no_template(&key));
        }
        let chosen = current.state.version(Some(version))?;
        Ok(VersionResponse::Ok(Json(version_view(
            &key,
            &current.state,
            chosen,
            current.position,
            None,
        ))))
    }

    /// Publish a version
    ///
    /// Sends that name no version use it from now on; notifications
    /// already created keep the text they were rendered with.
    #[oai(
        path = "/templates/:key/versions/:version/publish",
        method = "post",
        operation_id = "publishTemplateVersion"
    )]
    #[instrument(skip_all)]
    async fn publish(
        &self,
        ctx: Data<&RequestContext>,
        key: Path<Text<TemplateKeyRule>>,
        version: Path<Int<VersionRule>>,
    ) -> Result<TemplateResponse, ApiError> {
        let key = parse_key(key.0.as_str())?;
        let version = parse_version(version.0 .0)?;
        let decided = self
            .state
            .templates
            .commands
            .execute(
                key.as_str(),
                |at| TemplateCommand::Publish { version, at },
                &metadata(&ctx),
                false,
            )
            .await
            .map_err(|e| match e {
                crate::commands::CommandError::Rejected(TemplateError::NoVersions) => {
                    no_template(&key)
                }
                other => other.into(),
            })?;
        Ok(TemplateResponse::Ok(Json(template_view(
            &key,
            &decided.state,
            decided.position,
            Some(decided.changed),
        ))))
    }

    /// Roll back to an earlier version
    ///
    /// To `version`, or (absent) to the version published before the
    /// current one. Recorded as `TemplateRolledBack`.
    #[oai(
        path = "/templates/:key/rollback",
        method = "post",
        operation_id = "rollBackTemplate"
    )]
    #[instrument(skip_all)]
    async fn roll_back(
        &self,
        ctx: Data<&RequestContext>,
        key: Path<Text<TemplateKeyRule>>,
        body: StrictJson<RollbackBody>,
    ) -> Result<TemplateResponse, ApiError> {
        let key = parse_key(key.0.as_str())?;
        let to = body.0.version;
        if to == Some(0) {
            return Err(ApiError::invalid("version", "versions count from 1"));
        }
        let decided = self
            .state
            .templates
            .commands
            .execute(
                key.as_str(),
                |at| TemplateCommand::RollBack { to, at },
                &metadata(&ctx),
                false,
            )
            .await
            .map_err(|e| match e {
                crate::commands::CommandError::Rejected(TemplateError::NoVersions) => {
                    no_template(&key)
                }
                other => other.into(),
            })?;
        Ok(TemplateResponse::Ok(Json(template_view(
            &key,
            &decided.state,
            decided.position,
            Some(decided.changed),
        ))))
    }

    /// Render a version
    ///
    /// As a send would: the variables checked against the version's
    /// schema, the text for `locale` after fallback. A variable the
    /// template uses and the variables lack is a 422 that names it.
    #[oai(
        path = "/templates/:key/preview",
        method = "post",
        operation_id = "previewTemplate"
    )]
    async fn preview(
        &self,
        key: Path<Text<TemplateKeyRule>>,
        body: StrictJson<PreviewBody>,
    ) -> Result<PreviewResponse, ApiError> {
        let key = parse_key(key.0.as_str())?;
        let request = body.0;
        let mut errors = Vec::new();
        if request.version == Some(0) {
            errors.push(FieldProblem {
                field: "version".into(),
                message: "versions count from 1".into(),
            });
        }
        let locale = match &request.locale {
            None => None,
            Some(raw) => Locale::parse(raw.as_str())
                .map_err(|e| {
                    errors.push(FieldProblem {
                        field: "locale".into(),
                        message: e.0,
                    })
                })
                .ok(),
        };
        let variables = match request.variables.as_ref().map(|v| &v.0) {
            None => Some(Variables::new()),
            Some(serde_json::Value::Object(map)) => match parse_data(map) {
                Ok(v) => Some(v),
                Err(DataProblem { path, why }) => {
                    errors.push(FieldProblem {
                        field: path.replacen("data", "variables", 1),
                        message: why.0,
                    });
                    None
                }
            },
            Some(_) => {
                errors.push(FieldProblem {
                    field: "variables".into(),
                    message: "must be a JSON object".into(),
                });
                None
            }
        };
        let variables = done(errors, variables.unwrap_or_default())?;
        let current = self
            .state
            .templates
            .commands
            .current(key.as_str(), None)
            .await?;
        if current.state.versions.is_empty() {
            return Err(no_template(&key));
        }
        let used = self
            .state
            .templates
            .resolve_in(&key, &current.state, request.version, &variables)
            .map_err(|e| problem(e, "version"))?;
        let (locale, text) = used.for_locale(locale.as_ref());
        Ok(PreviewResponse::Ok(Json(PreviewView {
            key: key.as_str().to_owned(),
            version: used.version,
            locale: locale.as_str().to_owned(),
            title: text.title.as_str().to_owned(),
            body: text.body.as_str().to_owned(),
            channels: text
                .channels
                .iter()
                .map(|(c, r)| (c.as_str().to_owned(), RenderedView::from(r)))
                .collect(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_body_reports_every_refused_field_at_once() {
        let body: VersionBody = serde_json::from_value(serde_json::json!({
            "default_locale": "en",
            "locales": {
                "en": {"title": "{{ oops", "body": "fine",
                       "channels": {"pigeon": {"title": "x"}, "email": {"body": "{% if %}"}}},
                "not a tag": {"title": "t", "body": "b"}
            },
            "schema": {"type": "nonsense"}
        }))
        .unwrap();
        let Err(ApiError::Unprocessable(problem)) = body.parse() else {
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
            [
                "locales.en.title",
                "locales.en.channels.email.body",
                "locales.en.channels.pigeon",
                "locales.not a tag",
                "schema"
            ]
        );
    }
}
