//! Preferences and the settings they resolve against:
//! `GET|PUT /v1/users/{user}/preferences` (the user's choices, and the
//! resolved matrix with the level that decided each cell, `?as_of=` a past
//! time), `GET|PUT /v1/categories/{category}` (default channels, critical),
//! `GET|PUT /v1/tenants/{tenant}/preferences` (a tenant's defaults).

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};
use tracing::instrument;

use super::context::RequestContext;
use super::inbox::parse_as_of;
use super::json::{object, StrictJson};
use super::notifications::metadata;
use super::params::{AsOfRule, LevelRule, LocalTimeRule, TenantRule, Text, UserRule};
use super::problem::{ApiError, FieldProblem};
use super::views::rfc3339;
use super::ApiTags;
use crate::access::Principal;
use crate::commands::audience::Snapshot;
use crate::domain::contact::TenantId;
use crate::domain::preferences::{CategoryChoice, LocalTime, Preferences, QuietHours, Switches};
use crate::domain::recipient::RecipientCommand;
use crate::domain::{Category, Channel, Timestamp, UserId};
use crate::storage::Position;
use crate::AppState;

/// The most categories one set of preferences names.
pub const MAX_CATEGORIES: usize = 100;

/// On (`true`) or off (`false`) per channel; a channel absent (or `null`)
/// is left to the next level.
#[derive(Object, Deserialize, Serialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "ChannelSwitches")]
pub struct SwitchesBody {
    #[serde(default)]
    #[oai(nullable)]
    pub in_app: Option<bool>,
    #[serde(default)]
    #[oai(nullable)]
    pub email: Option<bool>,
    #[serde(default)]
    #[oai(nullable)]
    pub sms: Option<bool>,
    #[serde(default)]
    #[oai(nullable)]
    pub push: Option<bool>,
    #[serde(default)]
    #[oai(nullable)]
    pub chat: Option<bool>,
}

impl SwitchesBody {
    pub(super) fn switches(&self) -> Switches {
        [
            (Channel::InApp, self.in_app),
            (Channel::Email, self.email),
            (Channel::Sms, self.sms),
            (Channel::Push, self.push),
            (Channel::Chat, self.chat),
        ]
        .into_iter()
        .filter_map(|(c, on)| on.map(|on| (c, on)))
        .collect()
    }
}

/// One category's choices.
#[derive(Object, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "CategoryChoice")]
pub struct CategoryChoiceBody {
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub channels: Option<SwitchesBody>,
}

/// Quiet hours in the user's time zone (the profile's; UTC without one),
/// across midnight when `end` comes first.
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "QuietHours")]
pub struct QuietHoursBody {
    pub start: Text<LocalTimeRule>,
    pub end: Text<LocalTimeRule>,
}

/// A user's preferences, whole: what is absent is left to the next level.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[oai(rename = "PreferencesReplace")]
pub struct PreferencesBody {
    /// For every category.
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub channels: Option<SwitchesBody>,
    /// Per category (at most 100), beating `channels`.
    #[serde(default, deserialize_with = "object::map_of")]
    #[oai(nullable, validator(max_properties = 100))]
    pub categories: Option<BTreeMap<String, CategoryChoiceBody>>,
    /// Holds non-urgent in-app and push deliveries until they end.
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub quiet_hours: Option<QuietHoursBody>,
}

pub(super) fn parse_categories(
    raw: Option<&BTreeMap<String, CategoryChoiceBody>>,
    errors: &mut Vec<FieldProblem>,
) -> BTreeMap<Category, CategoryChoice> {
    let Some(raw) = raw else {
        return BTreeMap::new();
    };
    if raw.len() > MAX_CATEGORIES {
        errors.push(FieldProblem {
            field: "categories".into(),
            message: format!("{} categories; at most {MAX_CATEGORIES}", raw.len()),
        });
        return BTreeMap::new();
    }
    raw.iter()
        .filter_map(|(name, choice)| match Category::parse(name) {
            Ok(category) => Some((
                category,
                CategoryChoice {
                    channels: choice
                        .channels
                        .as_ref()
                        .map(SwitchesBody::switches)
                        .unwrap_or_default(),
                },
            )),
            Err(e) => {
                errors.push(FieldProblem {
                    field: format!("categories.{name}"),
                    message: format!("is not a category: {}", e.0),
                });
                None
            }
        })
        // A category with nothing chosen says nothing: not kept.
        .filter(|(_, choice)| !choice.channels.is_empty())
        .collect()
}

pub(super) fn done<T>(errors: Vec<FieldProblem>, value: T) -> Result<T, ApiError> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

