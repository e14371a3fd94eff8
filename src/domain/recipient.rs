//! A recipient's profile: one event stream per user. A user with no stream
//! is a recipient like any other, with the default profile (no name, UTC,
//! no locale, no tenant, no addresses): sending never needs a profile first.
//!
//! A replace (`PUT`) sets the whole profile; a patch (`PATCH`, JSON merge
//! patch: an absent field stays, `null` clears, a value sets) changes the
//! fields it names. Either records the profile as it is after the change,
//! so each event answers "what did we know of her then" on its own; a
//! change that changes nothing records nothing.
//!
//! Preferences (`preferences`) live in the same stream, as whole sets too:
//! each `RecipientPreferencesChanged` holds them as they are after it, and
//! their version is what a suppression names.

use serde::{Deserialize, Serialize};

pub use super::contact::Profile;
use super::contact::{
    push_tokens, DisplayName, Email, Locale, Phone, PushToken, TenantId, TimeZone, WebhookUrl,
};
use super::preferences::Preferences;
use super::superseding::Superseding;
use super::values::InvalidValue;
use super::Timestamp;

/// The payload version of recipient events.
pub const RECIPIENT_EVENT_VERSION: &str = "1.0";

/// One field of a patch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Change<T> {
    /// Absent from the patch: stays as it is.
    #[default]
    Keep,
    /// `null`: removed.
    Clear,
    Set(T),
}

impl<T> Change<T> {
    fn apply(self, field: &mut Option<T>) {
        match self {
            Self::Keep => {}
            Self::Clear => *field = None,
            Self::Set(v) => *field = Some(v),
        }
    }
}

/// The fields a `PATCH` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfilePatch {
    pub display_name: Change<DisplayName>,
    pub time_zone: Change<TimeZone>,
    pub locale: Change<Locale>,
    pub tenant: Change<TenantId>,
    pub email: Change<Email>,
    pub phone: Change<Phone>,
    /// Replaces the whole list (`null` or `[]` empties it).
    pub push_tokens: Change<Vec<PushToken>>,
    pub webhook_url: Change<WebhookUrl>,
}

impl ProfilePatch {
    /// `profile` with this patch applied.
    pub fn apply_to(self, mut profile: Profile) -> Result<Profile, InvalidValue> {
        self.display_name.apply(&mut profile.display_name);
        self.time_zone.apply(&mut profile.time_zone);
        self.locale.apply(&mut profile.locale);
        self.tenant.apply(&mut profile.tenant);
        let addresses = &mut profile.addresses;
        self.email.apply(&mut addresses.email);
        self.phone.apply(&mut addresses.phone);
        self.webhook_url.apply(&mut addresses.webhook_url);
        match self.push_tokens {
            Change::Keep => {}
            Change::Clear => addresses.push_tokens.clear(),
            Change::Set(tokens) => addresses.push_tokens = push_tokens(tokens)?,
        }
        Ok(profile)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientCommand {
    Replace {
        profile: Profile,
        /// Keep the tenant as it is (a user describing themselves: the
        /// tenant is the service's to assign).
        keep_tenant: bool,
        at: Timestamp,
    },
    Patch {
        patch: ProfilePatch,
        at: Timestamp,
    },
    SetPreferences {
        preferences: Preferences,
        at: Timestamp,
    },
}

impl RecipientCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Replace { .. } => "ReplaceProfile",
            Self::Patch { .. } => "PatchProfile",
            Self::SetPreferences { .. } => "SetPreferences",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientEvent {
    /// The profile as it is after the change.
    RecipientProfileChanged {
        profile: Profile,
        changed_at: Timestamp,
        /// Which change of the profile this is (from 1). Absent from
        /// events recorded before it was: their count is folded instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// The preferences as they are after the change.
    RecipientPreferencesChanged {
        preferences: Preferences,
        changed_at: Timestamp,
        /// Which change of the preferences this is (from 1); see above.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
}

impl RecipientEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::RecipientProfileChanged { .. } => "RecipientProfileChanged",
            Self::RecipientPreferencesChanged { .. } => "RecipientPreferencesChanged",
        }
    }
}

/// Why a profile command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    /// A patch whose result is not a valid profile (too many push tokens).
    #[error("{0}")]
    Invalid(String),
}

