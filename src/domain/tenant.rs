//! A tenant's preference defaults: what its users get unless they choose
//! otherwise (between the user's choice and the category's default). One
//! stream per tenant; a tenant nobody configured has none.

use serde::{Deserialize, Serialize};

use super::preferences::Preferences;
use super::superseding::Superseding;
use super::Timestamp;

pub const TENANT_EVENT_VERSION: &str = "1.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantCommand {
    /// Quiet hours are each user's own: `defaults.quiet_hours` is None.
    SetDefaults {
        defaults: Preferences,
        at: Timestamp,
    },
}

impl TenantCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::SetDefaults { .. } => "SetTenantDefaults",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantEvent {
    /// The defaults as they are after the change.
    TenantDefaultsChanged {
        defaults: Preferences,
        changed_at: Timestamp,
        /// Which change of the defaults this is (from 1). Absent from
        /// events recorded before it was: their count is folded instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
}

impl TenantEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::TenantDefaultsChanged { .. } => "TenantDefaultsChanged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {}

/// One tenant as its events leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub defaults: Preferences,
    pub version: u64,
    pub changed_at: Option<Timestamp>,
}

impl Tenant {
    pub fn decide(&self, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
        let TenantCommand::SetDefaults { defaults, at } = command;
        if defaults == self.defaults {
            return Ok(vec![]);
        }
        Ok(vec![TenantEvent::TenantDefaultsChanged {
            defaults,
            changed_at: self.changed_at.map_or(at, |last| at.max(last)),
            version: Some(self.version + 1),
        }])
    }

    pub fn apply(&mut self, event: TenantEvent) {
        let TenantEvent::TenantDefaultsChanged {
            defaults,
            changed_at,
            version,
        } = event;
        self.defaults = defaults;
        self.version = version.unwrap_or(self.version + 1);
        self.changed_at = Some(changed_at);
    }
}

impl Superseding for Tenant {
    type Event = TenantEvent;
    const EVENT_TYPES: &'static [&'static str] = &["TenantDefaultsChanged"];
    fn numbered(event: &TenantEvent) -> bool {
        let TenantEvent::TenantDefaultsChanged { version, .. } = event;
        version.is_some()
    }
}