impl PreferencesBody {
    fn parse(&self) -> Result<Preferences, ApiError> {
        let mut errors = Vec::new();
        let categories = parse_categories(self.categories.as_ref(), &mut errors);
        let quiet_hours = self.quiet_hours.as_ref().and_then(|q| {
            let mut time = |field: &str, raw: &str| match LocalTime::parse(raw) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(FieldProblem {
                        field: format!("quiet_hours.{field}"),
                        message: e.0,
                    });
                    None
                }
            };
            let (start, end) = (time("start", q.start.as_str()), time("end", q.end.as_str()));
            match QuietHours::new(start?, end?) {
                Ok(q) => Some(q),
                Err(e) => {
                    errors.push(FieldProblem {
                        field: "quiet_hours".into(),
                        message: e.0,
                    });
                    None
                }
            }
        });
        let preferences = Preferences {
            channels: self
                .channels
                .as_ref()
                .map(SwitchesBody::switches)
                .unwrap_or_default(),
            categories,
            quiet_hours,
        };
        done(errors, preferences)
    }
}

/// One category's choices, as answered.
#[derive(Object, Debug)]
#[oai(rename = "CategoryChoiceView")]
pub struct CategoryChoiceView {
    pub channels: BTreeMap<String, bool>,
}

#[derive(Object, Debug)]
#[oai(rename = "QuietHoursView")]
pub struct QuietHoursView {
    pub start: String,
    pub end: String,
}

/// One resolved cell.
#[derive(Object, Debug)]
pub struct Cell {
    pub enabled: bool,
    /// `critical`, `user`, `tenant`, `category` or `default`.
    pub level: Text<LevelRule>,
    /// That level's version (the user's preferences, the tenant's
    /// defaults, the category's settings; 0 for the default).
    pub version: u64,
}

pub(super) fn switches_view(switches: &Switches) -> BTreeMap<String, bool> {
    switches
        .iter()
        .map(|(c, on)| (c.as_str().to_owned(), *on))
        .collect()
}

pub(super) fn categories_view(prefs: &Preferences) -> BTreeMap<String, CategoryChoiceView> {
    prefs
        .categories
        .iter()
        .map(|(c, choice)| {
            (
                c.as_str().to_owned(),
                CategoryChoiceView {
                    channels: switches_view(&choice.channels),
                },
            )
        })
        .collect()
}

/// A user's preferences: their choices, and the matrix they resolve to.
#[derive(Object, Debug)]
#[oai(rename = "Preferences")]
pub struct PreferencesView {
    pub user: String,
    /// The user's choices for every category.
    pub channels: BTreeMap<String, bool>,
    /// The user's choices per category.
    pub categories: BTreeMap<String, CategoryChoiceView>,
    #[oai(nullable)]
    pub quiet_hours: Option<QuietHoursView>,
    /// The time zone quiet hours are read in (the profile's).
    pub time_zone: String,
    /// The tenant whose defaults were resolved against (`?tenant=`, else
    /// the profile's).
    #[oai(nullable)]
    pub tenant: Option<String>,
    /// How many changes the preferences have had (0: none set).
    pub version: u64,
    #[oai(nullable)]
    pub updated_at: Option<String>,
    /// Per category (each configured one, each the user or the tenant
    /// names, and `*` for every other) and channel: on or off, and which
    /// level decided.
    pub resolved: BTreeMap<String, BTreeMap<String, Cell>>,
    /// The log position of the latest change read of the user and the
    /// tenant.
    pub cursor: String,
    /// Set when answering `?as_of=`.
    #[oai(skip_serializing_if_is_none)]
    pub as_of: Option<String>,
    /// On a `PUT`: false when it changed nothing.
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

impl PreferencesView {
    fn of(user: &UserId, snapshot: &Snapshot) -> Self {
        let recipient = &snapshot.recipient.state;
        let prefs = &recipient.preferences;
        let resolver = snapshot.resolver();
        let mut rows: Vec<(String, Option<Category>)> = Vec::new();
        let mut named: std::collections::BTreeSet<&Category> = snapshot.categories.keys().collect();
        named.extend(prefs.categories());
        if let Some((_, t)) = &snapshot.tenant {
            named.extend(t.state.defaults.categories());
        }
        rows.extend(
            named
                .into_iter()
                .map(|c| (c.as_str().to_owned(), Some(c.clone()))),
        );
        // `*`: any category nobody named (no category is called that).
        rows.push(("*".to_owned(), None));
        let resolved = rows
            .into_iter()
            .map(|(name, category)| {
                let cells = Channel::ALL
                    .iter()
                    .map(|channel| {
                        let d = resolver.decide_in(category.as_ref(), *channel);
                        (
                            channel.as_str().to_owned(),
                            Cell {
                                enabled: d.enabled,
                                level: Text::new(d.level.as_str()),
                                version: d.version,
                            },
                        )
                    })
                    .collect();
                (name, cells)
            })
            .collect();
        Self {
            user: user.as_str().to_owned(),
            channels: switches_view(&prefs.channels),
            categories: categories_view(prefs),
            quiet_hours: prefs.quiet_hours.map(|q| QuietHoursView {
                start: q.start.to_string(),
                end: q.end.to_string(),
            }),
            time_zone: recipient.profile.time_zone().name().to_owned(),
            tenant: snapshot.tenant.as_ref().map(|(t, _)| t.to_string()),
            version: recipient.preferences_version,
            updated_at: recipient.preferences_changed_at.map(rfc3339),
            resolved,
            cursor: snapshot.position().to_cursor(),
            as_of: None,
            changed: None,
        }
    }
}

#[derive(ApiResponse)]
pub enum PreferencesResponse {
    #[oai(status = 200)]
    Ok(Json<PreferencesView>),
}

impl From<std::convert::Infallible> for ApiError {
    fn from(err: std::convert::Infallible) -> Self {
        match err {}
    }
}

pub(super) fn parse_tenant(field: &str, raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|e| ApiError::invalid(field, e.0))
}

