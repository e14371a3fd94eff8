//! Topics: a user subscribes to a topic (`post-42`, `team:ops`), and a
//! send to the topic reaches every subscriber. One stream per membership
//! (topic and user), so subscribing never loads the other subscribers, and
//! a topic of any size costs each command the same.

use serde::{Deserialize, Serialize};

use super::values::{InvalidValue, UserId};
use super::Timestamp;

pub const TOPIC_EVENT_VERSION: &str = "1.0";

/// The longest topic name, in bytes.
pub const TOPIC_MAX_BYTES: usize = 128;

/// A topic's name: letters, digits and `. _ - :`, 1–128 of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicName(String);

impl TopicName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > TOPIC_MAX_BYTES {
            return Err(InvalidValue(format!(
                "must be 1 to {TOPIC_MAX_BYTES} characters long"
            )));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        {
            return Err(InvalidValue(
                "may hold only letters, digits, `.`, `_`, `:` and `-`".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stream id of `user`'s membership of `topic` (neither holds `/`).
pub fn membership_id(topic: &TopicName, user: &UserId) -> String {
    format!("{}/{}", topic.as_str(), user.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipCommand {
    Subscribe {
        topic: TopicName,
        user: UserId,
        at: Timestamp,
    },
    Unsubscribe {
        topic: TopicName,
        user: UserId,
        at: Timestamp,
    },
}

impl MembershipCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Subscribe { .. } => "Subscribe",
            Self::Unsubscribe { .. } => "Unsubscribe",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipEvent {
    TopicSubscribed {
        topic: TopicName,
        user: UserId,
        subscribed_at: Timestamp,
    },
    TopicUnsubscribed {
        topic: TopicName,
        user: UserId,
        unsubscribed_at: Timestamp,
    },
}

impl MembershipEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::TopicSubscribed { .. } => "TopicSubscribed",
            Self::TopicUnsubscribed { .. } => "TopicUnsubscribed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {}

/// One user's membership of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub subscribed: bool,
    pub since: Option<Timestamp>,
}

impl Membership {
    /// Subscribing a subscriber, or unsubscribing one who is not, records
    /// nothing.
    pub fn decide(
        &self,
        command: MembershipCommand,
    ) -> Result<Vec<MembershipEvent>, MembershipError> {
        let at_least = |at: Timestamp| self.since.map_or(at, |s| at.max(s));
        Ok(match command {
            MembershipCommand::Subscribe { topic, user, at } if !self.subscribed => {
                vec![MembershipEvent::TopicSubscribed {
                    topic,
                    user,
                    subscribed_at: at_least(at),
                }]
            }
            MembershipCommand::Unsubscribe { topic, user, at } if self.subscribed => {
                vec![MembershipEvent::TopicUnsubscribed {
                    topic,
                    user,
                    unsubscribed_at: at_least(at),
                }]
            }
            _ => vec![],
        })
    }

    pub fn apply(&mut self, event: MembershipEvent) {
        match event {
            MembershipEvent::TopicSubscribed { subscribed_at, .. } => {
                self.subscribed = true;
                self.since = Some(subscribed_at);
            }
            MembershipEvent::TopicUnsubscribed {
                unsubscribed_at, ..
            } => {
                self.subscribed = false;
                self.since = Some(unsubscribed_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone as _, Utc};
    use proptest::prelude::*;

    #[test]
    fn subscribing_twice_records_once_and_unsubscribing_a_stranger_records_nothing() {
        let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let topic = TopicName::parse("post-42").unwrap();
        let user = UserId::parse("alice").unwrap();
        let subscribe = MembershipCommand::Subscribe {
            topic: topic.clone(),
            user: user.clone(),
            at: t,
        };
        let unsubscribe = MembershipCommand::Unsubscribe { topic, user, at: t };
        let mut m = Membership::default();
        assert_eq!(m.decide(unsubscribe.clone()), Ok(vec![]));
        for e in m.decide(subscribe.clone()).unwrap() {
            m.apply(e);
        }
        assert!(m.subscribed);
        assert_eq!(m.decide(subscribe), Ok(vec![]));
        assert_eq!(m.decide(unsubscribe).unwrap().len(), 1);
    }

    proptest! {
        #[test]
        fn topic_names_of_the_allowed_characters_parse_and_others_do_not(
            good in "[A-Za-z0-9._:-]{1,128}",
            bad in ".*[^A-Za-z0-9._:-].*",
        ) {
            prop_assert!(TopicName::parse(&good).is_ok());
            prop_assert!(TopicName::parse(&bad).is_err());
        }
    }
}
