//! The notification aggregate: one event stream per notification.
//!
//! `decide` turns a command into events without touching state; `apply` folds
//! one event into state. Both are pure (time arrives inside the command), so the
//! same code serves the write side, the projections and the tests.
//!
//! Times never run backwards inside one stream: a command stamped earlier than
//! the stream's last event (clock skew between instances) is recorded at the
//! last event's time, which keeps `read_at ≥ delivered_at ≥ created_at`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::command::{NewNotification, NotificationCommand};
use super::event::NotificationEvent;
use super::preferences::{Audience, Level, SuppressionRule};
use super::values::{Channel, FailureReason, NotificationId};
use super::Timestamp;

/// Why a command was refused. Nothing is recorded when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("no notification with this id exists")]
    NotFound,
    #[error("a notification with this id already exists")]
    AlreadyExists,
    #[error("the notification was deleted; nothing can change it any more")]
    Deleted,
    #[error("the notification was cancelled before delivery")]
    Cancelled,
    #[error("the notification has not been delivered yet (it is {0})")]
    NotDelivered(Lifecycle),
    #[error("the notification was already delivered, so it can no longer be cancelled")]
    AlreadyDelivered,
    #[error("the notification was not sent on the `{0}` channel")]
    ChannelNotRequested(Channel),
    #[error("the notification was already delivered on the `{0}` channel")]
    ChannelAlreadyDelivered(Channel),
    #[error("the notification is scheduled for {deliver_at}; it cannot be delivered before then")]
    NotYetDue { deliver_at: Timestamp },
    #[error("the `{channel}` channel was suppressed ({rule}); see the notification's explain")]
    ChannelSuppressed {
        channel: Channel,
        rule: &'static str,
    },
    #[error("the `{channel}` channel is held by the recipient's quiet hours until {until}")]
    HeldUntil { channel: Channel, until: Timestamp },
    #[error("every channel was suppressed; there is nothing to deliver or cancel")]
    Suppressed,
    /// The preferences a create consults could not be read (an outage):
    /// nothing is recorded, the create can be retried.
    #[error("the recipient's preferences could not be read ({0}); retry shortly")]
    AudienceUnavailable(String),
    /// What a create consults holds an event this release cannot read
    /// (named): nothing is recorded, and retrying will not help until a
    /// release that reads it is deployed.
    #[error("the recipient's preferences cannot be read: {0}")]
    AudienceUnreadable(String),
}

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// No event yet: the id is unknown.
    #[default]
    Absent,
    /// Created, waiting for a channel to deliver it.
    Pending,
    /// Created with a future `deliver_at`.
    Scheduled,
    /// Delivered on at least one channel.
    Delivered,
    /// Every channel asked for was suppressed (nothing is held for later):
    /// recorded, never delivered.
    Suppressed,
    Cancelled,
    Deleted,
}

impl Lifecycle {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Pending => "pending",
            Self::Scheduled => "scheduled",
            Self::Delivered => "delivered",
            Self::Suppressed => "suppressed",
            Self::Cancelled => "cancelled",
            Self::Deleted => "deleted",
        }
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A channel not delivered, and why (as its `ChannelSuppressed` said).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedChannel {
    pub rule: SuppressionRule,
    pub level: Level,
    pub version: u64,
    /// Quiet hours: held until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    pub at: Timestamp,
}

impl SuppressedChannel {
    /// Held for later rather than dropped.
    pub fn is_hold(&self) -> bool {
        self.rule == SuppressionRule::QuietHours
    }
}

/// A failed delivery on one channel: the latest reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: FailureReason,
    pub at: Timestamp,
}

/// The state of one notification, folded from its events. It is both the
/// aggregate's state and the row the inbox projection keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub lifecycle: Lifecycle,
    pub id: Option<NotificationId>,
    pub content: Option<NewNotification>,
    pub created_at: Option<Timestamp>,
    /// The first delivery on any channel.
    pub delivered_at: Option<Timestamp>,
    pub deliveries: BTreeMap<Channel, Timestamp>,
    pub seen_at: Option<Timestamp>,
    pub read_at: Option<Timestamp>,
    pub clicked_at: Option<Timestamp>,
    pub archived_at: Option<Timestamp>,
    pub cancelled_at: Option<Timestamp>,
    pub deleted_at: Option<Timestamp>,
    /// Channels suppressed or held at creation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suppressed: BTreeMap<Channel, SuppressedChannel>,
    /// Channels whose worker reported a failure (and none delivered since).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<Channel, Failure>,
    /// Time of the last event, the floor for the next one.
    pub last_event_at: Option<Timestamp>,
}

