//! Folding logged events into inbox rows, with the aggregate's own `apply`.
//!
//! An event the inbox cannot apply (a payload that does not parse, a version
//! this release cannot read, an event for a notification that was never
//! created) is *refused*: the rows stay as they were, and every later event
//! of the same notification is held back behind it, so a notification's
//! events are never applied out of order. Other notifications go on. Live
//! processing parks what was refused (after retries); a rebuild and time
//! travel follow the same rule, so all three agree.

use std::collections::{BTreeSet, HashMap};

use cqrs_es::Aggregate;

use super::InboxRow;
use crate::domain::{Channel, Lifecycle, Notification, NotificationEvent, NotificationId};
use crate::projections::parked::ParkedEvent;
use crate::projections::ProjectionError;
use crate::storage::{upcast, LoggedEvent, Position, SharedEvent};

pub fn is_notification(event: &LoggedEvent) -> bool {
    event.aggregate_type == Notification::TYPE
}

/// The notification ids a page touches, each once (ids that do not parse are
/// left out: their events are refused by the fold).
pub fn ids_in(events: &[SharedEvent]) -> Vec<NotificationId> {
    let mut ids = Vec::new();
    for event in events.iter().filter(|e| is_notification(e)) {
        if let Ok(id) = NotificationId::parse(&event.aggregate_id) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Where an event is and what it is: all that parking needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
}

impl EventRef {
    pub fn of(event: &LoggedEvent) -> Self {
        Self {
            position: event.position,
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            event_type: event.event_type.clone(),
        }
    }
}

/// A notification event read for folding: what it says, or why it cannot
/// be read.
#[derive(Debug)]
pub struct Decoded {
    pub event: EventRef,
    pub payload: Result<(NotificationId, NotificationEvent), String>,
}

fn parse_id(aggregate_id: &str) -> Result<NotificationId, String> {
    NotificationId::parse(aggregate_id)
        .map_err(|e| format!("the aggregate id is not a notification id: {}", e.0))
}

/// Reads a logged notification event in the current shape, upcasting an old
/// one that the reader has not upcast yet.
pub fn decode(event: &LoggedEvent) -> Result<(NotificationId, NotificationEvent), String> {
    let id = parse_id(&event.aggregate_id)?;
    Ok((id, event.decode()?))
}

/// Reads a notification event from its payload's JSON text: in the current
/// shape straight from the text (no value tree in between), an old shape
/// through a value tree and its upcaster.
pub fn decode_json(event: EventRef, event_version: &str, payload: &[u8]) -> Decoded {
    let read = || {
        let id = parse_id(&event.aggregate_id)?;
        Ok((
            id,
            upcast::decode_text(&event.event_type, event_version, payload)?,
        ))
    };
    let payload = read();
    Decoded { event, payload }
}

/// Folds one event into its row (None: no row). On a refusal the row is left
/// as it was.
pub fn fold_one(
    slot: &mut Option<InboxRow>,
    position: Position,
    payload: NotificationEvent,
) -> Result<(), String> {
    let created = matches!(payload, NotificationEvent::NotificationCreated { .. });
    match slot.as_ref() {
        Some(row) if row.last_position >= position => return Ok(()), // already applied
        Some(_) if created => {
            return Err("the notification was already created; a second creation cannot apply".into())
        }
        None if !created => {
            return Err(
                "the inbox holds no such notification (its creation is missing, was skipped, or it was deleted)"
                    .into(),
            )
        }
        _ => {}
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
    row.last_position = position;
    if delivered_in_app {
        row.inbox_position = Some(position);
    }
    *slot = match row.state.lifecycle {
        Lifecycle::Deleted => None,
        _ => Some(row),
    };
    Ok(())
}

/// An event the fold did not apply.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub event: EventRef,
    pub reason: String,
    /// The refused event of the same notification this one waits behind;
    /// None when this event was refused itself.
    pub behind: Option<Position>,
}

impl Refusal {
    /// `event` refused by the projection itself, for `reason`.
    pub fn failed(event: &LoggedEvent, reason: &str) -> Self {
        Self {
            event: EventRef::of(event),
            reason: reason.to_owned(),
            behind: None,
        }
    }

    /// The refusal as a parked event, tried `attempts` times (held: 0).
    pub fn parked(&self, attempts: u32) -> ParkedEvent {
        let event = &self.event;
        let now = chrono::Utc::now();
        ParkedEvent {
            position: event.position,
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            event_type: event.event_type.clone(),
            error: self.reason.clone(),
            attempts: if self.behind.is_some() { 0 } else { attempts },
            held_behind: self.behind,
            parked_at: now,
            last_attempt_at: now,
        }
    }
}

/// Notifications with a refused event: aggregate id -> that event's position.
pub type Held = HashMap<String, Position>;

/// Why a held event was not applied.
pub fn held_reason(behind: Position) -> String {
    format!(
        "held behind the parked event at {} of the same notification",
        behind.to_cursor()
    )
}

/// Where the fold finds each notification's current row.
pub trait CurrentRows {
    /// The row of `id` (None: no row), to fold an event into.
    fn slot(&mut self, id: NotificationId) -> &mut Option<InboxRow>;
}

impl CurrentRows for HashMap<NotificationId, Option<InboxRow>> {
    fn slot(&mut self, id: NotificationId) -> &mut Option<InboxRow> {
        self.entry(id).or_insert(None)
    }
}

/// Folds decoded notification events (in log order) into `rows`, which must
/// know the current row of every notification in them. Events at `skipped`
/// positions are passed over; events of notifications in `held` are refused
/// as held; an event that cannot apply is refused and holds back its
/// notification from then on.
pub fn fold_decoded(
    rows: &mut impl CurrentRows,
    events: impl IntoIterator<Item = Decoded>,
    held: &mut Held,
    skipped: &BTreeSet<Position>,
) -> Vec<Refusal> {
    let mut refused = Vec::new();
    for Decoded { event, payload } in events {
        if skipped.contains(&event.position) {
            continue;
        }
        if let Some(&behind) = held.get(&event.aggregate_id) {
            refused.push(Refusal {
                event,
                reason: held_reason(behind),
                behind: Some(behind),
            });
            continue;
        }
        let outcome =
            payload.and_then(|(id, payload)| fold_one(rows.slot(id), event.position, payload));
        if let Err(reason) = outcome {
            held.insert(event.aggregate_id.clone(), event.position);
            refused.push(Refusal {
                event,
                reason,
                behind: None,
            });
        }
    }
    refused
}

/// `fold_decoded` over logged events (other aggregates' are passed over).
pub fn fold_events(
    rows: &mut HashMap<NotificationId, Option<InboxRow>>,
    events: &[SharedEvent],
    held: &mut Held,
    skipped: &BTreeSet<Position>,
) -> Vec<Refusal> {
    let decoded = events
        .iter()
        .filter(|e| is_notification(e))
        .map(|e| Decoded {
            event: EventRef::of(e),
            payload: decode(e),
        });
    fold_decoded(rows, decoded, held, skipped)
}

/// The first refusal that is not merely held, as the error a projector retries.
pub fn first_failure(refused: &[Refusal]) -> Option<ProjectionError> {
    refused
        .iter()
        .find(|r| r.behind.is_none())
        .map(|r| ProjectionError::BadEvent {
            position: r.event.position,
            event_type: r.event.event_type.clone(),
            aggregate_id: r.event.aggregate_id.clone(),
            reason: r.reason.clone(),
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::domain::EVENT_VERSION;

    fn logged(
        n: i64,
        id: &str,
        sequence: i64,
        event_type: &str,
        payload: serde_json::Value,
    ) -> SharedEvent {
        Arc::new(LoggedEvent {
            position: Position::new(n, n),
            aggregate_type: "Notification".into(),
            aggregate_id: id.into(),
            sequence,
            event_type: event_type.into(),
            event_version: EVENT_VERSION.into(),
            payload,
            metadata: Arc::new(json!({})),
            recorded_at: chrono::Utc::now(),
            unreadable: None,
        })
    }

    fn created(n: i64, id: &str) -> SharedEvent {
        logged(
            n,
            id,
            1,
            "NotificationCreated",
            json!({"NotificationCreated": {
            "id": id, "recipient": "ann", "category": "comment", "title": "t", "body": "b",
            "data": {}, "priority": "normal", "channels": ["in_app"], "group_key": null,
            "deliver_at": null, "created_at": "2026-01-01T00:00:00Z"}}),
        )
    }

    fn read(n: i64, id: &str, sequence: i64) -> SharedEvent {
        logged(
            n,
            id,
            sequence,
            "NotificationRead",
            json!({"NotificationRead": {"read_at": "2026-01-01T00:00:01Z"}}),
        )
    }

    const A: &str = "01a2024f-eced-76cf-8900-aa4e3541250c";
    const B: &str = "01a2024f-eced-76cf-8900-aa4e3541250d";

    #[test]
    fn a_refused_event_holds_back_its_notification_and_no_other() {
        let events = vec![
            created(1, A),
            created(2, B),
            logged(
                3,
                A,
                2,
                "NotificationSnoozed",
                json!({"NotificationSnoozed": {}}),
            ),
            read(4, A, 3),
            read(5, B, 2),
        ];
        let mut rows = HashMap::new();
        let mut held = Held::new();
        let refused = fold_events(&mut rows, &events, &mut held, &BTreeSet::new());
        let positions: Vec<(i64, Option<Position>)> = refused
            .iter()
            .map(|r| (r.event.position.seq, r.behind))
            .collect();
        assert_eq!(positions, [(3, None), (4, Some(Position::new(3, 3)))]);
        assert!(
            refused[0]
                .reason
                .contains("unknown variant `NotificationSnoozed`"),
            "{}",
            refused[0].reason
        );
        let a = rows[&NotificationId::parse(A).unwrap()].as_ref().unwrap();
        let b = rows[&NotificationId::parse(B).unwrap()].as_ref().unwrap();
        assert_eq!(
            a.last_position,
            Position::new(1, 1),
            "nothing after the refusal applied"
        );
        assert!(b.state.is_read(), "the other notification went on");
        assert_eq!(held.get(A), Some(&Position::new(3, 3)));
        assert!(first_failure(&refused).is_some());
    }

    #[test]
    fn a_skipped_event_is_passed_over_and_the_rest_applies() {
        let events = vec![
            created(1, A),
            logged(
                2,
                A,
                2,
                "NotificationSnoozed",
                json!({"NotificationSnoozed": {}}),
            ),
            read(3, A, 3),
        ];
        let mut rows = HashMap::new();
        let skipped = BTreeSet::from([Position::new(2, 2)]);
        let refused = fold_events(&mut rows, &events, &mut Held::new(), &skipped);
        assert!(refused.is_empty());
        assert!(rows[&NotificationId::parse(A).unwrap()]
            .as_ref()
            .unwrap()
            .state
            .is_read());
    }

    #[test]
    fn events_without_a_creation_and_unknown_versions_are_refused() {
        let mut rows = HashMap::new();
        let mut orphan = (*read(1, A, 2)).clone();
        let refused = fold_events(
            &mut rows,
            &[Arc::new(orphan.clone())],
            &mut Held::new(),
            &BTreeSet::new(),
        );
        assert!(
            refused[0].reason.contains("holds no such notification"),
            "{}",
            refused[0].reason
        );
        orphan.event_version = "7.0".into();
        assert!(decode(&orphan).unwrap_err().contains("version 7.0"));
        let mut bad_id = (*created(1, A)).clone();
        bad_id.aggregate_id = "not-a-uuid".into();
        assert!(decode(&bad_id)
            .unwrap_err()
            .contains("not a notification id"));
    }

    #[test]
    fn reading_from_text_and_from_a_value_agree_on_what_and_why() {
        for event in [
            created(1, A),
            read(2, A, 2),
            logged(
                3,
                A,
                3,
                "NotificationSnoozed",
                json!({"NotificationSnoozed": {}}),
            ),
            logged(
                4,
                A,
                4,
                "NotificationRead",
                json!({"NotificationRead": {"read_at": 7}}),
            ),
        ] {
            let text = serde_json::to_vec(&event.payload).unwrap();
            let from_text = decode_json(EventRef::of(&event), &event.event_version, &text);
            let from_value = decode(&event);
            assert_eq!(
                format!("{:?}", from_text.payload),
                format!("{from_value:?}"),
                "{}",
                event.event_type
            );
        }
    }

    #[test]
    fn a_second_creation_is_refused_and_a_repeat_is_a_no_op() {
        let mut rows = HashMap::new();
        let first = created(1, A);
        assert!(fold_events(
            &mut rows,
            &[first.clone(), first],
            &mut Held::new(),
            &BTreeSet::new()
        )
        .is_empty());
        let refused = fold_events(
            &mut rows,
            &[created(2, A)],
            &mut Held::new(),
            &BTreeSet::new(),
        );
        assert!(refused[0].reason.contains("already created"));
    }
}