/// One recipient as its events leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub profile: Profile,
    /// How many changes the profile has had (0: the default profile).
    pub version: u64,
    pub changed_at: Option<Timestamp>,
    pub preferences: Preferences,
    /// How many changes the preferences have had (0: none set).
    pub preferences_version: u64,
    pub preferences_changed_at: Option<Timestamp>,
}

impl Recipient {
    pub fn decide(&self, command: RecipientCommand) -> Result<Vec<RecipientEvent>, RecipientError> {
        let (profile, at) = match command {
            RecipientCommand::SetPreferences { preferences, at } => {
                if preferences == self.preferences {
                    return Ok(vec![]);
                }
                let last = self.changed_at.max(self.preferences_changed_at);
                return Ok(vec![RecipientEvent::RecipientPreferencesChanged {
                    preferences,
                    changed_at: last.map_or(at, |last| at.max(last)),
                    version: Some(self.preferences_version + 1),
                }]);
            }
            RecipientCommand::Replace {
                mut profile,
                keep_tenant,
                at,
            } => {
                if keep_tenant {
                    profile.tenant = self.profile.tenant.clone();
                }
                (profile, at)
            }
            RecipientCommand::Patch { patch, at } => (
                patch
                    .apply_to(self.profile.clone())
                    .map_err(|e| RecipientError::Invalid(e.0))?,
                at,
            ),
        };
        if profile == self.profile {
            return Ok(vec![]);
        }
        // Never before the last change, whatever the clocks say.
        let last = self.changed_at.max(self.preferences_changed_at);
        let changed_at = last.map_or(at, |last| at.max(last));
        Ok(vec![RecipientEvent::RecipientProfileChanged {
            profile,
            changed_at,
            version: Some(self.version + 1),
        }])
    }

    pub fn apply(&mut self, event: RecipientEvent) {
        match event {
            RecipientEvent::RecipientProfileChanged {
                profile,
                changed_at,
                version,
            } => {
                self.profile = profile;
                self.version = version.unwrap_or(self.version + 1);
                self.changed_at = Some(changed_at);
            }
            RecipientEvent::RecipientPreferencesChanged {
                preferences,
                changed_at,
                version,
            } => {
                self.preferences = preferences;
                self.preferences_version = version.unwrap_or(self.preferences_version + 1);
                self.preferences_changed_at = Some(changed_at);
            }
        }
    }
}