impl Notification {
    pub fn is_read(&self) -> bool {
        self.read_at.is_some()
    }
    pub fn is_seen(&self) -> bool {
        self.seen_at.is_some()
    }
    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }
    /// In the recipient's inbox: delivered on the in-app channel and not deleted.
    pub fn in_inbox(&self) -> bool {
        self.lifecycle == Lifecycle::Delivered && self.deliveries.contains_key(&Channel::InApp)
    }

    /// `decide_for` a recipient nobody described, with no preferences and
    /// no category settings: every channel asked for is used.
    pub fn decide(
        &self,
        command: NotificationCommand,
    ) -> Result<Vec<NotificationEvent>, NotificationError> {
        self.decide_for(command, &Audience::default())
    }

    /// Decide what a command means for this notification. Pure: the state is
    /// not touched; `Ok(vec![])` means "already so" (marking a read notification
    /// read changes nothing and is not an error). A create consults
    /// `audience` (preferences, category, quiet hours, addresses).
    pub fn decide_for(
        &self,
        command: NotificationCommand,
        audience: &Audience,
    ) -> Result<Vec<NotificationEvent>, NotificationError> {
        use NotificationCommand as C;
        use NotificationEvent as E;

        // Never earlier than what is already recorded.
        let at = match self.last_event_at {
            Some(last) if last > command.at() => last,
            _ => command.at(),
        };

        if let C::Create { id, content, .. } = command {
            if self.lifecycle != Lifecycle::Absent {
                return Err(NotificationError::AlreadyExists);
            }
            return Self::decide_create(id, *content, at, audience);
        }

        match (self.lifecycle, &command) {
            (Lifecycle::Absent, _) => return Err(NotificationError::NotFound),
            // Deleting twice is asking for what already is: nothing to record.
            (Lifecycle::Deleted, C::Delete { .. }) => return Ok(vec![]),
            (Lifecycle::Deleted, _) => return Err(NotificationError::Deleted),
            _ => {}
        }

        match command {
            C::Create { .. } => unreachable!("handled above"),
            C::Delete { .. } => Ok(vec![E::NotificationDeleted { deleted_at: at }]),
            C::Cancel { .. } => match self.lifecycle {
                Lifecycle::Pending | Lifecycle::Scheduled => {
                    Ok(vec![E::NotificationCancelled { cancelled_at: at }])
                }
                Lifecycle::Cancelled => Ok(vec![]),
                Lifecycle::Suppressed => Err(NotificationError::Suppressed),
                _ => Err(NotificationError::AlreadyDelivered),
            },
            C::Deliver { channel, .. } => self.decide_deliver(channel, at),
            C::FailDelivery {
                channel, reason, ..
            } => {
                self.deliverable(channel, at)?;
                Ok(vec![E::DeliveryFailed {
                    channel,
                    reason,
                    failed_at: at,
                }])
            }
            C::MarkSeen { .. } => {
                self.require_delivered()?;
                Ok(self.seen_if_needed(at))
            }
            C::MarkRead { .. } => {
                self.require_delivered()?;
                let mut events = self.seen_if_needed(at);
                if !self.is_read() {
                    events.push(E::NotificationRead { read_at: at });
                }
                Ok(events)
            }
            C::MarkUnread { .. } => {
                self.require_delivered()?;
                Ok(if self.is_read() {
                    vec![E::NotificationUnread { unread_at: at }]
                } else {
                    vec![]
                })
            }
            C::Click { .. } => {
                self.require_delivered()?;
                let mut events = self.seen_if_needed(at);
                if !self.is_read() {
                    events.push(E::NotificationRead { read_at: at });
                }
                if self.clicked_at.is_none() {
                    events.push(E::NotificationClicked { clicked_at: at });
                }
                Ok(events)
            }
            C::Archive { .. } => {
                self.require_delivered()?;
                Ok(if self.is_archived() {
                    vec![]
                } else {
                    vec![E::NotificationArchived { archived_at: at }]
                })
            }
            C::Unarchive { .. } => {
                self.require_delivered()?;
                Ok(if self.is_archived() {
                    vec![E::NotificationUnarchived { unarchived_at: at }]
                } else {
                    vec![]
                })
            }
        }
    }

    fn decide_create(
        id: NotificationId,
        content: NewNotification,
        now: Timestamp,
        audience: &Audience,
    ) -> Result<Vec<NotificationEvent>, NotificationError> {
        use NotificationEvent as E;
        let NewNotification {
            recipient,
            category,
            title,
            body,
            data,
            priority,
            channels,
            group_key,
            deliver_at,
            tenant,
        } = content;
        // A deliver_at that has come already is "now": the creation records
        // what was asked, and delivery follows at once.
        let later = deliver_at.filter(|d| *d > now);
        let due = later.unwrap_or(now);
        let routes: Vec<_> = channels
            .iter()
            .map(|c| (*c, audience.route(&category, *c, priority, due)))
            .collect();
        let mut events = vec![E::NotificationCreated {
            id,
            recipient,
            category,
            title,
            body,
            data,
            priority,
            channels,
            group_key,
            deliver_at,
            created_at: now,
            tenant,
        }];
        if let Some(deliver_at) = later {
            events.push(E::NotificationScheduled {
                deliver_at,
                scheduled_at: now,
            });
        }
        for (channel, route) in routes {
            match route {
                Some(s) => events.push(E::ChannelSuppressed {
                    channel,
                    rule: s.rule,
                    level: s.level,
                    version: s.version,
                    until: s.until,
                    suppressed_at: now,
                }),
                None if channel == Channel::InApp && later.is_none() => {
                    events.push(E::NotificationDelivered {
                        channel: Channel::InApp,
                        delivered_at: now,
                    })
                }
                // The other channels' workers deliver and report back.
                None => {}
            }
        }
        Ok(events)
    }

    /// Whether `channel` may be delivered (or reported failed) at `at`.
    fn deliverable(&self, channel: Channel, at: Timestamp) -> Result<(), NotificationError> {
        if self.lifecycle == Lifecycle::Cancelled {
            return Err(NotificationError::Cancelled);
        }
        let content = self.content.as_ref().ok_or(NotificationError::NotFound)?;
        if !content.channels.contains(&channel) {
            return Err(NotificationError::ChannelNotRequested(channel));
        }
        if self.deliveries.contains_key(&channel) {
            return Err(NotificationError::ChannelAlreadyDelivered(channel));
        }
        if let Some(deliver_at) = content.deliver_at {
            if at < deliver_at {
                return Err(NotificationError::NotYetDue { deliver_at });
            }
        }
        match self.suppressed.get(&channel) {
            Some(s) if s.is_hold() => match s.until {
                Some(until) if at < until => Err(NotificationError::HeldUntil { channel, until }),
                _ => Ok(()),
            },
            Some(s) => Err(NotificationError::ChannelSuppressed {
                channel,
                rule: s.rule.as_str(),
            }),
            None => Ok(()),
        }
    }

    fn decide_deliver(
        &self,
        channel: Channel,
        at: Timestamp,
    ) -> Result<Vec<NotificationEvent>, NotificationError> {
        self.deliverable(channel, at)?;
        Ok(vec![NotificationEvent::NotificationDelivered {
            channel,
            delivered_at: at,
        }])
    }

    fn require_delivered(&self) -> Result<(), NotificationError> {
        match self.lifecycle {
            Lifecycle::Delivered => Ok(()),
            Lifecycle::Cancelled => Err(NotificationError::Cancelled),
            other => Err(NotificationError::NotDelivered(other)),
        }
    }

    fn seen_if_needed(&self, at: Timestamp) -> Vec<NotificationEvent> {
        if self.is_seen() {
            vec![]
        } else {
            vec![NotificationEvent::NotificationSeen { seen_at: at }]
        }
    }

    /// Fold one event into the state.
    pub fn apply(&mut self, event: NotificationEvent) {
        use NotificationEvent as E;
        let t = event.occurred_at();
        self.last_event_at = Some(self.last_event_at.map_or(t, |last| last.max(t)));
        match event {
            E::NotificationCreated {
                id,
                recipient,
                category,
                title,
                body,
                data,
                priority,
                channels,
                group_key,
                deliver_at,
                created_at,
                tenant,
            } => {
                self.lifecycle = Lifecycle::Pending;
                self.id = Some(id);
                self.created_at = Some(created_at);
                self.content = Some(NewNotification {
                    recipient,
                    category,
                    title,
                    body,
                    data,
                    priority,
                    channels,
                    group_key,
                    deliver_at,
                    tenant,
                });
            }
            E::NotificationScheduled { .. } => self.lifecycle = Lifecycle::Scheduled,
            E::NotificationDelivered {
                channel,
                delivered_at,
            } => {
                self.lifecycle = Lifecycle::Delivered;
                self.delivered_at.get_or_insert(delivered_at);
                self.deliveries.insert(channel, delivered_at);
                self.failures.remove(&channel);
            }
            E::ChannelSuppressed {
                channel,
                rule,
                level,
                version,
                until,
                suppressed_at,
            } => {
                self.suppressed.insert(
                    channel,
                    SuppressedChannel {
                        rule,
                        level,
                        version,
                        until,
                        at: suppressed_at,
                    },
                );
                let channels = self.content.as_ref().map(|c| c.channels.as_slice());
                let all_dropped = channels.is_some_and(|cs| {
                    cs.iter()
                        .all(|c| self.suppressed.get(c).is_some_and(|s| !s.is_hold()))
                });
                if all_dropped && self.deliveries.is_empty() {
                    self.lifecycle = Lifecycle::Suppressed;
                }
            }
            E::DeliveryFailed {
                channel,
                reason,
                failed_at,
            } => {
                self.failures.insert(
                    channel,
                    Failure {
                        reason,
                        at: failed_at,
                    },
                );
            }
            E::NotificationSeen { seen_at } => self.seen_at = Some(seen_at),
            E::NotificationRead { read_at } => self.read_at = Some(read_at),
            E::NotificationUnread { .. } => self.read_at = None,
            E::NotificationClicked { clicked_at } => self.clicked_at = Some(clicked_at),
            E::NotificationArchived { archived_at } => self.archived_at = Some(archived_at),
            E::NotificationUnarchived { .. } => self.archived_at = None,
            E::NotificationCancelled { cancelled_at } => {
                self.lifecycle = Lifecycle::Cancelled;
                self.cancelled_at = Some(cancelled_at);
            }
            E::NotificationDeleted { deleted_at } => {
                self.lifecycle = Lifecycle::Deleted;
                self.deleted_at = Some(deleted_at);
            }
        }
    }
}

#[cfg(test)]
#[path = "notification_tests.rs"]
mod tests;