pub struct PreferencesApi {
    pub state: Arc<AppState>,
}

impl PreferencesApi {
    async fn snapshot(
        &self,
        user: &UserId,
        tenant: Option<&TenantId>,
        until: Option<(Position, Timestamp)>,
    ) -> Result<Snapshot, ApiError> {
        Ok(self.state.audience.user(user, tenant, until).await?)
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Recipients")]
impl PreferencesApi {
    /// A user's preferences, resolved
    ///
    /// The user's choices, and per category and channel whether it is on
    /// and which level decided: `critical` (the category cannot be muted),
    /// `user`, `tenant` (the tenant's defaults), `category` (its default
    /// channels) or `default` (on). `as_of` (an RFC 3339 time or a cursor)
    /// answers them as they were then, from the log.
    #[oai(
        path = "/users/:user/preferences",
        method = "get",
        operation_id = "getPreferences"
    )]
    async fn get(
        &self,
        ctx: Data<&RequestContext>,
        user: Path<Text<UserRule>>,
        /// Resolve against this tenant's defaults (absent: the profile's tenant).
        tenant: Query<Option<Text<TenantRule>>>,
        /// An RFC 3339 time or a log cursor.
        as_of: Query<Option<Text<AsOfRule>>>,
    ) -> Result<PreferencesResponse, ApiError> {
        let user = super::params::path_user(user.0.as_str())?;
        let tenant = match &tenant.0 {
            Some(t) => Some(parse_tenant("query.tenant", t.as_str())?),
            None => None,
        };
        let until = match &as_of.0 {
            Some(raw) => Some(parse_as_of(raw.as_str())?),
            None => None,
        };
        let snapshot = self.snapshot(&user, tenant.as_ref(), until).await?;
        // A user sees their own tenant's defaults, not another tenant's.
        if let (Principal::User(_), Some(asked)) = (&ctx.principal, &tenant) {
            if snapshot.recipient.state.profile.tenant.as_ref() != Some(asked) {
                return Err(ApiError::forbidden(
                    "a user token may resolve against its own tenant only; leave `tenant` out",
                ));
            }
        }
        let mut view = PreferencesView::of(&user, &snapshot);
        view.as_of = as_of.0.map(|a| a.0);
        Ok(PreferencesResponse::Ok(Json(view)))
    }

    /// Set a user's preferences
    ///
    /// The whole set: what is absent is left to the tenant's defaults and
    /// the category's. Recorded as one `RecipientPreferencesChanged` event
    /// holding the set; a set that changes nothing records nothing.
    #[oai(
        path = "/users/:user/preferences",
        method = "put",
        operation_id = "setPreferences"
    )]
    #[instrument(skip_all)]
    async fn set(
        &self,
        ctx: Data<&RequestContext>,
        user: Path<Text<UserRule>>,
        body: StrictJson<PreferencesBody>,
    ) -> Result<PreferencesResponse, ApiError> {
        let user = super::params::path_user(user.0.as_str())?;
        let preferences = body.0.parse()?;
        let decided = self
            .state
            .audience
            .recipients
            .execute(
                user.as_str(),
                |at| RecipientCommand::SetPreferences {
                    preferences: preferences.clone(),
                    at,
                },
                &metadata(&ctx),
                false,
            )
            .await?;
        // The streams are read directly: the answer includes the write.
        let snapshot = self.snapshot(&user, None, None).await?;
        let mut view = PreferencesView::of(&user, &snapshot);
        view.changed = Some(decided.changed);
        Ok(PreferencesResponse::Ok(Json(view)))
    }
}