impl Superseding for Recipient {
    type Event = RecipientEvent;
    const EVENT_TYPES: &'static [&'static str] =
        &["RecipientProfileChanged", "RecipientPreferencesChanged"];
    fn numbered(event: &RecipientEvent) -> bool {
        match event {
            RecipientEvent::RecipientProfileChanged { version, .. }
            | RecipientEvent::RecipientPreferencesChanged { version, .. } => version.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contact::Addresses;
    use chrono::{TimeZone as _, Utc};

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn given(commands: Vec<RecipientCommand>) -> Recipient {
        let mut r = Recipient::default();
        for c in commands {
            for e in r.decide(c).unwrap() {
                r.apply(e);
            }
        }
        r
    }

    fn berlin_alice() -> Profile {
        Profile {
            display_name: Some(DisplayName::parse("Alice").unwrap()),
            time_zone: Some(TimeZone::parse("Europe/Berlin").unwrap()),
            locale: Some(Locale::parse("de-DE").unwrap()),
            tenant: None,
            addresses: Addresses {
                email: Some(Email::parse("alice@example.com").unwrap()),
                ..Addresses::default()
            },
        }
    }

    #[test]
    fn an_unknown_recipient_has_the_default_profile_in_utc() {
        let r = Recipient::default();
        assert_eq!(r.version, 0);
        assert_eq!(r.profile.time_zone(), TimeZone::UTC);
        assert_eq!(r.profile.addresses, Addresses::default());
    }

    #[test]
    fn a_patch_changes_what_it_names_clears_nulls_and_keeps_the_rest() {
        let r = given(vec![RecipientCommand::Replace {
            profile: berlin_alice(),
            keep_tenant: false,
            at: at(0),
        }]);
        let events = r
            .decide(RecipientCommand::Patch {
                patch: ProfilePatch {
                    locale: Change::Clear,
                    phone: Change::Set(Phone::parse("+4915112345678").unwrap()),
                    ..ProfilePatch::default()
                },
                at: at(5),
            })
            .unwrap();
        let RecipientEvent::RecipientProfileChanged {
            profile,
            changed_at,
            version,
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!(*changed_at, at(5));
        assert_eq!(*version, Some(2), "the profile's second change");
        assert_eq!(profile.locale, None);
        assert_eq!(profile.display_name, berlin_alice().display_name);
        assert_eq!(profile.addresses.email, berlin_alice().addresses.email);
        assert_eq!(
            profile.addresses.phone.as_ref().unwrap().as_str(),
            "+4915112345678"
        );
    }

    #[test]
    fn a_change_that_changes_nothing_records_nothing() {
        let r = given(vec![RecipientCommand::Replace {
            profile: berlin_alice(),
            keep_tenant: false,
            at: at(0),
        }]);
        assert_eq!(
            r.decide(RecipientCommand::Replace {
                profile: berlin_alice(),
                keep_tenant: false,
                at: at(1)
            }),
            Ok(vec![])
        );
        assert_eq!(
            r.decide(RecipientCommand::Patch {
                patch: ProfilePatch::default(),
                at: at(1)
            }),
            Ok(vec![])
        );
        assert_eq!(r.version, 1);
    }

    #[test]
    fn a_replace_sets_the_whole_profile_and_a_late_clock_never_goes_back() {
        let r = given(vec![
            RecipientCommand::Replace {
                profile: berlin_alice(),
                keep_tenant: false,
                at: at(10),
            },
            RecipientCommand::Replace {
                profile: Profile::default(),
                keep_tenant: false,
                at: at(3),
            },
        ]);
        assert_eq!(r.profile, Profile::default());
        assert_eq!(r.version, 2);
        assert_eq!(r.changed_at, Some(at(10)));
    }

    #[test]
    fn a_patch_past_the_push_token_limit_is_refused() {
        let tokens = (0..11)
            .map(|i| PushToken::parse(&format!("device-{i}")).unwrap())
            .collect();
        let refused = Recipient::default().decide(RecipientCommand::Patch {
            patch: ProfilePatch {
                push_tokens: Change::Set(tokens),
                ..ProfilePatch::default()
            },
            at: at(0),
        });
        assert!(matches!(refused, Err(RecipientError::Invalid(m)) if m.contains("at most 10")));
    }

    #[test]
    fn preferences_are_versioned_apart_from_the_profile_and_unchanged_ones_record_nothing() {
        let prefs: Preferences =
            serde_json::from_value(serde_json::json!({"channels": {"email": false}})).unwrap();
        let r = given(vec![
            RecipientCommand::Replace {
                profile: berlin_alice(),
                keep_tenant: false,
                at: at(0),
            },
            RecipientCommand::SetPreferences {
                preferences: prefs.clone(),
                at: at(1),
            },
        ]);
        assert_eq!((r.version, r.preferences_version), (1, 1));
        assert_eq!(r.preferences, prefs);
        assert_eq!(r.profile, berlin_alice(), "the profile stays");
        assert_eq!(
            r.decide(RecipientCommand::SetPreferences {
                preferences: prefs,
                at: at(2)
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn a_profile_reads_back_from_its_event_as_written() {
        let event = RecipientEvent::RecipientProfileChanged {
            profile: berlin_alice(),
            changed_at: at(0),
            version: Some(1),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json["RecipientProfileChanged"]["profile"]["time_zone"],
            "Europe/Berlin"
        );
        assert_eq!(
            serde_json::from_value::<RecipientEvent>(json).unwrap(),
            event
        );
    }
}
