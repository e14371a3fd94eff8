//! A category's settings (an admin's): the channels it uses unless a
//! preference says otherwise, and whether it is critical (no preference
//! mutes it). One stream per category; a category nobody configured uses
//! every channel and is not critical.

use serde::{Deserialize, Serialize};

use super::preferences::CategorySettings;
use super::superseding::Superseding;
use super::Timestamp;

pub const CATEGORY_EVENT_VERSION: &str = "1.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CategoryCommand {
    Configure {
        settings: CategorySettings,
        at: Timestamp,
    },
}

impl CategoryCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Configure { .. } => "ConfigureCategory",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CategoryEvent {
    /// The settings as they are after the change.
    CategoryConfigured {
        settings: CategorySettings,
        configured_at: Timestamp,
        /// Which change of the settings this is (from 1). Absent from
        /// events recorded before it was: their count is folded instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
}

impl CategoryEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::CategoryConfigured { .. } => "CategoryConfigured",
        }
    }
}

/// Categories refuse nothing a parsed request can say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CategoryError {}

/// One category as its events leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryConfig {
    /// None: never configured.
    pub settings: Option<CategorySettings>,
    pub version: u64,
    pub configured_at: Option<Timestamp>,
}

impl CategoryConfig {
    pub fn decide(&self, command: CategoryCommand) -> Result<Vec<CategoryEvent>, CategoryError> {
        let CategoryCommand::Configure { settings, at } = command;
        if self.settings.as_ref() == Some(&settings) {
            return Ok(vec![]);
        }
        Ok(vec![CategoryEvent::CategoryConfigured {
            settings,
            configured_at: self.configured_at.map_or(at, |last| at.max(last)),
            version: Some(self.version + 1),
        }])
    }

    pub fn apply(&mut self, event: CategoryEvent) {
        let CategoryEvent::CategoryConfigured {
            settings,
            configured_at,
            version,
        } = event;
        self.settings = Some(settings);
        self.version = version.unwrap_or(self.version + 1);
        self.configured_at = Some(configured_at);
    }
}

impl Superseding for CategoryConfig {
    type Event = CategoryEvent;
    const EVENT_TYPES: &'static [&'static str] = &["CategoryConfigured"];
    fn numbered(event: &CategoryEvent) -> bool {
        let CategoryEvent::CategoryConfigured { version, .. } = event;
        version.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Channel;
    use chrono::{TimeZone as _, Utc};

    fn settings(critical: bool) -> CategorySettings {
        CategorySettings {
            default_channels: [Channel::InApp, Channel::Email].into(),
            critical,
        }
    }

    #[test]
    fn configuring_records_the_settings_and_the_same_settings_again_record_nothing() {
        let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let mut c = CategoryConfig::default();
        for e in c
            .decide(CategoryCommand::Configure {
                settings: settings(false),
                at: t,
            })
            .unwrap()
        {
            c.apply(e);
        }
        assert_eq!((c.version, c.settings.clone()), (1, Some(settings(false))));
        assert_eq!(
            c.decide(CategoryCommand::Configure {
                settings: settings(false),
                at: t
            }),
            Ok(vec![])
        );
        assert_eq!(
            c.decide(CategoryCommand::Configure {
                settings: settings(true),
                at: t
            })
            .unwrap()
            .len(),
            1
        );
    }
}
