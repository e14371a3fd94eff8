//! Folding logged events into inbox rows, with the aggregate's own `apply`.

use std::collections::HashMap;

use cqrs_es::Aggregate;
use serde::Deserialize;

use super::InboxRow;
use crate::domain::{Channel, Notification, NotificationEvent, NotificationId};
use crate::projections::ProjectionError;
use crate::storage::{LoggedEvent, Position, SharedEvent};

fn bad(event: &LoggedEvent, reason: impl Into<String>) -> ProjectionError {
    ProjectionError::BadEvent {
        position: event.position,
        event_type: event.event_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        reason: reason.into(),
    }
}

fn is_notification(event: &LoggedEvent) -> bool {
    event.aggregate_type == Notification::TYPE
}

/// The notification ids a page touches, each once.
pub fn ids_in(events: &[SharedEvent]) -> Result<Vec<NotificationId>, ProjectionError> {
    let mut ids = Vec::new();
    for event in events.iter().filter(|e| is_notification(e)) {
        let id = NotificationId::parse(&event.aggregate_id).map_err(|e| bad(event, e.0))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Folds a page into `rows`, which holds the current row (or None) of every id
/// in the page. Afterwards each entry is the row to store, or None to remove.
pub fn fold_page(
    rows: &mut HashMap<NotificationId, Option<InboxRow>>,
    events: &[SharedEvent],
) -> Result<(), ProjectionError> {
    for event in events.iter().filter(|e| is_notification(e)) {
        let id = NotificationId::parse(&event.aggregate_id).map_err(|e| bad(event, e.0))?;
        let payload = NotificationEvent::deserialize(&event.payload)
            .map_err(|e| bad(event, format!("payload does not parse: {e}")))?;
        let slot = rows.entry(id).or_insert(None);
        if slot
            .as_ref()
            .is_some_and(|r| r.last_position >= event.position)
        {
            continue; // already applied
        }
        let mut row = slot.take().unwrap_or(InboxRow {
            state: Notification::default(),
            inbox_position: None,
            last_position: Position::START,
        });
        let delivered_in_app = matches!(
            payload,
            NotificationEvent::NotificationDelivered {
                channel: Channel::InApp,
                ..
            }
        );
        row.state.apply(payload);
        row.last_position = event.position;
        if delivered_in_app {
            row.inbox_position = Some(event.position);
        }
        *slot = match row.state.lifecycle {
            crate::domain::Lifecycle::Deleted => None,
            _ => Some(row),
        };
    }
    Ok(())
}
