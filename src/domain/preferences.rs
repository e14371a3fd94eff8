//! Who gets what on which channel: preferences, category defaults, and the
//! one resolution every send and every preferences answer goes through.
//!
//! A cell (category × channel) is decided by the first level that says
//! anything about it:
//!
//! 1. **critical**: the category is critical (password resets): on, and no
//!    preference can mute it (quiet hours neither);
//! 2. **user**: the user's setting for that category and channel, else the
//!    user's setting for the channel in every category;
//! 3. **tenant**: the same two, from the defaults of the user's tenant;
//! 4. **category**: the category's default channels (an admin's);
//! 5. **default**: on. A category nobody configured is not critical and
//!    mutes nothing, so a user's opt-out always has an effect.
//!
//! Quiet hours (the user's, in the user's time zone) hold what may wait:
//! non-urgent in-app and push deliveries, until they end.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::contact::{Profile, TimeZone};
use super::local_time::first_instant;
pub use super::local_time::LocalTime;
use super::values::{Category, Channel, InvalidValue, Priority};
use super::Timestamp;

/// On or off, per channel.
pub type Switches = BTreeMap<Channel, bool>;

/// One category's settings in someone's preferences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryChoice {
    #[serde(default)]
    pub channels: Switches,
}

/// What a user (or, without quiet hours, a tenant) chose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// For every category.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: Switches,
    /// For one category; beats `channels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<Category, CategoryChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
}

impl Preferences {
    /// What this level says of one cell (None for the category: one it
    /// does not name), if anything.
    fn says(&self, category: Option<&Category>, channel: Channel) -> Option<bool> {
        category
            .and_then(|c| self.categories.get(c))
            .and_then(|c| c.channels.get(&channel))
            .or_else(|| self.channels.get(&channel))
            .copied()
    }

    /// Every category it names.
    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.keys()
    }
}

/// What an admin set for a category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategorySettings {
    /// The channels on unless a preference says otherwise.
    pub default_channels: BTreeSet<Channel>,
    /// No preference can mute it.
    pub critical: bool,
}

/// A nightly quiet time, in the user's time zone: `start` to `end`, across
/// midnight when `end` comes first (`22:00`–`07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    pub start: LocalTime,
    pub end: LocalTime,
}

impl QuietHours {
    pub fn new(start: LocalTime, end: LocalTime) -> Result<Self, InvalidValue> {
        if start == end {
            return Err(InvalidValue(
                "`start` and `end` are the same time; quiet hours need a span".into(),
            ));
        }
        Ok(Self { start, end })
    }

    /// When quiet hours hold a delivery due at `at` in `tz`: the instant
    /// they end; None when `at` is outside them. On a day whose clocks skip
    /// the end (a DST gap), they end when the clocks land; on a day that
    /// repeats it, at its first occurrence.
    pub fn until(&self, at: Timestamp, tz: TimeZone) -> Option<Timestamp> {
        let local = at.with_timezone(&tz.tz());
        let now = local.time();
        let (start, end) = (self.start.time(), self.end.time());
        let inside = if start < end {
            start <= now && now < end
        } else {
            now >= start || now < end
        };
        if !inside {
            return None;
        }
        let date = local.date_naive();
        let day = if now < end { date } else { date.succ_opt()? };
        first_instant(tz, day, end).filter(|t| *t > at)
    }
}

/// Which level decided a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Critical,
    User,
    Tenant,
    Category,
    Default,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::User => "user",
            Self::Tenant => "tenant",
            Self::Category => "category",
            Self::Default => "default",
        }
    }
}

/// One resolved cell: on or off, which level said so, and that level's
/// version (the user's or the tenant's preferences, the category's
/// settings; 0 for the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub enabled: bool,
    pub level: Level,
    pub version: u64,
}

/// Something with a version: what each level's choice came with.
#[derive(Debug)]
pub struct Versioned<'a, T> {
    pub value: &'a T,
    pub version: u64,
}

/// Everything a resolution reads: the user's preferences, the tenant's
/// defaults (if the user has a tenant that set any), and the settings of
/// the categories asked about.
#[derive(Debug)]
pub struct Resolver<'a> {
    pub user: Versioned<'a, Preferences>,
    pub tenant: Option<Versioned<'a, Preferences>>,
    pub categories: &'a BTreeMap<Category, (CategorySettings, u64)>,
}

