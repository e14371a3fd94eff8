//! The schedule: every in-app delivery that waits for its `deliver_at`, by
//! due time. Timers (`reactors::timers`) fire what is due. A row appears when
//! a notification is created for later and leaves when it is delivered,
//! cancelled or deleted, so firing twice is never needed and a restart finds
//! every pending timer here.

use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::store::{Fold, RowReader, Rows};
use crate::domain::{
    Channel, Notification, NotificationEvent, NotificationId, Priority, Timestamp, EVENT_VERSION,
};
use crate::storage::{LoggedEvent, StorageError};

pub const NAME: &str = "schedule";

/// How long the schedule lets appends gather into one page: a due time
/// minutes or hours away does not need its row within the millisecond.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// One delivery waiting for its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Due {
    pub notification: NotificationId,
    pub deliver_at: Timestamp,
    pub priority: Priority,
}

/// What the schedule reads of a notification event.
pub enum Change {
    Scheduled(Due),
    /// Created for now (or for other channels only): nothing waits. Named
    /// so that its delivery in the same page needs no lookup.
    Immediate,
    Gone,
}

pub struct Schedule;

impl Fold for Schedule {
    const NAME: &'static str = NAME;
    type Input = Change;
    type Row = Due;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Change>, String> {
        if event.aggregate_type != Notification::TYPE
            || !matches!(
                event.event_type.as_str(),
                "NotificationCreated"
                    | "NotificationDelivered"
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
                id,
                channels,
                priority,
                deliver_at: Some(deliver_at),
                created_at,
                ..
            } if deliver_at > created_at && channels.contains(&Channel::InApp) => {
                Some(Change::Scheduled(Due {
                    notification: id,
                    deliver_at,
                    priority,
                }))
            }
            NotificationEvent::NotificationCreated { .. } => Some(Change::Immediate),
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

    fn fold(
        &self,
        change: Change,
        event: &LoggedEvent,
        rows: &mut Rows<Due>,
    ) -> Result<(), String> {
        match change {
            Change::Scheduled(due) => {
                rows.put(&event.aggregate_id, due.deliver_at.timestamp_millis(), due)
            }
            Change::Immediate => {}
            Change::Gone => rows.remove(&event.aggregate_id),
        }
        Ok(())
    }
}

/// When the next delivery after `now` is due, if one is.
pub async fn next_after(
    schedule: &dyn RowReader<Due>,
    now: Timestamp,
) -> Result<Option<Timestamp>, StorageError> {
    let next = schedule
        .range(now.timestamp_millis() + 1, i64::MAX, None, 1)
        .await?;
    Ok(next.first().map(|k| k.row.deliver_at))
}
