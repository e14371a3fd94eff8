//! Scheduled delivery: a notification created with a future `deliver_at` is
//! owed its in-app delivery at that time. The reaction (under the
//! notification's id) appears when the notification is created for later
//! and is settled when it is delivered, cancelled or deleted, so a restart
//! finds every pending delivery in the outbox and a cancel that lands first
//! wins. An in-app delivery held by the recipient's quiet hours is owed the
//! same way, at the time they end; one suppressed for good is owed nothing.

use cqrs_es::Aggregate;

use super::{Commanding, Pending, Reaction, Reactor};
use crate::domain::{
    Channel, Notification, NotificationCommand, NotificationEvent, Timestamp, EVENT_VERSION,
};
use crate::storage::LoggedEvent;

pub const NAME: &str = "schedule";

/// How long the schedule lets appends gather into one page: a due time
/// minutes or hours away does not need its row within the millisecond.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// A delivery waiting for its time: the channel it goes out on.
pub type Due = Pending<Channel>;

/// What the schedule reads of a notification event.
pub enum Change {
    Scheduled(Due),
    /// Created for now (or for other channels only): nothing waits. Named
    /// so that its delivery in the same page needs no lookup.
    Immediate,
    Gone,
}

pub struct ScheduledDelivery;

impl Reactor for ScheduledDelivery {
    const NAME: &'static str = NAME;
    type Input = Change;
    type Order = Channel;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Change>, String> {
        if event.aggregate_type != Notification::TYPE
            || !matches!(
                event.event_type.as_str(),
                "NotificationCreated"
                    | "NotificationDelivered"
                    | "ChannelSuppressed"
                    | "NotificationCancelled"
                    | "NotificationDeleted"
            )
        {
            return Ok(None);
        }
        // Most notifications are for now: no need to decode all of them.
        let created = &event.payload["NotificationCreated"];
        if event.unreadable.is_none()
            && event.event_version == EVENT_VERSION
            && created.is_object()
            && created["deliver_at"].is_null()
        {
            return Ok(Some(Change::Immediate));
        }
        Ok(match event.decode::<NotificationEvent>()? {
            NotificationEvent::NotificationCreated {
                channels,
                priority,
                deliver_at: Some(deliver_at),
                created_at,
                ..
            } if deliver_at > created_at && channels.contains(&Channel::InApp) => {
                Some(Change::Scheduled(Pending {
                    aggregate_id: event.aggregate_id.clone(),
                    due_at: deliver_at,
                    urgent: !priority.may_be_held(),
                    order: Channel::InApp,
                }))
            }
            NotificationEvent::NotificationCreated { .. } => Some(Change::Immediate),
            NotificationEvent::ChannelSuppressed {
                channel: Channel::InApp,
                until: Some(until),
                ..
            } => Some(Change::Scheduled(Pending {
                aggregate_id: event.aggregate_id.clone(),
                due_at: until,
                urgent: false,
                order: Channel::InApp,
            })),
            NotificationEvent::ChannelSuppressed {
                channel: Channel::InApp,
                ..
            } => Some(Change::Gone),
            NotificationEvent::NotificationDelivered {
                channel: Channel::InApp,
                ..
            }
            | NotificationEvent::NotificationCancelled { .. }
            | NotificationEvent::NotificationDeleted { .. } => Some(Change::Gone),
            _ => None,
        })
    }

    fn keys(&self, _: &Change, event: &LoggedEvent) -> Vec<String> {
        vec![event.aggregate_id.clone()]
    }

    fn new_keys(&self, change: &Change, event: &LoggedEvent) -> Vec<String> {
        match change {
            Change::Scheduled(_) | Change::Immediate => vec![event.aggregate_id.clone()],
            Change::Gone => Vec::new(),
        }
    }

    fn react(&self, change: Change, event: &LoggedEvent) -> Vec<Reaction<Channel>> {
        let id = event.aggregate_id.clone();
        match change {
            Change::Scheduled(pending) => vec![Reaction::Owe { id, pending }],
            Change::Immediate => Vec::new(),
            Change::Gone => vec![Reaction::Settle { id }],
        }
    }
}

impl Commanding for ScheduledDelivery {
    type Target = Notification;

    fn command(&self, due: &Due, at: Timestamp) -> NotificationCommand {
        NotificationCommand::Deliver {
            channel: due.order,
            at,
        }
    }
}
