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

use super::batch::stream_id;
use super::batching::BatchPolicy;
use super::command::{NewNotification, NotificationCommand};
use super::contact::TimeZone;
use super::event::NotificationEvent;
use super::experiment::ExperimentUse;
use super::preferences::{Audience, Level, SuppressionRule};
use super::template::{Rendered, TemplateRef};
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
    #[error("the notification is held for a digest (its category batches); it goes out with its batch{}", .0.as_ref().map(|b| format!(" `{b}`")).unwrap_or_default())]
    Batched(Option<String>),
    #[error("the notification went out in digest {0} instead of on its own")]
    Digested(NotificationId),
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
    /// Held in a batch for a digest.
    Batched,
    /// Carried by a digest instead of delivered on its own.
    Digested,
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
            Self::Batched => "batched",
            Self::Digested => "digested",
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

/// A notification held for a digest: where, under which policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The batches it goes to (its category, recipient and key).
    pub stream: String,
    pub key: String,
    pub policy: BatchPolicy,
    pub policy_version: u64,
    pub time_zone: TimeZone,
    /// Once added: its batch.
    pub batch_id: Option<String>,
    /// Released to be delivered on its own.
    pub released: bool,
    /// Once digested: the digest that carried it.
    pub digest_id: Option<NotificationId>,
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
    /// Held for a digest (its category batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// The template version its text was rendered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// Each channel's own title and body, where its template gives one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channel_content: BTreeMap<Channel, Rendered>,
    /// The experiment it was sent under, and the variant (none: held out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentUse>,
    /// Sent under its variant: a channel was used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exposed: bool,
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

        if let C::Create {
            id,
            content,
            batchable,
            ..
        } = command
        {
            if self.lifecycle != Lifecycle::Absent {
                return Err(NotificationError::AlreadyExists);
            }
            return Self::decide_create(id, *content, at, audience, batchable);
        }

        match (self.lifecycle, &command) {
            (Lifecycle::Absent, _) => return Err(NotificationError::NotFound),
            // A batch's item deleted meanwhile is still settled by its batch.
            (_, C::Release { batch_id, .. }) => {
                return Ok(self.decide_release(batch_id, at, audience))
            }
            (
                _,
                C::MarkDigested {
                    batch_id,
                    digest_id,
                    ..
                },
            ) => return Ok(self.decide_digested(batch_id, *digest_id, at)),
            // Deleting twice is asking for what already is: nothing to record.
            (Lifecycle::Deleted, C::Delete { .. }) => return Ok(vec![]),
            (Lifecycle::Deleted, _) => return Err(NotificationError::Deleted),
            _ => {}
        }

        match command {
            C::Create { .. } | C::Release { .. } | C::MarkDigested { .. } => {
                unreachable!("handled above")
            }
            C::Delete { .. } => Ok(vec![E::NotificationDeleted { deleted_at: at }]),
            C::Cancel { .. } => match self.lifecycle {
                Lifecycle::Pending | Lifecycle::Scheduled => {
                    Ok(vec![E::NotificationCancelled { cancelled_at: at }])
                }
                // Not yet in a batch: it never will be.
                Lifecycle::Batched => match self.held.as_ref().and_then(|h| h.batch_id.clone()) {
                    None => Ok(vec![E::NotificationCancelled { cancelled_at: at }]),
                    batch => Err(NotificationError::Batched(batch)),
                },
                Lifecycle::Digested => Err(self.digested()),
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
        batchable: bool,
    ) -> Result<Vec<NotificationEvent>, NotificationError> {
        use NotificationEvent as E;
        // Held for a digest: a category that batches, a priority that may
        // wait, nothing scheduled for later.
        let later = content.deliver_at.filter(|d| *d > now);
        let batching = audience
            .batching
            .as_ref()
            // An experiment's send is measured on its own: never held.
            .filter(|_| {
                batchable
                    && content.priority.may_be_held()
                    && later.is_none()
                    && content.experiment.is_none()
            })
            .map(|(policy, version)| (policy, *version, policy.key_for(&content)));
        let stream = match &batching {
            Some((_, _, Ok(key))) => Some(stream_id(&content.category, &content.recipient, key)),
            _ => None,
        };
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
            template,
            experiment,
        } = content;
        // Rendered from a template: the text in the recipient's locale.
        let (title, body, template, channel_content) = match template {
            None => (title, body, None, BTreeMap::new()),
            Some(used) => {
                let wanted = audience
                    .profile
                    .as_ref()
                    .and_then(|(p, _)| p.locale.as_ref());
                let (locale, text) = used.for_locale(wanted);
                let channel_content: BTreeMap<Channel, Rendered> = text
                    .channels
                    .iter()
                    .filter(|(c, _)| channels.contains(c))
                    .map(|(c, r)| (*c, r.clone()))
                    .collect();
                (
                    text.title.clone(),
                    text.body.clone(),
                    Some(Box::new(TemplateRef {
                        key: used.key.clone(),
                        version: used.version,
                        locale: locale.clone(),
                    })),
                    channel_content,
                )
            }
        };
        // A deliver_at that has come already is "now": the creation records
        // what was asked, and delivery follows at once.
        let due = later.unwrap_or(now);
        let routes = match &experiment {
            // Held out: nothing is sent, and the log says why.
            Some(ExperimentUse { variant: None, .. }) => channels
                .iter()
                .map(|&channel| E::ChannelSuppressed {
                    channel,
                    rule: SuppressionRule::Holdout,
                    level: Level::Default,
                    version: 0,
                    until: None,
                    suppressed_at: due,
                })
                .collect(),
            _ => routes(
                &channels,
                &category,
                priority,
                audience,
                due,
                later.is_none(),
            ),
        };
        // Sent under a variant when any channel goes.
        let exposure = match &experiment {
            Some(ExperimentUse {
                experiment,
                variant: Some(variant),
            }) if routes
                .iter()
                // Held by quiet hours is delivered later: it goes.
                .filter(|e| matches!(e, E::ChannelSuppressed { until: None, .. }))
                .count()
                < channels.len() =>
            {
                Some(E::NotificationExposed {
                    experiment: experiment.clone(),
                    variant: variant.clone(),
                    exposed_at: now,
                })
            }
            _ => None,
        };
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
            template,
            channel_content,
            experiment: experiment.map(Box::new),
        }];
        events.extend(exposure);
        match batching {
            Some((policy, policy_version, Ok(key))) => {
                events.push(E::NotificationBatched {
                    stream: stream.unwrap_or_default(),
                    key,
                    policy: Box::new(policy.clone()),
                    policy_version,
                    time_zone: audience
                        .profile
                        .as_ref()
                        .map_or(TimeZone::UTC, |(p, _)| p.time_zone()),
                    batched_at: now,
                });
                return Ok(events);
            }
            Some((_, policy_version, Err(reason))) => events.push(E::BatchingSkipped {
                reason,
                policy_version,
                skipped_at: now,
            }),
            None => {}
        }
        if let Some(deliver_at) = later {
            events.push(E::NotificationScheduled {
                deliver_at,
                scheduled_at: now,
            });
        }
        events.extend(routes);
        Ok(events)
    }

    /// Out of its batch, delivered on its own: its channels decided now.
    /// Deleted meanwhile, or out already: only the release, or nothing.
    fn decide_release(
        &self,
        batch_id: &str,
        at: Timestamp,
        audience: &Audience,
    ) -> Vec<NotificationEvent> {
        let released = NotificationEvent::NotificationReleased {
            batch_id: batch_id.to_owned(),
            released_at: at,
        };
        match (self.lifecycle, &self.content) {
            (Lifecycle::Batched, Some(c)) => {
                let mut events = vec![released];
                events.extend(routes(
                    &c.channels,
                    &c.category,
                    c.priority,
                    audience,
                    at,
                    true,
                ));
                events
            }
            (Lifecycle::Deleted, _) if self.held.as_ref().is_some_and(|h| !h.released) => {
                vec![released]
            }
            _ => vec![],
        }
    }

    /// Carried by a digest: recorded while held (or deleted meanwhile).
    fn decide_digested(
        &self,
        batch_id: &str,
        digest_id: NotificationId,
        at: Timestamp,
    ) -> Vec<NotificationEvent> {
        let held = self
            .held
            .as_ref()
            .filter(|h| h.digest_id.is_none() && !h.released);
        match (self.lifecycle, held) {
            (Lifecycle::Batched | Lifecycle::Deleted, Some(_)) => {
                vec![NotificationEvent::NotificationDigested {
                    batch_id: batch_id.to_owned(),
                    digest_id,
                    digested_at: at,
                }]
            }
            _ => vec![],
        }
    }

    fn digested(&self) -> NotificationError {
        match self.held.as_ref().and_then(|h| h.digest_id) {
            Some(id) => NotificationError::Digested(id),
            None => NotificationError::Batched(None),
        }
    }

    /// Whether `channel` may be delivered (or reported failed) at `at`.
    fn deliverable(&self, channel: Channel, at: Timestamp) -> Result<(), NotificationError> {
        match self.lifecycle {
            Lifecycle::Cancelled => return Err(NotificationError::Cancelled),
            Lifecycle::Batched => {
                let batch = self.held.as_ref().and_then(|h| h.batch_id.clone());
                return Err(NotificationError::Batched(batch));
            }
            Lifecycle::Digested => return Err(self.digested()),
            _ => {}
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
                template,
                channel_content,
                experiment,
            } => {
                self.experiment = experiment.map(|e| *e);
                self.lifecycle = Lifecycle::Pending;
                self.id = Some(id);
                self.created_at = Some(created_at);
                self.template = template.map(|t| *t);
                self.channel_content = channel_content;
                // The text as rendered: a release or a digest decides on
                // it, never on the template again.
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
                    template: None,
                    experiment: None,
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
            E::NotificationBatched {
                stream,
                key,
                policy,
                policy_version,
                time_zone,
                ..
            } => {
                self.lifecycle = Lifecycle::Batched;
                self.held = Some(Held {
                    stream,
                    key,
                    policy: *policy,
                    policy_version,
                    time_zone,
                    batch_id: None,
                    released: false,
                    digest_id: None,
                });
            }
            E::BatchingSkipped { .. } => {}
            E::NotificationAddedToBatch { batch_id, .. } => {
                if let Some(held) = self.held.as_mut() {
                    held.batch_id = Some(batch_id);
                }
            }
            E::NotificationReleased { .. } => {
                if let Some(held) = self.held.as_mut() {
                    held.released = true;
                }
                if self.lifecycle == Lifecycle::Batched {
                    self.lifecycle = Lifecycle::Pending;
                }
            }
            E::NotificationDigested { digest_id, .. } => {
                if let Some(held) = self.held.as_mut() {
                    held.digest_id = Some(digest_id);
                }
                if self.lifecycle == Lifecycle::Batched {
                    self.lifecycle = Lifecycle::Digested;
                }
            }
            E::NotificationExposed { .. } => self.exposed = true,
        }
    }
}

/// How each of `channels` goes for a notification due at `due`: its
/// suppressions, and its in-app delivery when it is due now (`now`).
fn routes(
    channels: &[Channel],
    category: &super::Category,
    priority: super::Priority,
    audience: &Audience,
    due: Timestamp,
    now: bool,
) -> Vec<NotificationEvent> {
    use NotificationEvent as E;
    let mut events = Vec::new();
    for &channel in channels {
        match audience.route(category, channel, priority, due) {
            Some(s) => events.push(E::ChannelSuppressed {
                channel,
                rule: s.rule,
                level: s.level,
                version: s.version,
                until: s.until,
                suppressed_at: due,
            }),
            None if channel == Channel::InApp && now => events.push(E::NotificationDelivered {
                channel: Channel::InApp,
                delivered_at: due,
            }),
            // The other channels' workers deliver and report back.
            None => {}
        }
    }
    events
}

#[cfg(test)]
#[path = "notification_tests.rs"]
mod tests;