impl Resolver<'_> {
    pub fn decide(&self, category: &Category, channel: Channel) -> Decision {
        self.decide_in(Some(category), channel)
    }

    /// `decide`; for a category nobody named (not configured, in no
    /// preferences) when `category` is None.
    pub fn decide_in(&self, category: Option<&Category>, channel: Channel) -> Decision {
        let settings = category.and_then(|c| self.categories.get(c));
        if let Some((_, version)) = settings.filter(|(s, _)| s.critical) {
            return Decision {
                enabled: true,
                level: Level::Critical,
                version: *version,
            };
        }
        if let Some(enabled) = self.user.value.says(category, channel) {
            return Decision {
                enabled,
                level: Level::User,
                version: self.user.version,
            };
        }
        if let Some(tenant) = &self.tenant {
            if let Some(enabled) = tenant.value.says(category, channel) {
                return Decision {
                    enabled,
                    level: Level::Tenant,
                    version: tenant.version,
                };
            }
        }
        match settings {
            Some((s, version)) => Decision {
                enabled: s.default_channels.contains(&channel),
                level: Level::Category,
                version: *version,
            },
            None => Decision {
                enabled: true,
                level: Level::Default,
                version: 0,
            },
        }
    }

    /// Whether `category` is critical (no preference mutes it, quiet hours
    /// neither).
    pub fn is_critical(&self, category: &Category) -> bool {
        self.categories
            .get(category)
            .is_some_and(|(s, _)| s.critical)
    }
}

/// Why a channel was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionRule {
    /// The user (or their tenant's defaults) turned it off.
    OptOut,
    /// Not among the category's default channels, and no preference turned it on.
    CategoryDefault,
    /// Held until the user's quiet hours end (then delivered).
    QuietHours,
    /// The recipient's profile has no address for it.
    MissingAddress,
    /// The recipient is in an experiment's holdout: it receives nothing.
    Holdout,
}

impl SuppressionRule {
    pub const ALL: [Self; 5] = [
        Self::OptOut,
        Self::CategoryDefault,
        Self::QuietHours,
        Self::MissingAddress,
        Self::Holdout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OptOut => "opt_out",
            Self::CategoryDefault => "category_default",
            Self::QuietHours => "quiet_hours",
            Self::MissingAddress => "missing_address",
            Self::Holdout => "holdout",
        }
    }
}

/// Why one channel of a send is not delivered now, and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppression {
    pub rule: SuppressionRule,
    /// Whose setting: the user's (preferences, quiet hours, the profile's
    /// addresses), the tenant's or the category's.
    pub level: Level,
    /// That setting's version (the preferences', the profile's, the
    /// tenant's defaults', the category's).
    pub version: u64,
    /// Quiet hours: when the hold ends.
    pub until: Option<Timestamp>,
}

/// What a send consults, as read when it was decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audience {
    /// The recipient's profile and its version; None when nobody described
    /// them: tidings then knows no addresses and leaves the external
    /// channels to the workers, who do.
    pub profile: Option<(Profile, u64)>,
    pub preferences: Preferences,
    pub preferences_version: u64,
    /// The defaults of the recipient's tenant, with their version.
    pub tenant: Option<(Preferences, u64)>,
    /// The send's category's settings, when an admin set them.
    pub category: Option<(CategorySettings, u64)>,
    /// The category's batching policy, when it has one, with its version.
    pub batching: Option<(super::batching::BatchPolicy, u64)>,
}

impl Audience {
    /// Whether `channel` is delivered for a send in `category` due at
    /// `due`: None, or why not.
    pub fn route(
        &self,
        category: &Category,
        channel: Channel,
        priority: Priority,
        due: Timestamp,
    ) -> Option<Suppression> {
        let categories: BTreeMap<Category, (CategorySettings, u64)> = self
            .category
            .iter()
            .map(|s| (category.clone(), s.clone()))
            .collect();
        let resolver = Resolver {
            user: Versioned {
                value: &self.preferences,
                version: self.preferences_version,
            },
            tenant: self.tenant.as_ref().map(|(value, version)| Versioned {
                value,
                version: *version,
            }),
            categories: &categories,
        };
        let decision = resolver.decide(category, channel);
        if !decision.enabled {
            let rule = match decision.level {
                Level::Category => SuppressionRule::CategoryDefault,
                _ => SuppressionRule::OptOut,
            };
            return Some(Suppression {
                rule,
                level: decision.level,
                version: decision.version,
                until: None,
            });
        }
        if let Some((profile, version)) = &self.profile {
            if !profile.addresses.reach(channel) {
                return Some(Suppression {
                    rule: SuppressionRule::MissingAddress,
                    level: Level::User,
                    version: *version,
                    until: None,
                });
            }
        }
        let may_wait = matches!(channel, Channel::InApp | Channel::Push)
            && priority.may_be_held()
            && decision.level != Level::Critical;
        let quiet = self.preferences.quiet_hours.filter(|_| may_wait)?;
        let tz = self
            .profile
            .as_ref()
            .map_or(TimeZone::UTC, |(p, _)| p.time_zone());
        quiet.until(due, tz).map(|until| Suppression {
            rule: SuppressionRule::QuietHours,
            level: Level::User,
            version: self.preferences_version,
            until: Some(until),
        })
    }
}

#[cfg(test)]
#[path = "preferences_tests.rs"]
mod tests;
